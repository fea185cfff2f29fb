//! The slot loops: one per sequence a worker may run. A slot pulls the next task only
//! when it is free, so a busy worker never holds work another could do.
//!
//! Each model has two durable consumers, one per priority class. A free slot takes an
//! interactive task first; after four interactive tasks in a row it looks at batch first
//! once, so batch is never starved. When both are empty it waits on the interactive queue
//! (woken at once by a new task) and looks at batch again every second.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::PullConsumer};
use bitinglip_bus_schema::Priority;
use bitinglip_nats::worker_consumer_config;
use futures::StreamExt;

use super::{run::run_task, WorkerShared};
use crate::NodeContext;

/// A model's two consumers.
#[derive(Clone)]
pub(super) struct Consumers {
    interactive: PullConsumer,
    batch: PullConsumer,
}

/// Creates (or finds) the model's durable consumers.
pub(super) async fn ensure_consumers(ctx: &NodeContext, model: &str) -> Result<Consumers, ractor::ActorProcessingErr> {
    let subjects = ctx.bus.subjects();
    let stream = ctx.bus.jetstream().get_stream(subjects.tasks_stream()).await?;
    let mut made = Vec::new();
    for priority in [Priority::Interactive, Priority::Batch] {
        let config = worker_consumer_config(subjects, model, priority, &ctx.config.jetstream);
        let name = config.durable_name.clone().unwrap_or_default();
        made.push(stream.get_or_create_consumer(&name, config).await?);
    }
    let batch = made.pop().expect("two consumers");
    let interactive = made.pop().expect("two consumers");
    Ok(Consumers { interactive, batch })
}

/// Takes one message if one is waiting, without waiting.
async fn take_now(consumer: &PullConsumer) -> Result<Option<jetstream::Message>, String> {
    let mut batch = consumer.fetch().max_messages(1).messages().await.map_err(|e| e.to_string())?;
    match batch.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(e.to_string()),
        None => Ok(None),
    }
}

/// Waits up to `wait` for one message.
async fn take_within(consumer: &PullConsumer, wait: Duration) -> Result<Option<jetstream::Message>, String> {
    let mut batch = consumer.batch().max_messages(1).expires(wait).messages().await.map_err(|e| e.to_string())?;
    match batch.next().await {
        Some(Ok(m)) => Ok(Some(m)),
        Some(Err(e)) => Err(e.to_string()),
        None => Ok(None),
    }
}

/// One sequence slot: pull one task, run it, repeat, until the worker stops fetching.
pub(super) async fn slot_loop(shared: Arc<WorkerShared>, consumers: Consumers, slot: u32) {
    let mut backoff = Duration::from_millis(100);
    let mut interactive_streak = 0u32;
    while !shared.stop_fetching.is_cancelled() {
        let batch_first = interactive_streak >= 4;
        let order = if batch_first {
            [(&consumers.batch, Priority::Batch), (&consumers.interactive, Priority::Interactive)]
        } else {
            [(&consumers.interactive, Priority::Interactive), (&consumers.batch, Priority::Batch)]
        };
        let attempt = async {
            for (consumer, priority) in order {
                if let Some(m) = take_now(consumer).await? {
                    return Ok(Some((m, priority)));
                }
            }
            Ok::<_, String>(take_within(&consumers.interactive, Duration::from_secs(1)).await?.map(|m| (m, Priority::Interactive)))
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
