//! The task manager: validates submitted tasks, records them, and queues them durably.
//! Its endpoints form the NATS service `bitinglip-task-manager` (`nats micro ls`).
//!
//! Supervised by the node supervisor; supervises nothing. Serves `…task.submit` and
//! `…task.get` on the queue group `task-manager`, so several can run and each request is
//! answered once. For a submit it validates the request (fields, known model, a live
//! worker for it), picks the task id (the caller's, one derived from the idempotency key,
//! or a new ULID), reserves a place in the model's queue from its own count, publishes the
//! task to the task's subject in the tasks stream (pinned to one worker by cache-affinity
//! routing, see `route`, or shared) with `Nats-Msg-Id` = task id, and
//! answers `accepted` only after the stream's PubAck: from then on the task cannot be
//! lost. It writes no record: the stream message is the task's record until a worker
//! claims it. A resubmitted id within the dedupe window is a duplicate, not a second task;
//! an id the caller may have used before is looked up first (records, then queues).
//!
//! It also serves `…task.get` (the record, or the queued task's stream message),
//! `…task.list`, and `…task.*.cancel` (a task still queued gets a cancelled record here,
//! so no worker ever runs it; a running one is stopped by its worker, which gets the same
//! message).
//!
//! Whether a model is served it asks the node's one watch on the heartbeats (a no is
//! checked against the bucket). If a subscription ends the actor fails and is restarted.

mod backpressure;
mod cancel;
mod lanes;
mod route;
mod usage;
mod validate;

use std::sync::Arc;

use async_nats::service::Request;
use bitinglip_bus_schema::{
    ErrorKind, GetTask, NodeHeartbeat, Role, Subjects, SubmitReply, SubmitRequest, TaskAccepted, TaskRecord, TaskSpec,
    WireError,
};
use bitinglip_nats::{now_ms, trace::TraceParent, trace_of};
use tracing::Instrument;

use self::backpressure::Admission;
use crate::{
    ops::{
        deployments,
        task_ids::{request_sha256, task_id_for},
    },
    serve::{Endpoints, Service, Started},
    NodeContext,
};

/// The task manager, run by `serve::Served<TaskManager>`.
pub struct TaskManager;

/// No worker serves `model` now: a known model (registered or deployed) is loaded on
/// demand, through its deployment (an on-demand one is created when it has none). The
/// task then waits in its queue until the replica loads, or, when the caller asked not
/// to wait, the answer is `model_loading` with what the load is doing.
async fn load_on_demand(ctx: &NodeContext, model: &str, nodes: &[NodeHeartbeat], wait: bool) -> Result<(), WireError> {
    let deployment = ctx.store.deployments().get(model).await?;
    if deployment.is_none() && ctx.store.models().get(model).await?.is_none() {
        return Err(WireError::new(ErrorKind::UnknownModel, format!("model `{model}` is not registered")));
    }
    if !nodes.iter().any(|n| n.runs(Role::Worker)) {
        return Err(WireError::new(
            ErrorKind::NoWorker,
            format!("no live worker serves model `{model}`, and no worker node is up to load it"),
        ));
    }
    if deployment.is_none_or(|d| d.replicas == 0) {
        deployments::ensure_loaded(&ctx.store, model, 1).await?;
        tracing::info!(model, "loading on demand");
    }
    if wait {
        return Ok(());
    }
    let statuses = ctx.store.model_status().list(Some(model)).await.unwrap_or_default();
    let progress = if statuses.is_empty() {
        "a replica is being placed".to_string()
    } else {
        statuses
            .iter()
            .map(|s| match &s.reason {
                Some(r) => format!("{}: {} ({r})", s.node, s.state.as_str()),
                None => format!("{}: {}", s.node, s.state.as_str()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    Err(WireError::new(ErrorKind::ModelLoading, format!("model `{model}` is loading ({progress}); retry shortly")))
}

/// A NATS client identity's submit counted against its limits
/// (`task_manager.client_limits`), across the cluster as an API key's are: over one, the
/// answer is `rate_limit_exceeded` with when to retry. Other owners pass (API keys are
/// counted at the gateways).
async fn client_limits(ctx: &NodeContext, owner: Option<&str>) -> Result<(), WireError> {
    let Some((owner, name)) = owner.and_then(|o| Some((o, o.strip_prefix(bitinglip_bus_schema::CLIENT_OWNER_PREFIX)?)))
    else {
        return Ok(());
    };
    let table = &ctx.config.task_manager.client_limits;
    let Some(set) = table.get(name).or_else(|| table.get("*")) else { return Ok(()) };
    let limits = bitinglip_bus_schema::KeyLimits {
        rpm: set.rpm,
        tpm: set.tpm,
        tokens_per_day: set.tokens_per_day,
        max_concurrent: None,
    };
    if !limits.any() {
        return Ok(());
    }
    let now = now_ms();
    let window = ctx.store.counters().count_request(owner, now).await?;
    match crate::ops::limits::over(&limits, &window, now) {
        None => Ok(()),
        Some((why, retry)) => Err(WireError::new(
            ErrorKind::RateLimitExceeded,
            format!("client identity {name} is {why}; retry in {retry} s"),
        )),
    }
}

/// The tenant a task is dispatched under, and its weight (pure): a NATS client identity
/// is its own tenant (`client-<name>`), weighted by `task_manager.client_limits`, whatever
/// its body says; a gateway's (an API key's or an owner-less subject, which only trusted
/// roles publish on) names the key's tenant and weight, else the owner is the tenant.
fn share(
    config: &bitinglip_config::TaskManagerConfig,
    owner: Option<&str>,
    tenant: Option<String>,
    weight: Option<u32>,
) -> (String, u32) {
    if let Some(name) = owner.and_then(|o| o.strip_prefix(bitinglip_bus_schema::CLIENT_OWNER_PREFIX)) {
        let table = &config.client_limits;
        let weight = table.get(name).or_else(|| table.get("*")).and_then(|l| l.weight).unwrap_or(1);
        return (owner.unwrap_or_default().to_string(), weight.clamp(1, bitinglip_bus_schema::MAX_WEIGHT));
    }
    let tenant = tenant
        .filter(|t| bitinglip_bus_schema::valid_tenant(t) || Some(t.as_str()) == owner)
        .or_else(|| owner.map(str::to_string))
        .unwrap_or_else(|| "=".to_string());
    (tenant, weight.unwrap_or(1).clamp(1, bitinglip_bus_schema::MAX_WEIGHT))
}

/// Why a resubmitted task is not a retry of `existing` (pure): another API key's task,
/// or another request under the same idempotency key (refused, as Stripe does, rather
/// than answered with the old task).
fn conflict(existing: &TaskRecord, new: &TaskRecord) -> Option<String> {
    if existing.owner != new.owner {
        return Some(format!("task {} belongs to another owner", new.task_id));
    }
    match (&existing.request_sha256, &new.request_sha256) {
        (Some(old), Some(this)) if old != this => {
            Some("this Idempotency-Key was used with a different request; use a new key for a new request".to_string())
        }
        _ => None,
    }
}

async fn submit(
    ctx: &NodeContext,
    admission: &Arc<Admission>,
    recent: &route::RecentPins,
    lanes: &lanes::Lanes,
    mut req: SubmitRequest,
    trace: Option<&TraceParent>,
) -> Result<TaskAccepted, WireError> {
    validate::request(&ctx.config.task_manager, &mut req, ctx.bus.max_payload())?;
    client_limits(ctx, req.owner.as_deref()).await?;
    let model = req.chat.model.clone();
    // The watch answers yes quickly; a no is checked against the bucket itself, since a
    // fresh node's watch may not have caught up yet.
    if !ctx.nodes.serves(&model) {
        if let Some(err) = admission.still_unknown(&model) {
            return Err(err);
        }
        let nodes = ctx.store.nodes().live().await?;
        if !nodes.iter().any(|n| n.serves(&model)) {
            // Heartbeats that stopped because the store could not take them (a cluster
            // healing) are not dead workers: this node's own heartbeat says which it is.
            if !nodes.iter().any(|n| n.node_id == ctx.node_id()) {
                return Err(WireError::new(
                    ErrorKind::Unavailable,
                    "the cluster's heartbeats are not current (not even this node's): the bus is healing; retry",
                ));
            }
            load_on_demand(ctx, &model, &nodes, req.wait_for_model)
                .await
                .inspect_err(|err| admission.remember_unknown(&model, err))?;
        }
    }
    admission.check_age(ctx, &model, req.priority).await?;
    let task_id = task_id_for(&req);
    tracing::Span::current().record("task.id", task_id.as_str());
    let now = now_ms();
    let accepted = TaskAccepted {
        task_id: task_id.clone(),
        events_subject: ctx.bus.subjects().task_events(req.owner.as_deref(), &task_id),
        duplicate: false,
    };

    // No record is written here: the stream message is the task's record until a worker
    // claims it. An id the caller may have used before (an idempotency key, or an id not
    // made up for this submit) is looked up first, in the records and the queues: a task
    // already there is this one, answered without queueing it again.
    let sha = request_sha256(&req.chat);
    let may_exist = req.idempotency_key.is_some() || (req.task_id.is_some() && !req.new_id);
    if may_exist {
        if let Some(existing) = ctx.store.tasks().existing(&task_id).await? {
            let mut asked = TaskRecord::queued(task_id.clone(), model.clone(), req.priority, now);
            asked.owner = req.owner.clone();
            asked.request_sha256 = Some(sha.clone());
            if let Some(why) = conflict(&existing, &asked) {
                return Err(WireError::new(ErrorKind::Conflict, why));
            }
            return Ok(TaskAccepted { duplicate: true, ..accepted });
        }
    }

    // A place in the queue, from this task manager's count (no JetStream call per task),
    // then the stream. Its acknowledgement means the task is on disk (and replicated):
    // only now may we say accepted. A duplicate Nats-Msg-Id within the window is
    // acknowledged without storing a second copy.
    let place = admission.reserve(ctx, &model, req.priority).await?;
    let (tenant, weight) = share(&ctx.config.task_manager, req.owner.as_deref(), req.tenant, req.weight);
    let spec = TaskSpec {
        task_id: task_id.clone(),
        chat: req.chat,
        priority: req.priority,
        accepted_ms: now,
        owner: req.owner,
        request_sha256: Some(sha),
        tenant: Some(tenant),
        weight: Some(weight),
    };
    // Cache affinity: pinned to the worker whose prefix cache should hold the prompt.
    let key = route::affinity_key(&spec.chat);
    let (workers, beats): (Vec<_>, std::collections::HashMap<String, u64>) = ctx
        .nodes
        .workers_of(&model)
        .into_iter()
        .map(|(w, at)| {
            let id = w.worker_id.clone();
            (w, (id, at))
        })
        .unzip();
    let beat = |w: &str| beats.get(w).copied().unwrap_or_default();
    let pin = route::pin(ctx.config.routing.mode, spec.priority, key, &workers, |w| recent.count(w, beat(w)));
    if let Some(worker) = &pin {
        recent.add(worker, beat(worker));
    }
    if spec.priority == bitinglip_bus_schema::Priority::Interactive {
        let route = if pin.is_some() { "pinned" } else { "shared" };
        crate::metrics::metrics().routed.with_label_values(&[&model, route]).inc();
    }
    // Its tenant's lane is there before the task (a pinned task is released to it when
    // its worker is full).
    lanes.ensure(&ctx.store, &model, spec.priority, spec.tenant(), spec.weight()).await?;
    let queued = ctx.store.queue().publish(&spec, trace, pin.as_deref()).await?;
    if !queued.duplicate {
        place.keep();
    }
    tracing::debug!(task.id = %task_id, model = %model, stream.seq = queued.sequence, duplicate = queued.duplicate, "task accepted");
    Ok(TaskAccepted { duplicate: queued.duplicate, ..accepted })
}

#[ractor::async_trait]
impl Service for TaskManager {
    const DESCRIPTION: &'static str = "BitingLip task manager: submit, get, list, cancel";
    const GROUP: fn(&Subjects) -> String = Subjects::task_manager_queue_group;

    async fn start(on: &Endpoints) -> Started {
        let subjects = on.subjects();
        let submits = on.endpoint("submit", subjects.all_task_submits()).await?;
        let submit_ctx = on.ctx().clone();
        // This task manager's knowledge of its queues, for as long as it runs.
        let admission = Arc::new(Admission::default());
        // The tasks it pinned to each worker lately (cache-affinity routing).
        let recent = Arc::new(route::RecentPins::default());
        // The tenant lanes it made.
        let lanes = Arc::new(lanes::Lanes::default());
        on.each(submits, move |req: Request| {
            let ctx = submit_ctx.clone();
            let admission = admission.clone();
            let recent = recent.clone();
            let lanes = lanes.clone();
            let trace = trace_of(&req.message);
            let span = tracing::info_span!("task_manager", otel.kind = "server", task.id = tracing::field::Empty);
            bitinglip_nats::trace::continue_trace(&span, trace.as_ref());
            async move {
                let msg = &req.message;
                let owner = ctx.bus.subjects().owner_of_task_subject(&msg.subject);
                let reply = match (ctx.bus.decode::<SubmitRequest>(msg), owner) {
                    (Err(err), _) => SubmitReply::Rejected(err.into()),
                    (Ok(_), None) => SubmitReply::Rejected(WireError::new(
                        ErrorKind::InvalidRequest,
                        "the subject names no task owner",
                    )),
                    (Ok(req), Some(owner)) => {
                        let mut body = req.envelope.body;
                        let model = body.chat.model.clone();
                        // The task is the subject's owner's; only a gateway's (or the
                        // admin's) made-up id skips the lookup.
                        body.new_id &= !bitinglip_bus_schema::is_client_owner(owner.as_deref());
                        body.owner = owner;
                        let reply = match submit(&ctx, &admission, &recent, &lanes, body, trace.as_ref()).await {
                            Ok(accepted) => SubmitReply::Accepted(accepted),
                            Err(err) => SubmitReply::Rejected(err),
                        };
                        crate::metrics::count_submit(&model, &reply);
                        reply
                    }
                };
                if let SubmitReply::Rejected(err) = &reply {
                    tracing::info!(kind = %err.kind, cause = %err.message, "submit rejected");
                }
                if let Err(err) = ctx.bus.respond(&req, &reply).await {
                    tracing::warn!(cause = %err, "submit reply not sent");
                }
            }
            .instrument(span)
        });

        on.serve("get", subjects.task_get(), |ctx, req: GetTask| async move {
            let record = ctx.store.tasks().status(&req.task_id).await?;
            record.ok_or_else(|| WireError::new(ErrorKind::NotFound, format!("no task {}", req.task_id)))
        })
        .await?;
        on.serve_owned("get-own", subjects.all_owner_task_gets(), cancel::get_own).await?;
        on.serve_owned("list-own", subjects.all_owner_task_lists(), cancel::list_own).await?;
        on.serve_owned("result", subjects.all_owner_task_results(), cancel::result_part).await?;
        on.serve_owned("cancel", subjects.all_task_cancels(), cancel::handle).await?;
        on.serve("usage", subjects.task_usage(), usage::record).await?;
        on.serve("consumers", subjects.task_consumers(), usage::consumers).await?;
        on.serve("list", subjects.task_list(), cancel::list).await
    }
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{Priority, TaskId};

    use super::*;

    fn record(owner: &str, sha: &str) -> TaskRecord {
        let mut r = TaskRecord::queued(TaskId::parse("idem-1").unwrap(), "m".into(), Priority::Interactive, 1);
        r.owner = Some(owner.into());
        r.request_sha256 = Some(sha.into());
        r
    }

    #[test]
    fn a_client_identity_is_its_own_tenant_and_a_gateway_names_the_keys() {
        let mut config = bitinglip_config::TaskManagerConfig::default();
        let weighted = bitinglip_config::ClientLimits { weight: Some(3), ..Default::default() };
        config.client_limits.insert("ops".into(), weighted);
        // A client cannot claim another tenant or weight.
        let claimed = share(&config, Some("client-ops"), Some("team-a".into()), Some(1000));
        assert_eq!(claimed, ("client-ops".to_string(), 3));
        assert_eq!(share(&config, Some("client-x"), None, None), ("client-x".to_string(), 1));
        // A gateway's: the key's tenant and weight, else the key alone.
        assert_eq!(share(&config, Some("k1"), Some("team-a".into()), Some(2)), ("team-a".to_string(), 2));
        assert_eq!(share(&config, Some("k1"), None, None), ("k1".to_string(), 1));
        assert_eq!(share(&config, Some("k1"), Some("no good".into()), Some(0)), ("k1".to_string(), 1));
        assert_eq!(share(&config, None, None, Some(5000)), ("=".to_string(), 1000));
    }

    #[test]
    fn a_retry_is_the_same_key_and_request_anything_else_conflicts() {
        assert_eq!(conflict(&record("k1", "a"), &record("k1", "a")), None);
        assert!(conflict(&record("k1", "a"), &record("k1", "b")).unwrap().contains("Idempotency-Key"));
        assert!(conflict(&record("k1", "a"), &record("k2", "a")).unwrap().contains("another owner"));
        // A record written before requests were hashed is taken as a retry.
        let mut old = record("k1", "a");
        old.request_sha256 = None;
        assert_eq!(conflict(&old, &record("k1", "b")), None);
    }
}
