//! The task events stream: it captures every event workers publish on
//! `…task.<owner>.<id>.events`
//! (core NATS, no per-token round trip) so that a client can read back what it missed
//! and a new attempt can continue after what earlier ones streamed.

use bitinglip_bus_schema::{decode_body, TaskEvent, TaskId};

use super::{Store, StoreError, MAX_VALUE_BYTES};

const WHAT: &str = "events stream";

impl Store {
    /// Every event stored for `owner`'s task `task_id`, in publication order. Events that
    /// do not decode are skipped.
    pub async fn stored_events(&self, owner: Option<&str>, task_id: &TaskId) -> Result<Vec<TaskEvent>, StoreError> {
        let inner = &self.inner;
        let messages = super::read_matching(
            &inner.js,
            inner.subjects.events_stream(),
            inner.subjects.task_events(owner, task_id),
            false,
            WHAT,
        )
        .await?;
        Ok(messages.iter().filter_map(|(_, payload)| decode_body::<TaskEvent>(payload, MAX_VALUE_BYTES).ok()).collect())
    }
}
