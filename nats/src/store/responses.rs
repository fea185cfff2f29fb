//! Stored Responses API answers, one record per response under its id, each holding the
//! conversation that a later request continues with `previous_response_id`.

use bitinglip_bus_schema::StoredResponse;

use super::{Bucket, Store, StoreError};

/// The stored responses.
pub struct Responses<'a> {
    bucket: &'a Bucket,
}

impl Store {
    /// The stored responses.
    pub fn responses(&self) -> Responses<'_> {
        Responses { bucket: &self.inner.responses }
    }
}

/// True when `id` can be a key of the bucket (`resp_` and a task id's characters).
pub(crate) fn is_id(id: &str) -> bool {
    super::is_prefixed_id(id, "resp_", 128, b"_-")
}

impl Responses<'_> {
    /// Stores `response` (a retry of the same task writes the same record again).
    pub async fn put(&self, response: &StoredResponse) -> Result<(), StoreError> {
        if !is_id(&response.id) {
            return Err(StoreError::Corrupt {
                what: self.bucket.what,
                key: response.id.clone(),
                message: "not a response id".into(),
            });
        }
        self.bucket.put(&response.id, response).await.map(|_| ())
    }

    /// The response `id`, when it is stored.
    pub async fn get(&self, id: &str) -> Result<Option<StoredResponse>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        self.bucket.get(id).await
    }

    /// Deletes the response `id` (a no-op when absent).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        if !is_id(id) {
            return Ok(());
        }
        self.bucket.delete(id).await
    }
}
