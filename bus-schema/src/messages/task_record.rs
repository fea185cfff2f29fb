//! A task's record and its states, and the requests that read them (`…task.get`,
//! `…task.list`).

use serde::{Deserialize, Serialize};

use crate::{Priority, TaskId, WireError};

/// Request on `…task.get`: read one task's status record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetTask {
    /// Which task.
    pub task_id: TaskId,
}

/// Reply on `…task.get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // a reply, built once and sent; boxing buys nothing
pub enum TaskStatusReply {
    /// The record.
    Found(TaskRecord),
    /// Unknown id (or expired), or the store failed.
    Error(WireError),
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// In the stream, waiting for a worker.
    Queued,
    /// A worker claimed it and is generating.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Stopped at a client's request.
    Cancelled,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 5] =
        [TaskState::Queued, TaskState::Running, TaskState::Completed, TaskState::Failed, TaskState::Cancelled];

    /// The snake_case name used on the wire and in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses a state name.
    pub fn parse(name: &str) -> Option<TaskState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True for completed, failed and cancelled.
    pub fn is_final(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Failed | TaskState::Cancelled)
    }
}

/// A task's status record, kept in the tasks KV bucket under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub task_id: TaskId,
    /// Model id.
    pub model: String,
    /// Current state.
    pub state: TaskState,
    /// Delivery attempt that owns the task (0 while queued). Writes are fenced on it.
    pub attempt: u32,
    /// Worker that claimed the current attempt.
    #[serde(default)]
    pub worker: Option<String>,
    /// Accepted at, ms since the epoch.
    pub created_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_ms: u64,
    /// Final result, once completed.
    #[serde(default)]
    pub result: Option<crate::TaskCompleted>,
    /// Why it failed or was cancelled.
    #[serde(default)]
    pub error: Option<WireError>,
    /// Scheduling class.
    #[serde(default)]
    pub priority: Priority,
    /// JetStream ack subject of the current delivery: a cluster manager that sees the
    /// worker die naks it, so the task is redelivered at once instead of after AckWait.
    #[serde(default)]
    pub ack_subject: Option<String>,
    /// Stream sequence of the message the current attempt runs (a resubmitted copy of the
    /// same task has another, and is dropped).
    #[serde(default)]
    pub stream_seq: u64,
    /// When a cancel was asked for, ms since the epoch.
    #[serde(default)]
    pub cancel_requested_ms: Option<u64>,
    /// From the cancel reaching the worker to the engine's last token, ms.
    #[serde(default)]
    pub cancel_to_stop_ms: Option<f64>,
    /// The API key (its id) the task belongs to, when it came through the gateway.
    #[serde(default)]
    pub owner: Option<String>,
    /// sha256 (hex) of the request, so a reused idempotency key with another request is
    /// refused rather than answered with the old task.
    #[serde(default)]
    pub request_sha256: Option<String>,
}

impl TaskRecord {
    /// A new queued record.
    pub fn queued(task_id: TaskId, model: String, priority: Priority, now_ms: u64) -> Self {
        Self {
            task_id,
            model,
            state: TaskState::Queued,
            attempt: 0,
            worker: None,
            created_ms: now_ms,
            updated_ms: now_ms,
            result: None,
            error: None,
            priority,
            ack_subject: None,
            stream_seq: 0,
            cancel_requested_ms: None,
            cancel_to_stop_ms: None,
            owner: None,
            request_sha256: None,
        }
    }
}

/// Request on `…task.list`: the most recent tasks.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ListTasks {
    /// Most records to return (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Only tasks in this state.
    #[serde(default)]
    pub state: Option<TaskState>,
    /// Only tasks of this API key (its id).
    #[serde(default)]
    pub owner: Option<String>,
    /// A page's cursor (`next` of the page before): only tasks last changed before it.
    #[serde(default)]
    pub before: Option<u64>,
}

/// Reply on `…task.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskList {
    /// Most recently changed first.
    Tasks {
        /// The records.
        tasks: Vec<TaskRecord>,
        /// The cursor of the next page (`ListTasks.before`), when there may be more.
        #[serde(default)]
        next: Option<u64>,
    },
    /// The store could not be read.
    Error(WireError),
}
