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

impl TestNats {
    /// Starts a server on a free port.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut opts = ServerOptions::new(dir.path().join("nats"));
        opts.binary = nats_server_bin().display().to_string();
        // Tests need no fsync per write; the default stays `always` for users.
        opts.sync = "2m".into();
        let creds = dir.path().join("creds");
        bitinglip_nats::permissions::init_credentials(&creds, &Subjects::default()).expect("test credentials");
        opts.credentials_dir = Some(creds.clone());
        let server = LocalNatsServer::start(opts).await.expect("nats-server starts");
        CREDENTIALS.lock().expect("the credentials table").insert(server.url(), creds);
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
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("creds");
        bitinglip_nats::permissions::init_credentials(&creds, &Subjects::default()).expect("test credentials");
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_urls: Vec<String> = routes.iter().map(|p| format!("\"nats://127.0.0.1:{p}\"")).collect();
        let starts = (0..3).map(|i| {
            let mut opts = ServerOptions::new(dir.path().join(format!("nats-{i}")));
            opts.binary = nats_server_bin().display().to_string();
            opts.sync = "2m".into();
            opts.port = free_port();
            opts.credentials_dir = Some(creds.clone());
            opts.extra_config = format!(
                "server_name: n{i}\ncluster {{\n  name: bitinglip-test\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
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

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again on its port and data.
    pub async fn start_again(&mut self, i: usize) {
        self.servers[i].restart().await.expect("a cluster's nats-server restarts");
    }
}
