//! Leases in the leases bucket, whose entries expire after the node TTL unless renewed:
//! the cluster managers' leader lease (key `cluster-leader`, value the holder's node id).

use async_nats::jetstream::kv;

use super::{Store, StoreError};

const LEADER: &str = "cluster-leader";

/// The leader lease as this node holds it (or not).
#[derive(Debug, Default)]
pub struct LeaderLease {
    revision: Option<u64>,
}

impl LeaderLease {
    /// Renews the lease, or takes it when it is free; true while this node leads.
    pub async fn hold(&mut self, store: &Store) -> bool {
        let bucket = &store.inner.leases;
        let me = bytes::Bytes::copy_from_slice(store.node_id().as_bytes());
        if let Some(rev) = self.revision {
            match bucket.update_raw(LEADER, me.clone(), rev).await {
                Ok(next) => {
                    self.revision = Some(next);
                    return true;
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "leader lease lost");
                    self.revision = None;
                }
            }
        }
        match bucket.create_raw(LEADER, me).await {
            Ok(rev) => {
                tracing::info!(node = %store.node_id(), "leading the cluster managers");
                self.revision = Some(rev);
                true
            }
            Err(_) => false,
        }
    }
}

impl Store {
    /// The node holding the leader lease now.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        let bucket = &self.inner.leases;
        let value = bucket.kv.get(LEADER).await.map_err(|e| bucket.unavailable(e))?;
        Ok(value.and_then(|v| String::from_utf8(v.to_vec()).ok()))
    }

    /// Gives the leader lease up if this node holds it (a clean stop), so another
    /// cluster manager leads at once rather than after the TTL.
    pub async fn release_leader(&self) -> Result<(), StoreError> {
        let bucket = &self.inner.leases;
        if let Some(entry) = bucket.kv.entry(LEADER).await.map_err(|e| bucket.unavailable(e))? {
            if entry.operation == kv::Operation::Put && entry.value.as_ref() == self.node_id().as_bytes() {
                bucket
                    .kv
                    .delete_expect_revision(LEADER, Some(entry.revision))
                    .await
                    .map_err(|e| bucket.unavailable(e))?;
            }
        }
        Ok(())
    }
}
