//! Batches of the Batch API, one record per batch under its id (`batch_<ulid>`). Every
//! change is a compare-and-swap on the record's revision, so gateways that drive batches
//! at once never lose one another's progress.

use bitinglip_bus_schema::BatchRecord;

use super::{Bucket, Store, StoreError};

/// The batches.
pub struct Batches<'a> {
    bucket: &'a Bucket,
}

impl Store {
    /// The Batch API's batches.
    pub fn batches(&self) -> Batches<'_> {
        Batches { bucket: &self.inner.batches }
    }
}

/// True when `id` can name a batch (`batch_` and a ULID's characters).
pub fn is_id(id: &str) -> bool {
    super::is_prefixed_id(id, "batch_", 64, b"")
}

impl Batches<'_> {
    /// Stores a new batch.
    pub async fn create(&self, batch: &BatchRecord) -> Result<u64, StoreError> {
        if !is_id(&batch.id) {
            return Err(StoreError::Corrupt {
                what: self.bucket.what,
                key: batch.id.clone(),
                message: "not a batch id".into(),
            });
        }
        self.bucket.create(&batch.id, batch).await
    }

    /// The batch `id` with its revision, when it is there.
    pub async fn get(&self, id: &str) -> Result<Option<(BatchRecord, u64)>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        self.bucket.entry(id).await
    }

    /// Writes `batch` only while its record is at `revision`; another revision is a
    /// [`StoreError::Conflict`].
    pub async fn update(&self, batch: &BatchRecord, revision: u64) -> Result<u64, StoreError> {
        self.bucket.update(&batch.id, batch, revision).await
    }

    /// Removes batch `id`'s record (a no-op when absent).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        if !is_id(id) {
            return Ok(());
        }
        self.bucket.delete(id).await
    }

    /// Every batch id.
    pub async fn ids(&self) -> Result<Vec<String>, StoreError> {
        self.bucket.keys(is_id).await
    }
}
