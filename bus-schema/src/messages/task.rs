//! Submitting a task: the chat, its class, the request and its answer, and the task as queued.

use serde::{Deserialize, Serialize};

use crate::{TaskId, TaskRecord, WireError};

/// Who wrote a message of the conversation.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or `tool`).
    pub role: String,
    /// The text.
    pub content: String,
    /// An assistant message's calls of tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<crate::ToolCall>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message of `role` with `content` alone.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), ..Self::default() }
    }
}

/// Scheduling class of a task. Interactive tasks are served first; batch is never starved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// A person is waiting (the default).
    #[default]
    Interactive,
    /// Throughput work.
    Batch,
}

impl Priority {
    /// The subject token of this class.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }

    /// The class a subject token (or metadata value) names.
    pub fn parse(token: &str) -> Option<Priority> {
        [Priority::Interactive, Priority::Batch].into_iter().find(|p| p.as_str() == token)
    }
}

/// What to generate: the OpenAI chat-completion fields BitingLip understands. Every field
/// after `seed` is optional on the wire and left out when unset.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatParams {
    /// Model id as registered (`Qwen/Qwen2.5-0.5B-Instruct`, or a local model's name).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate; the worker clamps it to what the context allows.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, 0 to 1.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Strings that end the generation.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Sampling seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// A raw text prompt (a legacy completion): generated after as it is, with no chat
    /// template, instead of `messages` (then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<crate::ToolSpec>,
    /// Whether and which tool it must call (`auto` when absent).
    #[serde(default, skip_serializing_if = "crate::ToolChoice::is_auto")]
    pub tool_choice: crate::ToolChoice,
    /// False: at most one tool call (absent: any number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// The form the answer must take (constrained decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<crate::OutputFormat>,
    /// Return each generated token's log probability, with this many of the most likely
    /// tokens at each position (0 to 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Penalty on tokens already present, -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Penalty by how often a token already appeared, -2 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Added to the logits of these token ids, -100 to 100: pairs `[token, bias]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logit_bias: Vec<(u32, f32)>,
    /// The end user the request is made for (OpenAI's `user`), for the caller's records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Texts to embed (an embedding model's task), instead of `messages` (then empty):
    /// the answer is one vector per text, in `TaskCompleted.embeddings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input: Vec<String>,
    /// Embeddings only: cut each vector to its first this many values (renormalized), for
    /// models trained so that a prefix is itself an embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// Which conversation (or other family of requests sharing a prompt prefix) this is
    /// (OpenAI's `prompt_cache_key`): cache-affinity routing sends requests with the same
    /// key to the same worker while it has room. Absent: the prompt's beginning decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_key: Option<String>,
}

/// Request on `…task.submit`: queue a chat task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The generation itself.
    pub chat: ChatParams,
    /// Caller-chosen task id. Subscribe to the task's events subject before submitting
    /// to see every event live. When absent, the task manager assigns one.
    #[serde(default)]
    pub task_id: Option<TaskId>,
    /// Retries with the same key within the dedupe window return the same task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Scheduling class.
    #[serde(default)]
    pub priority: Priority,
    /// When no worker has the model loaded: true (default) queues the task while a
    /// replica loads; false answers `model_loading` (and still starts the load).
    #[serde(default = "yes")]
    pub wait_for_model: bool,
    /// Who the task belongs to: always the owner its submit subject names
    /// (`…task.<owner>.submit`), whatever a sender put here. An API key's id for a
    /// gateway's task (only that key, or an admin key, sees it over HTTP), `client-<name>`
    /// for a NATS client identity's. Idempotency keys are scoped to it.
    #[serde(default)]
    pub owner: Option<String>,
    /// True when the submitter has just made `task_id` up (a new ULID), so no earlier
    /// task can have it: the task manager then does not look for one before queueing (a
    /// retry with the same id within `jetstream.dedupe_window` is still the same task).
    /// Leave it false for an id that may have been used before. Honoured only on an API
    /// key's or an owner-less subject (gateways, admin): a NATS client identity's ids are
    /// always looked up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_id: bool,
    /// The tenant whose fair share of a busy model the task is dispatched under, and its
    /// weight: set by gateways from the API key (honoured only on an API key's or an
    /// owner-less subject). A NATS client identity's tasks are always its own tenant
    /// (`client-<name>`), weighted by `task_manager.client_limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// See `tenant`; 1 to 1000, absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl ChatParams {
    /// One user message to `model`, every sampling field left to its default.
    pub fn user(model: impl Into<String>, content: impl Into<String>) -> Self {
        Self { model: model.into(), messages: vec![ChatMessage::new("user", content)], ..Self::default() }
    }
}

impl SubmitRequest {
    /// A submit of `chat` with a new task id, no idempotency key, the interactive class,
    /// waiting for the model, and no owner.
    pub fn new(chat: ChatParams) -> Self {
        Self {
            chat,
            task_id: None,
            idempotency_key: None,
            priority: Priority::Interactive,
            wait_for_model: true,
            owner: None,
            new_id: false,
            tenant: None,
            weight: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// Reply on `…task.submit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SubmitReply {
    /// Stored durably in the tasks stream: from now on the task cannot be lost.
    Accepted(TaskAccepted),
    /// Not queued; nothing was stored.
    Rejected(WireError),
}

/// The task is in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAccepted {
    /// The task's id.
    pub task_id: TaskId,
    /// The subject its events are published on.
    pub events_subject: String,
    /// True when this was a retry of an earlier submit (same id or idempotency key).
    #[serde(default)]
    pub duplicate: bool,
}

/// The message stored in the tasks stream: what a worker runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's id (also the stream message's `Nats-Msg-Id`).
    pub task_id: TaskId,
    /// The generation.
    pub chat: ChatParams,
    /// Scheduling class.
    pub priority: Priority,
    /// When the task manager accepted it, ms since the epoch.
    pub accepted_ms: u64,
    /// The API key (its id) the task belongs to, as submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// sha256 of the request as validated (an idempotency key reused with another
    /// request is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sha256: Option<String>,
    /// The tenant it is dispatched under (its queue subject names it); absent on tasks
    /// queued before tenants: the owner's, or `=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The tenant's weight when the task was accepted (absent: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl TaskSpec {
    /// The tenant it is dispatched under.
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().or(self.owner.as_deref()).unwrap_or("=")
    }

    /// Its tenant's weight, 1 to 1000.
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1).clamp(1, crate::MAX_WEIGHT)
    }

    /// The record of this task while it waits in its queue (the stream message is its
    /// only record until a worker claims it).
    pub fn queued_record(&self) -> TaskRecord {
        let mut r = TaskRecord::queued(self.task_id.clone(), self.chat.model.clone(), self.priority, self.accepted_ms);
        r.owner = self.owner.clone();
        r.request_sha256 = self.request_sha256.clone();
        r
    }
}

#[cfg(test)]
mod tests {
    use crate::{GetTask, ListTasks, TaskList, TaskRecord, TaskState, TaskStatusReply};

    use super::*;
    use crate::messages::testing::pin;
    use crate::ErrorKind;

    pub(crate) fn chat() -> ChatParams {
        ChatParams {
            model: "Qwen/Qwen2.5-0.5B-Instruct".into(),
            messages: vec![ChatMessage::new("user", "hi")],
            max_tokens: Some(16),
            temperature: Some(0.5),
            top_p: None,
            stop: vec!["\n".into()],
            seed: Some(1),
            ..ChatParams::default()
        }
    }

    #[test]
    fn submit_request_pins_its_fields() {
        let req = SubmitRequest {
            chat: chat(),
            task_id: Some(TaskId::parse("t1").unwrap()),
            idempotency_key: Some("k".into()),
            priority: Priority::Batch,
            wait_for_model: false,
            owner: Some("k1".into()),
            new_id: true,
            tenant: Some("team-a".into()),
            weight: Some(2),
        };
        let fields = ["chat", "task_id", "idempotency_key", "priority", "wait_for_model", "owner", "new_id", "tenant"];
        pin(req, &[&fields[..], &["weight"]].concat());
        pin(chat(), &["model", "messages", "max_tokens", "temperature", "top_p", "stop", "seed"]);
        pin(ChatMessage::new("user", "x"), &["role", "content"]);
        let full = ChatParams {
            prompt: Some("p".into()),
            tools: vec![crate::ToolSpec { name: "f".into(), description: None, parameters: "{}".into() }],
            tool_choice: crate::ToolChoice::Required,
            parallel_tool_calls: Some(false),
            format: Some(crate::OutputFormat::JsonObject),
            logprobs: Some(2),
            presence_penalty: Some(0.5),
            frequency_penalty: Some(0.5),
            logit_bias: vec![(5, -100.0)],
            user: Some("u".into()),
            input: vec!["e".into()],
            dimensions: Some(8),
            prompt_cache_key: Some("c".into()),
            ..chat()
        };
        pin(
            full,
            &[
                "model",
                "messages",
                "max_tokens",
                "temperature",
                "top_p",
                "stop",
                "seed",
                "prompt",
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "format",
                "logprobs",
                "presence_penalty",
                "frequency_penalty",
                "logit_bias",
                "user",
                "input",
                "dimensions",
                "prompt_cache_key",
            ],
        );
        let call = crate::ToolCall { id: "call_1".into(), name: "f".into(), arguments: "{}".into() };
        pin(
            ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") },
            &["role", "content", "tool_calls"],
        );
        pin(
            ChatMessage { tool_call_id: Some("call_1".into()), ..ChatMessage::new("tool", "42") },
            &["role", "content", "tool_call_id"],
        );
    }

    #[test]
    fn submit_request_needs_only_chat_model_and_messages() {
        #[derive(Serialize)]
        struct Minimal {
            chat: MinimalChat,
        }
        #[derive(Serialize)]
        struct MinimalChat {
            model: &'static str,
            messages: Vec<ChatMessage>,
        }
        let env = crate::Envelope::new("x", 1, "py", Minimal { chat: MinimalChat { model: "m", messages: vec![] } });
        let bytes = rmp_serde::to_vec_named(&env).unwrap();
        let req: SubmitRequest = crate::decode_body(&bytes, 1 << 20).unwrap();
        assert_eq!(req.priority, Priority::Interactive);
        assert_eq!(req.task_id, None);
        assert!(req.wait_for_model);
    }

    #[test]
    fn submit_reply_pins_its_fields() {
        pin(
            SubmitReply::Accepted(TaskAccepted {
                task_id: TaskId::parse("t1").unwrap(),
                events_subject: "bitinglip.v1.task.t1.events".into(),
                duplicate: false,
            }),
            &["type", "task_id", "events_subject", "duplicate"],
        );
        pin(
            SubmitReply::Rejected(WireError::new(ErrorKind::UnknownModel, "no such model")),
            &["type", "kind", "message"],
        );
    }

    #[test]
    fn task_spec_and_record_pin_their_fields() {
        let id = TaskId::parse("t1").unwrap();
        pin(
            TaskSpec {
                task_id: id.clone(),
                chat: chat(),
                priority: Priority::Interactive,
                accepted_ms: 5,
                owner: Some("k1".into()),
                request_sha256: Some("ab".into()),
                tenant: Some("team-a".into()),
                weight: Some(2),
            },
            &["task_id", "chat", "priority", "accepted_ms", "owner", "request_sha256", "tenant", "weight"],
        );
        let mut record = TaskRecord::queued(id.clone(), "m".into(), Priority::Batch, 1);
        record.state = TaskState::Running;
        record.attempt = 2;
        record.worker = Some("w".into());
        const RECORD: [&str; 16] = [
            "task_id",
            "model",
            "state",
            "attempt",
            "worker",
            "created_ms",
            "updated_ms",
            "result",
            "error",
            "priority",
            "ack_subject",
            "stream_seq",
            "cancel_requested_ms",
            "cancel_to_stop_ms",
            "owner",
            "request_sha256",
        ];
        pin(record.clone(), &RECORD);
        pin(GetTask { task_id: id }, &["task_id"]);
        let mut tagged = RECORD.to_vec();
        tagged.push("type");
        pin(TaskStatusReply::Found(record.clone()), &tagged);
        pin(
            ListTasks { limit: Some(5), state: Some(TaskState::Queued), owner: None, before: Some(9) },
            &["limit", "state", "owner", "before"],
        );
        pin(TaskList::Tasks { tasks: vec![record], next: Some(3) }, &["type", "tasks", "next"]);
    }

    #[test]
    fn invalid_task_ids_are_refused_when_decoding() {
        let env = crate::Envelope::new("x", 1, "py", GetTask { task_id: TaskId::parse("ok").unwrap() });
        let mut bytes = rmp_serde::to_vec_named(&env).unwrap();
        let pos = bytes.windows(2).position(|w| w == b"ok").unwrap();
        bytes[pos] = b'.';
        assert!(crate::decode_body::<GetTask>(&bytes, 1 << 20).is_err());
    }
}
