//! The error every route answers, in OpenAI's shape (`{"error": {"message", "type",
//! "param", "code"}}`), and the readers of what a request carries (a JSON body, a query,
//! a path) whose refusals name the field at fault.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use bitinglip_bus_schema::{ErrorKind, WireError};
use serde::Serialize;
use utoipa::ToSchema;

/// Parses a JSON request body, naming the offending field on error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    named(serde_path_to_error::deserialize(de))
}

pub(crate) fn named<T>(result: Result<T, serde_path_to_error::Error<serde_json::Error>>) -> Result<T, ApiError> {
    result.map_err(|err| {
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
    pub(crate) error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// For a person.
    pub(crate) message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `service_unavailable`, `server_error`, …
    #[serde(rename = "type")]
    kind: String,
    /// The request field at fault, when one is.
    pub(crate) param: Option<String>,
    /// A machine-readable reason: `invalid_api_key`, `unknown_model`, `overloaded`, …
    code: Option<String>,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    kind: &'static str,
    pub(crate) message: String,
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

    pub(crate) fn with_param(mut self, param: Option<String>) -> Self {
        self.param = param;
        self
    }

    /// Sets `Retry-After`, in seconds.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The `Retry-After` it answers with, in seconds.
    pub(crate) fn retry_after(&self) -> Option<u64> {
        self.retry_after
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
            ErrorKind::RateLimitExceeded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", None),
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

#[cfg(test)]
mod tests {
    use super::*;

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
            (ErrorKind::RateLimitExceeded, 429),
            (ErrorKind::Internal, 500),
        ];
        for (kind, status) in cases {
            assert_eq!(ApiError::from(WireError::new(kind, "x")).status.as_u16(), status, "{kind}");
        }
    }
}
