//! Health and metrics over HTTP: `/health` (the process is alive), `/ready` (it can serve:
//! NATS connected, JetStream answering, a model loaded), `/metrics` (Prometheus text).
//!
//! The gateway serves these routes on its own port. Any node can serve them on
//! `metrics.listen` too, which is how a node without a gateway (a worker box) is
//! scraped and probed. That listener is a task owned by the `bitinglip` process, not an
//! actor: it holds no state, and if it fails the node goes on serving (the failure is
//! logged).

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use bitinglip_bus_schema::WorkerState;
use bitinglip_config::Role;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::NodeContext;

/// The routes, for a router whose state is the node context.
pub fn routes() -> Router<NodeContext> {
    Router::new().route("/health", get(health)).route("/ready", get(ready)).route("/metrics", get(metrics))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// What `/ready` checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The NATS connection is up.
    pub nats: bool,
    /// JetStream answered an account query.
    pub jetstream: bool,
    /// A model is loaded: one of this node's workers when it runs the worker role, else a
    /// live worker anywhere in the cluster.
    pub model: bool,
}

impl Readiness {
    /// All three hold.
    pub fn ready(&self) -> bool {
        self.nats && self.jetstream && self.model
    }
}

/// Checks what a request needs: NATS, JetStream, a loaded model.
pub async fn readiness(ctx: &NodeContext) -> Readiness {
    let nats = ctx.bus.client().connection_state() == async_nats::connection::State::Connected;
    let jetstream = nats && ctx.store.jetstream_answers().await;
    let model = if ctx.config.has_role(Role::Worker) {
        ctx.workers.read().is_ok_and(|w| w.values().any(|w| w.state == WorkerState::Ready))
    } else {
        jetstream && ctx.store.nodes().live().await.is_ok_and(|nodes| nodes.iter().any(|n| n.has_ready_worker()))
    };
    Readiness { nats, jetstream, model }
}

async fn ready(State(ctx): State<NodeContext>) -> Response {
    let r = readiness(&ctx).await;
    let status = if r.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if r.ready() { "ready" } else { "not_ready" },
        "nats": r.nats,
        "jetstream": r.jetstream,
        "model_loaded": r.model,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(ctx): State<NodeContext>) -> Response {
    let text = crate::metrics::render(&ctx).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Serves the routes on `addr` until the process ends; returns once listening, with the
/// address bound (port 0 picks a free one).
pub async fn listen(ctx: NodeContext, addr: &str) -> std::io::Result<(std::net::SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(http = %local, "metrics listening");
    let ctx_header_timeout = ctx.config.gateway.header_timeout;
    let app = routes().with_state(ctx);
    let header_timeout = ctx_header_timeout;
    let server = tokio::spawn(crate::http::serve(listener, app, header_timeout, std::future::pending()));
    Ok((local, server))
}
