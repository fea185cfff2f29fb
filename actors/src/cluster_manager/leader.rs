//! Leadership and reconciliation. Every cluster manager runs this loop; the one holding
//! the leader lease (a key in the leases bucket, which expires after the node TTL unless
//! renewed) reconciles: it reads the deployments, the live nodes and the placements,
//! computes the plan (see `placement.rs`) and writes the placements that changed. Worker
//! nodes watch their own placement and start or stop workers to match.
//!
//! Everything it knows is in KV, and a plan is computed from scratch each time: a leader
//! killed half-way through writing placements leaves a state the next leader (or itself,
//! restarted) completes, with no manual step.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::kv;
use bitinglip_bus_schema::{ModelState, NodePlacement, Replica};
use bitinglip_nats::now_ms;
use futures::StreamExt;

use super::{deployments, live_nodes, placement};
use crate::NodeContext;

/// How long a node where a model failed to load is passed over for it.
const FAILED_LOAD_BACKOFF_MS: u64 = 5 * 60 * 1000;

/// The leader lease as this node holds it.
struct Lease {
    revision: Option<u64>,
}

impl Lease {
    /// Renews the lease, or takes it when it is free; true while this node leads.
    async fn hold(&mut self, ctx: &NodeContext) -> bool {
        let key = ctx.bus.subjects().leader_key();
        let me = bytes::Bytes::copy_from_slice(ctx.node_id().as_bytes());
        if let Some(rev) = self.revision {
            match ctx.kv.leases.update(&key, me.clone(), rev).await {
                Ok(next) => {
                    self.revision = Some(next);
                    return true;
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "leader lease lost");
                    self.revision = None;
                }
            }
        }
        match ctx.kv.leases.create(&key, me).await {
            Ok(rev) => {
                tracing::info!(node = %ctx.node_id(), "leading the cluster managers");
                self.revision = Some(rev);
                true
            }
            Err(_) => false,
        }
    }
}

/// The node holding the leader lease now.
pub async fn current_leader(ctx: &NodeContext) -> Option<String> {
    let value = ctx.kv.leases.get(ctx.bus.subjects().leader_key()).await.ok()??;
    String::from_utf8(value.to_vec()).ok()
}

/// One reconcile pass: plan, then write what changed.
pub async fn reconcile(ctx: &NodeContext) -> Result<(), bitinglip_bus_schema::WireError> {
    let mut deployments = deployments::list(ctx).await?;
    // An on-demand model unloaded while a task was being accepted for it would leave that
    // task waiting with nobody to load the model: tasks in its queue bring it back.
    for d in deployments.iter_mut().filter(|d| d.on_demand && d.replicas == 0) {
        if has_queued_tasks(ctx, &d.model).await {
            tracing::info!(model = %d.model, "tasks are queued for an unloaded on-demand model; loading it again");
            *d = deployments::ensure_loaded(ctx, &d.model, 1).await?;
        }
    }
    let current = deployments::placements(ctx).await?;
    let nodes = live_nodes(ctx).await?;
    let mut wants = Vec::with_capacity(deployments.len());
    for d in deployments {
        let memory = match d.memory {
            Some(m) => m,
            None => crate::model_manager::get_model(ctx, &d.model).await?.and_then(|r| r.estimated_memory).unwrap_or(0),
        };
        wants.push(placement::Want { deployment: d, memory });
    }
    let mut views: Vec<placement::NodeView> =
        nodes.iter().filter(|n| n.runs("worker")).map(placement::NodeView::of).collect();
    // A model that failed to load on a node is placed elsewhere for a while.
    let now = now_ms();
    for st in crate::model_manager::status::list(ctx, None).await? {
        if st.state == ModelState::Failed && now.saturating_sub(st.updated_ms) < FAILED_LOAD_BACKOFF_MS {
            if let Some(v) = views.iter_mut().find(|v| v.id == st.node) {
                v.failed.insert(st.model);
            }
        }
    }
    let current_replicas: BTreeMap<String, Vec<Replica>> =
        current.iter().map(|(node, p)| (node.clone(), p.replicas.clone())).collect();
    let plan = placement::plan(&wants, &views, &current_replicas, now, ctx.config.cluster.idle_unload.as_millis() as u64);

    for (model, replicas) in &plan.scale {
        tracing::info!(model = %model, replicas, "scaling an on-demand deployment (idle, or evicted for memory)");
        deployments::modify(ctx, model, |d| {
            Ok(d.filter(|d| d.replicas != *replicas).map(|mut d| {
                d.replicas = *replicas;
                d
            }))
        })
        .await?;
    }
    for (node, replicas) in &plan.placements {
        if current.get(node).is_some_and(|p| &p.replicas == replicas) || (replicas.is_empty() && !current.contains_key(node)) {
            continue;
        }
        let models: Vec<&str> = replicas.iter().map(|r| r.model.as_str()).collect();
        tracing::info!(node = %node, ?models, "placement changed");
        let placement =
            NodePlacement { node: node.clone(), replicas: replicas.clone(), leader: ctx.node_id().to_string(), updated_ms: now_ms() };
        deployments::write_placement(ctx, &placement).await?;
    }
    // Nodes that left: their placement goes, so a node that comes back starts clean.
    for node in current.keys().filter(|n| !plan.placements.contains_key(*n)) {
        tracing::info!(node = %node, "node gone; its replicas are placed elsewhere");
        deployments::delete_placement(ctx, node).await?;
    }
    for (model, why) in &plan.unplaced {
        tracing::debug!(model = %model, reason = %why, "replicas not placed");
    }
    Ok(())
}

/// True when the tasks stream holds a task (queued or running) for `model`.
async fn has_queued_tasks(ctx: &NodeContext, model: &str) -> bool {
    let subjects = ctx.bus.subjects();
    let Ok(stream) = ctx.bus.jetstream().get_stream(subjects.tasks_stream()).await else { return false };
    let Ok(mut counts) = stream.info_with_subjects(subjects.model_queues(model)).await else { return false };
    while let Some(Ok((_, n))) = counts.next().await {
        if n > 0 {
            return true;
        }
    }
    false
}

/// The loop every cluster manager runs: seed the configured deployments, then hold or
/// wait for the lease and reconcile while leading, every tick and at once when a
/// deployment changes or a node joins or leaves. Runs until its task is aborted.
pub async fn run(ctx: NodeContext) {
    for d in &ctx.config.cluster.deployments {
        if let Err(err) = deployments::seed(&ctx, d).await {
            tracing::warn!(model = %d.source, cause = %err, "configured deployment not created");
        }
    }
    let changed = tokio::sync::Notify::new();
    tokio::join!(
        watch(ctx.kv.deployments.clone(), "deploy.", true, &changed),
        watch(ctx.kv.nodes.clone(), "", false, &changed),
        lead(&ctx, &changed),
    );
}

async fn lead(ctx: &NodeContext, changed: &tokio::sync::Notify) {
    let tick = ctx.config.cluster.reconcile_interval.min(ctx.config.cluster.node_ttl / 3);
    let mut lease = Lease { revision: None };
    loop {
        if lease.hold(ctx).await {
            if let Err(err) = reconcile(ctx).await {
                tracing::warn!(cause = %err, "reconcile failed; retrying at the next tick");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Wakes the loop on changes of keys starting with `prefix`: every change, or (for the
/// nodes bucket, where every heartbeat is a change) only keys appearing or going.
async fn watch(store: kv::Store, prefix: &str, every_change: bool, changed: &tokio::sync::Notify) {
    let mut known = std::collections::HashSet::new();
    loop {
        if let Ok(mut w) = store.watch_all().await {
            while let Some(Ok(entry)) = w.next().await {
                if !entry.key.starts_with(prefix) {
                    continue;
                }
                let joined_or_left = match entry.operation {
                    kv::Operation::Put => known.insert(entry.key.clone()),
                    _ => known.remove(&entry.key),
                };
                if every_change || joined_or_left {
                    changed.notify_one();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Gives the lease up if this node holds it (a clean stop), so another cluster manager
/// leads at once rather than after the TTL.
pub async fn release(ctx: &NodeContext) {
    let key = ctx.bus.subjects().leader_key();
    if let Ok(Some(entry)) = ctx.kv.leases.entry(&key).await {
        if entry.operation == kv::Operation::Put && entry.value.as_ref() == ctx.node_id().as_bytes() {
            let _ = ctx.kv.leases.delete_expect_revision(&key, Some(entry.revision)).await;
        }
    }
}
