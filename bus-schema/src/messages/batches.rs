//! Files and batches as stored: a batch's record is the whole of its state (the gateways
//! that drive batches keep nothing else), so a batch survives the restart of every node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An uploaded or produced file (its bytes are in the files object store under `id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// `file-<ulid>`.
    pub id: String,
    /// The API key (its id) that owns it.
    #[serde(default)]
    pub owner: Option<String>,
    /// `batch` (uploaded input), `batch_output` (a batch's output or error file).
    pub purpose: String,
    /// The name it was uploaded under (or `batch_<id>_output.jsonl`).
    pub filename: String,
    /// Its size.
    pub bytes: u64,
    /// When it was stored, ms since the epoch.
    pub created_ms: u64,
}

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Its lines are being submitted and run.
    InProgress,
    /// Every line ended; the output and error files are being written.
    Finalizing,
    /// Done: the output and error files are there.
    Completed,
    /// The input could not be run at all.
    Failed,
    /// The completion window passed first; what finished is in the files.
    Expired,
    /// Cancel asked: no more lines start, running ones are stopped.
    Cancelling,
    /// Cancelled: what finished before is in the files.
    Cancelled,
}

impl BatchStatus {
    /// The snake_case name of the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// True once nothing more happens to the batch.
    pub fn is_final(self) -> bool {
        matches!(self, BatchStatus::Completed | BatchStatus::Failed | BatchStatus::Expired | BatchStatus::Cancelled)
    }
}

/// A line that could not run (its request was refused at submit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineError {
    /// The line, from 0.
    pub line: u32,
    /// The error kind (`unknown_model`, `invalid_request`, …).
    pub code: String,
    /// For a person.
    pub message: String,
}

/// A batch: its request, its state, and which lines ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// `batch_<ulid>`; line `n` runs as task `<id>-<n>`.
    pub id: String,
    /// The API key (its id) that created it.
    #[serde(default)]
    pub owner: Option<String>,
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// The JSONL file of requests.
    pub input_file_id: String,
    /// `24h`.
    pub completion_window: String,
    /// Up to 16 pairs of the creator's.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Where it is.
    pub status: BatchStatus,
    /// Lines in the input.
    pub total: u32,
    /// Lines submitted so far (in order: lines `0..submitted`).
    #[serde(default)]
    pub submitted: u32,
    /// Lines that completed.
    #[serde(default)]
    pub completed: u32,
    /// Lines that failed (refused at submit, or failed running).
    #[serde(default)]
    pub failed: u32,
    /// Lines refused at submit.
    #[serde(default)]
    pub refused: Vec<LineError>,
    /// The output file, once written.
    #[serde(default)]
    pub output_file_id: Option<String>,
    /// The error file, once written (when a line failed).
    #[serde(default)]
    pub error_file_id: Option<String>,
    /// Times, ms since the epoch.
    pub created_ms: u64,
    /// When it must have ended.
    pub expires_ms: u64,
    /// When its status changed to each, ms since the epoch.
    #[serde(default)]
    pub times: BTreeMap<String, u64>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// The node whose gateway drives it now, and until when (a lease renewed while it
    /// does; another takes over once it lapses).
    #[serde(default)]
    pub runner: Option<String>,
    /// The lease's end, ms since the epoch.
    #[serde(default)]
    pub runner_until_ms: u64,
    /// Every line from `line` on was refused with this error, without running (its key's
    /// token budget for the day was spent): one entry, whatever the number of lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_from: Option<LineError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    #[test]
    fn files_and_batches_pin_their_fields() {
        pin(
            FileRecord {
                id: "file-1".into(),
                owner: None,
                purpose: "batch".into(),
                filename: "in.jsonl".into(),
                bytes: 3,
                created_ms: 1,
            },
            &["id", "owner", "purpose", "filename", "bytes", "created_ms"],
        );
        let batch = BatchRecord {
            id: "batch_1".into(),
            owner: Some("k".into()),
            endpoint: "/v1/chat/completions".into(),
            input_file_id: "file-1".into(),
            completion_window: "24h".into(),
            metadata: BTreeMap::new(),
            status: BatchStatus::InProgress,
            total: 3,
            submitted: 1,
            completed: 0,
            failed: 0,
            refused: vec![LineError { line: 2, code: "unknown_model".into(), message: "x".into() }],
            output_file_id: None,
            error_file_id: None,
            created_ms: 1,
            expires_ms: 2,
            times: BTreeMap::new(),
            error: None,
            runner: None,
            runner_until_ms: 0,
            refused_from: None,
        };
        pin(
            batch,
            &[
                "id",
                "owner",
                "endpoint",
                "input_file_id",
                "completion_window",
                "metadata",
                "status",
                "total",
                "submitted",
                "completed",
                "failed",
                "refused",
                "output_file_id",
                "error_file_id",
                "created_ms",
                "expires_ms",
                "times",
                "error",
                "runner",
                "runner_until_ms",
            ],
        );
        assert!(BatchStatus::Cancelled.is_final() && !BatchStatus::Cancelling.is_final());
    }
}
