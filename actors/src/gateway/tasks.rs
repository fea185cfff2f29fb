//! The task API: submit now, read the result or the events later, from any gateway.

use std::convert::Infallible;

use axum::{
    body::Body,
    extract::{Extension, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use bitinglip_bus_schema::{
    ApiKey, ErrorKind, GetTask, ListTasks, Scope, TaskId, TaskList, TaskRecord, TaskState, TaskStatusReply, WireError,
};
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    auth::sees,
    openai::{self, ApiError},
    submit::{admit, read_body, submit_chat},
};
use crate::NodeContext;
use bitinglip_client::{Relayed, TaskWatch};

fn parse_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|e| ApiError::invalid(&e.to_string(), Some("id")))
}

/// A status record as JSON.
fn record_json(r: &TaskRecord) -> Value {
    json!({
        "id": r.task_id.as_str(),
        "object": "task",
        "model": r.model,
        "status": r.state.as_str(),
        "priority": r.priority.as_str(),
        "attempts": r.attempt,
        "worker": r.worker,
        "created_ms": r.created_ms,
        "updated_ms": r.updated_ms,
        "result": r.result.as_ref().map(|d| json!({
            "text": d.text,
            "finish_reason": openai::finish(d.finish_reason),
            "chunks": d.chunks,
            "usage": {
                "prompt_tokens": d.usage.prompt_tokens,
                "completion_tokens": d.usage.completion_tokens,
                "total_tokens": d.usage.prompt_tokens + d.usage.completion_tokens,
                "time_to_first_token_ms": d.usage.time_to_first_token_ms,
                "total_time_ms": d.usage.total_time_ms,
                "queue_time_ms": d.usage.queue_time_ms,
            },
        })),
        "error": r.error.as_ref().map(|e| json!({"code": e.kind.as_str(), "message": e.message})),
        "cancel_to_stop_ms": r.cancel_to_stop_ms,
    })
}

/// A task's record, when `key` may see it: another key's task is a 404, as if it did
/// not exist.
async fn read(ctx: &NodeContext, key: &ApiKey, id: &TaskId) -> Result<TaskRecord, ApiError> {
    let reply: TaskStatusReply = ctx
        .bus
        .request(ctx.bus.subjects().task_get(), &GetTask { task_id: id.clone() }, None, None)
        .await
        .map_err(|e| ApiError::from(WireError::from(&e)))?;
    match reply {
        TaskStatusReply::Found(r) if sees(key, &r) => Ok(r),
        TaskStatusReply::Found(_) => Err(WireError::new(ErrorKind::NotFound, format!("no task {id}")).into()),
        TaskStatusReply::Error(e) => Err(e.into()),
    }
}

/// `POST /v1/tasks`: the chat request; answers 202 with the id at once. Traced as a
/// `gateway` span, like a chat completion, so the task's trace has its root here.
pub(super) async fn submit(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!("gateway", otel.kind = "server", http.route = "/v1/tasks");
    let caller =
        headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(bitinglip_nats::trace::TraceParent::parse);
    bitinglip_nats::trace::continue_trace(&span, caller.as_ref());
    tracing::Instrument::instrument(submit_task(ctx, key, headers, body), span).await
}

async fn submit_task(ctx: NodeContext, key: ApiKey, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    // The body first: a slow client spends its own time, not one of the request slots.
    let body = read_body(&ctx, &headers, body).await?;
    let _permit = admit(&ctx)?;
    let request = openai::parse_request(&body)?;
    let wait_for_model = request.wait_for_model.unwrap_or(true);
    let chat = request.into_chat()?;
    let model = chat.model.clone();
    let (task_id, _watch, duplicate) = submit_chat(&ctx, &headers, &key, chat, wait_for_model).await?;
    let body = json!({
        "id": task_id.as_str(),
        "object": "task",
        "model": model,
        "status": "queued",
        "duplicate": duplicate,
        "events_url": format!("/v1/tasks/{task_id}/events"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `GET /v1/tasks/{id}`.
pub(super) async fn get(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(record_json(&read(&ctx, &key, &id).await?)))
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u32>,
    status: Option<String>,
    /// The cursor of the next page, as the previous page's `next` gave it.
    before: Option<u64>,
}

/// `GET /v1/tasks?limit=&status=`: newest first.
pub(super) async fn list(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    // An admin key lists every task; any other key its own.
    let owner = (key.scope != Scope::Admin).then(|| key.id.clone());
    let state = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            TaskState::parse(s).ok_or_else(|| ApiError::invalid(&format!("unknown status {s:?}"), Some("status")))?,
        ),
    };
    let reply: TaskList = ctx
        .bus
        .request(
            ctx.bus.subjects().task_list(),
            &ListTasks { limit: q.limit, state, owner, before: q.before },
            None,
            None,
        )
        .await
        .map_err(|e| ApiError::from(WireError::from(&e)))?;
    match reply {
        TaskList::Tasks { tasks, next } => Ok(Json(json!({
            "object": "list",
            "data": tasks.iter().map(record_json).collect::<Vec<_>>(),
            "has_more": next.is_some(),
            "next": next,
        }))),
        TaskList::Error(e) => Err(e.into()),
    }
}

/// `DELETE /v1/tasks/{id}`: cancel.
pub(super) async fn cancel(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    // Only a task this key may see can be cancelled by it.
    read(&ctx, &key, &id).await?;
    bitinglip_client::cancel(&ctx.bus, &id, "cancelled over HTTP").await?;
    let record = read(&ctx, &key, &id).await?;
    Ok(Json(record_json(&record)))
}

/// `GET /v1/tasks/{id}/events`: SSE. Every chunk carries `id: <seq>`; reconnecting with
/// `Last-Event-ID: <seq>` (to any gateway) continues with the next chunk, no gap, no
/// repeat. Event names: `started`, `chunk`, `completed`, `failed`.
pub(super) async fn events(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = admit(&ctx)?;
    let id = parse_id(&id)?;
    // Unknown ids (and other keys' tasks) are a 404 now, not an endless stream.
    read(&ctx, &key, &id).await?;
    let next_seq = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(|n| n + 1)
            .map_err(|_| ApiError::invalid("Last-Event-ID must be a chunk number", Some("Last-Event-ID")))?,
    };
    let watch = TaskWatch::resume(&ctx.bus, &ctx.store, &id, next_seq).await?;
    let stream = futures::stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        let event = match watch.next().await? {
            Relayed::Started { attempt, resume_from_seq } => Event::default()
                .event("started")
                .data(json!({"attempt": attempt, "resume_from_seq": resume_from_seq}).to_string()),
            Relayed::Text { seq, text } => {
                Event::default().event("chunk").id(seq.to_string()).data(json!({"seq": seq, "text": text}).to_string())
            }
            Relayed::Done(done) => {
                let body = json!({
                    "text": done.text,
                    "finish_reason": openai::finish(done.finish_reason),
                    "chunks": done.chunks,
                    "usage": {"prompt_tokens": done.usage.prompt_tokens, "completion_tokens": done.usage.completion_tokens},
                });
                return Some((Ok(Event::default().event("completed").data(body.to_string())), None));
            }
            Relayed::Failed(err) => {
                let body = json!({"code": err.kind.as_str(), "message": err.message});
                return Some((Ok(Event::default().event("failed").data(body.to_string())), None));
            }
        };
        Some((Ok(event), Some(watch)))
    });
    // The slot is held while the stream is open.
    let stream = futures::StreamExt::map(stream, move |e| {
        let _held = &permit;
        e
    });
    let stream = super::submit::idle_limited(stream, ctx.config.gateway.stream_idle_timeout);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
