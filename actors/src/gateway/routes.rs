//! HTTP routes of the gateway, and the OpenAPI document they make: each handler carries
//! its `#[utoipa::path]`, and `utoipa_axum::routes!` registers the handler and its
//! description together, so the document cannot list a route the router lacks or miss one
//! it has.

use std::convert::Infallible;

use axum::{
    body::Body,
    extract::{Extension, Request, State},
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::delete,
    Json, Router,
};
use bitinglip_bus_schema::{
    ApiKey, ErrorKind, FinishReason, ListModels, ModelList, TokenLogprob, ToolCall, Usage, WireError,
};
use futures::Stream;
use tracing::Instrument;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    admin, api,
    auth::{require_key, Auth},
    batches, embeddings, keys, live,
    openai::{self, ApiError, Delta, ModelObject, ModelObjectList, ToolCallOut, ToolMode},
    responses,
    submit::{admit, gateway_span, read_body, submit_chat},
    tasks,
};
use crate::{guided, NodeContext};
use bitinglip_client::{CancelOnDrop, Relayed, TaskWatch};

/// Every route with the OpenAPI document that describes it, before state and layers.
pub(super) fn api_routes() -> (Router<NodeContext>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(<api::Base as utoipa::OpenApi>::openapi())
        .routes(routes!(chat_completions))
        .routes(routes!(completions))
        .routes(routes!(embeddings::embeddings))
        .routes(routes!(responses::create))
        .routes(routes!(batches::upload, batches::list_files))
        .routes(routes!(batches::get_file, batches::delete_file))
        .routes(routes!(batches::file_content))
        .routes(routes!(batches::create, batches::list))
        .routes(routes!(batches::get))
        .routes(routes!(batches::cancel))
        .routes(routes!(responses::get, responses::delete))
        .routes(routes!(models))
        .routes(routes!(tasks::submit, tasks::list))
        .routes(routes!(tasks::get, tasks::cancel))
        .routes(routes!(tasks::events))
        .routes(routes!(admin::models))
        .routes(routes!(admin::search))
        .routes(routes!(admin::pull))
        .routes(routes!(admin::status))
        .routes(routes!(admin::load))
        .routes(routes!(admin::unload))
        .routes(routes!(admin::deployments, admin::set_deployment))
        .routes(routes!(admin::workers))
        .routes(routes!(admin::cluster))
        .routes(routes!(live::queues))
        .routes(routes!(live::progress))
        .routes(routes!(keys::whoami))
        .routes(routes!(keys::own_usage))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::usage))
        .routes(routes!(api::openapi))
        .merge(crate::health::routes())
        .split_for_parts();
    // Model ids hold slashes (`org/name`): these two take the rest of the path, which
    // axum writes `{*model}` and OpenAPI `{model}` (their descriptions are in `api::Base`).
    let router = router
        .merge(super::ui::routes())
        .route("/api/v1/models/{*model}", delete(admin::remove))
        .route("/api/v1/deployments/{*model}", delete(admin::delete_deployment));
    (router, api::finish(doc))
}

pub(super) fn router(ctx: NodeContext, auth: Auth) -> Router {
    let body_limit = super::submit::body_limit(&ctx);
    let (router, doc) = api_routes();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(api::DocumentJson::new(&doc)))
        // The admin routes' bodies have the same limit as the rest (read_body's).
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        // Every route, the fallback included, is behind the key check.
        .layer(axum::middleware::from_fn_with_state(auth, require_key))
        .with_state(ctx)
}

async fn method_not_allowed(req: Request) -> ApiError {
    let message = format!("{} is not a method of {}", req.method(), req.uri().path());
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", message)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", format!("no route {} {}", req.method(), req.uri().path()))
}

/// The models this key may use, in OpenAI's list format.
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, body = ModelObjectList)))]
pub(super) async fn models(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
) -> Result<Json<ModelObjectList>, ApiError> {
    let reply: ModelList = ctx
        .bus
        .request(ctx.bus.subjects().model_list(), &ListModels {}, None, None)
        .await
        .map_err(|e| ApiError::from(WireError::from(&e)))?;
    let models = match reply {
        ModelList::Models { models } => models,
        ModelList::Error(err) => return Err(err.into()),
    };
    let data = models
        .into_iter()
        .filter(|m| key.allows_model(&m.id))
        .map(|m| ModelObject {
            object: "model",
            created: m.created_ms / 1000,
            owned_by: "bitinglip",
            context_length: m.context_length,
            id: m.id,
        })
        .collect();
    Ok(Json(ModelObjectList { object: "list", data }))
}

/// A chat completion, whole or streamed.
///
/// With `stream: true` the answer is `text/event-stream`: one `data: <ChatCompletionChunk>`
/// event per piece of text (or of a tool call's arguments), then `data: [DONE]`. A client
/// that disconnects cancels the task. `Idempotency-Key` makes a retry follow the first
/// request's task. The answer's `x-task-id` is the task's id in the task API. Runs in the
/// `gateway` span, a child of the caller's `traceparent` when it sent one.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    request_body = openai::ChatCompletionRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "the same key and body: the same task, once"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context of the caller"),
    ),
    responses((status = 200, description = "the completion, or with `stream: true` its chunks as server-sent events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((openai::ChatCompletion = "application/json"), (String = "text/event-stream")))))]
pub(super) async fn chat_completions(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    generation(ctx, key, headers, body, Api::Chat).await
}

/// A legacy text completion of a raw prompt (no chat template), whole or streamed.
///
/// With `stream: true` the answer is `text/event-stream`: one `data: <TextCompletion>`
/// event per piece of text, then `data: [DONE]`. `echo`, `suffix` and `best_of` above 1
/// are refused. Otherwise as `/v1/chat/completions`: the same queue, cancel on disconnect,
/// `Idempotency-Key` and `x-task-id`.
#[utoipa::path(post, path = "/v1/completions", tag = "openai",
    request_body = openai::CompletionRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "the same key and body: the same task, once"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context of the caller"),
    ),
    responses((status = 200, description = "the completion, or with `stream: true` its chunks as server-sent events",
        headers(("x-task-id" = String, description = "the task's id")),
        content((openai::TextCompletion = "application/json"), (String = "text/event-stream")))))]
pub(super) async fn completions(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    generation(ctx, key, headers, body, Api::Text).await
}

/// Which OpenAI API a generation answers in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Text,
}

impl Api {
    fn route(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Text => "/v1/completions",
        }
    }
}

async fn generation(
    ctx: NodeContext,
    key: ApiKey,
    headers: HeaderMap,
    body: Body,
    api: Api,
) -> Result<Response, ApiError> {
    let span = gateway_span(api.route(), &headers);
    let mut model = None;
    let result = generate(ctx, &key, headers, body, span.clone(), &mut model, api).instrument(span).await;
    if let Err(err) = &result {
        // A model the registry does not know, or an unreadable request, is not a series.
        let label = match err.code() {
            "unknown_model" | "invalid_request" | "invalid_request_error" | "decode" => "-",
            _ => model.as_deref().unwrap_or("-"),
        };
        crate::metrics::metrics().requests.with_label_values(&[label, err.code()]).inc();
    }
    result
}

/// What the client asked of the answer's shape.
#[derive(Debug, Clone)]
struct Shape {
    api: Api,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    mode: ToolMode,
    logprobs: bool,
    task_id: String,
}

async fn generate(
    ctx: NodeContext,
    key: &ApiKey,
    headers: HeaderMap,
    body: Body,
    span: tracing::Span,
    model_seen: &mut Option<String>,
    api: Api,
) -> Result<Response, ApiError> {
    // The body first: a slow client spends its own time, not one of the request slots.
    let body = read_body(&ctx, &headers, body).await?;
    let permit = admit(&ctx)?;
    let (chat, stream, include_usage, wait_for_model) = match api {
        Api::Chat => {
            let r = openai::parse_request(&body)?;
            let s = &r.sampling;
            let flags = (s.stream, s.stream_options.as_ref().is_some_and(|o| o.include_usage), s.wait_for_model);
            (r.into_chat()?, flags.0, flags.1, flags.2)
        }
        Api::Text => {
            let r = openai::parse_completion(&body)?;
            let s = &r.sampling;
            let flags = (s.stream, s.stream_options.as_ref().is_some_and(|o| o.include_usage), s.wait_for_model);
            (r.into_chat()?, flags.0, flags.1, flags.2)
        }
    };
    let model = chat.model.clone();
    span.record("gen_ai.request.model", model.as_str());
    *model_seen = Some(model.clone());
    let mode = ToolMode::of(&chat);
    let logprobs = chat.logprobs.is_some();
    let (task_id, watch, duplicate) = submit_chat(&ctx, &headers, key, chat, wait_for_model.unwrap_or(true)).await?;
    span.record("task.id", task_id.as_str());
    let relay = tracing::info_span!(parent: &span, "relay", task.id = %task_id, gen_ai.response.finish_reasons = tracing::field::Empty);
    let mut cancel = CancelOnDrop::new(&ctx.bus, &task_id);
    if duplicate {
        // A retry follows the original; its client going away must not cancel it.
        cancel.disarm();
    }
    let prefix = if api == Api::Chat { "chatcmpl" } else { "cmpl" };
    let shape = Shape {
        api,
        id: format!("{prefix}-{task_id}"),
        created: bitinglip_nats::now_ms() / 1000,
        model: model.clone(),
        include_usage,
        mode,
        logprobs,
        task_id: task_id.to_string(),
    };
    let mut resp = if stream {
        let events = sse_events(watch, cancel, shape, relay.clone());
        // The slot, and the gateway and relay spans, are held while the stream is open.
        let events = futures::StreamExt::map(events, move |e| {
            let _held = (&permit, &span, &relay);
            e
        });
        let events = super::submit::idle_limited(events, ctx.config.gateway.stream_idle_timeout);
        Sse::new(events).keep_alive(KeepAlive::default()).into_response()
    } else {
        let timeout = ctx.config.gateway.request_timeout;
        let result = tokio::time::timeout(timeout, gather(watch)).instrument(relay.clone()).await;
        let (text, done) = match result {
            Err(_) => return Err(WireError::new(ErrorKind::Timeout, format!("no answer within {timeout:?}")).into()),
            Ok(Err(err)) => {
                cancel.disarm();
                return Err(err.into());
            }
            Ok(Ok(v)) => v,
        };
        cancel.disarm();
        relay.record("gen_ai.response.finish_reasons", done.finish_reason.as_str());
        crate::metrics::metrics().requests.with_label_values(&[&model, "ok"]).inc();
        match api {
            Api::Chat => {
                let forced = shape.mode != ToolMode::Free;
                Json(openai::completion(&shape.id, shape.created, &model, text, &done, forced, logprobs))
                    .into_response()
            }
            Api::Text => {
                let lp = openai::legacy_logprobs(logprobs, &done.logprobs, 0);
                let choice = Some((text, lp, Some(done.finish_reason)));
                Json(openai::text_completion(&shape.id, shape.created, &model, choice, Some(&done.usage)))
                    .into_response()
            }
        }
    };
    resp.headers_mut().insert("x-task-id", task_id.as_str().parse().expect("task ids are valid header values"));
    Ok(resp)
}

pub(super) async fn gather(mut watch: TaskWatch) -> Result<(String, bitinglip_bus_schema::TaskCompleted), WireError> {
    let mut text = String::new();
    while let Some(r) = watch.next().await {
        match r {
            Relayed::Text { text: t, .. } => text.push_str(&t),
            Relayed::Started { .. } => {}
            Relayed::Done(done) => return Ok((text, done)),
            Relayed::Failed(err) => return Err(err),
        }
    }
    Err(WireError::new(ErrorKind::Internal, "event stream ended without a result"))
}

/// The next event a client sees (workers starting are not shown).
async fn next_visible(watch: &mut TaskWatch) -> Option<Relayed> {
    loop {
        match watch.next().await {
            Some(Relayed::Started { .. }) => continue,
            other => return other,
        }
    }
}

/// A `data:` event holding `v` as JSON.
pub(super) fn sse_data<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}

/// Where a streamed answer is.
enum Phase {
    Start,
    Relay,
    /// The calls of a `required` answer, then its last chunk.
    Calls(bitinglip_bus_schema::TaskCompleted),
    Last(bitinglip_bus_schema::TaskCompleted),
    Usage(bitinglip_bus_schema::Usage),
    Done,
    End,
}

/// A streamed answer's state between events.
struct Streaming {
    watch: TaskWatch,
    cancel: CancelOnDrop,
    shape: Shape,
    relay: tracing::Span,
    phase: Phase,
    /// Calls the engine recognized so far (their `index`).
    calls: u32,
    /// Bytes of text sent so far (a legacy completion's `text_offset`).
    sent: usize,
    /// A chat chunk of plain text, as JSON around its content: made once per stream, so a
    /// token costs the escaping of its own text only.
    text_frame: TextFrame,
}

/// The JSON of a chat chunk whose only news is text, split around the content string.
struct TextFrame {
    before: String,
    after: String,
}

impl TextFrame {
    /// The frame of `shape`'s chunks: everything but the text is the same in each.
    fn of(shape: &Shape) -> Self {
        let delta = Delta { role: None, content: Some(String::new()), tool_calls: None };
        let json =
            serde_json::to_string(&openai::chunk(&shape.id, shape.created, &shape.model, delta, None, None, None))
                .unwrap_or_default();
        const EMPTY: &str = "\"content\":\"\"";
        match json.find(EMPTY) {
            Some(at) => {
                Self { before: json[..at + EMPTY.len() - 2].to_string(), after: json[at + EMPTY.len()..].to_string() }
            }
            None => Self { before: String::new(), after: String::new() },
        }
    }

    /// The chunk of `text`, the same bytes serde would write for it; none when the frame
    /// could not be made.
    fn event(&self, text: &str) -> Option<Event> {
        self.json(text).map(|data| Event::default().data(data))
    }

    fn json(&self, text: &str) -> Option<String> {
        if self.before.is_empty() {
            return None;
        }
        let quoted = serde_json::to_string(text).ok()?;
        let mut data = String::with_capacity(self.before.len() + quoted.len() + self.after.len());
        data.push_str(&self.before);
        data.push_str(&quoted);
        data.push_str(&self.after);
        Some(data)
    }
}

impl Streaming {
    /// A chat chunk of `delta`.
    fn chat(
        &self,
        delta: Delta,
        logprobs: &[TokenLogprob],
        reason: Option<FinishReason>,
        usage: Option<&Usage>,
    ) -> Event {
        let s = &self.shape;
        let lp = openai::choice_logprobs(s.logprobs && !logprobs.is_empty(), logprobs);
        sse_data(&openai::chunk(&s.id, s.created, &s.model, delta, lp, reason, usage))
    }

    /// A legacy completion chunk of `text`.
    fn text(
        &mut self,
        text: String,
        logprobs: &[TokenLogprob],
        reason: Option<FinishReason>,
        usage: Option<&Usage>,
    ) -> Event {
        let s = &self.shape;
        let lp = openai::legacy_logprobs(s.logprobs && !logprobs.is_empty(), logprobs, self.sent);
        self.sent += text.len();
        sse_data(&openai::text_completion(&s.id, s.created, &s.model, Some((text, lp, reason)), usage))
    }

    /// The event for one relayed piece, or none (a `required` answer is held until whole).
    fn piece(&mut self, text: String, logprobs: Vec<TokenLogprob>, tool_calls: Vec<ToolCall>) -> Option<Event> {
        if self.shape.api == Api::Text {
            return Some(self.text(text, &logprobs, None, None));
        }
        let delta = match &self.shape.mode {
            ToolMode::Free if tool_calls.is_empty() && !text.is_empty() && !self.shape.logprobs => {
                if let Some(event) = self.text_frame.event(&text) {
                    return Some(event);
                }
                Delta { role: None, content: Some(text), tool_calls: None }
            }
            ToolMode::Free => {
                let calls: Vec<ToolCallOut> = tool_calls
                    .iter()
                    .map(|c| {
                        self.calls += 1;
                        ToolCallOut::whole(c, Some(self.calls - 1))
                    })
                    .collect();
                Delta {
                    role: None,
                    content: (!text.is_empty()).then_some(text),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                }
            }
            ToolMode::Named(_) => Delta { tool_calls: Some(vec![ToolCallOut::arguments(text)]), ..Delta::default() },
            ToolMode::Required if self.shape.logprobs && !logprobs.is_empty() => Delta::default(),
            ToolMode::Required => return None,
        };
        Some(self.chat(delta, &logprobs, None, None))
    }

    /// The first event.
    fn start(&self) -> Event {
        let delta = match &self.shape.mode {
            ToolMode::Free => Delta { role: Some("assistant"), content: Some(String::new()), tool_calls: None },
            ToolMode::Named(name) => Delta {
                role: Some("assistant"),
                content: None,
                tool_calls: Some(vec![ToolCallOut::opening(guided::call_id(&self.shape.task_id, 0), name.clone())]),
            },
            ToolMode::Required => Delta { role: Some("assistant"), content: None, tool_calls: None },
        };
        self.chat(delta, &[], None, None)
    }

    /// The last event with a choice.
    fn last(&mut self, done: &bitinglip_bus_schema::TaskCompleted) -> Event {
        match self.shape.api {
            Api::Chat => self.chat(Delta::default(), &[], Some(done.finish_reason), Some(&done.usage)),
            Api::Text => self.text(String::new(), &[], Some(done.finish_reason), Some(&done.usage)),
        }
    }

    /// The usage-only event (`stream_options.include_usage`).
    fn usage(&self, usage: &Usage) -> Event {
        let s = &self.shape;
        match s.api {
            Api::Chat => sse_data(&openai::usage_chunk(&s.id, s.created, &s.model, usage)),
            Api::Text => sse_data(&openai::text_completion(&s.id, s.created, &s.model, None, Some(usage))),
        }
    }

    /// The next event and the state after it; `None` ends the stream.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            let phase = std::mem::replace(&mut self.phase, Phase::End);
            let (event, next) = match phase {
                Phase::Start => (self.start(), Phase::Relay),
                Phase::Relay => match next_visible(&mut self.watch).await {
                    Some(Relayed::Started { .. }) => unreachable!("filtered by next_visible"),
                    Some(Relayed::Text { text, logprobs, tool_calls, .. }) => {
                        match self.piece(text, logprobs, tool_calls) {
                            Some(event) => (event, Phase::Relay),
                            None => {
                                self.phase = Phase::Relay;
                                continue;
                            }
                        }
                    }
                    Some(Relayed::Done(done)) => {
                        self.cancel.disarm();
                        self.relay.record("gen_ai.response.finish_reasons", done.finish_reason.as_str());
                        crate::metrics::metrics().requests.with_label_values(&[&self.shape.model, "ok"]).inc();
                        self.phase = if self.shape.mode == ToolMode::Required && !done.tool_calls.is_empty() {
                            Phase::Calls(done)
                        } else {
                            Phase::Last(done)
                        };
                        continue;
                    }
                    Some(Relayed::Failed(err)) => {
                        self.cancel.disarm();
                        crate::metrics::metrics()
                            .requests
                            .with_label_values(&[&self.shape.model, err.kind.as_str()])
                            .inc();
                        // Headers are gone; the error travels as an event in OpenAI's shape.
                        (sse_data(&ApiError::from(err).body()), Phase::Done)
                    }
                    None => return None,
                },
                Phase::Calls(done) => {
                    let calls = done.tool_calls.iter().enumerate().map(|(i, c)| ToolCallOut::whole(c, Some(i as u32)));
                    let delta = Delta { tool_calls: Some(calls.collect()), ..Delta::default() };
                    (self.chat(delta, &[], None, None), Phase::Last(done))
                }
                Phase::Last(done) => {
                    let event = self.last(&done);
                    (event, if self.shape.include_usage { Phase::Usage(done.usage) } else { Phase::Done })
                }
                Phase::Usage(usage) => (self.usage(&usage), Phase::Done),
                Phase::Done => (Event::default().data("[DONE]"), Phase::End),
                Phase::End => return None,
            };
            self.phase = next;
            return Some((Ok(event), self));
        }
    }
}

fn sse_events(
    watch: TaskWatch,
    cancel: CancelOnDrop,
    shape: Shape,
    relay: tracing::Span,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let text_frame = TextFrame::of(&shape);
    let state = Streaming { watch, cancel, shape, relay, phase: Phase::Start, calls: 0, sent: 0, text_frame };
    futures::stream::unfold(state, Streaming::next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_chunk_from_its_frame_is_the_chunk_serde_writes() {
        let shape = Shape {
            api: Api::Chat,
            id: "chatcmpl-t1".into(),
            created: 1_700_000_000,
            model: "org/m \"x\"".into(),
            include_usage: false,
            mode: ToolMode::Free,
            logprobs: false,
            task_id: "t1".into(),
        };
        let frame = TextFrame::of(&shape);
        for text in ["hello", " w\"o\\r\nld", "é\u{1}\u{2028}😀", "\"content\":\"\""] {
            let delta = Delta { role: None, content: Some(text.to_string()), tool_calls: None };
            let serde =
                serde_json::to_string(&openai::chunk(&shape.id, shape.created, &shape.model, delta, None, None, None))
                    .unwrap();
            assert_eq!(frame.json(text).as_deref(), Some(serde.as_str()), "{text:?}");
        }
    }
}
