//! Node heartbeats, one per node under its encoded id, in a bucket whose entries expire
//! after the node TTL: a node that stops writing disappears on its own.
//!
//! [`NodeWatch`] is the one watch on the bucket a process keeps: the task manager asks it
//! whether a model is served, the cluster manager's failover reads who went silent, and
//! the leader wakes when a node joins or leaves.

use std::time::Duration;

use bitinglip_bus_schema::{encode_token, NodeHeartbeat};

use super::{Bucket, Mirror, Store, StoreError};
use crate::now_ms;

/// The heartbeats.
pub struct Nodes<'a> {
    bucket: &'a Bucket,
    ttl: Duration,
}

impl Store {
    /// The node heartbeats.
    pub fn nodes(&self) -> Nodes<'_> {
        Nodes { bucket: &self.inner.nodes, ttl: self.inner.node_ttl }
    }
}

fn key(node: &str) -> String {
    encode_token(node)
}

/// True when `hb` was written within `ttl` of `now`.
fn alive(hb: &NodeHeartbeat, now: u64, ttl: Duration) -> bool {
    now.saturating_sub(hb.time_ms) <= ttl.as_millis() as u64
}

impl Nodes<'_> {
    /// Writes this node's heartbeat.
    pub async fn beat(&self, hb: &NodeHeartbeat) -> Result<(), StoreError> {
        self.bucket.put(&key(&hb.node_id), hb).await.map(drop)
    }

    /// Removes a node's heartbeat (a clean stop: the cluster sees it leave at once).
    pub async fn remove(&self, node: &str) -> Result<(), StoreError> {
        self.bucket.delete(&key(node)).await
    }

    /// Every live node's heartbeat, read from the bucket now, oldest node first.
    pub async fn live(&self) -> Result<Vec<NodeHeartbeat>, StoreError> {
        let now = now_ms();
        let mut nodes: Vec<NodeHeartbeat> = self
            .bucket
            .scan::<NodeHeartbeat>(|k| bitinglip_bus_schema::decode_token(k).is_ok())
            .await?
            .into_values()
            .filter(|hb| alive(hb, now, self.ttl))
            .collect();
        nodes.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.node_id.cmp(&b.node_id)));
        Ok(nodes)
    }
}

/// The last heartbeat of every node heard from, kept current by one watch on the bucket.
/// Cheap to clone; the watch stops when the last clone is dropped.
#[derive(Clone)]
pub struct NodeWatch {
    heard: Mirror<NodeHeartbeat>,
    ttl: Duration,
}

impl Store {
    /// Starts the watch on the heartbeats (restarted whenever it ends).
    pub fn watch_nodes(&self) -> NodeWatch {
        NodeWatch { heard: Mirror::start(self.inner.nodes.clone()), ttl: self.inner.node_ttl }
    }
}

impl NodeWatch {
    /// True when a live node has a ready worker for `model`.
    pub fn serves(&self, model: &str) -> bool {
        let now = now_ms();
        self.heard.any(|n| alive(n, now, self.ttl) && n.serves(model))
    }

    /// The last heartbeat of every node heard from, live or not.
    pub fn heard(&self) -> Vec<NodeHeartbeat> {
        self.heard.all()
    }

    /// The nodes heard from whose last heartbeat is older than the TTL.
    pub fn silent(&self) -> Vec<NodeHeartbeat> {
        let now = now_ms();
        self.heard().into_iter().filter(|hb| !alive(hb, now, self.ttl)).collect()
    }

    /// Waits until a node joins (first heartbeat) or leaves (its entry is deleted).
    pub async fn membership_changed(&mut self) {
        self.heard.membership_changed().await
    }
}
