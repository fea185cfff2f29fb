//! Node heartbeats, one per node under its encoded id, in a bucket whose entries expire
//! after the node TTL: a node that stops writing disappears on its own.
//!
//! [`NodeWatch`] is the one watch on the bucket a process keeps: the task manager asks it
//! whether a model is served, the cluster manager's failover reads who went silent, and
//! the leader wakes when a node joins or leaves.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_nats::jetstream::kv;
use bitinglip_bus_schema::{encode_token, NodeHeartbeat};
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::{Bucket, Store, StoreError};
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
    heard: Arc<RwLock<BTreeMap<String, NodeHeartbeat>>>,
    membership: tokio::sync::watch::Receiver<u64>,
    ttl: Duration,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Store {
    /// Starts the watch on the heartbeats (restarted whenever it ends).
    pub fn watch_nodes(&self) -> NodeWatch {
        let heard: Arc<RwLock<BTreeMap<String, NodeHeartbeat>>> = Arc::default();
        let (tx, membership) = tokio::sync::watch::channel(0u64);
        let bucket = self.inner.nodes.clone();
        let map = heard.clone();
        let task = tokio::spawn(async move {
            loop {
                match bucket.kv.watch_all().await {
                    Ok(mut watch) => {
                        while let Some(Ok(entry)) = watch.next().await {
                            let changed = match entry.operation {
                                kv::Operation::Put => match bucket.decode::<NodeHeartbeat>(&entry.key, &entry.value) {
                                    Ok(hb) => {
                                        map.write().map(|mut m| m.insert(entry.key, hb).is_none()).unwrap_or(false)
                                    }
                                    Err(err) => {
                                        tracing::warn!(cause = %err, "bad heartbeat ignored");
                                        false
                                    }
                                },
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    map.write().map(|mut m| m.remove(&entry.key).is_some()).unwrap_or(false)
                                }
                            };
                            if changed {
                                tx.send_modify(|n| *n += 1);
                            }
                        }
                    }
                    Err(err) => tracing::warn!(cause = %err, "nodes watch failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        NodeWatch { heard, membership, ttl: self.inner.node_ttl, _task: Arc::new(AbortOnDrop(task)) }
    }
}

impl NodeWatch {
    /// True when a live node has a ready worker for `model`.
    pub fn serves(&self, model: &str) -> bool {
        let now = now_ms();
        self.heard
            .read()
            .map(|nodes| nodes.values().any(|n| alive(n, now, self.ttl) && n.serves(model)))
            .unwrap_or(false)
    }

    /// The last heartbeat of every node heard from, live or not.
    pub fn heard(&self) -> Vec<NodeHeartbeat> {
        self.heard.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// The nodes heard from whose last heartbeat is older than the TTL.
    pub fn silent(&self) -> Vec<NodeHeartbeat> {
        let now = now_ms();
        self.heard().into_iter().filter(|hb| !alive(hb, now, self.ttl)).collect()
    }

    /// Waits until a node joins (first heartbeat) or leaves (its entry is deleted).
    pub async fn membership_changed(&mut self) {
        if self.membership.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
