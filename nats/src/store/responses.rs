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
fn is_id(id: &str) -> bool {
    id.strip_prefix("resp_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 128
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
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

#[cfg(test)]
mod tests {
    #[test]
    fn only_response_ids_name_records() {
        assert!(super::is_id("resp_01J"));
        for bad in ["01J", "resp_", "resp_a.b", "resp_a>", "resp_*"] {
            assert!(!super::is_id(bad), "{bad}");
        }
    }
}
