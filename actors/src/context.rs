//! What every actor of a node shares: the bus, the storage layer, the one watch on the
//! cluster's heartbeats, the config, and the live state of this node's workers (read by
//! the heartbeat).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use bitinglip_bus_schema::{Role, WorkerInfo};
use bitinglip_config::Config;
use bitinglip_nats::{store::nodes::NodeWatch, Bus, Store};

/// Shared, immutable handles plus the workers' status table, behind one `Arc`: every
/// request and every actor holds a clone, which costs one count, not one per handle.
#[derive(Clone)]
pub struct NodeContext {
    shared: Arc<NodeShared>,
}

impl std::ops::Deref for NodeContext {
    type Target = NodeShared;

    fn deref(&self) -> &NodeShared {
        &self.shared
    }
}

/// What a [`NodeContext`] holds.
#[derive(Clone)]
pub struct NodeShared {
    /// The typed bus.
    pub bus: Bus,
    /// Every record kind's operations (the only way to the buckets and streams).
    pub store: Store,
    /// The cluster's heartbeats as last heard, kept current by one watch.
    pub nodes: NodeWatch,
    /// The validated config.
    pub config: Arc<Config>,
    /// Process start, ms since the epoch.
    pub started_ms: u64,
    /// Workers on this node, by worker id; written by workers, read by the heartbeat.
    pub workers: Arc<RwLock<BTreeMap<String, WorkerInfo>>>,
    /// Where the gateway listens, once it does.
    pub http_addr: Arc<RwLock<Option<String>>>,
    /// Wakes the heartbeat at once (a worker became ready or failed), so the cluster
    /// learns of it now rather than at the next tick.
    pub heartbeat_now: Arc<tokio::sync::Notify>,
    /// Messages dropped because they could not be decoded and had no reply subject.
    pub dropped: Arc<std::sync::atomic::AtomicU64>,
    /// `/ready`'s last answer and when it was made: a probe is answered from it for a
    /// moment, so a flood of unauthenticated probes costs no JetStream round trips. The
    /// lock makes concurrent probes share one check.
    pub ready: Arc<tokio::sync::Mutex<Option<(std::time::Instant, crate::health::Readiness)>>>,
    /// With per-role NATS users (`nats.credentials_dir`): each role's own connection, on
    /// which its actors run (see [`NodeContext::for_role`]).
    roles: Arc<BTreeMap<Role, (Bus, Store)>>,
    /// On a cluster manager with the `events` user's seed: its connection to the server's
    /// system account, for the client-disconnect events.
    pub events: Option<async_nats::Client>,
}

impl NodeContext {
    /// Builds a context for a connected, provisioned node.
    pub fn new(bus: Bus, store: Store, config: Config) -> Self {
        let shared = NodeShared {
            bus,
            nodes: store.watch_nodes(),
            store,
            config: Arc::new(config),
            started_ms: bitinglip_nats::now_ms(),
            workers: Arc::default(),
            http_addr: Arc::default(),
            heartbeat_now: Arc::default(),
            dropped: Arc::default(),
            ready: Arc::default(),
            roles: Arc::default(),
            events: None,
        };
        Self { shared: Arc::new(shared) }
    }

    /// The same context with the `events` user's connection.
    pub fn with_events(mut self, events: Option<async_nats::Client>) -> Self {
        Arc::make_mut(&mut self.shared).events = events;
        self
    }

    /// The same context with a connection of its own for each of these roles.
    pub fn with_role_connections(mut self, roles: BTreeMap<Role, (Bus, Store)>) -> Self {
        Arc::make_mut(&mut self.shared).roles = Arc::new(roles);
        self
    }

    /// The context `role`'s actors run with: its own connection (its NATS user) when the
    /// node has one per role, this one otherwise. Everything else is shared.
    pub fn for_role(&self, role: Role) -> NodeContext {
        let Some((bus, store)) = self.roles.get(&role) else { return self.clone() };
        let mut shared = (*self.shared).clone();
        shared.bus = bus.clone();
        shared.store = store.clone();
        NodeContext { shared: Arc::new(shared) }
    }

    /// The per-role connections, when the node has them.
    pub fn role_connections(&self) -> impl Iterator<Item = &(Bus, Store)> {
        self.roles.values()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        self.bus.node_id()
    }

    /// Updates one worker's row in the status table; a change of state (loading, ready,
    /// failed) or of the tasks it runs is written to the cluster at once, so a cluster
    /// manager knows what to hand on if this node dies.
    pub fn set_worker(&self, info: WorkerInfo) {
        let changed = match self.workers.write() {
            Ok(mut w) => w
                .insert(info.worker_id.clone(), info.clone())
                .is_none_or(|old| old.state != info.state || old.running != info.running),
            Err(_) => false,
        };
        if changed {
            self.heartbeat_now.notify_one();
        }
    }

    /// Counts a message dropped for bad input (no reply subject to answer on).
    pub fn count_dropped(&self) {
        self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes one worker's row.
    pub fn remove_worker(&self, worker_id: &str) {
        if let Ok(mut w) = self.workers.write() {
            w.remove(worker_id);
        }
        self.heartbeat_now.notify_one();
    }
}
