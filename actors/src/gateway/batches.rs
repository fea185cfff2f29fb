//! The Files and Batch APIs over HTTP: upload a JSONL file of requests (`files.rs`),
//! create a batch of it, follow its progress, cancel it, read its output and error files.
//! The batch's record in the batches bucket is its whole state; `runner.rs` drives it
//! from any gateway, a lease at a time; `input.rs` reads the upload and its lines.

use std::collections::BTreeMap;

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode},
    Json,
};
use bitinglip_bus_schema::{
    ApiKey, BatchEndpoint, BatchRecord, BatchStatus, BatchTimes, ErrorKind, LineError, Scope, WireError,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{
    access::auth::check_model,
    error::{self, ApiError, Path, Query},
    submit::read_body_up_to,
};
use crate::gateway::access::auth::Caller;
use crate::NodeContext;

pub(super) mod files;
mod input;
mod runner;

use files::owned_file;
pub(super) use runner::Runner;

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", format!("no {what} {id:?}")).with_code("not_found")
}

fn store_error(e: bitinglip_nats::StoreError) -> ApiError {
    ApiError::from(WireError::from(e))
}

/// A refusal for a key over its share of files or batches.
fn quota(message: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).with_code("quota_exceeded")
}

/// True when `key` may see what `owner` owns.
fn sees(key: &ApiKey, owner: Option<&str>) -> bool {
    key.scope == Scope::Admin || owner == Some(key.id.as_str())
}

/// `POST /v1/batches` body.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateBatch {
    /// A file of purpose `batch`: one request per line, `{custom_id, method: "POST", url, body}`.
    input_file_id: String,
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings` (every line's `url`).
    #[schema(value_type = String)]
    endpoint: String,
    /// `24h`.
    completion_window: String,
    /// Up to 16 pairs, keys up to 64 and values up to 512 characters.
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// A batch, as the Batch API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchObject {
    /// `batch_<ulid>`.
    id: String,
    /// `batch`.
    object: &'static str,
    /// The API its lines call.
    #[schema(value_type = String)]
    endpoint: BatchEndpoint,
    /// The lines that could not run, and why the batch failed (when it did).
    errors: Option<BatchErrors>,
    input_file_id: String,
    /// `24h`.
    completion_window: String,
    /// `in_progress`, `finalizing`, `completed`, `failed`, `expired`, `cancelling` or `cancelled`.
    status: &'static str,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
    /// Unix seconds, as every time below.
    created_at: u64,
    in_progress_at: Option<u64>,
    expires_at: u64,
    finalizing_at: Option<u64>,
    completed_at: Option<u64>,
    failed_at: Option<u64>,
    expired_at: Option<u64>,
    cancelling_at: Option<u64>,
    cancelled_at: Option<u64>,
    request_counts: RequestCounts,
    metadata: BTreeMap<String, String>,
}

/// A batch's errors.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchErrors {
    /// `list`.
    object: &'static str,
    data: Vec<BatchError>,
}

/// A line that could not run (`line` from 1), or the batch's own failure (`line` null).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchError {
    code: String,
    message: String,
    line: Option<u32>,
    /// Always null.
    param: Option<String>,
}

/// How many lines a batch has, and how many ended each way.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RequestCounts {
    total: u32,
    completed: u32,
    failed: u32,
}

/// A page of batches.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BatchList {
    /// `list`.
    object: &'static str,
    /// Newest first.
    data: Vec<BatchObject>,
    first_id: Option<String>,
    last_id: Option<String>,
    has_more: bool,
}

impl From<&BatchRecord> for BatchObject {
    fn from(b: &BatchRecord) -> Self {
        let at = |status| b.times.at(status).map(|ms| ms / 1000);
        let errors = (!b.refused.is_empty() || b.error.is_some() || b.refused_from.is_some()).then(|| {
            let line = |e: &LineError| BatchError {
                code: e.code.clone(),
                message: e.message.clone(),
                line: Some(e.line + 1),
                param: None,
            };
            let mut data: Vec<BatchError> = b.refused.iter().chain(b.refused_from.as_ref()).map(line).collect();
            if let Some(e) = &b.error {
                data.push(BatchError { code: "batch_failed".into(), message: e.clone(), line: None, param: None });
            }
            BatchErrors { object: "list", data }
        });
        BatchObject {
            id: b.id.clone(),
            object: "batch",
            endpoint: b.endpoint,
            errors,
            input_file_id: b.input_file_id.clone(),
            completion_window: b.completion_window.clone(),
            status: b.status.as_str(),
            output_file_id: b.output_file_id.clone(),
            error_file_id: b.error_file_id.clone(),
            created_at: b.created_ms / 1000,
            in_progress_at: at(BatchStatus::InProgress),
            expires_at: b.expires_ms / 1000,
            finalizing_at: at(BatchStatus::Finalizing),
            completed_at: at(BatchStatus::Completed),
            failed_at: at(BatchStatus::Failed),
            expired_at: at(BatchStatus::Expired),
            cancelling_at: at(BatchStatus::Cancelling),
            cancelled_at: at(BatchStatus::Cancelled),
            request_counts: RequestCounts { total: b.total, completed: b.completed, failed: b.failed },
            metadata: b.metadata.clone(),
        }
    }
}

/// Creates a batch of the requests in `input_file_id`, each run once as a task of the
/// batch priority class (interactive traffic keeps going first).
#[utoipa::path(post, path = "/v1/batches", tag = "openai", request_body = CreateBatch,
    responses((status = 200, description = "the batch", body = BatchObject)))]
pub(crate) async fn create(
    Caller { ctx, key }: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<BatchObject>, ApiError> {
    let body = read_body_up_to(&ctx, &headers, body, 64 * 1024).await?;
    let req: CreateBatch = error::parse(&body)?;
    let Some(endpoint) = BatchEndpoint::of(&req.endpoint) else {
        return Err(ApiError::invalid(
            &format!("`endpoint` is {:?}; use /v1/chat/completions, /v1/completions or /v1/embeddings", req.endpoint),
            Some("endpoint"),
        ));
    };
    if req.completion_window != "24h" {
        return Err(ApiError::invalid("`completion_window` must be 24h", Some("completion_window")));
    }
    let metadata = req.metadata.unwrap_or_default();
    if metadata.len() > 16 || metadata.iter().any(|(k, v)| k.len() > 64 || v.len() > 512) {
        return Err(ApiError::invalid(
            "`metadata`: at most 16 pairs, keys of 64 and values of 512 characters",
            Some("metadata"),
        ));
    }
    let file = owned_file(&ctx, &key, &req.input_file_id).await.map_err(|_| {
        ApiError::invalid(&format!("`input_file_id`: no file {:?}", req.input_file_id), Some("input_file_id"))
    })?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid("`input_file_id` must name a file of purpose `batch`", Some("input_file_id")));
    }
    // The key's batches in progress, at most so many: each one is driven by a gateway.
    let mut running = 0u32;
    for id in ctx.store.batches().ids().await.map_err(store_error)? {
        if let Some((b, _)) = ctx.store.batches().get(&id).await.map_err(store_error)? {
            running += u32::from(b.owner.as_deref() == Some(key.id.as_str()) && !b.status.is_final());
        }
    }
    let max = ctx.config.gateway.max_batches_per_key;
    if running >= max {
        return Err(quota(format!(
            "this key has {running} batches in progress, its limit (gateway.max_batches_per_key); wait for one to end"
        )));
    }
    let bytes =
        ctx.store.files().read(&file.id).await.map_err(store_error)?.ok_or_else(|| not_found("file", &file.id))?;
    let lines =
        input::parse_lines(endpoint, &bytes).map_err(|e| ApiError::invalid(&e.to_string(), Some("input_file_id")))?;
    for line in &lines {
        check_model(&key, &line.chat.model)?;
    }
    let total = lines.len() as u32;
    drop(lines);
    // Paged once per file, for the gateways that will drive batches over it.
    if ctx.store.files().pages(&file.id).await.map_err(store_error)?.is_none() {
        ctx.store.files().put_pages(&file.id, &input::pages_of(&bytes)).await.map_err(store_error)?;
    }
    drop(bytes);
    let now = bitinglip_nats::now_ms();
    let batch = BatchRecord {
        id: format!("batch_{}", ulid::Ulid::new()),
        owner: Some(key.id.clone()),
        endpoint,
        input_file_id: file.id,
        completion_window: req.completion_window,
        metadata,
        status: BatchStatus::InProgress,
        total,
        submitted: 0,
        completed: 0,
        failed: 0,
        refused: vec![],
        output_file_id: None,
        error_file_id: None,
        created_ms: now,
        expires_ms: now + 24 * 3600 * 1000,
        times: BatchTimes { in_progress: Some(now), ..BatchTimes::default() },
        error: None,
        runner: None,
        runner_until_ms: 0,
        refused_from: None,
    };
    ctx.store.batches().create(&batch).await.map_err(store_error)?;
    Ok(Json((&batch).into()))
}

async fn owned_batch(ctx: &NodeContext, key: &ApiKey, id: &str) -> Result<(BatchRecord, u64), ApiError> {
    match ctx.store.batches().get(id).await.map_err(store_error)? {
        Some((b, rev)) if sees(key, b.owner.as_deref()) => Ok((b, rev)),
        _ => Err(not_found("batch", id)),
    }
}

/// A batch: its status, `request_counts` and, once ended, its output and error files.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "openai",
    params(("id" = String, Path, description = "the batch's id (`batch_…`)")),
    responses((status = 200, description = "the batch", body = BatchObject)))]
pub(crate) async fn get(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<BatchObject>, ApiError> {
    Ok(Json((&owned_batch(&ctx, &key, &id).await?.0).into()))
}

/// The query of `GET /v1/batches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListBatches {
    /// Most batches on the page (default 20, at most 100).
    limit: Option<u32>,
    /// The page after this batch id (the last of the page before).
    after: Option<String>,
}

/// This key's batches (an admin key: all), newest first.
#[utoipa::path(get, path = "/v1/batches", tag = "openai", params(ListBatches),
    responses((status = 200, body = BatchList)))]
pub(crate) async fn list(
    Caller { ctx, key }: Caller,
    Query(q): Query<ListBatches>,
) -> Result<Json<BatchList>, ApiError> {
    let limit = q.limit.unwrap_or(20).clamp(1, 100) as usize;
    let mut ids = ctx.store.batches().ids().await.map_err(store_error)?;
    // Batch ids are ULIDs: newest first is descending order.
    ids.sort_unstable_by(|a, b| b.cmp(a));
    if let Some(after) = &q.after {
        ids.retain(|id| id < after);
    }
    let mut data = Vec::new();
    let mut more = false;
    for id in ids {
        if let Some((b, _)) = ctx.store.batches().get(&id).await.map_err(store_error)? {
            if sees(&key, b.owner.as_deref()) {
                if data.len() == limit {
                    more = true;
                    break;
                }
                data.push(BatchObject::from(&b));
            }
        }
    }
    let (first_id, last_id) = (data.first().map(|b| b.id.clone()), data.last().map(|b| b.id.clone()));
    Ok(Json(BatchList { object: "list", data, first_id, last_id, has_more: more }))
}

/// Cancels a batch: no more of its lines start, running ones stop; it ends `cancelled`
/// with what finished in its files.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "openai",
    params(("id" = String, Path, description = "the batch's id (`batch_…`)")),
    responses((status = 200, description = "the batch, `cancelling` (or as it was, when it had ended)", body = BatchObject)))]
pub(crate) async fn cancel(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<BatchObject>, ApiError> {
    loop {
        let (mut b, rev) = owned_batch(&ctx, &key, &id).await?;
        if b.status.is_final() || matches!(b.status, BatchStatus::Cancelling | BatchStatus::Finalizing) {
            return Ok(Json((&b).into()));
        }
        b.status = BatchStatus::Cancelling;
        b.times.set(BatchStatus::Cancelling, bitinglip_nats::now_ms());
        match ctx.store.batches().update(&b, rev).await {
            Ok(_) => return Ok(Json((&b).into())),
            Err(bitinglip_nats::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_error(e)),
        }
    }
}

/// The HTTP status of a failed line, as the gateway would have answered it.
fn status_of(kind: ErrorKind) -> u16 {
    ApiError::from(WireError::new(kind, "")).status.as_u16()
}
