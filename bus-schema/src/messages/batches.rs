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

/// The API a batch's lines call (every line's `url`), stored as its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BatchEndpoint {
    /// `/v1/chat/completions`.
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    /// `/v1/completions`.
    #[serde(rename = "/v1/completions")]
    Completions,
    /// `/v1/embeddings`.
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
}

impl BatchEndpoint {
    /// Every endpoint, in the order the API lists them.
    pub const ALL: [BatchEndpoint; 3] =
        [BatchEndpoint::ChatCompletions, BatchEndpoint::Completions, BatchEndpoint::Embeddings];

    /// Its route.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchEndpoint::ChatCompletions => "/v1/chat/completions",
            BatchEndpoint::Completions => "/v1/completions",
            BatchEndpoint::Embeddings => "/v1/embeddings",
        }
    }

    /// The endpoint of `route`, if a batch may call it.
    pub fn of(route: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == route)
    }
}

impl std::fmt::Display for BatchEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a batch's status changed to each, ms since the epoch (stored as a map of the
/// statuses' names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchTimes {
    /// Created (its lines began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<u64>,
    /// Every line ended; its files are being written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizing: Option<u64>,
    /// Done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
    /// Failed as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    /// Its window passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired: Option<u64>,
    /// Cancel asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelling: Option<u64>,
    /// Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<u64>,
}

impl BatchTimes {
    /// Records that the batch reached `status` at `ms`.
    pub fn set(&mut self, status: BatchStatus, ms: u64) {
        let slot = match status {
            BatchStatus::InProgress => &mut self.in_progress,
            BatchStatus::Finalizing => &mut self.finalizing,
            BatchStatus::Completed => &mut self.completed,
            BatchStatus::Failed => &mut self.failed,
            BatchStatus::Expired => &mut self.expired,
            BatchStatus::Cancelling => &mut self.cancelling,
            BatchStatus::Cancelled => &mut self.cancelled,
        };
        *slot = Some(ms);
    }

    /// When the batch reached `status`, if it did.
    pub fn at(&self, status: BatchStatus) -> Option<u64> {
        match status {
            BatchStatus::InProgress => self.in_progress,
            BatchStatus::Finalizing => self.finalizing,
            BatchStatus::Completed => self.completed,
            BatchStatus::Failed => self.failed,
            BatchStatus::Expired => self.expired,
            BatchStatus::Cancelling => self.cancelling,
            BatchStatus::Cancelled => self.cancelled,
        }
    }

    /// The latest change.
    pub fn latest(&self) -> Option<u64> {
        use BatchStatus::*;
        [InProgress, Finalizing, Completed, Failed, Expired, Cancelling, Cancelled]
            .into_iter()
            .filter_map(|s| self.at(s))
            .max()
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
    /// The API its lines call.
    pub endpoint: BatchEndpoint,
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
    pub times: BatchTimes,
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
            endpoint: BatchEndpoint::ChatCompletions,
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
            times: BatchTimes::default(),
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

    #[test]
    fn endpoints_and_times_read_as_they_were_stored() {
        for e in BatchEndpoint::ALL {
            let bytes = rmp_serde::to_vec_named(&e).unwrap();
            assert_eq!(bytes, rmp_serde::to_vec_named(e.as_str()).unwrap());
            assert_eq!(BatchEndpoint::of(e.as_str()), Some(e));
        }
        assert_eq!(BatchEndpoint::of("/v1/responses"), None);
        // Times were a map of status names: such a record still reads.
        let old = BTreeMap::from([("in_progress".to_string(), 5u64), ("cancelling".to_string(), 9)]);
        let times: BatchTimes = rmp_serde::from_slice(&rmp_serde::to_vec_named(&old).unwrap()).unwrap();
        assert_eq!((times.at(BatchStatus::InProgress), times.at(BatchStatus::Cancelling)), (Some(5), Some(9)));
        assert_eq!(times.latest(), Some(9));
        let mut t = BatchTimes::default();
        t.set(BatchStatus::Finalizing, 3);
        assert_eq!(
            rmp_serde::to_vec_named(&t).unwrap(),
            rmp_serde::to_vec_named(&BTreeMap::from([("finalizing", 3u64)])).unwrap()
        );
    }
}
