//! The Files and Batch APIs over HTTP: upload a JSONL file of requests, create a batch of
//! it, follow its progress, cancel it, read its output and error files. The batch's record
//! in the batches bucket is its whole state; `batch_runner` drives it from any gateway.

use std::collections::BTreeMap;

use axum::{
    body::Body,
    extract::{Extension, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use bitinglip_bus_schema::{ApiKey, BatchRecord, BatchStatus, ErrorKind, FileRecord, Scope, WireError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::{
    auth::check_model,
    openai::{self, ApiError, Path, Query},
    submit::read_body_up_to,
};
use crate::NodeContext;

mod input;

use input::multipart;
pub(super) use input::{page_lines, pages_of, parse_lines, Line, PAGE_LINES};

/// The most bytes of one uploaded file (the whole is held in memory while it is stored).
const FILE_MAX: usize = 256 * 1024 * 1024;

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", format!("no {what} {id:?}")).with_code("not_found")
}

fn store_error(e: bitinglip_nats::StoreError) -> ApiError {
    ApiError::from(WireError::from(e))
}

/// True when `key` may see what `owner` owns.
fn sees(key: &ApiKey, owner: Option<&str>) -> bool {
    key.scope == Scope::Admin || owner == Some(key.id.as_str())
}

/// A file, as the Files API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FileObject {
    /// `file-<ulid>`.
    id: String,
    /// `file`.
    object: &'static str,
    /// Its size.
    bytes: u64,
    /// Seconds since the epoch.
    created_at: u64,
    /// Its name.
    filename: String,
    /// `batch` or `batch_output`.
    purpose: String,
    /// `processed`.
    status: &'static str,
}

impl From<&FileRecord> for FileObject {
    fn from(f: &FileRecord) -> Self {
        Self {
            id: f.id.clone(),
            object: "file",
            bytes: f.bytes,
            created_at: f.created_ms / 1000,
            filename: f.filename.clone(),
            purpose: f.purpose.clone(),
            status: "processed",
        }
    }
}

/// Uploads a file: `multipart/form-data` with `purpose` (`batch`) and `file` (JSONL).
#[utoipa::path(post, path = "/v1/files", tag = "openai",
    request_body(content = String, content_type = "multipart/form-data",
        description = "`purpose`: `batch`; `file`: the JSONL file of requests (at most 256 MiB)"),
    responses((status = 200, body = FileObject)))]
pub(super) async fn upload(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FileObject>, ApiError> {
    let limit = FILE_MAX.min(usize::try_from(ctx.config.jetstream.files_max_bytes).unwrap_or(FILE_MAX));
    let body = read_body_up_to(&ctx, &headers, body, limit).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let parts = multipart(content_type, &body).map_err(|e| ApiError::invalid(&e, None))?;
    let purpose = parts
        .iter()
        .find(|p| p.name == "purpose")
        .map(|p| String::from_utf8_lossy(p.data).trim().to_string())
        .ok_or_else(|| ApiError::invalid("`purpose` is missing", Some("purpose")))?;
    if purpose != "batch" {
        return Err(ApiError::invalid(
            &format!("`purpose` is {purpose:?}; only `batch` is supported"),
            Some("purpose"),
        ));
    }
    let file =
        parts.iter().find(|p| p.name == "file").ok_or_else(|| ApiError::invalid("`file` is missing", Some("file")))?;
    if file.data.is_empty() {
        return Err(ApiError::invalid("`file` is empty", Some("file")));
    }
    // The key's share of the store: so many files, so many bytes.
    let (count, bytes) = ctx
        .store
        .files()
        .list()
        .await
        .map_err(store_error)?
        .iter()
        .filter(|f| f.owner.as_deref() == Some(key.id.as_str()))
        .fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.bytes));
    let g = &ctx.config.gateway;
    if count >= u64::from(g.max_files_per_key) {
        return Err(quota(format!(
            "this key keeps {count} files, its limit (gateway.max_files_per_key); delete some first"
        )));
    }
    if bytes + file.data.len() as u64 > g.max_file_bytes_per_key {
        return Err(quota(format!(
            "this key keeps {bytes} bytes of files; {} more would pass its limit of {} (gateway.max_file_bytes_per_key)",
            file.data.len(),
            g.max_file_bytes_per_key
        )));
    }
    let record = FileRecord {
        id: format!("file-{}", ulid::Ulid::new()),
        owner: Some(key.id.clone()),
        purpose,
        filename: file.filename.clone().unwrap_or_else(|| "upload.jsonl".into()),
        bytes: file.data.len() as u64,
        created_ms: bitinglip_nats::now_ms(),
    };
    let stored = ctx.store.files().put(&record, file.data).await.map_err(store_error)?;
    Ok(Json((&stored).into()))
}

/// A refusal for a key over its share of files or batches.
fn quota(message: String) -> ApiError {
    ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message).with_code("quota_exceeded")
}

/// This key's files (an admin key: all), newest first.
#[utoipa::path(get, path = "/v1/files", tag = "openai", responses((status = 200, description = "`{object: \"list\", data: [FileObject]}`", body = Object)))]
pub(super) async fn list_files(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
) -> Result<Json<Value>, ApiError> {
    let files = ctx.store.files().list().await.map_err(store_error)?;
    let data: Vec<FileObject> = files.iter().filter(|f| sees(&key, f.owner.as_deref())).map(Into::into).collect();
    Ok(Json(json!({"object": "list", "data": data, "has_more": false})))
}

async fn owned_file(ctx: &NodeContext, key: &ApiKey, id: &str) -> Result<FileRecord, ApiError> {
    match ctx.store.files().info(id).await.map_err(store_error)? {
        Some(f) if sees(key, f.owner.as_deref()) => Ok(f),
        _ => Err(not_found("file", id)),
    }
}

/// A file's record; another key's is a 404.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "openai",
    params(("id" = String, Path, description = "the file's id (`file-…`)")),
    responses((status = 200, body = FileObject)))]
pub(super) async fn get_file(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json((&owned_file(&ctx, &key, &id).await?).into()))
}

/// A file's bytes.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "openai",
    params(("id" = String, Path, description = "the file's id (`file-…`)")),
    responses((status = 200, description = "the file, as it was stored", content_type = "application/octet-stream", body = String)))]
pub(super) async fn file_content(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    owned_file(&ctx, &key, &id).await?;
    let bytes = ctx.store.files().read(&id).await.map_err(store_error)?.ok_or_else(|| not_found("file", &id))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Deletes a file.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "openai",
    params(("id" = String, Path, description = "the file's id (`file-…`)")),
    responses((status = 200, description = "`{id, object: \"file\", deleted: true}`", body = Object)))]
pub(super) async fn delete_file(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    owned_file(&ctx, &key, &id).await?;
    ctx.store.files().delete(&id).await.map_err(store_error)?;
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

/// `POST /v1/batches` body.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CreateBatch {
    /// A file of purpose `batch`: one request per line, `{custom_id, method: "POST", url, body}`.
    input_file_id: String,
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings` (every line's `url`).
    endpoint: String,
    /// `24h`.
    completion_window: String,
    /// Up to 16 pairs, keys up to 64 and values up to 512 characters.
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// A batch, as the Batch API shows it.
pub(super) fn batch_object(b: &BatchRecord) -> Value {
    let at = |name: &str| b.times.get(name).map(|ms| ms / 1000);
    let errors = (!b.refused.is_empty() || b.error.is_some() || b.refused_from.is_some()).then(|| {
        let mut data: Vec<Value> = b
            .refused
            .iter()
            .chain(b.refused_from.as_ref())
            .map(|e| json!({"code": e.code, "message": e.message, "line": e.line + 1, "param": null}))
            .collect();
        if let Some(e) = &b.error {
            data.push(json!({"code": "batch_failed", "message": e, "line": null, "param": null}));
        }
        json!({"object": "list", "data": data})
    });
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status.as_str(),
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_ms / 1000,
        "in_progress_at": at("in_progress"),
        "expires_at": b.expires_ms / 1000,
        "finalizing_at": at("finalizing"),
        "completed_at": at("completed"),
        "failed_at": at("failed"),
        "expired_at": at("expired"),
        "cancelling_at": at("cancelling"),
        "cancelled_at": at("cancelled"),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata,
    })
}

/// The lines of a batch's input file, each checked as its endpoint's request; an error
/// names the line (from 1) and what is wrong.
/// Creates a batch of the requests in `input_file_id`, each run once as a task of the
/// batch priority class (interactive traffic keeps going first).
#[utoipa::path(post, path = "/v1/batches", tag = "openai", request_body = CreateBatch,
    responses((status = 200, description = "the batch", body = Object)))]
pub(super) async fn create(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_body_up_to(&ctx, &headers, body, 64 * 1024).await?;
    let req: CreateBatch = openai::parse(&body)?;
    if !matches!(req.endpoint.as_str(), "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings") {
        return Err(ApiError::invalid(
            &format!("`endpoint` is {:?}; use /v1/chat/completions, /v1/completions or /v1/embeddings", req.endpoint),
            Some("endpoint"),
        ));
    }
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
    let lines = parse_lines(&req.endpoint, &bytes).map_err(|e| ApiError::invalid(&e, Some("input_file_id")))?;
    for line in &lines {
        check_model(&key, &line.chat.model)?;
    }
    let total = lines.len() as u32;
    drop(lines);
    // Paged once per file, for the gateways that will drive batches over it.
    if ctx.store.files().pages(&file.id).await.map_err(store_error)?.is_none() {
        ctx.store.files().put_pages(&file.id, &pages_of(&bytes)).await.map_err(store_error)?;
    }
    drop(bytes);
    let now = bitinglip_nats::now_ms();
    let batch = BatchRecord {
        id: format!("batch_{}", ulid::Ulid::new()),
        owner: Some(key.id.clone()),
        endpoint: req.endpoint,
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
        times: BTreeMap::from([("in_progress".to_string(), now)]),
        error: None,
        runner: None,
        runner_until_ms: 0,
        refused_from: None,
    };
    ctx.store.batches().create(&batch).await.map_err(store_error)?;
    Ok(Json(batch_object(&batch)))
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
    responses((status = 200, description = "the batch", body = Object)))]
pub(super) async fn get(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(batch_object(&owned_batch(&ctx, &key, &id).await?.0)))
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
    responses((status = 200, description = "`{object: \"list\", data, first_id, last_id, has_more}`", body = Object)))]
pub(super) async fn list(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Query(q): Query<ListBatches>,
) -> Result<Json<Value>, ApiError> {
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
                data.push(batch_object(&b));
            }
        }
    }
    let first = data.first().map(|b| b["id"].clone());
    let last = data.last().map(|b| b["id"].clone());
    Ok(Json(json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more})))
}

/// Cancels a batch: no more of its lines start, running ones stop; it ends `cancelled`
/// with what finished in its files.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "openai",
    params(("id" = String, Path, description = "the batch's id (`batch_…`)")),
    responses((status = 200, description = "the batch, `cancelling` (or as it was, when it had ended)", body = Object)))]
pub(super) async fn cancel(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    loop {
        let (mut b, rev) = owned_batch(&ctx, &key, &id).await?;
        if b.status.is_final() || matches!(b.status, BatchStatus::Cancelling | BatchStatus::Finalizing) {
            return Ok(Json(batch_object(&b)));
        }
        b.status = BatchStatus::Cancelling;
        b.times.insert("cancelling".into(), bitinglip_nats::now_ms());
        match ctx.store.batches().update(&b, rev).await {
            Ok(_) => return Ok(Json(batch_object(&b))),
            Err(bitinglip_nats::StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_error(e)),
        }
    }
}

/// The HTTP status of a failed line, as the gateway would have answered it.
pub(super) fn status_of(kind: ErrorKind) -> u16 {
    ApiError::from(WireError::new(kind, "")).status.as_u16()
}
