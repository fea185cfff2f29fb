//! The one envelope every payload travels in.

use serde::{Deserialize, Serialize};

/// Schema version written by this build. A receiver accepts any envelope of the same
/// version; fields added later are `#[serde(default)]`, so older readers ignore them and
/// newer readers fill them in.
pub const SCHEMA_VERSION: u16 = 1;

/// Wraps every message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Schema version of the sender ([`SCHEMA_VERSION`]).
    pub v: u16,
    /// Unique message id (a ULID from BitingLip nodes; any unique string from clients).
    pub id: String,
    /// Sender's wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The sending node's id, or a client name.
    pub source: String,
    /// The message itself.
    pub body: T,
}

impl<T> Envelope<T> {
    /// Wraps `body` with the current schema version.
    pub fn new(id: impl Into<String>, time_ms: u64, source: impl Into<String>, body: T) -> Self {
        Self { v: SCHEMA_VERSION, id: id.into(), time_ms, source: source.into(), body }
    }
}
