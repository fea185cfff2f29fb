//! Deployments (how many replicas of a model the cluster should run, and where it may run
//! them) and placements (which node runs which replica), written by the leading cluster
//! manager.

use serde::{Deserialize, Serialize};

use crate::{EngineKind, WireError};

/// The most sequences one worker generates at once. Each is a pull waiting on the
/// model's queue consumers, which take a bounded number of them (JetStream's
/// `max_waiting`, 512); vLLM's default batch is the same 256.
pub const MAX_SEQUENCES: u32 = 256;

/// What a node needs to load a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelSpec {
    /// A Hugging Face id or a folder in Hugging Face layout on the serving node.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub source: String,
    /// Hub revision (branch, tag or commit); `main` when absent.
    #[serde(default)]
    pub revision: Option<String>,
    /// Engine.
    #[serde(default)]
    pub engine: EngineKind,
    /// Most sequences generated at once (default 4, at most 256).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
    pub max_sequences: Option<u32>,
    /// Echo engine only: tokens per second (0 = as fast as possible).
    #[serde(default)]
    pub echo_tokens_per_sec: Option<f64>,
}

/// Where replicas may run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Constraints {
    /// Only nodes offering at least this much memory, bytes.
    #[serde(default)]
    pub min_memory: Option<u64>,
    /// Only nodes of this device kind (`cpu`, `cuda`, `metal`).
    #[serde(default)]
    pub device: Option<String>,
}

/// A deployment, in the deployments bucket under `deploy.<model token>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// The id clients name in requests.
    pub model: String,
    /// How to load it.
    pub spec: ModelSpec,
    /// Replicas wanted.
    pub replicas: u32,
    /// Where they may run.
    #[serde(default)]
    pub constraints: Constraints,
    /// Memory one replica needs, bytes; estimated from the weights when absent.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Created by a request for a model nobody served: unloaded (replicas set to 0) after
    /// `cluster.idle_unload` without requests, and first to go when memory is needed.
    #[serde(default)]
    pub on_demand: bool,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Last changed, ms since the epoch.
    pub updated_ms: u64,
}

/// One replica the leader placed on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    /// The model's id.
    pub model: String,
    /// How to load it.
    pub spec: ModelSpec,
    /// Memory it was placed with, bytes.
    pub memory: u64,
    /// Placed at, ms since the epoch.
    pub placed_ms: u64,
}

/// The replicas one node should run, in the deployments bucket under
/// `place.<node token>`. Written by the leading cluster manager only; the node's agent
/// starts and stops workers to match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePlacement {
    /// The node.
    pub node: String,
    /// Its replicas.
    pub replicas: Vec<Replica>,
    /// The cluster manager that wrote it.
    pub leader: String,
    /// Written at, ms since the epoch.
    pub updated_ms: u64,
}

/// Request on `…deployment.set`: create or replace a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetDeployment {
    /// The id clients will name; defaults to the source.
    #[serde(default)]
    pub model: Option<String>,
    /// How to load it.
    pub spec: ModelSpec,
    /// Replicas wanted.
    pub replicas: u32,
    /// Where they may run.
    #[serde(default)]
    pub constraints: Constraints,
    /// Memory one replica needs, bytes (estimated from the weights when absent).
    #[serde(default)]
    pub memory: Option<u64>,
}

/// Request on `…deployment.delete`: remove a deployment (its replicas are unloaded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteDeployment {
    /// The model's id.
    pub model: String,
}

/// Request on `…deployment.list`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ListDeployments {}

/// A deployment with where its replicas are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentStatus {
    /// The deployment.
    pub deployment: Deployment,
    /// Nodes it is placed on.
    pub placed: Vec<String>,
    /// Nodes where a worker serves it now.
    pub serving: Vec<String>,
}

/// Reply on `…deployment.set` and `…model.load`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeploymentReply {
    /// The deployment as stored.
    Deployment(Deployment),
    /// Why not.
    Error(WireError),
}

/// Reply on `…deployment.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeploymentList {
    /// Every deployment, by model id.
    Deployments {
        /// The deployments.
        deployments: Vec<DeploymentStatus>,
    },
    /// Why not.
    Error(WireError),
}

/// Request on `…model.load`: make sure a known model has at least `replicas` replicas
/// (an on-demand deployment is created when it has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoadModel {
    /// The model's id.
    pub model: String,
    /// At least this many replicas (default 1).
    #[serde(default)]
    pub replicas: Option<u32>,
}

/// Request on `…model.unload` (its deployment goes to 0 replicas) and `…model.delete`
/// (deployment, registry entry and node statuses removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelRef {
    /// The model's id.
    pub model: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    fn spec() -> ModelSpec {
        ModelSpec {
            source: "org/m".into(),
            revision: Some("main".into()),
            engine: EngineKind::Echo,
            max_sequences: Some(2),
            echo_tokens_per_sec: None,
        }
    }

    fn deployment() -> Deployment {
        Deployment {
            model: "m".into(),
            spec: spec(),
            replicas: 2,
            constraints: Constraints { min_memory: Some(1 << 30), device: Some("cpu".into()) },
            memory: Some(5),
            on_demand: false,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    #[test]
    fn deployment_messages_pin_their_fields() {
        let d = &["model", "spec", "replicas", "constraints", "memory", "on_demand", "created_ms", "updated_ms"];
        pin(spec(), &["source", "revision", "engine", "max_sequences", "echo_tokens_per_sec"]);
        pin(Constraints::default(), &["min_memory", "device"]);
        pin(deployment(), d);
        let replica = Replica { model: "m".into(), spec: spec(), memory: 5, placed_ms: 3 };
        pin(replica.clone(), &["model", "spec", "memory", "placed_ms"]);
        pin(
            NodePlacement { node: "n".into(), replicas: vec![replica], leader: "l".into(), updated_ms: 4 },
            &["node", "replicas", "leader", "updated_ms"],
        );
        pin(
            SetDeployment { model: None, spec: spec(), replicas: 1, constraints: Constraints::default(), memory: None },
            &["model", "spec", "replicas", "constraints", "memory"],
        );
        pin(DeleteDeployment { model: "m".into() }, &["model"]);
        pin(ListDeployments {}, &[]);
        pin(
            DeploymentList::Deployments {
                deployments: vec![DeploymentStatus {
                    deployment: deployment(),
                    placed: vec!["n".into()],
                    serving: vec![],
                }],
            },
            &["type", "deployments"],
        );
        let mut with_type = d.to_vec();
        with_type.push("type");
        pin(DeploymentReply::Deployment(deployment()), &with_type);
        pin(LoadModel { model: "m".into(), replicas: None }, &["model", "replicas"]);
        pin(ModelRef { model: "m".into() }, &["model"]);
    }
}
