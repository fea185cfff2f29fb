//! Deployments (how many replicas of a model the cluster should run, and where it may run
//! them) and placements (which node runs which replica), written by the leading cluster
//! manager.

use serde::{Deserialize, Serialize};

use crate::{Autoscale, DeviceKind, EngineKind, ScaleEvent, WireError};

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
    /// Tokens each sequence may hold, prompt and answer (default: the model's, at most
    /// 8192). With `max_sequences` it sizes the KV cache a replica reserves.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub context_length: Option<u32>,
    /// Quantize the linear layers when loading (mistral.rs's in-situ quantization).
    #[serde(default)]
    pub quantize: Option<Quantize>,
}

/// In-situ quantization of a model's linear layers as it loads (mistral.rs's ISQ): the
/// weights are read in their own dtype and stored in this format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Quantize {
    /// 4.5 bits per weight (blocks of 32).
    #[serde(rename = "Q4_0")]
    Q4_0,
    /// 5 bits per weight (blocks of 32).
    #[serde(rename = "Q4_1")]
    Q4_1,
    /// 5.5 bits per weight (blocks of 32).
    #[serde(rename = "Q5_0")]
    Q5_0,
    /// 6 bits per weight (blocks of 32).
    #[serde(rename = "Q5_1")]
    Q5_1,
    /// 8.5 bits per weight (blocks of 32).
    #[serde(rename = "Q8_0")]
    Q8_0,
    /// 2.625 bits per weight (k-quant, blocks of 256).
    Q2K,
    /// 3.4375 bits per weight (k-quant, blocks of 256).
    Q3K,
    /// 4.5 bits per weight (k-quant, blocks of 256).
    Q4K,
    /// 5.5 bits per weight (k-quant, blocks of 256).
    Q5K,
    /// 6.5625 bits per weight (k-quant, blocks of 256).
    Q6K,
    /// 9.125 bits per weight (k-quant, blocks of 256).
    Q8K,
}

/// A name that is no quantization; its message lists those there are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownQuantize(pub String);

impl std::fmt::Display for UnknownQuantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Quantize::ALL.iter().map(|q| q.name()).collect();
        write!(f, "{:?} is not a quantization; use one of {}", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownQuantize {}

impl Quantize {
    /// Every format, in the order the docs list them.
    pub const ALL: [Quantize; 11] = [
        Quantize::Q4_0,
        Quantize::Q4_1,
        Quantize::Q5_0,
        Quantize::Q5_1,
        Quantize::Q8_0,
        Quantize::Q2K,
        Quantize::Q3K,
        Quantize::Q4K,
        Quantize::Q5K,
        Quantize::Q6K,
        Quantize::Q8K,
    ];

    /// Its name (`Q4K`, `Q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Q4_0 => "Q4_0",
            Quantize::Q4_1 => "Q4_1",
            Quantize::Q5_0 => "Q5_0",
            Quantize::Q5_1 => "Q5_1",
            Quantize::Q8_0 => "Q8_0",
            Quantize::Q2K => "Q2K",
            Quantize::Q3K => "Q3K",
            Quantize::Q4K => "Q4K",
            Quantize::Q5K => "Q5K",
            Quantize::Q6K => "Q6K",
            Quantize::Q8K => "Q8K",
        }
    }

    /// Reads a name, in any case (`q4k`, `Q8_0`).
    pub fn parse(raw: &str) -> Result<Quantize, UnknownQuantize> {
        Quantize::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(raw.trim()))
            .ok_or_else(|| UnknownQuantize(raw.to_string()))
    }

    /// Bytes of one block and the weights it holds (ggml's layouts).
    pub fn block(self) -> (u64, u64) {
        match self {
            Quantize::Q4_0 => (18, 32),
            Quantize::Q4_1 => (20, 32),
            Quantize::Q5_0 => (22, 32),
            Quantize::Q5_1 => (24, 32),
            Quantize::Q8_0 => (34, 32),
            Quantize::Q2K => (84, 256),
            Quantize::Q3K => (110, 256),
            Quantize::Q4K => (144, 256),
            Quantize::Q5K => (176, 256),
            Quantize::Q6K => (210, 256),
            Quantize::Q8K => (292, 256),
        }
    }

    /// Bytes that `weights` weights take in this format.
    pub fn bytes(self, weights: u64) -> u64 {
        let (bytes, per) = self.block();
        weights.div_ceil(per).saturating_mul(bytes)
    }
}

impl std::fmt::Display for Quantize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What one replica of a deployment is estimated to take, bytes: its weights (by dtype
/// and quantization), the KV cache its sequences may fill, and the engine's working
/// memory; on a GPU also the CUDA context and libraries' workspace of each card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryEstimate {
    /// The weights as loaded.
    pub weights: u64,
    /// The KV cache: `kv_bytes_per_token` × `context_length` × `sequences`.
    pub kv_cache: u64,
    /// On a CPU: activations, the engine's own buffers, and the copy of the cache each
    /// step batches the sequences' caches into.
    pub overhead: u64,
    /// On a CPU, all of it: what placement reserves on a node without GPUs.
    pub total: u64,
    /// On GPUs: activations, the engine's own buffers, and one prompt's attention
    /// scores (the cache is paged, reserved once).
    pub gpu_overhead: u64,
    /// On GPUs, all of it: what placement reserves over the GPUs a replica uses (plus
    /// `gpu_runtime` on each).
    pub gpu_total: u64,
    /// Per token of one sequence: 2 (K and V) × layers × KV heads × head dim × dtype bytes.
    pub kv_bytes_per_token: u64,
    /// Tokens each sequence may hold.
    pub context_length: u32,
    /// Sequences at once.
    pub sequences: u32,
    /// The dtype weights and cache are held in (`bf16`).
    pub dtype: String,
    /// The quantization of the linear layers, if any.
    #[serde(default)]
    pub quantize: Option<Quantize>,
    /// What a replica on a GPU takes besides, per GPU (CUDA context, cuBLAS workspace).
    pub gpu_runtime: u64,
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
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub device: Option<DeviceKind>,
}

/// A deployment, in the deployments bucket under `deploy.<model token>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deployment {
    /// The id clients name in requests.
    pub model: String,
    /// How to load it.
    pub spec: ModelSpec,
    /// Replicas wanted (with `autoscale`, the count the leader chose last).
    pub replicas: u32,
    /// Where they may run.
    #[serde(default)]
    pub constraints: Constraints,
    /// Memory one replica needs, bytes; estimated from the weights when absent.
    #[serde(default)]
    pub memory: Option<u64>,
    /// Replicas follow the load between these bounds (absent: `replicas` stays as set).
    #[serde(default)]
    pub autoscale: Option<Autoscale>,
    /// The last scaling decisions, newest last (at most
    /// [`SCALE_EVENTS_KEPT`](crate::SCALE_EVENTS_KEPT)).
    #[serde(default)]
    pub scaling: Vec<ScaleEvent>,
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
    /// The GPUs (CUDA ordinals) of its node it runs on; empty on a node without GPUs.
    /// A replica on several GPUs has its layers spread over them.
    #[serde(default)]
    pub gpus: Vec<u32>,
}

impl Replica {
    /// True when `other` is the same replica (model, spec and GPUs), whatever its memory
    /// and time.
    pub fn same_slot(&self, other: &Replica) -> bool {
        self.model == other.model && self.spec == other.spec && self.gpus == other.gpus
    }
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
    /// Replicas follow the load between these bounds; `replicas` is where they start.
    #[serde(default)]
    pub autoscale: Option<Autoscale>,
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
    /// Each replica placed: its node and GPUs.
    #[serde(default)]
    pub replicas: Vec<ReplicaPlace>,
    /// What one replica is estimated to take (absent: the model's files are not known yet).
    #[serde(default)]
    pub estimate: Option<MemoryEstimate>,
    /// Why replicas are missing, when the leader could not place all of them (the memory
    /// one needs and the largest room any GPU or node has).
    #[serde(default)]
    pub unplaced: Option<String>,
}

/// Where one replica is placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaPlace {
    /// The node.
    pub node: String,
    /// Its GPUs (CUDA ordinals), empty on a node without GPUs.
    pub gpus: Vec<u32>,
    /// Memory it was placed with, bytes.
    pub memory: u64,
}

/// Why a deployment's replicas are not all placed, in the deployments bucket under
/// `unplaced.<model token>`. Written by the leading cluster manager; gone once they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The model.
    pub model: String,
    /// Why.
    pub reason: String,
    /// Written at, ms since the epoch.
    pub updated_ms: u64,
}

/// Reply on `…deployment.set` and `…model.load`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // a reply, built once and sent; boxing buys nothing
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
            context_length: Some(512),
            quantize: Some(Quantize::Q4K),
        }
    }

    fn deployment() -> Deployment {
        Deployment {
            model: "m".into(),
            spec: spec(),
            replicas: 2,
            constraints: Constraints { min_memory: Some(1 << 30), device: Some(DeviceKind::Cpu) },
            memory: Some(5),
            autoscale: None,
            scaling: vec![],
            on_demand: false,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    #[test]
    fn deployment_messages_pin_their_fields() {
        let d = &[
            "model",
            "spec",
            "replicas",
            "constraints",
            "memory",
            "autoscale",
            "scaling",
            "on_demand",
            "created_ms",
            "updated_ms",
        ];
        pin(
            spec(),
            &["source", "revision", "engine", "max_sequences", "echo_tokens_per_sec", "context_length", "quantize"],
        );
        pin(Constraints::default(), &["min_memory", "device"]);
        pin(deployment(), d);
        let replica = Replica { model: "m".into(), spec: spec(), memory: 5, placed_ms: 3, gpus: vec![0] };
        pin(replica.clone(), &["model", "spec", "memory", "placed_ms", "gpus"]);
        pin(
            NodePlacement { node: "n".into(), replicas: vec![replica], leader: "l".into(), updated_ms: 4 },
            &["node", "replicas", "leader", "updated_ms"],
        );
        pin(
            SetDeployment {
                model: None,
                spec: spec(),
                replicas: 1,
                constraints: Constraints::default(),
                memory: None,
                autoscale: None,
            },
            &["model", "spec", "replicas", "constraints", "memory", "autoscale"],
        );
        pin(DeleteDeployment { model: "m".into() }, &["model"]);
        pin(ListDeployments {}, &[]);
        pin(
            DeploymentList::Deployments {
                deployments: vec![DeploymentStatus {
                    deployment: deployment(),
                    placed: vec!["n".into()],
                    serving: vec![],
                    replicas: vec![ReplicaPlace { node: "n".into(), gpus: vec![1], memory: 5 }],
                    estimate: None,
                    unplaced: None,
                }],
            },
            &["type", "deployments"],
        );
        let mut with_type = d.to_vec();
        with_type.push("type");
        pin(DeploymentReply::Deployment(deployment()), &with_type);
        pin(LoadModel { model: "m".into(), replicas: None }, &["model", "replicas"]);
        pin(ModelRef { model: "m".into() }, &["model"]);
        pin(Unplaced { model: "m".into(), reason: "r".into(), updated_ms: 1 }, &["model", "reason", "updated_ms"]);
    }

    #[test]
    fn quantizations_read_their_names_in_any_case_and_size_their_blocks() {
        assert_eq!(Quantize::parse("q4k"), Ok(Quantize::Q4K));
        assert_eq!(Quantize::parse("Q8_0"), Ok(Quantize::Q8_0));
        let err = Quantize::parse("Q4").unwrap_err().to_string();
        assert!(err.contains("Q4K") && err.contains("\"Q4\""), "{err}");
        for q in Quantize::ALL {
            assert_eq!(Quantize::parse(q.name()), Ok(q));
            let encoded = rmp_serde::to_vec_named(&q).unwrap();
            assert_eq!(rmp_serde::from_slice::<String>(&encoded).unwrap(), q.name());
        }
        // 256 weights of Q4K: 144 bytes (4.5 bits each); 64 of Q8_0: 2 blocks of 34.
        assert_eq!(Quantize::Q4K.bytes(256), 144);
        assert_eq!(Quantize::Q8_0.bytes(64), 68);
    }
}
