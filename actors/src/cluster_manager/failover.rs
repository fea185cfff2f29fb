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

use std::{collections::HashMap, time::Duration};

use async_nats::jetstream::kv;
use bitinglip_bus_schema::{
    decode_body, encode, Envelope, ErrorKind, NodeHeartbeat, TaskEvent, TaskFailed, TaskRecord, TaskSpec, TaskState,
    WireError,
};
use bitinglip_nats::now_ms;
use futures::StreamExt;
use serde::Deserialize;

use crate::NodeContext;

/// Watches heartbeats; naks the running tasks of nodes that went silent.
pub(super) async fn watch_nodes(ctx: NodeContext) {
    let mut last: HashMap<String, NodeHeartbeat> = HashMap::new();
    let ttl_ms = ctx.config.cluster.node_ttl.as_millis() as u64;
    let mut tick = tokio::time::interval(ctx.config.cluster.heartbeat_interval);
    loop {
        let mut watch = match ctx.kv.nodes.watch_all().await {
            Ok(w) => w,
            Err(err) => {
                tracing::warn!(cause = %err, "nodes watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(e)) => match e.operation {
                        kv::Operation::Put => {
                            if let Ok(hb) = decode_body::<NodeHeartbeat>(&e.value, usize::MAX) {
                                last.insert(e.key, hb);
                            }
                        }
                        // A clean exit: the node handed its tasks back itself.
                        kv::Operation::Delete | kv::Operation::Purge => {
                            last.remove(&e.key);
                        }
                    },
                    _ => break,
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    let dead: Vec<String> = last
                        .iter()
                        .filter(|(_, hb)| now.saturating_sub(hb.time_ms) > ttl_ms)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in dead {
                        if let Some(hb) = last.remove(&key) {
                            hand_on(&ctx, &hb).await;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Naks the tasks a dead node was running, where its claim still stands.
async fn hand_on(ctx: &NodeContext, hb: &NodeHeartbeat) {
    let running: Vec<_> = hb.workers.iter().flat_map(|w| w.running.iter()).collect();
    tracing::warn!(node = %hb.node_id, tasks = running.len(), "node stopped heartbeating; handing its tasks on");
    for task in running {
        let claim_stands = match ctx.kv.tasks.get(task.task_id.as_str()).await {
            Ok(Some(bytes)) => decode_body::<TaskRecord>(&bytes, usize::MAX)
                .is_ok_and(|r| r.state == TaskState::Running && r.attempt == task.attempt),
            _ => false,
        };
        if !claim_stands {
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
    let Ok(stream) = ctx.bus.jetstream().get_stream_no_info(ctx.bus.subjects().tasks_stream()).await else { return };
    let Ok(message) = stream.get_raw_message(advisory.stream_seq).await else { return };
    let spec = match bitinglip_bus_schema::decode_body::<TaskSpec>(&message.payload, usize::MAX) {
        Ok(s) => s,
        Err(_) => {
            let _ = stream.delete_message(advisory.stream_seq).await;
            return;
        }
    };
    let error = WireError::new(
        ErrorKind::Engine,
        format!("failed after {} attempts: every attempt ended without an answer (its worker crashed or froze)", advisory.deliveries),
    );
    let key = spec.task_id.as_str();
    for _ in 0..5 {
        let Ok(Some(entry)) = ctx.kv.tasks.entry(key).await else { break };
        let Ok(mut record) = decode_body::<TaskRecord>(&entry.value, usize::MAX) else { break };
        if record.state.is_final() {
            break;
        }
        record.state = TaskState::Failed;
        record.error = Some(error.clone());
        record.updated_ms = now_ms();
        let env = Envelope::new(ulid::Ulid::new().to_string(), now_ms(), ctx.node_id(), &record);
        let Ok(bytes) = encode(&env) else { break };
        if ctx.kv.tasks.update(key, bytes.into(), entry.revision).await.is_ok() {
            tracing::error!(task.id = %spec.task_id, deliveries = advisory.deliveries, "poison task failed");
            let event = TaskEvent::Failed(TaskFailed { task_id: spec.task_id.clone(), attempt: record.attempt, error: error.clone() });
            let _ = ctx.bus.publish(ctx.bus.subjects().task_events(&spec.task_id), &event, None).await;
            break;
        }
    }
    let _ = stream.delete_message(advisory.stream_seq).await;
}
