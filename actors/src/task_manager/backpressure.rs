//! Queue limits: a full queue refuses new tasks at once (429 with `Retry-After` at the
//! gateway) and never drops accepted ones. Count and bytes are enforced by the tasks
//! stream itself (discard-new per subject; the storage layer maps a refusal to
//! `overloaded`); age is checked here against the oldest task
//! waiting in the model's queue.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{ErrorKind, Priority, WireError};

use crate::NodeContext;

/// How long an age reading is reused, so a flood does not cost a read per task.
const AGE_CACHE: Duration = Duration::from_millis(250);

type AgeCache = Mutex<HashMap<String, (Instant, u64)>>;

fn cache() -> &'static AgeCache {
    static CACHE: OnceLock<AgeCache> = OnceLock::new();
    CACHE.get_or_init(AgeCache::default)
}

/// Refuses the task when the oldest task waiting in the model's queue is over the limit.
pub(super) async fn check_age(ctx: &NodeContext, model: &str, priority: Priority) -> Result<(), WireError> {
    let limit = ctx.config.task_manager.queue_max_age;
    if limit.is_zero() {
        return Ok(());
    }
    let subject = format!("{model}/{}", priority.as_str());
    let cached = cache()
        .lock()
        .ok()
        .and_then(|c| c.get(&subject).filter(|(at, _)| at.elapsed() < AGE_CACHE).map(|(_, age)| *age));
    let age_ms = match cached {
        Some(age) => age,
        None => {
            let age = ctx.store.queue().oldest_age_ms(model, priority).await;
            if let Ok(mut c) = cache().lock() {
                c.insert(subject, (Instant::now(), age));
            }
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
