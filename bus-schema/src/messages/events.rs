//! What happens to a task, published on its events subject, and cancelling it.

use serde::{Deserialize, Serialize};

use crate::{TaskId, WireError};

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced an end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
    /// Cancelled by a client.
    Cancelled,
    /// The engine failed.
    Error,
    /// The answer is a call of one or more tools (`tool_calls`).
    ToolCalls,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts and timings of one task.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt (after the chat template).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// From the worker's claim to the first generated token, ms.
    pub time_to_first_token_ms: f64,
    /// From the worker's claim to the last token, ms.
    pub total_time_ms: f64,
    /// From acceptance to the worker's claim (time in the queue), ms.
    #[serde(default)]
    pub queue_time_ms: f64,
    /// Of the prompt tokens, those the engine took from its prefix cache instead of
    /// computing them (an earlier sequence began the same way).
    #[serde(default)]
    pub cached_tokens: u32,
}

/// An event of one task, on `…task.<id>.events`. `seq` orders chunks; events of an older
/// attempt than the latest seen are stale and must be ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEvent {
    /// A worker claimed the task.
    Started(TaskStarted),
    /// Generated text.
    Chunk(TokenChunk),
    /// The task finished; no more events follow.
    Completed(TaskCompleted),
    /// The task failed; no more events follow.
    Failed(TaskFailed),
}

impl TaskEvent {
    /// The task this event belongs to.
    pub fn task_id(&self) -> &TaskId {
        match self {
            TaskEvent::Started(e) => &e.task_id,
            TaskEvent::Chunk(e) => &e.task_id,
            TaskEvent::Completed(e) => &e.task_id,
            TaskEvent::Failed(e) => &e.task_id,
        }
    }

    /// True when no more events follow.
    pub fn is_final(&self) -> bool {
        matches!(self, TaskEvent::Completed(_) | TaskEvent::Failed(_))
    }
}

/// A worker claimed the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStarted {
    /// The task.
    pub task_id: TaskId,
    /// Delivery attempt, from 1.
    pub attempt: u32,
    /// The worker's id.
    pub worker: String,
    /// Number of chunks already emitted by earlier attempts; this attempt continues after them.
    #[serde(default)]
    pub resume_from_seq: u64,
}

/// Generated text, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenChunk {
    /// The task.
    pub task_id: TaskId,
    /// Delivery attempt that produced it.
    pub attempt: u32,
    /// Position of this chunk in the task's answer, from 0, without gaps.
    pub seq: u64,
    /// The text of this chunk (one or more tokens).
    pub text: String,
    /// The log probabilities of this chunk's tokens, when the request asked for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<crate::TokenLogprob>,
    /// Tool calls the engine recognized in the output (with `tool_choice` `auto`); the
    /// text of a recognized call is not in `text`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::ToolCall>,
}

impl TokenChunk {
    /// A chunk of `text` alone.
    pub fn text(task_id: TaskId, attempt: u32, seq: u64, text: String) -> Self {
        Self { task_id, attempt, seq, text, logprobs: vec![], tool_calls: vec![] }
    }
}

/// The task finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskCompleted {
    /// The task.
    pub task_id: TaskId,
    /// Delivery attempt that finished it.
    pub attempt: u32,
    /// The whole answer.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Counts and timings.
    pub usage: Usage,
    /// Number of chunks published before this event.
    pub chunks: u64,
    /// An answer too large for one message is not in `text` (empty then) but in the
    /// results object store under this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_object: Option<String>,
    /// The answer's tool calls (`finish_reason` `tool_calls`); `text` then holds what the
    /// model generated for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::ToolCall>,
    /// Every generated token's log probability, when the request asked for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<crate::TokenLogprob>,
    /// An embedding task's vectors, one per input text, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<Vec<f32>>,
    /// When `tool_calls`, `logprobs` and `embeddings` together are too large for one
    /// message, they are not here (empty then) but in the results object store under this
    /// name, as a MessagePack [`LargeParts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts_object: Option<String>,
}

/// The parts of a [`TaskCompleted`] kept in the results object store when too large for
/// one message (see `parts_object`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LargeParts {
    /// The answer's tool calls.
    #[serde(default)]
    pub tool_calls: Vec<crate::ToolCall>,
    /// Every generated token's log probability.
    #[serde(default)]
    pub logprobs: Vec<crate::TokenLogprob>,
    /// An embedding task's vectors.
    #[serde(default)]
    pub embeddings: Vec<Vec<f32>>,
}

/// The task failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskFailed {
    /// The task.
    pub task_id: TaskId,
    /// Delivery attempt that failed.
    pub attempt: u32,
    /// Why.
    pub error: WireError,
}

/// Published on `…task.<id>.cancel`: stop the task wherever it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelTask {
    /// The task.
    pub task_id: TaskId,
    /// Why (for logs).
    #[serde(default)]
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;
    use crate::ErrorKind;

    fn id() -> TaskId {
        TaskId::parse("t1").unwrap()
    }

    #[test]
    fn events_pin_their_fields() {
        pin(
            TaskEvent::Started(TaskStarted { task_id: id(), attempt: 1, worker: "w".into(), resume_from_seq: 0 }),
            &["type", "task_id", "attempt", "worker", "resume_from_seq"],
        );
        pin(
            TaskEvent::Chunk(TokenChunk::text(id(), 1, 3, "hé".into())),
            &["type", "task_id", "attempt", "seq", "text"],
        );
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 4,
            time_to_first_token_ms: 1.5,
            total_time_ms: 9.0,
            queue_time_ms: 0.5,
            cached_tokens: 2,
        };
        pin(
            TaskEvent::Completed(TaskCompleted {
                task_id: id(),
                attempt: 1,
                text: "abc".into(),
                finish_reason: FinishReason::Length,
                usage,
                chunks: 4,
                text_object: None,
                tool_calls: vec![],
                logprobs: vec![],
                embeddings: vec![],
                parts_object: None,
            }),
            &["type", "task_id", "attempt", "text", "finish_reason", "usage", "chunks"],
        );
        pin(LargeParts::default(), &["tool_calls", "logprobs", "embeddings"]);
        pin(
            usage,
            &[
                "prompt_tokens",
                "completion_tokens",
                "time_to_first_token_ms",
                "total_time_ms",
                "queue_time_ms",
                "cached_tokens",
            ],
        );
        pin(
            TaskEvent::Failed(TaskFailed { task_id: id(), attempt: 2, error: WireError::new(ErrorKind::Engine, "x") }),
            &["type", "task_id", "attempt", "error"],
        );
        pin(CancelTask { task_id: id(), reason: "client left".into() }, &["task_id", "reason"]);
    }
}
