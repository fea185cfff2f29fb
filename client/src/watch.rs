//! Following one task's events as a client: in order, without repeats or gaps, across
//! attempts, and resumable from any position.
//!
//! Live events come from a core-NATS subscription. Events already published (before the
//! subscription, or lost by it) are read back from the events stream, which captured
//! them. When events go quiet the task's status record is consulted, so a lost final
//! event never leaves a client waiting. The ordering itself is [`Sequencer`]'s, a pure
//! state machine; this module only feeds it.

use std::time::Duration;

use async_nats::Subscriber;
use bitinglip_bus_schema::{CancelTask, ErrorKind, GetTask, Reply, TaskId, WireError};
use bitinglip_nats::{async_nats, Bus, Store};
use futures::StreamExt;

use crate::sequence::{Handled, Relayed, Sequencer};

/// How long without any event before the status record is consulted.
const QUIET: Duration = Duration::from_secs(5);

/// A task's events, as seen by one client.
pub struct TaskWatch {
    bus: Bus,
    store: Store,
    sub: Subscriber,
    owner: Option<String>,
    task_id: TaskId,
    sequencer: Sequencer,
}

impl TaskWatch {
    /// Subscribes to the events of `owner`'s task from the start. Call before submitting,
    /// so nothing is missed.
    pub async fn subscribe(bus: &Bus, store: &Store, owner: Option<&str>, task_id: &TaskId) -> Result<Self, WireError> {
        let sub = bus.subscribe(bus.subjects().task_events(owner, task_id)).await.map_err(|e| WireError::from(&e))?;
        Ok(Self {
            bus: bus.clone(),
            store: store.clone(),
            sub,
            owner: owner.map(String::from),
            task_id: task_id.clone(),
            sequencer: Sequencer::from_seq(0),
        })
    }

    /// Follows a task that may have started: chunks from `next_seq` on (everything when
    /// 0), read back from the events stream, then live.
    pub async fn resume(
        bus: &Bus,
        store: &Store,
        owner: Option<&str>,
        task_id: &TaskId,
        next_seq: u64,
    ) -> Result<Self, WireError> {
        let mut watch = Self::subscribe(bus, store, owner, task_id).await?;
        watch.sequencer = Sequencer::from_seq(next_seq);
        watch.sequencer.push_stored(store.stored_events(owner, task_id).await?);
        Ok(watch)
    }

    /// The next thing to tell the client; `None` after the end. The end's large parts
    /// (tool calls, logprobs, embeddings), when kept in the results store, are read back.
    pub async fn next(&mut self) -> Option<Relayed> {
        match self.next_event().await? {
            Relayed::Done(mut done) if done.parts_object.is_some() => {
                Some(match self.store.results().resolve_parts(&mut done).await {
                    Ok(()) => Relayed::Done(done),
                    Err(err) => Relayed::Failed(WireError::new(
                        ErrorKind::Unavailable,
                        format!("the answer's tool calls, logprobs or embeddings could not be read: {err}"),
                    )),
                })
            }
            other => Some(other),
        }
    }

    async fn next_event(&mut self) -> Option<Relayed> {
        if let Some(done) = self.sequencer.take_pending() {
            return Some(done);
        }
        if self.sequencer.finished() {
            return None;
        }
        loop {
            let event = match self.sequencer.pop_backlog() {
                Some(e) => e,
                None => match tokio::time::timeout(QUIET, self.sub.next()).await {
                    Ok(Some(msg)) => match self.bus.decode_event(&msg) {
                        Ok(e) => e,
                        Err(err) => {
                            tracing::warn!(task.id = %self.task_id, cause = %err, "undecodable event ignored");
                            continue;
                        }
                    },
                    Ok(None) => {
                        let err = WireError::new(ErrorKind::Unavailable, "event subscription closed");
                        return Some(self.sequencer.end(Relayed::Failed(err)));
                    }
                    Err(_) => match self.check_record().await {
                        Some(r) => return Some(r),
                        None => continue,
                    },
                },
            };
            let handled = match self.sequencer.handle(event, false) {
                Handled::Gap { until, event } => {
                    // A stream that cannot be read leaves the gap; the end's text fills it.
                    let stored =
                        self.store.stored_events(self.owner.as_deref(), &self.task_id).await.unwrap_or_default();
                    self.sequencer.fill_gap(&stored, until);
                    self.sequencer.handle(event, true)
                }
                other => other,
            };
            if let Handled::Relay(r) = handled {
                return Some(r);
            }
        }
    }

    /// Consults the status record; a final one ends the watch.
    async fn check_record(&mut self) -> Option<Relayed> {
        let req = GetTask { task_id: self.task_id.clone() };
        let reply = self.bus.ask_as(self.owner.as_deref(), &req, None, Some(Duration::from_secs(5))).await.ok()?;
        let record = reply.into_answer().ok()?;
        self.sequencer.on_record(record)
    }
}

/// Asks for `owner`'s task to be cancelled: a queued task is marked cancelled, a running
/// one is stopped by its worker.
pub async fn cancel(bus: &Bus, owner: Option<&str>, task_id: &TaskId, reason: &str) -> Result<(), WireError> {
    let req = CancelTask { task_id: task_id.clone(), reason: reason.to_string() };
    bus.call_as(owner, &req).await
}

/// Cancels the task when dropped unless disarmed: a client that goes away mid-request
/// stops the engine's sequence.
pub struct CancelOnDrop {
    bus: Bus,
    owner: Option<String>,
    task_id: TaskId,
    armed: bool,
}

impl CancelOnDrop {
    /// Armed: dropping it cancels `owner`'s `task_id`.
    pub fn new(bus: &Bus, owner: Option<&str>, task_id: &TaskId) -> Self {
        Self { bus: bus.clone(), owner: owner.map(String::from), task_id: task_id.clone(), armed: true }
    }

    /// The task ended; dropping no longer cancels it.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let bus = self.bus.clone();
        let task_id = self.task_id.clone();
        let owner = self.owner.take();
        tokio::spawn(async move {
            if let Err(err) = cancel(&bus, owner.as_deref(), &task_id, "client disconnected").await {
                tracing::warn!(task.id = %task_id, cause = %err, "cancel not delivered");
            }
        });
    }
}
