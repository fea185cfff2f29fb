//! The model registry: one record per model under its encoded id. Workers register what
//! they load, pulls record the revision sha and files; `models rm` removes the record
//! with every node's status of the model (see [`super::model_status`]).

use bitinglip_bus_schema::{encode_token, ModelRecord};

use super::{Bucket, Store, StoreError};

/// The model registry.
pub struct Models<'a> {
    bucket: &'a Bucket,
}

impl Store {
    /// The model registry.
    pub fn models(&self) -> Models<'_> {
        Models { bucket: &self.inner.models }
    }
}

/// The key of a model's record. Status keys (`<model>.<node>`) share the bucket; a
/// record's key never holds a `.` (the token encoding escapes it).
pub(super) fn key(model: &str) -> String {
    encode_token(model)
}

impl Models<'_> {
    /// One model's record.
    pub async fn get(&self, model: &str) -> Result<Option<ModelRecord>, StoreError> {
        self.bucket.get(&key(model)).await
    }

    /// Every record, sorted by id.
    pub async fn list(&self) -> Result<Vec<ModelRecord>, StoreError> {
        let mut models: Vec<ModelRecord> = self.bucket.scan(|k| !k.contains('.')).await?.into_values().collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(models)
    }

    /// Writes a record (created or replaced).
    pub async fn put(&self, record: &ModelRecord) -> Result<(), StoreError> {
        self.bucket.put(&key(&record.id), record).await.map(drop)
    }

    /// Removes a model's record and every node's status of it; true when there was a
    /// record.
    pub async fn remove(&self, model: &str) -> Result<bool, StoreError> {
        let had = self.get(model).await?.is_some();
        let record = key(model);
        let statuses = format!("{record}.");
        for k in self.bucket.keys(|k| k == record || k.starts_with(&statuses)).await? {
            self.bucket.delete(&k).await?;
        }
        Ok(had)
    }
}
