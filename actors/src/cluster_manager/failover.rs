//! Failure handling: workers that die and tasks that kill their workers.
//!
//! A dead worker: every node's heartbeat lists the tasks its workers run, with the ack
//! subject of each delivery (written again at once whenever that list changes). Its
//! running tasks are naked through those ack subjects, so JetStream redelivers them at
//! once instead of waiting out AckWait; the new attempt continues the stream. Two ways
//! find a dead node:
//! - at once: the nats-server publishes, in its system account, an event for every
//!   client connection that closes. With the `events` user, the cluster managers read
//!   them (one of them per event, on their queue group); a closed connection of a node's
//!   (named `bitinglip-<node>[-<role>]`) is confirmed by asking the node's
//!   `…node.<id>.alive`: NATS answers no-responders at once when no live connection
//!   subscribes it. Two such answers 300 ms apart (so a connection that was only moving to
//!   another server is not taken for dead) and the node is dead: its tasks are handed on
//!   and its heartbeat deleted, so its replicas are placed elsewhere now;
//! - the fallback, for a frozen process or a partition (whose connection the server does
//!   not see close): its heartbeats stop for `cluster.node_ttl`.
//!
//! A poison task: JetStream publishes an advisory when a task used up `max_deliver`
//! attempts without an ack (every attempt crashed or froze its worker). The task is then
//! marked failed with the reason, its client gets the failure, and the message is removed
//! from the queue.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bitinglip_bus_schema::{ErrorKind, NodeHeartbeat, TaskEvent, TaskFailed, TaskId, WireError};
use bitinglip_nats::store::queue;
use serde::Deserialize;

use crate::NodeContext;

/// The silent nodes whose tasks are still to be handed on (pure): each silent node once
/// per heartbeat it went silent after (`handed` maps a node to the time of the heartbeat
/// it was handed on at; a node that beats again and then goes silent again counts anew).
fn to_hand_on(silent: Vec<NodeHeartbeat>, handed: &HashMap<String, u64>) -> Vec<NodeHeartbeat> {
    silent.into_iter().filter(|hb| handed.get(&hb.node_id) != Some(&hb.time_ms)).collect()
}

/// What was handed on (shared by both ways of finding a dead node): each node with the
/// time of its last heartbeat then, so a node is handed on once per death; and each
/// delivery naked, until a new attempt has claimed its task.
#[derive(Default)]
pub(super) struct HandedOn {
    nodes: HashMap<String, u64>,
    naks: HashMap<(TaskId, u32), Nak>,
}

/// A NAK sent for a dead node's delivery (of a task and attempt).
struct Nak {
    ack_subject: String,
    model: String,
    sent: std::time::Instant,
    tries: u32,
}

pub(super) type Handed = Arc<Mutex<HandedOn>>;

/// A NAK is sent again while the dead attempt's claim still stands this long after it.
const NAK_AGAIN_AFTER: Duration = Duration::from_secs(2);
/// At most this many NAKs per delivery (about a minute); AckWait is the fallback after.
const NAK_TRIES: u32 = 30;

/// Marks `hb`'s node handed on; false when it already was, for this heartbeat.
fn first_hand_on(handed: &Handed, hb: &NodeHeartbeat) -> bool {
    let Ok(mut handed) = handed.lock() else { return false };
    if handed.nodes.get(&hb.node_id) == Some(&hb.time_ms) {
        return false;
    }
    handed.nodes.insert(hb.node_id.clone(), hb.time_ms);
    true
}

/// Checks the heartbeats every interval; naks the running tasks of nodes that went silent,
/// and naks again those whose dead attempt still holds the task (a NAK sent while the
/// queue's consumer was electing a leader is lost).
pub(super) async fn watch_nodes(ctx: NodeContext, handed: Handed) {
    let mut tick = tokio::time::interval(ctx.config.cluster.heartbeat_interval);
    loop {
        tick.tick().await;
        let silent = {
            let Ok(map) = handed.lock() else { return };
            to_hand_on(ctx.nodes.silent(), &map.nodes)
        };
        for hb in silent {
            if first_hand_on(&handed, &hb) {
                hand_on(&ctx, &hb, &handed).await;
            }
        }
        nak_again(&ctx, &handed).await;
    }
}

/// Sends the NAK again for each handed-on delivery whose claim still stands
/// [`NAK_AGAIN_AFTER`] after the last one; forgets those a new attempt claimed.
async fn nak_again(ctx: &NodeContext, handed: &Handed) {
    let due: Vec<((TaskId, u32), String, String)> = match handed.lock() {
        Ok(h) => h
            .naks
            .iter()
            .filter(|(_, n)| n.sent.elapsed() >= NAK_AGAIN_AFTER)
            .map(|(k, n)| (k.clone(), n.ack_subject.clone(), n.model.clone()))
            .collect(),
        Err(_) => return,
    };
    for (key, ack_subject, model) in due {
        let (task_id, attempt) = (&key.0, key.1);
        match ctx.store.tasks().claim_stands(task_id, attempt).await {
            Ok(true) => {
                let sent = queue::hand_on(&ctx.bus, &ack_subject, &model).await;
                if let Ok(mut h) = handed.lock() {
                    let done = h.naks.get_mut(&key).is_none_or(|n| {
                        n.sent = std::time::Instant::now();
                        n.tries += 1;
                        n.tries >= NAK_TRIES
                    });
                    if done {
                        h.naks.remove(&key);
                    }
                }
                tracing::info!(task.id = %task_id, attempt, sent, "dead attempt still holds its task; NAK sent again");
            }
            Ok(false) => {
                if let Ok(mut h) = handed.lock() {
                    h.naks.remove(&key);
                }
            }
            // The store cannot say: ask at the next tick.
            Err(_) => {}
        }
    }
}

/// The fields of the server's client-disconnect event we use.
#[derive(Debug, Deserialize)]
struct Disconnect {
    client: DisconnectedClient,
}

#[derive(Debug, Deserialize)]
struct DisconnectedClient {
    #[serde(default)]
    name: String,
}

/// The nodes (of those heard from) a closed connection named `name` may belong to (pure):
/// a node's connections are named `bitinglip-<node>` and `bitinglip-<node>-<role>`; where
/// ids overlap, each candidate is asked whether it is alive.
fn owners_of(name: &str, heard: Vec<NodeHeartbeat>) -> Vec<NodeHeartbeat> {
    let Some(rest) = name.strip_prefix("bitinglip-") else { return Vec::new() };
    heard
        .into_iter()
        .filter(|hb| rest == hb.node_id || rest.strip_prefix(hb.node_id.as_str()).is_some_and(|r| r.starts_with('-')))
        .collect()
}

/// What asking a node whether it is alive told.
#[derive(Debug, PartialEq)]
enum Alive {
    Yes,
    /// No connection subscribes its subject: the process is gone.
    No,
    /// No answer in time: not known (the fallback decides).
    Unknown,
}

async fn ask_alive(ctx: &NodeContext, node_id: &str) -> Alive {
    let subject = ctx.bus.subjects().node_alive(node_id);
    let request = async_nats::client::Request::new().timeout(Some(Duration::from_millis(500)));
    match ctx.bus.client().send_request(subject, request).await {
        Ok(_) => Alive::Yes,
        Err(err) if err.kind() == async_nats::client::RequestErrorKind::NoResponders => Alive::No,
        Err(_) => Alive::Unknown,
    }
}

/// Follows the server's client-disconnect events (with the `events` user's connection);
/// hands on the tasks of a node whose closed connection turns out to be its death.
pub(super) async fn watch_disconnects(ctx: NodeContext, events: async_nats::Client, handed: Handed) {
    let subject = ctx.bus.subjects().client_disconnects();
    let group = ctx.bus.subjects().cluster_manager_queue_group();
    let mut sub = match events.queue_subscribe(subject, group).await {
        Ok(sub) => sub,
        Err(err) => {
            tracing::warn!(cause = %err, "client-disconnect events not followed; dead nodes are found by cluster.node_ttl");
            return;
        }
    };
    tracing::info!("following client-disconnect events: a dead node's tasks are handed on at once");
    while let Some(msg) = futures::StreamExt::next(&mut sub).await {
        let Ok(event) = serde_json::from_slice::<Disconnect>(&msg.payload) else { continue };
        for hb in owners_of(&event.client.name, ctx.nodes.heard()) {
            let (ctx, handed) = (ctx.clone(), handed.clone());
            tokio::spawn(async move { confirm_and_hand_on(&ctx, hb, &handed).await });
        }
    }
}

/// How often, without the server's disconnect events, the nodes that run tasks are asked
/// whether they are alive.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Without the `events` user: asks every node that runs tasks whether it is alive, every
/// [`PROBE_EVERY`]. A killed process's connection is gone at once, so NATS answers
/// no-responders at once: its tasks are handed on within a second, as with the events
/// (a frozen one still waits for `cluster.node_ttl`).
pub(super) async fn probe_nodes(ctx: NodeContext, handed: Handed) {
    tracing::warn!("{}", crate::health::NO_EVENTS);
    let asking: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let busy = ctx
            .nodes
            .heard()
            .into_iter()
            .filter(|hb| hb.node_id != ctx.node_id() && hb.workers.iter().any(|w| !w.running.is_empty()));
        for hb in busy {
            // One question at a time per node.
            if !asking.lock().is_ok_and(|mut a| a.insert(hb.node_id.clone())) {
                continue;
            }
            let (ctx, handed, asking) = (ctx.clone(), handed.clone(), asking.clone());
            tokio::spawn(async move {
                let node = hb.node_id.clone();
                confirm_and_hand_on(&ctx, hb, &handed).await;
                if let Ok(mut a) = asking.lock() {
                    a.remove(&node);
                }
            });
        }
    }
}

/// Asks a node whether it is alive, twice 300 ms apart; hands it on when both say no.
async fn confirm_and_hand_on(ctx: &NodeContext, hb: NodeHeartbeat, handed: &Handed) {
    if ask_alive(ctx, &hb.node_id).await != Alive::No {
        return;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if ask_alive(ctx, &hb.node_id).await != Alive::No {
        return;
    }
    // Its last heartbeat now (one written since the event lists what it ran last).
    let hb = ctx.nodes.heard().into_iter().find(|h| h.node_id == hb.node_id).unwrap_or(hb);
    if !first_hand_on(handed, &hb) {
        return;
    }
    tracing::warn!(node = %hb.node_id, "node's connection closed and it answers no more");
    hand_on(ctx, &hb, handed).await;
    // Gone from the cluster at once: the leader places its replicas elsewhere now.
    if let Err(err) = ctx.store.nodes().remove(&hb.node_id).await {
        tracing::warn!(node = %hb.node_id, cause = %err, "dead node's heartbeat not removed");
    }
}

/// Naks the tasks a dead node was running, where its claim still stands (and notes each
/// NAK, to be sent again while the claim stands).
async fn hand_on(ctx: &NodeContext, hb: &NodeHeartbeat, handed: &Handed) {
    let running: Vec<_> = hb.workers.iter().flat_map(|w| w.running.iter().map(move |t| (t, &w.model))).collect();
    tracing::warn!(node = %hb.node_id, tasks = running.len(), "node is gone; handing its tasks on");
    for (task, model) in running {
        if !ctx.store.tasks().claim_stands(&task.task_id, task.attempt).await.unwrap_or(false) {
            continue;
        }
        if queue::hand_on(&ctx.bus, &task.ack_subject, model).await {
            tracing::info!(task.id = %task.task_id, attempt = task.attempt, "task handed on");
        } else {
            tracing::warn!(task.id = %task.task_id, "nak not sent");
        }
        if let Ok(mut h) = handed.lock() {
            h.naks.insert(
                (task.task_id.clone(), task.attempt),
                Nak {
                    ack_subject: task.ack_subject.clone(),
                    model: model.clone(),
                    sent: std::time::Instant::now(),
                    tries: 1,
                },
            );
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

/// Why a max-deliveries advisory is not about a task that used up its deliveries.
#[derive(Debug, PartialEq)]
enum NotPoisoned {
    /// It is about another stream.
    Stream(String),
    /// From a consumer that does not serve the task.
    Consumer { advised: String, serving: String },
    /// Fewer deliveries than `max_deliver`.
    Deliveries { deliveries: u64, max_deliver: i64 },
}

impl std::fmt::Display for NotPoisoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotPoisoned::Stream(s) => write!(f, "stream {s} is not the tasks stream"),
            NotPoisoned::Consumer { advised, serving } => {
                write!(f, "consumer {advised} does not serve this task (its is {serving})")
            }
            NotPoisoned::Deliveries { deliveries, max_deliver } => {
                write!(f, "{deliveries} deliveries is under max_deliver {max_deliver}")
            }
        }
    }
}

/// Whether an advisory is about a task that really used up its deliveries (pure): on the
/// tasks stream, from the consumer that serves the task (its model's shared one for its
/// priority, or the pinned one of its worker), at `max_deliver`.
fn advisory_holds(
    advisory: &MaxDeliveries,
    tasks_stream: &str,
    consumer: &str,
    max_deliver: i64,
) -> Result<(), NotPoisoned> {
    if advisory.stream != tasks_stream {
        return Err(NotPoisoned::Stream(advisory.stream.clone()));
    }
    if advisory.consumer != consumer {
        return Err(NotPoisoned::Consumer { advised: advisory.consumer.clone(), serving: consumer.to_string() });
    }
    if (advisory.deliveries as i64) < max_deliver {
        return Err(NotPoisoned::Deliveries { deliveries: advisory.deliveries, max_deliver });
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
    let (spec, consumer) = match ctx.store.queue().peek_with_consumer(advisory.stream_seq).await {
        Ok(Some((Some(spec), consumer))) => (spec, consumer),
        Ok(Some((None, _))) => {
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
    let max_deliver = ctx.config.jetstream.max_deliver;
    if let Err(why) = advisory_holds(&advisory, &subjects.tasks_stream(), &consumer, max_deliver) {
        tracing::warn!(task.id = %spec.task_id, why = %why, "max-deliveries advisory ignored");
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
        match after_fail(ctx.store.tasks().fail(&spec, &error).await) {
            Poisoned::Remove { failed } => {
                if let Some(record) = failed {
                    tracing::error!(task.id = %spec.task_id, deliveries = advisory.deliveries, "poison task failed");
                    crate::metrics::metrics().poisoned.with_label_values(&[&spec.chat.model]).inc();
                    let event =
                        TaskEvent::Failed(TaskFailed { task_id: spec.task_id.clone(), attempt: record.attempt, error });
                    let _ =
                        ctx.bus.publish(subjects.task_events(spec.owner.as_deref(), &spec.task_id), &event, None).await;
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
        NodeHeartbeat { node_id: node.into(), time_ms, version: "0".into(), ..Default::default() }
    }

    #[test]
    fn a_closed_connection_belongs_to_the_nodes_its_name_names() {
        let heard = || vec![hb("a", 1), hb("a-b", 1), hb("c", 1)];
        let ids = |name: &str| owners_of(name, heard()).into_iter().map(|h| h.node_id).collect::<Vec<_>>();
        assert_eq!(ids("bitinglip-c"), ["c"]);
        assert_eq!(ids("bitinglip-c-worker"), ["c"]);
        // Overlapping ids: both are asked.
        assert_eq!(ids("bitinglip-a-b-worker"), ["a", "a-b"]);
        assert_eq!(ids("bitinglip-a-b"), ["a", "a-b"]);
        assert!(ids("bitinglip-cc").is_empty());
        assert!(ids("other-c").is_empty());
        assert!(ids("").is_empty());
    }

    #[test]
    fn a_node_is_handed_on_once_per_heartbeat_by_either_way() {
        let handed: Handed = Arc::default();
        assert!(first_hand_on(&handed, &hb("a", 10)));
        assert!(!first_hand_on(&handed, &hb("a", 10)));
        assert!(first_hand_on(&handed, &hb("a", 11)));
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
