//! The gateway: the HTTP bridge. OpenAI-compatible `POST /v1/chat/completions` (plain
//! and SSE-streamed), `GET /v1/models`, `GET /health`, `GET /ready`, and the task API for
//! clients that do not wait on one connection: `POST /v1/tasks`, `GET /v1/tasks`,
//! `GET /v1/tasks/{id}`, `GET /v1/tasks/{id}/events` (resumable SSE), `DELETE /v1/tasks/{id}`.
//!
//! Supervised by the node supervisor; supervises nothing (the HTTP server is a task it
//! owns). For a chat request it subscribes to the task's events subject, then requests
//! `…task.submit`, then relays the events; a client that disconnects publishes
//! `…task.<id>.cancel`. It keeps no state of its own, so any number can run behind a load
//! balancer. If its listener fails the actor fails and the supervisor starts it again; a
//! port already in use at start fails the node's start instead.

mod admin;
mod api;
mod auth;
mod batch_runner;
mod batches;
mod embeddings;
mod in_flight;
mod keys;
mod limits;
mod live;
mod openai;
mod responses;
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

/// Its state: the server task and its stop signal.
pub struct GatewayState {
    stop: CancellationToken,
    server: Option<JoinHandle<()>>,
}

/// Messages to the gateway.
#[derive(Debug)]
pub enum GatewayMsg {
    /// The HTTP server ended on its own.
    ServerEnded(String),
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
        let auth = auth::Auth {
            keys: ctx.store.watch_keys(),
            store: ctx.store.clone(),
            admin_key_sha256: ctx.config.gateway.admin_key.as_ref().map(|k| hash_secret(k.expose())),
            max_concurrent_per_key: ctx.config.gateway.max_concurrent_per_key,
            in_flight: Default::default(),
            refusals: std::sync::Arc::new(limits::Refusals::new(std::time::Duration::from_secs(60))),
            full: std::sync::Arc::new(limits::full_queues()),
        };
        let app = routes::router(ctx.clone(), auth);
        // Batches are driven from every gateway (one at a time each, by a lease).
        tokio::spawn(batch_runner::run(ctx.clone(), stop.clone()));
        let shutdown = stop.clone();
        let limits = crate::http::Limits::of(&ctx.config.gateway);
        let server = tokio::spawn(async move {
            crate::http::serve(listener, app, limits, shutdown.cancelled_owned()).await;
            let _ = myself.cast(GatewayMsg::ServerEnded("stopped".to_string()));
        });
        Ok(GatewayState { stop, server: Some(server) })
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
            GatewayMsg::ServerEnded(_) => Ok(()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GatewayMsg>,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        state.stop.cancel();
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
