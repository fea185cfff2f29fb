//! Answers too large for one NATS message, in the results object store (chunked by
//! JetStream's object store), named `<task id>.<attempt>`: the final record and the
//! `completed` event then carry the name instead of the text.

use bitinglip_bus_schema::TaskId;
use tokio::io::AsyncReadExt;

use super::{Store, StoreError};

const WHAT: &str = "results store";

/// Answers longer than this go to the object store (a record or an event must stay well
/// under NATS's 1 MiB message).
pub const INLINE_TEXT_MAX: usize = 256 * 1024;

/// The results object store.
pub struct Results<'a> {
    store: &'a Store,
}

impl Store {
    /// Answers too large for one message.
    pub fn results(&self) -> Results<'_> {
        Results { store: self }
    }
}

impl Results<'_> {
    /// Stores attempt `attempt`'s answer to `task_id`; returns its name.
    pub async fn put(&self, task_id: &TaskId, attempt: u32, text: &str) -> Result<String, StoreError> {
        let name = format!("{task_id}.{attempt}");
        let mut reader = text.as_bytes();
        self.store.inner.results.put(name.as_str(), &mut reader).await.map_err(|e| StoreError::unavailable(WHAT, e))?;
        Ok(name)
    }

    /// The answer stored under `name`, when it is there.
    pub async fn get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut object = match self.store.inner.results.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::unavailable(WHAT, e)),
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|e| StoreError::unavailable(WHAT, e))?;
        String::from_utf8(bytes).map(Some).map_err(|e| StoreError::Corrupt {
            what: WHAT,
            key: name.to_string(),
            message: e.to_string(),
        })
    }
}
