//! The heartbeat: every node, whatever its roles, writes a [`NodeHeartbeat`] into the
//! nodes KV bucket every `cluster.heartbeat_interval`. The bucket's max age is the node
//! TTL, so a node that stops writing (killed, partitioned) disappears on its own.
//!
//! It also answers `…node.<id>.alive` (an empty reply), which a cluster manager asks to
//! confirm the death of a node whose connection closed.
//!
//! Supervised by the node supervisor; supervises nothing; publishes nothing but KV puts
//! and those replies.
//! A failed put is logged and retried at the next tick (the bus may be reconnecting). On
//! a clean stop it deletes its entry, so the cluster sees the node leave at once.

use std::time::Duration;

use bitinglip_bus_schema::NodeHeartbeat;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::NodeContext;

/// The heartbeat actor.
pub struct Heartbeat;

/// Its arguments.
pub struct HeartbeatArgs {
    /// Shared node context.
    pub ctx: NodeContext,
}

/// Its state: the ticking task and the one answering whether the node is alive.
pub struct HeartbeatState {
    ctx: NodeContext,
    ticker: JoinHandle<()>,
    alive: JoinHandle<()>,
}

/// Answers `…node.<id>.alive` with an empty message for as long as the node runs: a
/// cluster manager told that one of its connections closed asks it (see
/// `cluster_manager/failover.rs`).
async fn answer_alive(ctx: &NodeContext) -> Result<JoinHandle<()>, ActorProcessingErr> {
    let client = ctx.bus.client().clone();
    let mut sub = client.subscribe(ctx.bus.subjects().node_alive(ctx.node_id())).await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = futures::StreamExt::next(&mut sub).await {
            if let Some(reply) = msg.reply {
                let _ = client.publish(reply, bytes::Bytes::new()).await;
            }
        }
    }))
}

/// Builds this node's heartbeat from the shared context.
pub fn current_heartbeat(ctx: &NodeContext) -> NodeHeartbeat {
    let (machine_total, memory_free) = memory();
    let memory_total = ctx.config.worker.memory.unwrap_or(machine_total);
    NodeHeartbeat {
        node_id: ctx.node_id().to_string(),
        roles: ctx.config.roles.clone(),
        http: ctx.http_addr.read().ok().and_then(|a| a.clone()),
        workers: ctx.workers.read().map(|w| w.values().cloned().collect()).unwrap_or_default(),
        started_ms: ctx.started_ms,
        time_ms: bitinglip_nats::now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        device: crate::gpus::device(ctx.config.worker.force_cpu),
        memory_total,
        memory_free,
        gpus: crate::gpus::inventory(ctx.config.worker.gpu_budget),
    }
}

/// (total, available) memory from /proc/meminfo, bytes; zeros where it cannot be read.
fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Writes one heartbeat now.
pub async fn beat(ctx: &NodeContext) -> Result<(), bitinglip_nats::StoreError> {
    ctx.store.nodes().beat(&current_heartbeat(ctx)).await
}

#[ractor::async_trait]
impl Actor for Heartbeat {
    type Msg = ();
    type State = HeartbeatState;
    type Arguments = HeartbeatArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: HeartbeatArgs,
    ) -> Result<HeartbeatState, ActorProcessingErr> {
        let ctx = args.ctx;
        let interval = ctx.config.cluster.heartbeat_interval;
        let tick_ctx = ctx.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let nudged = tokio::select! {
                    _ = tick.tick() => false,
                    _ = tick_ctx.heartbeat_now.notified() => true,
                };
                match tokio::time::timeout(Duration::from_secs(5), beat(&tick_ctx)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(cause = %err, "heartbeat not written"),
                    Err(_) => tracing::warn!("heartbeat not written: timed out"),
                }
                if nudged {
                    // Coalesce bursts of changes (many tasks starting at once).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let alive = answer_alive(&ctx).await?;
        Ok(HeartbeatState { ctx, ticker, alive })
    }

    async fn post_stop(&self, _myself: ActorRef<()>, state: &mut HeartbeatState) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        state.alive.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), state.ctx.store.nodes().remove(state.ctx.node_id())).await;
        Ok(())
    }
}
