//! The placement plan: which node runs which replica. A pure function of the deployments,
//! the live nodes and the current placements, so the leader can run it as often as it
//! likes (it changes nothing that is already right) and a new leader picks up where a
//! dead one stopped.
//!
//! Rules, in order:
//! - replicas on nodes that left, of deleted deployments, with a changed spec, on a
//!   node that no longer meets the constraints, or that failed to load there lately are
//!   dropped (and placed elsewhere);
//! - an on-demand deployment idle for `idle_unload` goes to 0 replicas;
//! - a deployment with too many replicas loses its least busy ones;
//! - missing replicas are placed biggest first (declared deployments before on-demand
//!   ones), each on the node that meets the constraints, has the memory free, and has
//!   the least load (tasks in flight, then replicas, then most memory free);
//! - when no node has the memory free, idle replicas of on-demand deployments are evicted
//!   from one node, least recently used first, until it does.

use std::collections::{BTreeMap, HashMap, HashSet};

use bitinglip_bus_schema::{Deployment, NodeHeartbeat, Replica};

/// What the plan needs of a live worker node.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Node id.
    pub id: String,
    /// Device kind.
    pub device: String,
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
        NodeView {
            id: hb.node_id.clone(),
            device: hb.device.clone(),
            capacity: hb.memory_total,
            in_flight: hb.workers.iter().map(|w| w.in_flight).sum(),
            pinned: hb.workers.iter().filter(|w| !w.placed).map(|w| w.model.clone()).collect(),
            usage,
            failed: HashSet::new(),
        }
    }
}

/// A deployment with the memory one replica needs.
#[derive(Debug, Clone)]
pub struct Want {
    /// The deployment.
    pub deployment: Deployment,
    /// Bytes per replica.
    pub memory: u64,
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
    c.device.as_ref().is_none_or(|dev| *dev == node.device)
        && c.min_memory.is_none_or(|min| node.capacity >= min)
        && node.capacity >= memory
        && !node.pinned.contains(&d.model)
        && !node.failed.contains(&d.model)
}

fn used(replicas: &[Replica]) -> u64 {
    replicas.iter().map(|r| r.memory).sum()
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
                    .filter(|r| {
                        by_model
                            .get(r.model.as_str())
                            .is_some_and(|w| w.deployment.spec == r.spec && fits(node, &w.deployment, 0))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        plan.placements.insert(node.id.clone(), kept);
    }
    let usage = |node: &str, model: &str| views.get(node).and_then(|n| n.usage.get(model)).copied().unwrap_or((0, 0));
    let hosts = |plan: &Plan, model: &str| -> Vec<String> {
        plan.placements.iter().filter(|(_, rs)| rs.iter().any(|r| r.model == model)).map(|(n, _)| n.clone()).collect()
    };

    // Declared deployments first, then on-demand ones; the biggest first (first-fit
    // decreasing: a big replica is not shut out by small ones that could go anywhere).
    let mut order: Vec<&Want> = wants.iter().collect();
    order.sort_by_key(|w| {
        let d = &w.deployment;
        (d.on_demand, std::cmp::Reverse(w.memory), d.created_ms, d.model.clone())
    });

    for want in order {
        let d = &want.deployment;
        let mut target = plan.scale.get(&d.model).copied().unwrap_or(d.replicas);
        let hosting = hosts(&plan, &d.model);

        // Idle unload.
        if d.on_demand && idle_unload_ms > 0 && target > 0 {
            let busy = hosting.iter().any(|n| usage(n, &d.model).0 > 0);
            let placed_ms = plan
                .placements
                .values()
                .flatten()
                .filter(|r| r.model == d.model)
                .map(|r| r.placed_ms)
                .max()
                .unwrap_or(0);
            let last = hosting.iter().map(|n| usage(n, &d.model).1).max().unwrap_or(0).max(placed_ms).max(d.updated_ms);
            if !busy && now_ms.saturating_sub(last) >= idle_unload_ms {
                target = 0;
                plan.scale.insert(d.model.clone(), 0);
            }
        }

        // Too many: drop the least busy.
        if hosting.len() > target as usize {
            let mut extra = hosting.clone();
            extra.sort_by_key(|n| {
                (usage(n, &d.model).0, std::cmp::Reverse(views.get(n.as_str()).map_or(0, |v| v.in_flight)))
            });
            for n in extra.into_iter().take(hosting.len() - target as usize) {
                if let Some(rs) = plan.placements.get_mut(&n) {
                    rs.retain(|r| r.model != d.model);
                }
            }
        }

        // Too few: place on the least loaded node with room, evicting idle on-demand
        // replicas (least recently used first) when no node has room.
        let mut count = hosts(&plan, &d.model).len();
        while count < target as usize {
            let mut candidates: Vec<&NodeView> = nodes
                .iter()
                .filter(|n| fits(n, d, want.memory) && !plan.placements[&n.id].iter().any(|r| r.model == d.model))
                .collect();
            candidates.sort_by_key(|n| {
                let rs = &plan.placements[&n.id];
                (n.in_flight, rs.len(), std::cmp::Reverse(n.capacity.saturating_sub(used(rs))), n.id.clone())
            });
            let roomy =
                candidates.iter().find(|n| n.capacity.saturating_sub(used(&plan.placements[&n.id])) >= want.memory);
            let chosen = match roomy {
                Some(n) => Some(n.id.clone()),
                None => candidates
                    .iter()
                    .find_map(|n| {
                        let rs = &plan.placements[&n.id];
                        let mut evictable: Vec<&Replica> = rs
                            .iter()
                            .filter(|r| {
                                by_model.get(r.model.as_str()).is_some_and(|w| w.deployment.on_demand)
                                    && usage(&n.id, &r.model).0 == 0
                            })
                            .collect();
                        evictable.sort_by_key(|r| usage(&n.id, &r.model).1.max(r.placed_ms));
                        let mut free = n.capacity.saturating_sub(used(rs));
                        let mut evict = Vec::new();
                        for r in evictable {
                            if free >= want.memory {
                                break;
                            }
                            free += r.memory;
                            evict.push(r.model.clone());
                        }
                        (free >= want.memory).then(|| (n.id.clone(), evict))
                    })
                    .map(|(node, evict)| {
                        for model in evict {
                            if let Some(rs) = plan.placements.get_mut(&node) {
                                rs.retain(|r| r.model != model);
                            }
                            let left = hosts(&plan, &model).len() as u32;
                            plan.scale.insert(model, left);
                        }
                        node
                    }),
            };
            let Some(node) = chosen else {
                plan.unplaced.insert(
                    d.model.clone(),
                    format!(
                        "{} of {target} replicas placed: no live worker node meets the constraints with {} bytes free",
                        count, want.memory
                    ),
                );
                break;
            };
            if let Some(rs) = plan.placements.get_mut(&node) {
                rs.push(Replica {
                    model: d.model.clone(),
                    spec: d.spec.clone(),
                    memory: want.memory,
                    placed_ms: now_ms,
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
            device: "cpu".into(),
            capacity: gib * GIB,
            in_flight: 0,
            pinned: HashSet::new(),
            usage: HashMap::new(),
            failed: HashSet::new(),
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
                },
                replicas,
                constraints: Constraints::default(),
                memory: None,
                on_demand,
                created_ms: 0,
                updated_ms: 0,
            },
            memory: gib * GIB,
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
        gpu.device = "cuda".into();
        let mut pinned = node("cpu", 8);
        pinned.pinned.insert("m".into());
        let mut m = want("m", 2, 1, false);
        m.deployment.constraints.device = Some("cuda".into());
        let p = plan(&[m], &[gpu, pinned, node("cpu2", 8)], &BTreeMap::new(), 1, 0);
        assert_eq!(models_on(&p, "gpu"), ["m"]);
        assert!(p.placements["cpu"].is_empty() && p.placements["cpu2"].is_empty());
        assert!(p.unplaced.contains_key("m"));
    }
}
