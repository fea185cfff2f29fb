//! A worker: serves one model with one engine, pulling that model's tasks from the tasks
//! stream only while it has a free sequence slot.
//!
//! Supervised by the node supervisor; supervises nothing (its slots are tokio tasks it
//! owns). On start it loads the engine (mistral.rs by default) in the background, then
//! registers the model with the model managers (`…model.register`), makes sure the model's
//! durable consumer exists, and starts its fetcher: one loop that pulls as many tasks as
//! the worker has free sequence slots (`max_sequences`), in one pull request, and runs each
//! in its slot, so a busy worker never takes work another could do and an idle one costs
//! a few pull requests a second. It subscribes to `…task.*.cancel` to stop a running sequence, and publishes
//! each task's events on `…task.<id>.events`.
//!
//! If the engine fails to load, the worker reports `failed` in the heartbeat and serves
//! nothing; it does not crash-loop. When it stops (SIGTERM, node shutdown) it drains:
//! it takes no new task, lets running ones finish within `worker.drain_grace`, then hands
//! back (nak) what is left, so another worker takes it at once. A task redelivered after
//! a worker died continues from the text already streamed (the client library's `prefix_of` of the stored events).

mod ending;
mod fair;
mod fetch;
mod finish;
mod recent;
mod run;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{
    CancelTask, EngineKind, ModelRecord, ModelState, RegisterModel, Reply, RunningTask, TaskId, WorkerInfo,
    WorkerState as Lifecycle,
};
use bitinglip_config::ModelConfig;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    engine::Engine,
    ops::models::{folder_estimate, source_of},
    NodeContext,
};

/// The worker actor.
pub struct Worker;

/// Its arguments.
pub struct WorkerArgs {
    /// Shared node context.
    pub ctx: NodeContext,
    /// The model it serves.
    pub model: ModelConfig,
    /// Its id, unique in the cluster.
    pub worker_id: String,
    /// Placed by the cluster (false: pinned by `worker.models`).
    pub placed: bool,
}

/// A task running in one of the slots.
pub(crate) struct Running {
    /// Whose task it is: only a cancel on that owner's subject stops it.
    pub(crate) owner: Option<String>,
    pub(crate) cancel: CancellationToken,
    pub(crate) attempt: u32,
    pub(crate) ack_subject: String,
    /// When a client's cancel reached this worker.
    pub(crate) cancelled_at: Option<Instant>,
}

/// What the fetcher and the running tasks share.
pub(crate) struct WorkerShared {
    pub(crate) ctx: NodeContext,
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) worker_id: String,
    /// Running tasks, by task id.
    pub(crate) running: Mutex<HashMap<TaskId, Running>>,
    /// Cancels of tasks not running here when they arrived, for a minute: a task claimed
    /// just after its cancel went by is stopped at once.
    pub(crate) recent_cancels: Mutex<HashMap<(Option<String>, TaskId), Instant>>,
    /// Fires when the worker starts draining: slots take no new task.
    pub(crate) stop_fetching: CancellationToken,
    /// Fires when the drain grace is over: running tasks stop and are handed back.
    pub(crate) hand_back: CancellationToken,
    pub(crate) in_flight: AtomicU32,
    /// The fair share between the tenants of its model's queue, as this worker dispatches.
    pub(crate) share: fair::Share,
    /// Its generations' times to first token lately, for the heartbeat.
    pub(crate) first_tokens: Mutex<recent::Recent>,
    info: Mutex<WorkerInfo>,
}

fn mark_used(info: &mut WorkerInfo) {
    info.last_used_ms = bitinglip_nats::now_ms();
}

impl WorkerShared {
    /// Counts a generation's look in the prefix cache (`cached` prompt tokens found), for
    /// the heartbeat.
    pub(crate) fn count_prefix_lookup(&self, cached: u32) {
        if let Ok(mut info) = self.info.lock() {
            let used = &mut info.prefix_cache;
            used.lookups += 1;
            used.hits += u64::from(cached > 0);
            used.cached_tokens += u64::from(cached);
        }
    }

    /// Refreshes this worker's row (slots in use, running tasks) for the heartbeat.
    pub(crate) fn publish_info(&self) {
        let running: Vec<RunningTask> = self
            .running
            .lock()
            .map(|r| {
                r.iter()
                    .map(|(id, t)| RunningTask {
                        task_id: id.clone(),
                        attempt: t.attempt,
                        ack_subject: t.ack_subject.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut info) = self.info.lock() {
            info.in_flight = self.in_flight.load(Ordering::Relaxed);
            info.running = running;
            info.served = self.share.served();
            info.first_token_p95_ms = self.first_tokens.lock().ok().and_then(|mut r| r.p95(Instant::now()));
            mark_used(&mut info);
            self.ctx.set_worker(info.clone());
        }
    }
}

/// Its state.
pub struct WorkerState {
    ctx: NodeContext,
    worker_id: String,
    model: ModelConfig,
    placed: bool,
    /// The engine failed to load.
    load_failed: bool,
    shared: Option<Arc<WorkerShared>>,
    /// The fetcher (with the tasks it runs).
    tasks: Vec<JoinHandle<()>>,
    /// The cancel listener.
    listener: Option<JoinHandle<()>>,
    /// Registering the model with a model manager.
    registration: Option<JoinHandle<()>>,
    loader: Option<JoinHandle<()>>,
}

/// Messages to a worker.
pub enum WorkerMsg {
    /// The engine is loaded.
    Loaded(Arc<dyn Engine>),
    /// The engine could not be loaded.
    LoadFailed(String),
    /// A task loop ended unexpectedly; fail so the supervisor restarts us.
    LoopEnded(&'static str),
}

fn info(worker_id: &str, model: &ModelConfig, placed: bool, engine: EngineKind, state: Lifecycle) -> WorkerInfo {
    WorkerInfo {
        last_used_ms: bitinglip_nats::now_ms(),
        placed,
        worker_id: worker_id.to_string(),
        model: model.served_name(),
        engine,
        max_sequences: model.max_sequences,
        in_flight: 0,
        state,
        running: Vec::new(),
        gpus: model.gpus.clone(),
        prefix_cache: Default::default(),
        takes_pinned: true,
        served: Vec::new(),
        first_token_p95_ms: None,
    }
}

#[ractor::async_trait]
impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let WorkerArgs { ctx, model, worker_id, placed } = args;
        ctx.set_worker(info(&worker_id, &model, placed, model.engine, Lifecycle::Loading));
        let worker_cfg = ctx.config.worker.clone();
        let mut load_cfg = model.clone();
        let pull_ctx = ctx.clone();
        let loader = tokio::spawn(async move {
            // A hub model is pulled into the hub cache first (progress, resume,
            // verification), then loaded from its snapshot folder.
            if load_cfg.engine == EngineKind::Mistralrs && !load_cfg.is_local() {
                match crate::ops::pull::pull(&pull_ctx, &load_cfg.source, &load_cfg.revision).await {
                    Ok(pulled) => {
                        load_cfg.name.get_or_insert_with(|| load_cfg.source.clone());
                        load_cfg.source = pulled.dir.display().to_string();
                    }
                    Err(err) => {
                        let _ = myself.cast(WorkerMsg::LoadFailed(err.to_string()));
                        return;
                    }
                }
            }
            tracing::info!(model = %load_cfg.source, engine = %load_cfg.engine, "loading model");
            let served = load_cfg.name.clone().unwrap_or_else(|| load_cfg.served_name());
            let lease = pull_ctx.store.hold_model_status(&served, ModelState::Loading).await;
            let loaded = crate::engine::load(&load_cfg, &worker_cfg).await.map_err(|e| e.to_string());
            drop(lease);
            let (state, reason) = match &loaded {
                Ok(_) => (ModelState::Loaded, None),
                Err(err) => (ModelState::Failed, Some(err.clone())),
            };
            if let Err(err) = pull_ctx.store.model_status().set(&served, state, reason).await {
                tracing::warn!(model = %served, cause = %err, "model status not written");
            }
            let _ = match loaded {
                Ok(engine) => myself.cast(WorkerMsg::Loaded(engine)),
                Err(err) => myself.cast(WorkerMsg::LoadFailed(err)),
            };
        });
        Ok(WorkerState {
            ctx,
            worker_id,
            model,
            placed,
            load_failed: false,
            shared: None,
            tasks: Vec::new(),
            listener: None,
            registration: None,
            loader: Some(loader),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Loaded(engine) => {
                state.loader = None;
                let served = state.model.served_name();
                tracing::info!(model = %served, worker = %state.worker_id, context = ?engine.context_length(), "model loaded");
                let shared = Arc::new(WorkerShared {
                    ctx: state.ctx.clone(),
                    engine: engine.clone(),
                    worker_id: state.worker_id.clone(),
                    running: Mutex::new(HashMap::new()),
                    recent_cancels: Mutex::new(HashMap::new()),
                    stop_fetching: CancellationToken::new(),
                    hand_back: CancellationToken::new(),
                    in_flight: AtomicU32::new(0),
                    share: fair::Share::default(),
                    first_tokens: Mutex::new(recent::Recent::default()),
                    info: Mutex::new(info(
                        &state.worker_id,
                        &state.model,
                        state.placed,
                        engine.kind(),
                        Lifecycle::Ready,
                    )),
                });
                let consumers = queue_consumers(&state.ctx, &served, &state.worker_id).await?;
                state.listener = Some(spawn_cancel_listener(shared.clone(), myself.clone()).await?);
                let (fetch_shared, slots, me) = (shared.clone(), state.model.max_sequences, myself.clone());
                let served_by = served.clone();
                state.tasks.push(tokio::spawn(async move {
                    fetch::fetch_loop(fetch_shared.clone(), consumers, slots, served_by).await;
                    if !fetch_shared.stop_fetching.is_cancelled() {
                        let _ = me.cast(WorkerMsg::LoopEnded("fetch"));
                    }
                }));
                // Registered, then ready: the heartbeat tells task managers this model has a
                // worker. Registration waits for a model manager without holding the actor.
                let (reg_ctx, reg_model, reg_id, reg_shared, me) =
                    (state.ctx.clone(), state.model.clone(), state.worker_id.clone(), shared.clone(), myself.clone());
                let context_length = engine.context_length();
                state.registration = Some(tokio::spawn(async move {
                    match register_model(&reg_ctx, &reg_model, &reg_id, context_length).await {
                        Ok(()) => reg_shared.publish_info(),
                        Err(err) => {
                            tracing::error!(cause = %err, "model registration refused");
                            let _ = me.cast(WorkerMsg::LoopEnded("registration"));
                        }
                    }
                }));
                state.shared = Some(shared);
            }
            WorkerMsg::LoadFailed(err) => {
                state.loader = None;
                state.load_failed = true;
                tracing::error!(model = %state.model.source, cause = %err, "model failed to load; this worker serves nothing");
                state.ctx.set_worker(info(
                    &state.worker_id,
                    &state.model,
                    state.placed,
                    state.model.engine,
                    Lifecycle::Failed,
                ));
            }
            WorkerMsg::LoopEnded(which) => return Err(format!("worker {which} loop ended").into()),
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<WorkerMsg>, state: &mut WorkerState) -> Result<(), ActorProcessingErr> {
        if let Some(loader) = state.loader.take() {
            loader.abort();
        }
        if let Some(registration) = state.registration.take() {
            registration.abort();
        }
        if let Some(shared) = state.shared.take() {
            // Drain: slots take nothing new; running tasks get the grace period to finish,
            // then are stopped and handed back (nak) so another worker takes them at once.
            shared.stop_fetching.cancel();
            // No longer `ready`: task managers stop counting on this worker at once (a
            // request for the model now starts a load elsewhere rather than waiting here).
            if let Ok(mut info) = shared.info.lock() {
                info.state = Lifecycle::Draining;
            }
            shared.publish_info();
            let grace = state.ctx.config.worker.drain_grace;
            let in_flight = shared.in_flight.load(Ordering::Relaxed);
            if in_flight > 0 {
                tracing::info!(in_flight, grace = ?grace, "draining");
            }
            let mut tasks = futures::future::join_all(std::mem::take(&mut state.tasks));
            if tokio::time::timeout(grace, &mut tasks).await.is_err() {
                tracing::info!("drain grace over; handing back running tasks");
                shared.hand_back.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(10), tasks).await;
            }
        }
        state.tasks.iter().for_each(JoinHandle::abort);
        if let Some(listener) = state.listener.take() {
            listener.abort();
        }
        state.ctx.remove_worker(&state.worker_id);
        // A failed load stays recorded (with its reason): the leader places the replica on
        // another node rather than here again.
        let served = state.model.served_name();
        // Another worker of this node serving the model (a replica on another GPU) keeps
        // the node's status of it.
        let others = state.ctx.workers.read().is_ok_and(|w| w.values().any(|w| w.model == served));
        if !state.load_failed && !others {
            let _ = tokio::time::timeout(Duration::from_secs(2), state.ctx.store.model_status().clear(&served)).await;
        }
        Ok(())
    }
}

/// `model`'s queue consumers and this worker's pinned one, as a task manager made them:
/// bound when they are there with the filters of now, else asked for (`…task.consumers`)
/// and bound again, patiently while no task manager answers (a worker may not create or
/// change a consumer).
async fn queue_consumers(
    ctx: &NodeContext,
    model: &str,
    worker_id: &str,
) -> Result<bitinglip_nats::store::queue::Consumers, ActorProcessingErr> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut delay = Duration::from_millis(100);
    let ensure =
        bitinglip_bus_schema::EnsureConsumers { model: model.to_string(), worker_id: Some(worker_id.to_string()) };
    loop {
        let problem = match ctx.store.queue().bind(model, Some(worker_id)).await {
            Ok(Some(consumers)) => {
                // Asked once anyway, in the background: a task manager makes again any lane
                // of the model that lost its consumer while its tasks waited.
                let (ctx, req) = (ctx.clone(), ensure.clone());
                tokio::spawn(async move {
                    if let Err(err) = ctx.bus.call(&req).await {
                        tracing::debug!(cause = %err.message, "lanes not checked; the next worker's start checks them");
                    }
                });
                return Ok(consumers);
            }
            Ok(None) => match ctx.bus.call(&ensure).await {
                Ok(()) => continue,
                Err(err) => format!("{}: {}", err.kind, err.message),
            },
            Err(err) => err.to_string(),
        };
        if Instant::now() + delay > deadline {
            return Err(format!("the queue consumers of {model} could not be had: {problem}").into());
        }
        tracing::warn!(model, cause = %problem, "queue consumers not there yet; asking again");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Announces the served model to the model managers, retrying until one answers.
async fn register_model(
    ctx: &NodeContext,
    model: &ModelConfig,
    worker_id: &str,
    context_length: Option<u32>,
) -> Result<(), ActorProcessingErr> {
    // A local folder's shape (a hub model's comes with its pull).
    let (shape, estimated_memory) = if model.is_local() {
        let dir = std::path::PathBuf::from(&model.source);
        tokio::task::spawn_blocking(move || folder_estimate(&dir)).await.unwrap_or((None, None))
    } else {
        (None, None)
    };
    let req = RegisterModel {
        model: ModelRecord {
            id: model.served_name(),
            source: source_of(model),
            context_length,
            revision_sha: None,
            // A local folder's files (a hub model's come with its pull).
            files: if model.is_local() {
                crate::ops::models::folder_files(std::path::Path::new(&model.source))
            } else {
                Vec::new()
            },
            estimated_memory,
            engine: model.engine,
            shape,
            created_ms: 0,
            updated_ms: 0,
        },
        worker: worker_id.to_string(),
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match ctx.bus.ask(&req, None, Some(Duration::from_secs(5))).await.map(Reply::into_answer) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => return Err(format!("model registration refused: {err}").into()),
            Err(err) => {
                tracing::warn!(cause = %err, "model registration not answered yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Listens for cancels of any task and fires the token of the ones running here.
async fn spawn_cancel_listener(
    shared: Arc<WorkerShared>,
    me: ActorRef<WorkerMsg>,
) -> Result<JoinHandle<()>, ActorProcessingErr> {
    let mut sub = shared.ctx.bus.subscribe(shared.ctx.bus.subjects().all_task_cancels()).await?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let cancel = match shared.ctx.bus.decode::<CancelTask>(&msg) {
                Ok(c) => c.envelope.body,
                Err(err) => {
                    tracing::warn!(subject = %msg.subject, cause = %err, "undecodable cancel dropped");
                    continue;
                }
            };
            // The subject names who asks (each NATS user may publish only its own owner's
            // cancels): another owner's task is not stopped.
            let Some(owner) = shared.ctx.bus.subjects().owner_of_task_subject(&msg.subject) else { continue };
            let token = shared.running.lock().ok().and_then(|mut r| {
                r.get_mut(&cancel.task_id).filter(|t| t.owner == owner).map(|t| {
                    t.cancelled_at.get_or_insert_with(Instant::now);
                    t.cancel.clone()
                })
            });
            if let Some(token) = token {
                tracing::info!(task.id = %cancel.task_id, reason = %cancel.reason, "cancelling");
                token.cancel();
            } else if let Ok(mut recent) = shared.recent_cancels.lock() {
                recent.retain(|_, at| at.elapsed() < Duration::from_secs(60));
                recent.insert((owner, cancel.task_id), Instant::now());
            }
        }
        if !shared.stop_fetching.is_cancelled() {
            let _ = me.cast(WorkerMsg::LoopEnded("cancel listener"));
        }
    }))
}
