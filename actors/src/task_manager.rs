//! The task manager: validates submitted tasks, records them, and queues them durably.
//! Its endpoints form the NATS service `bitinglip-task-manager` (`nats micro ls`).
//!
//! Supervised by the node supervisor; supervises nothing. Serves `…task.submit` and
//! `…task.get` on the queue group `task-manager`, so several can run and each request is
//! answered once. For a submit it validates the request (fields, known model, a live
//! worker for it), picks the task id (the caller's, one derived from the idempotency key,
//! or a new ULID), writes the status record (queued) into the tasks KV bucket, publishes
//! the task to the model's queue subject in the tasks stream with `Nats-Msg-Id` = task id,
//! and answers `accepted` only after the stream's PubAck: from then on the task cannot be
//! lost. A resubmitted id within the dedupe window is a duplicate, not a second task.
//!
//! It also serves `…task.list`, and `…task.*.cancel` (a task still queued is marked
//! cancelled here, so no worker ever runs it; a running one is stopped by its worker,
//! which gets the same message).
//!
//! It keeps a cache of live workers per model from a watch on the nodes bucket; the watch
//! is restarted when it ends. If a subscription ends the actor fails and is restarted.

mod backpressure;
mod cancel;
mod validate;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::{jetstream::kv, service::Request, HeaderMap};
use bitinglip_bus_schema::{
    decode_body, encode, ErrorKind, Envelope, GetTask, NodeHeartbeat, SubmitReply, SubmitRequest, TaskAccepted, TaskId,
    TaskRecord, TaskSpec, TaskState, TaskStatusReply, WireError,
};
use bitinglip_nats::{now_ms, trace_of};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use sha2::Digest;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::{
    model_manager::get_model,
    serve::{spawn_endpoint, spawn_serve},
    NodeContext,
};

/// The task manager actor.
pub struct TaskManager;

/// Its arguments.
pub struct TaskManagerArgs {
    /// Shared node context.
    pub ctx: NodeContext,
}

/// Its state: the serving tasks and the live-node watch.
pub struct TaskManagerState {
    tasks: Vec<JoinHandle<()>>,
    _service: async_nats::service::Service,
}

/// Messages to the task manager.
#[derive(Debug, Clone)]
pub enum TaskManagerMsg {
    /// A subscription ended; fail so the supervisor restarts us.
    SubscriptionEnded,
}

/// Live nodes by id, from a watch on the nodes bucket.
#[derive(Clone, Default)]
pub(crate) struct LiveNodes(Arc<RwLock<HashMap<String, NodeHeartbeat>>>);

impl LiveNodes {
    /// True when a live node has a ready worker for `model`.
    fn serves(&self, model: &str, ttl: Duration) -> bool {
        let now = now_ms();
        let ttl = ttl.as_millis() as u64;
        self.0.read().map(|nodes| {
            nodes.values().any(|n| {
                now.saturating_sub(n.time_ms) <= ttl
                    && n.serves(model)
            })
        })
        .unwrap_or(false)
    }

    fn spawn_watch(&self, store: kv::Store) -> JoinHandle<()> {
        let nodes = self.0.clone();
        tokio::spawn(async move {
            loop {
                match store.watch_all().await {
                    Ok(mut watch) => {
                        while let Some(entry) = watch.next().await {
                            let Ok(entry) = entry else { break };
                            let mut map = match nodes.write() {
                                Ok(m) => m,
                                Err(_) => return,
                            };
                            match entry.operation {
                                kv::Operation::Put => match decode_body::<NodeHeartbeat>(&entry.value, usize::MAX) {
                                    Ok(hb) => {
                                        map.insert(entry.key, hb);
                                    }
                                    Err(err) => tracing::warn!(key = %entry.key, cause = %err, "bad heartbeat"),
                                },
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    map.remove(&entry.key);
                                }
                            }
                        }
                    }
                    Err(err) => tracing::warn!(cause = %err, "nodes watch failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

/// No worker serves `model` now: a known model (registered or deployed) is loaded on
/// demand, through its deployment (an on-demand one is created when it has none). The
/// task then waits in its queue until the replica loads, or, when the caller asked not
/// to wait, the answer is `model_loading` with what the load is doing.
async fn load_on_demand(ctx: &NodeContext, model: &str, nodes: &[NodeHeartbeat], wait: bool) -> Result<(), WireError> {
    let deployment = crate::cluster_manager::deployments::get(ctx, model).await?;
    if deployment.is_none() && get_model(ctx, model).await?.is_none() {
        return Err(WireError::new(ErrorKind::UnknownModel, format!("model `{model}` is not registered")));
    }
    if !nodes.iter().any(|n| n.runs("worker")) {
        return Err(WireError::new(ErrorKind::NoWorker, format!("no live worker serves model `{model}`, and no worker node is up to load it")));
    }
    if deployment.is_none_or(|d| d.replicas == 0) {
        crate::cluster_manager::deployments::ensure_loaded(ctx, model, 1).await?;
        tracing::info!(model, "loading on demand");
    }
    if wait {
        return Ok(());
    }
    let statuses = crate::model_manager::status::list(ctx, Some(model)).await.unwrap_or_default();
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

/// The task id for a request: the caller's, one derived from the idempotency key (so a
/// retry through any gateway maps to the same task), or a new ULID.
pub fn task_id_for(req: &SubmitRequest) -> TaskId {
    if let Some(id) = &req.task_id {
        return id.clone();
    }
    if let Some(key) = &req.idempotency_key {
        let digest = sha2::Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        return TaskId::parse(format!("idem-{hex}")).expect("hex is a valid task id");
    }
    TaskId::parse(ulid::Ulid::new().to_string()).expect("a ULID is a valid task id")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}

async fn submit(ctx: &NodeContext, live: &LiveNodes, mut req: SubmitRequest, trace: Option<&bitinglip_nats::trace::TraceParent>) -> Result<TaskAccepted, WireError> {
    validate::request(&ctx.config.task_manager, &mut req, ctx.bus.max_payload())?;
    let model = req.chat.model.clone();
    // The cache answers yes quickly; a no is checked against the bucket itself, since a
    // fresh task manager's watch may not have caught up yet.
    if !live.serves(&model, ctx.config.cluster.node_ttl) {
        let nodes = crate::cluster_manager::live_nodes(ctx).await?;
        if !nodes.iter().any(|n| n.serves(&model)) {
            load_on_demand(ctx, &model, &nodes, req.wait_for_model).await?;
        }
    }
    backpressure::check_age(ctx, &model, req.priority).await?;
    let task_id = task_id_for(&req);
    tracing::Span::current().record("task.id", task_id.as_str());
    let now = now_ms();
    let subjects = ctx.bus.subjects();
    let accepted = TaskAccepted { task_id: task_id.clone(), events_subject: subjects.task_events(&task_id), duplicate: false };

    // The status record first: a worker that claims the task finds it. An existing record
    // means a retry; a finished one is answered without queueing again.
    let record = TaskRecord::queued(task_id.clone(), model.clone(), req.priority, now);
    let bytes = encode(&Envelope::new(ulid::Ulid::new().to_string(), now, ctx.node_id(), &record))
        .map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?;
    match ctx.kv.tasks.create(task_id.as_str(), bytes.into()).await {
        Ok(_) => {}
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
            let existing = read_record(ctx, &task_id).await?;
            if existing.as_ref().is_some_and(|r| r.state != TaskState::Queued) {
                return Ok(TaskAccepted { duplicate: true, ..accepted });
            }
        }
        Err(err) => return Err(unavailable("task status store", err)),
    }

    // Then the stream. The PubAck means the task is on disk (and replicated): only now may
    // we say accepted. A duplicate Nats-Msg-Id within the window is acknowledged without
    // storing a second copy.
    let spec = TaskSpec { task_id: task_id.clone(), chat: req.chat, priority: req.priority, accepted_ms: now };
    let payload = ctx.bus.encode(&spec).map_err(|e| WireError::from(&e))?;
    let mut headers: HeaderMap = bitinglip_nats::Bus::headers(trace);
    headers.insert(async_nats::header::NATS_MESSAGE_ID, task_id.as_str());
    let ack = ctx
        .bus
        .jetstream()
        .publish_with_headers(subjects.queue(&model, spec.priority), headers, payload)
        .await
        .map_err(backpressure::publish_error)?
        .await
        .map_err(backpressure::publish_error)?;
    tracing::debug!(task.id = %task_id, model = %model, stream.seq = ack.sequence, duplicate = ack.duplicate, "task accepted");
    Ok(TaskAccepted { duplicate: ack.duplicate, ..accepted })
}

/// Reads a task's status record.
pub async fn read_record(ctx: &NodeContext, task_id: &TaskId) -> Result<Option<TaskRecord>, WireError> {
    let Some(bytes) = ctx.kv.tasks.get(task_id.as_str()).await.map_err(|e| unavailable("task status store", e))? else {
        return Ok(None);
    };
    decode_body::<TaskRecord>(&bytes, usize::MAX)
        .map(Some)
        .map_err(|e| WireError::new(ErrorKind::Internal, format!("status record of {task_id}: {e}")))
}

#[ractor::async_trait]
impl Actor for TaskManager {
    type Msg = TaskManagerMsg;
    type State = TaskManagerState;
    type Arguments = TaskManagerArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: TaskManagerArgs) -> Result<Self::State, ActorProcessingErr> {
        let ctx = args.ctx;
        let live = LiveNodes::default();
        let watch = live.spawn_watch(ctx.kv.nodes.clone());
        let subjects = ctx.bus.subjects().clone();
        let group = subjects.task_manager_queue_group();

        let service = ctx.bus.service("bitinglip-task-manager", "BitingLip task manager: submit, get, list, cancel", &group).await?;
        let submit_sub = ctx.bus.endpoint(&service, "submit", subjects.task_submit()).await?;
        let submit_ctx = ctx.clone();
        let submit_serve = spawn_serve(submit_sub, myself.clone(), TaskManagerMsg::SubscriptionEnded, move |req: Request| {
            let ctx = submit_ctx.clone();
            let live = live.clone();
            let trace = trace_of(&req.message);
            let span = tracing::info_span!("task_manager", otel.kind = "server", task.id = tracing::field::Empty);
            bitinglip_nats::trace::continue_trace(&span, trace.as_ref());
            async move {
                let msg = &req.message;
                let reply = match ctx.bus.decode::<SubmitRequest>(msg) {
                    Err(err) => SubmitReply::Rejected(err.into()),
                    Ok(req) => {
                        let model = req.envelope.body.chat.model.clone();
                        let reply = match submit(&ctx, &live, req.envelope.body, trace.as_ref()).await {
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

        let end = || TaskManagerMsg::SubscriptionEnded;
        let get_serve = spawn_endpoint(
            ctx.bus.endpoint(&service, "get", subjects.task_get()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            TaskStatusReply::Error,
            |ctx, req: GetTask| async move {
                let record = read_record(&ctx, &req.task_id).await?;
                record.map(TaskStatusReply::Found).ok_or_else(|| WireError::new(ErrorKind::NotFound, format!("no task {}", req.task_id)))
            },
        );
        let cancel_serve = spawn_endpoint(
            ctx.bus.endpoint(&service, "cancel", subjects.all_task_cancels()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            bitinglip_bus_schema::Ack::Error,
            cancel::handle,
        );
        let list_serve = spawn_endpoint(
            ctx.bus.endpoint(&service, "list", subjects.task_list()).await?,
            myself,
            end(),
            ctx.clone(),
            bitinglip_bus_schema::TaskList::Error,
            cancel::list,
        );
        Ok(TaskManagerState { tasks: vec![watch, submit_serve, get_serve, cancel_serve, list_serve], _service: service })
    }

    async fn handle(&self, _myself: ActorRef<Self::Msg>, msg: Self::Msg, _state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match msg {
            TaskManagerMsg::SubscriptionEnded => Err("task manager subscription ended".into()),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.tasks.iter().for_each(JoinHandle::abort);
        Ok(())
    }
}
