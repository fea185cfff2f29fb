//! HTTP routes of the gateway, and the OpenAPI document they make: each handler carries
//! its `#[utoipa::path]`, and `utoipa_axum::routes!` registers the handler and its
//! description together, so the document cannot list a route the router lacks or miss one
//! it has.

use std::sync::Arc;

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
use tracing::Instrument;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    admin, api,
    auth::{require_key, Auth},
    batches, embeddings, keys,
    limits::FullQueues,
    live,
    openai::{self, ApiError, ModelObject, ModelObjectList, ToolMode},
    responses,
    submit::{admit, gateway_span, gather, read_body, submit_chat},
    tasks,
};
use crate::NodeContext;
use bitinglip_client::CancelOnDrop;

mod stream;

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
    Extension(full): Extension<Arc<FullQueues>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    generation(ctx, key, full, headers, body, Api::Chat).await
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
    Extension(full): Extension<Arc<FullQueues>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    generation(ctx, key, full, headers, body, Api::Text).await
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
    full: Arc<FullQueues>,
    headers: HeaderMap,
    body: Body,
    api: Api,
) -> Result<Response, ApiError> {
    let span = gateway_span(api.route(), &headers);
    let mut model = None;
    let nodes = ctx.nodes.clone();
    let result = generate(ctx, &key, &full, headers, body, span.clone(), &mut model, api).instrument(span).await;
    if let Err(err) = &result {
        // A model no node serves is not a series of its own, whatever the error.
        let label = crate::metrics::model_label(&nodes, model.as_deref());
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

#[allow(clippy::too_many_arguments)]
async fn generate(
    ctx: NodeContext,
    key: &ApiKey,
    full: &FullQueues,
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
    let (task_id, watch, duplicate) =
        submit_chat(&ctx, full, &headers, key, chat, wait_for_model.unwrap_or(true)).await?;
    span.record("task.id", task_id.as_str());
    let relay = tracing::info_span!(parent: &span, "relay", task.id = %task_id, gen_ai.response.finish_reasons = tracing::field::Empty);
    let mut cancel = CancelOnDrop::new(&ctx.bus, Some(&key.id), &task_id);
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
        let events = stream::sse_events(watch, cancel, shape, relay.clone());
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

/// A `data:` event holding `v` as JSON.
pub(super) fn sse_data<T: serde::Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}
