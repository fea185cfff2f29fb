//! Requests about a task beside submitting and reading it: the parts of an answer kept in
//! the results store, and what workers ask task managers so that no worker writes shared
//! state (a model's queue consumers, a finished task's usage).

use serde::{Deserialize, Serialize};

use crate::{TaskId, WireError};

/// Request on `…task.consumers` (workers): make `model`'s queue consumers, both classes,
/// with the cluster's config (or bring them up to date), and the asking worker's own
/// consumer of the tasks pinned to it (cache-affinity routing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsureConsumers {
    /// The served model name.
    pub model: String,
    /// The asking worker's id: its pinned consumer is made too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

/// Request on `…task.usage` (workers): count the usage of a finished task, as its record
/// says, once (a repeat within ten minutes changes nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordUsage {
    /// The finished task.
    pub task_id: TaskId,
}

/// Request on `…task.<owner>.result`: a part of an answer the results store keeps (a
/// `text_object` or `parts_object` of one of the owner's tasks), from `offset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetResult {
    /// The task the object belongs to.
    pub task_id: TaskId,
    /// The object's name, as the task's record or `completed` event gives it.
    pub name: String,
    /// Where to start, in bytes.
    #[serde(default)]
    pub offset: u64,
}

/// The most bytes one [`ResultReply::Part`] carries.
pub const RESULT_PART_MAX: usize = 512 * 1024;

/// Reply on `…task.<owner>.result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResultReply {
    /// Up to [`RESULT_PART_MAX`] bytes from `offset`; the object is `size` bytes long.
    Part {
        /// Where these bytes start.
        offset: u64,
        /// The bytes (MessagePack `bin`).
        #[serde(with = "crate::codec::bin")]
        data: Vec<u8>,
        /// The whole object's size.
        size: u64,
    },
    /// Not the owner's task, no such object, or the store failed.
    Error(WireError),
}
