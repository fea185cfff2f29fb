//! What the plan sees of a live worker node and its GPUs, from the node's heartbeat, and
//! the room a node or a GPU has left under the replicas placed on it.

use std::collections::{HashMap, HashSet};

use bitinglip_bus_schema::{DeviceKind, NodeHeartbeat, Replica, WorkerState};

use super::GPU_RUNTIME;

/// What the plan needs of one GPU.
#[derive(Debug, Clone)]
pub struct GpuView {
    /// CUDA ordinal.
    pub index: u32,
    /// What BitingLip may use of it, bytes.
    pub budget: u64,
    /// Free now, bytes (NVML).
    pub free: u64,
}

/// What the plan needs of a live worker node.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Device kind.
    pub device: DeviceKind,
    /// Memory it offers to models, bytes.
    pub capacity: u64,
    /// Tasks in flight on all its workers.
    pub in_flight: u32,
    /// Models its own config pins (never placed there by the cluster).
    pub pinned: HashSet<String>,
    /// Per model it serves: (tasks in flight, last used ms).
    pub usage: HashMap<String, (u32, u64)>,
    /// Models that failed to load here lately (placed elsewhere for a while).
    pub failed: HashSet<String>,
    /// Its GPUs, when its engines run on them (a `cuda` node); empty otherwise.
    pub gpus: Vec<GpuView>,
    /// Placed replicas loaded now (model, GPUs): their memory is no longer free.
    pub loaded: HashSet<(String, Vec<u32>)>,
}

impl NodeView {
    /// The view of a heartbeat.
    pub fn of(hb: &NodeHeartbeat) -> NodeView {
        let mut usage: HashMap<String, (u32, u64)> = HashMap::new();
        for w in &hb.workers {
            let u = usage.entry(w.model.clone()).or_default();
            u.0 += w.in_flight;
            u.1 = u.1.max(w.last_used_ms);
        }
        let gpus = if hb.device == DeviceKind::Cuda {
            hb.gpus.iter().map(|g| GpuView { index: g.index, budget: g.budget, free: g.memory_free }).collect()
        } else {
            Vec::new()
        };
        NodeView {
            id: hb.node_id.clone(),
            device: hb.device,
            capacity: hb.memory_total,
            in_flight: hb.workers.iter().map(|w| w.in_flight).sum(),
            pinned: hb.workers.iter().filter(|w| !w.placed).map(|w| w.model.clone()).collect(),
            usage,
            failed: HashSet::new(),
            gpus,
            loaded: hb
                .workers
                .iter()
                .filter(|w| w.placed && matches!(w.state, WorkerState::Ready | WorkerState::Draining))
                .map(|w| (w.model.clone(), w.gpus.clone()))
                .collect(),
        }
    }

    /// Room on GPU `index` with `replicas` placed on this node, bytes.
    pub(super) fn gpu_room(&self, gpu: &GpuView, replicas: &[Replica]) -> u64 {
        let (mut claimed, mut pending) = (0u64, 0u64);
        for r in replicas.iter().filter(|r| r.gpus.contains(&gpu.index)) {
            let share = gpu_share(r.memory, r.gpus.len());
            claimed += share;
            if !self.loaded.contains(&(r.model.clone(), r.gpus.clone())) {
                pending += share;
            }
        }
        gpu.budget.saturating_sub(claimed).min(gpu.free.saturating_sub(pending))
    }
}

/// What a replica of `memory` bytes claims on each of its `gpus` GPUs.
pub(super) fn gpu_share(memory: u64, gpus: usize) -> u64 {
    memory.div_ceil(gpus.max(1) as u64) + GPU_RUNTIME
}

/// Memory the replicas claim on a node without GPUs, bytes.
pub(super) fn used(replicas: &[Replica]) -> u64 {
    replicas.iter().map(|r| r.memory).sum()
}
