//! The node supervisor: the root of a node's actor tree.
//!
//! Supervised by nobody (the `bitinglip` binary spawns it and waits for a signal). It
//! supervises one actor per role this node runs, plus the heartbeat: the cluster manager,
//! model manager, task manager, one worker per configured model, and the gateway, started
//! in that order so that a request can be served by the time the gateway listens.
//!
//! A child that fails (an error from a handler, a panic, a subscription that ended) is
//! restarted after a short backoff that grows with repeated failures; the process
//! survives. Stopping the supervisor stops the gateway first (no new requests), then the
//! workers (they hand back what they hold), then the rest.

use std::{collections::HashMap, time::Duration};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use bitinglip_config::Role;

use crate::{
    cluster_manager::{ClusterManager, ClusterManagerArgs},
    gateway::{Gateway, GatewayArgs},
    heartbeat::{Heartbeat, HeartbeatArgs},
    model_manager::{ModelManager, ModelManagerArgs},
    puller::{Puller, PullerArgs},
    task_manager::{TaskManager, TaskManagerArgs},
    worker::{Worker, WorkerArgs},
    NodeContext,
};

/// The node supervisor.
pub struct NodeSupervisor;

/// What the supervisor needs.
pub struct NodeSupervisorArgs {
    /// Shared node context.
    pub ctx: NodeContext,
}

/// Which child an actor is, so it can be started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// The heartbeat writer.
    Heartbeat,
    /// The cluster manager.
    ClusterManager,
    /// The model manager.
    ModelManager,
    /// The task manager.
    TaskManager,
    /// The worker for `worker.models[i]`.
    Worker(usize),
    /// The gateway.
    Gateway,
    /// The hub puller (on worker nodes).
    Puller,
}

/// The supervisor's state.
pub struct NodeSupervisorState {
    ctx: NodeContext,
    children: HashMap<ActorId, (ChildKind, ActorCell)>,
    failures: HashMap<ChildKind, u32>,
    stopping: bool,
}

/// Messages to the supervisor.
pub enum NodeSupervisorMsg {
    /// Start a child again (sent to itself after the backoff).
    Restart(ChildKind),
    /// Stop every child in order, then answer.
    Shutdown(ractor::RpcReplyPort<()>),
}

#[ractor::async_trait]
impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = NodeSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NodeSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = args.ctx;
        let mut kinds = vec![ChildKind::Heartbeat];
        for role in Role::ALL {
            if !ctx.config.has_role(role) {
                continue;
            }
            match role {
                Role::ClusterManager => kinds.push(ChildKind::ClusterManager),
                Role::ModelManager => kinds.push(ChildKind::ModelManager),
                Role::TaskManager => kinds.push(ChildKind::TaskManager),
                Role::Worker => {
                    kinds.push(ChildKind::Puller);
                    kinds.extend((0..ctx.config.worker.models.len()).map(ChildKind::Worker));
                }
                Role::Gateway => kinds.push(ChildKind::Gateway),
            }
        }
        let mut state =
            NodeSupervisorState { ctx, children: HashMap::new(), failures: HashMap::new(), stopping: false };
        for kind in kinds {
            // A role that cannot start at all (a port in use) fails the node's start: the
            // operator must see it rather than get a node missing a role.
            spawn_child(&myself, &mut state, kind).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeSupervisorMsg::Restart(kind) => {
                if state.stopping {
                    return Ok(());
                }
                if let Err(err) = spawn_child(&myself, state, kind).await {
                    tracing::error!(child = ?kind, cause = %err, "restart failed; trying again");
                    schedule_restart(&myself, state, kind);
                }
            }
            NodeSupervisorMsg::Shutdown(reply) => {
                state.stopping = true;
                // Gateway first (no new requests), workers next (they hand back their
                // tasks), then the control roles and the heartbeat.
                let order = |k: &ChildKind| match k {
                    ChildKind::Gateway => 0,
                    ChildKind::Worker(_) | ChildKind::Puller => 1,
                    ChildKind::TaskManager => 2,
                    ChildKind::ModelManager | ChildKind::ClusterManager => 3,
                    ChildKind::Heartbeat => 4,
                };
                let mut children: Vec<(ChildKind, ActorCell)> = state.children.values().cloned().collect();
                children.sort_by_key(|(k, _)| order(k));
                for (kind, cell) in children {
                    tracing::debug!(child = ?kind, "stopping");
                    let _ = cell.stop_and_wait(Some("node shutdown".into()), Some(Duration::from_secs(60))).await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Some(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason),
            _ => return Ok(()),
        };
        let Some((kind, _)) = state.children.remove(&cell.get_id()) else { return Ok(()) };
        if state.stopping {
            return Ok(());
        }
        tracing::error!(child = ?kind, cause = failure.as_deref().unwrap_or("stopped"), "child actor ended; restarting");
        schedule_restart(&myself, state, kind);
        Ok(())
    }
}

fn schedule_restart(myself: &ActorRef<NodeSupervisorMsg>, state: &mut NodeSupervisorState, kind: ChildKind) {
    let n = state.failures.entry(kind).or_insert(0);
    *n = n.saturating_add(1);
    // 100 ms, 200 ms, … capped at 10 s.
    let backoff = Duration::from_millis(100u64.saturating_mul(1 << (*n).min(7))).min(Duration::from_secs(10));
    myself.send_after(backoff, move || NodeSupervisorMsg::Restart(kind));
}

async fn spawn_child(
    myself: &ActorRef<NodeSupervisorMsg>,
    state: &mut NodeSupervisorState,
    kind: ChildKind,
) -> Result<(), ActorProcessingErr> {
    let ctx = state.ctx.clone();
    let sup = myself.get_cell();
    let cell = match kind {
        ChildKind::Heartbeat => Actor::spawn_linked(None, Heartbeat, HeartbeatArgs { ctx }, sup).await?.0.get_cell(),
        ChildKind::ClusterManager => {
            Actor::spawn_linked(None, ClusterManager, ClusterManagerArgs { ctx }, sup).await?.0.get_cell()
        }
        ChildKind::ModelManager => {
            Actor::spawn_linked(None, ModelManager, ModelManagerArgs { ctx }, sup).await?.0.get_cell()
        }
        ChildKind::TaskManager => {
            Actor::spawn_linked(None, TaskManager, TaskManagerArgs { ctx }, sup).await?.0.get_cell()
        }
        ChildKind::Worker(index) => {
            let model = ctx.config.worker.models[index].clone();
            Actor::spawn_linked(None, Worker, WorkerArgs { ctx, model, index }, sup).await?.0.get_cell()
        }
        ChildKind::Gateway => Actor::spawn_linked(None, Gateway, GatewayArgs { ctx }, sup).await?.0.get_cell(),
        ChildKind::Puller => Actor::spawn_linked(None, Puller, PullerArgs { ctx }, sup).await?.0.get_cell(),
    };
    state.children.insert(cell.get_id(), (kind, cell));
    Ok(())
}
