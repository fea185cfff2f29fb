//! The gateway: the HTTP bridge. It serves the OpenAI API (`/v1/…`), the task API for
//! clients that do not wait on one connection (`/v1/tasks…`, with resumable SSE), the
//! Files and Batch APIs, the admin API (`/api/v1/…`), health, metrics, the OpenAPI
//! document and the dashboard, every route behind the key check. It keeps no state a
//! request needs beyond its own connection (the stores and the bus hold the rest), so any
//! number run behind a load balancer.
//!
//! Its areas, each a module (a file, and a folder of the same name for its parts); they
//! import each other downward only, with no circle (a test checks it):
//!
//! | area | what it holds |
//! |---|---|
//! | `routes` | the route table and the OpenAPI document it makes (`api`) |
//! | `openai/` | the OpenAI API: its wire format (`request`, `answer`), the generation pipeline written once (`pipeline`) with a shape per API (`chat` for chat and legacy completions, `embeddings`, `responses`), `models` |
//! | `tasks` | the task API: submit, read, list, cancel, events |
//! | `batches/` | the Files (`files`) and Batch APIs, the input's pages (`input`), the loop that drives batches (`runner`) |
//! | `admin/` | models, deployments, workers, cluster; keys and usage (`keys`); live queues and progress (`live`) |
//! | `submit` | what every task-making route does first: the request slots, the body's limits, the submit with its watch |
//! | `access/` | the key check (`auth`), per-key rate limits and full queues (`limits`), requests in progress per key (`in_flight`) |
//! | `error` | the error every route answers, in OpenAI's shape, and the readers of bodies, queries and paths that name the field at fault |
//! | `ui` | the dashboard's files |
//!
//! Supervised by the node supervisor. It owns two tasks: the HTTP server, and the batch
//! loop ([`batches::Runner`]); both stop with it. If its listener fails the actor fails
//! and the supervisor starts it again; a port already in use at start fails the node's
//! start instead.

mod access;
mod admin;
mod api;
mod batches;
mod error;
mod openai;
mod routes;
mod submit;
mod tasks;
mod ui;

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use bitinglip_nats::store::keys::hash_secret;

use crate::NodeContext;

/// The gateway actor.
pub struct Gateway;

/// Its arguments.
pub struct GatewayArgs {
    /// Shared node context.
    pub ctx: NodeContext,
}

/// Its state: the server task, its stop signal, and the batch loop.
pub struct GatewayState {
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
    batches: batches::Runner,
}

/// Messages to the gateway.
#[derive(Debug)]
pub enum GatewayMsg {
    /// The HTTP server ended on its own.
    ServerEnded(String),
    /// The batch loop ended on its own (a panic).
    BatchesEnded(String),
}

#[ractor::async_trait]
impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        let ctx = args.ctx;
        let addr = ctx.config.gateway.http.clone();
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|e| format!("gateway cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr()?;
        if let Ok(mut a) = ctx.http_addr.write() {
            *a = Some(local.to_string());
        }
        tracing::info!(http = %local, "gateway listening");
        let stop = CancellationToken::new();
        let auth = access::auth::Auth {
            keys: ctx.store.watch_keys(),
            store: ctx.store.clone(),
            admin_key_sha256: ctx.config.gateway.admin_key.as_ref().map(|k| hash_secret(k.expose())),
            max_concurrent_per_key: ctx.config.gateway.max_concurrent_per_key,
            in_flight: Default::default(),
            refusals: std::sync::Arc::new(access::limits::Refusals::new(Duration::from_secs(60))),
            admission: std::sync::Arc::new(access::limits::Admission::new(ctx.config.gateway.max_concurrent_requests)),
        };
        let app = routes::router(ctx.clone(), auth);
        // Batches are driven from every gateway (one at a time each, by a lease).
        let ended = myself.clone();
        let batches = batches::Runner::start(ctx.clone(), move |reason| {
            let _ = ended.cast(GatewayMsg::BatchesEnded(reason));
        });
        let shutdown = stop.clone();
        let limits = crate::http::Limits::of(&ctx.config.gateway);
        let server = tokio::spawn(async move {
            crate::http::serve(listener, app, limits, shutdown.cancelled_owned()).await;
            let _ = myself.cast(GatewayMsg::ServerEnded("stopped".to_string()));
        });
        Ok(GatewayState { stop, server: Some(server), batches })
    }

    async fn handle(
        &self,
        _myself: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::ServerEnded(reason) if !state.stop.is_cancelled() => {
                Err(format!("HTTP server ended: {reason}").into())
            }
            GatewayMsg::BatchesEnded(reason) if !state.stop.is_cancelled() => {
                Err(format!("batch loop ended: {reason}").into())
            }
            GatewayMsg::ServerEnded(_) | GatewayMsg::BatchesEnded(_) => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GatewayMsg>,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
        state.batches.stop(Duration::from_secs(5)).await;
        if let Some(server) = state.server.take() {
            // Open streams get a moment to finish; then they are cut (their tasks go on).
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server).await.is_err() {
                abort.abort();
            }
        }
        Ok(())
    }
}
