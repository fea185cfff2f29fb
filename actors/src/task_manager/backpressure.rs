//! Refusals at the speed of a cache: a full queue refuses new tasks at once (429 with
//! `Retry-After` at the gateway) and never drops accepted ones. The count per model and
//! class is this task manager's (a reading of the queue's consumer, refreshed at most every
//! 250 ms, plus what it queued since); bytes are enforced by the tasks stream itself
//! (discard-new; the storage layer maps a refusal to `overloaded`); age is checked against
//! the oldest task waiting in the model's queue, read at most every 250 ms. A model found
//! unknown is refused from memory for 250 ms.
//!
//! All of it is the task manager's [`Admission`], made when it starts and dropped with it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{ErrorKind, Priority, WireError};

use crate::{timed::Remembered, NodeContext};

/// How long an age reading is reused, so a flood does not cost a read per task.
const AGE_CACHE: Duration = Duration::from_millis(250);

/// How long a model found unknown is refused from memory: a flood naming a model nobody
/// registered costs the registry reads once per this, not once per request.
const UNKNOWN_FRESH: Duration = Duration::from_millis(250);

/// How long a queue's depth, read from its consumer, is reused: a flood costs one read
/// per queue per this, not one per task.
const DEPTH_FRESH: Duration = Duration::from_millis(250);

/// How old a reading of a queue that looks full may be before a refusal reads it again.
const FULL_RECHECK: Duration = Duration::from_millis(50);

/// A model's queue of one class.
type Queue = (String, Priority);

/// A queue's depth as last read, plus the places this task manager reserved since.
struct Depth {
    read_at: Instant,
    tasks: u64,
}

/// What this task manager knows of its queues, to admit or refuse a task without a round
/// trip: the queues' depths and ages as last read, and the models found unknown.
pub(super) struct Admission {
    ages: Remembered<Queue, u64>,
    unknown: Remembered<String, WireError>,
    depths: Mutex<HashMap<Queue, Depth>>,
    /// One read of a stale depth at a time per queue: the others use the reading it brings.
    refreshing: Mutex<HashMap<Queue, Arc<tokio::sync::Mutex<()>>>>,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            ages: Remembered::new(AGE_CACHE),
            unknown: Remembered::new(UNKNOWN_FRESH),
            depths: Mutex::default(),
            refreshing: Mutex::default(),
        }
    }
}

impl Admission {
    /// Refuses the task when the oldest task waiting in the model's queue is over the limit.
    pub(super) async fn check_age(&self, ctx: &NodeContext, model: &str, priority: Priority) -> Result<(), WireError> {
        let limit = ctx.config.task_manager.queue_max_age;
        if limit.is_zero() {
            return Ok(());
        }
        let queue = (model.to_string(), priority);
        let age_ms = match self.ages.get(&queue) {
            Some(age) => age,
            None => {
                let age = ctx.store.queue().oldest_age_ms(model, priority).await;
                self.ages.remember(queue, age);
                age
            }
        };
        if age_ms > limit.as_millis() as u64 {
            return Err(WireError::new(
                ErrorKind::Overloaded,
                format!("the oldest queued task of `{model}` waited {age_ms} ms (limit {limit:?}); retry later"),
            ));
        }
        Ok(())
    }

    /// The refusal of `model` as unknown, when one was decided within [`UNKNOWN_FRESH`].
    pub(super) fn still_unknown(&self, model: &str) -> Option<WireError> {
        self.unknown.get(&model.to_string())
    }

    /// Remembers `err` when it says `model` is unknown.
    pub(super) fn remember_unknown(&self, model: &str, err: &WireError) {
        if err.kind == ErrorKind::UnknownModel {
            self.unknown.remember(model.to_string(), err.clone());
        }
    }

    /// Reserves a place for one task in `model`'s queue of `priority`, or refuses it when
    /// the queue holds `task_manager.queue_max_tasks` tasks (waiting or running). The
    /// depth is this task manager's reading of the queue's consumer, at most
    /// [`DEPTH_FRESH`] old, plus the tasks it queued since: no JetStream call per task, so
    /// a flood is refused at the speed of a lock. Several task managers each count their
    /// own tasks between readings, so together they may admit a few more than the limit
    /// for that long.
    pub(super) async fn reserve(
        self: &Arc<Self>,
        ctx: &NodeContext,
        model: &str,
        priority: Priority,
    ) -> Result<Place, WireError> {
        let limit = ctx.config.task_manager.queue_max_tasks.max(1) as u64;
        let queue = (model.to_string(), priority);
        // A reading counts the tasks this task manager queued since as still there, though
        // some may have finished: a queue that looks full is read again (at most every
        // FULL_RECHECK) before a task is refused.
        let mut fresh_for = DEPTH_FRESH;
        loop {
            self.refresh(ctx, &queue, fresh_for).await?;
            let mut depths =
                self.depths.lock().map_err(|_| WireError::new(ErrorKind::Internal, "queue depths unreadable"))?;
            let depth = depths.entry(queue.clone()).or_insert(Depth { read_at: Instant::now(), tasks: 0 });
            if admit(depth.tasks, limit) {
                depth.tasks += 1;
                return Ok(Place { queue: Some(queue), admission: self.clone() });
            }
            if fresh_for == FULL_RECHECK {
                return Err(WireError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "the {} queue of `{model}` is full ({} tasks waiting or running, task_manager.queue_max_tasks {limit}); retry later",
                        priority.as_str(),
                        depth.tasks
                    ),
                ));
            }
            fresh_for = FULL_RECHECK;
        }
    }

    fn refreshing(&self, queue: &Queue) -> Arc<tokio::sync::Mutex<()>> {
        self.refreshing.lock().map(|mut l| l.entry(queue.clone()).or_default().clone()).unwrap_or_default()
    }

    fn fresh(&self, queue: &Queue, fresh_for: Duration) -> bool {
        self.depths.lock().ok().is_some_and(|d| d.get(queue).is_some_and(|d| d.read_at.elapsed() < fresh_for))
    }

    /// Reads `queue`'s depth again when the last reading is older than `fresh_for` (one
    /// reader at a time; the others use what it read).
    async fn refresh(&self, ctx: &NodeContext, queue: &Queue, fresh_for: Duration) -> Result<(), WireError> {
        if self.fresh(queue, fresh_for) {
            return Ok(());
        }
        let one = self.refreshing(queue);
        let _one = one.lock().await;
        if !self.fresh(queue, fresh_for) {
            // A store that cannot answer (an election, a restart) leaves the last count in
            // place for another period rather than making every submit wait its turn to
            // fail: the publish that follows meets the same outage, and the gateway asks
            // again.
            let read = ctx.store.queue().depth(&queue.0, queue.1).await;
            if let Ok(mut depths) = self.depths.lock() {
                let last = depths.get(queue).map_or(0, |d| d.tasks);
                if let Err(err) = &read {
                    tracing::warn!(model = %queue.0, cause = %err, "queue depth not read; counting on");
                }
                depths.insert(queue.clone(), Depth { read_at: Instant::now(), tasks: read.unwrap_or(last) });
            }
        }
        Ok(())
    }
}

/// A place reserved in a model's queue for a task about to be published; given back when
/// dropped without [`Place::keep`] (the task was not queued after all).
pub(super) struct Place {
    queue: Option<Queue>,
    admission: Arc<Admission>,
}

impl Place {
    /// The task is in the queue: the place stays taken until the next reading.
    pub(super) fn keep(mut self) {
        self.queue = None;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let (Some(queue), Ok(mut depths)) = (self.queue.take(), self.admission.depths.lock()) {
            if let Some(d) = depths.get_mut(&queue) {
                d.tasks = d.tasks.saturating_sub(1);
            }
        }
    }
}

/// Decides a place in a queue (pure): refused at `limit` tasks, waiting and running
/// together.
fn admit(tasks: u64, limit: u64) -> bool {
    tasks < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_admits_up_to_its_limit() {
        assert!(admit(0, 1));
        assert!(admit(7, 8));
        assert!(!admit(8, 8));
        assert!(!admit(9, 8));
    }
}
