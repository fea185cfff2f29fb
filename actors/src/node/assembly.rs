//! A node, assembled one way for every caller (`up`, `node`, the benchmark, the
//! simulation): its connections (the node's own as its most trusted role, and one per
//! role with per-role NATS users, and the `events` user's for a cluster manager),
//! JetStream provisioned (or, on a worker-only node, found once a control node made it),
//! provisioned again after every reconnect, the metrics listener when configured, and the
//! node supervisor with every actor of its roles.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use bitinglip_bus_schema::{SubjectError, Subjects};
use bitinglip_config::{Config, Role};
use bitinglip_nats::{permissions::NatsRole, Bus, Changes, ConnectError, ProvisionError, Store};
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use super::{NodeSupervisor, NodeSupervisorArgs, NodeSupervisorMsg};
use crate::NodeContext;

/// The role a node's own connection runs as, most trusted first.
const NODE_ROLE_ORDER: [Role; 5] =
    [Role::ClusterManager, Role::TaskManager, Role::ModelManager, Role::Gateway, Role::Worker];

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `nats.subject_root` is not a subject.
    #[error(transparent)]
    Subjects(#[from] SubjectError),
    /// No connection to NATS.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// JetStream could not be provisioned or opened.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// `metrics.listen` could not be bound.
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// An actor failed to start (a gateway's port in use, a model that cannot load…).
    #[error("node failed to start: {0}")]
    Actors(String),
}

/// A running node.
pub struct Node {
    /// What its actors share.
    pub ctx: NodeContext,
    client: async_nats::Client,
    supervisor: ActorRef<NodeSupervisorMsg>,
    handle: JoinHandle<()>,
    reprovision: JoinHandle<()>,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Node {
    /// Connects, provisions and starts every actor of `config`'s roles.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let node_id = config.node_id.clone();
        let subjects = Subjects::new(config.nats.subject_root.clone())?;
        // With per-role users the node's own work (provisioning, heartbeats, readiness)
        // runs as its most trusted role; only the cluster manager may change a stream's
        // config.
        let per_role = config.nats.credentials_dir.is_some();
        let node_role = NODE_ROLE_ORDER.into_iter().find(|r| config.has_role(*r)).unwrap_or(Role::Worker);
        let node_user = if per_role { NatsRole::of(node_role).unwrap_or(NatsRole::Worker) } else { NatsRole::Admin };
        let changes = if !per_role || node_role == Role::ClusterManager { Changes::Safe } else { Changes::None };
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let name = format!("bitinglip-{node_id}");
        let client =
            bitinglip_nats::connect_node(&config.nats, node_user, &node_id, &name, Some(reconnected.clone())).await?;
        let domain = config.jetstream.domain.clone();
        let bus = Bus::new(client.clone(), subjects.clone(), node_id.clone(), config.nats.request_timeout)
            .in_jetstream_domain(domain.as_deref());
        // A worker-only node may not create streams or buckets (its user cannot): it
        // finds those a node with a control role provisioned, waiting for one when it
        // comes first.
        let worker_only = per_role && node_role == Role::Worker;
        let store = if worker_only {
            open_when_provisioned(&bus, &config).await
        } else {
            Store::provision_as(&bus, &config, changes).await?
        };
        let mut role_connections = BTreeMap::new();
        if per_role {
            for role in config.roles.clone() {
                let Some(user) = NatsRole::of(role) else { continue };
                let name = format!("bitinglip-{node_id}-{}", role.as_str());
                let client = bitinglip_nats::connect_node(&config.nats, user, &node_id, &name, None).await?;
                let bus = Bus::new(client, subjects.clone(), node_id.clone(), config.nats.request_timeout)
                    .in_jetstream_domain(domain.as_deref());
                let store = Store::open(&bus, &config).await?;
                role_connections.insert(role, (bus, store));
            }
        }
        let events = events_connection(&config).await;
        let reprovision = tokio::spawn(reprovision(bus.clone(), config.clone(), changes, worker_only, reconnected));
        let metrics_listen = config.metrics.listen.clone();
        let ctx = NodeContext::new(bus, store, config).with_role_connections(role_connections).with_events(events);
        let metrics = match &metrics_listen {
            Some(addr) => match crate::health::listen(ctx.clone(), addr).await {
                Ok(listening) => Some(listening),
                Err(source) => {
                    reprovision.abort();
                    return Err(StartError::Metrics { addr: addr.clone(), source });
                }
            },
            None => None,
        };
        let spawned = Actor::spawn(None, NodeSupervisor, NodeSupervisorArgs { ctx: ctx.clone() }).await;
        let (supervisor, handle) = match spawned {
            Ok(started) => started,
            Err(err) => {
                reprovision.abort();
                if let Some((_, task)) = metrics {
                    task.abort();
                }
                return Err(StartError::Actors(err.to_string()));
            }
        };
        Ok(Node { ctx, client, supervisor, handle, reprovision, metrics })
    }

    /// Where its gateway listens, when it runs one.
    pub fn http_addr(&self) -> Option<String> {
        self.ctx.http_addr.read().ok().and_then(|a| a.clone())
    }

    /// Where its metrics listener listens, when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
    }

    /// Stops cleanly: the actors (workers drain, the gateway closes its streams), then
    /// the node's tasks; the connection is flushed.
    pub async fn stop(self) {
        self.reprovision.abort();
        if let Some((_, task)) = &self.metrics {
            task.abort();
        }
        let _ = ractor::call!(self.supervisor, NodeSupervisorMsg::Shutdown);
        self.supervisor.stop(None);
        let _ = self.handle.await;
        let _ = self.client.flush().await;
    }

    /// Dies as a crashed process would, for the simulation: its connection closes first
    /// (the server sees it go, its heartbeat stays behind, unremoved), then its actors
    /// stop without draining.
    pub async fn die(self) {
        self.reprovision.abort();
        if let Some((_, task)) = &self.metrics {
            task.abort();
        }
        let _ = self.client.drain().await;
        for (bus, _) in self.ctx.role_connections() {
            let _ = bus.client().drain().await;
        }
        self.supervisor.kill();
        let _ = self.handle.await;
    }
}

/// A cluster manager's connection to the server's system account (for the
/// client-disconnect events, to find a dead node at once), when the credentials hold the
/// `events` user (`nats init` makes it).
async fn events_connection(config: &Config) -> Option<async_nats::Client> {
    let dir = config.nats.credentials_dir.as_ref().filter(|_| config.has_role(Role::ClusterManager))?;
    if !bitinglip_nats::permissions::seed_file(dir, NatsRole::Events).exists() {
        tracing::warn!(dir = %dir.display(), "no events.nk (run `bitinglip nats init` again): dead nodes are found by asking the nodes that run tasks (and cluster.node_ttl)");
        return None;
    }
    let name = format!("bitinglip-{}-events", config.node_id);
    match bitinglip_nats::connect_as(&config.nats, NatsRole::Events, &name, None).await {
        Ok(client) => Some(client),
        Err(err) => {
            tracing::warn!(cause = %err, "no events connection: dead nodes are found by asking the nodes that run tasks (and cluster.node_ttl)");
            None
        }
    }
}

/// After each reconnect (a restarted server, a failover) provisions again: memory-stored
/// streams and buckets may be gone, and every operation is idempotent. A worker-only
/// node leaves it to the control nodes (its handles are found by name).
async fn reprovision(
    bus: Bus,
    config: Config,
    changes: Changes,
    worker_only: bool,
    reconnected: Arc<tokio::sync::Notify>,
) {
    loop {
        reconnected.notified().await;
        if worker_only {
            continue;
        }
        let mut delay = Duration::from_millis(100);
        loop {
            // The handles stay valid: buckets and streams are found by name.
            match Store::provision_as(&bus, &config, changes).await {
                Ok(_) => {
                    tracing::info!("JetStream provisioned again after reconnect");
                    break;
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "provisioning after reconnect failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The streams and buckets a node with a control role provisioned, once they are there.
async fn open_when_provisioned(bus: &Bus, config: &Config) -> Store {
    let mut delay = Duration::from_millis(100);
    let mut said = false;
    loop {
        match Store::open(bus, config).await {
            Ok(store) => return store,
            Err(err) => {
                if !said {
                    tracing::info!(cause = %err, "waiting for a node with a control role to provision JetStream");
                    said = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}
