//! Failure handling: workers that die and tasks that kill their workers.
//!
//! A dead worker: every node's heartbeat lists the tasks its workers run, with the ack
//! subject of each delivery. When a node's heartbeats stop for `cluster.node_ttl`, its
//! running tasks are naked through those ack subjects, so JetStream redelivers them at
//! once instead of waiting out AckWait; the new attempt continues the stream.
//!
//! A poison task: JetStream publishes an advisory when a task used up `max_deliver`
//! attempts without an ack (every attempt crashed or froze its worker). The task is then
//! marked failed with the reason, its client gets the failure, and the message is removed
//! from the queue.

use std::collections::HashMap;

use bitinglip_bus_schema::{ErrorKind, NodeHeartbeat, TaskEvent, TaskFailed, WireError};
use serde::Deserialize;

use crate::NodeContext;

/// The silent nodes whose tasks are still to be handed on (pure): each silent node once
/// per heartbeat it went silent after (`handed` maps a node to the time of the heartbeat
/// it was handed on at; a node that beats again and then goes silent again counts anew).
fn to_hand_on(silent: Vec<NodeHeartbeat>, handed: &HashMap<String, u64>) -> Vec<NodeHeartbeat> {
    silent.into_iter().filter(|hb| handed.get(&hb.node_id) != Some(&hb.time_ms)).collect()
}

/// Checks the heartbeats every interval; naks the running tasks of nodes that went silent.
pub(super) async fn watch_nodes(ctx: NodeContext) {
    let mut handed: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(ctx.config.cluster.heartbeat_interval);
    loop {
        tick.tick().await;
        for hb in to_hand_on(ctx.nodes.silent(), &handed) {
            handed.insert(hb.node_id.clone(), hb.time_ms);
            hand_on(&ctx, &hb).await;
        }
    }
}

/// Naks the tasks a dead node was running, where its claim still stands.
async fn hand_on(ctx: &NodeContext, hb: &NodeHeartbeat) {
    let running: Vec<_> = hb.workers.iter().flat_map(|w| w.running.iter()).collect();
    tracing::warn!(node = %hb.node_id, tasks = running.len(), "node stopped heartbeating; handing its tasks on");
    for task in running {
        if !ctx.store.tasks().claim_stands(&task.task_id, task.attempt).await.unwrap_or(false) {
            continue;
        }
        match ctx.bus.client().publish(task.ack_subject.clone(), "-NAK".into()).await {
            Ok(()) => tracing::info!(task.id = %task.task_id, attempt = task.attempt, "task handed on"),
            Err(err) => tracing::warn!(task.id = %task.task_id, cause = %err, "nak not sent"),
        }
    }
}

/// The fields of JetStream's max-deliveries advisory we use.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
}

/// Whether an advisory is about a task that really used up its deliveries (pure): on the
/// tasks stream, from the consumer of the task's model and priority, at `max_deliver`.
fn advisory_holds(
    advisory: &MaxDeliveries,
    tasks_stream: &str,
    consumer: &str,
    max_deliver: i64,
) -> Result<(), String> {
    if advisory.stream != tasks_stream {
        return Err(format!("stream {} is not the tasks stream", advisory.stream));
    }
    if advisory.consumer != consumer {
        return Err(format!("consumer {} does not serve this task (its is {consumer})", advisory.consumer));
    }
    if (advisory.deliveries as i64) < max_deliver {
        return Err(format!("{} deliveries is under max_deliver {max_deliver}", advisory.deliveries));
    }
    Ok(())
}

/// What to do with a poisoned task's message once its record was (or was not) marked.
#[derive(Debug)]
enum Poisoned {
    /// The record says how the task ended (failed now: `failed`, or earlier): the
    /// message may go.
    Remove { failed: Option<Box<bitinglip_bus_schema::TaskRecord>> },
    /// The record could not be written (the store is down, or it kept changing): the
    /// message stays, and the marking is tried again.
    Retry(bitinglip_nats::StoreError),
}

/// The step after marking a poisoned task failed (pure): never remove its message while
/// its record may still say `running`.
fn after_fail(result: Result<Option<bitinglip_bus_schema::TaskRecord>, bitinglip_nats::StoreError>) -> Poisoned {
    match result {
        Ok(failed) => Poisoned::Remove { failed: failed.map(Box::new) },
        Err(err) => Poisoned::Retry(err),
    }
}

/// Handles one max-deliveries advisory: checks it against the stream and the consumer,
/// fails the task, and only once its record says how it ended removes its message (a
/// store that cannot write the record now is retried; the message stays until then).
pub(super) async fn poison(ctx: &NodeContext, payload: &[u8]) {
    let advisory: MaxDeliveries = match serde_json::from_slice(payload) {
        Ok(a) => a,
        Err(err) => {
            tracing::warn!(cause = %err, "unreadable max-deliveries advisory");
            return;
        }
    };
    let spec = match ctx.store.queue().peek(advisory.stream_seq).await {
        Ok(Some(Some(spec))) => spec,
        Ok(Some(None)) => {
            // Not a task at all: nothing to fail.
            let _ = ctx.store.queue().remove(advisory.stream_seq).await;
            return;
        }
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(cause = %err, "poison task not read");
            return;
        }
    };
    let subjects = ctx.bus.subjects();
    let consumer = subjects.worker_consumer(&spec.chat.model, spec.priority);
    let max_deliver = ctx.config.jetstream.max_deliver;
    if let Err(why) = advisory_holds(&advisory, &subjects.tasks_stream(), &consumer, max_deliver) {
        tracing::warn!(task.id = %spec.task_id, why, "max-deliveries advisory ignored");
        return;
    }
    let error = WireError::new(
        ErrorKind::Engine,
        format!(
            "failed after {} attempts: every attempt ended without an answer (its worker crashed or froze)",
            advisory.deliveries
        ),
    );
    let mut delay = std::time::Duration::from_millis(100);
    for _ in 0..12 {
        match after_fail(ctx.store.tasks().fail(&spec.task_id, &error).await) {
            Poisoned::Remove { failed } => {
                if let Some(record) = failed {
                    tracing::error!(task.id = %spec.task_id, deliveries = advisory.deliveries, "poison task failed");
                    let event =
                        TaskEvent::Failed(TaskFailed { task_id: spec.task_id.clone(), attempt: record.attempt, error });
                    let _ = ctx.bus.publish(subjects.task_events(&spec.task_id), &event, None).await;
                }
                if let Err(err) = ctx.store.queue().remove(advisory.stream_seq).await {
                    tracing::warn!(task.id = %spec.task_id, cause = %err, "poison message not removed");
                }
                return;
            }
            Poisoned::Retry(err) => {
                tracing::warn!(task.id = %spec.task_id, cause = %err, "poison task not marked failed yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        }
    }
    tracing::error!(task.id = %spec.task_id, "poison task could not be marked failed; its message stays queued");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_message_stays_while_its_record_cannot_be_marked() {
        let down = bitinglip_nats::StoreError::Unavailable { what: "task status store", message: "timed out".into() };
        assert!(matches!(after_fail(Err(down)), Poisoned::Retry(_)));
        let lost = bitinglip_nats::StoreError::Conflict { what: "task status store", key: "t".into() };
        assert!(matches!(after_fail(Err(lost)), Poisoned::Retry(_)));
        assert!(matches!(after_fail(Ok(None)), Poisoned::Remove { failed: None }));
    }

    #[test]
    fn an_advisory_counts_only_for_the_tasks_stream_the_right_consumer_and_max_deliver() {
        let advisory = |stream: &str, consumer: &str, deliveries| MaxDeliveries {
            stream: stream.into(),
            consumer: consumer.into(),
            stream_seq: 7,
            deliveries,
        };
        let holds = |a: &MaxDeliveries| advisory_holds(a, "BITINGLIP_TASKS", "worker-m-interactive", 5);
        assert!(holds(&advisory("BITINGLIP_TASKS", "worker-m-interactive", 5)).is_ok());
        assert!(holds(&advisory("OTHER", "worker-m-interactive", 5)).is_err());
        assert!(holds(&advisory("BITINGLIP_TASKS", "worker-other-interactive", 5)).is_err());
        assert!(holds(&advisory("BITINGLIP_TASKS", "worker-m-interactive", 2)).is_err());
    }

    fn hb(node: &str, time_ms: u64) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: node.into(),
            roles: vec![],
            http: None,
            workers: vec![],
            started_ms: 0,
            time_ms,
            version: "0".into(),
            device: "cpu".into(),
            memory_total: 0,
            memory_free: 0,
        }
    }

    #[test]
    fn a_silent_node_is_handed_on_once_per_silence() {
        let mut handed = HashMap::new();
        let first = to_hand_on(vec![hb("a", 10), hb("b", 20)], &handed);
        assert_eq!(first.len(), 2);
        handed.insert("a".to_string(), 10);
        handed.insert("b".to_string(), 20);
        assert!(to_hand_on(vec![hb("a", 10), hb("b", 20)], &handed).is_empty());
        // `a` came back and went silent again: a new silence.
        let again = to_hand_on(vec![hb("a", 99), hb("b", 20)], &handed);
        assert_eq!(again.iter().map(|h| h.node_id.as_str()).collect::<Vec<_>>(), ["a"]);
    }
}
