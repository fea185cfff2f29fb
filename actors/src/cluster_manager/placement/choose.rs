//! Where one replica goes: a GPU with room (the least loaded node, best fit), else the
//! fewest GPUs of one node it spreads over, else a CPU node; failing that, the idle
//! on-demand replicas whose eviction makes room; failing that, why it fits nowhere.

use bitinglip_bus_schema::Replica;

use super::{
    view::{gpu_share, used, NodeView},
    Plan, Want, GPU_RUNTIME,
};

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// One way to place a replica: a node, and its GPUs (none on a CPU node).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Slot {
    pub(super) node: String,
    pub(super) gpus: Vec<u32>,
}

/// A candidate: sort key (GPUs used or 1, node load, room left or 0), node, GPUs.
type Candidate<'a> = ((usize, (u32, u64), u64), &'a str, Vec<u32>);

/// Where a replica of `want` goes now, if anywhere has room (without evicting).
pub(super) fn choose(want: &Want, nodes: &[&NodeView], plan: &Plan) -> Option<Slot> {
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
pub(super) fn choose_with_eviction(
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
pub(super) fn refusal(want: &Want, nodes: &[&NodeView], plan: &Plan, placed: usize, target: u32) -> String {
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
