//! Operations on deployments that any node may run (set, seed, delete, load, scale) and
//! the status of every deployment. The writes are compare-and-swap (see the storage
//! layer), so concurrent writers (two task managers loading the same model on demand, a
//! CLI and the leader) never lose each other's change.

use bitinglip_bus_schema::{
    Deployment, DeploymentStatus, EngineKind, ErrorKind, ModelSource, ModelSpec, NodeHeartbeat, NodePlacement,
    ReplicaPlace, SetDeployment, WireError,
};
use bitinglip_nats::Store;

/// Writes a deployment through `change` (see `Deployments::modify`), flattening the two
/// layers of error.
async fn modify(
    store: &Store,
    model: &str,
    change: impl FnMut(Option<Deployment>) -> Result<Option<Deployment>, WireError>,
) -> Result<Option<Deployment>, WireError> {
    store.deployments().modify(model, change).await?
}

fn check_spec(spec: &ModelSpec) -> Result<(), WireError> {
    let invalid = |m: String| Err(WireError::new(ErrorKind::InvalidRequest, m));
    if spec.source.trim().is_empty() {
        return invalid("`spec.source` is empty: give a Hugging Face id or a model folder".into());
    }
    if spec.engine == EngineKind::Unknown {
        return invalid("`spec.engine` names an engine this cluster does not run; use mistralrs or echo".into());
    }
    let most = bitinglip_bus_schema::MAX_SEQUENCES;
    if let Some(n) = spec.max_sequences.filter(|n| !(1..=most).contains(n)) {
        return invalid(format!("`spec.max_sequences` is {n}; use 1 to {most}"));
    }
    if spec.context_length == Some(0) {
        return invalid("`spec.context_length` is 0; give the tokens each sequence may hold (1 or more)".into());
    }
    if let Some(t) = spec.echo_tokens_per_sec {
        if !(t >= 0.0 && t.is_finite()) {
            return invalid(format!("`spec.echo_tokens_per_sec` is {t}; use 0 or above"));
        }
    }
    Ok(())
}

/// Creates or replaces a deployment declared by an operator.
pub async fn set(store: &Store, req: SetDeployment) -> Result<Deployment, WireError> {
    check_spec(&req.spec)?;
    let model = req.model.clone().unwrap_or_else(|| req.spec.source.clone());
    if let Some(problem) = bitinglip_bus_schema::model_id_problem(&model) {
        return Err(WireError::new(ErrorKind::InvalidRequest, format!("`model` {problem}")));
    }
    let most = bitinglip_bus_schema::MAX_REPLICAS;
    if req.replicas > most {
        return Err(WireError::new(
            ErrorKind::InvalidRequest,
            format!("`replicas` is {}; at most {most}", req.replicas),
        ));
    }
    if let Some(problem) = req.autoscale.as_ref().and_then(|a| a.problem()) {
        return Err(WireError::new(ErrorKind::InvalidRequest, problem));
    }
    if req.constraints.device == Some(bitinglip_bus_schema::DeviceKind::Unknown) {
        return Err(WireError::new(
            ErrorKind::InvalidRequest,
            "`constraints.device` is no device this node knows; use cpu, cuda or metal",
        ));
    }
    let deployment = Deployment {
        model: model.clone(),
        spec: req.spec,
        replicas: req.replicas,
        constraints: req.constraints,
        memory: req.memory,
        autoscale: req.autoscale,
        scaling: Vec::new(),
        on_demand: false,
        created_ms: 0,
        updated_ms: 0,
    };
    let stored = modify(store, &model, |current| {
        let mut d = deployment.clone();
        if let Some(a) = &d.autoscale {
            // An autoscaled deployment keeps the count its load set, within the new
            // bounds; a new one starts at `replicas` (at least 1, ready for a first
            // request, even when it may go to 0).
            d.replicas = match &current {
                Some(c) if c.autoscale.is_some() => c.replicas.clamp(a.min_replicas, a.max_replicas),
                _ => d.replicas.clamp(a.min_replicas.max(1), a.max_replicas),
            };
        }
        // Its scaling decisions stay with it.
        d.scaling = current.map(|c| c.scaling).unwrap_or_default();
        Ok(Some(d))
    })
    .await?;
    let stored = stored.ok_or_else(|| WireError::new(ErrorKind::Internal, "deployment not written"))?;
    tracing::info!(model = %model, replicas = stored.replicas, "deployment set");
    Ok(stored)
}

/// Creates a deployment from config when the cluster has none for its model.
pub async fn seed(store: &Store, d: &bitinglip_config::DeploymentConfig) -> Result<(), WireError> {
    let req = SetDeployment {
        model: d.name.clone(),
        spec: ModelSpec {
            source: d.source.clone(),
            revision: Some(d.revision.clone()),
            engine: d.engine,
            max_sequences: Some(d.max_sequences),
            echo_tokens_per_sec: Some(d.echo_tokens_per_sec),
            context_length: d.context_length,
            quantize: d.quantize,
        },
        replicas: d.replicas,
        constraints: bitinglip_bus_schema::Constraints {
            min_memory: d.min_memory,
            device: d.device.as_deref().and_then(bitinglip_bus_schema::DeviceKind::parse),
        },
        memory: d.memory,
        autoscale: None,
    };
    let model = req.model.clone().unwrap_or_else(|| req.spec.source.clone());
    if store.deployments().get(&model).await?.is_none() {
        set(store, req).await?;
    }
    Ok(())
}

/// Makes sure a known model has at least `replicas` replicas: raises its deployment, or
/// creates an on-demand one from the registry entry.
pub async fn ensure_loaded(store: &Store, model: &str, replicas: u32) -> Result<Deployment, WireError> {
    let record = store.models().get(model).await?;
    let stored = modify(store, model, |current| match current {
        Some(d) if d.replicas >= replicas => Ok(None),
        Some(mut d) => {
            if d.autoscale.is_some() {
                let reason = "a task arrived with no replica to serve it".to_string();
                record_scale(&mut d, replicas, bitinglip_nats::now_ms(), reason);
            }
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
                spec: ModelSpec {
                    source,
                    revision,
                    engine: record.engine,
                    max_sequences: None,
                    echo_tokens_per_sec: None,
                    context_length: None,
                    quantize: None,
                },
                replicas,
                constraints: Default::default(),
                memory: None,
                autoscale: None,
                scaling: Vec::new(),
                on_demand: true,
                created_ms: 0,
                updated_ms: 0,
            }))
        }
    })
    .await?;
    stored.ok_or_else(|| WireError::new(ErrorKind::Internal, "deployment not written"))
}

/// Notes a scaling decision on `d` (keeping the last few), without changing its count.
pub fn record_scale(d: &mut Deployment, to: u32, at_ms: u64, reason: String) {
    d.scaling.push(bitinglip_bus_schema::ScaleEvent { from: d.replicas, to, at_ms, reason });
    let extra = d.scaling.len().saturating_sub(bitinglip_bus_schema::SCALE_EVENTS_KEPT);
    d.scaling.drain(..extra);
}

/// Sets a model's deployment to `replicas` (0 unloads it everywhere).
pub async fn scale(store: &Store, model: &str, replicas: u32) -> Result<Deployment, WireError> {
    modify(store, model, |current| match current {
        None => {
            Err(WireError::new(ErrorKind::NotFound, format!("model `{model}` has no deployment (nothing is loaded)")))
        }
        Some(d) if d.replicas == replicas => Ok(None),
        Some(mut d) => {
            d.replicas = replicas;
            Ok(Some(d))
        }
    })
    .await?
    .ok_or_else(|| WireError::new(ErrorKind::Internal, "deployment not written"))
}

/// Every deployment with where its replicas are, what one is estimated to take, and why
/// any are missing.
pub async fn statuses(store: &Store) -> Result<Vec<DeploymentStatus>, WireError> {
    let deployments = store.deployments().list().await?;
    let placements = store.deployments().placements().await?;
    let mut unplaced = store.deployments().unplaced().await?;
    let nodes = store.nodes().live().await?;
    let mut all = Vec::with_capacity(deployments.len());
    for d in deployments {
        let record = store.models().get(&d.model).await?;
        let (_, estimate) = super::estimate::for_deployment(&d, record.as_ref());
        let why = unplaced.remove(&d.model).map(|u| u.reason);
        all.push(DeploymentStatus { estimate, unplaced: why, ..status(d, placements.values(), &nodes) });
    }
    Ok(all)
}

/// One deployment's status from the placements and the live nodes (pure).
fn status<'a>(
    deployment: Deployment,
    placements: impl Iterator<Item = &'a NodePlacement>,
    nodes: &[NodeHeartbeat],
) -> DeploymentStatus {
    let mut placed = Vec::new();
    let mut replicas = Vec::new();
    for p in placements {
        for r in p.replicas.iter().filter(|r| r.model == deployment.model) {
            if !placed.contains(&p.node) {
                placed.push(p.node.clone());
            }
            replicas.push(ReplicaPlace { node: p.node.clone(), gpus: r.gpus.clone(), memory: r.memory });
        }
    }
    let serving = nodes.iter().filter(|n| n.serves(&deployment.model)).map(|n| n.node_id.clone()).collect();
    DeploymentStatus { deployment, placed, serving, replicas, estimate: None, unplaced: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_sequences: Option<u32>) -> ModelSpec {
        ModelSpec {
            source: "m".into(),
            revision: None,
            engine: EngineKind::Echo,
            max_sequences,
            echo_tokens_per_sec: None,
            context_length: None,
            quantize: None,
        }
    }

    #[test]
    fn a_spec_takes_1_to_256_sequences() {
        for ok in [None, Some(1), Some(256)] {
            assert!(check_spec(&spec(ok)).is_ok(), "{ok:?}");
        }
        // Found by schemathesis: thousands of slots, each a pull waiting on the queue,
        // overran JetStream's max_waiting and starved the node.
        for bad in [0, 257, 5000] {
            let err = check_spec(&spec(Some(bad))).unwrap_err();
            assert!(err.message.contains("spec.max_sequences"), "{}", err.message);
        }
    }
}
