//! `bitinglip status`: the cluster on one screen.

use bitinglip_bus_schema::{ClusterStatus, GetClusterStatus};
use bitinglip_config::Config;

use crate::cli::StatusArgs;

pub(super) async fn run(config: Config, args: StatusArgs) -> anyhow::Result<()> {
    let bus = super::client_bus(&config).await?;
    let nodes = match bus.request::<_, ClusterStatus>(bus.subjects().cluster_status(), &GetClusterStatus {}, None, None).await? {
        ClusterStatus::Nodes { nodes } => nodes,
        ClusterStatus::Error(err) => anyhow::bail!("cluster status failed ({}): {}", err.kind, err.message),
    };
    if args.json {
        let v: Vec<_> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "node_id": n.node_id, "roles": n.roles, "http": n.http, "started_ms": n.started_ms,
                    "time_ms": n.time_ms, "version": n.version,
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
    let mut rows = vec![["NODE", "ROLES", "HTTP", "UPTIME", "WORKER", "MODEL", "ENGINE", "STATE", "SLOTS"].map(String::from).to_vec()];
    for n in &nodes {
        let uptime = format!("{}s", now.saturating_sub(n.started_ms) / 1000);
        let base = vec![n.node_id.clone(), n.roles.join(","), n.http.clone().unwrap_or_else(|| "-".into()), uptime];
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
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
    println!("{} node(s)", nodes.len());
    Ok(())
}
