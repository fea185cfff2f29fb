//! The Responses API for text: `POST /v1/responses` (plain or a stream of typed events),
//! `GET` and `DELETE /v1/responses/{id}`. A response runs as one task of the model's queue,
//! like a chat completion; its answer and the conversation it closes are stored (owned by
//! the key) so that `previous_response_id` continues it from any gateway.

use std::convert::Infallible;

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
    ApiKey, ChatMessage, ChatParams, ErrorKind, FinishReason, OutputFormat, Scope, StoredResponse, TaskCompleted,
    ToolCall, ToolChoice, ToolSpec, WireError,
};
use bitinglip_client::{CancelOnDrop, Relayed, TaskWatch};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument;
use utoipa::ToSchema;

use super::{
    openai::{self, ApiError, Path, ToolMode},
    routes::gather,
    submit::{admit, gateway_span, read_body, submit_chat},
};
use crate::{guided, NodeContext};

/// `POST /v1/responses` body (text only).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ResponseRequest {
    /// A model's id.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    /// A text (one user message), or a list of items: messages (`{role, content}`, content
    /// a text or `input_text`/`output_text` parts), `function_call` and
    /// `function_call_output` items.
    #[schema(value_type = Object)]
    input: Value,
    /// A system message put before the conversation (not carried on to later responses).
    #[serde(default)]
    instructions: Option<String>,
    /// The most tokens to generate.
    #[serde(default)]
    max_output_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (absent: greedy).
    #[serde(default)]
    temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    top_p: Option<f64>,
    /// Function tools: `{type: "function", name, description?, parameters?, strict?}`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{type: "function", name}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    /// False: at most one call.
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// `{format: {type: "text" | "json_object" | "json_schema", name?, schema?, strict?}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    text: Option<Value>,
    /// Continue the conversation of this stored response (of the same key).
    #[serde(default)]
    previous_response_id: Option<String>,
    /// Answer as server-sent events, one typed event each (`response.created`, …,
    /// `response.completed`).
    #[serde(default)]
    stream: bool,
    /// False: do not store the response (it cannot be read back or continued).
    #[serde(default)]
    store: Option<bool>,
    /// Up to 16 string pairs, returned with the response.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// The end user (kept for the caller's records).
    #[serde(default)]
    user: Option<String>,
    /// Not supported (reasoning models).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    reasoning: Option<Value>,
    /// Not supported: every response runs in the foreground (use the task API to submit
    /// now and read later).
    #[serde(default)]
    background: Option<bool>,
}

/// What a request becomes: the task's parameters and what the answer echoes.
struct Prepared {
    chat: ChatParams,
    /// The conversation without the instructions: what is stored.
    conversation: Vec<ChatMessage>,
    echo: Value,
    stream: bool,
    store: bool,
}

fn invalid(message: &str, param: &str) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// The text of a message's `content`: a string, or text parts.
fn content_text(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    other => {
                        return Err(invalid(
                            &format!("`{at}.content[{j}].type` is {other:?}; only text parts are supported"),
                            &format!("{at}.content[{j}].type"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => Err(invalid(&format!("`{at}.content` must be a string or a list of parts"), &format!("{at}.content"))),
    }
}

/// The conversation items of `input`.
fn input_messages(input: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![ChatMessage::new("user", s.clone())]),
        Value::Array(items) if !items.is_empty() => items,
        _ => return Err(invalid("`input` must be a string or a non-empty list of items", "input")),
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let field = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_string);
        match item.get("type").and_then(Value::as_str) {
            None | Some("message") => {
                let role =
                    field("role").ok_or_else(|| invalid(&format!("`{at}.role` is missing"), &format!("{at}.role")))?;
                let content = content_text(item.get("content").unwrap_or(&Value::Null), &at)?;
                messages.push(ChatMessage::new(role, content));
            }
            Some("function_call") => {
                let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                    return Err(invalid(&format!("`{at}` needs `call_id` and `name`"), &at));
                };
                let call = ToolCall { id: call_id, name, arguments: field("arguments").unwrap_or_default() };
                messages.push(ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") });
            }
            Some("function_call_output") => {
                let call_id = field("call_id")
                    .ok_or_else(|| invalid(&format!("`{at}.call_id` is missing"), &format!("{at}.call_id")))?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                messages.push(ChatMessage { tool_call_id: Some(call_id), ..ChatMessage::new("tool", output) });
            }
            Some(other) => {
                return Err(invalid(
                    &format!("`{at}.type` is {other:?}; use message, function_call or function_call_output"),
                    &format!("{at}.type"),
                ))
            }
        }
    }
    Ok(messages)
}

fn tools_of(tools: &[Value]) -> Result<Vec<ToolSpec>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(&format!("`tools[{i}].type` must be `function`"), &format!("tools[{i}].type")));
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("`tools[{i}].name` is missing"), &format!("tools[{i}].name")))?;
        let parameters = t.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        out.push(ToolSpec {
            name: name.to_string(),
            description: t.get("description").and_then(Value::as_str).map(str::to_string),
            parameters: parameters.to_string(),
        });
    }
    Ok(out)
}

fn tool_choice_of(choice: Option<&Value>) -> Result<ToolChoice, ApiError> {
    Ok(match choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => return Err(invalid(&format!("`tool_choice` is {other:?}"), "tool_choice")),
        },
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`tool_choice.name` is missing", "tool_choice.name"))?;
            ToolChoice::Function { name: name.to_string() }
        }
        Some(_) => return Err(invalid("`tool_choice` must be auto, none, required or a function", "tool_choice")),
    })
}

fn format_of(text: Option<&Value>) -> Result<Option<OutputFormat>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")) else { return Ok(None) };
    Ok(match format.get("type").and_then(Value::as_str) {
        Some("text") => None,
        Some("json_object") => Some(OutputFormat::JsonObject),
        Some("json_schema") => Some(OutputFormat::JsonSchema {
            name: format.get("name").and_then(Value::as_str).unwrap_or("output").to_string(),
            schema: format.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"})).to_string(),
            strict: format.get("strict").and_then(Value::as_bool).unwrap_or(false),
        }),
        other => return Err(invalid(&format!("`text.format.type` is {other:?}"), "text.format.type")),
    })
}

async fn prepare(ctx: &NodeContext, key: &ApiKey, r: ResponseRequest) -> Result<Prepared, ApiError> {
    if r.reasoning.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(invalid("`reasoning` is not supported by BitingLip", "reasoning"));
    }
    if r.background == Some(true) {
        return Err(invalid(
            "`background` is not supported: use the task API (`POST /v1/tasks`) to submit now and read later",
            "background",
        ));
    }
    let mut conversation = Vec::new();
    if let Some(previous) = &r.previous_response_id {
        let stored = ctx.store.responses().get(previous).await.map_err(WireError::from)?;
        match stored {
            Some(s) if key.scope == Scope::Admin || s.owner.as_deref() == Some(key.id.as_str()) => {
                conversation = s.conversation
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    format!("no stored response {previous:?} for this key"),
                )
                .with_code("not_found"))
            }
        }
    }
    conversation.extend(input_messages(&r.input)?);
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if let Some(instructions) = &r.instructions {
        messages.push(ChatMessage::new("system", instructions.clone()));
    }
    messages.extend(conversation.iter().cloned());
    let tools = tools_of(r.tools.as_deref().unwrap_or_default())?;
    let tool_choice = tool_choice_of(r.tool_choice.as_ref())?;
    let format = format_of(r.text.as_ref())?;
    let echo = json!({
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "metadata": r.metadata.clone().unwrap_or_else(|| json!({})),
        "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": r.previous_response_id,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "tool_choice": r.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        "tools": r.tools.clone().unwrap_or_default(),
        "text": r.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
        "store": r.store.unwrap_or(true),
        "user": r.user,
    });
    let chat = ChatParams {
        model: r.model,
        messages,
        max_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        tools,
        tool_choice,
        parallel_tool_calls: r.parallel_tool_calls,
        format,
        user: r.user,
        ..ChatParams::default()
    };
    Ok(Prepared { chat, conversation, echo, stream: r.stream, store: r.store.unwrap_or(true) })
}

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
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let span = gateway_span("/v1/responses", &headers);
    let result = respond(ctx, key, headers, body, span.clone()).instrument(span).await;
    if let Err(err) = &result {
        crate::metrics::metrics().requests.with_label_values(&["-", err.code()]).inc();
    }
    result
}

async fn respond(
    ctx: NodeContext,
    key: ApiKey,
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
    let (task_id, watch, duplicate) = submit_chat(&ctx, &headers, &key, prepared.chat.clone(), true).await?;
    span.record("task.id", task_id.as_str());
    let ids = Ids::new(task_id.as_str());
    let created = bitinglip_nats::now_ms() / 1000;
    let mut cancel = CancelOnDrop::new(&ctx.bus, &task_id);
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

/// A streamed response in progress.
struct Run {
    ctx: NodeContext,
    key: ApiKey,
    prepared: Prepared,
    ids: Ids,
    mode: ToolMode,
    model: String,
    created: u64,
}

/// Sends typed events with their sequence numbers.
struct Events {
    tx: tokio::sync::mpsc::Sender<Event>,
    seq: u64,
}

impl Events {
    /// Sends `kind` with `data`; false when the client has gone.
    async fn send(&mut self, kind: &str, mut data: Value) -> bool {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.tx.send(Event::default().event(kind).data(data.to_string())).await.is_ok()
    }
}

impl Run {
    fn object(&self, status: &str, output: Vec<Value>, done: Option<&TaskCompleted>) -> Value {
        response_object(&self.ids, &self.model, self.created, &self.prepared.echo, status, output, done)
    }

    async fn stream(self, mut watch: TaskWatch, mut cancel: CancelOnDrop, tx: tokio::sync::mpsc::Sender<Event>) {
        let mut ev = Events { tx, seq: 0 };
        let ids = &self.ids;
        let in_progress = self.object("in_progress", vec![], None);
        if !ev.send("response.created", json!({"response": in_progress})).await
            || !ev.send("response.in_progress", json!({"response": in_progress})).await
        {
            return;
        }
        // The first item opens now for text or a named call; `required` calls come whole.
        let opened = match &self.mode {
            ToolMode::Free => ev
                .send(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": message_item(ids, "", "in_progress")}),
                )
                .await
                && ev
                    .send(
                        "response.content_part.added",
                        json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "part": text_part("")}),
                    )
                    .await,
            ToolMode::Named(name) => {
                let call = ToolCall { id: guided::call_id(&ids.task, 0), name: name.clone(), arguments: String::new() };
                ev.send(
                    "response.output_item.added",
                    json!({"output_index": 0, "item": call_item(ids, 0, &call, "in_progress")}),
                )
                .await
            }
            ToolMode::Required => true,
        };
        if !opened {
            return;
        }
        let mut text = String::new();
        let done = loop {
            match watch.next().await {
                Some(Relayed::Started { .. }) => {}
                Some(Relayed::Text { text: t, .. }) => {
                    text.push_str(&t);
                    let sent = match &self.mode {
                        ToolMode::Free if !t.is_empty() => {
                            ev.send(
                                "response.output_text.delta",
                                json!({"item_id": ids.message, "output_index": 0, "content_index": 0, "delta": t, "logprobs": []}),
                            )
                            .await
                        }
                        ToolMode::Named(_) => {
                            ev.send(
                                "response.function_call_arguments.delta",
                                json!({"item_id": ids.call_item(0), "output_index": 0, "delta": t}),
                            )
                            .await
                        }
                        _ => true,
                    };
                    if !sent {
                        return;
                    }
                }
                Some(Relayed::Done(done)) => break done,
                Some(Relayed::Failed(err)) => {
                    cancel.disarm();
                    crate::metrics::metrics().requests.with_label_values(&[&self.model, err.kind.as_str()]).inc();
                    let mut failed = self.object("failed", vec![], None);
                    failed["error"] = json!({"code": err.kind.as_str(), "message": err.message});
                    ev.send("response.failed", json!({"response": failed})).await;
                    return;
                }
                None => return,
            }
        };
        cancel.disarm();
        crate::metrics::metrics().requests.with_label_values(&[&self.model, "ok"]).inc();
        let output = output_items(ids, &self.mode, &text, &done);
        // Close what was opened, then announce the items that come whole.
        for (index, item) in output.iter().enumerate() {
            let kind = item["type"].as_str().unwrap_or_default();
            let streamed = (kind == "message" && self.mode == ToolMode::Free && index == 0)
                || (kind == "function_call" && matches!(self.mode, ToolMode::Named(_)));
            if !streamed && !ev.send("response.output_item.added", json!({"output_index": index, "item": item})).await {
                return;
            }
            let closed = if kind == "message" {
                let part = text_part(&text);
                ev.send(
                    "response.output_text.done",
                    json!({"item_id": ids.message, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                )
                .await
                    && ev
                        .send(
                            "response.content_part.done",
                            json!({"item_id": ids.message, "output_index": index, "content_index": 0, "part": part}),
                        )
                        .await
            } else {
                ev.send(
                    "response.function_call_arguments.done",
                    json!({"item_id": item["id"], "output_index": index, "arguments": item["arguments"]}),
                )
                .await
            };
            if !closed || !ev.send("response.output_item.done", json!({"output_index": index, "item": item})).await {
                return;
            }
        }
        let object = self.object("completed", output, Some(&done));
        if let Err(err) = keep(&self.ctx, &self.key, &self.prepared, ids, &text, &done, &object).await {
            let mut failed = object.clone();
            failed["status"] = json!("failed");
            failed["error"] = json!({"code": err.code(), "message": "the response could not be stored"});
            ev.send("response.failed", json!({"response": failed})).await;
            return;
        }
        let kind = if object["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
        ev.send(kind, json!({"response": object})).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_items_become_the_conversation() {
        let input = json!([
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ]);
        let m = input_messages(&input).unwrap();
        assert_eq!(m[0], ChatMessage::new("user", "ab"));
        assert_eq!(m[1].tool_calls[0].name, "f");
        assert_eq!(
            (m[2].role.as_str(), m[2].tool_call_id.as_deref(), m[2].content.as_str()),
            ("tool", Some("c1"), "42")
        );
        assert_eq!(input_messages(&json!("hi")).unwrap(), vec![ChatMessage::new("user", "hi")]);
        for (bad, param) in [
            (json!([{"role": "user", "content": [{"type": "input_image"}]}]), "input[0].content[0].type"),
            (json!([{"type": "reasoning"}]), "input[0].type"),
            (json!([]), "input"),
        ] {
            let err = input_messages(&bad).unwrap_err();
            assert_eq!(err.body().error.param.as_deref(), Some(param));
        }
    }

    #[test]
    fn formats_and_tool_choices_map() {
        let f = format_of(Some(&json!({"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}})))
            .unwrap();
        assert!(matches!(f, Some(OutputFormat::JsonSchema { .. })));
        assert_eq!(format_of(Some(&json!({"format": {"type": "text"}}))).unwrap(), None);
        assert_eq!(
            tool_choice_of(Some(&json!({"type": "function", "name": "f"}))).unwrap(),
            ToolChoice::Function { name: "f".into() }
        );
        assert!(tool_choice_of(Some(&json!("sometimes"))).is_err());
    }
}
