//! Leadership and reconciliation. Every cluster manager runs this loop; the one holding
//! the leader lease (a key in the leases bucket, which expires after the node TTL unless
//! renewed) reconciles: it reads the deployments, the live nodes and the placements,
//! computes the plan (see `placement.rs`) and writes the placements that changed. Worker
//! nodes watch their own placement and start or stop workers to match.
//!
//! Everything it knows is in KV, and a plan is computed from scratch each time: a leader
//! killed half-way through writing placements leaves a state the next leader (or itself,
//! restarted) completes, with no manual step.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use bitinglip_bus_schema::{ModelState, NodePlacement, Replica, Role, Unplaced, WireError};
use bitinglip_nats::{now_ms, store::leases::LeaderLease};

use super::{autoscale::Autoscaler, placement};
use crate::{
    ops::{deployments, estimate},
    NodeContext,
};

/// How long a node where a model failed to load is passed over for it.
const FAILED_LOAD_BACKOFF_MS: u64 = 5 * 60 * 1000;

/// One reconcile pass: plan, then write what changed.
async fn reconcile(ctx: &NodeContext) -> Result<(), WireError> {
    let store = &ctx.store;
    let mut deployments = store.deployments().list().await?;
    // An on-demand model unloaded while a task was being accepted for it would leave that
    // task waiting with nobody to load the model: tasks in its queue bring it back.
    for d in deployments.iter_mut().filter(|d| d.on_demand && d.replicas == 0) {
        if store.queue().has_tasks(&d.model).await.unwrap_or(false) {
            tracing::info!(model = %d.model, "tasks are queued for an unloaded on-demand model; loading it again");
            *d = deployments::ensure_loaded(store, &d.model, 1).await?;
        }
    }
    let current = store.deployments().placements().await?;
    let nodes = store.nodes().live().await?;
    let mut wants = Vec::with_capacity(deployments.len());
    for d in deployments {
        let record = store.models().get(&d.model).await?;
        let (reserve, _) = estimate::for_deployment(&d, record.as_ref());
        wants.push(placement::Want { deployment: d, memory: reserve.cpu, gpu_memory: reserve.gpu });
    }
    let mut views: Vec<placement::NodeView> =
        nodes.iter().filter(|n| n.runs(Role::Worker)).map(placement::NodeView::of).collect();
    // A model that failed to load on a node is placed elsewhere for a while.
    let now = now_ms();
    for st in store.model_status().list(None).await? {
        if st.state == ModelState::Failed && now.saturating_sub(st.updated_ms) < FAILED_LOAD_BACKOFF_MS {
            if let Some(v) = views.iter_mut().find(|v| v.id == st.node) {
                v.failed.insert(st.model);
            }
        }
    }
    let current_replicas: BTreeMap<String, Vec<Replica>> =
        current.iter().map(|(node, p)| (node.clone(), p.replicas.clone())).collect();
    let plan =
        placement::plan(&wants, &views, &current_replicas, now, ctx.config.cluster.idle_unload.as_millis() as u64);

    for (model, replicas) in &plan.scale {
        tracing::info!(model = %model, replicas, "scaling an on-demand deployment (idle, or evicted for memory)");
        store
            .deployments()
            .modify(model, |d| {
                Ok::<_, WireError>(d.filter(|d| d.replicas != *replicas).map(|mut d| {
                    d.replicas = *replicas;
                    d
                }))
            })
            .await??;
    }
    for (node, replicas) in &plan.placements {
        if current.get(node).is_some_and(|p| &p.replicas == replicas)
            || (replicas.is_empty() && !current.contains_key(node))
        {
            continue;
        }
        let models: Vec<&str> = replicas.iter().map(|r| r.model.as_str()).collect();
        tracing::info!(node = %node, ?models, "placement changed");
        let placement = NodePlacement {
            node: node.clone(),
            replicas: replicas.clone(),
            leader: ctx.node_id().to_string(),
            updated_ms: now_ms(),
        };
        store.deployments().write_placement(&placement).await?;
    }
    // Nodes that left: their placement goes, so a node that comes back starts clean.
    for node in current.keys().filter(|n| !plan.placements.contains_key(*n)) {
        tracing::info!(node = %node, "node gone; its replicas are placed elsewhere");
        store.deployments().delete_placement(node).await?;
    }
    // Why deployments are short of replicas, for `deployments ls` and the dashboard.
    let recorded = store.deployments().unplaced().await?;
    for (model, why) in &plan.unplaced {
        if recorded.get(model).is_none_or(|u| &u.reason != why) {
            tracing::info!(model = %model, reason = %why, "replicas not placed");
            let note = Unplaced { model: model.clone(), reason: why.clone(), updated_ms: now_ms() };
            store.deployments().write_unplaced(&note).await?;
        }
    }
    for model in recorded.keys().filter(|m| !plan.unplaced.contains_key(*m)) {
        store.deployments().delete_unplaced(model).await?;
    }
    Ok(())
}

/// The loop every cluster manager runs: seed the configured deployments, then hold or
/// wait for the lease and reconcile while leading, every tick and at once when a
/// deployment changes or a node joins or leaves. Runs until its task is aborted.
pub(super) async fn run(ctx: NodeContext) {
    for d in &ctx.config.cluster.deployments {
        if let Err(err) = deployments::seed(&ctx.store, d).await {
            tracing::warn!(model = %d.source, cause = %err, "configured deployment not created");
        }
    }
    let changed = tokio::sync::Notify::new();
    let renewed = AtomicU64::new(0);
    // Set on every change of a deployment: the autoscaler reads the bucket again.
    let dirty = AtomicBool::new(true);
    let mut nodes = ctx.nodes.clone();
    let deployments = ctx.store.deployments();
    tokio::join!(
        deployments.on_change(|| {
            dirty.store(true, Ordering::Relaxed);
            changed.notify_one();
        }),
        async {
            loop {
                nodes.membership_changed().await;
                changed.notify_one();
            }
        },
        lead(&ctx, &changed, &renewed),
        autoscale(&ctx, &renewed, &dirty),
    );
}

/// Holds or waits for the lease; while leading, reconciles every tick and at once on a
/// change. Notes in `renewed` when it last held the lease (0: it does not).
async fn lead(ctx: &NodeContext, changed: &tokio::sync::Notify, renewed: &AtomicU64) {
    let tick = ctx.config.cluster.reconcile_interval.min(ctx.config.cluster.node_ttl / 3);
    let mut lease = LeaderLease::default();
    loop {
        if lease.hold(&ctx.store).await {
            renewed.store(now_ms(), Ordering::Relaxed);
            if let Err(err) = reconcile(ctx).await {
                tracing::warn!(cause = %err, "reconcile failed; retrying at the next tick");
            }
        } else {
            renewed.store(0, Ordering::Relaxed);
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every `cluster.autoscale_interval`, while this node held the lease lately (within
/// two thirds of its TTL), the autoscaler's step. A task of its own: a reconcile takes
/// seconds at a thousand nodes, and decisions must not wait for it (a decision changes a
/// deployment, which brings a reconcile at once). A stale flag at a change of leader
/// costs nothing: a decision is written only over the count it was made from.
async fn autoscale(ctx: &NodeContext, renewed: &AtomicU64, dirty: &AtomicBool) {
    let fresh_ms = (ctx.config.cluster.node_ttl * 2 / 3).as_millis() as u64;
    let mut tick = tokio::time::interval(ctx.config.cluster.autoscale_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut autoscaler = Autoscaler::default();
    loop {
        tick.tick().await;
        if now_ms().saturating_sub(renewed.load(Ordering::Relaxed)) < fresh_ms {
            if let Err(err) = autoscaler.step(ctx, dirty).await {
                tracing::warn!(cause = %err, "autoscaling failed; retrying at the next tick");
            }
        } else {
            // Another leader decides; what this one saw is stale when it leads again.
            autoscaler = Autoscaler::default();
        }
    }
}
