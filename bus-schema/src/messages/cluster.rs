//! Node heartbeats and cluster status.

use serde::{Deserialize, Serialize};

use crate::{DeviceKind, EngineKind, Role, WireError, WorkerState};

/// One worker actor on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// The worker's id (unique in the cluster).
    pub worker_id: String,
    /// The model it serves.
    pub model: String,
    /// The engine it runs.
    pub engine: EngineKind,
    /// Most sequences it runs at once.
    pub max_sequences: u32,
    /// Sequences running now.
    pub in_flight: u32,
    /// `loading`, `ready`, `draining` (stopping, taking no new task) or `failed`.
    pub state: WorkerState,
    /// Tasks running now, with their deliveries' ack subjects.
    #[serde(default)]
    pub running: Vec<RunningTask>,
    /// When it last started or finished a task (or loaded), ms since the epoch.
    #[serde(default)]
    pub last_used_ms: u64,
    /// True when the leading cluster manager placed it (false: pinned by the node's
    /// `worker.models`).
    #[serde(default)]
    pub placed: bool,
    /// The GPUs (CUDA ordinals) it runs on; empty on the CPU.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Its engine's prefix cache since it loaded.
    #[serde(default)]
    pub prefix_cache: PrefixCacheUse,
    /// True when it pulls the tasks pinned to it (cache-affinity routing): task managers
    /// pin tasks only to such workers.
    #[serde(default)]
    pub takes_pinned: bool,
    /// What it served each tenant since its engine loaded (the tenants served most, at most
    /// [`MAX_SERVED_TENANTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served: Vec<TenantServed>,
    /// Time to first token at p95 of the generations it finished in the last 10 s, ms
    /// (absent: none finished); what autoscaling on `first_token` reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_p95_ms: Option<u32>,
}

/// Most tenants a worker's heartbeat names in [`WorkerInfo::served`].
pub const MAX_SERVED_TENANTS: usize = 64;

/// What a worker served one tenant since its engine loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantServed {
    /// The tenant.
    pub tenant: String,
    /// Tasks that ended here.
    pub tasks: u64,
    /// Their tokens: prompt tokens computed (not from the prefix cache) and generated.
    pub tokens: u64,
}

/// What a worker's prefix cache did since its engine loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixCacheUse {
    /// Generations that looked in it.
    pub lookups: u64,
    /// Of those, the ones that found a prefix of their prompt there.
    pub hits: u64,
    /// Prompt tokens taken from it instead of computed.
    pub cached_tokens: u64,
}

/// A task a worker is generating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningTask {
    /// The task.
    pub task_id: crate::TaskId,
    /// Its delivery attempt.
    pub attempt: u32,
    /// The delivery's JetStream ack subject.
    pub ack_subject: String,
}

/// A node's heartbeat, in the nodes KV bucket (entries expire after the bucket's TTL).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// The node's id.
    pub node_id: String,
    /// Roles it runs.
    pub roles: Vec<Role>,
    /// Its HTTP address, when it runs a gateway.
    #[serde(default)]
    pub http: Option<String>,
    /// Its workers.
    #[serde(default)]
    pub workers: Vec<WorkerInfo>,
    /// Process start, ms since the epoch.
    pub started_ms: u64,
    /// This heartbeat, ms since the epoch.
    pub time_ms: u64,
    /// BitingLip version.
    pub version: String,
    /// `cpu`, `cuda` or `metal`: what its engines run on.
    #[serde(default)]
    pub device: DeviceKind,
    /// Memory the node offers to models (`worker.memory`, else the machine's or the
    /// GPU's), bytes.
    #[serde(default)]
    pub memory_total: u64,
    /// Memory free now, bytes.
    #[serde(default)]
    pub memory_free: u64,
    /// Its GPUs, as the driver (NVML) reports them now; empty on a node without.
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
}

/// One GPU of a node, as NVML reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuInfo {
    /// Its index (the CUDA device ordinal).
    pub index: u32,
    /// Its UUID (`GPU-…`).
    pub uuid: String,
    /// Its name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Memory, bytes.
    pub memory_total: u64,
    /// Memory in use (by any process), bytes.
    pub memory_used: u64,
    /// Memory free, bytes.
    pub memory_free: u64,
    /// Of its memory, what BitingLip may use (`worker.gpu_budget`), bytes.
    #[serde(default)]
    pub budget: u64,
    /// Compute capability (`9.0`).
    #[serde(default)]
    pub compute_capability: Option<String>,
    /// Utilization over the last sample period, percent.
    #[serde(default)]
    pub utilization: Option<u32>,
}

impl NodeHeartbeat {
    /// True when one of its workers has `model` loaded and takes tasks.
    pub fn serves(&self, model: &str) -> bool {
        self.workers.iter().any(|w| w.model == model && w.state == WorkerState::Ready)
    }

    /// True when it runs `role`.
    pub fn runs(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// True when one of its workers takes tasks, whatever the model.
    pub fn has_ready_worker(&self) -> bool {
        self.workers.iter().any(|w| w.state == WorkerState::Ready)
    }
}

/// The workers of `nodes` that take tasks, by model: one pass, for whoever looks at many
/// models at once (the autoscaler's step, the cluster's gauges).
pub fn ready_workers(nodes: &[NodeHeartbeat]) -> std::collections::HashMap<&str, Vec<&WorkerInfo>> {
    let mut by_model: std::collections::HashMap<&str, Vec<&WorkerInfo>> = std::collections::HashMap::new();
    for w in nodes.iter().flat_map(|n| &n.workers).filter(|w| w.state == WorkerState::Ready) {
        by_model.entry(w.model.as_str()).or_default().push(w);
    }
    by_model
}

/// Request on `…cluster.status`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetClusterStatus {}

/// Reply on `…cluster.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterStatus {
    /// Every live node's last heartbeat.
    Nodes {
        /// The nodes.
        nodes: Vec<NodeHeartbeat>,
        /// The cluster manager leading placement, if any.
        #[serde(default)]
        leader: Option<String>,
        /// What the answering cluster manager cannot do as set up, each naming the fix
        /// (such as following the server's client-disconnect events without the `events`
        /// user).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// The registry could not be read.
    Error(WireError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    #[test]
    fn cluster_messages_pin_their_fields() {
        let worker = WorkerInfo {
            worker_id: "n1-w0".into(),
            model: "m".into(),
            engine: EngineKind::Mistralrs,
            max_sequences: 4,
            in_flight: 1,
            state: WorkerState::Ready,
            running: vec![RunningTask {
                task_id: crate::TaskId::parse("t").unwrap(),
                attempt: 1,
                ack_subject: "$JS.ACK.x".into(),
            }],
            last_used_ms: 9,
            placed: true,
            gpus: vec![0],
            prefix_cache: PrefixCacheUse { lookups: 3, hits: 2, cached_tokens: 900 },
            takes_pinned: true,
            served: vec![TenantServed { tenant: "team-a".into(), tasks: 2, tokens: 300 }],
            first_token_p95_ms: Some(40),
        };
        pin(
            worker.clone(),
            &[
                "worker_id",
                "model",
                "engine",
                "max_sequences",
                "in_flight",
                "state",
                "running",
                "last_used_ms",
                "placed",
                "gpus",
                "prefix_cache",
                "takes_pinned",
                "served",
                "first_token_p95_ms",
            ],
        );
        pin(worker.running[0].clone(), &["task_id", "attempt", "ack_subject"]);
        pin(worker.served[0].clone(), &["tenant", "tasks", "tokens"]);
        pin(worker.prefix_cache, &["lookups", "hits", "cached_tokens"]);
        let hb = NodeHeartbeat {
            node_id: "n1".into(),
            roles: vec![Role::Worker],
            http: None,
            workers: vec![worker],
            started_ms: 1,
            time_ms: 2,
            version: "0.1.0".into(),
            device: DeviceKind::Cpu,
            memory_total: 8,
            memory_free: 4,
            gpus: vec![],
        };
        pin(
            hb.clone(),
            &[
                "node_id",
                "roles",
                "http",
                "workers",
                "started_ms",
                "time_ms",
                "version",
                "device",
                "memory_total",
                "memory_free",
                "gpus",
            ],
        );
        let gpu = GpuInfo {
            index: 0,
            uuid: "GPU-1".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total: 80,
            memory_used: 1,
            memory_free: 79,
            budget: 72,
            compute_capability: Some("9.0".into()),
            utilization: Some(3),
        };
        pin(
            gpu,
            &[
                "index",
                "uuid",
                "name",
                "memory_total",
                "memory_used",
                "memory_free",
                "budget",
                "compute_capability",
                "utilization",
            ],
        );
        pin(GetClusterStatus {}, &[]);
        pin(ClusterStatus::Nodes { nodes: vec![hb], leader: None, warnings: vec![] }, &["type", "nodes", "leader"]);
    }
}
