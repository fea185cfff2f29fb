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

mod autoscale;
mod failover;
mod leader;
pub mod placement;

use bitinglip_bus_schema::{
    ClusterNodes, DeleteDeployment, ErrorKind, GetClusterStatus, ListDeployments, SetDeployment, Subjects, WireError,
};

use crate::{
    ops::deployments,
    serve::{Endpoints, Service, Started},
    NodeContext,
};

/// The cluster manager, run by `serve::Served<ClusterManager>`.
pub struct ClusterManager;

#[ractor::async_trait]
impl Service for ClusterManager {
    const DESCRIPTION: &'static str = "BitingLip membership, deployments and placement";
    const GROUP: fn(&Subjects) -> String = Subjects::cluster_manager_queue_group;

    async fn start(on: &Endpoints) -> Started {
        let ctx = on.ctx().clone();
        let subjects = ctx.bus.subjects().clone();
        on.serve("status", subjects.cluster_status(), |ctx, _: GetClusterStatus| async move {
            // The leader is a detail of the answer: a leases bucket that cannot be read
            // leaves it out rather than failing the status.
            let leader = ctx.store.leader().await.ok().flatten();
            let warnings = crate::health::warnings(&ctx);
            Ok(ClusterNodes { nodes: ctx.store.nodes().live().await?, leader, warnings })
        })
        .await?;
        on.serve("deployment-set", subjects.deployment_set(), |ctx, req: SetDeployment| async move {
            deployments::set(&ctx.store, req).await
        })
        .await?;
        on.serve("deployment-delete", subjects.deployment_delete(), |ctx, req: DeleteDeployment| async move {
            match ctx.store.deployments().delete(&req.model).await? {
                true => {
                    tracing::info!(model = %req.model, "deployment deleted");
                    Ok(())
                }
                false => Err(WireError::new(ErrorKind::NotFound, format!("no deployment of `{}`", req.model))),
            }
        })
        .await?;
        on.serve("deployment-list", subjects.deployment_list(), |ctx, _: ListDeployments| async move {
            deployments::statuses(&ctx.store).await
        })
        .await?;
        let advisories =
            ctx.bus.queue_subscribe(subjects.max_deliveries_advisory(), subjects.cluster_manager_queue_group()).await?;
        let poison_ctx = ctx.clone();
        on.each(advisories, move |msg| {
            let ctx = poison_ctx.clone();
            async move { failover::poison(&ctx, &msg.payload).await }
        });
        let handed = failover::Handed::default();
        on.spawn(failover::watch_nodes(ctx.clone(), handed.clone()));
        // A dead node is found from the server's client-disconnect events, or, without the
        // `events` user, by asking the nodes that run tasks whether they are alive.
        match ctx.events.clone() {
            Some(events) => on.spawn(failover::watch_disconnects(ctx.clone(), events, handed)),
            None => on.spawn(failover::probe_nodes(ctx.clone(), handed)),
        }
        on.spawn(leader::run(ctx));
        Ok(())
    }

    async fn stopped(ctx: &NodeContext) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), ctx.store.release_leader()).await;
    }
}
