//! The admin API for keys: `GET /api/v1/keys`, `POST /api/v1/keys` (the secret is in the
//! answer, once), `DELETE /api/v1/keys/{id}` (revoke: refused on every gateway as soon as
//! the change reaches it), and `GET /api/v1/usage`. Admin keys only (see `auth.rs`).

use axum::{
    body::Body,
    extract::{Extension, State},
    http::HeaderMap,
    Json,
};
use bitinglip_bus_schema::{ApiKey, ErrorKind, KeyLimits, WireError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::parse_json;
use crate::gateway::access::auth::Caller;
use crate::gateway::{
    error::{ApiError, Path, Query},
    submit::read_body,
};
use crate::{
    ops::keys::{check_day, key_view, new_key, usage_page, with_share, KeyView, UsagePage},
    NodeContext,
};

/// The body of `POST /api/v1/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    /// A name for people, 1 to 100 characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// `inference` (the default) or `admin`.
    #[serde(default = "inference")]
    #[schema(default = "inference")]
    scope: String,
    /// The only models it may use; empty: all.
    #[serde(default)]
    models: Vec<String>,
    /// Refused after this long, such as `30d` or `12h`.
    #[serde(default)]
    expires: Option<String>,
    /// Requests per minute.
    #[serde(default)]
    #[schema(minimum = 1)]
    rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    #[schema(minimum = 1)]
    tpm: Option<u64>,
    /// Tokens per UTC day.
    #[serde(default)]
    #[schema(minimum = 1)]
    tokens_per_day: Option<u64>,
    /// Requests and event streams in progress at once, on each gateway (default: the
    /// gateway's `gateway.max_concurrent_per_key`).
    #[serde(default)]
    #[schema(minimum = 1)]
    max_concurrent: Option<u32>,
    /// The tenant whose fair share of a busy model its tasks get (keys of one tenant
    /// share it); default: the key is a tenant of its own.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    tenant: Option<String>,
    /// The tenant's weight: a busy model serves tenants in proportion to their weights.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    weight: Option<u32>,
}

/// A list of keys.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyPage {
    /// `list`.
    object: &'static str,
    /// Every key, oldest first.
    data: Vec<KeyView>,
}

fn inference() -> String {
    "inference".into()
}

/// The API key of this request (never its secret): its scope and the models it may use,
/// for a client (the dashboard) to show what the key may do.
#[utoipa::path(get, path = "/v1/key", tag = "keys", responses((status = 200, body = KeyView)))]
pub(crate) async fn whoami(Extension(key): Extension<ApiKey>) -> Json<KeyView> {
    Json(key_view(&key, None))
}

/// API keys, oldest first, never their secrets.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", responses((status = 200, body = KeyPage)))]
pub(crate) async fn list(State(ctx): State<NodeContext>) -> Result<Json<KeyPage>, ApiError> {
    let keys = ctx.store.keys().list().await.map_err(WireError::from)?;
    Ok(Json(KeyPage { object: "list", data: keys.iter().map(|k| key_view(k, None)).collect() }))
}

/// Create an API key; the answer holds its secret (`key`), once.
#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 200, body = KeyView)))]
pub(crate) async fn create(
    State(ctx): State<NodeContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<KeyView>, ApiError> {
    let body = read_body(&ctx, &headers, body).await?;
    let req: CreateKey = parse_json(&body)?;
    let limits = KeyLimits {
        rpm: req.rpm,
        tpm: req.tpm,
        tokens_per_day: req.tokens_per_day,
        max_concurrent: req.max_concurrent,
    };
    let new = new_key(&req.name, &req.scope, &req.models, req.expires.as_deref(), limits, bitinglip_nats::now_ms())
        .and_then(|k| with_share(k, req.tenant.as_deref(), req.weight))?;
    let (key, secret) = ctx.store.keys().create(new).await.map_err(WireError::from)?;
    tracing::info!(key.id = %key.id, scope = key.scope.as_str(), "API key created");
    Ok(Json(key_view(&key, Some(&secret))))
}

/// The query of `GET /api/v1/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UsageQuery {
    /// Only this key's id.
    key: Option<String>,
    /// From this UTC day on, `YYYY-MM-DD`.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    from: Option<String>,
    /// Up to this UTC day, `YYYY-MM-DD`.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    to: Option<String>,
}

/// The query of `GET /v1/usage`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct OwnUsageQuery {
    /// From this UTC day on, `YYYY-MM-DD`.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    from: Option<String>,
    /// Up to this UTC day, `YYYY-MM-DD`.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    to: Option<String>,
}

/// This request's key's own requests and tokens per model and UTC day (any key).
#[utoipa::path(get, path = "/v1/usage", tag = "keys", params(OwnUsageQuery),
    responses((status = 200, body = UsagePage)))]
pub(crate) async fn own_usage(
    Caller { ctx, key }: Caller,
    Query(q): Query<OwnUsageQuery>,
) -> Result<Json<UsagePage>, ApiError> {
    check_day("from", q.from.as_deref())?;
    check_day("to", q.to.as_deref())?;
    let rows =
        ctx.store.counters().usage(Some(&key.id), q.from.as_deref(), q.to.as_deref()).await.map_err(WireError::from)?;
    Ok(Json(usage_page(&rows)))
}

/// Requests and tokens per key, model and UTC day.
#[utoipa::path(get, path = "/api/v1/usage", tag = "keys", params(UsageQuery),
    responses((status = 200, body = UsagePage)))]
pub(crate) async fn usage(
    State(ctx): State<NodeContext>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<UsagePage>, ApiError> {
    check_day("from", q.from.as_deref())?;
    check_day("to", q.to.as_deref())?;
    let rows = ctx
        .store
        .counters()
        .usage(q.key.as_deref(), q.from.as_deref(), q.to.as_deref())
        .await
        .map_err(WireError::from)?;
    Ok(Json(usage_page(&rows)))
}

/// Revoke an API key: every gateway refuses it within a couple of seconds.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "the key's id")),
    responses((status = 200, body = KeyView)))]
pub(crate) async fn revoke(State(ctx): State<NodeContext>, Path(id): Path<String>) -> Result<Json<KeyView>, ApiError> {
    match ctx.store.keys().revoke(&id).await.map_err(WireError::from)? {
        Some(key) => {
            tracing::info!(key.id = %key.id, "API key revoked");
            Ok(Json(key_view(&key, None)))
        }
        None => Err(WireError::new(ErrorKind::NotFound, format!("no API key {id}")).into()),
    }
}
