//! Test nats-servers: one per test, or a cluster of three, each authorizing the per-role
//! users `bitinglip nats init` makes, and the table that lets every client the harness
//! makes connect as its user.

use std::{collections::BTreeMap, path::PathBuf, sync::Mutex};

use bitinglip_bus_schema::Subjects;
use bitinglip_config::Config;
use bitinglip_nats::{LocalNatsServer, ServerOptions};
use tempfile::TempDir;

use crate::{free_port, nats_server_bin, test_config};

/// The credentials folder of each test nats-server, by client URL: every connection the
/// harness makes to that server (nodes, the CLI, plain clients) uses them, so the whole
/// suite runs with the per-role users a deployment runs with.
static CREDENTIALS: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());

/// The per-role credentials folder of the test server at `url`, when it is one.
pub fn credentials_of(url: &str) -> Option<PathBuf> {
    CREDENTIALS.lock().ok()?.get(url).cloned()
}

/// Connection options for a plain client of the server at `url`: its `admin` user when
/// the server authorizes users.
pub fn admin_options(url: &str) -> async_nats::ConnectOptions {
    match credentials_of(url) {
        Some(dir) => {
            let role = bitinglip_nats::permissions::NatsRole::Admin;
            let seed = std::fs::read_to_string(bitinglip_nats::permissions::seed_file(&dir, role))
                .expect("the admin seed of a test server");
            async_nats::ConnectOptions::with_nkey(seed.trim().to_string()).custom_inbox_prefix(role.inbox_prefix())
        }
        None => async_nats::ConnectOptions::new(),
    }
}

/// A real nats-server with JetStream in its own temporary folder, authorizing the
/// per-role users `bitinglip nats init` makes (anonymous clients are refused).
pub struct TestNats {
    server: LocalNatsServer,
    _dir: TempDir,
}

/// JetStream's limits on the test servers: memory as a small machine has it, and a file
/// store far above what any test writes. JetStream reserves each stream's byte limit
/// against the file store, whose default is three quarters of the disk's free space, so
/// without this a test that raises a limit fails on a machine short of free disk.
const TEST_JETSTREAM_LIMITS: (u64, u64) = (4 << 30, 1 << 40);

/// The options of a test server with its data in `data`: the harness's nats-server, no
/// fsync per write and [`TEST_JETSTREAM_LIMITS`]; on `host` (its address, port 4222) when
/// given.
fn test_options(data: PathBuf, host: Option<&crate::netns::Host>) -> ServerOptions {
    let mut opts = ServerOptions::new(data);
    if let Some(host) = host {
        opts.host = host.ip().to_string();
        opts.port = 4222;
        opts.wrapper = host.wrapper();
    }
    opts.binary = nats_server_bin().display().to_string();
    // Tests need no fsync per write; the default stays `always` for users.
    opts.sync = "2m".into();
    opts.limits = Some(TEST_JETSTREAM_LIMITS);
    opts
}

/// A nats-server as an operator starts one: on a free port, authorizing the users of the
/// credentials folder `creds`, with its data in a new temporary folder (returned first,
/// so that it outlives the server).
pub async fn server_with_credentials(creds: &std::path::Path) -> (TempDir, LocalNatsServer) {
    let data = tempfile::tempdir().expect("temp dir");
    let mut opts = ServerOptions::new(data.path());
    opts.binary = nats_server_bin().display().to_string();
    opts.credentials_dir = Some(creds.to_path_buf());
    let server = LocalNatsServer::start(opts).await.expect("nats-server starts");
    (data, server)
}

impl TestNats {
    /// Starts a server on a free port.
    pub async fn start() -> Self {
        Self::start_on(None).await
    }

    /// [`TestNats::start`] on `host` (its address, port 4222) when given.
    pub async fn start_on(host: Option<&crate::netns::Host>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut opts = test_options(dir.path().join("nats"), host);
        let creds = dir.path().join("creds");
        bitinglip_nats::permissions::init_credentials(&creds, &Subjects::default(), None).expect("test credentials");
        opts.credentials_dir = Some(creds.clone());
        let server = LocalNatsServer::start(opts).await.expect("nats-server starts");
        CREDENTIALS.lock().expect("the credentials table").insert(server.url(), creds);
        Self { server, _dir: dir }
    }

    /// A hub for edge sites on `host`: JetStream in `domain`, leaf node connections on
    /// port 7422, authorizing the users of `creds` (a folder `bitinglip nats init
    /// --jetstream-domain` made, whose `leaf` user edge sites connect as).
    pub async fn start_hub(host: &crate::netns::Host, creds: &std::path::Path, domain: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut opts = test_options(dir.path().join("nats"), Some(host));
        opts.credentials_dir = Some(creds.to_path_buf());
        opts.jetstream_domain = Some(domain.to_string());
        opts.extra_config = format!("leafnodes {{ listen: \"{}:7422\" }}\n", host.ip());
        let server = LocalNatsServer::start(opts).await.expect("the hub's nats-server starts");
        CREDENTIALS.lock().expect("the credentials table").insert(server.url(), creds.to_path_buf());
        Self { server, _dir: dir }
    }

    /// The client URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A plain client, as the `admin` user.
    pub async fn client(&self) -> async_nats::Client {
        admin_options(&self.url()).connect(self.url()).await.expect("connect to the test nats-server")
    }

    /// A plain client as the `client` user (the docs' client identity), with its inbox
    /// prefix.
    pub async fn client_user(&self) -> async_nats::Client {
        let seed = std::fs::read_to_string(self.credentials_dir().join("client.nk")).expect("the client seed");
        async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
            .custom_inbox_prefix("_INBOX_client")
            .connect(self.url())
            .await
            .expect("connect as the client user")
    }

    /// The folder of its per-role credentials (`<role>.nk`).
    pub fn credentials_dir(&self) -> PathBuf {
        credentials_of(&self.url()).expect("a test server's credentials")
    }

    /// Kills the server and starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.server.restart().await.expect("nats-server restarts");
    }
}

/// Three nats-servers in one cluster (routes on free ports, JetStream on each), each
/// killable and restartable, authorizing the same per-role users as [`TestNats`].
pub struct TestCluster {
    servers: Vec<LocalNatsServer>,
    _dir: TempDir,
}

impl TestCluster {
    /// Starts three servers at once (JetStream needs a quorum before any answers).
    pub async fn start() -> Self {
        Self::start_on(&[]).await
    }

    /// [`TestCluster::start`] with server `i` on `hosts[i]` (its address, the standard
    /// ports 4222 and 6222), or all on this machine on free ports when `hosts` is empty.
    pub async fn start_on(hosts: &[&crate::netns::Host]) -> Self {
        assert!(hosts.is_empty() || hosts.len() == 3, "three hosts or none");
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("creds");
        bitinglip_nats::permissions::init_credentials(&creds, &Subjects::default(), None).expect("test credentials");
        let (addrs, ports, routes): (Vec<String>, Vec<u16>, Vec<u16>) = if hosts.is_empty() {
            (
                (0..3).map(|_| "127.0.0.1".to_string()).collect(),
                (0..3).map(|_| free_port()).collect(),
                (0..3).map(|_| free_port()).collect(),
            )
        } else {
            (hosts.iter().map(|h| h.ip().to_string()).collect(), vec![4222; 3], vec![6222; 3])
        };
        let route_urls: Vec<String> = (0..3).map(|i| format!("\"nats://{}:{}\"", addrs[i], routes[i])).collect();
        let starts = (0..3).map(|i| {
            let mut opts = test_options(dir.path().join(format!("nats-{i}")), None);
            opts.host = addrs[i].clone();
            opts.port = ports[i];
            opts.credentials_dir = Some(creds.clone());
            if let Some(host) = hosts.get(i) {
                opts.wrapper = host.wrapper();
            }
            // A server that is cut off (not crashed) closes no socket: the others notice
            // only when their pings go unanswered, so ping often (as docs/DEPLOY.md does).
            opts.extra_config = format!(
                "server_name: n{i}\nping_interval: \"2s\"\nping_max: 3\ncluster {{\n  name: bitinglip-test\n  listen: \"{}:{}\"\n  routes: [{}]\n}}\n",
                addrs[i],
                routes[i],
                route_urls.join(", ")
            );
            LocalNatsServer::start(opts)
        });
        let servers: Vec<LocalNatsServer> = futures::future::join_all(starts)
            .await
            .into_iter()
            .map(|s| s.expect("a cluster's nats-server starts"))
            .collect();
        let mut table = CREDENTIALS.lock().expect("the credentials table");
        for s in &servers {
            table.insert(s.url(), creds.clone());
        }
        drop(table);
        Self { servers, _dir: dir }
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(LocalNatsServer::url).collect()
    }

    /// A config for a node on the whole cluster, with replicated streams and buckets.
    pub fn node_config(&self) -> Config {
        let mut c = test_config(&self.urls()[0]);
        c.nats.servers = self.urls();
        c.jetstream.replicas = 3;
        c
    }

    /// A client of the cluster as `admin`.
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self.urls().iter().filter_map(|u| u.parse().ok()).collect();
        admin_options(&self.urls()[0]).connect(urls).await.expect("connect to the test cluster")
    }

    /// The index of the server that leads `stream`, as JetStream reports it.
    pub async fn leader_of(&self, stream: &str) -> Option<usize> {
        let js = async_nats::jetstream::new(self.client().await);
        let info = js.get_stream(stream).await.ok()?.info().await.ok()?.clone();
        let leader = info.cluster?.leader?;
        leader.strip_prefix('n')?.parse().ok()
    }

    /// True when `stream` answers with a leader and every other replica current, online
    /// and heard from in the last 2 s (a restarted or cut-off server has caught up).
    pub async fn caught_up(&self, stream: &str) -> bool {
        let js = async_nats::jetstream::new(self.client().await);
        let Ok(mut s) = js.get_stream(stream).await else { return false };
        s.info().await.is_ok_and(|i| {
            i.cluster.as_ref().is_some_and(|c| {
                c.leader.is_some()
                    && c.replicas.len() == 2
                    && c.replicas
                        .iter()
                        .all(|r| r.current && !r.offline && r.active < std::time::Duration::from_secs(2))
            })
        })
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again on its port and data.
    pub async fn start_again(&mut self, i: usize) {
        self.servers[i].restart().await.expect("a cluster's nats-server restarts");
    }
}

/// An edge site's leaf node: a nats-server without JetStream on `host`, with the
/// `leaf.conf` and `leaf-auth.conf` of a credentials folder (`bitinglip nats init
/// --jetstream-domain D --hub URL`): it reaches the cluster as the `leaf` user, and its
/// local clients as the `worker` user reach JetStream in domain `D`.
pub struct LeafServer {
    child: std::process::Child,
    url: String,
    _dir: TempDir,
}

impl LeafServer {
    /// Starts it, and waits until a worker on it reaches JetStream in `domain` (its leaf
    /// connection to the cluster is up).
    pub async fn start(host: &crate::netns::Host, creds: &std::path::Path, domain: &str) -> Self {
        use bitinglip_nats::permissions::{seed_file, NatsRole, LEAF_AUTH_FILE, LEAF_FILE};
        let dir = tempfile::tempdir().expect("temp dir");
        let leaf = std::fs::read_to_string(creds.join(LEAF_FILE)).expect("leaf.conf (nats init --hub)");
        std::fs::copy(creds.join(LEAF_AUTH_FILE), dir.path().join(LEAF_AUTH_FILE)).expect("leaf-auth.conf");
        let conf = dir.path().join("nats-server.conf");
        std::fs::write(&conf, format!("listen: \"{}:4222\"\n{leaf}", host.ip())).expect("the leaf's config");
        let log = std::fs::File::create(dir.path().join("nats-server.log")).expect("log file");
        let mut wrapper = host.wrapper();
        let program = wrapper.remove(0);
        let child = std::process::Command::new(program)
            .args(wrapper)
            .arg(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("the leaf's nats-server starts");
        let url = format!("nats://{}:4222", host.ip());
        let seed = std::fs::read_to_string(seed_file(creds, NatsRole::Worker)).expect("worker.nk");
        let started = std::time::Instant::now();
        loop {
            let opts = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
                .custom_inbox_prefix(NatsRole::Worker.inbox_prefix());
            if let Ok(Ok(client)) = tokio::time::timeout(std::time::Duration::from_secs(1), opts.connect(&url)).await {
                if async_nats::jetstream::with_domain(client, domain).query_account().await.is_ok() {
                    break;
                }
            }
            let log = std::fs::read_to_string(dir.path().join("nats-server.log")).unwrap_or_default();
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the leaf never reached the hub's JetStream:\n{log}"
            );
            tokio::time::sleep(crate::POLL_INTERVAL).await;
        }
        CREDENTIALS.lock().expect("the credentials table").insert(url.clone(), creds.to_path_buf());
        Self { child, url, _dir: dir }
    }

    /// Its client URL.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

impl Drop for LeafServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
