//! What workers serve and where the cluster places it: engines, the models a node pins
//! (`worker.*`), deployments declared in config, and membership and placement timing
//! (`cluster.*`).

use std::time::Duration;

use bitinglip_bus_schema::EngineKind;
use serde::{Deserialize, Serialize};

/// One model a worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face id (`Qwen/Qwen2.5-0.5B-Instruct`) or a local folder in HF layout.
    pub source: String,
    /// The id clients use; defaults to the hub id, or the folder's name.
    pub name: Option<String>,
    /// Hub revision (branch, tag or commit).
    pub revision: String,
    /// Engine.
    #[serde(deserialize_with = "crate::strict::engine")]
    pub engine: EngineKind,
    /// Most sequences generated at once.
    pub max_sequences: u32,
    /// Echo engine only: tokens per second (0 = as fast as possible).
    pub echo_tokens_per_sec: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            source: String::new(),
            name: None,
            revision: "main".to_string(),
            engine: EngineKind::Mistralrs,
            max_sequences: 4,
            echo_tokens_per_sec: 0.0,
        }
    }
}

impl ModelConfig {
    /// A model from a hub id or folder, with defaults for the rest.
    pub fn new(source: impl Into<String>) -> Self {
        Self { source: source.into(), ..Self::default() }
    }

    /// True when the source names an existing local folder.
    pub fn is_local(&self) -> bool {
        std::path::Path::new(&self.source).is_dir()
    }

    /// The id clients use for this model.
    pub fn served_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        if self.is_local() {
            let path = std::path::Path::new(&self.source);
            let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            if let Some(name) = canonical.file_name() {
                return name.to_string_lossy().into_owned();
            }
        }
        self.source.clone()
    }
}

/// Workers on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// One worker per entry.
    pub models: Vec<ModelConfig>,
    /// Force CPU even when the build has a GPU backend.
    pub force_cpu: bool,
    /// On SIGTERM, how long running tasks may take to finish before they are handed back.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Memory this node offers to models placed by the cluster (`8GiB`); absent: the
    /// machine's (or the GPU's) total.
    #[serde(with = "crate::bytes::opt")]
    pub memory: Option<u64>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { models: Vec::new(), force_cpu: false, drain_grace: Duration::from_secs(30), memory: None }
    }
}

/// A deployment declared in config: the leading cluster manager creates it when the
/// cluster has none for that model (one changed by CLI or HTTP afterwards is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A Hugging Face id or a folder in Hugging Face layout on the serving nodes.
    pub source: String,
    /// The id clients use; defaults to the source.
    pub name: Option<String>,
    /// Hub revision.
    pub revision: String,
    /// Engine.
    #[serde(deserialize_with = "crate::strict::engine")]
    pub engine: EngineKind,
    /// Most sequences generated at once per replica.
    pub max_sequences: u32,
    /// Echo engine only: tokens per second (0 = as fast as possible).
    pub echo_tokens_per_sec: f64,
    /// Replicas wanted.
    pub replicas: u32,
    /// Only nodes offering at least this much memory.
    #[serde(with = "crate::bytes::opt")]
    pub min_memory: Option<u64>,
    /// Only nodes of this device kind (`cpu`, `cuda`, `metal`).
    pub device: Option<String>,
    /// Memory one replica needs; estimated from the weights when absent.
    #[serde(with = "crate::bytes::opt")]
    pub memory: Option<u64>,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        let m = ModelConfig::default();
        Self {
            source: String::new(),
            name: None,
            revision: m.revision,
            engine: m.engine,
            max_sequences: m.max_sequences,
            echo_tokens_per_sec: m.echo_tokens_per_sec,
            replicas: 1,
            min_memory: None,
            device: None,
            memory: None,
        }
    }
}

/// Heartbeats and membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How often every node writes its heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A node whose last heartbeat is older than this is gone (and its replicas are
    /// placed elsewhere); also the leader lease of the cluster managers.
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// How often the leading cluster manager reconciles placements (it also does at once
    /// when a node or a deployment changes).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// An on-demand model without requests for this long is unloaded; 0s: never.
    #[serde(with = "humantime_serde")]
    pub idle_unload: Duration,
    /// Deployments created at start when the cluster has none for their model.
    pub deployments: Vec<DeploymentConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            reconcile_interval: Duration::from_secs(5),
            idle_unload: Duration::from_secs(15 * 60),
            deployments: Vec::new(),
        }
    }
}
