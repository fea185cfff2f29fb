//! Reading the cluster's state, for tests that wait on state rather than on log text:
//! KV buckets (node heartbeats, deployments), every value one KV key takes, and
//! Prometheus samples from `/metrics`.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::kv;
use bitinglip_bus_schema::{decode_body, NodeHeartbeat};
use futures::StreamExt;
use serde::de::DeserializeOwned;

/// The largest value read back: a NATS message carries at most 64 MiB.
const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// The KV bucket `bucket` on the server at `nats_url`; None while the server does not
/// answer or the bucket does not exist yet (a node provisions it when it starts).
pub async fn kv_bucket(nats_url: &str, bucket: &str) -> Option<kv::Store> {
    let connect = crate::admin_options(nats_url).connection_timeout(Duration::from_secs(1)).connect(nats_url);
    let client = tokio::time::timeout(Duration::from_secs(2), connect).await.ok()?.ok()?;
    async_nats::jetstream::new(client).get_key_value(bucket).await.ok()
}

/// Every live node's last heartbeat in `nodes` (the nodes bucket); None when the bucket
/// cannot be read within 2 s. Entries that do not decode are skipped.
pub async fn heartbeats(nodes: &kv::Store) -> Option<Vec<NodeHeartbeat>> {
    tokio::time::timeout(Duration::from_secs(2), read_heartbeats(nodes)).await.ok()?
}

async fn read_heartbeats(nodes: &kv::Store) -> Option<Vec<NodeHeartbeat>> {
    let keys: Vec<String> = nodes.keys().await.ok()?.filter_map(|k| async { k.ok() }).collect().await;
    let mut all = Vec::with_capacity(keys.len());
    for key in keys {
        // None: deleted or expired since the listing.
        if let Some(bytes) = nodes.get(key).await.ok()? {
            all.extend(decode_body::<NodeHeartbeat>(&bytes, MAX_VALUE_BYTES).ok());
        }
    }
    Some(all)
}

/// The sum of the samples of `name` whose labels contain every one of `labels` (each a
/// `key="value"` text); None when `text` has no such series.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or_default();
        if metric != name || !labels.iter().all(|l| series.contains(l)) {
            continue;
        }
        *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    found
}

/// Every value written to one KV key from the moment the recorder started, in order: a
/// record of the changes a test cannot catch by polling (a value that came and went).
pub struct KeyRecorder {
    seen: Arc<Mutex<Vec<Option<bytes::Bytes>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyRecorder {
    /// Watches `key` in `bucket` on the server at `nats_url`; records what is written
    /// after this returns. Panics when the bucket is not there.
    pub async fn start(nats_url: &str, bucket: &str, key: &str) -> Self {
        let store = kv_bucket(nats_url, bucket).await.unwrap_or_else(|| panic!("no KV bucket {bucket} at {nats_url}"));
        let mut watch = store.watch(key).await.unwrap_or_else(|e| panic!("watching {bucket}/{key}: {e}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                let value = (entry.operation == kv::Operation::Put).then_some(entry.value);
                sink.lock().unwrap().push(value);
            }
        });
        Self { seen, task }
    }

    /// The values seen so far, decoded from their envelopes; None for a delete (or a
    /// value that is not a `T`).
    pub fn values<T: DeserializeOwned>(&self) -> Vec<Option<T>> {
        let seen = self.seen.lock().unwrap();
        seen.iter().map(|v| v.as_ref().and_then(|bytes| decode_body::<T>(bytes, MAX_VALUE_BYTES).ok())).collect()
    }
}

impl Drop for KeyRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
