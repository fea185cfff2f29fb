//! The OpenAI wire format the gateway speaks: request parsing with errors that name the
//! field, responses, stream chunks, and the error shape.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use bitinglip_bus_schema::{ChatMessage, ChatParams, ErrorKind, FinishReason, Usage, WireError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `stop`: a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// `POST /v1/chat/completions` body. Unknown fields are ignored, as OpenAI clients send
/// many optional ones.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletionRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    pub(crate) stream: bool,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
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
    pub(crate) fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
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

/// OpenAI's `usage` object.
#[derive(Debug, Serialize)]
pub(crate) struct OpenAiUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    /// BitingLip's timings, beside OpenAI's counts.
    time_to_first_token_ms: f64,
    total_time_ms: f64,
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

/// A whole (non-streamed) completion.
pub(crate) fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    reason: FinishReason,
    usage: &Usage,
) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": finish(reason),
        }],
        "usage": OpenAiUsage::from(usage),
    })
}

/// One stream chunk. `delta` is `{role, content}`, `{content}` or `{}`.
pub(crate) fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    reason: Option<FinishReason>,
    usage: Option<&Usage>,
) -> Value {
    let mut v = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason.map(finish)}],
    });
    if let Some(u) = usage {
        v["usage"] = serde_json::to_value(OpenAiUsage::from(u)).unwrap_or(Value::Null);
    }
    v
}

/// The separate usage chunk OpenAI sends last when `stream_options.include_usage` is set.
pub(crate) fn usage_chunk(id: &str, created: u64, model: &str, usage: &Usage) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [],
        "usage": OpenAiUsage::from(usage),
    })
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
