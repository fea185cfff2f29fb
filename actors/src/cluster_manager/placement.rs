//! The placement plan: which node, and which of its GPUs, runs which replica. A pure
//! function of the deployments, the live nodes and the current placements, so the leader
//! can run it as often as it likes (it changes nothing that is already right) and a new
//! leader picks up where a dead one stopped.
//!
//! Rules, in order:
//! - replicas on nodes that left, of deleted deployments, with a changed spec, on a
//!   node that no longer meets the constraints or no longer has their GPUs, or that
//!   failed to load there lately are dropped (and placed elsewhere);
//! - an on-demand deployment idle for `idle_unload` goes to 0 replicas;
//! - a deployment with too many replicas loses its least busy ones;
//! - missing replicas are placed biggest first (declared deployments before on-demand
//!   ones). A node with GPUs (a `cuda` node) takes replicas on its GPUs, one replica of a
//!   model per GPU and as many as its GPUs hold; a node without takes one replica of a
//!   model, in its memory. A GPU's room is its budget less what the replicas placed on
//!   it claim, and never more than the memory free on it less what replicas placed but
//!   not loaded yet will take; a replica claims its memory and, on each GPU, the CUDA
//!   runtime ([`GPU_RUNTIME`]). GPUs come before CPU nodes; then the least loaded node
//!   (tasks in flight, then replicas per GPU or per node); on a node, the GPU with the
//!   least room that still fits (best fit, which keeps big GPUs for big models); then
//!   node id and GPU index. When no single GPU has room, the replica is spread evenly
//!   over the fewest GPUs of one node that hold it (mistral.rs maps its layers across
//!   them);
//! - when nothing has room, idle replicas of on-demand deployments are evicted from one
//!   node or GPU, least recently used first, until it does;
//! - a replica that fits nowhere is reported with what it needs and the largest room
//!   there is.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitinglip_bus_schema::{Deployment, DeviceKind, NodeHeartbeat, Replica, WorkerState};

pub use crate::ops::estimate::GPU_RUNTIME;

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
    fn gpu_room(&self, gpu: &GpuView, replicas: &[Replica]) -> u64 {
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
fn gpu_share(memory: u64, gpus: usize) -> u64 {
    memory.div_ceil(gpus.max(1) as u64) + GPU_RUNTIME
}

/// A deployment with the memory one replica needs.
#[derive(Debug, Clone)]
pub struct Want {
    /// The deployment.
    pub deployment: Deployment,
    /// Bytes per replica on a node without GPUs.
    pub memory: u64,
    /// Bytes per replica on GPUs, all of them together (the CUDA runtime of each apart).
    pub gpu_memory: u64,
}

/// The plan.
#[derive(Debug, Default)]
pub struct Plan {
    /// Replicas per live worker node (every live worker node has an entry).
    pub placements: BTreeMap<String, Vec<Replica>>,
    /// Deployments whose replica count changes (idle unload, eviction): model → replicas.
    pub scale: BTreeMap<String, u32>,
    /// Replicas that fit nowhere: model → why.
    pub unplaced: BTreeMap<String, String>,
}

fn fits(node: &NodeView, d: &Deployment, memory: u64) -> bool {
    let c = &d.constraints;
    c.device.is_none_or(|dev| dev == node.device)
        && c.min_memory.is_none_or(|min| node.capacity >= min)
        && (!node.gpus.is_empty() || node.capacity >= memory)
        && !node.pinned.contains(&d.model)
        && !node.failed.contains(&d.model)
}

/// True when a kept replica's GPUs are still right for `node`: none on a node without
/// GPUs, each one it has on a node with them.
fn gpus_still_there(node: &NodeView, r: &Replica) -> bool {
    if node.gpus.is_empty() {
        r.gpus.is_empty()
    } else {
        !r.gpus.is_empty() && r.gpus.iter().all(|g| node.gpus.iter().any(|v| v.index == *g))
    }
}

fn used(replicas: &[Replica]) -> u64 {
    replicas.iter().map(|r| r.memory).sum()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// One way to place a replica: a node, and its GPUs (none on a CPU node).
#[derive(Debug, Clone, PartialEq)]
struct Slot {
    node: String,
    gpus: Vec<u32>,
}

/// A candidate: sort key (GPUs used or 1, node load, room left or 0), node, GPUs.
type Candidate<'a> = ((usize, (u32, u64), u64), &'a str, Vec<u32>);

/// Where a replica of `want` goes now, if anywhere has room (without evicting).
fn choose(want: &Want, nodes: &[&NodeView], plan: &Plan) -> Option<Slot> {
    let model = &want.deployment.model;
    let load = |n: &NodeView| {
        let rs = &plan.placements[&n.id];
        let per = (rs.len() as u64 * 1000) / n.gpus.len().max(1) as u64;
        (n.in_flight, per)
    };
    // One GPU: the least loaded node, then best fit.
    let mut singles: Vec<Candidate> = Vec::new();
    for n in nodes.iter().filter(|n| !n.gpus.is_empty()) {
        let rs = &plan.placements[&n.id];
        let need = gpu_share(want.gpu_memory, 1);
        for g in &n.gpus {
            let taken = rs.iter().any(|r| &r.model == model && r.gpus.contains(&g.index));
            let room = n.gpu_room(g, rs);
            if !taken && room >= need {
                singles.push(((1, load(n), room - need), n.id.as_str(), vec![g.index]));
            }
        }
    }
    if let Some((_, node, gpus)) = singles.into_iter().min() {
        return Some(Slot { node: node.to_string(), gpus });
    }
    // Several GPUs of one node: the fewest that hold it, those with the most room.
    let mut spread: Vec<Candidate> = Vec::new();
    for n in nodes.iter().filter(|n| n.gpus.len() > 1) {
        let rs = &plan.placements[&n.id];
        let mut free: Vec<(u64, u32)> = n
            .gpus
            .iter()
            .filter(|g| !rs.iter().any(|r| &r.model == model && r.gpus.contains(&g.index)))
            .map(|g| (n.gpu_room(g, rs), g.index))
            .collect();
        free.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for k in 2..=free.len() {
            let need = gpu_share(want.gpu_memory, k);
            if free[..k].iter().all(|(room, _)| *room >= need) {
                let mut gpus: Vec<u32> = free[..k].iter().map(|(_, i)| *i).collect();
                gpus.sort_unstable();
                spread.push(((k, load(n), 0), n.id.as_str(), gpus));
                break;
            }
        }
    }
    if let Some((_, node, gpus)) = spread.into_iter().min() {
        return Some(Slot { node: node.to_string(), gpus });
    }
    // A CPU node: one replica of a model each; the least loaded, then most memory free.
    nodes
        .iter()
        .filter(|n| n.gpus.is_empty() && !plan.placements[&n.id].iter().any(|r| &r.model == model))
        .filter(|n| n.capacity.saturating_sub(used(&plan.placements[&n.id])) >= want.memory)
        .min_by_key(|n| {
            let rs = &plan.placements[&n.id];
            (n.in_flight, rs.len(), std::cmp::Reverse(n.capacity.saturating_sub(used(rs))), n.id.clone())
        })
        .map(|n| Slot { node: n.id.clone(), gpus: Vec::new() })
}

/// Room made by evicting idle on-demand replicas, least recently used first, from one
/// node (CPU) or one GPU: the slot and the models to evict, if any place gets enough.
fn choose_with_eviction(
    want: &Want,
    nodes: &[&NodeView],
    plan: &Plan,
    evictable: impl Fn(&NodeView, &Replica) -> Option<u64>,
) -> Option<(Slot, Vec<String>)> {
    let model = &want.deployment.model;
    for n in nodes {
        let rs = &plan.placements[&n.id];
        // Each place on the node: (slot, room now, replicas whose eviction frees room).
        let mut places: Vec<(Slot, u64, u64)> = Vec::new();
        if n.gpus.is_empty() {
            if !rs.iter().any(|r| &r.model == model) {
                places.push((
                    Slot { node: n.id.clone(), gpus: vec![] },
                    n.capacity.saturating_sub(used(rs)),
                    want.memory,
                ));
            }
        } else {
            for g in &n.gpus {
                if !rs.iter().any(|r| &r.model == model && r.gpus.contains(&g.index)) {
                    let slot = Slot { node: n.id.clone(), gpus: vec![g.index] };
                    places.push((slot, n.gpu_room(g, rs), gpu_share(want.gpu_memory, 1)));
                }
            }
        }
        for (slot, room, need) in places {
            let mut candidates: Vec<(u64, &Replica)> = rs
                .iter()
                .filter(|r| slot.gpus.is_empty() || r.gpus == slot.gpus)
                .filter_map(|r| evictable(n, r).map(|last| (last, r)))
                .collect();
            candidates.sort_by_key(|(last, _)| *last);
            let mut free = room;
            let mut evict = Vec::new();
            for (_, r) in candidates {
                if free >= need {
                    break;
                }
                free += if slot.gpus.is_empty() { r.memory } else { gpu_share(r.memory, 1) };
                evict.push(r.model.clone());
            }
            if free >= need && !evict.is_empty() {
                return Some((slot, evict));
            }
        }
    }
    None
}

/// Why a replica of `want` fits nowhere: what it needs and the largest room.
fn refusal(want: &Want, nodes: &[&NodeView], plan: &Plan, placed: usize, target: u32) -> String {
    let mut why = format!("{placed} of {target} replicas placed: ");
    if nodes.is_empty() {
        why.push_str("no live worker node meets the constraints");
        return why;
    }
    let largest_gpu = nodes
        .iter()
        .flat_map(|n| n.gpus.iter().map(move |g| (n.gpu_room(g, &plan.placements[&n.id]), &n.id, g.index)))
        .max_by_key(|(room, _, _)| *room);
    let largest_node = nodes
        .iter()
        .filter(|n| n.gpus.is_empty())
        .map(|n| (n.capacity.saturating_sub(used(&plan.placements[&n.id])), &n.id))
        .max_by_key(|(room, _)| *room);
    let mut parts = Vec::new();
    if let Some((room, node, index)) = largest_gpu {
        parts.push(format!(
            "a replica needs {} on a GPU ({} and {} of CUDA runtime); the largest free GPU has {} (GPU {index} of {node})",
            gib(want.gpu_memory + GPU_RUNTIME),
            gib(want.gpu_memory),
            gib(GPU_RUNTIME),
            gib(room)
        ));
    }
    if let Some((room, node)) = largest_node {
        parts.push(format!(
            "a replica needs {}; the most memory free on a node is {} ({node})",
            gib(want.memory),
            gib(room)
        ));
    }
    why.push_str(&parts.join("; "));
    why
}

/// Computes the plan at `now_ms`; `idle_unload_ms` 0 means never.
pub fn plan(
    wants: &[Want],
    nodes: &[NodeView],
    current: &BTreeMap<String, Vec<Replica>>,
    now_ms: u64,
    idle_unload_ms: u64,
) -> Plan {
    let by_model: HashMap<&str, &Want> = wants.iter().map(|w| (w.deployment.model.as_str(), w)).collect();
    let views: HashMap<&str, &NodeView> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut plan = Plan::default();

    // Keep what is still right.
    for node in nodes {
        let kept = current
            .get(&node.id)
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        let w = by_model.get(r.model.as_str())?;
                        let keep =
                            w.deployment.spec == r.spec && fits(node, &w.deployment, 0) && gpus_still_there(node, r);
                        // A kept replica claims the current estimate: a model placed before
                        // its shape was known (a folder never loaded) claims what it takes
                        // once its first load recorded it.
                        let memory = if r.gpus.is_empty() { w.memory } else { w.gpu_memory };
                        keep.then(|| Replica { memory, ..r.clone() })
                    })
                    .collect()
            })
            .unwrap_or_default();
        plan.placements.insert(node.id.clone(), kept);
    }
    let usage = |node: &str, model: &str| views.get(node).and_then(|n| n.usage.get(model)).copied().unwrap_or((0, 0));
    // Each replica of a model: (node, its GPUs).
    let replicas_of = |plan: &Plan, model: &str| -> Vec<(String, Vec<u32>)> {
        plan.placements
            .iter()
            .flat_map(|(n, rs)| rs.iter().filter(|r| r.model == model).map(move |r| (n.clone(), r.gpus.clone())))
            .collect()
    };

    // Declared deployments first, then on-demand ones; the biggest first (first-fit
    // decreasing: a big replica is not shut out by small ones that could go anywhere).
    let mut order: Vec<&Want> = wants.iter().collect();
    order.sort_by_key(|w| {
        let d = &w.deployment;
        (d.on_demand, std::cmp::Reverse(w.memory.max(w.gpu_memory)), d.created_ms, d.model.clone())
    });

    for want in order {
        let d = &want.deployment;
        let mut target = plan.scale.get(&d.model).copied().unwrap_or(d.replicas);
        let hosting = replicas_of(&plan, &d.model);

        // Idle unload.
        if d.on_demand && idle_unload_ms > 0 && target > 0 {
            let busy = hosting.iter().any(|(n, _)| usage(n, &d.model).0 > 0);
            let placed_ms = plan
                .placements
                .values()
                .flatten()
                .filter(|r| r.model == d.model)
                .map(|r| r.placed_ms)
                .max()
                .unwrap_or(0);
            let last =
                hosting.iter().map(|(n, _)| usage(n, &d.model).1).max().unwrap_or(0).max(placed_ms).max(d.updated_ms);
            if !busy && now_ms.saturating_sub(last) >= idle_unload_ms {
                target = 0;
                plan.scale.insert(d.model.clone(), 0);
            }
        }

        // Too many: drop the least busy.
        if hosting.len() > target as usize {
            let mut extra = hosting.clone();
            extra.sort_by_key(|(n, gpus)| {
                (
                    usage(n, &d.model).0,
                    std::cmp::Reverse(views.get(n.as_str()).map_or(0, |v| v.in_flight)),
                    std::cmp::Reverse(gpus.clone()),
                )
            });
            for (n, gpus) in extra.into_iter().take(hosting.len() - target as usize) {
                if let Some(rs) = plan.placements.get_mut(&n) {
                    if let Some(at) = rs.iter().position(|r| r.model == d.model && r.gpus == gpus) {
                        rs.remove(at);
                    }
                }
            }
        }

        // Too few: place where the rules say, evicting idle on-demand replicas when
        // nothing has room.
        let mut count = replicas_of(&plan, &d.model).len();
        let candidates: Vec<&NodeView> = nodes.iter().filter(|n| fits(n, d, want.memory)).collect();
        while count < target as usize {
            let slot = match choose(want, &candidates, &plan) {
                Some(slot) => Some(slot),
                None => choose_with_eviction(want, &candidates, &plan, |n, r| {
                    (by_model.get(r.model.as_str()).is_some_and(|w| w.deployment.on_demand)
                        && usage(&n.id, &r.model).0 == 0)
                        .then(|| usage(&n.id, &r.model).1.max(r.placed_ms))
                })
                .map(|(slot, evict)| {
                    for model in evict {
                        if let Some(rs) = plan.placements.get_mut(&slot.node) {
                            rs.retain(|r| !(r.model == model && (slot.gpus.is_empty() || r.gpus == slot.gpus)));
                        }
                        let left = replicas_of(&plan, &model).len() as u32;
                        plan.scale.insert(model, left);
                    }
                    slot
                }),
            };
            let Some(slot) = slot else {
                plan.unplaced.insert(d.model.clone(), refusal(want, &candidates, &plan, count, target));
                break;
            };
            if let Some(rs) = plan.placements.get_mut(&slot.node) {
                rs.push(Replica {
                    model: d.model.clone(),
                    spec: d.spec.clone(),
                    memory: if slot.gpus.is_empty() { want.memory } else { want.gpu_memory },
                    placed_ms: now_ms,
                    gpus: slot.gpus,
                });
            }
            count += 1;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{Constraints, EngineKind, ModelSpec};

    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(id: &str, gib: u64) -> NodeView {
        NodeView {
            id: id.into(),
            device: DeviceKind::Cpu,
            capacity: gib * GIB,
            in_flight: 0,
            pinned: HashSet::new(),
            usage: HashMap::new(),
            failed: HashSet::new(),
            gpus: Vec::new(),
            loaded: HashSet::new(),
        }
    }

    fn want(model: &str, replicas: u32, gib: u64, on_demand: bool) -> Want {
        Want {
            deployment: Deployment {
                model: model.into(),
                spec: ModelSpec {
                    source: model.into(),
                    revision: None,
                    engine: EngineKind::Echo,
                    max_sequences: None,
                    echo_tokens_per_sec: None,
                    context_length: None,
                    quantize: None,
                },
                replicas,
                constraints: Constraints::default(),
                memory: None,
                on_demand,
                created_ms: 0,
                updated_ms: 0,
            },
            memory: gib * GIB,
            gpu_memory: gib * GIB,
        }
    }

    fn models_on(plan: &Plan, node: &str) -> Vec<String> {
        plan.placements[node].iter().map(|r| r.model.clone()).collect()
    }

    #[test]
    fn replicas_go_where_memory_fits_and_load_is_least() {
        let nodes = [node("small", 2), node("medium", 4), node("large", 8)];
        let mut big = want("big", 1, 6, false);
        big.deployment.constraints.min_memory = Some(6 * GIB);
        let wants = [big, want("mid", 2, 3, false), want("tiny", 3, 1, false)];
        let plan = plan(&wants, &nodes, &BTreeMap::new(), 10, 0);
        assert_eq!(models_on(&plan, "large"), ["big", "tiny"]);
        assert_eq!(models_on(&plan, "medium"), ["mid", "tiny"]);
        // `mid` wanted 2 replicas but only medium had 3 GiB free after `big`.
        assert_eq!(models_on(&plan, "small"), ["tiny"]);
        assert!(plan.unplaced["mid"].contains("1 of 2"), "{:?}", plan.unplaced);
    }

    #[test]
    fn a_plan_is_stable_and_moves_replicas_off_nodes_that_left() {
        let nodes = [node("a", 4), node("b", 4)];
        let wants = [want("m", 1, 1, false)];
        let first = plan(&wants, &nodes, &BTreeMap::new(), 10, 0);
        let again = plan(&wants, &nodes, &first.placements, 20, 0);
        assert_eq!(first.placements, again.placements);
        let host = first.placements.iter().find(|(_, rs)| !rs.is_empty()).unwrap().0.clone();
        let other = if host == "a" { "b" } else { "a" };
        let survivors = [node(other, 4)];
        let moved = plan(&wants, &survivors, &first.placements, 30, 0);
        assert_eq!(models_on(&moved, other), ["m"]);
        assert!(!moved.placements.contains_key(&host));
    }

    #[test]
    fn idle_on_demand_models_unload_and_lru_makes_room() {
        let mut n = node("a", 4);
        n.usage.insert("old".into(), (0, 100));
        n.usage.insert("recent".into(), (0, 900));
        let mut current = BTreeMap::new();
        let placed = |w: &Want| Replica {
            model: w.deployment.model.clone(),
            spec: w.deployment.spec.clone(),
            memory: w.memory,
            placed_ms: 50,
            gpus: vec![],
        };
        let (old, recent) = (want("old", 1, 2, true), want("recent", 1, 2, true));
        current.insert("a".to_string(), vec![placed(&old), placed(&recent)]);
        let wants = [old.clone(), recent.clone(), want("new", 1, 2, false)];
        let p = plan(&wants, &[n.clone()], &current, 1000, 0);
        assert_eq!(models_on(&p, "a"), ["recent", "new"]);
        assert_eq!(p.scale.get("old"), Some(&0));

        // Idle for longer than idle_unload: scaled to 0; a busy one stays.
        let mut busy = n.clone();
        busy.usage.insert("recent".into(), (1, 900));
        let p = plan(&[old, recent], &[busy], &current, 10_000, 5_000);
        assert_eq!(p.scale.get("old"), Some(&0));
        assert_eq!(p.scale.get("recent"), None);
        assert_eq!(models_on(&p, "a"), ["recent"]);
    }

    #[test]
    fn a_replica_that_failed_to_load_moves_to_another_node() {
        let wants = [want("m", 1, 1, false)];
        let first = plan(&wants, &[node("a", 4), node("b", 4)], &BTreeMap::new(), 1, 0);
        assert_eq!(models_on(&first, "a"), ["m"]);
        let mut a = node("a", 4);
        a.failed.insert("m".into());
        let moved = plan(&wants, &[a, node("b", 4)], &first.placements, 2, 0);
        assert!(moved.placements["a"].is_empty());
        assert_eq!(models_on(&moved, "b"), ["m"]);
    }

    #[test]
    fn pinned_models_and_device_constraints_are_respected() {
        let mut gpu = node("gpu", 8);
        gpu.device = DeviceKind::Cuda;
        let mut pinned = node("cpu", 8);
        pinned.pinned.insert("m".into());
        let mut m = want("m", 2, 1, false);
        m.deployment.constraints.device = Some(DeviceKind::Cuda);
        let p = plan(&[m], &[gpu, pinned, node("cpu2", 8)], &BTreeMap::new(), 1, 0);
        assert_eq!(models_on(&p, "gpu"), ["m"]);
        assert!(p.placements["cpu"].is_empty() && p.placements["cpu2"].is_empty());
        assert!(p.unplaced.contains_key("m"));
    }

    /// A node with GPUs of these sizes (GiB), all free, with the default budget (0.9).
    fn gpu_node(id: &str, sizes: &[u64]) -> NodeView {
        let mut n = node(id, 64);
        n.device = DeviceKind::Cuda;
        n.gpus = sizes
            .iter()
            .enumerate()
            .map(|(i, gib)| GpuView { index: i as u32, budget: gib * GIB / 10 * 9, free: gib * GIB })
            .collect();
        n
    }

    fn places(plan: &Plan, model: &str) -> Vec<(String, Vec<u32>)> {
        let mut all: Vec<(String, Vec<u32>)> = plan
            .placements
            .iter()
            .flat_map(|(n, rs)| rs.iter().filter(|r| r.model == model).map(move |r| (n.clone(), r.gpus.clone())))
            .collect();
        all.sort();
        all
    }

    fn on(node: &str, gpus: &[u32]) -> (String, Vec<u32>) {
        (node.to_string(), gpus.to_vec())
    }

    #[test]
    fn replicas_go_to_gpus_by_the_rule_and_spread_only_when_no_single_gpu_holds_them() {
        // Two nodes, each with a 24 GiB and an 80 GiB GPU (budgets 21.6 and 72 GiB).
        let nodes = [gpu_node("a", &[24, 80]), gpu_node("b", &[24, 80])];
        let wants =
            [want("m55", 2, 55, false), want("m25", 1, 25, false), want("m16", 2, 16, false), want("m1", 4, 1, false)];
        let p = plan(&wants, &nodes, &BTreeMap::new(), 1, 0);
        // 55 GiB fits only the 80 GiB GPUs: one replica on each node's.
        assert_eq!(places(&p, "m55"), [on("a", &[1]), on("b", &[1])]);
        // 25 GiB fits no single GPU now (21.6 and 16.4 GiB of room): spread over both of
        // node a (12.5 GiB and the runtime on each).
        assert_eq!(places(&p, "m25"), [on("a", &[0, 1])]);
        // 16 GiB: b's 24 GiB GPU; the second replica fits nowhere.
        assert_eq!(places(&p, "m16"), [on("b", &[0])]);
        let why = &p.unplaced["m16"];
        assert!(why.starts_with("1 of 2 replicas placed"), "{why}");
        assert!(
            why.contains("needs 16.6 GiB on a GPU") && why.contains("largest free GPU has 16.4 GiB (GPU 1 of b)"),
            "{why}"
        );
        // 1 GiB × 4: the least loaded node each time, on it the GPU it fits best, one
        // replica of the model per GPU.
        assert_eq!(places(&p, "m1"), [on("a", &[0]), on("a", &[1]), on("b", &[0]), on("b", &[1])]);
        assert_eq!(p.unplaced.len(), 1);
        // The plan is stable.
        let again = plan(&wants, &nodes, &p.placements, 2, 0);
        assert_eq!(again.placements, p.placements);
    }

    #[test]
    fn no_gpu_is_ever_overcommitted_and_memory_in_use_counts() {
        // Twenty deployments of 1 to 24 GiB over 2 nodes × (24, 80 GiB), one GPU half
        // used by another process.
        let mut nodes = [gpu_node("a", &[24, 80]), gpu_node("b", &[24, 80])];
        nodes[1].gpus[1].free = 40 * GIB;
        let wants: Vec<Want> =
            (0..20u64).map(|i| want(&format!("m{i:02}"), 1 + (i % 3) as u32, 1 + (i * 7) % 24, false)).collect();
        let p = plan(&wants, &nodes, &BTreeMap::new(), 1, 0);
        for n in &nodes {
            for g in &n.gpus {
                let claimed: u64 = p.placements[&n.id]
                    .iter()
                    .filter(|r| r.gpus.contains(&g.index))
                    .map(|r| gpu_share(r.memory, r.gpus.len()))
                    .sum();
                assert!(
                    claimed <= g.budget.min(g.free),
                    "{} GPU {}: {claimed} > {}",
                    n.id,
                    g.index,
                    g.budget.min(g.free)
                );
            }
        }
        for w in &wants {
            let placed = places(&p, &w.deployment.model);
            // One replica of a model per GPU.
            let mut seen = HashSet::new();
            for (n, gpus) in &placed {
                for g in gpus {
                    assert!(seen.insert((n.clone(), *g)), "{} twice on {n} GPU {g}", w.deployment.model);
                }
            }
            if placed.len() < w.deployment.replicas as usize {
                assert!(p.unplaced[&w.deployment.model].contains("largest free GPU"), "{:?}", p.unplaced);
            }
        }
        let placed: usize = p.placements.values().map(Vec::len).sum();
        assert!(placed >= 8, "{placed} replicas placed: {:?}", p.placements);
    }

    #[test]
    fn a_loaded_replica_is_in_the_free_memory_and_a_pending_one_is_not() {
        let mut n = gpu_node("a", &[80]);
        let r = Replica {
            model: "x".into(),
            spec: want("x", 1, 30, false).deployment.spec,
            memory: 30 * GIB,
            placed_ms: 1,
            gpus: vec![0],
        };
        let share = gpu_share(30 * GIB, 1);
        // Placed, not loaded: the card's free memory does not show it yet.
        assert_eq!(n.gpu_room(&n.gpus[0].clone(), std::slice::from_ref(&r)), 72 * GIB - share);
        // Loaded: NVML's free memory already has it taken off.
        n.loaded.insert(("x".into(), vec![0]));
        n.gpus[0].free = 80 * GIB - share;
        assert_eq!(n.gpu_room(&n.gpus[0].clone(), std::slice::from_ref(&r)), 72 * GIB - share);
        // Another process took 45 GiB: the room is what is free.
        n.gpus[0].free = 80 * GIB - share - 45 * GIB;
        assert_eq!(n.gpu_room(&n.gpus[0].clone(), &[r]), 35 * GIB - share);
    }

    #[test]
    fn a_replica_placed_before_its_estimate_was_known_claims_it_once_it_is() {
        let nodes = [gpu_node("a", &[80])];
        let mut unknown = want("m", 1, 0, false);
        let first = plan(std::slice::from_ref(&unknown), &nodes, &BTreeMap::new(), 1, 0);
        assert_eq!(first.placements["a"][0].memory, 0);
        // Its first load recorded the shape: the same replica, now claiming 30 GiB.
        unknown.memory = 30 * GIB;
        unknown.gpu_memory = 30 * GIB;
        let later = plan(&[unknown], &nodes, &first.placements, 2, 0);
        assert_eq!(later.placements["a"].len(), 1);
        assert!(later.placements["a"][0].same_slot(&first.placements["a"][0]));
        assert_eq!(later.placements["a"][0].memory, 30 * GIB);
    }
}
