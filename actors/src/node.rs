//! The node supervisor: the root of a node's actor tree.
//!
//! Supervised by nobody (the `bitinglip` binary spawns it and waits for a signal). It
//! supervises one actor per role this node runs, plus the heartbeat: the cluster manager,
//! model manager, task manager, one worker per configured model, and the gateway, started
//! in that order so that a request can be served by the time the gateway listens. On
//! worker nodes it also follows the node's placement (written by the leading cluster
//! manager) and starts a worker per replica placed here, stopping (draining) the ones
//! placed elsewhere.
//!
//! A child that fails (an error from a handler, a panic, a subscription that ended) is
//! restarted after a short backoff that grows with repeated failures; the process
//! survives. Stopping the supervisor stops the gateway first (no new requests), then the
//! workers (they hand back what they hold), then the rest.

mod assembly;

pub use assembly::{Node, StartError};

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use bitinglip_bus_schema::Replica;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use bitinglip_config::Role;

use crate::{
    cluster_manager::ClusterManager,
    gateway::{Gateway, GatewayArgs},
    heartbeat::{Heartbeat, HeartbeatArgs},
    model_manager::ModelManager,
    ops::models::replica_config,
    puller::Puller,
    serve::Served,
    task_manager::TaskManager,
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
    /// A worker for a replica the cluster placed here.
    Replica(u32),
    /// The gateway.
    Gateway,
    /// The hub puller (on worker nodes).
    Puller,
}

impl ChildKind {
    /// The node role it belongs to (the heartbeat belongs to the node).
    fn role(&self) -> Option<Role> {
        match self {
            ChildKind::Heartbeat => None,
            ChildKind::ClusterManager => Some(Role::ClusterManager),
            ChildKind::ModelManager => Some(Role::ModelManager),
            ChildKind::TaskManager => Some(Role::TaskManager),
            ChildKind::Worker(_) | ChildKind::Replica(_) | ChildKind::Puller => Some(Role::Worker),
            ChildKind::Gateway => Some(Role::Gateway),
        }
    }

    /// The actor's name, as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            ChildKind::Heartbeat => "heartbeat",
            ChildKind::ClusterManager => "cluster-manager",
            ChildKind::ModelManager => "model-manager",
            ChildKind::TaskManager => "task-manager",
            ChildKind::Worker(_) | ChildKind::Replica(_) => "worker",
            ChildKind::Gateway => "gateway",
            ChildKind::Puller => "puller",
        }
    }
}

/// The supervisor's state.
pub struct NodeSupervisorState {
    ctx: NodeContext,
    children: HashMap<ActorId, (ChildKind, ActorCell)>,
    failures: HashMap<ChildKind, u32>,
    stopping: bool,
    /// Replicas placed here, by child number.
    replicas: BTreeMap<u32, Replica>,
    next_replica: u32,
    /// Watches this node's placement (worker nodes).
    placement_watch: Option<JoinHandle<()>>,
}

/// Messages to the supervisor.
pub enum NodeSupervisorMsg {
    /// Start a child again (sent to itself after the backoff).
    Restart(ChildKind),
    /// Stop every child in order, then answer.
    Shutdown(ractor::RpcReplyPort<()>),
    /// The replicas the leading cluster manager placed on this node now.
    Placed(Vec<Replica>),
}

/// Follows this node's placement (its current value first) and tells the supervisor.
fn watch_placement(ctx: NodeContext, sup: ActorRef<NodeSupervisorMsg>) -> JoinHandle<()> {
    tokio::spawn(async move {
        ctx.store
            .deployments()
            .follow_placement(ctx.node_id(), |replicas| sup.cast(NodeSupervisorMsg::Placed(replicas)).is_ok())
            .await;
    })
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
                // Config refuses unknown roles; nothing to start for one.
                Role::Unknown => {}
            }
        }
        let placement_watch =
            ctx.config.has_role(Role::Worker).then(|| watch_placement(ctx.for_role(Role::Worker), myself.clone()));
        let mut state = NodeSupervisorState {
            ctx,
            children: HashMap::new(),
            failures: HashMap::new(),
            stopping: false,
            replicas: BTreeMap::new(),
            next_replica: 0,
            placement_watch,
        };
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
                if state.stopping || matches!(kind, ChildKind::Replica(id) if !state.replicas.contains_key(&id)) {
                    return Ok(());
                }
                if let Err(err) = spawn_child(&myself, state, kind).await {
                    tracing::error!(child = ?kind, cause = %err, "restart failed; trying again");
                    schedule_restart(&myself, state, kind);
                }
            }
            NodeSupervisorMsg::Placed(wanted) => {
                if state.stopping {
                    return Ok(());
                }
                // Stop the replicas no longer placed here (they drain), start the new ones.
                let gone: Vec<u32> = state
                    .replicas
                    .iter()
                    .filter(|(_, r)| !wanted.iter().any(|w| w.same_slot(r)))
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    let r = state.replicas.remove(&id);
                    let child =
                        state.children.iter().find(|(_, (k, _))| *k == ChildKind::Replica(id)).map(|(cid, _)| *cid);
                    if let Some((_, cell)) = child.and_then(|cid| state.children.remove(&cid)) {
                        tracing::info!(model = ?r.map(|r| r.model), "replica no longer placed here; unloading");
                        cell.stop(Some("unplaced".into()));
                    }
                }
                for w in wanted {
                    if state.replicas.values().any(|r| r.same_slot(&w)) {
                        continue;
                    }
                    let id = state.next_replica;
                    state.next_replica += 1;
                    tracing::info!(model = %w.model, gpus = ?w.gpus, "replica placed here; loading");
                    state.replicas.insert(id, w);
                    if let Err(err) = spawn_child(&myself, state, ChildKind::Replica(id)).await {
                        tracing::error!(cause = %err, "replica worker did not start; retrying");
                        schedule_restart(&myself, state, ChildKind::Replica(id));
                    }
                }
            }
            NodeSupervisorMsg::Shutdown(reply) => {
                state.stopping = true;
                if let Some(watch) = state.placement_watch.take() {
                    watch.abort();
                }
                // Gateway first (no new requests), workers next (they hand back their
                // tasks), then the control roles and the heartbeat.
                let order = |k: &ChildKind| match k {
                    ChildKind::Gateway => 0,
                    ChildKind::Worker(_) | ChildKind::Replica(_) | ChildKind::Puller => 1,
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
        crate::metrics::metrics().actor_restarts.with_label_values(&[kind.name()]).inc();
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

/// Starts service `S`'s actor under `sup`.
async fn spawn<S: crate::serve::Service>(ctx: NodeContext, sup: ActorCell) -> Result<ActorCell, ActorProcessingErr> {
    Ok(Actor::spawn_linked(None, Served::<S>::default(), ctx, sup).await?.0.get_cell())
}

async fn spawn_child(
    myself: &ActorRef<NodeSupervisorMsg>,
    state: &mut NodeSupervisorState,
    kind: ChildKind,
) -> Result<(), ActorProcessingErr> {
    let ctx = match kind.role() {
        Some(role) => state.ctx.for_role(role),
        None => state.ctx.clone(),
    };
    let sup = myself.get_cell();
    let cell = match kind {
        ChildKind::Heartbeat => Actor::spawn_linked(None, Heartbeat, HeartbeatArgs { ctx }, sup).await?.0.get_cell(),
        ChildKind::ClusterManager => spawn::<ClusterManager>(ctx, sup).await?,
        ChildKind::ModelManager => spawn::<ModelManager>(ctx, sup).await?,
        ChildKind::TaskManager => spawn::<TaskManager>(ctx, sup).await?,
        ChildKind::Worker(index) => {
            let model = ctx.config.worker.models[index].clone();
            let worker_id = format!("{}-w{index}", ctx.node_id());
            Actor::spawn_linked(None, Worker, WorkerArgs { ctx, model, worker_id, placed: false }, sup)
                .await?
                .0
                .get_cell()
        }
        ChildKind::Replica(id) => {
            let Some(replica) = state.replicas.get(&id) else { return Ok(()) };
            let model = replica_config(replica);
            let worker_id = format!("{}-r{id}", ctx.node_id());
            Actor::spawn_linked(None, Worker, WorkerArgs { ctx, model, worker_id, placed: true }, sup)
                .await?
                .0
                .get_cell()
        }
        ChildKind::Gateway => Actor::spawn_linked(None, Gateway, GatewayArgs { ctx }, sup).await?.0.get_cell(),
        ChildKind::Puller => spawn::<Puller>(ctx, sup).await?,
    };
    // Its restart counter exists from its start, at 0, so that `increase()` sees the first.
    crate::metrics::metrics().actor_restarts.with_label_values(&[kind.name()]);
    state.children.insert(cell.get_id(), (kind, cell));
    Ok(())
}
