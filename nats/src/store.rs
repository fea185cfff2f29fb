//! The typed storage layer: the only code that touches a JetStream KV bucket or a stream.
//!
//! Every bucket and stream handle is private to this module; the rest of BitingLip calls
//! the operations of one module per record kind:
//!
//! | module | holds | key |
//! | --- | --- | --- |
//! | [`tasks`] | task status records (`bitinglip_tasks`) | `<task id>` |
//! | [`models`] | the model registry (`bitinglip_models`) | `<model token>` |
//! | [`model_status`] | each node's state of each model (`bitinglip_models`) | `<model token>.<node token>` |
//! | [`nodes`] | node heartbeats (`bitinglip_nodes`, entries expire) | `<node token>` |
//! | [`deployments`] | deployments, placements and why replicas are missing (`bitinglip_deployments`) | `deploy.<model token>`, `place.<node token>`, `unplaced.<model token>` |
//! | [`leases`] | the cluster managers' leader lease (`bitinglip_leases`) | `cluster-leader` |
//! | [`keys`] | API keys, hashed (`bitinglip_keys`) | `<key id>` |
//! | [`batches`] | batches of the Batch API (`bitinglip_batches`) | `<batch id>` |
//! | [`files`] | files of the Files API (object store `bitinglip_files`) | `<file id>` |
//! | [`responses`] | stored Responses API answers (`bitinglip_responses`) | `<response id>` |
//! | [`queue`] | the tasks stream: queueing, worker consumers, queue statistics | — |
//! | [`events`] | the task events stream: reading back what was published | — |
//! | [`results`] | answers' large parts (object store `bitinglip_results`) | `<task id>.<attempt>.parts` |
//! | [`counters`] | rates and daily usage per key (streams `…_RATES`, `…_USAGE`, JetStream counters) | per key, minute or day |
//!
//! Values are [`Envelope`]s, MessagePack with named fields, written and read by one codec
//! here. Every read-modify-write goes through one compare-and-swap helper
//! ([`Bucket::modify`]) that tells a conflict (someone wrote in between: read again) from
//! an outage (the store is unreachable: give up and say so). Errors are one type,
//! [`StoreError`], converted to a [`WireError`] at the edge.
//!
//! It lives in `bitinglip-nats` because everything that talks to the cluster needs it,
//! the CLI and outside Rust programs included, without linking an engine.

pub mod access;
pub mod batches;
pub mod counters;
pub mod deployments;
pub mod events;
pub mod files;
pub mod keys;
pub mod leases;
pub mod model_status;
pub mod models;
pub mod nodes;
pub mod queue;
pub mod responses;
pub mod results;
pub mod tasks;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use bitinglip_bus_schema::{decode_body, encode, Envelope, ErrorKind, Subjects, WireError};
use bitinglip_config::Config;
use futures::TryStreamExt;
use serde::{de::DeserializeOwned, Serialize};

use crate::now_ms;

/// The largest value this layer decodes: a NATS message carries at most 64 MiB.
const MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// How often a compare-and-swap is retried after a conflict before it gives up.
const CAS_ATTEMPTS: u32 = 20;

/// A storage operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached (NATS down, JetStream not answering, a timeout):
    /// the operation may succeed later.
    #[error("{what} unavailable: {message}")]
    Unavailable {
        /// The bucket or stream.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The value kept changing under a compare-and-swap, or a create found it there.
    #[error("{what}: `{key}` changed meanwhile")]
    Conflict {
        /// The bucket.
        what: &'static str,
        /// The key.
        key: String,
    },
    /// The tasks stream refuses the task: its queue is at a limit (count or bytes).
    #[error("{message}")]
    Full {
        /// Why.
        message: String,
    },
    /// The task is over what one message may carry.
    #[error("{message}")]
    TooLarge {
        /// Why.
        message: String,
    },
    /// A stored value does not decode.
    #[error("{what}: `{key}` is corrupt: {message}")]
    Corrupt {
        /// The bucket or stream.
        what: &'static str,
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
}

impl StoreError {
    fn unavailable(what: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Unavailable { what, message: err.to_string() }
    }
}

impl From<StoreError> for WireError {
    fn from(err: StoreError) -> Self {
        let kind = match err {
            // A conflict that outlived every retry is for the caller to retry later.
            StoreError::Unavailable { .. } | StoreError::Conflict { .. } => ErrorKind::Unavailable,
            StoreError::Full { .. } => ErrorKind::Overloaded,
            StoreError::TooLarge { .. } => ErrorKind::PayloadTooLarge,
            StoreError::Corrupt { .. } => ErrorKind::Internal,
        };
        WireError::new(kind, err.to_string())
    }
}

/// Every bucket and stream, provisioned. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    subjects: Subjects,
    node_id: String,
    tasks: Bucket,
    models: Bucket,
    nodes: Bucket,
    deployments: Bucket,
    leases: Bucket,
    keys: Bucket,
    responses: Bucket,
    batches: Bucket,
    files: async_nats::jetstream::object_store::ObjectStore,
    results: async_nats::jetstream::object_store::ObjectStore,
    node_ttl: Duration,
    jetstream: bitinglip_config::JetStreamConfig,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("node_id", &self.inner.node_id).finish_non_exhaustive()
    }
}

impl Store {
    /// Creates or updates every stream and bucket (see [`crate::provision`]) and wraps them.
    pub async fn provision(bus: &crate::Bus, config: &Config) -> Result<Self, crate::ProvisionError> {
        Self::provision_as(bus, config, crate::Changes::Safe).await
    }

    /// [`Store::provision`], changing existing streams and buckets only as far as
    /// `changes` allows: a node without the permission changes none, a node on its own
    /// only what keeps every stored message, `bitinglip admin migrate` all.
    pub async fn provision_as(
        bus: &crate::Bus,
        config: &Config,
        changes: crate::Changes,
    ) -> Result<Self, crate::ProvisionError> {
        let handles = crate::provision::provision(bus.jetstream(), bus.subjects(), config, changes).await?;
        Ok(Self::wrap(bus, config, handles))
    }

    /// Opens what a node provisioned, creating nothing: for clients such as the CLI.
    pub async fn open(bus: &crate::Bus, config: &Config) -> Result<Self, crate::ProvisionError> {
        let handles = crate::provision::open(bus.jetstream(), bus.subjects()).await?;
        Ok(Self::wrap(bus, config, handles))
    }

    fn wrap(bus: &crate::Bus, config: &Config, handles: crate::provision::Provisioned) -> Self {
        let source = bus.node_id().to_string();
        let bucket = |kv, what| Bucket { kv, what, source: source.clone() };
        Self {
            inner: Arc::new(Inner {
                js: bus.jetstream().clone(),
                subjects: bus.subjects().clone(),
                node_id: source.clone(),
                tasks: bucket(handles.tasks, "task status store"),
                models: bucket(handles.models, "model registry"),
                nodes: bucket(handles.nodes, "nodes registry"),
                deployments: bucket(handles.deployments, "deployments store"),
                leases: bucket(handles.leases, "leases"),
                keys: bucket(handles.keys, "API keys"),
                responses: bucket(handles.responses, "stored responses"),
                batches: bucket(handles.batches, "batches"),
                files: handles.files,
                results: handles.results,
                node_ttl: config.cluster.node_ttl,
                jetstream: config.jetstream.clone(),
            }),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The account's JetStream file storage: the bytes its streams hold, and its limit
    /// when the account has one.
    pub async fn storage(&self) -> Result<(u64, Option<u64>), StoreError> {
        const WHAT: &str = "the JetStream account";
        let account = tokio::time::timeout(Duration::from_secs(2), self.inner.js.query_account())
            .await
            .map_err(|e| StoreError::unavailable(WHAT, e))?
            .map_err(|e| StoreError::unavailable(WHAT, e))?;
        let limit = account.limits.max_storage.and_then(|m| u64::try_from(m).ok()).filter(|m| *m > 0);
        Ok((account.storage, limit))
    }

    /// True when JetStream answers an account query within two seconds.
    pub async fn jetstream_answers(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.inner.js.query_account()).await.is_ok_and(|r| r.is_ok())
    }
}

/// The one codec of stored values: `value` in an envelope from `source`.
/// True when `id` is `prefix` then 1 to `max` letters and digits (or bytes of `also`):
/// an id a client may name, which can be neither a wildcard nor a subject's separator.
fn is_prefixed_id(id: &str, prefix: &str, max: usize, also: &[u8]) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= max && rest.bytes().all(|b| b.is_ascii_alphanumeric() || also.contains(&b))
    })
}

fn envelope<T: Serialize>(source: &str, value: &T) -> Result<bytes::Bytes, bitinglip_bus_schema::CodecError> {
    let env = Envelope::new(ulid::Ulid::new().to_string(), now_ms(), source, value);
    encode(&env).map(Into::into)
}

/// One KV bucket with the codec: typed values in envelopes from this node.
#[derive(Clone)]
struct Bucket {
    kv: kv::Store,
    what: &'static str,
    source: String,
}

/// What a [`Bucket::modify`] step decides.
enum Step<T, R> {
    /// Write `T` (compare-and-swap on the revision read), then answer `R`.
    Write(T, R),
    /// Write nothing; answer `R`.
    Done(R),
}

impl Bucket {
    fn encode<T: Serialize>(&self, value: &T) -> bytes::Bytes {
        // Records are plain structs of strings and numbers: encoding cannot fail.
        envelope(&self.source, value).expect("a stored record always encodes")
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        decode_body::<T>(bytes, MAX_VALUE_BYTES).map_err(|e| StoreError::Corrupt {
            what: self.what,
            key: key.to_string(),
            message: e.to_string(),
        })
    }

    fn unavailable(&self, err: impl std::fmt::Display) -> StoreError {
        StoreError::unavailable(self.what, err)
    }

    /// The value at `key`, when there is one.
    async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        Ok(self.entry(key).await?.map(|(v, _)| v))
    }

    /// The value at `key` with its revision, when there is one (a delete marker is none).
    async fn entry<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, u64)>, StoreError> {
        match self.kv.entry(key).await.map_err(|e| self.unavailable(e))? {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some((self.decode(key, &e.value)?, e.revision))),
            _ => Ok(None),
        }
    }

    /// The revision at `key` when it holds a value (not a delete marker).
    async fn revision(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self.kv.entry(key).await.map_err(|e| self.unavailable(e))? {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some(e.revision)),
            _ => Ok(None),
        }
    }

    /// Writes `value` at `key` whatever is there.
    async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<u64, StoreError> {
        self.kv.put(key, self.encode(value)).await.map_err(|e| self.unavailable(e))
    }

    /// Writes `value` only where `key` holds nothing; a value there is a conflict.
    async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<u64, StoreError> {
        self.create_raw(key, self.encode(value)).await
    }

    async fn create_raw(&self, key: &str, bytes: bytes::Bytes) -> Result<u64, StoreError> {
        match self.kv.create(key, bytes).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(StoreError::Conflict { what: self.what, key: key.to_string() })
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Writes `value` only while `key` is at `revision`; another revision is a conflict.
    async fn update<T: Serialize>(&self, key: &str, value: &T, revision: u64) -> Result<u64, StoreError> {
        self.update_raw(key, self.encode(value), revision).await
    }

    async fn update_raw(&self, key: &str, bytes: bytes::Bytes, revision: u64) -> Result<u64, StoreError> {
        match self.kv.update(key, bytes, revision).await {
            Ok(rev) => Ok(rev),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(StoreError::Conflict { what: self.what, key: key.to_string() })
            }
            Err(e) => Err(self.unavailable(e)),
        }
    }

    /// Deletes `key` (a no-op when absent).
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.kv.delete(key).await.map_err(|e| self.unavailable(e))
    }

    /// Every value whose key passes `keep`, by key. Values that do not decode are skipped
    /// (and logged): one bad entry must not hide the rest.
    async fn scan<T: DeserializeOwned>(&self, keep: impl Fn(&str) -> bool) -> Result<BTreeMap<String, T>, StoreError> {
        let mut out = BTreeMap::new();
        for key in self.keys(keep).await? {
            match self.get::<T>(&key).await {
                Ok(Some(v)) => {
                    out.insert(key, v);
                }
                Ok(None) => {}
                Err(err @ StoreError::Corrupt { .. }) => tracing::warn!(cause = %err, "undecodable entry ignored"),
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    /// Every key that passes `keep` (a key whose last entry is a delete marker included:
    /// readers find no value there). The list is the stream's own count of messages per
    /// subject, one answer from the server: the client's key listing (an ordered consumer
    /// that stops at the first message with nothing pending after it) can stop early while
    /// other keys are written, and leave out keys that were there all along.
    async fn keys(&self, keep: impl Fn(&str) -> bool) -> Result<Vec<String>, StoreError> {
        let prefix = format!("$KV.{}.", self.kv.name);
        let subjects: Vec<(String, usize)> = self
            .kv
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| self.unavailable(e))?
            .try_collect()
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(subjects
            .into_iter()
            .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_string))
            .filter(|k| keep(k))
            .collect())
    }

    /// Reads `key`, lets `step` decide, and writes its value with compare-and-swap on the
    /// revision read (or a create where there was none). A conflict reads again; an outage
    /// is returned at once. Answers `step`'s answer and the revision written, if any.
    async fn modify<T, R, F>(&self, key: &str, mut step: F) -> Result<(R, Option<u64>), StoreError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<Step<T, R>, StoreError>,
    {
        for _ in 0..CAS_ATTEMPTS {
            // No value (never written, or a delete marker): create, which writes over a
            // delete marker but conflicts with a value written meanwhile.
            let (current, revision) = match self.entry::<T>(key).await? {
                Some((v, rev)) => (Some(v), Some(rev)),
                None => (None, None),
            };
            let (value, answer) = match step(current)? {
                Step::Done(answer) => return Ok((answer, None)),
                Step::Write(value, answer) => (value, answer),
            };
            let written = match revision {
                Some(rev) => self.update(key, &value, rev).await,
                None => self.create(key, &value).await,
            };
            match written {
                Ok(rev) => return Ok((answer, Some(rev))),
                Err(StoreError::Conflict { .. }) => {
                    tracing::debug!(bucket = self.what, key, "changed meanwhile; reading again");
                }
                Err(err) => return Err(err),
            }
        }
        Err(StoreError::Conflict { what: self.what, key: key.to_string() })
    }
}

/// Every message of `stream` matching `filter` now, as (subject, payload), read through
/// an ephemeral consumer that is deleted after (or, if this is interrupted, expires after
/// 30 s unused). `last_per_subject` reads only each subject's last message.
async fn read_matching(
    js: &jetstream::Context,
    stream: String,
    filter: String,
    last_per_subject: bool,
    what: &'static str,
) -> Result<Vec<(String, bytes::Bytes)>, StoreError> {
    use jetstream::consumer;
    let unavailable = |e: &dyn std::fmt::Display| StoreError::unavailable(what, e);
    let stream = js.get_stream(stream).await.map_err(|e| unavailable(&e))?;
    let deliver_policy =
        if last_per_subject { consumer::DeliverPolicy::LastPerSubject } else { consumer::DeliverPolicy::All };
    let mut consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            // Named, so that the create request's subject carries the filter
            // (`CONSUMER.CREATE.<stream>.<name>.<filter>`): permissions can then hold a
            // user to the subjects it may read.
            name: Some(format!("scan-{}", ulid::Ulid::new())),
            filter_subject: filter,
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&e))?;
    let pending = consumer.info().await.map_err(|e| unavailable(&e))?.num_pending;
    let mut out = Vec::new();
    if pending > 0 {
        let mut messages = consumer
            .batch()
            .max_messages(pending as usize)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| unavailable(&e))?;
        while let Some(msg) = futures::StreamExt::next(&mut messages).await {
            let msg = msg.map_err(|e| unavailable(&e))?;
            out.push((msg.subject.to_string(), msg.message.payload.clone()));
            if out.len() as u64 >= pending {
                break;
            }
        }
    }
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(out)
}

/// A bucket's values mirrored in memory by one watch (restarted whenever it ends), with a
/// counter of keys appearing or going. Cheap to clone; the watch stops with the last clone.
#[derive(Clone)]
pub(crate) struct Mirror<T> {
    values: Arc<std::sync::RwLock<BTreeMap<String, T>>>,
    membership: tokio::sync::watch::Receiver<u64>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> Mirror<T> {
    fn start(bucket: Bucket) -> Self {
        let values: Arc<std::sync::RwLock<BTreeMap<String, T>>> = Arc::default();
        let (tx, membership) = tokio::sync::watch::channel(0u64);
        let map = values.clone();
        let task = tokio::spawn(async move {
            loop {
                match bucket.kv.watch_all().await {
                    Ok(mut watch) => {
                        while let Some(Ok(entry)) = futures::StreamExt::next(&mut watch).await {
                            let joined_or_left = match entry.operation {
                                kv::Operation::Put => match bucket.decode::<T>(&entry.key, &entry.value) {
                                    Ok(v) => map.write().map(|mut m| m.insert(entry.key, v).is_none()).unwrap_or(false),
                                    Err(err) => {
                                        tracing::warn!(cause = %err, "undecodable entry ignored");
                                        false
                                    }
                                },
                                kv::Operation::Delete | kv::Operation::Purge => {
                                    map.write().map(|mut m| m.remove(&entry.key).is_some()).unwrap_or(false)
                                }
                            };
                            if joined_or_left {
                                tx.send_modify(|n| *n += 1);
                            }
                        }
                    }
                    Err(err) => tracing::warn!(bucket = bucket.what, cause = %err, "watch failed; retrying"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self { values, membership, _task: Arc::new(AbortOnDrop(task)) }
    }

    /// Every value as last seen.
    fn all(&self) -> Vec<T> {
        self.values.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// One value as last seen.
    fn get(&self, key: &str) -> Option<T> {
        self.values.read().ok().and_then(|m| m.get(key).cloned())
    }

    /// What `each` takes out of every value (one read lock, no value cloned).
    fn collect<U>(&self, each: impl FnMut(&T) -> Vec<U>) -> Vec<U> {
        self.values.read().map(|m| m.values().flat_map(each).collect()).unwrap_or_default()
    }

    /// True when any value passes `test`.
    fn any(&self, test: impl Fn(&T) -> bool) -> bool {
        self.values.read().map(|m| m.values().any(test)).unwrap_or(false)
    }

    /// Waits until a key appears or goes.
    async fn membership_changed(&mut self) {
        if self.membership.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ids_of_batches_files_and_responses_name_their_records() {
        type IsId = fn(&str) -> bool;
        let kinds: [(IsId, &str, [&str; 5]); 3] = [
            (batches::is_id, "batch_01J9ABC", ["01J", "batch_", "batch_a.b", "batch_a>", "batch_a-1"]),
            (files::is_id, "file-01J9ABC", ["01J", "file-", "file-a.b", "file-a>", "file-a/b"]),
            (responses::is_id, "resp_01J", ["01J", "resp_", "resp_a.b", "resp_a>", "resp_*"]),
        ];
        for (is_id, good, bads) in kinds {
            assert!(is_id(good));
            for bad in bads {
                assert!(!is_id(bad), "{bad}");
            }
        }
    }

    #[test]
    fn errors_cross_the_bus_as_their_kind() {
        let down = StoreError::Unavailable { what: "task status store", message: "timed out".into() };
        assert_eq!(WireError::from(down).kind, ErrorKind::Unavailable);
        let busy = StoreError::Conflict { what: "deployments store", key: "deploy.m".into() };
        let wire = WireError::from(busy);
        assert_eq!(wire.kind, ErrorKind::Unavailable);
        assert!(wire.message.contains("deploy.m"), "{}", wire.message);
        let bad = StoreError::Corrupt { what: "model registry", key: "m".into(), message: "eof".into() };
        assert_eq!(WireError::from(bad).kind, ErrorKind::Internal);
    }
}
