//! Prometheus metrics of one node, served as text at `/metrics` (the gateway's port, or
//! `metrics.listen`).
//!
//! Counters and histograms are recorded where things happen (gateway, task manager,
//! worker) into one registry per process; gauges that describe shared state (queue depth
//! and oldest task per model, slots in use, the NATS connection) are read when scraped, so
//! they cost nothing between scrapes. Queue gauges describe the cluster's queue, so every
//! node reports the same value: aggregate them with `max by (model, priority)`.

use std::sync::OnceLock;

use prometheus::{
    exponential_buckets, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::NodeContext;

/// Every series this node records.
pub struct Metrics {
    registry: Registry,
    /// Chat requests through the gateway, by model and outcome (`ok` or an error kind).
    pub requests: IntCounterVec,
    /// Submits answered by the task manager, by model and outcome (`accepted`,
    /// `duplicate` or an error kind).
    pub submits: IntCounterVec,
    /// Task attempts finished by workers, by model and outcome (`completed`, `failed`,
    /// `cancelled`, `handed_back`).
    pub tasks: IntCounterVec,
    /// From a worker's claim to the first token, by model.
    pub time_to_first_token: HistogramVec,
    /// Between consecutive tokens of one sequence, by model.
    pub inter_token_latency: HistogramVec,
    /// From acceptance to a worker's claim, by model.
    pub queue_time: HistogramVec,
    /// Tokens generated, by model (`rate()` of it is the model's tokens per second).
    pub generated_tokens: IntCounterVec,
    /// Tokens per second of each finished generation (after its first token), by model.
    pub tokens_per_second: HistogramVec,
    /// Generations that looked in their engine's prefix cache, by model.
    pub prefix_cache_lookups: IntCounterVec,
    /// Of those, the ones that found a prefix of their prompt there, by model.
    pub prefix_cache_hits: IntCounterVec,
    /// Prompt tokens taken from a prefix cache instead of computed, by model.
    pub prefix_cache_tokens: IntCounterVec,
    /// Interactive tasks queued, by model and route (`pinned` to a worker by cache
    /// affinity, or `shared`).
    pub routed: IntCounterVec,
    /// Pinned tasks a saturated worker released to the shared queue, by model.
    pub released: IntCounterVec,
    /// Pinned tasks a worker took over from a worker gone, by model.
    pub taken_over: IntCounterVec,
    /// Deliveries of a task after its first, by model.
    pub redeliveries: IntCounterVec,
    /// Cancels that stopped a running task, by model.
    pub cancels: IntCounterVec,
    /// From a cancel reaching the worker to the engine's last token, by model.
    pub cancel_to_stop: HistogramVec,
    /// Child actors the node supervisor restarted after a failure, by actor.
    pub actor_restarts: IntCounterVec,
    /// Tasks finished by this node's workers, by API key id and model.
    key_requests: IntCounterVec,
    /// Tokens of those tasks, by API key id, model and kind (`prompt`, `completion`).
    key_tokens: IntCounterVec,
    /// From acceptance to dispatch of a task's first delivery, by model and tenant.
    tenant_wait: HistogramVec,
    /// Tokens served (prompt computed and generated), by model and tenant.
    tenant_tokens: IntCounterVec,
    /// Tasks waiting in a tenant's lane, by model, class and tenant.
    tenant_waiting: IntGaugeVec,
    /// The tenants labelled so far (at most [`MAX_TENANT_LABELS`]; later ones are `other`).
    tenant_labels: Capped,
    /// The API keys labelled so far (at most [`MAX_KEY_LABELS`]).
    key_labels: Capped,
    slots_in_use: IntGaugeVec,
    slots: IntGaugeVec,
    /// This node's GPUs: memory total, used, free and budget (bytes), by GPU and field.
    gpu_memory: IntGaugeVec,
    gpu_utilization: IntGaugeVec,
    queue_depth: IntGaugeVec,
    queue_running: IntGaugeVec,
    queue_oldest_age: GaugeVec,
    /// Tasks given up after their most deliveries (poison), by model.
    pub poisoned: IntCounterVec,
    /// The share of a key's limit used in its current window, by key and limit.
    key_quota: GaugeVec,
    /// Deployments' replicas: wanted, serving, and the autoscaling bounds, by model.
    deployment_replicas: IntGaugeVec,
    /// Autoscaled deployments' targets, seconds, by model and signal.
    autoscale_target: GaugeVec,
    /// Live nodes running each role.
    cluster_nodes: IntGaugeVec,
    /// The account's JetStream file storage: used and (when it has one) its limit, bytes.
    jetstream_storage: IntGaugeVec,
    nats_reconnects: IntCounter,
    nats_connected: IntGauge,
    dropped: IntCounter,
    scrapes: IntCounter,
}

fn latency_buckets() -> Vec<f64> {
    // 100 µs to about 100 s.
    exponential_buckets(0.0001, 2.0, 21).expect("valid buckets")
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["model"])
                .expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("registered once");
            h
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let single = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        let queue_oldest_age = GaugeVec::new(
            Opts::new(
                "bitinglip_queue_oldest_task_age_seconds",
                "Age of the oldest task in the model's queue (waiting or running)",
            ),
            &["model", "priority"],
        )
        .expect("valid gauge");
        registry.register(Box::new(queue_oldest_age.clone())).expect("registered once");
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry.register(Box::new(c.clone())).expect("registered once");
            c
        };
        let scrapes = plain_counter("bitinglip_metrics_scrapes_total", "Scrapes of this endpoint");
        let float_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
            registry.register(Box::new(g.clone())).expect("registered once");
            g
        };
        Self {
            requests: counter("bitinglip_requests_total", "Chat requests through the gateway", &["model", "outcome"]),
            submits: counter(
                "bitinglip_task_submits_total",
                "Submits answered by the task manager",
                &["model", "outcome"],
            ),
            tasks: counter("bitinglip_tasks_total", "Task attempts finished by workers", &["model", "outcome"]),
            time_to_first_token: histogram(
                "bitinglip_time_to_first_token_seconds",
                "From a worker's claim to the first token",
                latency_buckets(),
            ),
            inter_token_latency: histogram(
                "bitinglip_inter_token_latency_seconds",
                "Between consecutive tokens of one sequence",
                latency_buckets(),
            ),
            queue_time: histogram(
                "bitinglip_queue_time_seconds",
                "From acceptance to a worker's claim",
                latency_buckets(),
            ),
            generated_tokens: counter("bitinglip_generated_tokens_total", "Tokens generated", &["model"]),
            prefix_cache_lookups: counter(
                "bitinglip_prefix_cache_lookups_total",
                "Generations that looked in their engine's prefix cache",
                &["model"],
            ),
            prefix_cache_hits: counter(
                "bitinglip_prefix_cache_hits_total",
                "Generations that found a prefix of their prompt in their engine's prefix cache",
                &["model"],
            ),
            prefix_cache_tokens: counter(
                "bitinglip_prefix_cache_tokens_total",
                "Prompt tokens taken from a prefix cache instead of computed",
                &["model"],
            ),
            tokens_per_second: histogram(
                "bitinglip_tokens_per_second",
                "Tokens per second of each finished generation",
                exponential_buckets(1.0, 2.0, 16).expect("valid buckets"),
            ),
            tenant_wait: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "bitinglip_tenant_wait_seconds",
                        "From acceptance to dispatch of a task's first delivery, by model and tenant",
                    )
                    .buckets(latency_buckets()),
                    &["model", "tenant"],
                )
                .expect("valid histogram");
                registry.register(Box::new(h.clone())).expect("registered once");
                h
            },
            tenant_tokens: counter(
                "bitinglip_tenant_tokens_total",
                "Tokens served (prompt tokens computed, and generated), by model and tenant",
                &["model", "tenant"],
            ),
            tenant_waiting: gauge(
                "bitinglip_tenant_waiting_tasks",
                "Tasks waiting in a tenant's lane of the model's queue",
                &["model", "priority", "tenant"],
            ),
            tenant_labels: Capped::new(MAX_TENANT_LABELS),
            key_labels: Capped::new(MAX_KEY_LABELS),
            routed: counter(
                "bitinglip_routed_tasks_total",
                "Interactive tasks queued, pinned to a worker by cache affinity or shared",
                &["model", "route"],
            ),
            released: counter(
                "bitinglip_pinned_released_total",
                "Pinned tasks a saturated worker released to the shared queue",
                &["model"],
            ),
            taken_over: counter(
                "bitinglip_pinned_taken_over_total",
                "Pinned tasks a worker took over from a worker gone",
                &["model"],
            ),
            redeliveries: counter("bitinglip_redeliveries_total", "Deliveries of a task after its first", &["model"]),
            cancels: counter("bitinglip_cancels_total", "Cancels that stopped a running task", &["model"]),
            cancel_to_stop: histogram(
                "bitinglip_cancel_to_stop_seconds",
                "From a cancel reaching the worker to the engine's last token",
                latency_buckets(),
            ),
            key_requests: counter(
                "bitinglip_key_requests_total",
                "Tasks finished by this node's workers, by API key id and model",
                &["key", "model"],
            ),
            key_tokens: counter(
                "bitinglip_key_tokens_total",
                "Tokens of tasks finished by this node's workers, by API key id, model and kind",
                &["key", "model", "kind"],
            ),
            actor_restarts: counter(
                "bitinglip_actor_restarts_total",
                "Child actors restarted by the node supervisor after a failure",
                &["actor"],
            ),
            slots_in_use: gauge("bitinglip_worker_slots_in_use", "Sequences a worker is running", &["model", "worker"]),
            slots: gauge("bitinglip_worker_slots", "Sequences a worker may run at once", &["model", "worker"]),
            gpu_memory: gauge(
                "bitinglip_gpu_memory_bytes",
                "Memory of this node's GPUs (NVML): total, used, free, and the budget BitingLip may use",
                &["gpu", "uuid", "name", "kind"],
            ),
            gpu_utilization: gauge(
                "bitinglip_gpu_utilization_percent",
                "Utilization of this node's GPUs (NVML) over the last sample",
                &["gpu", "uuid", "name"],
            ),
            queue_depth: gauge("bitinglip_queue_depth", "Tasks waiting in the model's queue", &["model", "priority"]),
            queue_running: gauge(
                "bitinglip_queue_running",
                "Tasks of the model's queue delivered and not yet acked",
                &["model", "priority"],
            ),
            queue_oldest_age,
            poisoned: counter(
                "bitinglip_poisoned_tasks_total",
                "Tasks given up after their most deliveries (poison), by model",
                &["model"],
            ),
            key_quota: float_gauge(
                "bitinglip_key_quota_used_ratio",
                "Share of an API key's limit used in its current window, at its last counted request",
                &["key", "limit"],
            ),
            deployment_replicas: gauge(
                "bitinglip_deployment_replicas",
                "Deployments' replicas: wanted, serving, and the autoscaling bounds min and max",
                &["model", "kind"],
            ),
            autoscale_target: float_gauge(
                "bitinglip_autoscale_target_seconds",
                "Autoscaled deployments' targets, seconds",
                &["model", "signal"],
            ),
            cluster_nodes: gauge("bitinglip_cluster_nodes", "Live nodes running each role", &["role"]),
            jetstream_storage: gauge(
                "bitinglip_jetstream_storage_bytes",
                "The account's JetStream file storage: used, and its limit when it has one",
                &["kind"],
            ),
            nats_reconnects: plain_counter(
                "bitinglip_nats_reconnects_total",
                "Reconnections to NATS since the node started",
            ),
            nats_connected: single("bitinglip_nats_connected", "1 while connected to NATS"),
            dropped: plain_counter(
                "bitinglip_dropped_messages_total",
                "Undecodable messages dropped (no reply subject to answer on)",
            ),
            scrapes,
            registry,
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Reads the gauges and renders every series in Prometheus text format.
pub async fn render(ctx: &NodeContext) -> String {
    let m = metrics();
    m.scrapes.inc();
    let stats = ctx.bus.client().statistics();
    // The client and the context keep their own totals; the counters catch up to them.
    let reconnects = stats.connects.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(1);
    m.nats_reconnects.inc_by(reconnects.saturating_sub(m.nats_reconnects.get()));
    m.nats_connected.set(i64::from(ctx.bus.client().connection_state() == async_nats::connection::State::Connected));
    let dropped = ctx.dropped.load(std::sync::atomic::Ordering::Relaxed);
    m.dropped.inc_by(dropped.saturating_sub(m.dropped.get()));

    m.slots_in_use.reset();
    m.slots.reset();
    if let Ok(workers) = ctx.workers.read() {
        for w in workers.values() {
            m.slots_in_use.with_label_values(&[&w.model, &w.worker_id]).set(i64::from(w.in_flight));
            m.slots.with_label_values(&[&w.model, &w.worker_id]).set(i64::from(w.max_sequences));
        }
    }
    m.gpu_memory.reset();
    m.gpu_utilization.reset();
    for g in crate::gpus::inventory(ctx.config.worker.gpu_budget) {
        let index = g.index.to_string();
        for (kind, bytes) in
            [("total", g.memory_total), ("used", g.memory_used), ("free", g.memory_free), ("budget", g.budget)]
        {
            m.gpu_memory.with_label_values(&[&index, &g.uuid, &g.name, kind]).set(bytes as i64);
        }
        if let Some(u) = g.utilization {
            m.gpu_utilization.with_label_values(&[&index, &g.uuid, &g.name]).set(i64::from(u));
        }
    }
    read_queues(ctx).await;
    read_cluster(ctx).await;
    TextEncoder::new().encode_to_string(&m.registry.gather()).unwrap_or_default()
}

/// Most distinct tenants labelled in the per-tenant series; later tenants count as
/// `other`, so a cluster with many tenants cannot grow a node's series without bound.
const MAX_TENANT_LABELS: usize = 1000;

/// Label values seen so far, at most a number of them: later values are `other`, so a
/// cluster with many keys or tenants cannot grow a node's series without bound.
struct Capped {
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
    most: usize,
}

impl Capped {
    fn new(most: usize) -> Self {
        Self { seen: Default::default(), most }
    }

    /// `value` as a label: itself while under the cap, else `other`.
    fn label(&self, value: &str) -> String {
        match self.seen.lock() {
            Ok(mut seen) if seen.contains(value) || seen.len() < self.most => {
                seen.insert(value.to_string());
                value.to_string()
            }
            _ => "other".to_string(),
        }
    }
}

impl Metrics {
    fn tenant_label(&self, tenant: &str) -> String {
        self.tenant_labels.label(tenant)
    }

    /// Counts a task's wait from acceptance to its dispatch, under its tenant.
    pub(crate) fn tenant_wait(&self, model: &str, tenant: &str, secs: f64) {
        self.tenant_wait.with_label_values(&[model, &self.tenant_label(tenant)]).observe(secs);
    }

    /// Counts the tokens a finished task cost its tenant.
    pub(crate) fn tenant_tokens(&self, model: &str, tenant: &str, tokens: u64) {
        self.tenant_tokens.with_label_values(&[model, &self.tenant_label(tenant)]).inc_by(tokens);
    }
}

/// Gauges of the cluster's state: live nodes by role, deployments' replicas and
/// autoscaling, JetStream's storage (the same on every node: aggregate with `max`).
/// The nodes come from the node's watch on the heartbeats (no round trip).
async fn read_cluster(ctx: &NodeContext) {
    let m = metrics();
    let nodes = &ctx.nodes.live();
    m.cluster_nodes.reset();
    for role in bitinglip_bus_schema::Role::ALL {
        let n = nodes.iter().filter(|n| n.runs(role)).count();
        m.cluster_nodes.with_label_values(&[role.as_str()]).set(n as i64);
    }
    if let Ok(deployments) = ctx.store.deployments().list().await {
        m.deployment_replicas.reset();
        m.autoscale_target.reset();
        let ready = bitinglip_bus_schema::ready_workers(nodes);
        for d in &deployments {
            let serving = ready.get(d.model.as_str()).map_or(0, Vec::len);
            // Its poison counter exists at 0, so that `increase()` sees the first.
            m.poisoned.with_label_values(&[&d.model]);
            let replicas = &m.deployment_replicas;
            replicas.with_label_values(&[&d.model, "wanted"]).set(i64::from(d.replicas));
            replicas.with_label_values(&[&d.model, "serving"]).set(serving as i64);
            if let Some(a) = &d.autoscale {
                replicas.with_label_values(&[&d.model, "min"]).set(i64::from(a.min_replicas));
                replicas.with_label_values(&[&d.model, "max"]).set(i64::from(a.max_replicas));
                let target = a.target_ms as f64 / 1000.0;
                m.autoscale_target.with_label_values(&[&d.model, a.signal.as_str()]).set(target);
            }
        }
    }
    if let Ok((used, limit)) = ctx.store.storage().await {
        m.jetstream_storage.reset();
        m.jetstream_storage.with_label_values(&["used"]).set(used as i64);
        if let Some(limit) = limit {
            m.jetstream_storage.with_label_values(&["limit"]).set(limit as i64);
        }
    }
}

/// Queue gauges for every model a live worker serves, from the tasks stream.
async fn read_queues(ctx: &NodeContext) {
    let m = metrics();
    let nodes = match ctx.store.nodes().live().await {
        Ok(nodes) => nodes,
        Err(err) => {
            tracing::debug!(cause = %err, "queue gauges not read: no node list");
            return;
        }
    };
    let mut models: Vec<String> = nodes.iter().flat_map(|n| n.workers.iter().map(|w| w.model.clone())).collect();
    // This node's own workers count even before their heartbeat is read back.
    if let Ok(workers) = ctx.workers.read() {
        models.extend(workers.values().map(|w| w.model.clone()));
    }
    models.sort();
    models.dedup();
    let stats = match ctx.store.queue().stats(&models).await {
        Ok(stats) => stats,
        Err(err) => {
            tracing::debug!(cause = %err, "queue gauges not read");
            return;
        }
    };
    m.queue_depth.reset();
    m.queue_running.reset();
    m.queue_oldest_age.reset();
    m.tenant_waiting.reset();
    for q in stats {
        for lane in &q.tenants {
            let tenant = m.tenant_label(&lane.tenant);
            m.tenant_waiting
                .with_label_values(&[q.model.as_str(), q.priority.as_str(), &tenant])
                .add(lane.waiting as i64);
        }
        let labels = [q.model.as_str(), q.priority.as_str()];
        m.queue_depth.with_label_values(&labels).set(q.waiting as i64);
        m.queue_running.with_label_values(&labels).set(q.running as i64);
        m.queue_oldest_age.with_label_values(&labels).set(q.oldest_age_secs);
    }
}

/// The `model` label of a request's series: the model when a live node serves it,
/// `other` when it names one nobody serves (so a caller cannot mint series with made-up
/// names), `-` when the request named none that could be read.
pub(crate) fn model_label<'a>(nodes: &bitinglip_nats::store::nodes::NodeWatch, model: Option<&'a str>) -> &'a str {
    match model {
        None => "-",
        Some(m) if nodes.serves(m) => m,
        Some(_) => "other",
    }
}

/// Most distinct API keys labelled in the per-key series; later keys count as `other`, so
/// a cluster with many keys cannot grow a node's series without bound.
const MAX_KEY_LABELS: usize = 1000;

/// Counts a finished task's usage under its API key id (never a secret).
pub(crate) fn count_key_usage(key: &str, model: &str, (prompt, completion): (u32, u32)) {
    let m = metrics();
    let label = m.key_labels.label(key);
    m.key_requests.with_label_values(&[&label, model]).inc();
    m.key_tokens.with_label_values(&[&label, model, "prompt"]).inc_by(u64::from(prompt));
    m.key_tokens.with_label_values(&[&label, model, "completion"]).inc_by(u64::from(completion));
}

/// Notes the share of each of a key's limits used in its current window.
pub(crate) fn key_quota(key: &str, used: &[(&str, f64)]) {
    let m = metrics();
    let label = m.key_labels.label(key);
    for (limit, ratio) in used {
        m.key_quota.with_label_values(&[label.as_str(), limit]).set(*ratio);
    }
}

/// Counts a submit's answer: `accepted`, `duplicate`, or the rejection's kind (an unknown
/// model is counted under `-`, so a caller cannot mint series).
pub(crate) fn count_submit(model: &str, reply: &bitinglip_bus_schema::SubmitReply) {
    use bitinglip_bus_schema::{ErrorKind, SubmitReply};
    let (model, outcome) = match reply {
        SubmitReply::Accepted(a) if a.duplicate => (model, "duplicate"),
        SubmitReply::Accepted(_) => (model, "accepted"),
        SubmitReply::Rejected(e)
            if matches!(e.kind, ErrorKind::UnknownModel | ErrorKind::InvalidRequest | ErrorKind::Decode) =>
        {
            ("-", e.kind.as_str())
        }
        SubmitReply::Rejected(e) => (model, e.kind.as_str()),
    };
    metrics().submits.with_label_values(&[model, outcome]).inc();
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{ErrorKind, SubmitReply, TaskAccepted, TaskId, WireError};

    use super::*;

    #[test]
    fn submits_are_counted_by_model_and_outcome_and_unknown_models_mint_no_series() {
        let accepted = |duplicate| {
            SubmitReply::Accepted(TaskAccepted {
                task_id: TaskId::parse("t1").unwrap(),
                events_subject: "s".into(),
                duplicate,
            })
        };
        count_submit("counted-model", &accepted(false));
        count_submit("counted-model", &accepted(true));
        count_submit("counted-model", &SubmitReply::Rejected(WireError::new(ErrorKind::Overloaded, "full")));
        count_submit("no-such-model", &SubmitReply::Rejected(WireError::new(ErrorKind::UnknownModel, "?")));
        let text = TextEncoder::new().encode_to_string(&metrics().registry.gather()).unwrap();
        for line in [
            r#"bitinglip_task_submits_total{model="counted-model",outcome="accepted"} 1"#,
            r#"bitinglip_task_submits_total{model="counted-model",outcome="duplicate"} 1"#,
            r#"bitinglip_task_submits_total{model="counted-model",outcome="overloaded"} 1"#,
            r#"bitinglip_task_submits_total{model="-",outcome="unknown_model"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("no-such-model"));
    }
}
