//! The last step of an attempt that finished: the answer and its other large parts (into
//! the results store when too large for one message), the final record fenced on the claim, the final event, the
//! key's usage, and only then the ack.

use std::time::Duration;

use bitinglip_bus_schema::{RecordUsage, TaskEvent, TaskId};
use bitinglip_nats::store::{counters::NO_KEY, results::INLINE_TEXT_MAX};

use super::{
    ending::{Ending, FinalAck},
    run::{nak, publish_event, Attempt},
};
use crate::{
    metrics::{self, metrics},
    NodeContext,
};

/// Has a task manager add the finished task's usage, as its record says, to its owner's
/// counters (deduplicated per task): a worker writes no counter itself.
pub(super) async fn record_usage(ctx: &NodeContext, task_id: &TaskId) -> Result<(), ()> {
    let req = RecordUsage { task_id: task_id.clone() };
    ctx.bus.call(&req).await.map_err(|err| {
        tracing::warn!(kind = %err.kind, cause = %err.message, "usage not counted; handing back to count it again");
    })
}

/// Writes the final record (fenced on the claim), publishes the final event, and only
/// then acks: a crash before the ack means redelivery, and the redelivery finds the task
/// finished.
pub(super) async fn finish(ctx: &NodeContext, a: &Attempt, ending: Ending, revision: u64, tokens: (u32, u32)) {
    let (msg, model, trace) = (&a.msg, a.spec.chat.model.as_str(), a.trace.as_ref());
    let Ending::Finish { mut record, mut event, ack, outcome } = ending else { return };
    let task_id = record.task_id.clone();
    // An answer too large for one message goes to the results store first; the record
    // and the event carry its name.
    if let (Some(done), TaskEvent::Completed(completed)) = (record.result.as_mut(), event.as_mut()) {
        if done.text.len() > INLINE_TEXT_MAX {
            match ctx.store.results().put(&task_id, done.attempt, &done.text).await {
                Ok(name) => {
                    done.text = String::new();
                    done.text_object = Some(name.clone());
                    completed.text = String::new();
                    completed.text_object = Some(name);
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "answer not stored; handing back");
                    nak(msg, Some(Duration::from_secs(1))).await;
                    return;
                }
            }
        }
        // So do its tool calls, logprobs and embeddings when with them the record would not
        // fit one message (20 alternatives a token pass 1 MiB at about 1,400 tokens): a
        // record that cannot be written would be retried until poisoned, never counted.
        match ctx.store.results().offload_parts(done).await {
            Ok(true) => {
                completed.tool_calls = Vec::new();
                completed.logprobs = Vec::new();
                completed.embeddings = Vec::new();
                completed.parts_object = done.parts_object.clone();
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(cause = %err, "answer's parts not stored; handing back");
                nak(msg, Some(Duration::from_secs(1))).await;
                return;
            }
        }
    }
    // What usage needs, taken before the record moves into the store (no clone of the
    // answer's text).
    let owner = record.owner.clone();
    match ctx.store.tasks().finish(*record, revision).await {
        Ok(true) => metrics().tasks.with_label_values(&[model, outcome.as_str()]).inc(),
        Ok(false) => {
            tracing::info!("a newer attempt owns the task; result dropped");
            return;
        }
        Err(err) => {
            // The record could not be written (store unreachable): hand back rather than
            // ack a task whose outcome nobody can read.
            tracing::warn!(cause = %err, "final record not written; handing back");
            nak(msg, Some(Duration::from_secs(1))).await;
            return;
        }
    }
    publish_event(ctx, owner.as_deref(), &task_id, &event, trace).await;
    // Usage is counted before the ack: a failure hands the task back, and the redelivery
    // (which finds it finished) counts it again, deduplicated.
    if record_usage(ctx, &task_id).await.is_err() {
        nak(msg, Some(Duration::from_secs(1))).await;
        return;
    }
    metrics::count_key_usage(owner.as_deref().unwrap_or(NO_KEY), model, tokens);
    let acked = match ack {
        FinalAck::Ack => msg.ack().await,
        FinalAck::Term => msg.term().await,
    };
    if let Err(err) = acked {
        tracing::warn!(cause = %err, "ack not confirmed; a redelivery will find the task finished");
    }
}
