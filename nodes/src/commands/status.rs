//! `bitinglip status`: the cluster's health on one screen: the bus, every live node with
//! its health and workers, and every model's queue.

use bitinglip_bus_schema::{GetClusterStatus, WorkerState};
use bitinglip_config::Config;

use crate::cli::StatusArgs;

async fn nodes(bus: &bitinglip_nats::Bus) -> anyhow::Result<Vec<bitinglip_bus_schema::NodeHeartbeat>> {
    status(bus).await.map(|(nodes, _)| nodes)
}

/// The live nodes, and what the answering cluster manager warns of.
async fn status(bus: &bitinglip_nats::Bus) -> anyhow::Result<(Vec<bitinglip_bus_schema::NodeHeartbeat>, Vec<String>)> {
    let status = bus
        .call(&GetClusterStatus {})
        .await
        .map_err(|err| anyhow::anyhow!("cluster status failed ({}): {}", err.kind, err.message))?;
    Ok((status.nodes, status.warnings))
}

/// `bitinglip workers ls`.
pub(super) async fn workers(config: Config, json: bool) -> anyhow::Result<()> {
    let nodes = nodes(&super::client_bus(&config).await?).await?;
    if json {
        let v: Vec<_> = nodes
            .iter()
            .flat_map(|n| {
                n.workers.iter().map(move |w| {
                    serde_json::json!({"worker_id": w.worker_id, "node_id": n.node_id, "model": w.model, "engine": w.engine,
                        "device": n.device, "gpus": w.gpus, "state": w.state, "in_flight": w.in_flight, "max_sequences": w.max_sequences,
                        "prefix_cache": w.prefix_cache})
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut rows =
        vec![["WORKER", "NODE", "MODEL", "ENGINE", "DEVICE", "STATE", "SLOTS", "CACHE"].map(String::from).to_vec()];
    for n in &nodes {
        for w in &n.workers {
            rows.push(vec![
                w.worker_id.clone(),
                n.node_id.clone(),
                w.model.clone(),
                w.engine.to_string(),
                device_of(n.device.as_str(), &w.gpus),
                w.state.to_string(),
                format!("{}/{}", w.in_flight, w.max_sequences),
                cache_of(&w.prefix_cache),
            ]);
        }
    }
    super::print_table(&rows);
    Ok(())
}

/// A worker's prefix cache: `2/3 hits, 1.8k tokens` (hits of lookups, prompt tokens taken
/// from it), `-` before its first lookup.
fn cache_of(used: &bitinglip_bus_schema::PrefixCacheUse) -> String {
    if used.lookups == 0 {
        return "-".into();
    }
    let tokens = match used.cached_tokens {
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    };
    format!("{}/{} hits, {tokens} tokens", used.hits, used.lookups)
}

/// `cuda`, or `cuda:0+1` for a worker pinned to GPUs 0 and 1.
fn device_of(device: &str, gpus: &[u32]) -> String {
    if gpus.is_empty() {
        return device.to_string();
    }
    let ordinals: Vec<String> = gpus.iter().map(u32::to_string).collect();
    format!("{device}:{}", ordinals.join("+"))
}

/// A node's health from its heartbeat: `failed` when a worker failed to load its model,
/// `loading` while one loads, `stale` when its heartbeat is late, else `ok`.
fn health(n: &bitinglip_bus_schema::NodeHeartbeat, now_ms: u64, interval_ms: u64) -> &'static str {
    if n.workers.iter().any(|w| w.state == WorkerState::Failed) {
        "failed"
    } else if n.workers.iter().any(|w| w.state == WorkerState::Loading) {
        "loading"
    } else if now_ms.saturating_sub(n.time_ms) > 2 * interval_ms {
        "stale"
    } else {
        "ok"
    }
}

pub(super) async fn run(config: Config, args: StatusArgs) -> anyhow::Result<()> {
    let bus = super::client_bus(&config).await?;
    let (nodes, warnings) = status(&bus).await?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let now = bitinglip_nats::now_ms();
    let interval = config.cluster.heartbeat_interval.as_millis() as u64;
    let store = bitinglip_nats::Store::open(&bus, &config).await.ok();
    let jetstream = match &store {
        Some(store) => store.jetstream_answers().await,
        None => false,
    };
    if args.json {
        let v: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node_id": n.node_id, "roles": n.roles, "http": n.http, "started_ms": n.started_ms,
                    "time_ms": n.time_ms, "version": n.version, "device": n.device,
                    "memory_total": n.memory_total, "memory_free": n.memory_free,
                    "health": health(n, now, interval),
                    "gpus": n.gpus,
                    "workers": n.workers.iter().map(|w| serde_json::json!({
                        "worker_id": w.worker_id, "model": w.model, "engine": w.engine, "state": w.state,
                        "in_flight": w.in_flight, "max_sequences": w.max_sequences, "gpus": w.gpus,
                        "prefix_cache": w.prefix_cache,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut models: Vec<String> = nodes.iter().flat_map(|n| n.workers.iter().map(|w| w.model.clone())).collect();
    models.sort();
    models.dedup();
    let queues = match &store {
        Some(store) => store.queue().stats(&models).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let workers: Vec<_> = nodes.iter().flat_map(|n| &n.workers).collect();
    let ready = workers.iter().filter(|w| w.state == WorkerState::Ready).count();
    let server = bus.client().server_info();
    println!(
        "NATS {} (nats-server {}) connected · JetStream {} · {} node(s) · {ready}/{} worker(s) ready",
        bitinglip_config::redact_urls(&config.nats.servers),
        server.version,
        if jetstream { "ok" } else { "UNREACHABLE" },
        nodes.len(),
        workers.len(),
    );
    println!();
    let mut rows = vec![[
        "NODE", "HEALTH", "ROLES", "HTTP", "DEVICE", "MEM FREE", "UPTIME", "WORKER", "MODEL", "ENGINE", "STATE",
        "SLOTS", "CACHE",
    ]
    .map(String::from)
    .to_vec()];
    for n in &nodes {
        let uptime = format!("{}s", now.saturating_sub(n.started_ms) / 1000);
        let mem = format!("{:.1}/{:.1} GB", n.memory_free as f64 / 1e9, n.memory_total as f64 / 1e9);
        let base = vec![
            n.node_id.clone(),
            health(n, now, interval).to_string(),
            n.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
            n.http.clone().unwrap_or_else(|| "-".into()),
            n.device.to_string(),
            mem,
            uptime,
        ];
        if n.workers.is_empty() {
            rows.push([base.clone(), vec!["-".into(); 6]].concat());
        }
        for w in &n.workers {
            rows.push(
                [
                    base.clone(),
                    vec![
                        w.worker_id.clone(),
                        w.model.clone(),
                        w.engine.to_string(),
                        w.state.to_string(),
                        format!("{}/{}", w.in_flight, w.max_sequences),
                        cache_of(&w.prefix_cache),
                    ],
                ]
                .concat(),
            );
        }
    }
    super::print_table(&rows);
    println!("{} node(s)", nodes.len());
    if nodes.iter().any(|n| !n.gpus.is_empty()) {
        println!();
        let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        let mut rows = vec![["NODE", "GPU", "NAME", "UUID", "MEM USED", "MEM TOTAL", "BUDGET", "CC", "UTIL"]
            .map(String::from)
            .to_vec()];
        for n in &nodes {
            for g in &n.gpus {
                rows.push(vec![
                    n.node_id.clone(),
                    g.index.to_string(),
                    g.name.clone(),
                    g.uuid.clone(),
                    gib(g.memory_used),
                    gib(g.memory_total),
                    gib(g.budget),
                    g.compute_capability.clone().unwrap_or_else(|| "-".into()),
                    g.utilization.map_or_else(|| "-".into(), |u| format!("{u}%")),
                ]);
            }
        }
        super::print_table(&rows);
    }
    if !queues.is_empty() {
        println!();
        let mut rows = vec![["QUEUE", "PRIORITY", "WAITING", "RUNNING", "OLDEST"].map(String::from).to_vec()];
        for q in &queues {
            rows.push(vec![
                q.model.clone(),
                q.priority.as_str().to_string(),
                q.waiting.to_string(),
                q.running.to_string(),
                format!("{:.1}s", q.oldest_age_secs),
            ]);
        }
        super::print_table(&rows);
        // Each tenant's lane, with what the model's live workers served it.
        let mut rows = vec![["QUEUE", "PRIORITY", "TENANT", "WEIGHT", "WAITING", "RUNNING", "OLDEST", "TOKENS SERVED"]
            .map(String::from)
            .to_vec()];
        for q in &queues {
            for l in &q.tenants {
                let served: u64 = workers
                    .iter()
                    .filter(|w| w.model == q.model)
                    .flat_map(|w| &w.served)
                    .filter(|s| s.tenant == l.tenant)
                    .map(|s| s.tokens)
                    .sum();
                rows.push(vec![
                    q.model.clone(),
                    q.priority.as_str().to_string(),
                    if l.tenant.is_empty() { "(before tenants)".to_string() } else { l.tenant.clone() },
                    l.weight.to_string(),
                    l.waiting.to_string(),
                    l.running.to_string(),
                    format!("{:.1}s", l.oldest_age_secs),
                    served.to_string(),
                ]);
            }
        }
        if rows.len() > 1 {
            println!();
            super::print_table(&rows);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{EngineKind, NodeHeartbeat, Role, WorkerInfo, WorkerState};

    use super::health;

    fn node(time_ms: u64, states: &[WorkerState]) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: "n".into(),
            roles: vec![Role::Worker],
            http: None,
            workers: states
                .iter()
                .map(|s| WorkerInfo {
                    worker_id: "w".into(),
                    model: "m".into(),
                    engine: EngineKind::Echo,
                    max_sequences: 1,
                    in_flight: 0,
                    state: *s,
                    running: vec![],
                    last_used_ms: 0,
                    placed: false,
                    gpus: vec![],
                    prefix_cache: Default::default(),
                    takes_pinned: true,
                    served: Vec::new(),
                    first_token_p95_ms: None,
                })
                .collect(),
            time_ms,
            version: "0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_workers_cache_reads_as_hits_of_lookups_and_tokens() {
        use bitinglip_bus_schema::PrefixCacheUse;
        assert_eq!(super::cache_of(&PrefixCacheUse::default()), "-");
        let used = PrefixCacheUse { lookups: 3, hits: 2, cached_tokens: 1_850 };
        assert_eq!(super::cache_of(&used), "2/3 hits, 1.9k tokens");
    }

    #[test]
    fn health_says_what_is_wrong_first() {
        assert_eq!(health(&node(1000, &[WorkerState::Ready]), 1500, 500), "ok");
        assert_eq!(health(&node(1000, &[]), 1500, 500), "ok");
        assert_eq!(health(&node(1000, &[WorkerState::Ready]), 3000, 500), "stale");
        assert_eq!(health(&node(1000, &[WorkerState::Ready, WorkerState::Loading]), 1500, 500), "loading");
        assert_eq!(health(&node(1000, &[WorkerState::Loading, WorkerState::Failed]), 3000, 500), "failed");
    }
}
