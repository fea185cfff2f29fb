//! The Files API's files, in the files object store under their ids (`file-<ulid>`): the
//! bytes chunked by JetStream, the record (owner, purpose, name, size, time) in the
//! object's metadata, so the two can never disagree.
//!
//! A batch input file is also kept in pages (`<file id>.p<k>`, a fixed number of its
//! request lines each, and `<file id>.pages` with their count, written last), so that a
//! gateway driving batches over it reads a page at a time, never the whole file.

use std::collections::HashMap;

use async_nats::jetstream::object_store::{GetErrorKind, ObjectInfo, ObjectMetadata};
use bitinglip_bus_schema::FileRecord;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{Store, StoreError};

const WHAT: &str = "files store";

/// The files.
pub struct Files<'a> {
    store: &'a Store,
}

impl Store {
    /// The Files API's files.
    pub fn files(&self) -> Files<'_> {
        Files { store: self }
    }
}

/// True when `id` can name a file (`file-` and a ULID's characters).
pub(crate) fn is_id(id: &str) -> bool {
    super::is_prefixed_id(id, "file-", 64, b"")
}

fn record_of(info: &ObjectInfo) -> Option<FileRecord> {
    if info.deleted || !is_id(&info.name) {
        return None;
    }
    let m = &info.metadata;
    Some(FileRecord {
        id: info.name.clone(),
        owner: m.get("owner").filter(|o| !o.is_empty()).cloned(),
        purpose: m.get("purpose").cloned().unwrap_or_default(),
        filename: m.get("filename").cloned().unwrap_or_default(),
        bytes: info.size as u64,
        created_ms: m.get("created_ms").and_then(|t| t.parse().ok()).unwrap_or_default(),
    })
}

impl Files<'_> {
    /// Stores `bytes` as the file `record.id` (its size is taken from `bytes`).
    pub async fn put(&self, record: &FileRecord, bytes: &[u8]) -> Result<FileRecord, StoreError> {
        if !is_id(&record.id) {
            return Err(StoreError::Corrupt { what: WHAT, key: record.id.clone(), message: "not a file id".into() });
        }
        let metadata = HashMap::from([
            ("owner".to_string(), record.owner.clone().unwrap_or_default()),
            ("purpose".to_string(), record.purpose.clone()),
            ("filename".to_string(), record.filename.clone()),
            ("created_ms".to_string(), record.created_ms.to_string()),
        ]);
        let meta = ObjectMetadata { name: record.id.clone(), metadata, ..Default::default() };
        let mut reader = bytes;
        self.store.inner.files.put(meta, &mut reader).await.map_err(|e| StoreError::unavailable(WHAT, e))?;
        Ok(FileRecord { bytes: bytes.len() as u64, ..record.clone() })
    }

    /// The record of file `id`, when it is there.
    pub async fn info(&self, id: &str) -> Result<Option<FileRecord>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        match self.store.inner.files.info(id).await {
            Ok(info) => Ok(record_of(&info)),
            Err(e) if e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::unavailable(WHAT, e)),
        }
    }

    /// The bytes of file `id`, when it is there.
    pub async fn read(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        self.object(id).await
    }

    /// Deletes file `id` (a no-op when absent), its pages too.
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        if !is_id(id) {
            return Ok(());
        }
        if let Some(pages) = self.pages(id).await? {
            self.remove(&format!("{id}.pages")).await?;
            for k in 0..pages {
                self.remove(&format!("{id}.p{k}")).await?;
            }
        }
        self.remove(id).await
    }

    async fn remove(&self, name: &str) -> Result<(), StoreError> {
        match self.store.inner.files.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == async_nats::jetstream::object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::unavailable(WHAT, e)),
        }
    }

    async fn object(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut object = match self.store.inner.files.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::unavailable(WHAT, e)),
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|e| StoreError::unavailable(WHAT, e))?;
        Ok(Some(bytes))
    }

    async fn put_object(&self, name: String, bytes: &[u8]) -> Result<(), StoreError> {
        let meta = ObjectMetadata { name, ..Default::default() };
        let mut reader = bytes;
        self.store.inner.files.put(meta, &mut reader).await.map_err(|e| StoreError::unavailable(WHAT, e))?;
        Ok(())
    }

    /// How many pages file `id` is kept in, once they are all written.
    pub async fn pages(&self, id: &str) -> Result<Option<u32>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        let Some(count) = self.object(&format!("{id}.pages")).await? else { return Ok(None) };
        Ok(std::str::from_utf8(&count).ok().and_then(|c| c.trim().parse().ok()))
    }

    /// Writes file `id`'s pages, then their count (so a count means every page is there).
    pub async fn put_pages(&self, id: &str, pages: &[Vec<u8>]) -> Result<(), StoreError> {
        if !is_id(id) {
            return Err(StoreError::Corrupt { what: WHAT, key: id.to_string(), message: "not a file id".into() });
        }
        for (k, page) in pages.iter().enumerate() {
            self.put_object(format!("{id}.p{k}"), page).await?;
        }
        self.put_object(format!("{id}.pages"), pages.len().to_string().as_bytes()).await
    }

    /// Page `k` of file `id`, when it is there.
    pub async fn page(&self, id: &str, k: u32) -> Result<Option<Vec<u8>>, StoreError> {
        if !is_id(id) {
            return Ok(None);
        }
        self.object(&format!("{id}.p{k}")).await
    }

    /// Every file, newest first.
    pub async fn list(&self) -> Result<Vec<FileRecord>, StoreError> {
        let mut list = self.store.inner.files.list().await.map_err(|e| StoreError::unavailable(WHAT, e))?;
        let mut files = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| StoreError::unavailable(WHAT, e))?;
            files.extend(record_of(&info));
        }
        files.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
        Ok(files)
    }
}
