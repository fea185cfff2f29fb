//! The task API: submit now, read the result or the events later, from any gateway.

use std::{convert::Infallible, sync::Arc};

use axum::{
    extract::Extension,
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use bitinglip_bus_schema::{ApiKey, ErrorKind, GetTask, ListTasks, Scope, TaskId, TaskRecord, TaskState, WireError};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{
    access::{auth::sees, limits::Admission},
    error::{ApiError, Path, Query},
    openai,
    submit::{gateway_span, read_body, submit_chat, Call},
};
use crate::gateway::access::auth::Caller;
use crate::NodeContext;
use bitinglip_client::{Relayed, TaskWatch};

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|e| ApiError::invalid(&e.to_string(), Some("id")))
}

/// A task, as the task API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TaskView {
    /// The task's id (a ULID).
    id: String,
    /// `task`.
    object: &'static str,
    /// The model it runs on.
    model: String,
    /// `queued`, `running`, `completed`, `failed` or `cancelled`.
    status: &'static str,
    /// `interactive` or `batch`.
    priority: &'static str,
    /// Deliveries to a worker so far.
    attempts: u32,
    /// The worker that runs or ran it.
    worker: Option<String>,
    /// Submitted, ms since the epoch.
    created_ms: u64,
    /// Last changed, ms since the epoch.
    updated_ms: u64,
    /// The answer, once completed.
    result: Option<TaskResult>,
    /// Why it failed, once failed.
    error: Option<TaskError>,
    /// From the cancel request to the engine stopping, ms (cancelled tasks).
    cancel_to_stop_ms: Option<f64>,
}

/// A completed task's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TaskResult {
    /// The whole text.
    text: String,
    /// `stop`, `length` or `tool_calls`.
    finish_reason: &'static str,
    /// Chunks it was streamed in.
    chunks: u64,
    /// Tokens and timings.
    usage: openai::OpenAiUsage,
    /// The answer's tool calls (`finish_reason` `tool_calls`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<TaskToolCall>,
}

/// A tool call of a task's answer.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TaskToolCall {
    /// The call's id.
    id: String,
    /// The function called.
    name: String,
    /// Its arguments, JSON text.
    arguments: String,
}

fn tool_calls(calls: &[bitinglip_bus_schema::ToolCall]) -> Vec<TaskToolCall> {
    calls
        .iter()
        .map(|c| TaskToolCall { id: c.id.clone(), name: c.name.clone(), arguments: c.arguments.clone() })
        .collect()
}

/// Why a task failed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TaskError {
    /// The error kind: `engine`, `context_length`, `timeout`, …
    code: &'static str,
    /// For a person.
    message: String,
}

impl From<&TaskRecord> for TaskView {
    fn from(r: &TaskRecord) -> Self {
        TaskView {
            id: r.task_id.as_str().to_string(),
            object: "task",
            model: r.model.clone(),
            status: r.state.as_str(),
            priority: r.priority.as_str(),
            attempts: r.attempt,
            worker: r.worker.clone(),
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            result: r.result.as_ref().map(|d| TaskResult {
                text: d.text.clone(),
                finish_reason: openai::finish(d.finish_reason),
                chunks: d.chunks,
                usage: (&d.usage).into(),
                tool_calls: tool_calls(&d.tool_calls),
            }),
            error: r.error.as_ref().map(|e| TaskError { code: e.kind.as_str(), message: e.message.clone() }),
            cancel_to_stop_ms: r.cancel_to_stop_ms,
        }
    }
}

/// A page of tasks, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TaskPage {
    /// `list`.
    object: &'static str,
    /// The tasks.
    data: Vec<TaskView>,
    /// More tasks are older than this page.
    has_more: bool,
    /// The `before` of the next page.
    next: Option<u64>,
}

/// The answer to `POST /v1/tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TaskAccepted {
    /// The task's id.
    id: String,
    /// `task`.
    object: &'static str,
    /// The model.
    model: String,
    /// `queued`.
    status: &'static str,
    /// True when the `Idempotency-Key` named an earlier task, which this is.
    duplicate: bool,
    /// Where its events stream.
    events_url: String,
}

/// The record with an answer kept in the results store (too large for one message) read
/// back into it, its other large parts too.
async fn with_text(ctx: &NodeContext, mut record: TaskRecord) -> Result<TaskRecord, ApiError> {
    if let Some(done) = record.result.as_mut() {
        if let Some(name) = &done.text_object {
            done.text = ctx.store.results().get(name).await.map_err(WireError::from)?.unwrap_or_default();
        }
        ctx.store.results().resolve_parts(done).await.map_err(WireError::from)?;
    }
    Ok(record)
}

/// A task's record, when `key` may see it: another key's task is a 404, as if it did
/// not exist.
async fn read(ctx: &NodeContext, key: &ApiKey, id: &TaskId) -> Result<TaskRecord, ApiError> {
    let record = ctx.bus.call(&GetTask { task_id: id.clone() }).await?;
    if !sees(key, &record) {
        return Err(WireError::new(ErrorKind::NotFound, format!("no task {id}")).into());
    }
    Ok(record)
}

/// Queue a chat task; answers 202 with its id at once.
///
/// The body is a chat completion request (`stream` is ignored). Traced as a `gateway`
/// span, like a chat completion, so the task's trace has its root here.
#[utoipa::path(post, path = "/v1/tasks", tag = "tasks",
    request_body = openai::ChatCompletionRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key and body: the same task, once")),
    responses((status = 202, body = TaskAccepted)))]
pub(super) async fn submit(call: Call) -> Result<Response, ApiError> {
    let span = gateway_span("/v1/tasks", &call.headers);
    tracing::Instrument::instrument(submit_task(call), span).await
}

async fn submit_task(call: Call) -> Result<Response, ApiError> {
    let Call { ctx, key, admission, headers, body } = call;
    // The body first: a slow client spends its own time, not one of the request slots.
    let body = read_body(&ctx, &headers, body).await?;
    let _permit = admission.admit()?;
    let request = openai::parse_request(&body)?;
    let wait_for_model = request.sampling.wait_for_model.unwrap_or(true);
    let chat = request.into_chat()?;
    let model = chat.model.clone();
    let (task_id, _watch, duplicate) = submit_chat(&ctx, &admission.full, &headers, &key, chat, wait_for_model).await?;
    let body = TaskAccepted {
        id: task_id.as_str().to_string(),
        object: "task",
        model,
        status: "queued",
        duplicate,
        events_url: format!("/v1/tasks/{task_id}/events"),
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// A task's status and result; another key's task is a 404.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "the task's id", pattern = "^[A-Za-z0-9_-]{1,128}$")),
    responses((status = 200, body = TaskView)))]
pub(super) async fn get(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let record = with_text(&ctx, read(&ctx, &key, &id).await?).await?;
    Ok(Json((&record).into()))
}

/// The query of `GET /v1/tasks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Most tasks on the page (default 100, at most 1000).
    limit: Option<u32>,
    /// Only tasks in this state.
    #[param(pattern = "^(queued|running|completed|failed|cancelled)$")]
    status: Option<String>,
    /// The cursor of the next page, as the previous page's `next` gave it.
    before: Option<u64>,
}

/// Recent tasks, newest first: this key's, or every task for an admin key.
#[utoipa::path(get, path = "/v1/tasks", tag = "tasks", params(ListQuery), responses((status = 200, body = TaskPage)))]
pub(super) async fn list(Caller { ctx, key }: Caller, Query(q): Query<ListQuery>) -> Result<Json<TaskPage>, ApiError> {
    // An admin key lists every task; any other key its own.
    let owner = (key.scope != Scope::Admin).then(|| key.id.clone());
    let state = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            TaskState::parse(s).ok_or_else(|| ApiError::invalid(&format!("unknown status {s:?}"), Some("status")))?,
        ),
    };
    let page = ctx.bus.call(&ListTasks { limit: q.limit, state, owner, before: q.before }).await?;
    let mut data = Vec::with_capacity(page.tasks.len());
    for record in page.tasks {
        data.push(TaskView::from(&with_text(&ctx, record).await?));
    }
    Ok(Json(TaskPage { object: "list", data, has_more: page.next.is_some(), next: page.next }))
}

/// Cancel a task; answers with its record (the engine stops within one token).
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks",
    params(("id" = String, Path, description = "the task's id", pattern = "^[A-Za-z0-9_-]{1,128}$")),
    responses((status = 200, body = TaskView)))]
pub(super) async fn cancel(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    // Only a task this key may see can be cancelled by it.
    let record = read(&ctx, &key, &id).await?;
    bitinglip_client::cancel(&ctx.bus, record.owner.as_deref(), &id, "cancelled over HTTP").await?;
    let record = with_text(&ctx, read(&ctx, &key, &id).await?).await?;
    Ok(Json((&record).into()))
}

/// A task's events as server-sent events, resumable.
///
/// Event names: `started` (`{attempt, resume_from_seq}`), `chunk` (`{seq, text}`, with
/// `id: <seq>`), then `completed` (`{text, finish_reason, chunks, usage}`) or `failed`
/// (`{code, message}`). Reconnecting with `Last-Event-ID: <seq>` (to any gateway)
/// continues with the next chunk, no gap, no repeat.
#[utoipa::path(get, path = "/v1/tasks/{id}/events", tag = "tasks",
    params(("id" = String, Path, description = "the task's id", pattern = "^[A-Za-z0-9_-]{1,128}$"),
        ("Last-Event-ID" = Option<String>, Header, description = "the last chunk's `seq` seen")),
    responses((status = 200, description = "the task's events", content_type = "text/event-stream", body = String)))]
pub(super) async fn events(
    Caller { ctx, key }: Caller,
    Extension(admission): Extension<Arc<Admission>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = admission.admit()?;
    let id = parse_id(&id)?;
    // Unknown ids (and other keys' tasks) are a 404 now, not an endless stream.
    let owner = read(&ctx, &key, &id).await?.owner;
    let next_seq = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        None => 0,
        // u64::MAX would overflow the next sequence number: it is no chunk number either.
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| ApiError::invalid("Last-Event-ID must be a chunk number", Some("Last-Event-ID")))?,
    };
    let watch = TaskWatch::resume(&ctx.bus, &ctx.store, owner.as_deref(), &id, next_seq).await?;
    let results = ctx.clone();
    let stream = futures::stream::unfold(Some(watch), move |watch| {
        let ctx = results.clone();
        async move {
            let mut watch = watch?;
            let event = match watch.next().await? {
                Relayed::Started { attempt, resume_from_seq } => Event::default()
                    .event("started")
                    .data(json!({"attempt": attempt, "resume_from_seq": resume_from_seq}).to_string()),
                Relayed::Text { seq, text, .. } => Event::default()
                    .event("chunk")
                    .id(seq.to_string())
                    .data(json!({"seq": seq, "text": text}).to_string()),
                Relayed::Done(done) => {
                    let text = match &done.text_object {
                        Some(name) => ctx.store.results().get(name).await.ok().flatten().unwrap_or_default(),
                        None => done.text,
                    };
                    let body = json!({
                        "text": text,
                        "finish_reason": openai::finish(done.finish_reason),
                        "chunks": done.chunks,
                        "usage": {"prompt_tokens": done.usage.prompt_tokens, "completion_tokens": done.usage.completion_tokens},
                        "tool_calls": tool_calls(&done.tool_calls),
                    });
                    return Some((Ok(Event::default().event("completed").data(body.to_string())), None));
                }
                Relayed::Failed(err) => {
                    let body = json!({"code": err.kind.as_str(), "message": err.message});
                    return Some((Ok(Event::default().event("failed").data(body.to_string())), None));
                }
            };
            Some((Ok(event), Some(watch)))
        }
    });
    // The slot is held while the stream is open.
    let stream = futures::StreamExt::map(stream, move |e| {
        let _held = &permit;
        e
    });
    let stream = super::submit::idle_limited(stream, ctx.config.gateway.stream_idle_timeout);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
