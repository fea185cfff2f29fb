//! The OpenAI wire format the gateway speaks: request parsing with errors that name the
//! field, responses, stream chunks, and the error shape.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use bitinglip_bus_schema::{ChatMessage, ChatParams, ErrorKind, FinishReason, Usage, WireError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `stop`: a string or a list of strings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content; only `text` parts are supported.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ContentPart {
    /// `text`.
    #[serde(rename = "type")]
    #[schema(pattern = "^text$")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// One message of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct Message {
    /// `system`, `user`, `assistant`, …
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// Options of a streamed answer.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the usage (and no choices).
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// `POST /v1/chat/completions` body. Unknown fields are ignored, as OpenAI clients send
/// many optional ones.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ChatCompletionRequest {
    /// A model's id, as `GET /v1/models` lists it.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    /// The conversation so far.
    #[schema(min_items = 1)]
    messages: Vec<Message>,
    /// The most tokens to generate (older name of `max_completion_tokens`).
    #[serde(default)]
    max_tokens: Option<u32>,
    /// The most tokens to generate.
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    top_p: Option<f64>,
    /// Where to stop.
    #[serde(default)]
    stop: Option<Stop>,
    /// Answer as server-sent events (`text/event-stream`), one chunk per event, then `[DONE]`.
    #[serde(default)]
    pub(crate) stream: bool,
    /// Options of a streamed answer.
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    /// Sampling seed.
    #[serde(default)]
    seed: Option<u64>,
    /// Answers wanted: only 1 is supported.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    n: Option<u32>,
    /// False: answer 503 with Retry-After while the model loads (default: wait).
    #[serde(default)]
    pub(crate) wait_for_model: Option<bool>,
}

/// Parses a request body, naming the offending field on error.
pub(crate) fn parse_request(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid field `{path}`: {inner}")
        };
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_param((path != ".").then_some(path))
    })
}

impl ChatCompletionRequest {
    /// Converts to the bus's chat parameters, refusing what BitingLip does not support.
    pub(crate) fn into_chat(self) -> Result<ChatParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("`n` must be 1", Some("n")));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        if p.kind != "text" {
                            return Err(ApiError::invalid(
                                &format!("`messages[{i}].content[{j}].type` is {:?}; only text is supported", p.kind),
                                Some(&format!("messages[{i}].content[{j}].type")),
                            ));
                        }
                        text.push_str(&p.text.unwrap_or_default());
                    }
                    text
                }
            };
            messages.push(ChatMessage { role: m.role, content });
        }
        let stop = match self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        Ok(ChatParams {
            model: self.model,
            messages,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            stop,
            seed: self.seed,
        })
    }
}

/// `axum::extract::Query`, refusing a bad query string with an error in OpenAI's shape
/// (axum's own refusal is plain text).
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);

/// `axum::extract::Path`, refusing a bad path parameter with an error in OpenAI's shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::invalid(&format!("invalid query: {}", rejection.body_text()), None)
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        ApiError::invalid(&format!("invalid path: {}", rejection.body_text()), None)
    }
}

/// An error in OpenAI's shape, as every route answers one.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// For a person.
    message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `service_unavailable`, `server_error`, …
    #[serde(rename = "type")]
    kind: String,
    /// The request field at fault, when one is.
    param: Option<String>,
    /// A machine-readable reason: `invalid_api_key`, `unknown_model`, `overloaded`, …
    code: Option<String>,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    pub(crate) fn invalid(message: &str, param: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param.map(str::to_string))
    }

    fn with_param(mut self, param: Option<String>) -> Self {
        self.param = param;
        self
    }

    /// Sets `Retry-After`, in seconds.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Sets the `code` (a machine-readable reason such as `invalid_api_key`).
    pub(crate) fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }
}

impl From<WireError> for ApiError {
    fn from(err: WireError) -> Self {
        let (status, kind, retry) = match err.kind {
            ErrorKind::Decode
            | ErrorKind::InvalidRequest
            | ErrorKind::ContextLength
            | ErrorKind::UnsupportedVersion => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            ErrorKind::UnknownModel | ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error", None),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "invalid_request_error", None),
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None),
            ErrorKind::NoWorker | ErrorKind::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", Some(1))
            }
            ErrorKind::ModelLoading => (StatusCode::SERVICE_UNAVAILABLE, "model_loading", Some(2)),
            ErrorKind::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some(1)),
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout", None),
            ErrorKind::Cancelled => (StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), "cancelled", None),
            ErrorKind::Engine | ErrorKind::Internal | ErrorKind::Unknown => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
            }
        };
        let mut e = ApiError::new(status, kind, err.message);
        e.code = Some(err.kind.as_str().to_string());
        e.retry_after = retry;
        e
    }
}

impl ApiError {
    /// The bus error kind (`unknown_model`, `overloaded`, …), or the error type when the
    /// error never reached the bus (a malformed request).
    pub(crate) fn code(&self) -> &str {
        self.code.as_deref().unwrap_or(self.kind)
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// OpenAI's `usage` object, with BitingLip's timings beside the counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct OpenAiUsage {
    /// Tokens of the prompt.
    prompt_tokens: u32,
    /// Tokens generated.
    completion_tokens: u32,
    /// The sum.
    total_tokens: u32,
    /// From the task's start on a worker to its first token, ms.
    time_to_first_token_ms: f64,
    /// On the worker, ms.
    total_time_ms: f64,
    /// Queued before a worker took it, ms.
    queue_time_ms: f64,
}

impl From<&Usage> for OpenAiUsage {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            time_to_first_token_ms: u.time_to_first_token_ms,
            total_time_ms: u.total_time_ms,
            queue_time_ms: u.queue_time_ms,
        }
    }
}

/// OpenAI's finish reason for ours.
pub(crate) fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled | FinishReason::Error => "stop",
    }
}

/// A model as `GET /v1/models` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelObject {
    /// The id requests name.
    pub(crate) id: String,
    /// `model`.
    pub(crate) object: &'static str,
    /// Registered, seconds since the epoch.
    pub(crate) created: u64,
    /// `bitinglip`.
    pub(crate) owned_by: &'static str,
    /// The longest context it takes, tokens, when known.
    pub(crate) context_length: Option<u32>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelObjectList {
    /// `list`.
    pub(crate) object: &'static str,
    /// The models this key may use.
    pub(crate) data: Vec<ModelObject>,
}

/// The answer's message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AssistantMessage {
    /// `assistant`.
    role: &'static str,
    /// The text generated.
    content: String,
}

/// One answer of a completion (there is one: `n` is 1).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Choice {
    /// 0.
    index: u32,
    /// The answer.
    message: AssistantMessage,
    /// Always null: log probabilities are not returned.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
    /// `stop` or `length`.
    finish_reason: &'static str,
}

/// A whole (non-streamed) chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChatCompletion {
    /// `chatcmpl-<task id>`.
    id: String,
    /// `chat.completion`.
    object: &'static str,
    /// Seconds since the epoch.
    created: u64,
    /// The model.
    model: String,
    /// Always null.
    system_fingerprint: Option<String>,
    /// The answer.
    choices: Vec<Choice>,
    /// Tokens and timings.
    usage: OpenAiUsage,
}

/// A whole (non-streamed) completion.
pub(crate) fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    reason: FinishReason,
    usage: &Usage,
) -> ChatCompletion {
    ChatCompletion {
        id: id.to_string(),
        object: "chat.completion",
        created,
        model: model.to_string(),
        system_fingerprint: None,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage { role: "assistant", content: text.to_string() },
            logprobs: None,
            finish_reason: finish(reason),
        }],
        usage: OpenAiUsage::from(usage),
    }
}

/// What a stream chunk adds to the answer: the role first, then text, then nothing.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    /// More text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<String>,
}

/// One answer's part in a chunk.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChunkChoice {
    /// 0.
    index: u32,
    /// What this chunk adds.
    delta: Delta,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
    /// Set in the last chunk with a choice: `stop` or `length`.
    finish_reason: Option<&'static str>,
}

/// One server-sent event of a streamed chat completion (`data: <chunk>`; the last event is
/// `data: [DONE]`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChatCompletionChunk {
    /// `chatcmpl-<task id>`, the same in every chunk.
    id: String,
    /// `chat.completion.chunk`.
    object: &'static str,
    /// Seconds since the epoch.
    created: u64,
    /// The model.
    model: String,
    /// Always null.
    system_fingerprint: Option<String>,
    /// The answer's part; empty in the usage chunk.
    choices: Vec<ChunkChoice>,
    /// In the last chunk with a choice, and in the usage chunk
    /// (`stream_options.include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

/// One stream chunk.
pub(crate) fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Delta,
    reason: Option<FinishReason>,
    usage: Option<&Usage>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: id.to_string(),
        object: "chat.completion.chunk",
        created,
        model: model.to_string(),
        system_fingerprint: None,
        choices: vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason: reason.map(finish) }],
        usage: usage.map(OpenAiUsage::from),
    }
}

/// The separate usage chunk OpenAI sends last when `stream_options.include_usage` is set.
pub(crate) fn usage_chunk(id: &str, created: u64, model: &str, usage: &Usage) -> ChatCompletionChunk {
    ChatCompletionChunk { choices: vec![], ..chunk(id, created, model, Delta::default(), None, Some(usage)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let err = parse_request(br#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("messages[0].content"), "{}", err.message);
        let err = parse_request(br#"{"messages": []}"#).unwrap_err();
        assert!(err.message.contains("model"), "{}", err.message);
        let err = parse_request(br#"{"model": "m", "#).unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        let err = parse_request(br#"{"model": "m", "messages": [], "max_tokens": -1}"#).unwrap_err();
        assert!(err.message.contains("max_tokens"), "{}", err.message);
    }

    #[test]
    fn converts_openai_fields() {
        let req = parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_completion_tokens":7,"stop":"x","temperature":0.2,"stream":true,"frequency_penalty":0}"#,
        )
        .unwrap();
        assert!(req.stream);
        let chat = req.into_chat().unwrap();
        assert_eq!(chat.messages[0].content, "ab");
        assert_eq!(chat.max_tokens, Some(7));
        assert_eq!(chat.stop, vec!["x"]);
        let err = parse_request(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
            .unwrap()
            .into_chat()
            .unwrap_err();
        assert!(err.message.contains("only text"));
    }

    #[test]
    fn wire_errors_map_to_statuses() {
        let cases = [
            (ErrorKind::UnknownModel, 404),
            (ErrorKind::NoWorker, 503),
            (ErrorKind::ModelLoading, 503),
            (ErrorKind::PayloadTooLarge, 413),
            (ErrorKind::InvalidRequest, 400),
            (ErrorKind::ContextLength, 400),
            (ErrorKind::Overloaded, 429),
            (ErrorKind::Internal, 500),
        ];
        for (kind, status) in cases {
            assert_eq!(ApiError::from(WireError::new(kind, "x")).status.as_u16(), status, "{kind}");
        }
    }
}
