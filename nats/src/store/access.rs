//! What each group of storage operations needs from the server, as the subjects a NATS
//! user must be allowed to publish to: the JetStream API calls async-nats makes for them
//! (`$JS.API.…`), the KV writes (`$KV.<bucket>.<key>`), acks and flow control. The
//! permissions of each NATS role (`crate::permissions`) are made from these, so the
//! lists live beside the code that makes the calls.

use bitinglip_bus_schema::Subjects;

/// The stream behind a KV bucket.
fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The account query every readiness check makes.
pub fn account_info() -> Vec<String> {
    vec!["$JS.API.INFO".into()]
}

/// Reading keys of a bucket (direct get, or the message get of a bucket without it).
pub fn kv_read(bucket: &str) -> Vec<String> {
    let s = kv_stream(bucket);
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.DIRECT.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}.>"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
    ]
}

/// Listing or watching a bucket: an ordered push consumer, recreated after a gap, with
/// flow control.
pub fn kv_watch(bucket: &str) -> Vec<String> {
    let s = kv_stream(bucket);
    let mut v = kv_read(bucket);
    v.extend([
        format!("$JS.API.CONSUMER.CREATE.{s}"),
        format!("$JS.API.CONSUMER.CREATE.{s}.>"),
        format!("$JS.API.CONSUMER.INFO.{s}.>"),
        format!("$JS.API.CONSUMER.DELETE.{s}.>"),
        format!("$JS.FC.{s}.>"),
    ]);
    v
}

/// Writing (put, update, create, delete markers) keys matching `key` (`>` for all).
pub fn kv_write(bucket: &str, key: &str) -> Vec<String> {
    vec![format!("$KV.{bucket}.{key}")]
}

/// Every bucket a node reads at start (`Store::open`).
pub fn buckets(subjects: &Subjects) -> Vec<String> {
    vec![
        subjects.tasks_bucket(),
        subjects.models_bucket(),
        subjects.nodes_bucket(),
        subjects.deployments_bucket(),
        subjects.leases_bucket(),
        subjects.keys_bucket(),
        subjects.responses_bucket(),
        subjects.batches_bucket(),
    ]
}

/// Every stream (buckets' streams included).
pub fn streams(subjects: &Subjects) -> Vec<String> {
    let mut v =
        vec![subjects.tasks_stream(), subjects.events_stream(), subjects.rates_stream(), subjects.usage_stream()];
    v.extend(buckets(subjects).iter().map(|b| kv_stream(b)));
    v.push(format!("OBJ_{}", subjects.results_bucket()));
    v.push(format!("OBJ_{}", subjects.files_bucket()));
    v
}

/// Reading answers from the results object store: its metadata, then its chunks through
/// an ordered consumer.
pub fn results_read(subjects: &Subjects) -> Vec<String> {
    object_read(&subjects.results_bucket())
}

/// Reading objects of the object store `bucket`: their metadata, then their chunks
/// through an ordered consumer.
pub fn object_read(bucket: &str) -> Vec<String> {
    let s = format!("OBJ_{bucket}");
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.DIRECT.GET.{s}"),
        format!("$JS.API.DIRECT.GET.{s}.>"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
        format!("$JS.API.CONSUMER.CREATE.{s}"),
        format!("$JS.API.CONSUMER.CREATE.{s}.>"),
        format!("$JS.API.CONSUMER.INFO.{s}.>"),
        format!("$JS.API.CONSUMER.DELETE.{s}.>"),
        format!("$JS.FC.{s}.>"),
    ]
}

/// Writing answers into the results object store (new names only: never a purge).
pub fn results_write(subjects: &Subjects) -> Vec<String> {
    let b = subjects.results_bucket();
    let mut v = results_read(subjects);
    v.extend([format!("$O.{b}.C.>"), format!("$O.{b}.M.>")]);
    v
}

/// Reading, writing, listing and deleting the files of the Files API (its object store).
pub fn files_write(subjects: &Subjects) -> Vec<String> {
    let b = subjects.files_bucket();
    let s = format!("OBJ_{b}");
    let mut v = object_read(&b);
    v.extend([
        format!("$O.{b}.C.>"),
        format!("$O.{b}.M.>"),
        files_purge(subjects),
        format!("$JS.API.CONSUMER.MSG.NEXT.{s}.>"),
    ]);
    v
}

/// Purging the files object store's stream: how a file's chunks go when it is deleted.
pub fn files_purge(subjects: &Subjects) -> String {
    format!("$JS.API.STREAM.PURGE.OBJ_{}", subjects.files_bucket())
}

/// Finding the buckets and streams an earlier start made (`Store::open`).
pub fn open(subjects: &Subjects) -> Vec<String> {
    let mut v = account_info();
    v.extend(streams(subjects).iter().map(|s| format!("$JS.API.STREAM.INFO.{s}")));
    v
}

/// Creating the streams and buckets that are missing (`Store::provision`). Creating an
/// existing stream with another config fails on the server, so this cannot change one.
pub fn provision(subjects: &Subjects) -> Vec<String> {
    let mut v = open(subjects);
    v.extend(streams(subjects).iter().map(|s| format!("$JS.API.STREAM.CREATE.{s}")));
    v
}

/// Changing an existing stream's or bucket's config.
pub fn update_streams(subjects: &Subjects) -> Vec<String> {
    streams(subjects).iter().map(|s| format!("$JS.API.STREAM.UPDATE.{s}")).collect()
}

/// Reading a stream through a short-lived pull consumer (`read_matching`: a task's stored
/// events, usage counters).
pub fn stream_scan(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
    ]
}

/// Reading a stream through short-lived pull consumers whose filter is within `filter`
/// (the create request's subject names it: `CONSUMER.CREATE.<stream>.<name>.<filter>`),
/// and nothing else of the stream.
pub fn stream_scan_filtered(stream: &str, filter: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.*.{filter}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
    ]
}

/// Reading counters' last values by subject.
pub fn counters_read(stream: &str) -> Vec<String> {
    vec![format!("$JS.API.DIRECT.GET.{stream}"), format!("$JS.API.DIRECT.GET.{stream}.>")]
}

/// Queue statistics and the age of the oldest task (metrics, backpressure, status), and
/// the list of the queue's consumers (pinned ones counted, orphaned ones found).
pub fn queue_stats(subjects: &Subjects) -> Vec<String> {
    let s = subjects.tasks_stream();
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.CONSUMER.INFO.{s}.>"),
        format!("$JS.API.CONSUMER.LIST.{s}"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
    ]
}

/// Taking tasks as a worker: its model's durable consumers (bound, never created,
/// changed or deleted), pulls, and acks of its deliveries.
pub fn queue_take(subjects: &Subjects) -> Vec<String> {
    let s = subjects.tasks_stream();
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.CONSUMER.INFO.{s}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{s}.>"),
        queue_acks(subjects),
    ]
}

/// Making (or bringing up to date) the queues' durable consumers.
pub fn queue_consumers(subjects: &Subjects) -> Vec<String> {
    let s = subjects.tasks_stream();
    vec![
        format!("$JS.API.STREAM.INFO.{s}"),
        format!("$JS.API.CONSUMER.INFO.{s}.>"),
        format!("$JS.API.CONSUMER.CREATE.{s}.>"),
    ]
}

/// The ack subjects of the tasks stream's deliveries (a worker's own acks; the cluster
/// manager's NAK of a dead worker's delivery).
pub fn queue_acks(subjects: &Subjects) -> String {
    format!("$JS.ACK.{}.>", subjects.tasks_stream())
}

/// Removing one task's message from the tasks stream (a poisoned task).
pub fn queue_remove(subjects: &Subjects) -> Vec<String> {
    let s = subjects.tasks_stream();
    vec![format!("$JS.API.STREAM.MSG.GET.{s}"), format!("$JS.API.STREAM.MSG.DELETE.{s}")]
}

/// What no role but `admin` may do to this deployment's streams: delete or purge one,
/// delete its messages, change its config, delete a durable consumer, or remove a
/// server's peer.
pub fn destructive(subjects: &Subjects) -> Vec<String> {
    let mut v = Vec::new();
    for s in streams(subjects) {
        v.push(format!("$JS.API.STREAM.DELETE.{s}"));
        v.push(format!("$JS.API.STREAM.PURGE.{s}"));
        v.push(format!("$JS.API.STREAM.PEER.REMOVE.{s}"));
        v.push(format!("$JS.API.STREAM.LEADER.STEPDOWN.{s}"));
    }
    v.push(format!("$JS.API.CONSUMER.DELETE.{}.>", subjects.tasks_stream()));
    v
}
