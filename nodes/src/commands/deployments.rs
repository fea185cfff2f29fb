//! `bitinglip deployments …`: declare, list and remove deployments.

use anyhow::bail;
use bitinglip_bus_schema::{
    Autoscale, Constraints, DeleteDeployment, DeviceKind, EngineKind, ListDeployments, ModelSpec, Quantize, ScaleEvent,
    ScaleSignal, SetDeployment,
};
use bitinglip_config::{parse_bytes, Config};

use crate::cli::{DeploymentArgs, DeploymentsCommand};

fn size(flag: &str, v: Option<String>) -> anyhow::Result<Option<u64>> {
    v.map(|v| parse_bytes(&v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))).transpose()
}

fn human(bytes: u64) -> String {
    if bytes == 0 {
        return "-".into();
    }
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `node` or `node:gpu0+gpu1`.
fn place(r: &bitinglip_bus_schema::ReplicaPlace) -> String {
    if r.gpus.is_empty() {
        return r.node.clone();
    }
    let gpus: Vec<String> = r.gpus.iter().map(|g| format!("gpu{g}")).collect();
    format!("{}:{}", r.node, gpus.join("+"))
}

/// A device kind named on the command line.
fn device(name: &str) -> anyhow::Result<DeviceKind> {
    DeviceKind::parse(name).ok_or_else(|| anyhow::anyhow!("--device {name:?}: use cpu, cuda or metal"))
}

/// A duration flag (`2s`, `500ms`), in ms.
fn millis(flag: &str, v: &str) -> anyhow::Result<u64> {
    let d = humantime::parse_duration(v).map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e} (write `2s`, `500ms`)"))?;
    Ok(d.as_millis() as u64)
}

/// The autoscaling the flags ask for: none without `--max-replicas`.
fn autoscale(a: &DeploymentArgs) -> anyhow::Result<Option<Autoscale>> {
    let Some(max_replicas) = a.max_replicas else {
        if a.target_queue_wait.is_some() || a.target_first_token.is_some() || a.scale_to_zero_after.is_some() {
            bail!("an autoscale target or --scale-to-zero-after needs --max-replicas");
        }
        return Ok(None);
    };
    let (signal, target_ms) = match (&a.target_first_token, &a.target_queue_wait) {
        (Some(t), _) => (ScaleSignal::FirstToken, millis("--target-first-token", t)?),
        (None, Some(t)) => (ScaleSignal::QueueWait, millis("--target-queue-wait", t)?),
        (None, None) => (ScaleSignal::QueueWait, 2000),
    };
    let idle_ms = a.scale_to_zero_after.as_deref().map(|v| millis("--scale-to-zero-after", v)).transpose()?;
    let scale = Autoscale { min_replicas: a.min_replicas.unwrap_or(1), max_replicas, signal, target_ms, idle_ms };
    if let Some(problem) = scale.problem() {
        bail!("{problem}");
    }
    Ok(Some(scale))
}

/// A scaling decision as `deployments ls` shows it: `1 → 3 at 12:04:05: why`.
fn scaled(e: &ScaleEvent) -> String {
    let secs = e.at_ms / 1000;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    format!("{} → {} at {h:02}:{m:02}:{s:02}: {}", e.from, e.to, e.reason)
}

/// The AUTOSCALE column: `1-3 queue_wait<2s`, or `-`.
fn bounds(a: Option<&Autoscale>) -> String {
    a.map_or("-".into(), |a| {
        format!(
            "{}-{} {}<{}",
            a.min_replicas,
            a.max_replicas,
            a.signal,
            humantime::format_duration(std::time::Duration::from_millis(a.target_ms),)
        )
    })
}

fn request(a: DeploymentArgs) -> anyhow::Result<SetDeployment> {
    let autoscale = autoscale(&a)?;
    let Some(engine) = EngineKind::parse(&a.engine) else { bail!("--engine {:?}: use mistralrs or echo", a.engine) };
    Ok(SetDeployment {
        model: a.name,
        spec: ModelSpec {
            source: a.source,
            revision: a.revision,
            engine,
            max_sequences: a.max_sequences,
            echo_tokens_per_sec: None,
            context_length: a.context_length,
            quantize: a
                .quantize
                .as_deref()
                .map(Quantize::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--quantize {e}"))?,
        },
        replicas: a.replicas,
        constraints: Constraints {
            min_memory: size("--min-memory", a.min_memory)?,
            device: a.device.as_deref().map(device).transpose()?,
        },
        memory: size("--memory", a.memory)?,
        autoscale,
    })
}

pub(super) async fn run(config: Config, cmd: DeploymentsCommand) -> anyhow::Result<()> {
    let bus = super::client_bus(&config).await?;
    match cmd {
        DeploymentsCommand::Set(args) => {
            let req = request(*args)?;
            let d = bus.call(&req).await.map_err(super::said)?;
            println!("{}: {} replica(s)", d.model, d.replicas);
        }
        DeploymentsCommand::Rm { model } => {
            bus.call(&DeleteDeployment { model: model.clone() }).await.map_err(super::said)?;
            println!("{model}: removed");
        }
        DeploymentsCommand::Ls { json } => {
            let all = bus.call(&ListDeployments {}).await.map_err(super::said)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(());
            }
            let all_unplaced: Vec<String> = all
                .iter()
                .filter_map(|s| s.unplaced.as_ref().map(|why| format!("{}: {why}", s.deployment.model)))
                .collect();
            let mut rows = vec![[
                "MODEL",
                "SOURCE",
                "ENGINE",
                "REPLICAS",
                "PLACED",
                "SERVING",
                "MEMORY",
                "WEIGHTS",
                "KV CACHE",
                "QUANTIZE",
                "ON-DEMAND",
                "AUTOSCALE",
                "LAST SCALED (UTC)",
            ]
            .map(String::from)
            .to_vec()];
            for s in all {
                let d = &s.deployment;
                rows.push(vec![
                    d.model.clone(),
                    d.spec.source.clone(),
                    format!("{:?}", d.spec.engine).to_lowercase(),
                    d.replicas.to_string(),
                    if s.replicas.is_empty() {
                        "-".into()
                    } else {
                        s.replicas.iter().map(place).collect::<Vec<_>>().join(",")
                    },
                    if s.serving.is_empty() { "-".into() } else { s.serving.join(",") },
                    human(d.memory.or(s.estimate.as_ref().map(|e| e.total)).unwrap_or(0)),
                    human(s.estimate.as_ref().map_or(0, |e| e.weights)),
                    human(s.estimate.as_ref().map_or(0, |e| e.kv_cache)),
                    d.spec.quantize.map_or("-".into(), |q| q.to_string()),
                    if d.on_demand { "yes".into() } else { "no".into() },
                    bounds(d.autoscale.as_ref()),
                    d.scaling.last().map_or("-".into(), scaled),
                ]);
            }
            super::print_table(&rows);
            for s in all_unplaced {
                eprintln!("{s}");
            }
        }
    }
    Ok(())
}
