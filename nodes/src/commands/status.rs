//! `bitinglip status`: the cluster on one screen.

use bitinglip_bus_schema::{ClusterStatus, GetClusterStatus};
use bitinglip_config::Config;

use crate::cli::StatusArgs;

async fn nodes(config: &Config) -> anyhow::Result<Vec<bitinglip_bus_schema::NodeHeartbeat>> {
    let bus = super::client_bus(config).await?;
    match bus.request::<_, ClusterStatus>(bus.subjects().cluster_status(), &GetClusterStatus {}, None, None).await? {
        ClusterStatus::Nodes { nodes, .. } => Ok(nodes),
        ClusterStatus::Error(err) => anyhow::bail!("cluster status failed ({}): {}", err.kind, err.message),
    }
}

/// `bitinglip workers ls`.
pub(super) async fn workers(config: Config, json: bool) -> anyhow::Result<()> {
    let nodes = nodes(&config).await?;
    if json {
        let v: Vec<_> = nodes
            .iter()
            .flat_map(|n| {
                n.workers.iter().map(move |w| {
                    serde_json::json!({"worker_id": w.worker_id, "node_id": n.node_id, "model": w.model, "engine": w.engine,
                        "device": n.device, "state": w.state, "in_flight": w.in_flight, "max_sequences": w.max_sequences})
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut rows = vec![["WORKER", "NODE", "MODEL", "ENGINE", "DEVICE", "STATE", "SLOTS"].map(String::from).to_vec()];
    for n in &nodes {
        for w in &n.workers {
            rows.push(vec![
                w.worker_id.clone(),
                n.node_id.clone(),
                w.model.clone(),
                w.engine.clone(),
                n.device.clone(),
                w.state.clone(),
                format!("{}/{}", w.in_flight, w.max_sequences),
            ]);
        }
    }
    super::print_table(&rows);
    Ok(())
}

pub(super) async fn run(config: Config, args: StatusArgs) -> anyhow::Result<()> {
    let nodes = nodes(&config).await?;
    if args.json {
        let v: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node_id": n.node_id, "roles": n.roles, "http": n.http, "started_ms": n.started_ms,
                    "time_ms": n.time_ms, "version": n.version, "device": n.device,
                    "memory_total": n.memory_total, "memory_free": n.memory_free,
                    "workers": n.workers.iter().map(|w| serde_json::json!({
                        "worker_id": w.worker_id, "model": w.model, "engine": w.engine, "state": w.state,
                        "in_flight": w.in_flight, "max_sequences": w.max_sequences,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let now = bitinglip_nats::now_ms();
    let mut rows = vec![["NODE", "ROLES", "HTTP", "DEVICE", "MEM FREE", "UPTIME", "WORKER", "MODEL", "ENGINE", "STATE", "SLOTS"].map(String::from).to_vec()];
    for n in &nodes {
        let uptime = format!("{}s", now.saturating_sub(n.started_ms) / 1000);
        let mem = format!("{:.1}/{:.1} GB", n.memory_free as f64 / 1e9, n.memory_total as f64 / 1e9);
        let base = vec![n.node_id.clone(), n.roles.join(","), n.http.clone().unwrap_or_else(|| "-".into()), n.device.clone(), mem, uptime];
        if n.workers.is_empty() {
            rows.push([base.clone(), vec!["-".into(); 5]].concat());
        }
        for w in &n.workers {
            rows.push([base.clone(), vec![
                w.worker_id.clone(),
                w.model.clone(),
                w.engine.clone(),
                w.state.clone(),
                format!("{}/{}", w.in_flight, w.max_sequences),
            ]].concat());
        }
    }
    super::print_table(&rows);
    println!("{} node(s)", nodes.len());
    Ok(())
}
