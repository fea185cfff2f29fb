//! What workers serve and where the cluster places it: engines, the models a node pins
//! (`worker.*`), deployments declared in config, and membership and placement timing
//! (`cluster.*`).

use std::time::Duration;

use crate::bytes::SizeError;
use bitinglip_bus_schema::{EngineKind, Quantize};
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
    /// Tokens each sequence may hold (default: the model's, at most 8192).
    pub context_length: Option<u32>,
    /// Quantize the linear layers as the model loads (`Q4K`, `Q8_0`, …).
    #[serde(deserialize_with = "crate::strict::quantize")]
    pub quantize: Option<Quantize>,
    /// The GPUs (CUDA ordinals) this worker runs on; empty: the first, or the CPU.
    pub gpus: Vec<u32>,
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
            context_length: None,
            quantize: None,
            gpus: Vec::new(),
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
    /// Of each GPU's memory, what BitingLip may use: a fraction (`0.9`) or bytes
    /// (`"70GiB"`).
    pub gpu_budget: GpuBudget,
    /// Memory each engine may keep finished sequences' KV cache in, for prompts that
    /// continue them (`1GiB`; `0`: no prefix cache); absent: [`DEFAULT_PREFIX_CACHE`].
    #[serde(with = "crate::bytes::opt")]
    pub prefix_cache: Option<u64>,
}

/// The prefix cache's memory per engine when the config does not say.
pub(crate) const DEFAULT_PREFIX_CACHE: u64 = 1 << 30;

impl WorkerConfig {
    /// Memory each engine may keep its prefix cache in (0: none).
    pub fn prefix_cache_bytes(&self) -> u64 {
        self.prefix_cache.unwrap_or(DEFAULT_PREFIX_CACHE)
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            force_cpu: false,
            drain_grace: Duration::from_secs(30),
            memory: None,
            gpu_budget: GpuBudget::default(),
            prefix_cache: None,
        }
    }
}

/// What BitingLip may use of each GPU's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GpuBudget {
    /// This fraction of the card, above 0 and at most 1.
    Fraction(f64),
    /// At most these bytes of each card.
    Bytes(u64),
}

impl Default for GpuBudget {
    fn default() -> Self {
        GpuBudget::Fraction(0.9)
    }
}

impl GpuBudget {
    /// Of a card of `total` bytes, the bytes BitingLip may use.
    pub fn of(self, total: u64) -> u64 {
        match self {
            GpuBudget::Fraction(f) => (total as f64 * f.clamp(0.0, 1.0)) as u64,
            GpuBudget::Bytes(b) => b.min(total),
        }
    }

    /// Reads `0.9` or `"0.9"` as a fraction, `"70GiB"` (any size) as bytes.
    pub fn parse(raw: &str) -> Result<Self, SizeError> {
        let raw = raw.trim();
        if let Ok(f) = raw.parse::<f64>() {
            return if f > 0.0 && f <= 1.0 {
                Ok(GpuBudget::Fraction(f))
            } else {
                Err(SizeError::new(format!(
                    "{raw}: a fraction of each GPU is above 0 and at most 1 (or give bytes: `70GiB`)"
                )))
            };
        }
        crate::bytes::parse_bytes(raw).map(GpuBudget::Bytes).map_err(|e| SizeError::new(format!("{raw}: {e}")))
    }
}

impl serde::Serialize for GpuBudget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuBudget::Fraction(f) => s.serialize_f64(*f),
            GpuBudget::Bytes(b) => s.serialize_u64(*b),
        }
    }
}

impl<'de> serde::Deserialize<'de> for GpuBudget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            // A whole number above 1 is bytes.
            Raw::Number(n) if n > 1.0 && n.fract() == 0.0 => Ok(GpuBudget::Bytes(n as u64)),
            Raw::Number(n) => GpuBudget::parse(&n.to_string()).map_err(serde::de::Error::custom),
            Raw::Text(t) => GpuBudget::parse(&t).map_err(serde::de::Error::custom),
        }
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
    /// Tokens each sequence may hold (default: the model's, at most 8192).
    pub context_length: Option<u32>,
    /// Quantize the linear layers as the model loads (`Q4K`, `Q8_0`, …).
    #[serde(deserialize_with = "crate::strict::quantize")]
    pub quantize: Option<Quantize>,
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
            context_length: None,
            quantize: m.quantize,
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
    /// How often the leading cluster manager looks at the load of autoscaled deployments.
    #[serde(with = "humantime_serde")]
    pub autoscale_interval: Duration,
    /// An autoscaled deployment grows only once the load has asked for more replicas for
    /// this long (0s: at once; a replica still starting holds further growth anyway).
    #[serde(with = "humantime_serde")]
    pub scale_up_window: Duration,
    /// An autoscaled deployment shrinks only to the most replicas the load asked for over
    /// this window, so that it does not flap.
    #[serde(with = "humantime_serde")]
    pub scale_down_window: Duration,
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
            autoscale_interval: Duration::from_secs(1),
            scale_up_window: Duration::ZERO,
            scale_down_window: Duration::from_secs(60),
            deployments: Vec::new(),
        }
    }
}
