//! Queue limits: a full queue refuses new tasks at once (429 with `Retry-After` at the
//! gateway) and never drops accepted ones. Count and bytes are enforced by the tasks
//! stream itself (discard-new per subject); age is checked here against the oldest task
//! waiting in the model's queue.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use async_nats::jetstream::{context::PublishErrorKind, ErrorCode};
use bitinglip_bus_schema::{ErrorKind, Priority, WireError};

use crate::NodeContext;

/// Maps a publish failure to the error the client gets.
pub(super) fn publish_error(err: async_nats::jetstream::context::PublishError) -> WireError {
    if err.kind() == PublishErrorKind::MaxPayloadExceeded {
        return WireError::new(ErrorKind::PayloadTooLarge, format!("the task is over the bus's max payload: {err}"));
    }
    let code = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .map(|e| e.error_code());
    if code == Some(ErrorCode::STREAM_STORE_FAILED) {
        return WireError::new(ErrorKind::Overloaded, format!("the model's queue is full ({err}); retry later"));
    }
    WireError::new(ErrorKind::Unavailable, format!("tasks stream: {err}"))
}

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
    let subject = ctx.bus.subjects().queue(model, priority);
    let cached = cache().lock().ok().and_then(|c| c.get(&subject).filter(|(at, _)| at.elapsed() < AGE_CACHE).map(|(_, age)| *age));
    let age_ms = match cached {
        Some(age) => age,
        None => {
            let age = crate::queues::oldest_age_ms(&ctx.bus, &subject).await;
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
