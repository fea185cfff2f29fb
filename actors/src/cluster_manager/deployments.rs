//! Deployments and placements in the deployments bucket, and the operations on them that
//! any node may run (set, delete, load, unload): every write is a compare-and-swap, so
//! concurrent writers (two task managers loading the same model on demand, a CLI and the
//! leader) never lose each other's change.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use bitinglip_bus_schema::{
    decode_body, encode, Deployment, DeploymentStatus, Envelope, ErrorKind, ModelSource, ModelSpec,
    NodePlacement, SetDeployment, WireError,
};
use bitinglip_nats::now_ms;
use futures::TryStreamExt;
use serde::{de::DeserializeOwned, Serialize};

use crate::NodeContext;

fn unavailable(e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorKind::Unavailable, format!("deployments store: {e}"))
}

fn encode_value<T: Serialize>(ctx: &NodeContext, value: &T) -> Result<bytes::Bytes, WireError> {
    let env = Envelope::new(ulid::Ulid::new().to_string(), now_ms(), ctx.node_id(), value);
    encode(&env).map(Into::into).map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))
}

/// Reads one entry with its revision (None when absent or deleted).
async fn entry<T: DeserializeOwned>(ctx: &NodeContext, key: &str) -> Result<Option<(T, u64)>, WireError> {
    match ctx.kv.deployments.entry(key).await.map_err(unavailable)? {
        Some(e) if e.operation == kv::Operation::Put => decode_body::<T>(&e.value, usize::MAX)
            .map(|v| Some((v, e.revision)))
            .map_err(|err| WireError::new(ErrorKind::Internal, format!("entry {key}: {err}"))),
        _ => Ok(None),
    }
}

/// Every value whose key starts with `prefix`, by key.
async fn scan<T: DeserializeOwned>(ctx: &NodeContext, prefix: &str) -> Result<BTreeMap<String, T>, WireError> {
    let keys: Vec<String> = ctx.kv.deployments.keys().await.map_err(unavailable)?.try_collect().await.map_err(unavailable)?;
    let mut out = BTreeMap::new();
    for key in keys.into_iter().filter(|k| k.starts_with(prefix)) {
        let Some(bytes) = ctx.kv.deployments.get(&key).await.map_err(unavailable)? else { continue };
        match decode_body::<T>(&bytes, usize::MAX) {
            Ok(v) => {
                out.insert(key, v);
            }
            Err(err) => tracing::warn!(key = %key, cause = %err, "undecodable deployments entry ignored"),
        }
    }
    Ok(out)
}

/// One model's deployment.
pub async fn get(ctx: &NodeContext, model: &str) -> Result<Option<Deployment>, WireError> {
    Ok(entry::<Deployment>(ctx, &ctx.bus.subjects().deployment_key(model)).await?.map(|(d, _)| d))
}

/// Every deployment, by model id.
pub async fn list(ctx: &NodeContext) -> Result<Vec<Deployment>, WireError> {
    let mut all: Vec<Deployment> = scan::<Deployment>(ctx, "deploy.").await?.into_values().collect();
    all.sort_by(|a, b| a.model.cmp(&b.model));
    Ok(all)
}

/// Every node's placement, by node id.
pub async fn placements(ctx: &NodeContext) -> Result<BTreeMap<String, NodePlacement>, WireError> {
    Ok(scan::<NodePlacement>(ctx, "place.").await?.into_values().map(|p| (p.node.clone(), p)).collect())
}

/// Writes one node's placement (the leader only).
pub async fn write_placement(ctx: &NodeContext, placement: &NodePlacement) -> Result<(), WireError> {
    let bytes = encode_value(ctx, placement)?;
    ctx.kv.deployments.put(ctx.bus.subjects().placement_key(&placement.node), bytes).await.map_err(unavailable)?;
    Ok(())
}

/// Removes a node's placement (the node is gone).
pub async fn delete_placement(ctx: &NodeContext, node: &str) -> Result<(), WireError> {
    ctx.kv.deployments.delete(ctx.bus.subjects().placement_key(node)).await.map_err(unavailable)?;
    Ok(())
}

/// Reads, changes and writes one deployment with compare-and-swap, retrying on a
/// concurrent change. `change` gets the current deployment (or None) and returns the new
/// one, or None to leave it as is.
pub async fn modify(
    ctx: &NodeContext,
    model: &str,
    mut change: impl FnMut(Option<Deployment>) -> Result<Option<Deployment>, WireError>,
) -> Result<Option<Deployment>, WireError> {
    let key = ctx.bus.subjects().deployment_key(model);
    for _ in 0..20 {
        let current = entry::<Deployment>(ctx, &key).await?;
        let (old, revision) = match current {
            Some((d, rev)) => (Some(d), Some(rev)),
            None => (None, None),
        };
        let Some(mut new) = change(old.clone())? else { return Ok(old) };
        new.updated_ms = now_ms();
        new.created_ms = old.as_ref().map_or(new.updated_ms, |o| o.created_ms);
        let bytes = encode_value(ctx, &new)?;
        let written = match revision {
            Some(rev) => ctx.kv.deployments.update(&key, bytes, rev).await.map(|_| ()).map_err(|e| e.to_string()),
            None => ctx.kv.deployments.create(&key, bytes).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        match written {
            Ok(()) => return Ok(Some(new)),
            Err(err) => tracing::debug!(model, cause = %err, "deployment changed meanwhile; retrying"),
        }
    }
    Err(WireError::new(ErrorKind::Unavailable, format!("deployment of `{model}` keeps changing; retry")))
}

fn check_spec(spec: &ModelSpec) -> Result<(), WireError> {
    let invalid = |m: String| Err(WireError::new(ErrorKind::InvalidRequest, m));
    if spec.source.trim().is_empty() {
        return invalid("`spec.source` is empty: give a Hugging Face id or a model folder".into());
    }
    if spec.max_sequences == Some(0) {
        return invalid("`spec.max_sequences` must be at least 1".into());
    }
    if let Some(t) = spec.echo_tokens_per_sec {
        if !(t >= 0.0 && t.is_finite()) {
            return invalid(format!("`spec.echo_tokens_per_sec` is {t}; use 0 or above"));
        }
    }
    Ok(())
}

/// Creates or replaces a deployment declared by an operator.
pub async fn set(ctx: &NodeContext, req: SetDeployment) -> Result<Deployment, WireError> {
    check_spec(&req.spec)?;
    let model = req.model.clone().unwrap_or_else(|| req.spec.source.clone());
    if model.trim().is_empty() {
        return Err(WireError::new(ErrorKind::InvalidRequest, "`model` is empty"));
    }
    if req.replicas > 1000 {
        return Err(WireError::new(ErrorKind::InvalidRequest, format!("`replicas` is {}; at most 1000", req.replicas)));
    }
    if let Some(dev) = &req.constraints.device {
        if !matches!(dev.as_str(), "cpu" | "cuda" | "metal") {
            return Err(WireError::new(ErrorKind::InvalidRequest, format!("`constraints.device` is {dev:?}; use cpu, cuda or metal")));
        }
    }
    let deployment = Deployment {
        model: model.clone(),
        spec: req.spec,
        replicas: req.replicas,
        constraints: req.constraints,
        memory: req.memory,
        on_demand: false,
        created_ms: 0,
        updated_ms: 0,
    };
    let stored = modify(ctx, &model, |_| Ok(Some(deployment.clone()))).await?;
    tracing::info!(model = %model, replicas = deployment.replicas, "deployment set");
    stored.ok_or_else(|| WireError::new(ErrorKind::Internal, "deployment not written"))
}

/// Creates a deployment from config when the cluster has none for its model.
pub async fn seed(ctx: &NodeContext, d: &bitinglip_config::DeploymentConfig) -> Result<(), WireError> {
    let req = SetDeployment {
        model: d.name.clone(),
        spec: ModelSpec {
            source: d.source.clone(),
            revision: Some(d.revision.clone()),
            engine: crate::worker::wire_engine(d.engine),
            max_sequences: Some(d.max_sequences),
            echo_tokens_per_sec: Some(d.echo_tokens_per_sec),
        },
        replicas: d.replicas,
        constraints: bitinglip_bus_schema::Constraints { min_memory: d.min_memory, device: d.device.clone() },
        memory: d.memory,
    };
    let model = req.model.clone().unwrap_or_else(|| req.spec.source.clone());
    if get(ctx, &model).await?.is_none() {
        set(ctx, req).await?;
    }
    Ok(())
}

/// Removes a deployment; its replicas are unloaded at the next reconcile.
pub async fn delete(ctx: &NodeContext, model: &str) -> Result<bool, WireError> {
    if get(ctx, model).await?.is_none() {
        return Ok(false);
    }
    ctx.kv.deployments.delete(ctx.bus.subjects().deployment_key(model)).await.map_err(unavailable)?;
    tracing::info!(model, "deployment deleted");
    Ok(true)
}

/// Makes sure a known model has at least `replicas` replicas: raises its deployment, or
/// creates an on-demand one from the registry entry.
pub async fn ensure_loaded(ctx: &NodeContext, model: &str, replicas: u32) -> Result<Deployment, WireError> {
    let record = crate::model_manager::get_model(ctx, model).await?;
    let stored = modify(ctx, model, |current| match current {
        Some(d) if d.replicas >= replicas => Ok(None),
        Some(mut d) => {
            d.replicas = replicas;
            Ok(Some(d))
        }
        None => {
            let Some(record) = &record else {
                return Err(WireError::new(ErrorKind::UnknownModel, format!("model `{model}` is not registered")));
            };
            let (source, revision) = match &record.source {
                ModelSource::Local { path } => (path.clone(), None),
                ModelSource::Hub { revision } => (record.id.clone(), Some(revision.clone())),
            };
            Ok(Some(Deployment {
                model: model.to_string(),
                spec: ModelSpec { source, revision, engine: record.engine, max_sequences: None, echo_tokens_per_sec: None },
                replicas,
                constraints: Default::default(),
                memory: None,
                on_demand: true,
                created_ms: 0,
                updated_ms: 0,
            }))
        }
    })
    .await?;
    stored.ok_or_else(|| WireError::new(ErrorKind::Internal, "deployment not written"))
}

/// Sets a model's deployment to `replicas` (0 unloads it everywhere).
pub async fn scale(ctx: &NodeContext, model: &str, replicas: u32) -> Result<Deployment, WireError> {
    modify(ctx, model, |current| match current {
        None => Err(WireError::new(ErrorKind::NotFound, format!("model `{model}` has no deployment (nothing is loaded)"))),
        Some(d) if d.replicas == replicas => Ok(None),
        Some(mut d) => {
            d.replicas = replicas;
            Ok(Some(d))
        }
    })
    .await?
    .ok_or_else(|| WireError::new(ErrorKind::Internal, "deployment not written"))
}

/// Every deployment with the nodes it is placed on and the nodes serving it now.
pub async fn statuses(ctx: &NodeContext) -> Result<Vec<DeploymentStatus>, WireError> {
    let deployments = list(ctx).await?;
    let placements = placements(ctx).await?;
    let nodes = super::live_nodes(ctx).await?;
    Ok(deployments
        .into_iter()
        .map(|d| {
            let placed = placements
                .values()
                .filter(|p| p.replicas.iter().any(|r| r.model == d.model))
                .map(|p| p.node.clone())
                .collect();
            let serving = nodes
                .iter()
                .filter(|n| n.serves(&d.model))
                .map(|n| n.node_id.clone())
                .collect();
            DeploymentStatus { deployment: d, placed, serving }
        })
        .collect())
}
