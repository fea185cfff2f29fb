//! The Responses API for text: `POST /v1/responses` (plain or a stream of typed events),
//! `GET` and `DELETE /v1/responses/{id}`. A response runs as one task of the model's queue,
//! like a chat completion; its answer and the conversation it closes are stored (owned by
//! the key) so that `previous_response_id` continues it from any gateway.

use std::convert::Infallible;

use axum::{
    http::StatusCode,
    response::{sse::Event, Response},
    Json,
};
use bitinglip_bus_schema::{
    ApiKey, ChatMessage, ErrorKind, FinishReason, Scope, StoredResponse, TaskCompleted, ToolCall, WireError,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument;
use utoipa::ToSchema;

use super::pipeline::{self, Asked, Events, Finished, Shape, Streamed};
use crate::gateway::access::auth::Caller;
use crate::{
    gateway::{
        error::{self, ApiError, Path},
        openai::{Deleted, ToolMode},
        submit::{Call, TaskHeaders},
    },
    NodeContext,
};

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

/// Where a response, or one of its items, is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

/// A response object, as `POST /v1/responses` answers and `GET /v1/responses/{id}` reads
/// it back: its status, output and usage, with the request's settings echoed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ResponseObject {
    /// `resp_<task id>`.
    id: String,
    /// `response`.
    object: String,
    /// Unix seconds.
    created_at: u64,
    status: Status,
    model: String,
    /// The answer's items: a message, function calls.
    output: Vec<OutputItem>,
    /// Why it failed.
    error: Option<ResponseError>,
    /// Why it is incomplete (`max_output_tokens`).
    incomplete_details: Option<IncompleteDetails>,
    usage: Option<ResponseUsage>,
    /// The request's settings: `instructions`, `max_output_tokens`, `metadata`,
    /// `parallel_tool_calls`, `previous_response_id`, `temperature`, `top_p`,
    /// `tool_choice`, `tools`, `text`, `store`, `user`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    settings: Map<String, Value>,
}

/// One item of a response's output.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum OutputItem {
    /// The assistant's text.
    Message { id: String, status: Status, role: String, content: Vec<OutputText> },
    /// A call of one of the request's functions.
    FunctionCall { id: String, call_id: String, name: String, arguments: String, status: Status },
}

/// A text part of a message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct OutputText {
    /// `output_text`.
    #[serde(rename = "type")]
    kind: String,
    text: String,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    annotations: Vec<Value>,
}

/// A failed response's error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ResponseError {
    code: String,
    message: String,
}

/// Why a response is incomplete.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct IncompleteDetails {
    reason: String,
}

/// A response's token counts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ResponseUsage {
    input_tokens: u32,
    input_tokens_details: CachedTokens,
    output_tokens: u32,
    output_tokens_details: ReasoningTokens,
    total_tokens: u32,
}

/// Input tokens the engine took from its prefix cache.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct CachedTokens {
    cached_tokens: u32,
}

/// Output tokens spent on reasoning (none).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub(crate) struct ReasoningTokens {
    reasoning_tokens: u32,
}

fn message_item(ids: &Ids, text: &str, status: Status) -> OutputItem {
    let content = if status == Status::InProgress { vec![] } else { vec![text_part(text)] };
    OutputItem::Message { id: ids.message.clone(), status, role: "assistant".into(), content }
}

fn text_part(text: &str) -> OutputText {
    OutputText { kind: "output_text".into(), text: text.to_string(), annotations: vec![] }
}

fn call_item(ids: &Ids, index: usize, call: &ToolCall, status: Status) -> OutputItem {
    OutputItem::FunctionCall {
        id: ids.call_item(index),
        call_id: call.id.clone(),
        name: call.name.clone(),
        arguments: call.arguments.clone(),
        status,
    }
}

/// The output items of a finished answer.
fn output_items(ids: &Ids, mode: &ToolMode, text: &str, done: &TaskCompleted) -> Vec<OutputItem> {
    let mut items = Vec::new();
    let forced = *mode != ToolMode::Free;
    if done.tool_calls.is_empty() || (!forced && !text.is_empty()) {
        items.push(message_item(ids, text, Status::Completed));
    }
    items.extend(done.tool_calls.iter().enumerate().map(|(i, c)| call_item(ids, i, c, Status::Completed)));
    items
}

/// The response object: `status` with `output` and `usage`, the request's settings echoed.
fn response_object(
    ids: &Ids,
    model: &str,
    created: u64,
    echo: &Value,
    status: Status,
    output: Vec<OutputItem>,
    done: Option<&TaskCompleted>,
) -> ResponseObject {
    let mut r = ResponseObject {
        id: ids.response.clone(),
        object: "response".into(),
        created_at: created,
        status,
        model: model.to_string(),
        output,
        error: None,
        incomplete_details: None,
        usage: None,
        settings: echo.as_object().cloned().unwrap_or_default(),
    };
    if let Some(done) = done {
        let u = &done.usage;
        r.usage = Some(ResponseUsage {
            input_tokens: u.prompt_tokens,
            input_tokens_details: CachedTokens { cached_tokens: u.cached_tokens },
            output_tokens: u.completion_tokens,
            output_tokens_details: ReasoningTokens { reasoning_tokens: 0 },
            total_tokens: u.prompt_tokens + u.completion_tokens,
        });
        if done.finish_reason == FinishReason::Length {
            r.status = Status::Incomplete;
            r.incomplete_details = Some(IncompleteDetails { reason: "max_output_tokens".into() });
        }
    }
    r
}

impl ResponseObject {
    /// The same response, failed with `code` and `message`.
    fn failed(mut self, code: &str, message: &str) -> Self {
        self.status = Status::Failed;
        self.error = Some(ResponseError { code: code.to_string(), message: message.to_string() });
        self
    }
}

/// Stores the finished response and its conversation (the answer appended).
async fn keep(
    ctx: &NodeContext,
    key: &ApiKey,
    prepared: &Prepared,
    ids: &Ids,
    text: &str,
    done: &TaskCompleted,
    body: &ResponseObject,
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
        body: serde_json::to_string(body).unwrap_or_default(),
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
    params(TaskHeaders),
    responses((status = 200, description = "the response object, or with `stream: true` its events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((ResponseObject = "application/json"), (String = "text/event-stream")))))]
pub(crate) async fn create(call: Call) -> Result<Response, ApiError> {
    pipeline::run::<Responses>(call).await
}

/// `/v1/responses`: the prepared request (its conversation, settings and store choice).
pub(crate) struct Responses {
    prepared: Prepared,
    mode: ToolMode,
}

impl Shape for Responses {
    const ROUTE: &'static str = "/v1/responses";
    type Answer = ResponseObject;

    async fn read(ctx: &NodeContext, key: &ApiKey, body: &[u8]) -> Result<Asked<Self>, ApiError> {
        let request: ResponseRequest = error::parse(body)?;
        let prepared = prepare(ctx, key, request).await?;
        let (chat, stream, mode) = (prepared.chat.clone(), prepared.stream, ToolMode::of(&prepared.chat));
        Ok(Asked { shape: Responses { prepared, mode }, chat, stream, wait_for_model: true })
    }

    fn answer(&self, f: &Finished) -> ResponseObject {
        let ids = Ids::new(f.task_id.as_str());
        let output = output_items(&ids, &self.mode, &f.text, &f.done);
        let model = &self.prepared.chat.model;
        response_object(&ids, model, f.created, &self.prepared.echo, Status::Completed, output, Some(&f.done))
    }

    async fn keep(
        &self,
        ctx: &NodeContext,
        key: &ApiKey,
        f: &Finished,
        answer: &ResponseObject,
    ) -> Result<(), ApiError> {
        keep(ctx, key, &self.prepared, &Ids::new(f.task_id.as_str()), &f.text, &f.done, answer).await
    }

    fn events(self, s: Streamed) -> Events {
        let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
        let model = self.prepared.chat.model.clone();
        let ids = Ids::new(s.task_id.as_str());
        let run =
            Run { ctx: s.ctx, key: s.key, prepared: self.prepared, ids, mode: self.mode, model, created: s.created };
        let (watch, cancel) = (s.watch, s.cancel);
        tokio::spawn(async move { run.stream(watch, cancel, tx).await }.instrument(s.relay));
        Box::pin(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) },
        ))
    }
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
    responses((status = 200, description = "the response object", body = ResponseObject)))]
pub(crate) async fn get(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<ResponseObject>, ApiError> {
    let stored = owned(&ctx, &key, &id).await?;
    let body: ResponseObject = serde_json::from_str(&stored.body)
        .map_err(|e| ApiError::from(WireError::new(ErrorKind::Internal, format!("stored response unreadable: {e}"))))?;
    Ok(Json(body))
}

/// Deletes a stored response (it can no longer be read or continued).
#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "openai",
    params(("id" = String, Path, description = "the response's id (`resp_…`)")),
    responses((status = 200, description = "the response is deleted", body = Deleted)))]
pub(crate) async fn delete(Caller { ctx, key }: Caller, Path(id): Path<String>) -> Result<Json<Deleted>, ApiError> {
    owned(&ctx, &key, &id).await?;
    ctx.store.responses().delete(&id).await.map_err(WireError::from)?;
    Ok(Json(Deleted::new(id, "response")))
}
