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
    Json,
};
use bitinglip_bus_schema::WorkerState;
use bitinglip_config::Role;
use serde::Serialize;
use tokio::task::JoinHandle;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::NodeContext;

/// The routes with their OpenAPI description, for a router whose state is the node context.
pub fn routes() -> OpenApiRouter<NodeContext> {
    OpenApiRouter::new().routes(routes!(health)).routes(routes!(ready)).routes(routes!(metrics))
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    /// `ok`.
    pub status: &'static str,
}

/// The process is alive. Needs no key.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Alive)))]
async fn health() -> Json<Alive> {
    Json(Alive { status: "ok" })
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

/// How long a readiness check stands for the probes that follow it.
const READY_FRESH: std::time::Duration = std::time::Duration::from_millis(500);

/// Checks what a request needs: NATS, JetStream, a loaded model. A check made within
/// [`READY_FRESH`] is answered again; the cluster's workers come from the heartbeats this
/// node already follows.
pub async fn readiness(ctx: &NodeContext) -> Readiness {
    let mut last = ctx.ready.lock().await;
    if let Some((at, r)) = *last {
        if at.elapsed() < READY_FRESH {
            return r;
        }
    }
    let nats = ctx.bus.client().connection_state() == async_nats::connection::State::Connected;
    let jetstream = nats && ctx.store.jetstream_answers().await;
    let model = if ctx.config.has_role(Role::Worker) {
        ctx.workers.read().is_ok_and(|w| w.values().any(|w| w.state == WorkerState::Ready))
    } else {
        jetstream && ctx.nodes.any_ready_worker()
    };
    let r = Readiness { nats, jetstream, model };
    *last = Some((std::time::Instant::now(), r));
    r
}

/// What this node cannot do as set up, each naming the fix: said at start, in `/ready`
/// and in the cluster status.
pub fn warnings(ctx: &NodeContext) -> Vec<String> {
    let mut out = Vec::new();
    if ctx.config.has_role(Role::ClusterManager) && ctx.events.is_none() {
        out.push(NO_EVENTS.to_string());
    }
    out
}

/// The warning of a cluster manager without the server's client-disconnect events.
pub const NO_EVENTS: &str = "this cluster manager does not follow the server's client-disconnect events (no `events` \
     user): a dead node is found by asking every node that runs tasks whether it is alive, about 4 times a second, and \
     after cluster.node_ttl otherwise. Fix: configure the servers with the users block of `bitinglip nats init` (its \
     `events` user in the system account) and put its events.nk in nats.credentials_dir";

/// `GET /ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// The NATS connection is up.
    pub nats: bool,
    /// JetStream answered.
    pub jetstream: bool,
    /// A model is loaded (on this node's worker, or anywhere for a node without one).
    pub model_loaded: bool,
    /// What this node cannot do as set up, each naming the fix (empty when nothing).
    pub warnings: Vec<String>,
}

/// Whether this node can serve: NATS connected, JetStream answering, a model loaded.
/// Needs no key.
#[utoipa::path(get, path = "/ready", tag = "health", responses(
    (status = 200, description = "ready", body = Ready),
    (status = 503, description = "not ready: the body says what is missing", body = Ready)))]
async fn ready(State(ctx): State<NodeContext>) -> Response {
    let r = readiness(&ctx).await;
    let status = if r.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Ready {
        status: if r.ready() { "ready" } else { "not_ready" },
        nats: r.nats,
        jetstream: r.jetstream,
        model_loaded: r.model,
        warnings: warnings(&ctx),
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics, as text.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
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
    let limits = crate::http::Limits::of(&ctx.config.gateway);
    let (app, _) = routes().split_for_parts();
    let app = app.with_state(ctx);
    let server = tokio::spawn(crate::http::serve(listener, app, limits, std::future::pending()));
    Ok((local, server))
}
