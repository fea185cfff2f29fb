//! `bitinglip up` and `bitinglip node`: start a local nats-server for `up` when none
//! answers (with per-role credentials made on the first start), start the node
//! ([`Node::start`]: connections, JetStream, the actors), wait for Ctrl-C or SIGTERM, stop
//! cleanly.

use std::time::Duration;

use anyhow::Context as _;
use bitinglip_actors::Node;
use bitinglip_bus_schema::Subjects;
use bitinglip_config::{Config, Role};
use bitinglip_nats::{LocalNatsServer, ServerOptions, Store};

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

    let roles: Vec<&str> = config.roles.iter().map(|r| r.as_str()).collect();
    let roles = roles.join(",");
    let has_gateway = config.has_role(Role::Gateway);
    let has_worker = config.has_role(Role::Worker);
    let no_models = config.worker.models.is_empty();
    let http = config.gateway.http.clone();
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
    let node = Node::start(config).await?;
    let ctx = node.ctx.clone();
    // The admin key is written as the gateway (the one role that writes keys).
    let key_store = ctx.for_role(Role::Gateway).store.clone();
    if let Some(local) = node.metrics_addr() {
        println!("bitinglip: metrics at http://{local}/metrics");
    }

    println!("bitinglip: node {node_id} running roles {roles}");
    if has_gateway {
        let addr = node.http_addr().unwrap_or(http);
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
    // Every handle to the connection goes before the server it talks to.
    drop(ctx);
    node.stop().await;
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
        tenant: None,
        weight: None,
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
