//! `POST /v1/embeddings`: the texts to embed become one task on the durable queue (the
//! same placement, priority classes, limits and metrics as chat), run by a worker whose
//! model is an embedding model; the vectors come back in OpenAI's list format, as floats
//! or as base64 of little-endian f32s.

use axum::response::Response;
use base64::Engine as _;
use bitinglip_bus_schema::{ApiKey, ChatParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::pipeline::{self, Asked, Finished, Shape};
use crate::{
    gateway::{
        error::{self, ApiError},
        submit::{Call, TaskHeaders},
    },
    NodeContext,
};

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct EmbeddingRequest {
    /// An embedding model's id.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    /// A text, or a list of up to 2048 texts (token arrays are not supported).
    #[schema(value_type = Object)]
    input: Value,
    /// `float` (the default) or `base64` (little-endian f32s).
    #[serde(default)]
    encoding_format: Option<String>,
    /// Cut each vector to its first this many values, renormalized.
    #[serde(default)]
    dimensions: Option<u32>,
    /// The end user (kept for the caller's records).
    #[serde(default)]
    user: Option<String>,
}

/// One vector.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmbeddingObject {
    /// `embedding`.
    object: &'static str,
    /// Its input's position.
    index: usize,
    /// The vector: numbers, or a base64 string of little-endian f32s.
    #[schema(value_type = Object)]
    embedding: Value,
}

/// Token counts of an embedding request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmbeddingUsage {
    /// Tokens of the inputs.
    prompt_tokens: u32,
    /// The same.
    total_tokens: u32,
}

/// `POST /v1/embeddings` answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EmbeddingList {
    /// `list`.
    object: &'static str,
    /// One vector per input, in order.
    data: Vec<EmbeddingObject>,
    /// The model.
    model: String,
    /// Tokens.
    usage: EmbeddingUsage,
}

impl EmbeddingRequest {
    /// The bus's parameters and whether base64 was asked for.
    fn into_params(self) -> Result<(ChatParams, bool), ApiError> {
        let base64 = match self.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    &format!("`encoding_format` is {other:?}; use float or base64"),
                    Some("encoding_format"),
                ))
            }
        };
        let not_text = || {
            ApiError::invalid(
                "`input` must be a string or a list of strings (token arrays are not supported)",
                Some("input"),
            )
        };
        let input = match self.input {
            Value::String(s) => vec![s],
            Value::Array(items) if !items.is_empty() => items
                .into_iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(not_text))
                .collect::<Result<_, _>>()?,
            Value::Array(_) => return Err(ApiError::invalid("`input` is empty", Some("input"))),
            _ => return Err(not_text()),
        };
        let params = ChatParams {
            model: self.model,
            input,
            dimensions: self.dimensions,
            user: self.user,
            max_tokens: Some(1),
            ..ChatParams::default()
        };
        Ok((params, base64))
    }
}

/// `/v1/embeddings`: the model, and whether the vectors go out in base64.
pub(crate) struct Embeddings {
    model: String,
    base64: bool,
}

impl Embeddings {
    /// The shape of an embeddings answer.
    pub(crate) fn of(model: &str, base64: bool) -> Self {
        Self { model: model.to_string(), base64 }
    }

    /// The task of a `POST /v1/embeddings` body (it never streams).
    pub(crate) fn parse(body: &[u8]) -> Result<Asked<Self>, ApiError> {
        let (chat, base64) = error::parse::<EmbeddingRequest>(body)?.into_params()?;
        Ok(Asked { shape: Self::of(&chat.model, base64), chat, stream: false, wait_for_model: true })
    }

    /// Whether the vectors go out in base64.
    pub(crate) fn base64(&self) -> bool {
        self.base64
    }
}

impl Shape for Embeddings {
    const ROUTE: &'static str = "/v1/embeddings";
    type Answer = EmbeddingList;

    async fn read(_: &NodeContext, _: &ApiKey, body: &[u8]) -> Result<Asked<Self>, ApiError> {
        Self::parse(body)
    }

    fn answer(&self, f: &Finished) -> EmbeddingList {
        let data = f
            .done
            .embeddings
            .iter()
            .enumerate()
            .map(|(index, v)| EmbeddingObject {
                object: "embedding",
                index,
                embedding: if self.base64 { Value::String(base64_of(v)) } else { serde_json::json!(v) },
            })
            .collect();
        let tokens = f.done.usage.prompt_tokens;
        let usage = EmbeddingUsage { prompt_tokens: tokens, total_tokens: tokens };
        EmbeddingList { object: "list", data, model: self.model.clone(), usage }
    }
}

/// Little-endian f32s in base64, as OpenAI's `encoding_format: base64`.
fn base64_of(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Embeddings of one text or many.
///
/// The texts run as one task of the model's queue (so `Idempotency-Key` and
/// `X-Priority: batch` work as for chat; the answer's `x-task-id` names the task). The
/// model must be an embedding model (a sentence-transformers folder); any other answers
/// 400.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    request_body = EmbeddingRequest,
    params(TaskHeaders),
    responses((status = 200, body = EmbeddingList, headers(("x-task-id" = String, description = "the task's id")))))]
pub(crate) async fn embeddings(call: Call) -> Result<Response, ApiError> {
    pipeline::run::<Embeddings>(call).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_formats_are_checked() {
        let req = |v: Value| serde_json::from_value::<EmbeddingRequest>(v).unwrap().into_params();
        let (p, b64) = req(serde_json::json!({"model": "m", "input": "a"})).unwrap();
        assert_eq!((p.input, b64), (vec!["a".to_string()], false));
        let (p, b64) =
            req(serde_json::json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 4}))
                .unwrap();
        assert_eq!((p.input.len(), b64, p.dimensions), (2, true, Some(4)));
        for (bad, field) in [
            (serde_json::json!({"model": "m", "input": [[1, 2]]}), "input"),
            (serde_json::json!({"model": "m", "input": []}), "input"),
            (serde_json::json!({"model": "m", "input": "a", "encoding_format": "int8"}), "encoding_format"),
        ] {
            let err = req(bad).unwrap_err();
            assert_eq!(err.body().error.param.as_deref(), Some(field));
        }
        assert_eq!(base64_of(&[1.0]), "AACAPw==");
    }
}
