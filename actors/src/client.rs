//! Following one task's events as a client: in order, without repeats or gaps, across
//! attempts, and resumable from any position. The gateway and the CLI both use it.
//!
//! Live events come from a core-NATS subscription. Events already published (before the
//! subscription, or lost by it) are read back from the events stream, which captured them.
//! When events go quiet the task's status record is consulted, so a lost final event never
//! leaves a client waiting.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use async_nats::{jetstream::consumer, Subscriber};
use bitinglip_bus_schema::{
    CancelTask, ErrorKind, GetTask, TaskCompleted, TaskEvent, TaskId, TaskState, TaskStatusReply, WireError,
};
use bitinglip_nats::Bus;
use futures::StreamExt;

/// What the client is told next.
#[derive(Debug)]
pub enum Relayed {
    /// A worker started (or restarted) the task.
    Started {
        /// Delivery attempt.
        attempt: u32,
        /// Chunks before this attempt's first.
        resume_from_seq: u64,
    },
    /// More text: chunk `seq`.
    Text {
        /// Position of the chunk.
        seq: u64,
        /// Its text.
        text: String,
    },
    /// Finished; no more follows.
    Done(TaskCompleted),
    /// Failed; no more follows.
    Failed(WireError),
}

/// Every event stored for `task_id` in the events stream, in publication order.
pub async fn stored_events(bus: &Bus, task_id: &TaskId) -> Result<Vec<TaskEvent>, String> {
    let subjects = bus.subjects();
    let stream = bus.jetstream().get_stream(subjects.events_stream()).await.map_err(|e| e.to_string())?;
    let mut consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subjects.task_events(task_id),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.info().await.map_err(|e| e.to_string())?.num_pending;
    let mut events = Vec::new();
    if pending > 0 {
        let mut messages = consumer
            .batch()
            .max_messages(pending as usize)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = 0u64;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(|e| e.to_string())?;
            seen += 1;
            if let Ok(incoming) = bus.decode::<TaskEvent>(&msg.message) {
                events.push(incoming.envelope.body);
            }
            if seen >= pending {
                break;
            }
        }
    }
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(events)
}

/// The chunks in `events`, first copy of each `seq`.
pub fn chunks_by_seq(events: &[TaskEvent]) -> BTreeMap<u64, String> {
    let mut chunks = BTreeMap::new();
    for e in events {
        if let TaskEvent::Chunk(c) = e {
            chunks.entry(c.seq).or_insert_with(|| c.text.clone());
        }
    }
    chunks
}

/// A task's events, as seen by one client.
pub struct TaskWatch {
    bus: Bus,
    sub: Subscriber,
    task_id: TaskId,
    next_seq: u64,
    attempt: u32,
    relayed_bytes: usize,
    backlog: VecDeque<TaskEvent>,
    pending_done: Option<TaskCompleted>,
    finished: bool,
    /// Relayed from chunk 0 (so `relayed_bytes` measures the answer so far).
    from_start: bool,
}

/// How long without any event before the status record is consulted.
const QUIET: Duration = Duration::from_secs(5);

impl TaskWatch {
    /// Subscribes to the task's events from the start. Call before submitting, so nothing
    /// is missed.
    pub async fn subscribe(bus: &Bus, task_id: &TaskId) -> Result<Self, WireError> {
        let sub = bus.subscribe(bus.subjects().task_events(task_id)).await.map_err(|e| WireError::from(&e))?;
        Ok(Self {
            bus: bus.clone(),
            sub,
            task_id: task_id.clone(),
            next_seq: 0,
            attempt: 0,
            relayed_bytes: 0,
            backlog: VecDeque::new(),
            pending_done: None,
            finished: false,
            from_start: true,
        })
    }

    /// Follows a task that may have started: chunks from `next_seq` on (everything when 0),
    /// read back from the events stream, then live.
    pub async fn resume(bus: &Bus, task_id: &TaskId, next_seq: u64) -> Result<Self, WireError> {
        let mut watch = Self::subscribe(bus, task_id).await?;
        watch.next_seq = next_seq;
        watch.from_start = next_seq == 0;
        let stored = stored_events(bus, task_id).await.map_err(|e| WireError::new(ErrorKind::Unavailable, e))?;
        watch.backlog.extend(stored);
        Ok(watch)
    }

    /// The next thing to tell the client; `None` after the end.
    pub async fn next(&mut self) -> Option<Relayed> {
        if let Some(done) = self.pending_done.take() {
            return Some(self.end(Relayed::Done(done)));
        }
        if self.finished {
            return None;
        }
        loop {
            let event = match self.backlog.pop_front() {
                Some(e) => e,
                None => match tokio::time::timeout(QUIET, self.sub.next()).await {
                    Ok(Some(msg)) => match self.bus.decode::<TaskEvent>(&msg) {
                        Ok(e) => e.envelope.body,
                        Err(err) => {
                            tracing::warn!(task.id = %self.task_id, cause = %err, "undecodable event ignored");
                            continue;
                        }
                    },
                    Ok(None) => {
                        let err = WireError::new(ErrorKind::Unavailable, "event subscription closed");
                        return Some(self.end(Relayed::Failed(err)));
                    }
                    Err(_) => match self.check_record().await {
                        Some(r) => return Some(r),
                        None => continue,
                    },
                },
            };
            if let Some(r) = self.handle(event).await {
                return Some(r);
            }
        }
    }

    async fn handle(&mut self, event: TaskEvent) -> Option<Relayed> {
        match event {
            TaskEvent::Started(s) => {
                if s.attempt <= self.attempt {
                    return None;
                }
                self.attempt = s.attempt;
                // The new attempt continues at `resume_from_seq`. Anything between what we
                // have and that point was published and stored: read it back.
                if s.resume_from_seq > self.next_seq {
                    self.fill_gap(s.resume_from_seq).await;
                }
                Some(Relayed::Started { attempt: s.attempt, resume_from_seq: s.resume_from_seq })
            }
            TaskEvent::Chunk(c) => {
                if c.attempt < self.attempt || c.seq < self.next_seq {
                    return None; // a stale attempt, or a repeat
                }
                self.attempt = self.attempt.max(c.attempt);
                if c.seq > self.next_seq {
                    self.fill_gap(c.seq).await;
                    if c.seq != self.next_seq {
                        tracing::warn!(task.id = %self.task_id, expected = self.next_seq, got = c.seq, "gap in task events");
                    }
                }
                if let Some(r) = self.backlog_text() {
                    // Text read back for the gap goes first; this chunk follows it.
                    self.backlog.push_front(TaskEvent::Chunk(c));
                    return Some(r);
                }
                self.next_seq = c.seq + 1;
                self.relayed_bytes += c.text.len();
                Some(Relayed::Text { seq: c.seq, text: c.text })
            }
            TaskEvent::Completed(done) => {
                if done.attempt < self.attempt {
                    return None;
                }
                if done.chunks > self.next_seq {
                    // Chunks we have not relayed: read them back, send them, then this.
                    self.fill_gap(done.chunks).await;
                    if let Some(r) = self.backlog_text() {
                        let at = self.backlog.iter().position(|e| !matches!(e, TaskEvent::Chunk(_))).unwrap_or(self.backlog.len());
                        self.backlog.insert(at, TaskEvent::Completed(done));
                        return Some(r);
                    }
                }
                Some(self.complete(done))
            }
            TaskEvent::Failed(f) => {
                if f.attempt < self.attempt {
                    return None;
                }
                Some(self.end(Relayed::Failed(f.error)))
            }
        }
    }

    /// Puts the stored chunks `next_seq..until` at the front of the backlog.
    async fn fill_gap(&mut self, until: u64) {
        let Ok(stored) = stored_events(&self.bus, &self.task_id).await else { return };
        let chunks = chunks_by_seq(&stored);
        let missing: Vec<TaskEvent> = chunks
            .range(self.next_seq..until)
            .map(|(seq, text)| {
                TaskEvent::Chunk(bitinglip_bus_schema::TokenChunk {
                    task_id: self.task_id.clone(),
                    attempt: self.attempt,
                    seq: *seq,
                    text: text.clone(),
                })
            })
            .collect();
        for e in missing.into_iter().rev() {
            self.backlog.push_front(e);
        }
    }

    fn backlog_text(&mut self) -> Option<Relayed> {
        match self.backlog.front() {
            Some(TaskEvent::Chunk(c)) if c.seq == self.next_seq => {
                let Some(TaskEvent::Chunk(c)) = self.backlog.pop_front() else { return None };
                self.next_seq = c.seq + 1;
                self.relayed_bytes += c.text.len();
                Some(Relayed::Text { seq: c.seq, text: c.text })
            }
            _ => None,
        }
    }

    fn end(&mut self, r: Relayed) -> Relayed {
        self.finished = true;
        r
    }

    /// Finishes with `done`; text the events never brought (and the events stream no
    /// longer holds) is sent first, when this watch saw the answer from its start.
    fn complete(&mut self, done: TaskCompleted) -> Relayed {
        if self.from_start
            && self.next_seq < done.chunks
            && self.relayed_bytes < done.text.len()
            && done.text.is_char_boundary(self.relayed_bytes)
        {
            let missing = done.text[self.relayed_bytes..].to_string();
            self.relayed_bytes = done.text.len();
            let seq = self.next_seq;
            self.next_seq = done.chunks.max(seq + 1);
            self.pending_done = Some(done);
            return Relayed::Text { seq, text: missing };
        }
        self.end(Relayed::Done(done))
    }

    /// Consults the status record; a final one ends the watch.
    async fn check_record(&mut self) -> Option<Relayed> {
        let req = GetTask { task_id: self.task_id.clone() };
        let reply: TaskStatusReply = self
            .bus
            .request(self.bus.subjects().task_get(), &req, None, Some(Duration::from_secs(5)))
            .await
            .ok()?;
        let TaskStatusReply::Found(record) = reply else { return None };
        match record.state {
            TaskState::Completed => record.result.map(|done| self.complete(done)),
            TaskState::Failed | TaskState::Cancelled => Some(self.end(Relayed::Failed(
                record.error.unwrap_or_else(|| WireError::new(ErrorKind::Internal, "task failed")),
            ))),
            TaskState::Queued | TaskState::Running => None,
        }
    }
}

/// Asks for a task to be cancelled: a queued task is marked cancelled, a running one is
/// stopped by its worker.
pub async fn cancel(bus: &Bus, task_id: &TaskId, reason: &str) -> Result<(), WireError> {
    let req = CancelTask { task_id: task_id.clone(), reason: reason.to_string() };
    match bus.request::<_, bitinglip_bus_schema::Ack>(bus.subjects().task_cancel(task_id), &req, None, None).await {
        Ok(bitinglip_bus_schema::Ack::Ok) => Ok(()),
        Ok(bitinglip_bus_schema::Ack::Error(e)) => Err(e),
        Err(e) => Err(WireError::from(&e)),
    }
}

/// Cancels the task when dropped unless disarmed: a client that goes away mid-request
/// stops the engine's sequence.
pub struct CancelOnDrop {
    bus: Bus,
    task_id: TaskId,
    armed: bool,
}

impl CancelOnDrop {
    /// Armed: dropping it cancels `task_id`.
    pub fn new(bus: &Bus, task_id: &TaskId) -> Self {
        Self { bus: bus.clone(), task_id: task_id.clone(), armed: true }
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
        tokio::spawn(async move {
            if let Err(err) = cancel(&bus, &task_id, "client disconnected").await {
                tracing::warn!(task.id = %task_id, cause = %err, "cancel not delivered");
            }
        });
    }
}
