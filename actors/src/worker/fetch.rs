//! The worker's fetcher: one loop per worker that pulls as many tasks as the worker has
//! free sequence slots, in one pull request, and runs each in a slot of its own. A busy
//! worker never holds work another could do (it asks only for what it can start now),
//! and an idle one costs a few pull requests a second whatever its slot count.
//!
//! Each model has two durable consumers, one per priority class, and each worker one of
//! its own for the interactive tasks cache-affinity routing pinned to it. Free slots take
//! the pinned tasks first, then those of workers gone (taken over, see [`Orphans`]), then
//! interactive tasks; after four interactive tasks in a row batch is looked at first once,
//! so batch is never starved. When all are empty the fetcher waits on the interactive
//! queue (woken at once by a new task, or by a task pinned here: the fetcher listens on
//! its pinned subject) and looks at the others again every second.
//!
//! Sticky until saturated: a task pinned here while every slot is busy is released to the
//! shared queue at once (the pinned subject wakes the full fetcher too), so it waits for
//! whichever worker frees a slot first instead of for this one.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use bitinglip_bus_schema::{Priority, WorkerState};
use bitinglip_nats::store::queue::{Consumers, Delivery, Lane, Orphan, Pull};
use futures::StreamExt;
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};

use super::{fair, run::run_task, WorkerShared};

/// How long an idle fetcher's pull waits for an interactive task before it looks at the
/// batch queue again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Interactive tasks taken in a row before the batch queue is looked at first, once.
const INTERACTIVE_STREAK: u32 = 4;

/// How often a worker looks for pinned consumers of workers gone, besides whenever a
/// worker of its model leaves or starts draining.
const ORPHAN_SCAN: Duration = Duration::from_secs(30);

/// How long after a worker of the model leaves its pinned consumers are looked for every
/// second (longer than a consumer must live before it counts as an orphan).
const ORPHAN_WATCH: Duration = Duration::from_secs(15);

/// How often the model's workers are read from the heartbeats, to notice one leaving.
const MEMBERSHIP_CHECK: Duration = Duration::from_millis(250);

/// How long a pull made on a wake-up waits for the pinned task: the core message that
/// wakes the fetcher can arrive before the stream has the task ready for the consumer, and
/// a pull that did not wait would then find nothing. The task starts as soon as it comes.
const PINNED_ARRIVAL: Duration = Duration::from_millis(50);

/// Most pinned tasks released in one go by a full worker.
const RELEASE_BATCH: usize = 16;

/// Pulls and runs tasks in `slots` slots until the worker stops fetching, then waits for
/// the running ones to end.
pub(super) async fn fetch_loop(shared: Arc<WorkerShared>, consumers: Consumers, slots: u32, model: String) {
    let free = Arc::new(Semaphore::new(slots.max(1) as usize));
    let mut running = JoinSet::new();
    let wake = Arc::new(Notify::new());
    let orphans = Orphans::default();
    let watchers = [
        tokio::spawn(listen_pinned(shared.clone(), model.clone(), wake.clone())),
        tokio::spawn(find_orphans(shared.clone(), model.clone(), orphans.clone())),
        tokio::spawn(fair::listen_wakes(shared.clone(), model.clone())),
        tokio::spawn(fair::scan_lanes(shared.clone(), model.clone())),
    ];
    let mut fetcher = Fetcher {
        shared: &shared,
        free: &free,
        running: &mut running,
        interactive_streak: 0,
        wake: &wake,
        orphans: &orphans,
        model: &model,
    };
    let mut backoff = Duration::from_millis(100);
    while !shared.stop_fetching.is_cancelled() {
        while fetcher.running.try_join_next().is_some() {}
        // A free slot first: a full worker asks for nothing, but hands on what is pinned
        // to it meanwhile.
        let slot = tokio::select! {
            _ = shared.stop_fetching.cancelled() => break,
            slot = free.clone().acquire_owned() => slot,
            _ = wake.notified() => {
                if let Err(err) = fetcher.release(&consumers).await {
                    tracing::warn!(cause = %err, "pinned tasks not released; they wait for a slot here");
                }
                continue;
            }
        };
        let Ok(slot) = slot else { break };
        let got = tokio::select! {
            _ = shared.stop_fetching.cancelled() => break,
            got = fetcher.fill(&consumers, slot) => got,
        };
        match got {
            Ok(_) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(cause = %err, "fetch failed; retrying");
                tokio::select! {
                    _ = shared.stop_fetching.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    watchers.iter().for_each(|w| w.abort());
    // Draining: what runs finishes (or is handed back when the grace runs out).
    while running.join_next().await.is_some() {}
}

/// Wakes the fetcher whenever a task is pinned to this worker: a core subscription on its
/// pinned subject (the stream's publish reaches it too). Resubscribes if it ends.
async fn listen_pinned(shared: Arc<WorkerShared>, model: String, wake: Arc<Notify>) {
    let subject = shared.ctx.bus.subjects().pinned_queue(&model, &shared.worker_id);
    loop {
        match shared.ctx.bus.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                while sub.next().await.is_some() {
                    wake.notify_one();
                }
            }
            Err(err) => tracing::warn!(cause = %err, "cannot listen for pinned tasks; pulls still find them"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The pinned consumers of this model's workers that are gone (or draining), whose
/// waiting tasks this worker takes over.
#[derive(Clone, Default)]
struct Orphans {
    list: Arc<Mutex<Vec<Orphan>>>,
    /// Fires when a scan finds some: an idle fetcher takes their tasks at once.
    found: Arc<Notify>,
}

impl Orphans {
    fn all(&self) -> Vec<Orphan> {
        self.list.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn set(&self, consumers: Vec<Orphan>) {
        let any = !consumers.is_empty();
        if let Ok(mut o) = self.list.lock() {
            *o = consumers;
        }
        if any {
            self.found.notify_one();
        }
    }

    /// Forgets those whose worker takes tasks again (`taking`).
    fn keep_orphans(&self, subjects: &bitinglip_bus_schema::Subjects, model: &str, taking: &HashSet<String>) {
        if let Ok(mut o) = self.list.lock() {
            o.retain(|c| !taking.iter().any(|w| subjects.pinned_queue(model, w) == c.filter()));
        }
    }

    /// Forgets one found empty (scanned for again later).
    fn drop_empty(&self, name: &str) {
        if let Ok(mut o) = self.list.lock() {
            o.retain(|c| c.name() != name);
        }
    }
}

/// Keeps [`Orphans`] current: looks for pinned consumers of workers not taking tasks
/// (gone from the heartbeats, draining or failed) whenever such a worker of the model
/// leaves, and every [`ORPHAN_SCAN`] besides.
async fn find_orphans(shared: Arc<WorkerShared>, model: String, orphans: Orphans) {
    let mut taking: HashSet<String> = HashSet::new();
    let mut last_scan: Option<tokio::time::Instant> = None;
    let mut watch_until: Option<tokio::time::Instant> = None;
    // Workers of the model seen leaving (their consumers are orphans at once, however
    // young), until they take tasks again.
    let mut gone: HashSet<String> = HashSet::new();
    loop {
        let now: HashSet<String> = shared
            .ctx
            .nodes
            .workers_of(&model)
            .into_iter()
            .filter(|(w, _)| matches!(w.state, WorkerState::Ready | WorkerState::Loading))
            .map(|(w, _)| w.worker_id)
            .chain(std::iter::once(shared.worker_id.clone()))
            .collect();
        orphans.keep_orphans(shared.ctx.bus.subjects(), &model, &now);
        gone.retain(|w| !now.contains(w));
        let left: Vec<String> = taking.iter().filter(|w| !now.contains(*w)).cloned().collect();
        if !left.is_empty() {
            gone.extend(left);
            // Scanned now, then every second for a while.
            watch_until = Some(tokio::time::Instant::now() + ORPHAN_WATCH);
            last_scan = None;
        }
        let watching = watch_until.is_some_and(|t| tokio::time::Instant::now() < t);
        if !watching {
            gone.clear();
        }
        let due = last_scan.is_none_or(|t| t.elapsed() >= if watching { Duration::from_secs(1) } else { ORPHAN_SCAN });
        if due {
            match shared.ctx.store.queue().orphaned(&model, &now, &gone).await {
                Ok(found) => {
                    if !found.is_empty() {
                        tracing::info!(model, orphans = found.len(), "taking over the pinned tasks of workers gone");
                    }
                    orphans.set(found);
                    last_scan = Some(tokio::time::Instant::now());
                }
                Err(err) => tracing::debug!(cause = %err, "pinned consumers not listed; trying again"),
            }
        }
        taking = now;
        tokio::time::sleep(MEMBERSHIP_CHECK).await;
    }
}

/// The fetcher's state between pulls.
struct Fetcher<'a> {
    shared: &'a Arc<WorkerShared>,
    free: &'a Arc<Semaphore>,
    running: &'a mut JoinSet<()>,
    interactive_streak: u32,
    wake: &'a Notify,
    orphans: &'a Orphans,
    model: &'a str,
}

impl Fetcher<'_> {
    /// Takes tasks for the free slots (`slot` held, and the others free now): waiting
    /// ones of the first class, then of the other, else waits a while for an interactive
    /// one. The number of tasks started.
    async fn fill(
        &mut self,
        consumers: &Consumers,
        slot: OwnedSemaphorePermit,
    ) -> Result<usize, bitinglip_nats::StoreError> {
        let mut slot = Some(slot);
        let mut started = 0;
        // Pinned here first (their prompts are in this engine's cache), then those of
        // workers gone.
        if let Some(pull) = consumers.pull_pinned(self.free_slots(&slot), None).await? {
            started += self.start_all(pull, Priority::Interactive, &mut slot).await?;
        }
        started += self.take_over(&mut slot).await?;
        let order = if self.interactive_streak >= INTERACTIVE_STREAK {
            [Priority::Batch, Priority::Interactive]
        } else {
            [Priority::Interactive, Priority::Batch]
        };
        for priority in order {
            started += self.fill_fair(priority, &mut slot, None).await?;
        }
        if started == 0 {
            // Nothing waiting: a fetcher that found batch empty resets its streak, and
            // waits for a wake (a lane's, a pinned task's, workers gone) or a while; on the
            // lane it served last it keeps a pull waiting meanwhile, so a tenant's next task
            // comes at once, as it did before lanes.
            self.interactive_streak = 0;
            started += self.idle(consumers, &mut slot).await?;
        }
        Ok(started)
    }

    /// Waits, with every slot free, for a task: up to [`IDLE_WAIT`] on the lane served
    /// last (one pull for every free slot), taking meanwhile what the wakes bring (other
    /// lanes, tasks pinned here, workers gone). The number started.
    async fn idle(
        &mut self,
        consumers: &Consumers,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<usize, bitinglip_nats::StoreError> {
        let shared = self.shared.clone();
        let share = &shared.share;
        let hot = match share.last_served() {
            Some((priority, tenant)) => self.bound(priority, &tenant).await?.map(|lane| (priority, tenant, lane)),
            None => None,
        };
        let mut pull = match &hot {
            Some((_, _, lane)) => Some(lane.pull(self.free_slots(slot), Some(IDLE_WAIT)).await?),
            None => None,
        };
        let hot = hot.map(|(priority, tenant, _)| (priority, tenant));
        let idle = tokio::time::sleep(IDLE_WAIT);
        tokio::pin!(idle);
        let mut started = 0;
        loop {
            tokio::select! {
                next = next_of(&mut pull) => match next? {
                    Some(msg) => {
                        let priority = hot.as_ref().map_or(Priority::Interactive, |h| h.0);
                        started += self.start_one(msg, priority, slot).await;
                    }
                    None => break,
                },
                _ = &mut idle, if pull.is_none() => break,
                // A task in another lane: taken now (the pull covers the lane it waits on).
                _ = share.woken.notified() => {
                    if pull.is_none() {
                        break;
                    }
                    for priority in [Priority::Interactive, Priority::Batch] {
                        started += self.fill_fair(priority, slot, hot.as_ref()).await?;
                    }
                }
                // Workers gone, found while waiting: their tasks taken at once.
                _ = self.orphans.found.notified() => {
                    if self.free_slots(slot) > 0 {
                        started += self.take_over(slot).await?;
                    }
                }
                // A task pinned here while waiting: taken at once.
                _ = self.wake.notified() => match self.free_slots(slot) {
                    0 => self.release(consumers).await?,
                    wanted => {
                        if let Some(pinned) = consumers.pull_pinned(wanted, Some(PINNED_ARRIVAL)).await? {
                            started += self.start_all(pinned, Priority::Interactive, slot).await?;
                        }
                    }
                }
            }
        }
        Ok(started)
    }

    /// `tenant`'s lane of `priority`, bound (once) to pull; `None` when its consumer is not
    /// there.
    async fn bound(&self, priority: Priority, tenant: &str) -> Result<Option<Lane>, bitinglip_nats::StoreError> {
        let share = &self.shared.share;
        if let Some(lane) = share.lane(priority, tenant) {
            return Ok(Some(lane));
        }
        let lane = self.shared.ctx.store.queue().lane(self.model, priority, tenant).await?;
        share.bind(priority, tenant, lane.clone());
        Ok(lane)
    }

    /// Fills the free slots from the waiting lanes of `priority`, each slot from the lane
    /// the fair share picks (a lane alone takes them all in one pull). The number started.
    /// `skip`: a lane a pull already waits on, passed over.
    async fn fill_fair(
        &mut self,
        priority: Priority,
        slot: &mut Option<OwnedSemaphorePermit>,
        skip: Option<&(Priority, String)>,
    ) -> Result<usize, bitinglip_nats::StoreError> {
        let shared = self.shared.clone();
        let share = &shared.share;
        let skip = skip.filter(|(p, _)| *p == priority).map(|(_, t)| t.as_str());
        let mut started = 0;
        loop {
            let wanted = self.free_slots(slot);
            let Some(pick) = share.pick(priority, skip).filter(|_| wanted > 0) else { return Ok(started) };
            let Some(lane) = self.bound(priority, &pick.tenant).await? else {
                share.emptied(priority, &pick.tenant, pick.wakes);
                continue;
            };
            let n = if pick.contenders > 1 { 1 } else { wanted };
            // A wake can overtake its task on the way to the lane's consumer.
            let wait = pick.woken_lately.then_some(PINNED_ARRIVAL);
            let pull = match lane.pull(n, wait).await {
                Ok(pull) => pull,
                Err(err) => {
                    // Its consumer may be gone: bound again on the next wake or scan.
                    share.bind(priority, &pick.tenant, None);
                    share.emptied(priority, &pick.tenant, pick.wakes);
                    return Err(err);
                }
            };
            let got = self.start_all(pull, priority, slot).await?;
            started += got;
            if got < n {
                share.emptied(priority, &pick.tenant, pick.wakes);
            }
        }
    }

    /// Takes the waiting tasks of workers gone, as many as slots are free.
    async fn take_over(
        &mut self,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<usize, bitinglip_nats::StoreError> {
        let mut started = 0;
        for orphan in self.orphans.all() {
            let wanted = self.free_slots(slot);
            if wanted == 0 {
                break;
            }
            let took = self.start_all(orphan.pull(wanted).await?, Priority::Interactive, slot).await?;
            if took == 0 {
                self.orphans.drop_empty(orphan.name());
            }
            crate::metrics::metrics().taken_over.with_label_values(&[self.model]).inc_by(took as u64);
            started += took;
        }
        Ok(started)
    }

    /// Every slot busy and tasks pinned here: each is released to the shared queue (a
    /// first delivery only: a task an attempt already claimed waits for a slot here), or
    /// run when a slot freed meanwhile.
    async fn release(&mut self, consumers: &Consumers) -> Result<(), bitinglip_nats::StoreError> {
        let Some(mut pull) = consumers.pull_pinned(RELEASE_BATCH, Some(PINNED_ARRIVAL)).await? else { return Ok(()) };
        while let Some(msg) = pull.next().await? {
            if let Ok(permit) = self.free.clone().try_acquire_owned() {
                self.start_one(msg, Priority::Interactive, &mut Some(permit)).await;
            } else if msg.attempt() == 1 {
                self.shared.ctx.store.queue().release(&msg).await?;
                crate::metrics::metrics().released.with_label_values(&[self.model]).inc();
            } else {
                self.hold(msg);
            }
        }
        Ok(())
    }

    /// Keeps a delivery an earlier attempt claimed until a slot frees, renewing its lease
    /// meanwhile: handing it back would spend one of its deliveries each time.
    fn hold(&mut self, msg: Delivery) {
        let (shared, free) = (self.shared.clone(), self.free.clone());
        let renew = shared.ctx.config.jetstream.ack_wait / 3;
        self.running.spawn(async move {
            let permit = loop {
                tokio::select! {
                    permit = free.clone().acquire_owned() => break permit,
                    _ = tokio::time::sleep(renew) => {
                        if msg.progress().await.is_err() {
                            tracing::debug!("a held pinned task's lease was not renewed");
                        }
                    }
                }
            };
            let Ok(permit) = permit else { return };
            run_task(&shared, msg, None).await;
            drop(permit);
        });
    }

    /// Slots free now, counting the one held.
    fn free_slots(&self, held: &Option<OwnedSemaphorePermit>) -> usize {
        usize::from(held.is_some()) + self.free.available_permits()
    }

    /// Starts every task `pull` brings, each in a slot (the held one first).
    async fn start_all(
        &mut self,
        mut pull: Pull,
        priority: Priority,
        held: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<usize, bitinglip_nats::StoreError> {
        let mut started = 0;
        while let Some(msg) = pull.next().await? {
            started += self.start_one(msg, priority, held).await;
        }
        Ok(started)
    }

    /// Starts `msg` in a slot (the held one first); 1 when started, 0 when no slot was
    /// free (a pull outstanding while a pinned task took the slot): a first delivery goes
    /// back to the end of its queue for whoever is free, without spending a delivery; a
    /// later one waits here for a slot.
    async fn start_one(&mut self, msg: Delivery, priority: Priority, held: &mut Option<OwnedSemaphorePermit>) -> usize {
        let Some(permit) = held.take().or_else(|| self.free.clone().try_acquire_owned().ok()) else {
            if msg.attempt() > 1 {
                self.hold(msg);
            } else if let Err(err) = self.shared.ctx.store.queue().requeue(&msg).await {
                tracing::warn!(cause = %err, "a task with no slot here not requeued; handed back");
                msg.nak(None).await;
            }
            return 0;
        };
        self.interactive_streak = match priority {
            Priority::Interactive => self.interactive_streak + 1,
            Priority::Batch => 0,
        };
        let shared = self.shared.clone();
        let spec = dispatched(&shared, &msg, self.model);
        let task = spec.as_ref().map(|s| s.task_id.clone());
        self.running.spawn(async move {
            run_task(&shared, msg, spec).await;
            if let Some(task) = task {
                shared.share.forget(&task);
            }
            drop(permit);
        });
        1
    }
}

/// The next task of `pull`, or never when there is none.
async fn next_of(pull: &mut Option<Pull>) -> Result<Option<Delivery>, bitinglip_nats::StoreError> {
    match pull {
        Some(pull) => pull.next().await,
        None => std::future::pending().await,
    }
}

/// Charges a task about to run to its tenant's fair share, and counts its wait; the task,
/// decoded once for the run too (`None`: it does not decode, and the run terminates it).
fn dispatched(shared: &WorkerShared, msg: &Delivery, model: &str) -> Option<bitinglip_bus_schema::TaskSpec> {
    let spec = shared.ctx.bus.decode::<bitinglip_bus_schema::TaskSpec>(msg.message()).ok()?.envelope.body;
    shared.share.dispatched(&spec);
    if msg.attempt() == 1 {
        let waited = bitinglip_nats::now_ms().saturating_sub(spec.accepted_ms) as f64 / 1000.0;
        crate::metrics::metrics().tenant_wait(model, spec.tenant(), waited);
    }
    Some(spec)
}
