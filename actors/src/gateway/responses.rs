//! The Responses API for text: `POST /v1/responses` (plain or a stream of typed events),
//! `GET` and `DELETE /v1/responses/{id}`. A response runs as one task of the model's queue,
//! like a chat completion; its answer and the conversation it closes are stored (owned by
//! the key) so that `previous_response_id` continues it from any gateway.

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::Body,
    extract::{Extension, State},
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json,
};
use bitinglip_bus_schema::{
    ApiKey, ChatMessage, ErrorKind, FinishReason, Scope, StoredResponse, TaskCompleted, ToolCall, WireError,
};
use bitinglip_client::CancelOnDrop;
use serde_json::{json, Value};
use tracing::Instrument;

use super::{
    limits::FullQueues,
    openai::{self, ApiError, Path, ToolMode},
    submit::{admit, gateway_span, gather, read_body, submit_chat},
};
use crate::NodeContext;

mod input;
mod stream;

use input::{prepare, Prepared, ResponseRequest};
use stream::Run;

/// The ids of a response's items, from its task's id.
struct Ids {
    response: String,
    message: String,
    task: String,
}

impl Ids {
    fn new(task: &str) -> Self {
        Self { response: format!("resp_{task}"), message: format!("msg_{task}"), task: task.to_string() }
    }

    fn call_item(&self, index: usize) -> String {
        format!("fc_{}_{index}", self.task)
    }
}

fn message_item(ids: &Ids, text: &str, status: &str) -> Value {
    let content: Vec<Value> = if status == "in_progress" { vec![] } else { vec![text_part(text)] };
    json!({"type": "message", "id": ids.message, "status": status, "role": "assistant", "content": content})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

fn call_item(ids: &Ids, index: usize, call: &ToolCall, status: &str) -> Value {
    json!({"type": "function_call", "id": ids.call_item(index), "call_id": call.id, "name": call.name,
           "arguments": call.arguments, "status": status})
}

/// The output items of a finished answer.
fn output_items(ids: &Ids, mode: &ToolMode, text: &str, done: &TaskCompleted) -> Vec<Value> {
    let mut items = Vec::new();
    let forced = *mode != ToolMode::Free;
    if done.tool_calls.is_empty() || (!forced && !text.is_empty()) {
        items.push(message_item(ids, text, "completed"));
    }
    items.extend(done.tool_calls.iter().enumerate().map(|(i, c)| call_item(ids, i, c, "completed")));
    items
}

/// The response object: `status` with `output` and `usage`, the request's settings echoed.
fn response_object(
    ids: &Ids,
    model: &str,
    created: u64,
    echo: &Value,
    status: &str,
    output: Vec<Value>,
    done: Option<&TaskCompleted>,
) -> Value {
    let mut r = json!({
        "id": ids.response,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "error": null,
        "incomplete_details": null,
        "usage": null,
    });
    if let (Some(obj), Some(extra)) = (r.as_object_mut(), echo.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    if let Some(done) = done {
        let u = &done.usage;
        r["usage"] = json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        });
        if done.finish_reason == FinishReason::Length {
            r["status"] = json!("incomplete");
            r["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
    }
    r
}

/// Stores the finished response and its conversation (the answer appended).
async fn keep(
    ctx: &NodeContext,
    key: &ApiKey,
    prepared: &Prepared,
    ids: &Ids,
    text: &str,
    done: &TaskCompleted,
    body: &Value,
) -> Result<(), ApiError> {
    if !prepared.store {
        return Ok(());
    }
    let mut conversation = prepared.conversation.clone();
    let forced = prepared.chat.tool_choice.is_forced();
    let content = if forced { String::new() } else { text.to_string() };
    conversation.push(ChatMessage { tool_calls: done.tool_calls.clone(), ..ChatMessage::new("assistant", content) });
    let stored = StoredResponse {
        id: ids.response.clone(),
        owner: Some(key.id.clone()),
        model: prepared.chat.model.clone(),
        created_ms: bitinglip_nats::now_ms(),
        conversation,
        body: body.to_string(),
    };
    ctx.store.responses().put(&stored).await.map_err(|e| ApiError::from(WireError::from(e)))
}

/// A response: the model's answer to `input`, continuing `previous_response_id`.
///
/// With `stream: true` the answer is `text/event-stream` of typed events (`event: <type>`,
/// data with `type` and `sequence_number`): `response.created`, `response.in_progress`,
/// `response.output_item.added`, `response.content_part.added`,
/// `response.output_text.delta`…, `response.output_text.done`,
/// `response.content_part.done`, `response.output_item.done` (for a forced function call:
/// `response.function_call_arguments.delta`… and `.done`), then `response.completed` (or
/// `response.failed`). Stored unless `store: false`.
#[utoipa::path(post, path = "/v1/responses", tag = "openai",
    request_body = ResponseRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "the same key and body: the same task, once"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context of the caller"),
    ),
    responses((status = 200, description = "the response object, or with `stream: true` its events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((Object = "application/json"), (String = "text/event-stream")))))]
pub(super) async fn create(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Extension(full): Extension<Arc<FullQueues>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let span = gateway_span("/v1/responses", &headers);
    let result = respond(ctx, key, full, headers, body, span.clone()).instrument(span).await;
    if let Err(err) = &result {
        crate::metrics::metrics().requests.with_label_values(&["-", err.code()]).inc();
    }
    result
}

async fn respond(
    ctx: NodeContext,
    key: ApiKey,
    full: Arc<FullQueues>,
    headers: HeaderMap,
    body: Body,
    span: tracing::Span,
) -> Result<Response, ApiError> {
    let body = read_body(&ctx, &headers, body).await?;
    let permit = admit(&ctx)?;
    let request: ResponseRequest = openai::parse(&body)?;
    let prepared = prepare(&ctx, &key, request).await?;
    let mode = ToolMode::of(&prepared.chat);
    let model = prepared.chat.model.clone();
    let (task_id, watch, duplicate) = submit_chat(&ctx, &full, &headers, &key, prepared.chat.clone(), true).await?;
    span.record("task.id", task_id.as_str());
    let ids = Ids::new(task_id.as_str());
    let created = bitinglip_nats::now_ms() / 1000;
    let mut cancel = CancelOnDrop::new(&ctx.bus, Some(&key.id), &task_id);
    if duplicate {
        cancel.disarm();
    }
    let mut resp = if prepared.stream {
        let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
        let run = Run { ctx: ctx.clone(), key, prepared, ids, mode, model, created };
        tokio::spawn(async move { run.stream(watch, cancel, tx).await }.instrument(span.clone()));
        let events = futures::stream::unfold((rx, permit), |(mut rx, permit)| async move {
            rx.recv().await.map(|e| (Ok::<_, Infallible>(e), (rx, permit)))
        });
        // As a chat stream: closed after `gateway.stream_idle_timeout` with no event, which
        // ends the run and so cancels the task.
        let events = super::submit::idle_limited(events, ctx.config.gateway.stream_idle_timeout);
        Sse::new(events).keep_alive(KeepAlive::default()).into_response()
    } else {
        let timeout = ctx.config.gateway.request_timeout;
        let (text, done) = match tokio::time::timeout(timeout, gather(watch)).await {
            Err(_) => return Err(WireError::new(ErrorKind::Timeout, format!("no answer within {timeout:?}")).into()),
            Ok(Err(err)) => {
                cancel.disarm();
                return Err(err.into());
            }
            Ok(Ok(v)) => v,
        };
        cancel.disarm();
        crate::metrics::metrics().requests.with_label_values(&[&model, "ok"]).inc();
        let output = output_items(&ids, &mode, &text, &done);
        let object = response_object(&ids, &model, created, &prepared.echo, "completed", output, Some(&done));
        keep(&ctx, &key, &prepared, &ids, &text, &done, &object).await?;
        Json(object).into_response()
    };
    resp.headers_mut().insert("x-task-id", task_id.as_str().parse().expect("task ids are valid header values"));
    Ok(resp)
}

/// The stored response `id` if `key` may see it.
async fn owned(ctx: &NodeContext, key: &ApiKey, id: &str) -> Result<StoredResponse, ApiError> {
    let stored = ctx.store.responses().get(id).await.map_err(WireError::from)?;
    match stored {
        Some(s) if key.scope == Scope::Admin || s.owner.as_deref() == Some(key.id.as_str()) => Ok(s),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found_error", format!("no stored response {id:?}"))
            .with_code("not_found")),
    }
}

/// A stored response, as it was returned; another key's is a 404.
#[utoipa::path(get, path = "/v1/responses/{id}", tag = "openai",
    params(("id" = String, Path, description = "the response's id (`resp_…`)")),
    responses((status = 200, description = "the response object", body = Object)))]
pub(super) async fn get(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let stored = owned(&ctx, &key, &id).await?;
    let body: Value = serde_json::from_str(&stored.body)
        .map_err(|e| ApiError::from(WireError::new(ErrorKind::Internal, format!("stored response unreadable: {e}"))))?;
    Ok(Json(body))
}

/// Deletes a stored response (it can no longer be read or continued).
#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "openai",
    params(("id" = String, Path, description = "the response's id (`resp_…`)")),
    responses((status = 200, description = "`{id, object: \"response\", deleted: true}`", body = Object)))]
pub(super) async fn delete(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    owned(&ctx, &key, &id).await?;
    ctx.store.responses().delete(&id).await.map_err(WireError::from)?;
    Ok(Json(json!({"id": id, "object": "response", "deleted": true})))
}
