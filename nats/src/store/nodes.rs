//! Node heartbeats, one per node under its encoded id, in a bucket whose entries expire
//! after the node TTL: a node that stops writing disappears on its own.
//!
//! [`NodeWatch`] is the one watch on the bucket a process keeps: the task manager asks it
//! whether a model is served, the cluster manager's failover reads who went silent, and
//! the leader wakes when a node joins or leaves. It starts on first use, so a node that
//! never asks (a worker) does not receive every node's heartbeats: with N nodes that
//! would be N² messages for nothing.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

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

    /// Follows `node`'s heartbeat from now on; [`Deletion::wait`] returns when it is
    /// deleted (a clean stop, or a cluster manager that found the node dead), not when it
    /// only expires.
    pub async fn follow(&self, node: &str) -> Result<Deletion, StoreError> {
        let watch = self.bucket.kv.watch(key(node)).await.map_err(|e| self.bucket.unavailable(e))?;
        Ok(Deletion { watch })
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

/// A watch on one node's heartbeat (see [`Nodes::follow`]).
pub struct Deletion {
    watch: async_nats::jetstream::kv::Watch,
}

impl Deletion {
    /// Returns when the heartbeat is deleted (or the watch ends).
    pub async fn wait(mut self) {
        use futures::StreamExt;
        while let Some(Ok(entry)) = self.watch.next().await {
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                return;
            }
        }
    }
}

/// The last heartbeat of every node heard from, kept current by one watch on the bucket
/// (started on first use). Cheap to clone; the watch stops when the last clone is
/// dropped.
#[derive(Clone)]
pub struct NodeWatch {
    bucket: Bucket,
    heard: Arc<OnceLock<Mirror<NodeHeartbeat>>>,
    /// This clone's own view of the membership changes (see `membership_changed`).
    follower: Option<Mirror<NodeHeartbeat>>,
    ttl: Duration,
}

impl Store {
    /// The watch on the heartbeats (started on first use, restarted whenever it ends).
    pub fn watch_nodes(&self) -> NodeWatch {
        NodeWatch { bucket: self.inner.nodes.clone(), heard: Arc::default(), follower: None, ttl: self.inner.node_ttl }
    }
}

impl NodeWatch {
    fn mirror(&self) -> &Mirror<NodeHeartbeat> {
        self.heard.get_or_init(|| Mirror::start(self.bucket.clone()))
    }

    /// True when a live node has a ready worker for `model`.
    pub fn serves(&self, model: &str) -> bool {
        let now = now_ms();
        self.mirror().any(|n| alive(n, now, self.ttl) && n.serves(model))
    }

    /// The workers of `model` on live nodes, in any state, each with the time its node's
    /// last heartbeat says it was written (the node's clock).
    pub fn workers_of(&self, model: &str) -> Vec<(bitinglip_bus_schema::WorkerInfo, u64)> {
        let now = now_ms();
        self.mirror().collect(|n| {
            if !alive(n, now, self.ttl) {
                return Vec::new();
            }
            n.workers.iter().filter(|w| w.model == model).map(|w| (w.clone(), n.time_ms)).collect()
        })
    }

    /// The last heartbeat of every node heard from, live or not.
    pub fn heard(&self) -> Vec<NodeHeartbeat> {
        self.mirror().all()
    }

    /// True when a live node has a ready worker, for any model.
    pub fn any_ready_worker(&self) -> bool {
        let now = now_ms();
        self.mirror().any(|n| alive(n, now, self.ttl) && n.has_ready_worker())
    }

    /// The last heartbeat of every live node (heard from within the TTL).
    pub fn live(&self) -> Vec<NodeHeartbeat> {
        let now = now_ms();
        self.heard().into_iter().filter(|hb| alive(hb, now, self.ttl)).collect()
    }

    /// The nodes heard from whose last heartbeat is older than the TTL.
    pub fn silent(&self) -> Vec<NodeHeartbeat> {
        let now = now_ms();
        self.heard().into_iter().filter(|hb| !alive(hb, now, self.ttl)).collect()
    }

    /// Waits until a node joins (first heartbeat) or leaves (its entry is deleted).
    pub async fn membership_changed(&mut self) {
        if self.follower.is_none() {
            self.follower = Some(self.mirror().clone());
        }
        if let Some(follower) = &mut self.follower {
            follower.membership_changed().await
        }
    }
}
