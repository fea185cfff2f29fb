//! The OpenAI API the gateway serves: its wire format (the requests in `openai/request.rs`,
//! the answers in `openai/answer.rs`), the generation pipeline every generating route runs
//! (`openai/pipeline.rs`) with one shape per API (`chat.rs` for chat and legacy text
//! completions, `embeddings.rs`, `responses.rs`), and `GET /v1/models`.

mod answer;
pub(super) mod chat;
pub(super) mod embeddings;
pub(super) mod models;
pub(super) mod pipeline;
mod request;
pub(super) mod responses;
mod unsupported;

pub(crate) use answer::*;
pub(crate) use request::*;
pub(crate) use unsupported::Unsupported;

use serde_json::Value;

use super::error::{named, parse, ApiError};

/// Parses a `POST /v1/chat/completions` body, naming the offending field on error.
pub(crate) fn parse_request(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    parse_flattened(body)
}

/// Parses a `POST /v1/completions` body, naming the offending field on error.
pub(crate) fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    parse_flattened(body)
}

/// A request with the shared fields flattened in: serde loses the path of an error in a
/// flattened struct, so those are read once on their own first (an error there names its
/// field), then the whole.
fn parse_flattened<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = parse(body)?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    named(serde_path_to_error::deserialize::<_, Sampling>(&value))?;
    named(serde_path_to_error::deserialize::<_, Unsupported>(&value))?;
    named(serde_path_to_error::deserialize(&value))
}
