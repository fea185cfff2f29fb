//! A local `nats-server` with JetStream on a data folder, started as a child process.
//! `bitinglip up` uses it when no server answers; the test harness uses it for every test.
//! The server is killed when the handle is dropped.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::ServerError;

/// How to start a local server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Binary: a path or a name on `PATH`.
    pub binary: String,
    /// Listen host.
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// JetStream store folder (created when missing); the config and log files go beside it.
    pub data_dir: PathBuf,
    /// JetStream `sync_interval`: `always` or a duration such as `2m`.
    pub sync: String,
    /// Extra lines for the server's config file (cluster blocks in tests).
    pub extra_config: String,
    /// A credentials folder (`bitinglip nats init`): the server includes its `auth.conf`,
    /// so every connection needs one of its users, and readiness is checked as `admin`.
    pub credentials_dir: Option<PathBuf>,
    /// TLS for its clients.
    pub tls: Option<ServerTls>,
    /// JetStream's memory and disk limits, bytes (`max_memory_store`, `max_file_store`);
    /// the server's own defaults when absent.
    pub limits: Option<(u64, u64)>,
    /// A command the server runs under (its arguments, then the server's command line):
    /// `nice`, `taskset`, `ip netns exec <ns>` (the tests' hosts). Empty: none.
    pub wrapper: Vec<String>,
    /// Its cluster's JetStream domain (`jetstream { domain }`), which edge sites' leaf
    /// nodes reach JetStream through.
    pub jetstream_domain: Option<String>,
}

/// A server's TLS: its certificate, and the CA it trusts for client certificates.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate (PEM).
    pub cert_file: PathBuf,
    /// Its key (PEM).
    pub key_file: PathBuf,
    /// The CA (PEM) that signed the server's certificate and, for mutual TLS, the
    /// clients'.
    pub ca_file: PathBuf,
    /// Mutual TLS: every client must present a certificate the CA signed; this one
    /// (certificate and key, PEM) is the readiness check's.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl ServerOptions {
    /// Defaults: `nats-server` on `PATH`, 127.0.0.1, a free port, `sync_interval: always`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            binary: "nats-server".into(),
            host: "127.0.0.1".into(),
            port: 0,
            data_dir: data_dir.into(),
            sync: "always".into(),
            extra_config: String::new(),
            credentials_dir: None,
            tls: None,
            limits: None,
            wrapper: Vec::new(),
            jetstream_domain: None,
        }
    }
}

/// A running local nats-server.
#[derive(Debug)]
pub struct LocalNatsServer {
    child: Option<Child>,
    opts: ServerOptions,
    binary: PathBuf,
    port: u16,
}

/// Finds a nats-server binary: an explicit path, then `PATH`.
pub fn find_nats_server(binary: &str) -> Option<PathBuf> {
    let candidate = Path::new(binary);
    if candidate.components().count() > 1 {
        return candidate.is_file().then(|| candidate.to_path_buf());
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(binary)).find(|p| p.is_file()))
}

/// Asks the OS for a free TCP port on `host`.
pub(crate) fn free_port(host: &str) -> std::io::Result<u16> {
    Ok(TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// The server config's `tls` block.
fn tls_block(tls: Option<&ServerTls>) -> String {
    let Some(tls) = tls else { return String::new() };
    format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {}\n  timeout: 2\n}}\n",
        tls.cert_file.display(),
        tls.key_file.display(),
        tls.ca_file.display(),
        tls.client.is_some()
    )
}

impl LocalNatsServer {
    /// Starts the server and waits until a client can connect.
    pub async fn start(opts: ServerOptions) -> Result<Self, ServerError> {
        let binary = find_nats_server(&opts.binary).ok_or_else(|| ServerError::NotFound(opts.binary.clone()))?;
        let port = if opts.port == 0 { free_port(&opts.host)? } else { opts.port };
        let mut server = Self { child: None, opts, binary, port };
        server.spawn().await?;
        Ok(server)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.opts.host, self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream folder.
    pub fn data_dir(&self) -> &Path {
        &self.opts.data_dir
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.opts.data_dir.join("nats-server.log")
    }

    async fn spawn(&mut self) -> Result<(), ServerError> {
        let dir = &self.opts.data_dir;
        std::fs::create_dir_all(dir.join("jetstream"))?;
        let store = dir.join("jetstream");
        let conf = dir.join("nats-server.conf");
        let sync = if self.opts.sync == "always" { "always".to_string() } else { format!("\"{}\"", self.opts.sync) };
        std::fs::write(
            &conf,
            format!(
                "host: \"{host}\"\nport: {port}\npid_file: \"{pid}\"\njetstream {{\n  store_dir: \"{store}\"\n  sync_interval: {sync}\n{limits}{domain}}}\n{extra}\n",
                limits = match self.opts.limits {
                    Some((memory, file)) => format!("  max_memory_store: {memory}\n  max_file_store: {file}\n"),
                    None => String::new(),
                },
                domain = match &self.opts.jetstream_domain {
                    Some(d) => format!("  domain: \"{d}\"\n"),
                    None => String::new(),
                },
                host = self.opts.host,
                port = self.port,
                store = store.display(),
                pid = dir.join("nats-server.pid").display(),
                extra = match &self.opts.credentials_dir {
                    // Its text, not an `include` (whose path would be relative to this file).
                    Some(dir) => format!(
                        "{}\n{}\n",
                        self.opts.extra_config,
                        std::fs::read_to_string(dir.join(crate::permissions::AUTH_FILE))?
                    ),
                    None => self.opts.extra_config.clone(),
                } + &tls_block(self.opts.tls.as_ref()),
            ),
        )?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        // Its own process group: a Ctrl-C in the terminal reaches the node, which stops
        // the server itself after handing its tasks back, rather than both at once.
        let mut command = match self.opts.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .process_group(0)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), ServerError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = self.url();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(ServerError::NotReady {
                        url,
                        log: format!("exited with {status}: {}", self.log_tail()),
                    });
                }
            }
            // Ready means a client can connect and JetStream answers.
            let mut opts = async_nats::ConnectOptions::new();
            if let Some(dir) = &self.opts.credentials_dir {
                let role = crate::permissions::NatsRole::Admin;
                let seed = std::fs::read_to_string(crate::permissions::seed_file(dir, role))?;
                opts = opts.nkey(seed.trim().to_string()).custom_inbox_prefix(role.inbox_prefix());
            }
            if let Some(tls) = &self.opts.tls {
                crate::connect::ensure_tls_provider();
                opts = opts.require_tls(true).add_root_certificates(tls.ca_file.clone());
                if let Some((cert, key)) = &tls.client {
                    opts = opts.add_client_certificate(cert.clone(), key.clone());
                }
            }
            if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(1), opts.connect(&url)).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(ServerError::NotReady { url, log: self.log_tail() });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM, so JetStream flushes), killing it after 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server and starts it again on the same port and data folder.
    pub async fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for LocalNatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
