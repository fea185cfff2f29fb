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

use std::collections::{BTreeMap, HashMap};

use bitinglip_bus_schema::{Deployment, Replica};

pub use crate::ops::estimate::GPU_RUNTIME;

mod choose;
mod view;

use choose::{choose, choose_with_eviction, refusal};
pub use view::{GpuView, NodeView};

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
    use bitinglip_bus_schema::{Constraints, DeviceKind, EngineKind, ModelSpec};

    use std::collections::HashSet;

    use super::{view::gpu_share, *};

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
                autoscale: None,
                scaling: Vec::new(),
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
