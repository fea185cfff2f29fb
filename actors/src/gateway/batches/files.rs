//! The Files API: upload a JSONL file of requests (within the key's share of the store),
//! list, read and delete files; a batch's output and error files are read here too.

use axum::{
    body::Body,
    http::{header, HeaderMap},
    response::{IntoResponse, Response},
    Json,
};
use bitinglip_bus_schema::{ApiKey, FileRecord};
use serde::Serialize;
use utoipa::ToSchema;

use super::{input::multipart, not_found, quota, sees, store_error};
use crate::gateway::access::auth::Caller;
use crate::{
    gateway::{
        error::{ApiError, Path},
        openai::Deleted,
        submit::read_body_up_to,
    },
    NodeContext,
};

/// The most bytes of one uploaded file (the whole is held in memory while it is stored).
const FILE_MAX: usize = 256 * 1024 * 1024;

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
pub(crate) async fn upload(
    Caller { ctx, key }: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<FileObject>, ApiError> {
    let limit = FILE_MAX.min(usize::try_from(ctx.config.jetstream.files_max_bytes).unwrap_or(FILE_MAX));
    let body = read_body_up_to(&ctx, &headers, body, limit).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let parts = multipart(content_type, &body).map_err(|e| ApiError::invalid(&e.to_string(), None))?;
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

/// This key's files (an admin key: all), newest first.
#[utoipa::path(get, path = "/v1/files", tag = "openai", responses((status = 200, body = FileList)))]
pub(crate) async fn list(Caller { ctx, key }: Caller) -> Result<Json<FileList>, ApiError> {
    let files = ctx.store.files().list().await.map_err(store_error)?;
    let data: Vec<FileObject> = files.iter().filter(|f| sees(&key, f.owner.as_deref())).map(Into::into).collect();
    Ok(Json(FileList { object: "list", data, has_more: false }))
}

/// The files a key sees.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FileList {
    /// `list`.
    object: &'static str,
    /// Newest first.
    data: Vec<FileObject>,
    /// Always `false`: every file is on the one page.
    has_more: bool,
}

pub(super) async fn owned_file(ctx: &NodeContext, key: &ApiKey, id: &str) -> Result<FileRecord, ApiError> {
    match ctx.store.files().info(id).await.map_err(store_error)? {
        Some(f) if sees(key, f.owner.as_deref()) => Ok(f),
        _ => Err(not_found("file", id)),
    }
}

/// A file's record; another key's is a 404.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "openai",
    params(("id" = String, Path, description = "the file's id (`file-…`)")),
    responses((status = 200, body = FileObject)))]
pub(crate) async fn get(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<FileObject>, ApiError> {
    Ok(Json((&owned_file(&ctx, &key, &id).await?).into()))
}

/// A file's bytes.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "openai",
    params(("id" = String, Path, description = "the file's id (`file-…`)")),
    responses((status = 200, description = "the file, as it was stored", content_type = "application/octet-stream", body = String)))]
pub(crate) async fn content(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    owned_file(&ctx, &key, &id).await?;
    let bytes = ctx.store.files().read(&id).await.map_err(store_error)?.ok_or_else(|| not_found("file", &id))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Deletes a file.
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "openai",
    params(("id" = String, Path, description = "the file's id (`file-…`)")),
    responses((status = 200, description = "the file is deleted", body = Deleted)))]
pub(crate) async fn delete(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<Deleted>, ApiError> {
    owned_file(&ctx, &key, &id).await?;
    ctx.store.files().delete(&id).await.map_err(store_error)?;
    Ok(Json(Deleted::new(id, "file")))
}
