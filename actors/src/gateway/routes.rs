//! HTTP routes of the gateway.

use std::convert::Infallible;

use axum::{
    body::Body,
    extract::{Extension, Request, State},
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    routing::{get, post},
    Json, Router,
};
use bitinglip_bus_schema::{ApiKey, ErrorKind, ListModels, ModelList, WireError};
use bitinglip_nats::trace::TraceParent;
use futures::Stream;
use serde_json::json;
use tracing::Instrument;

use super::{
    auth::{require_key, Auth},
    openai::{self, ApiError},
    submit::{admit, read_body, submit_chat},
};
use crate::NodeContext;
use bitinglip_client::{CancelOnDrop, Relayed, TaskWatch};

pub(super) fn router(ctx: NodeContext, auth: Auth) -> Router {
    let body_limit = super::submit::body_limit(&ctx);
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/v1/tasks", post(super::tasks::submit).get(super::tasks::list))
        .route("/v1/tasks/{id}", get(super::tasks::get).delete(super::tasks::cancel))
        .route("/v1/tasks/{id}/events", get(super::tasks::events))
        .route("/api/v1/models", get(super::admin::models))
        .route("/api/v1/models/search", get(super::admin::search))
        .route("/api/v1/models/pull", post(super::admin::pull))
        .route("/api/v1/models/status", get(super::admin::status))
        .route("/api/v1/models/load", post(super::admin::load))
        .route("/api/v1/models/unload", post(super::admin::unload))
        .route("/api/v1/models/{*model}", axum::routing::delete(super::admin::remove))
        .route("/api/v1/deployments", get(super::admin::deployments).post(super::admin::set_deployment))
        .route("/api/v1/deployments/{*model}", axum::routing::delete(super::admin::delete_deployment))
        .route("/api/v1/workers", get(super::admin::workers))
        .route("/api/v1/cluster", get(super::admin::cluster))
        .route("/api/v1/keys", get(super::keys::list).post(super::keys::create))
        .route("/api/v1/keys/{id}", axum::routing::delete(super::keys::revoke))
        .route("/api/v1/usage", get(super::keys::usage))
        .route("/openapi.json", get(super::admin::openapi))
        .merge(crate::health::routes())
        .fallback(not_found)
        // The admin routes' bodies have the same limit as the rest (read_body's).
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        // Every route, the fallback included, is behind the key check.
        .layer(axum::middleware::from_fn_with_state(auth, require_key))
        .with_state(ctx)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", format!("no route {} {}", req.method(), req.uri().path()))
}

async fn models(
    State(ctx): State<NodeContext>,
    Extension(key): Extension<ApiKey>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let reply: ModelList = ctx
        .bus
        .request(ctx.bus.subjects().model_list(), &ListModels {}, None, None)
        .await
        .map_err(|e| ApiError::from(WireError::from(&e)))?;
    let models = match reply {
        ModelList::Models { models } => models,
        ModelList::Error(err) => return Err(err.into()),
    };
    let data: Vec<_> = models
        .iter()
        .filter(|m| key.allows_model(&m.id))
        .map(|m| json!({"id": m.id, "object": "model", "created": m.created_ms / 1000, "owned_by": "bitinglip", "context_length": m.context_length}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /v1/chat/completions`, in the `gateway` span (a child of the caller's
/// `traceparent`, when it sent one), counted by model and outcome.
async fn chat_completions(
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
            let data = |v: serde_json::Value| Event::default().data(v.to_string());
            match phase {
                Phase::Start => {
                    let first =
                        openai::chunk(&id, created, &model, json!({"role": "assistant", "content": ""}), None, None);
                    Some((Ok(data(first)), (watch, cancel, Phase::Relay)))
                }
                Phase::Relay => match next_visible(&mut watch).await {
                    Some(Relayed::Started { .. }) => unreachable!("filtered by next_visible"),
                    Some(Relayed::Text { text: t, .. }) => {
                        let c = openai::chunk(&id, created, &model, json!({"content": t}), None, None);
                        Some((Ok(data(c)), (watch, cancel, Phase::Relay)))
                    }
                    Some(Relayed::Done(done)) => {
                        cancel.disarm();
                        relay.record("gen_ai.response.finish_reasons", done.finish_reason.as_str());
                        crate::metrics::metrics().requests.with_label_values(&[&model, "ok"]).inc();
                        let c =
                            openai::chunk(&id, created, &model, json!({}), Some(done.finish_reason), Some(&done.usage));
                        let next = if include_usage { Phase::Usage(done.usage) } else { Phase::Done };
                        Some((Ok(data(c)), (watch, cancel, next)))
                    }
                    Some(Relayed::Failed(err)) => {
                        cancel.disarm();
                        crate::metrics::metrics().requests.with_label_values(&[&model, err.kind.as_str()]).inc();
                        // Headers are gone; the error travels as an event in OpenAI's shape.
                        let body = ApiError::from(err).body();
                        Some((Ok(data(body)), (watch, cancel, Phase::Done)))
                    }
                    None => None,
                },
                Phase::Usage(usage) => {
                    let c = openai::usage_chunk(&id, created, &model, &usage);
                    Some((Ok(data(c)), (watch, cancel, Phase::Done)))
                }
                Phase::Done => Some((Ok(Event::default().data("[DONE]")), (watch, cancel, Phase::End))),
                Phase::End => None,
            }
        }
    })
}
