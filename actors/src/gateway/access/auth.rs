//! Who may call what: every route but `/health` and `/ready` takes an API key
//! (`Authorization: Bearer <key>`, the header the official OpenAI clients send).
//!
//! | routes | scope |
//! | --- | --- |
//! | `/health`, `/ready` | none |
//! | `/v1/…` (chat, models, tasks), `/openapi.json` | `inference` or `admin`; a key with a model list may use only those models |
//! | `/api/v1/…`, `/metrics` | `admin` |
//!
//! A missing, unknown, revoked or expired key is a 401 (`invalid_api_key`); a key
//! outside its scope or model list is a 403. Keys come from the keys bucket, mirrored in
//! memory by one watch (no round trip per request; a revocation reaches every gateway as
//! soon as the bucket's change does), plus `gateway.admin_key` when configured.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use bitinglip_bus_schema::{ApiKey, Scope, TaskRecord, WireError};
use bitinglip_nats::{
    store::keys::{hash_secret, KeyWatch},
    Store,
};

use crate::gateway::error::ApiError;

/// The id the configured admin key goes by (in task ownership and usage).
pub(crate) const CONFIG_ADMIN_ID: &str = "config-admin";

/// What the check needs: the mirrored keys and the configured admin key's hash.
#[derive(Clone)]
pub(crate) struct Auth {
    pub(crate) keys: KeyWatch,
    pub(crate) store: Store,
    pub(crate) admin_key_sha256: Option<String>,
    /// Requests and streams in progress per key when the key sets none.
    pub(crate) max_concurrent_per_key: u32,
    /// This gateway's requests and streams in progress, per key.
    pub(crate) in_flight: super::in_flight::Counts,
    /// This gateway's standing refusals of keys over their limits.
    pub(crate) refusals: Arc<super::limits::Refusals>,
    /// The queues a task manager called full lately (handed to the handlers as an
    /// extension).
    pub(crate) admission: Arc<super::limits::Admission>,
}

/// The scope a path needs; `None` for the open probes.
pub(crate) fn needs(path: &str) -> Option<Scope> {
    match path {
        "/health" | "/ready" => None,
        // The dashboard's page, script and style: it signs in with a key, then calls the API.
        p if p == "/ui" || p.starts_with("/ui/") => None,
        "/metrics" => Some(Scope::Admin),
        p if p.starts_with("/api/") => Some(Scope::Admin),
        _ => Some(Scope::Inference),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        .with_code("invalid_api_key")
        .into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("a valid header value"));
    resp
}

/// A 403 in OpenAI's shape.
pub(crate) fn forbidden(message: impl Into<String>, code: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "permission_error", message).with_code(code)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The middleware: authenticates the key, checks the path's scope, and hands the key to
/// the handlers as an extension.
pub(crate) async fn require_key(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(auth.admission.clone());
    let Some(needed) = needs(req.uri().path()) else { return next.run(req).await };
    let Some(secret) = bearer(req.headers()) else {
        return unauthorized("missing API key: send it as `Authorization: Bearer <key>`");
    };
    let key = if auth.admin_key_sha256.as_deref().is_some_and(|h| h == hash_secret(secret)) {
        ApiKey {
            id: CONFIG_ADMIN_ID.into(),
            name: "gateway.admin_key".into(),
            scope: Scope::Admin,
            models: Vec::new(),
            expires_ms: None,
            secret_sha256: String::new(),
            created_ms: 0,
            revoked_ms: None,
            limits: Default::default(),
            tenant: None,
            weight: None,
        }
    } else {
        match auth.keys.authenticate(secret).await {
            Ok(Ok(key)) => key,
            Ok(Err(refused)) => return unauthorized(&refused.to_string()),
            Err(err) => return ApiError::from(WireError::from(err)).into_response(),
        }
    };
    // Admin allows everything; inference only the inference routes; an unknown scope
    // (from a newer node) nothing.
    let allowed = matches!((needed, key.scope), (_, Scope::Admin) | (Scope::Inference, Scope::Inference));
    if !allowed {
        let msg = format!("this key's scope ({}) does not allow {}", key.scope.as_str(), req.uri().path());
        return forbidden(msg, "insufficient_scope").into_response();
    }
    // Counted from here until the response body ends: a stream for as long as it is open.
    let in_flight = if super::in_flight::applies(req.method(), req.uri().path()) {
        match super::in_flight::enter(
            &auth.in_flight,
            &key.id,
            key.limits.max_concurrent.unwrap_or(auth.max_concurrent_per_key),
        ) {
            Ok(held) => Some(held),
            Err(refused) => return refused.into_response(),
        }
    } else {
        None
    };
    let resp = limited(auth, req, next, key).await;
    match in_flight {
        Some(held) => crate::http::hold(resp, held),
        None => resp,
    }
}

/// The rate limits and budgets of `key` (see `limits.rs`), then the route.
async fn limited(auth: Auth, mut req: Request, next: Next, key: ApiKey) -> Response {
    let limited = key.limits.any() && super::limits::counted(req.method(), req.uri().path());
    let limits = key.limits;
    let key_id = key.id.clone();
    req.extensions_mut().insert(key);
    if !limited {
        return next.run(req).await;
    }
    let now = bitinglip_nats::now_ms();
    if let Some(refused) = super::limits::still_refused(&auth.refusals, &key_id, &limits, now) {
        return refused;
    }
    let window = match auth.store.counters().count_request(&key_id, now).await {
        Ok(w) => w,
        Err(err) => return ApiError::from(WireError::from(err)).into_response(),
    };
    crate::metrics::key_quota(&key_id, &crate::ops::limits::used(&limits, &window));
    let (headers, refusal) = super::limits::verdict(&limits, &window, now);
    match refusal {
        Some(err) => {
            super::limits::remember(&auth.refusals, &key_id, &limits, now, &err, &headers);
            super::limits::refused(err, headers)
        }
        None => super::limits::with_headers(next.run(req).await, headers),
    }
}

/// Refuses a model outside the key's list.
pub(crate) fn check_model(key: &ApiKey, model: &str) -> Result<(), ApiError> {
    if key.allows_model(model) {
        return Ok(());
    }
    Err(forbidden(format!("this API key may not use model `{model}`"), "model_not_allowed"))
}

/// True when `key` may see `task`: its own, or any for an admin key.
pub(crate) fn sees(key: &ApiKey, task: &TaskRecord) -> bool {
    key.scope == Scope::Admin || task.owner.as_deref() == Some(key.id.as_str())
}

/// Who calls, with the node that answers: the key the key check found and the node's
/// context, for the routes that act for a key (their records are that key's).
pub(crate) struct Caller {
    pub(crate) ctx: crate::NodeContext,
    pub(crate) key: ApiKey,
}

impl axum::extract::FromRequestParts<crate::NodeContext> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        ctx: &crate::NodeContext,
    ) -> Result<Self, ApiError> {
        // Put there by the key check every such route is behind.
        let key = parts.extensions.get::<ApiKey>().cloned();
        let key = key.ok_or_else(|| WireError::new(bitinglip_bus_schema::ErrorKind::Internal, "no key check"))?;
        Ok(Caller { ctx: ctx.clone(), key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_open_and_admin_routes_need_admin() {
        assert_eq!(needs("/health"), None);
        assert_eq!(needs("/ready"), None);
        assert_eq!(needs("/metrics"), Some(Scope::Admin));
        assert_eq!(needs("/api/v1/keys"), Some(Scope::Admin));
        assert_eq!(needs("/v1/chat/completions"), Some(Scope::Inference));
        assert_eq!(needs("/nowhere"), Some(Scope::Inference), "unknown routes are not an open door either");
    }

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer  blk-1 ".parse().unwrap());
        assert_eq!(bearer(&h), Some("blk-1"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
