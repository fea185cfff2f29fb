//! The admin API for keys: `GET /api/v1/keys`, `POST /api/v1/keys` (the secret is in the
//! answer, once), `DELETE /api/v1/keys/{id}` (revoke: refused on every gateway as soon as
//! the change reaches it), and `GET /api/v1/usage`. Admin keys only (see `auth.rs`).

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::HeaderMap,
    Json,
};
use bitinglip_bus_schema::{ErrorKind, KeyLimits, WireError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{openai::ApiError, submit::read_body};
use crate::{
    ops::keys::{check_day, key_json, new_key, usage_json},
    NodeContext,
};

/// The body of `POST /api/v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    #[serde(default = "inference")]
    scope: String,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default)]
    tokens_per_day: Option<u64>,
}

fn inference() -> String {
    "inference".into()
}

/// `GET /api/v1/keys`: every key, oldest first, without secrets.
pub(super) async fn list(State(ctx): State<NodeContext>) -> Result<Json<Value>, ApiError> {
    let keys = ctx.store.keys().list().await.map_err(WireError::from)?;
    Ok(Json(json!({"object": "list", "data": keys.iter().map(|k| key_json(k, None)).collect::<Vec<_>>()})))
}

/// `POST /api/v1/keys`.
pub(super) async fn create(
    State(ctx): State<NodeContext>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body(&ctx, &headers, body).await?;
    let req: CreateKey = {
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            ApiError::invalid(&format!("invalid key request at `{field}`: {}", e.inner()), Some(&field))
        })?
    };
    let limits = KeyLimits { rpm: req.rpm, tpm: req.tpm, tokens_per_day: req.tokens_per_day };
    let new = new_key(&req.name, &req.scope, &req.models, req.expires.as_deref(), limits, bitinglip_nats::now_ms())?;
    let (key, secret) = ctx.store.keys().create(new).await.map_err(WireError::from)?;
    tracing::info!(key.id = %key.id, scope = key.scope.as_str(), "API key created");
    Ok(Json(key_json(&key, Some(&secret))))
}

/// The query of `GET /api/v1/usage`.
#[derive(Debug, Deserialize)]
pub(super) struct UsageQuery {
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /api/v1/usage?key=&from=&to=`: requests and tokens per key, model and UTC day.
pub(super) async fn usage(
    State(ctx): State<NodeContext>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    check_day("from", q.from.as_deref())?;
    check_day("to", q.to.as_deref())?;
    let rows = ctx
        .store
        .counters()
        .usage(q.key.as_deref(), q.from.as_deref(), q.to.as_deref())
        .await
        .map_err(WireError::from)?;
    Ok(Json(usage_json(&rows)))
}

/// `DELETE /api/v1/keys/{id}`: revoke.
pub(super) async fn revoke(State(ctx): State<NodeContext>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    match ctx.store.keys().revoke(&id).await.map_err(WireError::from)? {
        Some(key) => {
            tracing::info!(key.id = %key.id, "API key revoked");
            Ok(Json(key_json(&key, None)))
        }
        None => Err(WireError::new(ErrorKind::NotFound, format!("no API key {id}")).into()),
    }
}
