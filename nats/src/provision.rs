//! JetStream provisioning at start: the tasks stream, the events stream and the KV
//! buckets. Safe to run from every node at once and on every start: an existing stream
//! is updated to the wanted config, an identical one is left alone.

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use bitinglip_bus_schema::{Priority, Subjects};
use bitinglip_config::{Config, JetStreamConfig};

use crate::ProvisionError;

mod compare;

use compare::{differs, drops_data, foreign};

/// Handles to everything provisioned.
#[derive(Clone)]
pub(crate) struct Provisioned {
    /// Task status records.
    pub(crate) tasks: kv::Store,
    /// Model registry.
    pub(crate) models: kv::Store,
    /// Node heartbeats (entries expire).
    pub(crate) nodes: kv::Store,
    /// Deployments and placements.
    pub(crate) deployments: kv::Store,
    /// Leases (entries expire unless renewed): the cluster managers' leader.
    pub(crate) leases: kv::Store,
    /// API keys.
    pub(crate) keys: kv::Store,
    /// Stored Responses API answers.
    pub(crate) responses: kv::Store,
    /// Batches.
    pub(crate) batches: kv::Store,
    /// Files of the Files API.
    pub(crate) files: object_store::ObjectStore,
    /// Answers too large for one message.
    pub(crate) results: object_store::ObjectStore,
}

fn err(what: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError { what: what.to_string(), message: e.to_string() }
}

/// Creates or updates every stream and bucket.
pub(crate) async fn provision(
    js: &jetstream::Context,
    subjects: &Subjects,
    config: &Config,
    changes: Changes,
) -> Result<Provisioned, ProvisionError> {
    let cfg = &config.jetstream;
    let cluster = &config.cluster;
    let tm = &config.task_manager;
    // Accepted tasks: a work queue on file storage. No max age: an accepted task leaves
    // the stream only when a worker acks it (or it is terminated after max_deliver).
    // One subject per task (`…queue.<model>.<class>.<task id>`), so a waiting task is
    // found by its id. Limits refuse new tasks (never drop accepted ones): all together by
    // bytes here; per model and class by count in the task manager (a per-subject limit
    // is now per task, which never holds more than one).
    // Streams replicated as configured, on file storage unless said.
    let stream = |name: String, description: &str, subjects: Vec<String>| stream::Config {
        name,
        description: Some(description.into()),
        subjects,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    };
    let ensure = |config| ensure_stream(js, changes, config);
    let queues = vec![subjects.all_queues()];
    ensure(stream::Config {
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: cfg.dedupe_window,
        max_messages_per_subject: tm.queue_max_tasks,
        max_bytes: tm.queue_max_bytes,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..stream(
            subjects.tasks_stream(),
            "BitingLip accepted tasks, one subject per task under its model and priority",
            queues,
        )
    })
    .await?;

    // Task events: published with core NATS (no per-token round trip) and captured here
    // for replay. Memory storage: a per-token fsync would cost more than the token.
    let events = vec![subjects.all_task_events(), subjects.task_events_before_owners()];
    ensure(stream::Config {
        storage: stream::StorageType::Memory,
        max_age: cfg.events_max_age,
        max_bytes: 512 * MIB,
        // Per task (one subject each): a runaway task drops its own oldest events,
        // never another task's replay.
        max_messages_per_subject: EVENTS_PER_TASK,
        max_message_size: 1024 * 1024,
        discard: stream::DiscardPolicy::Old,
        ..stream(subjects.events_stream(), "BitingLip task events, for replay and resume", events)
    })
    .await?;

    // Counters (JetStream's distributed counters: a publish with `Nats-Incr` adds to the
    // subject's total and the acknowledgement carries the new total, one round trip, no
    // compare-and-swap). Per-minute rates live two minutes, in memory; daily usage is kept
    // on disk for 400 days, deduplicated by message id so a worker may publish twice.
    let rates = vec![subjects.all_rate_counters()];
    ensure(stream::Config {
        storage: stream::StorageType::Memory,
        max_age: std::time::Duration::from_secs(120),
        allow_message_counter: true,
        allow_direct: true,
        ..stream(subjects.rates_stream(), "BitingLip per-minute requests and tokens of each API key", rates)
    })
    .await?;
    let usage = subjects.all_usage_counters();
    ensure(stream::Config {
        max_age: std::time::Duration::from_secs(400 * 86_400),
        duplicate_window: std::time::Duration::from_secs(600),
        allow_message_counter: true,
        allow_direct: true,
        ..stream(subjects.usage_stream(), "BitingLip daily usage of each API key and model", usage)
    })
    .await?;

    // Buckets on file storage, replicated like the streams, kept forever unless said.
    let bucket = |bucket: String, description: &str, max_bytes: i64, history: i64| kv::Config {
        bucket,
        max_bytes,
        description: description.into(),
        history,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    };
    let make = |data, config| ensure_kv(js, changes, data, config);
    let tasks = make(
        Data::Kept,
        kv::Config {
            max_age: cfg.tasks_max_age,
            ..bucket(subjects.tasks_bucket(), "BitingLip task status records", cfg.tasks_max_bytes, 1)
        },
    )
    .await?;
    let models = make(Data::Kept, bucket(subjects.models_bucket(), "BitingLip model registry", 256 * MIB, 5)).await?;
    // Heartbeats expire on their own: a node that stops writing disappears after the TTL.
    let nodes = make(
        Data::Ephemeral,
        kv::Config {
            max_age: cluster.node_ttl,
            storage: stream::StorageType::Memory,
            ..bucket(subjects.nodes_bucket(), "BitingLip node heartbeats", 64 * MIB, 1)
        },
    )
    .await?;
    let deployments =
        make(Data::Kept, bucket(subjects.deployments_bucket(), "BitingLip deployments and placements", 64 * MIB, 5))
            .await?;
    // The leader lease: the leader renews it; if it dies, the entry expires and another
    // cluster manager takes over.
    let leases = make(
        Data::Ephemeral,
        kv::Config { max_age: cluster.node_ttl, ..bucket(subjects.leases_bucket(), "BitingLip leases", MIB, 1) },
    )
    .await?;
    // API keys: only hashes of the secrets, replicated like the registry.
    let keys =
        make(Data::Kept, bucket(subjects.keys_bucket(), "BitingLip API keys (sha256 of each secret)", 256 * MIB, 5))
            .await?;
    // Responses API answers with their conversations (`previous_response_id`), kept as
    // long as the task records.
    let responses = make(
        Data::Kept,
        kv::Config {
            max_age: cfg.tasks_max_age,
            ..bucket(
                subjects.responses_bucket(),
                "BitingLip stored responses and their conversations",
                cfg.responses_max_bytes,
                1,
            )
        },
    )
    .await?;
    // Batches: a batch's record is its whole state. Kept until deleted.
    let batches = make(Data::Kept, bucket(subjects.batches_bucket(), "BitingLip batches", 64 * MIB, 1)).await?;
    // Files of the Files API (batch input, output and error files), kept until deleted,
    // at most `jetstream.files_max_bytes` in all.
    let files = ensure_object_store(
        js,
        &subjects.files_bucket(),
        "BitingLip files (the Files API)",
        None,
        cfg.files_max_bytes,
        cfg.replicas,
    )
    .await?;
    // Answers too large for one message, kept as long as the task records.
    let results = ensure_object_store(
        js,
        &subjects.results_bucket(),
        "BitingLip answers too large for one message",
        Some(cfg.tasks_max_age),
        cfg.tasks_max_bytes,
        cfg.replicas,
    )
    .await?;
    Ok(Provisioned { tasks, models, nodes, deployments, leases, keys, responses, batches, results, files })
}

/// The object store `bucket`, made when missing.
async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Option<std::time::Duration>,
    max_bytes: i64,
    replicas: usize,
) -> Result<object_store::ObjectStore, ProvisionError> {
    match js
        .create_object_store(object_store::Config {
            bucket: bucket.to_string(),
            description: Some(description.into()),
            max_age: max_age.unwrap_or_default(),
            max_bytes,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
    {
        Ok(store) => Ok(store),
        Err(create) => {
            let store = js.get_object_store(bucket).await.map_err(|_| err(bucket, create))?;
            let name = format!("OBJ_{bucket}");
            let mut stream = js.get_stream(&name).await.map_err(|e| err(&name, e))?;
            let have = stream.info().await.map_err(|e| err(&name, e))?.config.clone();
            refuse_foreign(&name, &have, &[format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")], None)?;
            Ok(store)
        }
    }
}

/// Refuses an existing stream or bucket with settings provisioning never makes (see
/// [`foreign`]): someone made it first (a leaked seed), and adopting it would copy, take
/// in or pass on what BitingLip stores.
fn refuse_foreign(
    name: &str,
    have: &stream::Config,
    subjects: &[String],
    root: Option<&str>,
) -> Result<(), ProvisionError> {
    let found = foreign(have, subjects, root);
    if found.is_empty() {
        return Ok(());
    }
    Err(err(
        name,
        format!(
            "it exists with settings BitingLip never makes ({}); it was not made by BitingLip's provisioning: \
             inspect it and delete it (`nats stream rm {name}`) before starting a node",
            found.join(", ")
        ),
    ))
}

/// Finds the buckets an earlier start provisioned, creating nothing (a client such as
/// the CLI must not change the cluster's streams).
pub(crate) async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Provisioned, ProvisionError> {
    let get = |bucket: String| async move { js.get_key_value(&bucket).await.map_err(|e| err(&bucket, e)) };
    Ok(Provisioned {
        tasks: get(subjects.tasks_bucket()).await?,
        models: get(subjects.models_bucket()).await?,
        nodes: get(subjects.nodes_bucket()).await?,
        deployments: get(subjects.deployments_bucket()).await?,
        leases: get(subjects.leases_bucket()).await?,
        keys: get(subjects.keys_bucket()).await?,
        responses: get(subjects.responses_bucket()).await?,
        batches: get(subjects.batches_bucket()).await?,
        results: {
            let bucket = subjects.results_bucket();
            js.get_object_store(&bucket).await.map_err(|e| err(&bucket, e))?
        },
        files: {
            let bucket = subjects.files_bucket();
            js.get_object_store(&bucket).await.map_err(|e| err(&bucket, e))?
        },
    })
}

const MIB: i64 = 1024 * 1024;

/// Events kept per task (each is a chunk of a few tokens, or a start or end).
const EVENTS_PER_TASK: i64 = 100_000;

/// How far provisioning may change an existing stream or bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    /// None: create what is missing, leave the rest (a user without the permission).
    None,
    /// Those that keep every stored message (raised limits, new subjects, replicas); one
    /// that would drop data is refused and logged. What a node does on its own.
    Safe,
    /// Every change, those that drop data too: `bitinglip admin migrate`.
    All,
}

/// Whether a stream's data may be dropped by a config change without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Data {
    /// Records that matter: a change that drops any needs `Changes::All`.
    Kept,
    /// Heartbeats and leases, rewritten every few seconds.
    Ephemeral,
}

async fn ensure_stream(
    js: &jetstream::Context,
    changes: Changes,
    config: stream::Config,
) -> Result<(), ProvisionError> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let have = existing.info().await.map_err(|e| err(&name, e))?.config.clone();
            // Subjects under the same root are the tasks' and events' own, whatever version
            // of BitingLip made them (an upgrade changes them).
            let root = config.subjects.first().and_then(|s| s.split('.').next()).map(|r| format!("{r}."));
            refuse_foreign(&name, &have, &config.subjects, root.as_deref())?;
            apply(js, changes, Data::Kept, &have, config).await
        }
        Err(_) => match js.create_stream(config.clone()).await {
            Ok(_) => Ok(()),
            // Another node created it between our get and create.
            Err(_) if js.get_stream(&name).await.is_ok() => Ok(()),
            Err(e) => Err(err(&name, e)),
        },
    }
}

/// Brings an existing stream to `want` as far as `changes` allows.
async fn apply(
    js: &jetstream::Context,
    changes: Changes,
    data: Data,
    have: &stream::Config,
    want: stream::Config,
) -> Result<(), ProvisionError> {
    let name = want.name.clone();
    if !differs(have, &want) {
        return Ok(());
    }
    let drops = if data == Data::Ephemeral { vec![] } else { drops_data(have, &want) };
    match changes {
        Changes::None => {
            tracing::warn!(stream = %name, "stream config differs from this node's; left as is (a node running the cluster manager updates it)");
        }
        Changes::Safe if !drops.is_empty() => {
            tracing::error!(
                stream = %name,
                changes = %drops.join(", "),
                "the new stream config would drop stored data; left as is: run `bitinglip admin migrate` to apply it"
            );
        }
        Changes::Safe | Changes::All => {
            js.update_stream(want).await.map_err(|e| err(&name, e))?;
            tracing::info!(stream = %name, dropped = %drops.join(", "), "stream config updated");
        }
    }
    Ok(())
}

async fn ensure_kv(
    js: &jetstream::Context,
    changes: Changes,
    data: Data,
    config: kv::Config,
) -> Result<kv::Store, ProvisionError> {
    let bucket = config.bucket.clone();
    match js.create_key_value(config.clone()).await {
        Ok(store) => Ok(store),
        Err(create) => {
            let store = js.get_key_value(&bucket).await.map_err(|_| err(&bucket, create))?;
            // An existing bucket: its settings (TTL, history, limits) follow the config
            // as far as `changes` allows, like a stream's.
            let name = format!("KV_{bucket}");
            let mut stream = js.get_stream(&name).await.map_err(|e| err(&name, e))?;
            let have = stream.info().await.map_err(|e| err(&name, e))?.config.clone();
            refuse_foreign(&name, &have, &[format!("$KV.{bucket}.>")], None)?;
            let mut want = have.clone();
            want.max_age = config.max_age;
            want.max_bytes = if config.max_bytes == 0 { -1 } else { config.max_bytes };
            want.max_messages_per_subject = config.history.max(1);
            want.num_replicas = config.num_replicas.max(1);
            apply(js, changes, data, &have, want).await?;
            Ok(store)
        }
    }
}

/// The durable pull consumer every worker of `model` shares for one priority class:
/// explicit acks, a lease of `ack_wait` renewed by in-progress acks, at most
/// `max_deliver` attempts.
pub fn worker_consumer_config(
    subjects: &Subjects,
    model: &str,
    priority: Priority,
    cfg: &JetStreamConfig,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects.worker_consumer(model, priority)),
        description: Some(format!("workers of {model}, {} tasks", priority.as_str())),
        // Its tasks, and those queued before tasks had subjects of their own.
        filter_subjects: vec![subjects.queue(model, priority), subjects.queue_before_task_subjects(model, priority)],
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: cfg.max_deliver,
        max_ack_pending: -1,
        ..Default::default()
    }
}

/// How long a tenant lane's consumer nobody pulls lives on: a task manager makes it again
/// when it queues the tenant's next task, or when a worker of the model starts.
const LANE_INACTIVE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The durable pull consumer of `tenant`'s lane of `model`'s queue for `priority`: the
/// same acks, lease and attempts as the per-class consumer ([`worker_consumer_config`]);
/// its metadata names the model, class, tenant and weight (a fetcher's scan of the lanes
/// reads them from the consumer listing).
pub fn tenant_consumer_config(
    subjects: &Subjects,
    model: &str,
    priority: Priority,
    tenant: &str,
    weight: u32,
    cfg: &JetStreamConfig,
) -> consumer::pull::Config {
    let metadata = [
        (LANE_MODEL, model.to_string()),
        (LANE_CLASS, priority.as_str().to_string()),
        (LANE_TENANT, tenant.to_string()),
        (LANE_WEIGHT, weight.to_string()),
    ];
    consumer::pull::Config {
        durable_name: Some(subjects.tenant_consumer(model, priority, tenant)),
        description: Some(format!("workers of {model}, {} tasks of tenant {tenant}", priority.as_str())),
        filter_subject: subjects.tenant_queue(model, priority, tenant),
        filter_subjects: Vec::new(),
        inactive_threshold: LANE_INACTIVE,
        metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..worker_consumer_config(subjects, model, priority, cfg)
    }
}

/// A tenant lane consumer's metadata keys.
pub(crate) const LANE_MODEL: &str = "bitinglip.model";
/// The lane's class.
pub(crate) const LANE_CLASS: &str = "bitinglip.class";
/// The lane's tenant.
pub(crate) const LANE_TENANT: &str = "bitinglip.tenant";
/// The tenant's weight when the lane was made or last brought up to date.
pub(crate) const LANE_WEIGHT: &str = "bitinglip.weight";

/// How long a pinned consumer nobody pulls lives on: its worker's peers empty it within
/// seconds of the worker's death, so this only clears consumers of workers long gone.
const PINNED_INACTIVE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The durable pull consumer of the interactive tasks pinned to `worker` of `model`
/// (cache-affinity routing): the same acks, lease and attempts as the shared consumer
/// ([`worker_consumer_config`]), so a pinned task's deliveries count and continue as any
/// other's, whoever pulls them.
pub fn pinned_consumer_config(
    subjects: &Subjects,
    model: &str,
    worker: &str,
    cfg: &JetStreamConfig,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects.pinned_consumer(model, worker)),
        description: Some(format!("tasks of {model} pinned to worker {worker}")),
        filter_subject: subjects.pinned_queue(model, worker),
        filter_subjects: Vec::new(),
        inactive_threshold: PINNED_INACTIVE,
        ..worker_consumer_config(subjects, model, Priority::Interactive, cfg)
    }
}
