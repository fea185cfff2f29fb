//! Errors that cross the bus. Callers branch on [`ErrorKind`], never on message text.

use serde::{Deserialize, Serialize};

/// What went wrong, in a form a remote caller can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The payload could not be decoded (not MessagePack, truncated, wrong schema).
    Decode,
    /// The envelope's schema version is not one this node speaks.
    UnsupportedVersion,
    /// A field is missing or has a value outside its range.
    InvalidRequest,
    /// The model is not in the registry.
    UnknownModel,
    /// The model is registered but no live worker serves it.
    NoWorker,
    /// The model is known but being loaded (the client asked not to wait); retry later.
    ModelLoading,
    /// The payload or a field of it is over a size limit.
    PayloadTooLarge,
    /// The prompt does not fit the model's context.
    ContextLength,
    /// A queue limit was reached; retry later.
    Overloaded,
    /// An API key's rate limit or token budget was reached.
    RateLimitExceeded,
    /// No such task or object.
    NotFound,
    /// The request conflicts with what exists (an idempotency key reused with another
    /// request).
    Conflict,
    /// The task was cancelled.
    Cancelled,
    /// The operation did not finish in time.
    Timeout,
    /// A dependency (JetStream, KV) is not reachable right now; retry later.
    Unavailable,
    /// The engine failed while generating.
    Engine,
    /// A bug or an unexpected state; the message says more.
    Internal,
    /// A kind this build does not know (sent by a newer node).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// The stable snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "decode",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::UnknownModel => "unknown_model",
            ErrorKind::NoWorker => "no_worker",
            ErrorKind::ModelLoading => "model_loading",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::ContextLength => "context_length",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::RateLimitExceeded => "rate_limit_exceeded",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Engine => "engine",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A serializable error: a kind to branch on and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WireError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A human-readable explanation that names the problem.
    pub message: String,
}

impl WireError {
    /// Builds an error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}
