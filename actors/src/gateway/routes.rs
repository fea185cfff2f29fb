//! The gateway's route table, and the OpenAPI document it makes: each handler carries its
//! `#[utoipa::path]`, and `utoipa_axum::routes!` registers the handler and its
//! description together, so the document cannot list a route the router lacks or miss one
//! it has. The handlers live in their areas (see the gateway's module doc).

use axum::{
    extract::{Extension, Request},
    http::StatusCode,
    routing::delete,
    Router,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    access::auth::{require_key, Auth},
    admin::{self, keys, live},
    api, batches,
    error::ApiError,
    openai::{chat, embeddings, models, responses},
    tasks,
};
use crate::NodeContext;

/// Every route with the OpenAPI document that describes it, before state and layers.
pub(super) fn api_routes() -> (Router<NodeContext>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(<api::Base as utoipa::OpenApi>::openapi())
        .routes(routes!(chat::chat_completions))
        .routes(routes!(chat::completions))
        .routes(routes!(embeddings::embeddings))
        .routes(routes!(responses::create))
        .routes(routes!(batches::files::upload, batches::files::list))
        .routes(routes!(batches::files::get, batches::files::delete))
        .routes(routes!(batches::files::content))
        .routes(routes!(batches::create, batches::list))
        .routes(routes!(batches::get))
        .routes(routes!(batches::cancel))
        .routes(routes!(responses::get, responses::delete))
        .routes(routes!(models::models))
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
