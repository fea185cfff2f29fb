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
    stream_seq: u64,
    deliveries: u64,
}

/// Handles one max-deliveries advisory: fail the task, drop its message.
pub(super) async fn poison(ctx: &NodeContext, payload: &[u8]) {
    let advisory: MaxDeliveries = match serde_json::from_slice(payload) {
        Ok(a) => a,
        Err(err) => {
            tracing::warn!(cause = %err, "unreadable max-deliveries advisory");
            return;
        }
    };
    let spec = match ctx.store.queue().remove(advisory.stream_seq).await {
        Ok(Some(spec)) => spec,
        Ok(None) => return,
        Err(err) => {
            tracing::warn!(cause = %err, "poison task not read");
            return;
        }
    };
    let error = WireError::new(
        ErrorKind::Engine,
        format!(
            "failed after {} attempts: every attempt ended without an answer (its worker crashed or froze)",
            advisory.deliveries
        ),
    );
    match ctx.store.tasks().fail(&spec.task_id, &error).await {
        Ok(Some(record)) => {
            tracing::error!(task.id = %spec.task_id, deliveries = advisory.deliveries, "poison task failed");
            let event = TaskEvent::Failed(TaskFailed { task_id: spec.task_id.clone(), attempt: record.attempt, error });
            let _ = ctx.bus.publish(ctx.bus.subjects().task_events(&spec.task_id), &event, None).await;
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(task.id = %spec.task_id, cause = %err, "poison task not marked failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
