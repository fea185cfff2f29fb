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
use bitinglip_bus_schema::{ApiKey, ErrorKind, ListModels, ModelList, WireError};
use bitinglip_nats::trace::TraceParent;
use futures::Stream;
use tracing::Instrument;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    admin, api,
    auth::{require_key, Auth},
    keys,
    openai::{self, ApiError, Delta, ModelObject, ModelObjectList},
    submit::{admit, read_body, submit_chat},
    tasks,
};
use crate::NodeContext;
use bitinglip_client::{CancelOnDrop, Relayed, TaskWatch};

/// Every route with the OpenAPI document that describes it, before state and layers.
pub(super) fn api_routes() -> (Router<NodeContext>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(<api::Base as utoipa::OpenApi>::openapi())
        .routes(routes!(chat_completions))
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
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::usage))
        .routes(routes!(api::openapi))
        .merge(crate::health::routes())
        .split_for_parts();
    // Model ids hold slashes (`org/name`): these two take the rest of the path, which
    // axum writes `{*model}` and OpenAPI `{model}` (their descriptions are in `api::Base`).
    let router = router
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
/// event per piece of text, then `data: [DONE]`. A client that disconnects cancels the
/// task. `Idempotency-Key` makes a retry follow the first request's task. The answer's
/// `x-task-id` is the task's id in the task API. Runs in the `gateway` span, a child of
/// the caller's `traceparent` when it sent one.
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
    let span = tracing::info_span!(
        "gateway",
        otel.kind = "server",
        http.route = "/v1/chat/completions",
        gen_ai.request.model = tracing::field::Empty,
        task.id = tracing::field::Empty
    );
    let caller = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceParent::parse);
    bitinglip_nats::trace::continue_trace(&span, caller.as_ref());
    let mut model = None;
    let result = chat(ctx, &key, headers, body, span.clone(), &mut model).instrument(span).await;
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

async fn chat(
    ctx: NodeContext,
    key: &ApiKey,
    headers: HeaderMap,
    body: Body,
    span: tracing::Span,
    model_seen: &mut Option<String>,
) -> Result<Response, ApiError> {
    // The body first: a slow client spends its own time, not one of the request slots.
    let body = read_body(&ctx, &headers, body).await?;
    let permit = admit(&ctx)?;
    let request = openai::parse_request(&body)?;
    let stream = request.stream;
    let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let wait_for_model = request.wait_for_model.unwrap_or(true);
    let chat = request.into_chat()?;
    let model = chat.model.clone();
    span.record("gen_ai.request.model", model.as_str());
    *model_seen = Some(model.clone());
    let (task_id, watch, duplicate) = submit_chat(&ctx, &headers, key, chat, wait_for_model).await?;
    span.record("task.id", task_id.as_str());
    let relay = tracing::info_span!(parent: &span, "relay", task.id = %task_id, gen_ai.response.finish_reasons = tracing::field::Empty);
    let mut cancel = CancelOnDrop::new(&ctx.bus, &task_id);
    if duplicate {
        // A retry follows the original; its client going away must not cancel it.
        cancel.disarm();
    }
    let id = format!("chatcmpl-{task_id}");
    let created = bitinglip_nats::now_ms() / 1000;
    if stream {
        let events = sse_events(watch, cancel, id, created, model, include_usage, relay.clone());
        // The slot, and the gateway and relay spans, are held while the stream is open.
        let events = futures::StreamExt::map(events, move |e| {
            let _held = (&permit, &span, &relay);
            e
        });
        let events = super::submit::idle_limited(events, ctx.config.gateway.stream_idle_timeout);
        let mut resp = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
        resp.headers_mut().insert("x-task-id", task_id.as_str().parse().expect("task ids are valid header values"));
        Ok(resp)
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
        let body = openai::completion(&id, created, &model, &text, done.finish_reason, &done.usage);
        let mut resp = Json(body).into_response();
        resp.headers_mut().insert("x-task-id", task_id.as_str().parse().expect("task ids are valid header values"));
        Ok(resp)
    }
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

/// The next event a chat client sees (workers starting are not shown).
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

fn sse_events(
    watch: TaskWatch,
    cancel: CancelOnDrop,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    relay: tracing::Span,
) -> impl Stream<Item = Result<Event, Infallible>> {
    enum Phase {
        Start,
        Relay,
        Usage(bitinglip_bus_schema::Usage),
        Done,
        End,
    }
    let state = (watch, cancel, Phase::Start);
    futures::stream::unfold(state, move |(mut watch, mut cancel, phase)| {
        let id = id.clone();
        let model = model.clone();
        let relay = relay.clone();
        async move {
            match phase {
                Phase::Start => {
                    let delta = Delta { role: Some("assistant"), content: Some(String::new()) };
                    let first = openai::chunk(&id, created, &model, delta, None, None);
                    Some((Ok(sse_data(&first)), (watch, cancel, Phase::Relay)))
                }
                Phase::Relay => match next_visible(&mut watch).await {
                    Some(Relayed::Started { .. }) => unreachable!("filtered by next_visible"),
                    Some(Relayed::Text { text: t, .. }) => {
                        let delta = Delta { role: None, content: Some(t) };
                        let c = openai::chunk(&id, created, &model, delta, None, None);
                        Some((Ok(sse_data(&c)), (watch, cancel, Phase::Relay)))
                    }
                    Some(Relayed::Done(done)) => {
                        cancel.disarm();
                        relay.record("gen_ai.response.finish_reasons", done.finish_reason.as_str());
                        crate::metrics::metrics().requests.with_label_values(&[&model, "ok"]).inc();
                        let reason = Some(done.finish_reason);
                        let c = openai::chunk(&id, created, &model, Delta::default(), reason, Some(&done.usage));
                        let next = if include_usage { Phase::Usage(done.usage) } else { Phase::Done };
                        Some((Ok(sse_data(&c)), (watch, cancel, next)))
                    }
                    Some(Relayed::Failed(err)) => {
                        cancel.disarm();
                        crate::metrics::metrics().requests.with_label_values(&[&model, err.kind.as_str()]).inc();
                        // Headers are gone; the error travels as an event in OpenAI's shape.
                        let body = ApiError::from(err).body();
                        Some((Ok(sse_data(&body)), (watch, cancel, Phase::Done)))
                    }
                    None => None,
                },
                Phase::Usage(usage) => {
                    let c = openai::usage_chunk(&id, created, &model, &usage);
                    Some((Ok(sse_data(&c)), (watch, cancel, Phase::Done)))
                }
                Phase::Done => Some((Ok(Event::default().data("[DONE]")), (watch, cancel, Phase::End))),
                Phase::End => None,
            }
        }
    })
}
