//! Answers too large for one NATS message, in the results object store (chunked by
//! JetStream's object store), named `<task id>.<attempt>`: the final record and the
//! `completed` event then carry the name instead of the text. Likewise the other large
//! parts of an answer (tool calls, logprobs, embeddings), as one object named
//! `<task id>.<attempt>.parts` (in the envelope every stored value has), so that a record
//! and an event stay under the payload limit whatever the request asked for.

use bitinglip_bus_schema::{LargeParts, TaskCompleted, TaskId};
use tokio::io::AsyncReadExt;

use super::{Store, StoreError};

const WHAT: &str = "results store";

/// Answers longer than this go to the object store (a record or an event must stay well
/// under NATS's 1 MiB message).
pub const INLINE_TEXT_MAX: usize = 256 * 1024;

/// A final record or `completed` event whose encoding is larger than this has its other
/// large parts moved to the object store too (with the text at most [`INLINE_TEXT_MAX`],
/// what is left stays well under NATS's 1 MiB message).
pub const INLINE_PARTS_MAX: usize = 256 * 1024;

/// The largest parts object read back (a task's logprobs at 20 alternatives a token for
/// 32k tokens are about 25 MiB).
const MAX_PARTS_BYTES: usize = 256 * 1024 * 1024;

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
        let Some(bytes) = self.bytes(name).await? else { return Ok(None) };
        String::from_utf8(bytes).map(Some).map_err(|e| StoreError::Corrupt {
            what: WHAT,
            key: name.to_string(),
            message: e.to_string(),
        })
    }

    async fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut object = match self.store.inner.results.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::unavailable(WHAT, e)),
        };
        let mut bytes = Vec::new();
        (&mut object)
            .take(MAX_PARTS_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StoreError::unavailable(WHAT, e))?;
        Ok(Some(bytes))
    }

    /// Up to `max` bytes of the object `name` from `offset`, and the object's size; `None`
    /// when there is no such object.
    pub async fn part(&self, name: &str, offset: u64, max: usize) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let mut object = match self.store.inner.results.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::unavailable(WHAT, e)),
        };
        let size = object.info().size as u64;
        let start = offset.min(size);
        let io = |e: std::io::Error| StoreError::unavailable(WHAT, e);
        // Objects are read in order: skip to the offset, then take at most `max`.
        tokio::io::copy(&mut (&mut object).take(start), &mut tokio::io::sink()).await.map_err(io)?;
        let mut bytes = Vec::with_capacity(max.min((size - start) as usize));
        (&mut object).take(max as u64).read_to_end(&mut bytes).await.map_err(io)?;
        Ok(Some((bytes, size)))
    }

    /// Moves `done`'s tool calls, logprobs and embeddings to the object store when its
    /// encoding is over [`INLINE_PARTS_MAX`]; `done` then names them in `parts_object`.
    /// True when it did.
    pub async fn offload_parts(&self, done: &mut TaskCompleted) -> Result<bool, StoreError> {
        let source = self.store.inner.node_id.as_str();
        let size = super::envelope(source, &*done).map(|v| v.len()).unwrap_or(usize::MAX);
        if size <= INLINE_PARTS_MAX {
            return Ok(false);
        }
        let parts = LargeParts {
            tool_calls: std::mem::take(&mut done.tool_calls),
            logprobs: std::mem::take(&mut done.logprobs),
            embeddings: std::mem::take(&mut done.embeddings),
        };
        let bytes = super::envelope(source, &parts).map_err(|e| StoreError::unavailable(WHAT, e))?;
        let name = format!("{}.{}.parts", done.task_id, done.attempt);
        let mut reader: &[u8] = &bytes;
        let put = self.store.inner.results.put(name.as_str(), &mut reader).await;
        if let Err(e) = put {
            // Put them back: the caller hands the task back and tries again.
            done.tool_calls = parts.tool_calls;
            done.logprobs = parts.logprobs;
            done.embeddings = parts.embeddings;
            return Err(StoreError::unavailable(WHAT, e));
        }
        done.parts_object = Some(name);
        Ok(true)
    }

    /// Fills `done`'s tool calls, logprobs and embeddings back in from the object store
    /// when they were moved there.
    pub async fn resolve_parts(&self, done: &mut TaskCompleted) -> Result<(), StoreError> {
        let Some(name) = done.parts_object.clone() else { return Ok(()) };
        let corrupt = |message: String| StoreError::Corrupt { what: WHAT, key: name.clone(), message };
        let bytes = self.bytes(&name).await?.ok_or_else(|| corrupt("the answer's parts are gone".into()))?;
        if bytes.len() > MAX_PARTS_BYTES {
            return Err(corrupt(format!("over {MAX_PARTS_BYTES} bytes")));
        }
        let parts: LargeParts =
            bitinglip_bus_schema::decode_body(&bytes, MAX_PARTS_BYTES).map_err(|e| corrupt(e.to_string()))?;
        done.tool_calls = parts.tool_calls;
        done.logprobs = parts.logprobs;
        done.embeddings = parts.embeddings;
        done.parts_object = None;
        Ok(())
    }
}
