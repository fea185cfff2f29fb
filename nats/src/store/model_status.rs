//! Each node's state of each model, in the models bucket under `<model>.<node>`, with
//! leases: a node downloading or loading a model renews its entry every third of the
//! node TTL; an entry whose lease ran out reads as failed, so a node that dies mid-way
//! leaves nothing stuck in "downloading".

use std::time::Duration;

use bitinglip_bus_schema::{encode_token, ModelNodeStatus, ModelState};
use tokio::task::JoinHandle;

use super::{models, Bucket, Store, StoreError};
use crate::now_ms;

/// The per-node model states.
pub struct ModelStatuses<'a> {
    bucket: &'a Bucket,
    node: &'a str,
    ttl: Duration,
}

impl Store {
    /// The per-node model states (writes are this node's).
    pub fn model_status(&self) -> ModelStatuses<'_> {
        ModelStatuses { bucket: &self.inner.models, node: &self.inner.node_id, ttl: self.inner.node_ttl }
    }
}

/// The key of one node's state of one model.
fn key(model: &str, node: &str) -> String {
    format!("{}.{}", models::key(model), encode_token(node))
}

impl ModelStatuses<'_> {
    /// Writes this node's state of `model`; a state that holds a lease expires after the
    /// node TTL unless written again.
    pub async fn set(&self, model: &str, state: ModelState, reason: Option<String>) -> Result<(), StoreError> {
        let now = now_ms();
        let status = ModelNodeStatus {
            model: model.to_string(),
            node: self.node.to_string(),
            state,
            reason,
            lease_until_ms: state.holds_lease().then_some(now + self.ttl.as_millis() as u64),
            updated_ms: now,
        };
        self.bucket.put(&key(model, self.node), &status).await.map(drop)
    }

    /// Removes this node's state of `model` (the node no longer has it loaded).
    pub async fn clear(&self, model: &str) -> Result<(), StoreError> {
        self.bucket.delete(&key(model, self.node)).await
    }

    /// Every node's state (of `model`, or of all), leases applied, by model then node.
    pub async fn list(&self, model: Option<&str>) -> Result<Vec<ModelNodeStatus>, StoreError> {
        let now = now_ms();
        let mut out: Vec<ModelNodeStatus> = self
            .bucket
            .scan::<ModelNodeStatus>(|k| k.contains('.'))
            .await?
            .into_values()
            .filter(|st| model.is_none_or(|m| m == st.model))
            .map(|st| st.effective(now))
            .collect();
        out.sort_by(|a, b| a.model.cmp(&b.model).then(a.node.cmp(&b.node)));
        Ok(out)
    }
}

/// Holds a downloading or loading state: written now and renewed until dropped.
pub struct StatusLease {
    renew: JoinHandle<()>,
}

impl Store {
    /// Writes `state` for `model` and keeps renewing it until the lease is dropped.
    pub async fn hold_model_status(&self, model: &str, state: ModelState) -> StatusLease {
        if let Err(err) = self.model_status().set(model, state, None).await {
            tracing::warn!(model, state = state.as_str(), cause = %err, "model status not written");
        }
        let (store, model) = (self.clone(), model.to_string());
        let every = (self.inner.node_ttl / 3).max(Duration::from_millis(100));
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(err) = store.model_status().set(&model, state, None).await {
                    tracing::warn!(model, state = state.as_str(), cause = %err, "model status not renewed");
                }
            }
        });
        StatusLease { renew }
    }
}

impl Drop for StatusLease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}
