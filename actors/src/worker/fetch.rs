//! The worker's fetcher: one loop per worker that pulls as many tasks as the worker has
//! free sequence slots, in one pull request, and runs each in a slot of its own. A busy
//! worker never holds work another could do (it asks only for what it can start now),
//! and an idle one costs a few pull requests a second whatever its slot count.
//!
//! Each model has two durable consumers, one per priority class. Free slots take
//! interactive tasks first; after four interactive tasks in a row batch is looked at first
//! once, so batch is never starved. When both are empty the fetcher waits on the
//! interactive queue (woken at once by a new task) and looks at batch again every second.

use std::{sync::Arc, time::Duration};

use bitinglip_bus_schema::Priority;
use bitinglip_nats::store::queue::{Consumers, Pull};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};

use super::{run::run_task, WorkerShared};

/// How long an idle fetcher's pull waits for an interactive task before it looks at the
/// batch queue again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Interactive tasks taken in a row before the batch queue is looked at first, once.
const INTERACTIVE_STREAK: u32 = 4;

/// Pulls and runs tasks in `slots` slots until the worker stops fetching, then waits for
/// the running ones to end.
pub(super) async fn fetch_loop(shared: Arc<WorkerShared>, consumers: Consumers, slots: u32) {
    let free = Arc::new(Semaphore::new(slots.max(1) as usize));
    let mut running = JoinSet::new();
    let mut fetcher = Fetcher { shared: &shared, free: &free, running: &mut running, interactive_streak: 0 };
    let mut backoff = Duration::from_millis(100);
    while !shared.stop_fetching.is_cancelled() {
        while fetcher.running.try_join_next().is_some() {}
        // A free slot first: a full worker asks for nothing.
        let slot = tokio::select! {
            _ = shared.stop_fetching.cancelled() => break,
            slot = free.clone().acquire_owned() => slot,
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
    // Draining: what runs finishes (or is handed back when the grace runs out).
    while running.join_next().await.is_some() {}
}

/// The fetcher's state between pulls.
struct Fetcher<'a> {
    shared: &'a Arc<WorkerShared>,
    free: &'a Arc<Semaphore>,
    running: &'a mut JoinSet<()>,
    interactive_streak: u32,
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
        let order = if self.interactive_streak >= INTERACTIVE_STREAK {
            [Priority::Batch, Priority::Interactive]
        } else {
            [Priority::Interactive, Priority::Batch]
        };
        let mut started = 0;
        for priority in order {
            let wanted = self.free_slots(&slot);
            if wanted == 0 {
                return Ok(started);
            }
            let pull = consumers.pull(priority, wanted, None).await?;
            started += self.start_all(pull, priority, &mut slot).await?;
        }
        if started == 0 {
            // Nothing waiting: a fetcher that found batch empty resets its streak.
            self.interactive_streak = 0;
            let wanted = self.free_slots(&slot);
            let pull = consumers.pull(Priority::Interactive, wanted, Some(IDLE_WAIT)).await?;
            started += self.start_all(pull, Priority::Interactive, &mut slot).await?;
        }
        Ok(started)
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
            let Some(permit) = held.take().or_else(|| self.free.clone().try_acquire_owned().ok()) else {
                // Never asked for: back to the queue at once, for whoever is free.
                msg.nak(None).await;
                continue;
            };
            self.interactive_streak = match priority {
                Priority::Interactive => self.interactive_streak + 1,
                Priority::Batch => 0,
            };
            let shared = self.shared.clone();
            self.running.spawn(async move {
                run_task(&shared, msg).await;
                drop(permit);
            });
            started += 1;
        }
        Ok(started)
    }
}
