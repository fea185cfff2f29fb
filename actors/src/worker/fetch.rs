//! The worker's fetcher: it reserves the worker's free sequence slots and pulls as many
//! tasks as it reserved, in one pull request, running each in a slot of its own. A busy
//! worker never holds work another could do (it asks only for what it can start now); an
//! idle one has one pull in flight for all its slots, a few requests a second whatever
//! their number; under load each slot that frees starts a pull of its own at once, so
//! pulls overlap as they did with a loop per slot.
//!
//! Each model has two durable consumers, one per priority class. Free slots take
//! interactive tasks first; after four interactive tasks in a row batch is looked at first
//! once, so batch is never starved. When both are empty a pull waits on the interactive
//! queue (woken at once by a new task) and looks at batch again every second.

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use bitinglip_bus_schema::Priority;
use bitinglip_nats::store::queue::{Consumers, Pull};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};

use super::{run::run_task, WorkerShared};

/// How long an idle pull waits for an interactive task before it looks at the batch queue
/// again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Interactive tasks taken in a row before the batch queue is looked at first, once.
const INTERACTIVE_STREAK: u32 = 4;

/// Pulls and runs tasks in `slots` slots until the worker stops fetching, then waits for
/// the running ones to end.
pub(super) async fn fetch_loop(shared: Arc<WorkerShared>, consumers: Consumers, slots: u32) {
    let free = Arc::new(Semaphore::new(slots.max(1) as usize));
    let streak = Arc::new(AtomicU32::new(0));
    let mut pulls = JoinSet::new();
    while !shared.stop_fetching.is_cancelled() {
        while pulls.try_join_next().is_some() {}
        // A free slot first: a full worker asks for nothing. Then every other free one,
        // for the same pull.
        let slot = tokio::select! {
            _ = shared.stop_fetching.cancelled() => break,
            slot = free.clone().acquire_owned() => slot,
        };
        let Ok(mut reserved) = slot else { break };
        while let Ok(more) = free.clone().try_acquire_owned() {
            reserved.merge(more);
        }
        let pull = Pulling { shared: shared.clone(), consumers: consumers.clone(), streak: streak.clone() };
        pulls.spawn(async move {
            let stop = pull.shared.stop_fetching.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                () = pull.fill(reserved) => {}
            }
        });
    }
    // Draining: no pull goes on; what runs finishes (or is handed back when the grace
    // runs out), each run holding its slot until it ends.
    pulls.abort_all();
    while pulls.join_next().await.is_some() {}
    let _ = free.acquire_many(slots.max(1)).await;
}

/// One pull, for the slots it reserved.
struct Pulling {
    shared: Arc<WorkerShared>,
    consumers: Consumers,
    /// Interactive tasks taken in a row, across the worker's pulls.
    streak: Arc<AtomicU32>,
}

impl Pulling {
    /// Takes tasks for the `reserved` slots: waiting ones of the first class, then of the
    /// other, else waits a while for an interactive one. Slots left unused free again.
    async fn fill(self, mut reserved: OwnedSemaphorePermit) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_fill(&mut reserved).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(cause = %err, "fetch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_fill(&self, reserved: &mut OwnedSemaphorePermit) -> Result<(), bitinglip_nats::StoreError> {
        let order = if self.streak.load(Ordering::Relaxed) >= INTERACTIVE_STREAK {
            [Priority::Batch, Priority::Interactive]
        } else {
            [Priority::Interactive, Priority::Batch]
        };
        let mut started = 0;
        for priority in order {
            if reserved.num_permits() == 0 {
                return Ok(());
            }
            let pull = self.consumers.pull(priority, reserved.num_permits(), None).await?;
            started += self.start_all(pull, priority, reserved).await?;
        }
        if started == 0 {
            // Nothing waiting: a worker that found batch empty resets its streak.
            self.streak.store(0, Ordering::Relaxed);
            let pull = self.consumers.pull(Priority::Interactive, reserved.num_permits(), Some(IDLE_WAIT)).await?;
            self.start_all(pull, Priority::Interactive, reserved).await?;
        }
        Ok(())
    }

    /// Starts every task `pull` brings, each in one of the `reserved` slots. The number
    /// started.
    async fn start_all(
        &self,
        mut pull: Pull,
        priority: Priority,
        reserved: &mut OwnedSemaphorePermit,
    ) -> Result<usize, bitinglip_nats::StoreError> {
        let mut started = 0;
        while let Some(msg) = pull.next().await? {
            let Some(slot) = reserved.split(1) else {
                // Never asked for: back to the queue at once, for whoever is free.
                msg.nak(None).await;
                continue;
            };
            match priority {
                Priority::Interactive => self.streak.fetch_add(1, Ordering::Relaxed),
                Priority::Batch => self.streak.swap(0, Ordering::Relaxed),
            };
            let shared = self.shared.clone();
            tokio::spawn(async move {
                run_task(&shared, msg).await;
                drop(slot);
            });
            started += 1;
        }
        Ok(started)
    }
}
