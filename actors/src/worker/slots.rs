//! The slot loops: one per sequence a worker may run. A slot pulls the next task only
//! when it is free, so a busy worker never holds work another could do.
//!
//! Each model has two durable consumers, one per priority class. A free slot takes an
//! interactive task first; after four interactive tasks in a row it looks at batch first
//! once, so batch is never starved. When both are empty it waits on the interactive queue
//! (woken at once by a new task) and looks at batch again every second.

use std::{sync::Arc, time::Duration};

use bitinglip_bus_schema::Priority;
use bitinglip_nats::store::queue::Consumers;

use super::{run::run_task, WorkerShared};

/// One sequence slot: pull one task, run it, repeat, until the worker stops fetching.
pub(super) async fn slot_loop(shared: Arc<WorkerShared>, consumers: Consumers, slot: u32) {
    let mut backoff = Duration::from_millis(100);
    let mut interactive_streak = 0u32;
    while !shared.stop_fetching.is_cancelled() {
        let batch_first = interactive_streak >= 4;
        let order = if batch_first {
            [Priority::Batch, Priority::Interactive]
        } else {
            [Priority::Interactive, Priority::Batch]
        };
        let attempt = async {
            for priority in order {
                if let Some(m) = consumers.take_now(priority).await? {
                    return Ok(Some((m, priority)));
                }
            }
            let waited = consumers.take_within(Priority::Interactive, Duration::from_secs(1)).await?;
            Ok::<_, bitinglip_nats::StoreError>(waited.map(|m| (m, Priority::Interactive)))
        };
        let got = tokio::select! {
            _ = shared.stop_fetching.cancelled() => return,
            got = attempt => got,
        };
        match got {
            Ok(Some((msg, priority))) => {
                backoff = Duration::from_millis(100);
                interactive_streak = match priority {
                    Priority::Interactive => interactive_streak + 1,
                    Priority::Batch => 0,
                };
                run_task(&shared, msg).await;
            }
            Ok(None) => {
                // Nothing waiting: a slot that found batch empty resets its streak.
                interactive_streak = 0;
            }
            Err(err) => {
                tracing::warn!(slot, cause = %err, "fetch failed; retrying");
                tokio::select! {
                    _ = shared.stop_fetching.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
