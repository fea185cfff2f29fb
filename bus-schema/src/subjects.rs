//! Every NATS subject, stream, consumer and bucket name BitingLip uses, built here and
//! nowhere else.
//!
//! Subjects read general to specific, `<root>.v1.<domain>.<target…>.<verb>`, so that `*`
//! and `>` work at every level. Model ids such as `Qwen/Qwen2.5-0.5B-Instruct` hold `/` and
//! `.`, which are not valid subject tokens; [`encode_token`] maps them, reversibly, onto
//! `[A-Za-z0-9_-]` plus `=XX` hex escapes (`Qwen=2FQwen2=2E5-0=2E5B-Instruct`).

use std::fmt;

use serde::{Deserialize, Serialize};

mod owner;
mod queue;
mod tasks;

pub use owner::{
    client_name_problem, client_owner, is_client_owner, owner_of_token, owner_token, CLIENT_OWNER_PREFIX,
    DEFAULT_CLIENT, NO_OWNER_TOKEN,
};

/// The version token in every subject.
pub const VERSION_TOKEN: &str = "v1";

/// A subject token or root that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject root is empty or holds characters NATS does not allow in tokens.
    #[error("invalid subject root {0:?}: use dot-separated tokens of letters, digits, '-' and '_'")]
    Root(String),
    /// A task id is empty, too long, or holds characters outside `[A-Za-z0-9_-]`.
    #[error("invalid task id {0:?}: use 1 to 128 letters, digits, '-' and '_'")]
    TaskId(String),
    /// A token could not be decoded.
    #[error("invalid encoded token {0:?}")]
    Token(String),
}

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// The longest model id (or node id) accepted anywhere: it becomes a subject token, a
/// KV key and a metric label, so it is capped before it reaches any of them.
pub const MAX_ID_BYTES: usize = 256;

/// Why `id` cannot be a model id, from whichever door it comes (HTTP, a worker's
/// registration, a deployment): empty, over [`MAX_ID_BYTES`], with control characters, or
/// with a `..` segment (an id also names a folder in the hub cache).
pub fn model_id_problem(id: &str) -> Option<String> {
    if id.trim().is_empty() {
        return Some("is empty".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!("is over {MAX_ID_BYTES} bytes"));
    }
    if id.chars().any(char::is_control) {
        return Some("has control characters".into());
    }
    if id.split(['/', '\\']).any(|part| part == "..") {
        return Some("has a `..` segment".into());
    }
    None
}

/// Encodes any string (a model id, a node id) as one subject token that is also a valid
/// JetStream key and consumer name. Bytes outside `[A-Za-z0-9_-]` become `=XX`.
pub fn encode_token(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    for b in raw.bytes() {
        let c = b as char;
        if b.is_ascii() && is_plain(c) {
            out.push(c);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('=');
    }
    out
}

/// Reverses [`encode_token`].
pub fn decode_token(token: &str) -> Result<String, SubjectError> {
    if token == "=" {
        return Ok(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = token.get(i + 1..i + 3).ok_or_else(|| SubjectError::Token(token.into()))?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| SubjectError::Token(token.into()))?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| SubjectError::Token(token.into()))
}

/// A validated task id: 1 to 128 of `[A-Za-z0-9_-]`, so it is one subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaskId(String);

impl TaskId {
    /// Validates `raw` as a task id.
    pub fn parse(raw: impl Into<String>) -> Result<Self, SubjectError> {
        let raw = raw.into();
        if raw.is_empty() || raw.len() > 128 || !raw.chars().all(is_plain) {
            return Err(SubjectError::TaskId(raw));
        }
        Ok(Self(raw))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TaskId {
    type Error = SubjectError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<TaskId> for String {
    fn from(value: TaskId) -> Self {
        value.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds every subject and JetStream name under one root (default `bitinglip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    root: String,
    prefix: String,
    name_prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("bitinglip").expect("the default root is valid")
    }
}

impl Subjects {
    /// Validates the root (one or more dot-separated tokens of `[A-Za-z0-9_-]`).
    pub fn new(root: impl Into<String>) -> Result<Self, SubjectError> {
        let root = root.into();
        let valid = !root.is_empty() && root.split('.').all(|t| !t.is_empty() && t.chars().all(is_plain));
        if !valid {
            return Err(SubjectError::Root(root));
        }
        let name_prefix = root.replace(['.', '-'], "_").to_ascii_uppercase();
        let prefix = format!("{root}.{VERSION_TOKEN}");
        Ok(Self { root, prefix, name_prefix })
    }

    /// The root this builder was made with.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn subject(&self, rest: &[&str]) -> String {
        let mut s = self.prefix.clone();
        for token in rest {
            s.push('.');
            s.push_str(token);
        }
        s
    }

    /// JetStream's advisory that a message of the tasks stream used up its deliveries
    /// (any consumer).
    pub fn max_deliveries_advisory(&self) -> String {
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*", self.tasks_stream())
    }

    // ---- models and cluster -------------------------------------------------------------

    /// Request/reply: list registered models ([`crate::ListModels`] → [`crate::ModelList`]).
    pub fn model_list(&self) -> String {
        self.subject(&["model", "list"])
    }

    /// Request/reply: a worker registers the model it serves
    /// ([`crate::RegisterModel`] → [`crate::Ack`]).
    pub fn model_register(&self) -> String {
        self.subject(&["model", "register"])
    }

    /// Request/reply: download a hub model on a worker node ([`crate::PullModel`] →
    /// [`crate::PullReply`]). Nodes with workers serve it on [`Self::puller_queue_group`].
    pub fn model_pull(&self) -> String {
        self.subject(&["model", "pull"])
    }

    /// Queue group of the nodes that pull models.
    pub fn puller_queue_group(&self) -> String {
        "puller".to_string()
    }

    /// Publish: progress of a pull ([`crate::PullProgress`]).
    pub fn model_progress(&self, model: &str) -> String {
        self.subject(&["model", &encode_token(model), "progress"])
    }

    /// Every model's pull progress (a wildcard, for permissions).
    pub fn all_model_progress(&self) -> String {
        self.subject(&["model", "*", "progress"])
    }

    /// Request/reply: every node's status of the models
    /// ([`crate::GetModelStatus`] → [`crate::ModelStatusList`]).
    pub fn model_status(&self) -> String {
        self.subject(&["model", "status"])
    }

    /// Request/reply: search the hub ([`crate::SearchModels`] → [`crate::SearchResults`]).
    pub fn model_search(&self) -> String {
        self.subject(&["model", "search"])
    }

    /// Request/reply: make sure a known model has replicas, creating an on-demand
    /// deployment when it has none ([`crate::LoadModel`] → [`crate::DeploymentReply`]).
    pub fn model_load(&self) -> String {
        self.subject(&["model", "load"])
    }

    /// Request/reply: set a model's deployment to 0 replicas ([`crate::ModelRef`] →
    /// [`crate::Ack`]).
    pub fn model_unload(&self) -> String {
        self.subject(&["model", "unload"])
    }

    /// Request/reply: remove a model: its deployment, registry entry and node statuses
    /// ([`crate::ModelRef`] → [`crate::Ack`]).
    pub fn model_delete(&self) -> String {
        self.subject(&["model", "delete"])
    }

    /// Request/reply: create or replace a deployment ([`crate::SetDeployment`] →
    /// [`crate::DeploymentReply`]).
    pub fn deployment_set(&self) -> String {
        self.subject(&["deployment", "set"])
    }

    /// Request/reply: remove a deployment ([`crate::DeleteDeployment`] → [`crate::Ack`]).
    pub fn deployment_delete(&self) -> String {
        self.subject(&["deployment", "delete"])
    }

    /// Request/reply: every deployment with its placements ([`crate::ListDeployments`] →
    /// [`crate::DeploymentList`]).
    pub fn deployment_list(&self) -> String {
        self.subject(&["deployment", "list"])
    }

    /// Request/reply: every node's last heartbeat ([`crate::GetClusterStatus`] → [`crate::ClusterStatus`]).
    pub fn cluster_status(&self) -> String {
        self.subject(&["cluster", "status"])
    }

    /// Request/reply: whether node `node_id`'s process is alive. Its heartbeat answers
    /// with an empty message; a request to a node whose connection is gone gets NATS's
    /// no-responders status at once (how a cluster manager confirms a death it was told of).
    pub fn node_alive(&self, node_id: &str) -> String {
        self.subject(&["node", &encode_token(node_id), "alive"])
    }

    /// Every node's [`Self::node_alive`] subject.
    pub fn all_node_alive(&self) -> String {
        self.subject(&["node", "*", "alive"])
    }

    /// The nats-server's event, in its system account, that a client connection closed
    /// (any account). Only the `events` user may subscribe to it.
    pub fn client_disconnects(&self) -> String {
        "$SYS.ACCOUNT.*.DISCONNECT".to_string()
    }

    // ---- JetStream names ----------------------------------------------------------------

    /// The work-queue stream holding accepted tasks.
    pub fn tasks_stream(&self) -> String {
        format!("{}_TASKS", self.name_prefix)
    }

    /// The counter stream of per-minute request and token counts of API keys (for rate
    /// limits; entries expire after two minutes).
    pub fn rates_stream(&self) -> String {
        format!("{}_RATES", self.name_prefix)
    }

    /// The counter stream of daily usage per API key and model (durable).
    pub fn usage_stream(&self) -> String {
        format!("{}_USAGE", self.name_prefix)
    }

    /// Counter of an API key's `field` (`requests` or `tokens`) in one minute (minutes
    /// since the epoch). Internal: only the storage layer reads and writes it.
    pub fn rate_counter(&self, key: &str, minute: u64, field: &str) -> String {
        self.subject(&["rate", &encode_token(key), &minute.to_string(), field])
    }

    /// Every rate counter (the rates stream's subjects).
    pub fn all_rate_counters(&self) -> String {
        self.subject(&["rate", ">"])
    }

    /// Counter of an API key's `field` (`requests`, `prompt_tokens`, `completion_tokens`)
    /// for one model on one day (`YYYY-MM-DD`). Internal.
    pub fn usage_counter(&self, key: &str, model: &str, day: &str, field: &str) -> String {
        self.subject(&["usage", &encode_token(key), &encode_token(model), day, field])
    }

    /// The usage counters of one API key, or of all: `<…>.usage.<key>.<model>.<day>.<field>`.
    pub fn usage_counters(&self, key: Option<&str>) -> String {
        let key = key.map(encode_token).unwrap_or_else(|| "*".to_string());
        self.subject(&["usage", &key, "*", "*", "*"])
    }

    /// Counter of an API key's tokens on one day, every model together. Internal.
    pub fn day_tokens_counter(&self, key: &str, day: &str) -> String {
        self.subject(&["usage-day", &encode_token(key), day])
    }

    /// Every usage counter (the usage stream's subjects).
    pub fn all_usage_counters(&self) -> Vec<String> {
        vec![self.subject(&["usage", ">"]), self.subject(&["usage-day", ">"])]
    }

    /// The limits stream holding task events, for replay and resume.
    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.name_prefix)
    }

    /// The durable pull consumer shared by every worker of one model, for one priority
    /// class.
    pub fn worker_consumer(&self, model: &str, priority: crate::Priority) -> String {
        format!("worker-{}-{}", encode_token(model), priority.as_str())
    }

    /// The durable pull consumer of one tenant's lane of one model's queue for one class:
    /// made by a task manager when it first queues a task of the tenant (a worker may not
    /// make consumers), pulled by every worker of the model.
    pub fn tenant_consumer(&self, model: &str, priority: crate::Priority, tenant: &str) -> String {
        format!("fair-{}-{}-{}", encode_token(model), priority.as_str(), encode_token(tenant))
    }

    /// The durable pull consumer of the tasks pinned to one worker of one model
    /// (cache-affinity routing): the worker pulls it before the shared one; when the
    /// worker is gone, its model's other workers empty it.
    pub fn pinned_consumer(&self, model: &str, worker: &str) -> String {
        format!("pin-{}-{}", encode_token(model), encode_token(worker))
    }

    /// KV bucket of task status records, keyed by task id.
    pub fn tasks_bucket(&self) -> String {
        format!("{}_tasks", self.name_prefix.to_ascii_lowercase())
    }

    /// KV bucket of the model registry, keyed by [`encode_token`] of the model id.
    pub fn models_bucket(&self) -> String {
        format!("{}_models", self.name_prefix.to_ascii_lowercase())
    }

    /// KV bucket of node heartbeats, keyed by [`encode_token`] of the node id.
    pub fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.name_prefix.to_ascii_lowercase())
    }

    /// KV bucket of deployments and placements.
    pub fn deployments_bucket(&self) -> String {
        format!("{}_deployments", self.name_prefix.to_ascii_lowercase())
    }

    /// KV bucket of leases (entries expire after the node TTL unless renewed).
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.name_prefix.to_ascii_lowercase())
    }

    /// KV bucket of API keys (hashed secrets).
    pub fn keys_bucket(&self) -> String {
        format!("{}_keys", self.name_prefix.to_ascii_lowercase())
    }

    /// Object store of answers too large for one message (`<prefix>_results`).
    pub fn results_bucket(&self) -> String {
        format!("{}_results", self.name_prefix.to_ascii_lowercase())
    }

    /// KV bucket of batches (the Batch API).
    pub fn batches_bucket(&self) -> String {
        format!("{}_batches", self.name_prefix.to_ascii_lowercase())
    }

    /// Object store of uploaded and produced files (the Files API).
    pub fn files_bucket(&self) -> String {
        format!("{}_files", self.name_prefix.to_ascii_lowercase())
    }

    /// KV bucket of stored Responses API answers and their conversations.
    pub fn responses_bucket(&self) -> String {
        format!("{}_responses", self.name_prefix.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_id_is_checked_the_same_from_every_door() {
        for ok in ["Qwen/Qwen2.5-0.5B-Instruct", "tiny-chat", "/srv/models/tiny", "a..b"] {
            assert_eq!(model_id_problem(ok), None, "{ok}");
        }
        for bad in ["", "  ", "a/../b", "..", "a\\..\\b", "a\nb", &"x".repeat(MAX_ID_BYTES + 1)] {
            assert!(model_id_problem(bad).is_some(), "{bad:?}");
        }
    }
    use crate::Priority;

    #[test]
    fn model_ids_encode_to_single_tokens_and_back() {
        for id in ["Qwen/Qwen2.5-0.5B-Instruct", "a.b*c>d e", "", "==", "ünï/cødé"] {
            let token = encode_token(id);
            assert!(token.chars().all(|c| is_plain(c) || c == '='), "{token}");
            assert_eq!(decode_token(&token).unwrap(), id);
        }
        assert_eq!(encode_token("Qwen/Qwen2.5-0.5B"), "Qwen=2FQwen2=2E5-0=2E5B");
        assert!(decode_token("abc=Z").is_err());
    }

    #[test]
    fn subjects_are_general_to_specific() {
        let s = Subjects::default();
        let task = TaskId::parse("01J0ABC").unwrap();
        assert_eq!(s.task_submit(Some("0123456789abcdef")), "bitinglip.v1.task.0123456789abcdef.submit");
        assert_eq!(s.task_submit(None), "bitinglip.v1.task.=.submit");
        assert_eq!(s.task_events(Some("client-app"), &task), "bitinglip.v1.task.client-app.01J0ABC.events");
        assert_eq!(s.task_cancel(None, &task), "bitinglip.v1.task.=.01J0ABC.cancel");
        assert_eq!(s.owner_task_events(Some("client-app")), "bitinglip.v1.task.client-app.*.events");
        assert_eq!(s.task_get(), "bitinglip.v1.task.get");
        assert_eq!(s.owner_task_get(Some("client-app")), "bitinglip.v1.task.client-app.get");
        assert_eq!(s.queued_task("org/m.1", Priority::Batch, &task), "bitinglip.v1.queue.org=2Fm=2E1.batch.01J0ABC");
        assert_eq!(s.queue("org/m.1", Priority::Batch), "bitinglip.v1.queue.org=2Fm=2E1.batch.*");
        assert_eq!(s.queue_before_task_subjects("m", Priority::Batch), "bitinglip.v1.queue.m.batch");
        assert_eq!(s.queued_task_anywhere(&task), "bitinglip.v1.queue.*.*.01J0ABC");
        assert_eq!(s.model_queues("m"), "bitinglip.v1.queue.m.>");
        assert_eq!(s.tasks_stream(), "BITINGLIP_TASKS");
        assert_eq!(s.nodes_bucket(), "bitinglip_nodes");
        assert_eq!(s.model_progress("org/m"), "bitinglip.v1.model.org=2Fm.progress");
        assert_eq!(s.all_model_progress(), "bitinglip.v1.model.*.progress");
    }

    #[test]
    fn a_task_subject_names_its_owner() {
        let s = Subjects::new("acme.prod").unwrap();
        let task = TaskId::parse("t1").unwrap();
        for owner in [None, Some("0123456789abcdef"), Some("client-app_1")] {
            assert_eq!(s.owner_of_task_subject(&s.task_events(owner, &task)), Some(owner.map(String::from)));
            assert_eq!(s.owner_of_task_subject(&s.task_submit(owner)), Some(owner.map(String::from)));
        }
        assert_eq!(s.owner_of_task_subject("acme.prod.v1.task.get"), None);
        assert_eq!(s.owner_of_task_subject("bitinglip.v1.task.x.get"), None);
    }

    #[test]
    fn roots_and_task_ids_are_validated() {
        assert!(Subjects::new("acme.prod").is_ok());
        assert_eq!(Subjects::new("acme.prod").unwrap().tasks_stream(), "ACME_PROD_TASKS");
        for bad in ["", "a..b", "a b", "a.*", "a.>", ".a"] {
            assert!(Subjects::new(bad).is_err(), "{bad}");
        }
        assert!(TaskId::parse("ok-1_2").is_ok());
        for bad in ["", "a.b", "a*", "x".repeat(129).as_str()] {
            assert!(TaskId::parse(bad).is_err(), "{bad}");
        }
    }
}
