//! Following one task's events as a client: in order, without repeats, and with a
//! fallback to the task's status record when the events go quiet (a lost final event, or
//! a retried submit whose task had already finished). The gateway and the CLI both use it.

use std::time::Duration;

use async_nats::Subscriber;
use bitinglip_bus_schema::{
    CancelTask, ErrorKind, GetTask, TaskCompleted, TaskEvent, TaskId, TaskState, TaskStatusReply, WireError,
};
use bitinglip_nats::Bus;
use futures::StreamExt;

/// What the client is told next.
#[derive(Debug)]
pub enum Relayed {
    /// More text.
    Text(String),
    /// Finished; no more follows.
    Done(TaskCompleted),
    /// Failed; no more follows.
    Failed(WireError),
}

/// A task's events, as seen by one client.
pub struct TaskWatch {
    bus: Bus,
    sub: Subscriber,
    task_id: TaskId,
    next_seq: u64,
    relayed_bytes: usize,
    finished: bool,
}

/// How long without any event before the status record is consulted.
const QUIET: Duration = Duration::from_secs(5);

impl TaskWatch {
    /// Subscribes to the task's events. Call before submitting, so nothing is missed.
    pub async fn subscribe(bus: &Bus, task_id: &TaskId) -> Result<Self, WireError> {
        let sub = bus.subscribe(bus.subjects().task_events(task_id)).await.map_err(|e| WireError::from(&e))?;
        Ok(Self { bus: bus.clone(), sub, task_id: task_id.clone(), next_seq: 0, relayed_bytes: 0, finished: false })
    }

    /// The next thing to tell the client; `None` after the end.
    pub async fn next(&mut self) -> Option<Relayed> {
        if self.finished {
            return None;
        }
        loop {
            let msg = match tokio::time::timeout(QUIET, self.sub.next()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => return Some(self.end(Relayed::Failed(WireError::new(ErrorKind::Unavailable, "event subscription closed")))),
                Err(_) => match self.from_record().await {
                    Some(r) => return Some(r),
                    None => continue,
                },
            };
            let event = match self.bus.decode::<TaskEvent>(&msg) {
                Ok(e) => e.envelope.body,
                Err(err) => {
                    tracing::warn!(task.id = %self.task_id, cause = %err, "undecodable event ignored");
                    continue;
                }
            };
            match event {
                TaskEvent::Started(_) => continue,
                TaskEvent::Chunk(c) => {
                    if c.seq < self.next_seq {
                        continue; // a repeat (another attempt re-sent what we have)
                    }
                    if c.seq > self.next_seq {
                        tracing::warn!(task.id = %self.task_id, expected = self.next_seq, got = c.seq, "gap in task events");
                    }
                    self.next_seq = c.seq + 1;
                    self.relayed_bytes += c.text.len();
                    return Some(Relayed::Text(c.text));
                }
                TaskEvent::Completed(done) => return Some(self.complete(done)),
                TaskEvent::Failed(f) => return Some(self.end(Relayed::Failed(f.error))),
            }
        }
    }

    fn end(&mut self, r: Relayed) -> Relayed {
        self.finished = true;
        r
    }

    /// Finishes with `done`; text the events never brought is sent first.
    fn complete(&mut self, done: TaskCompleted) -> Relayed {
        if self.relayed_bytes < done.text.len() && done.text.is_char_boundary(self.relayed_bytes) {
            let missing = done.text[self.relayed_bytes..].to_string();
            self.relayed_bytes = done.text.len();
            return Relayed::Text(missing);
        }
        self.end(Relayed::Done(done))
    }

    /// Consults the status record; a final one ends the watch.
    async fn from_record(&mut self) -> Option<Relayed> {
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

    /// True once the final event was relayed.
    pub fn is_finished(&self) -> bool {
        self.finished
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
            let cancel = CancelTask { task_id: task_id.clone(), reason: "client disconnected".into() };
            let subject = bus.subjects().task_cancel(&task_id);
            if let Err(err) = bus.publish(subject, &cancel, None).await {
                tracing::warn!(task.id = %task_id, cause = %err, "cancel not published");
            }
        });
    }
}
