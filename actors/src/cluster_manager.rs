//! The cluster manager: membership, failure handling, and `…cluster.status`.
//!
//! Supervised by the node supervisor; supervises nothing. Serves deployments
//! (`…deployment.set|delete|list`); the one holding the leader lease places replicas on
//! worker nodes (see `cluster_manager/leader.rs`). Subscribes to `…cluster.status`
//! and to JetStream's max-deliveries advisories of the tasks stream, on the queue group
//! `cluster-manager`, so several can run and each is handled once; hands on
//! the tasks of dead nodes, found at once from the server's client-disconnect events
//! (with the `events` user) or when their heartbeats stop (see
//! `cluster_manager/failover.rs`). It holds no state that is not in KV. If a subscription
//! ends it fails and is restarted.

mod failover;
mod leader;
pub mod placement;

use bitinglip_bus_schema::{
    ClusterNodes, DeleteDeployment, ErrorKind, GetClusterStatus, ListDeployments, SetDeployment, WireError,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::{
    ops::deployments,
    serve::{spawn_serve, Server},
    NodeContext,
};

/// The cluster manager actor.
pub struct ClusterManager;

/// Its arguments.
pub struct ClusterManagerArgs {
    /// Shared node context.
    pub ctx: NodeContext,
}

/// Its state: the serving task.
pub struct ClusterManagerState {
    ctx: NodeContext,
    tasks: Vec<JoinHandle<()>>,
    _service: async_nats::service::Service,
}

/// Messages to the cluster manager.
#[derive(Debug, Clone)]
pub enum ClusterManagerMsg {
    /// The subscription ended; fail so the supervisor restarts us.
    SubscriptionEnded,
}

#[ractor::async_trait]
impl Actor for ClusterManager {
    type Msg = ClusterManagerMsg;
    type State = ClusterManagerState;
    type Arguments = ClusterManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ClusterManagerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = args.ctx;
        let subject = ctx.bus.subjects().cluster_status();
        let group = ctx.bus.subjects().cluster_manager_queue_group();
        let advisories = ctx.bus.queue_subscribe(ctx.bus.subjects().max_deliveries_advisory(), group.clone()).await?;
        let poison_ctx = ctx.clone();
        let poison = spawn_serve(advisories, myself.clone(), ClusterManagerMsg::SubscriptionEnded, move |msg| {
            let ctx = poison_ctx.clone();
            async move { failover::poison(&ctx, &msg.payload).await }
        });
        let handed = failover::Handed::default();
        let watcher = tokio::spawn(failover::watch_nodes(ctx.clone(), handed.clone()));
        // A dead node is found from the server's client-disconnect events, or, without the
        // `events` user, by asking the nodes that run tasks whether they are alive.
        let disconnects = match ctx.events.clone() {
            Some(events) => tokio::spawn(failover::watch_disconnects(ctx.clone(), events, handed)),
            None => tokio::spawn(failover::probe_nodes(ctx.clone(), handed)),
        };
        let reconciler = tokio::spawn(leader::run(ctx.clone()));
        let service = ctx
            .bus
            .service("bitinglip-cluster-manager", "BitingLip membership, deployments and placement", &group)
            .await?;
        let subjects = ctx.bus.subjects().clone();
        let server = Server::new(myself, ClusterManagerMsg::SubscriptionEnded, ctx.clone());
        let endpoint = |name, subject| ctx.bus.endpoint(&service, name, subject);
        let serve = server.serve(endpoint("status", subject).await?, |ctx, _: GetClusterStatus| async move {
            // The leader is a detail of the answer: a leases bucket that cannot be read
            // leaves it out rather than failing the status.
            let leader = ctx.store.leader().await.ok().flatten();
            let warnings = crate::health::warnings(&ctx);
            Ok(ClusterNodes { nodes: ctx.store.nodes().live().await?, leader, warnings })
        });
        let set = server.serve(
            endpoint("deployment-set", subjects.deployment_set()).await?,
            |ctx, req: SetDeployment| async move { deployments::set(&ctx.store, req).await },
        );
        let delete = server.serve(
            endpoint("deployment-delete", subjects.deployment_delete()).await?,
            |ctx, req: DeleteDeployment| async move {
                match ctx.store.deployments().delete(&req.model).await? {
                    true => {
                        tracing::info!(model = %req.model, "deployment deleted");
                        Ok(())
                    }
                    false => Err(WireError::new(ErrorKind::NotFound, format!("no deployment of `{}`", req.model))),
                }
            },
        );
        let list = server.serve(
            endpoint("deployment-list", subjects.deployment_list()).await?,
            |ctx, _: ListDeployments| async move { deployments::statuses(&ctx.store).await },
        );
        let mut tasks = vec![poison, watcher, reconciler, serve, set, delete, list];
        tasks.push(disconnects);
        Ok(ClusterManagerState { ctx, tasks, _service: service })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClusterManagerMsg::SubscriptionEnded => Err("cluster status subscription ended".into()),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.tasks.iter().for_each(JoinHandle::abort);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), state.ctx.store.release_leader()).await;
        Ok(())
    }
}
