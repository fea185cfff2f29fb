//! `bitinglip up` and `bitinglip node`: connect (starting a local nats-server for `up`
//! when none answers), provision JetStream, start the node supervisor, wait for Ctrl-C or
//! SIGTERM, stop cleanly.

use std::time::Duration;

use anyhow::Context as _;
use bitinglip_actors::{NodeContext, NodeSupervisor, NodeSupervisorArgs, NodeSupervisorMsg};
use bitinglip_bus_schema::Subjects;
use bitinglip_config::{Config, Role};
use bitinglip_nats::{permissions::NatsRole, Bus, LocalNatsServer, ServerOptions, Store};

/// The role a node's own connection runs as, most trusted first.
const NODE_ROLE_ORDER: [Role; 5] =
    [Role::ClusterManager, Role::TaskManager, Role::ModelManager, Role::Gateway, Role::Worker];
use ractor::Actor;

/// `<hostname>-<random>`: the node id when none is configured.
pub(crate) fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "node".into());
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let suffix: u16 = rand_suffix();
    format!("{}-{suffix:04x}", if host.is_empty() { "node" } else { &host })
}

fn rand_suffix() -> u16 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    (nanos ^ std::process::id().rotate_left(7)) as u16
}

/// True when `url` names this machine (only then may `up` start a server for it).
fn is_local(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| matches!(h.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]" | "0.0.0.0"))
}

/// True when a server answers with this node's connection settings (auth, TLS).
async fn answers(config: &Config) -> bool {
    let mut probe = config.nats.clone();
    probe.connect_timeout = Duration::from_secs(1);
    matches!(
        tokio::time::timeout(Duration::from_secs(2), bitinglip_nats::connect(&probe, "bitinglip-probe", None)).await,
        Ok(Ok(_))
    )
}

pub(super) async fn run(mut config: Config, embedded: bool) -> anyhow::Result<()> {
    if config.node_id.is_empty() {
        config.node_id = default_node_id();
    }
    let node_id = config.node_id.clone();

    // `up` is secure by default: unless the config names another way in, the bus
    // authorizes one NATS user per role, from seeds made on the first start.
    let subjects = Subjects::new(config.nats.subject_root.clone())?;
    let n = &config.nats;
    let no_auth = n.token.is_none()
        && n.user.is_none()
        && n.nkey_seed.is_none()
        && n.creds_file.is_none()
        && n.credentials_dir.is_none();
    if embedded && no_auth {
        let dir = config.data_dir.join("nats");
        let created = bitinglip_nats::permissions::init_credentials(&dir, &subjects, None)
            .with_context(|| format!("making NATS credentials in {}", dir.display()))?;
        if !created.is_empty() {
            println!("bitinglip: created NATS credentials, one nkey per role, in {} (mode 0600)", dir.display());
        }
        config.nats.credentials_dir = Some(dir);
    }

    // `up` is the one-machine default: if nothing answers at the (single, local) URL,
    // start a nats-server with JetStream in the data folder, and stop it on exit.
    let mut local_server = None;
    if embedded && config.nats.servers.len() == 1 && is_local(&config.nats.servers[0]) && !answers(&config).await {
        let url = url::Url::parse(&config.nats.servers[0])?;
        let mut opts = ServerOptions::new(config.data_dir.join("nats"));
        opts.binary = config.nats.embedded.binary.clone();
        opts.sync = config.nats.embedded.sync.clone();
        opts.port = url.port().unwrap_or(4222);
        opts.host = "127.0.0.1".into();
        opts.credentials_dir = config.nats.credentials_dir.clone();
        opts.limits = Some((config.nats.embedded.max_memory, config.nats.embedded.max_file));
        let server = LocalNatsServer::start(opts).await.context("starting a local nats-server")?;
        println!("bitinglip: started nats-server at {} (JetStream in {})", server.url(), server.data_dir().display());
        config.nats.servers = vec![server.url()];
        local_server = Some(server);
    }

    // With per-role users the node's own work (provisioning, heartbeats, readiness) runs
    // as its most trusted role; only the cluster manager may change a stream's config.
    let per_role = config.nats.credentials_dir.is_some();
    let node_role = NODE_ROLE_ORDER.into_iter().find(|r| config.has_role(*r)).unwrap_or(Role::Worker);
    let node_user = if per_role { NatsRole::of(node_role).unwrap_or(NatsRole::Worker) } else { NatsRole::Admin };
    let changes = if !per_role || node_role == Role::ClusterManager {
        bitinglip_nats::Changes::Safe
    } else {
        bitinglip_nats::Changes::None
    };
    let reconnected = std::sync::Arc::new(tokio::sync::Notify::new());
    let name = format!("bitinglip-{node_id}");
    let client =
        bitinglip_nats::connect_node(&config.nats, node_user, &node_id, &name, Some(reconnected.clone())).await?;
    let domain = config.jetstream.domain.clone();
    let bus = Bus::new(client.clone(), subjects.clone(), node_id.clone(), config.nats.request_timeout)
        .in_jetstream_domain(domain.as_deref());
    // A worker-only node may not create streams or buckets (its user cannot): it finds
    // those a node with a control role provisioned, waiting for one when it comes first.
    let worker_only = per_role && node_role == Role::Worker;
    let store = if worker_only {
        open_when_provisioned(&bus, &config).await
    } else {
        Store::provision_as(&bus, &config, changes).await?
    };
    let mut role_connections = std::collections::BTreeMap::new();
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
    // A cluster manager follows the server's client-disconnect events, to find a dead
    // node at once, when the credentials hold the `events` user (`nats init` makes it).
    let events = match &config.nats.credentials_dir {
        Some(dir) if config.has_role(Role::ClusterManager) => {
            if bitinglip_nats::permissions::seed_file(dir, NatsRole::Events).exists() {
                let name = format!("bitinglip-{node_id}-events");
                match bitinglip_nats::connect_as(&config.nats, NatsRole::Events, &name, None).await {
                    Ok(client) => Some(client),
                    Err(err) => {
                        tracing::warn!(cause = %err, "no events connection: dead nodes are found by asking the nodes that run tasks (and cluster.node_ttl)");
                        None
                    }
                }
            } else {
                tracing::warn!(dir = %dir.display(), "no events.nk (run `bitinglip nats init` again): dead nodes are found by asking the nodes that run tasks (and cluster.node_ttl)");
                None
            }
        }
        _ => None,
    };
    // After a reconnect (a restarted server, a failover) provision again: memory-stored
    // streams and buckets may be gone, and every operation is idempotent.
    let reprovision = {
        let (bus, config) = (bus.clone(), config.clone());
        tokio::spawn(async move {
            loop {
                reconnected.notified().await;
                if worker_only {
                    // The control nodes provision again; a worker's handles are found by name.
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
        })
    };

    let roles: Vec<&str> = config.roles.iter().map(|r| r.as_str()).collect();
    let roles = roles.join(",");
    let has_gateway = config.has_role(Role::Gateway);
    let has_worker = config.has_role(Role::Worker);
    let no_models = config.worker.models.is_empty();
    let http = config.gateway.http.clone();
    let metrics_listen = config.metrics.listen.clone();
    let data_dir = config.data_dir.clone();
    // `up` shows a hub model's download and load as `models pull` shows a pull.
    let hub_models: Vec<(String, String)> = config
        .worker
        .models
        .iter()
        .filter(|m| m.engine == bitinglip_config::EngineKind::Mistralrs && !m.is_local())
        .map(|m| (m.source.clone(), m.served_name()))
        .collect();
    let mut watchers = Vec::new();
    if embedded && has_worker && !hub_models.is_empty() {
        if let Ok(bus) = super::client_bus(&config).await {
            for (source, served) in hub_models {
                if let Ok(progress) = bus.subscribe(bus.subjects().model_progress(&source)).await {
                    watchers.push((bus.clone(), progress, served));
                }
            }
        }
    }
    let ctx = NodeContext::new(bus, store, config).with_role_connections(role_connections).with_events(events);
    // The admin key is written as the gateway (the one role that writes keys).
    let key_store = ctx.for_role(Role::Gateway).store.clone();
    let metrics = match &metrics_listen {
        Some(addr) => {
            let (local, task) = bitinglip_actors::health::listen(ctx.clone(), addr)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
            println!("bitinglip: metrics at http://{local}/metrics");
            Some(task)
        }
        None => None,
    };
    let (supervisor, handle) = Actor::spawn(None, NodeSupervisor, NodeSupervisorArgs { ctx: ctx.clone() })
        .await
        .map_err(|e| anyhow::anyhow!("node failed to start: {e}"))?;

    println!("bitinglip: node {node_id} running roles {roles}");
    if has_gateway {
        let addr = ctx.http_addr.read().ok().and_then(|a| a.clone()).unwrap_or(http);
        println!("bitinglip: OpenAI-compatible API at http://{addr}/v1");
        if embedded {
            let (path, created) = ensure_admin_key(&key_store, &data_dir).await?;
            let path = path.display();
            if let Some(secret) = created {
                println!("bitinglip: created an admin API key (shown once; stored in {path}, mode 0600):");
                println!("  {secret}");
            } else {
                println!("bitinglip: admin API key in {path}");
            }
            println!("bitinglip: try: curl http://{addr}/v1/models -H \"Authorization: Bearer $(cat {path})\"");
        }
    }
    for (bus, progress, served) in watchers {
        tokio::spawn(super::models::follow_load(bus, progress, ctx.store.clone(), served, node_id.clone()));
    }
    if has_worker && no_models {
        println!("bitinglip: no model served yet; start with --model <hugging-face-id or folder>, e.g. --model Qwen/Qwen2.5-0.5B-Instruct");
    }

    wait_for_signal().await;
    println!("bitinglip: stopping");
    reprovision.abort();
    if let Some(task) = metrics {
        task.abort();
    }
    let _ = ractor::call!(supervisor, NodeSupervisorMsg::Shutdown);
    supervisor.stop(None);
    let _ = handle.await;
    let _ = client.flush().await;
    // Every handle to the connection goes before the server it talks to.
    drop(ctx);
    drop(client);
    if let Some(mut server) = local_server {
        server.stop().await;
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The admin key `up` keeps in `<data_dir>/admin.key` (mode 0600): the one there while the
/// cluster knows it and it works, else a new one (then its secret is returned, to be shown
/// once). Every HTTP route but the probes takes a key, so a first start must hand one out.
async fn ensure_admin_key(
    store: &Store,
    data_dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, Option<String>)> {
    use bitinglip_nats::store::keys::{check, id_of, NewKey};
    let path = data_dir.join("admin.key");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let secret = text.trim();
        if let Some(id) = id_of(secret) {
            let key = store.keys().get(id).await?;
            if check(secret, key.as_ref(), bitinglip_nats::now_ms()).is_ok() {
                return Ok((path, None));
            }
        }
    }
    let new = NewKey {
        name: "admin (created by bitinglip up)".into(),
        scope: bitinglip_bus_schema::Scope::Admin,
        models: Vec::new(),
        expires_ms: None,
        limits: Default::default(),
    };
    let (key, secret) = store.keys().create(new).await?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    write_secret(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(key.id = %key.id, path = %path.display(), "admin API key created");
    Ok((path, Some(secret)))
}

/// Writes a secret readable by its owner only.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // A file that existed before keeps its mode through `open`: set it again.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(file, "{secret}")
}

/// The streams and buckets a node with a control role provisioned, once they are there.
async fn open_when_provisioned(bus: &Bus, config: &bitinglip_config::Config) -> Store {
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
