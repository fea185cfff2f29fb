//! Typed, layered configuration for every BitingLip role.
//!
//! Layers, later ones winning: built-in defaults < one TOML file < `BITINGLIP_*`
//! environment variables (`__` between levels: `BITINGLIP_GATEWAY__HTTP=0.0.0.0:8080`) <
//! command-line flags. [`Config::load`] merges them and [`Config::validate`] checks every
//! key once, at start, with a message that names the key and the bad value. The example
//! file `config/bitinglip.example.toml` documents every key.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

mod bytes;
mod models;
mod observability;
mod strict;
mod validate;

pub use bitinglip_bus_schema::{EngineKind, Role};
pub use bytes::{parse_bytes, SizeError};
pub use models::{ClusterConfig, DeploymentConfig, GpuBudget, ModelConfig, WorkerConfig};
pub use observability::{MetricsConfig, TelemetryConfig};
pub use validate::ConfigError;

/// A server URL fit to print: credentials in it (`nats://user:pass@host`,
/// `nats://token@host`) become `<redacted>`.
pub fn redact_url(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else { return raw.to_string() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => raw.to_string(),
    }
}

/// Several server URLs, fit to print.
pub fn redact_urls(urls: &[String]) -> String {
    urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")
}

/// A secret string: prints as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id; empty means `<hostname>-<random>`.
    pub node_id: String,
    /// Roles this node runs.
    #[serde(deserialize_with = "strict::roles")]
    pub roles: Vec<Role>,
    /// Folder for the local nats-server's JetStream data and other state.
    pub data_dir: PathBuf,
    /// NATS connection.
    pub nats: NatsConfig,
    /// JetStream streams and buckets.
    pub jetstream: JetStreamConfig,
    /// The HTTP gateway.
    pub gateway: GatewayConfig,
    /// The task manager.
    pub task_manager: TaskManagerConfig,
    /// How tasks are sent to a model's workers.
    pub routing: RoutingConfig,
    /// Workers.
    pub worker: WorkerConfig,
    /// Heartbeats and membership.
    pub cluster: ClusterConfig,
    /// The Hugging Face hub.
    pub hub: HubConfig,
    /// Logging.
    pub log: LogConfig,
    /// Trace export (OpenTelemetry).
    pub telemetry: TelemetryConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            roles: Role::ALL.to_vec(),
            data_dir: PathBuf::from(".bitinglip"),
            nats: NatsConfig::default(),
            jetstream: JetStreamConfig::default(),
            gateway: GatewayConfig::default(),
            task_manager: TaskManagerConfig::default(),
            routing: RoutingConfig::default(),
            worker: WorkerConfig::default(),
            cluster: ClusterConfig::default(),
            hub: HubConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// The Hugging Face hub. Unset keys follow the usual variables: `HF_ENDPOINT`, `HF_TOKEN`,
/// `HF_HOME` (the cache is `$HF_HOME/hub`, by default `~/.cache/huggingface/hub`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Hub URL (default `HF_ENDPOINT`, else `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// Access token (default `HF_TOKEN`).
    pub token: Option<Secret>,
    /// Cache folder in the hub's layout (default `$HF_HOME/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Download chunk size in bytes: an interrupted download resumes from the last whole
    /// chunk (default 10 MiB).
    pub chunk_size: Option<usize>,
    /// Chunks of one file downloaded at once (default 8). With 1, chunks arrive in order,
    /// so an interruption loses at most the chunk in flight.
    pub parallel_chunks: Option<usize>,
    /// Most bytes one pull may download, all files together (default 1 TiB). A hub that
    /// lists or sends more is refused before the excess is written.
    pub max_pull_bytes: Option<u64>,
    /// Allow an `http://` endpoint (default false: what comes over plain HTTP can be
    /// changed by anyone on the path). For a mirror on a trusted network, and for tests.
    pub allow_http: bool,
}

/// The default of `hub.max_pull_bytes`: 1 TiB.
pub const DEFAULT_MAX_PULL_BYTES: u64 = 1 << 40;

impl HubConfig {
    /// The endpoint, from config, else `HF_ENDPOINT`, else the public hub.
    pub fn endpoint_or_env(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".to_string())
            .trim_end_matches('/')
            .to_string()
    }

    /// The most bytes one pull may download.
    pub fn max_pull_bytes(&self) -> u64 {
        self.max_pull_bytes.unwrap_or(DEFAULT_MAX_PULL_BYTES)
    }

    /// The token, from config, else `HF_TOKEN`.
    pub fn token_or_env(&self) -> Option<String> {
        self.token.as_ref().map(|t| t.expose().to_string()).or_else(|| std::env::var("HF_TOKEN").ok())
    }

    /// The cache folder, from config, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub fn cache_dir_or_env(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        if let Ok(home) = std::env::var("HF_HOME") {
            return PathBuf::from(home).join("hub");
        }
        let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
        PathBuf::from(home).join(".cache/huggingface/hub")
    }
}

/// How to reach NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://…`); the client fails over between them.
    pub servers: Vec<String>,
    /// Subject root of every subject and prefix of every stream and bucket.
    pub subject_root: String,
    /// Token authentication.
    pub token: Option<Secret>,
    /// User for user/password authentication.
    pub user: Option<String>,
    /// Password for user/password authentication.
    pub password: Option<Secret>,
    /// NKey seed (`SU…`) for nkey authentication.
    pub nkey_seed: Option<Secret>,
    /// Credentials file (JWT plus nkey seed).
    pub creds_file: Option<PathBuf>,
    /// A folder of per-role nkey seeds (`<role>.nk`, as `bitinglip nats init` writes
    /// them): each role of a node connects as its own NATS user, and the CLI as `admin`.
    /// `bitinglip up` uses `<data_dir>/nats` when none of the other methods is set.
    pub credentials_dir: Option<PathBuf>,
    /// Require TLS.
    pub tls_required: bool,
    /// Extra root CA certificate (PEM).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM), for mutual TLS.
    pub tls_key_file: Option<PathBuf>,
    /// How long to wait for the first connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Default timeout of a request/reply on the bus.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How often each connection pings its server; after three unanswered it moves to
    /// another. A server cut off from the network closes no socket: this is how long,
    /// times four at most, a node stays stuck on it.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Start a local nats-server when none answers (only `bitinglip up` does by default).
    pub embedded: EmbeddedNatsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_string()],
            subject_root: "bitinglip".to_string(),
            token: None,
            user: None,
            password: None,
            nkey_seed: None,
            creds_file: None,
            credentials_dir: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(3),
            embedded: EmbeddedNatsConfig::default(),
        }
    }
}

/// The local nats-server that `bitinglip up` starts when no server answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedNatsConfig {
    /// The nats-server binary (a path, or a name looked up on `PATH`).
    pub binary: String,
    /// JetStream's fsync interval (`sync_interval`): `always` syncs every write (safe
    /// against power loss on a single node, slower); a duration such as `2m` is the
    /// server's default batching.
    pub sync: String,
    /// The most memory its JetStream may use, bytes (`max_memory_store`).
    pub max_memory: u64,
    /// The most disk its JetStream may use, bytes (`max_file_store`).
    pub max_file: u64,
}

impl Default for EmbeddedNatsConfig {
    fn default() -> Self {
        Self {
            binary: "nats-server".to_string(),
            sync: "always".to_string(),
            max_memory: 2 * 1024 * 1024 * 1024,
            max_file: 64 * 1024 * 1024 * 1024,
        }
    }
}

/// Streams and buckets, created idempotently at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// Replicas of every stream and bucket (1 on a single server, 3 in a cluster).
    pub replicas: usize,
    /// How long a worker may hold a task without an in-progress ack before it is redelivered.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Most delivery attempts of one task.
    pub max_deliver: i64,
    /// Window in which a resubmitted task id is recognised as a duplicate.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// How long task events are kept for replay.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// How long task status records are kept.
    #[serde(with = "humantime_serde")]
    pub tasks_max_age: Duration,
    /// Most bytes of task status records; when full, new tasks are refused (nothing
    /// accepted is dropped).
    pub tasks_max_bytes: i64,
    /// Most bytes of the Files API's files (batch inputs, outputs and errors); when full,
    /// uploads are refused.
    pub files_max_bytes: i64,
    /// Most bytes of stored Responses API answers with their conversations; when full, a
    /// response that should be stored fails.
    pub responses_max_bytes: i64,
    /// The JetStream domain of the servers' cluster (their `jetstream { domain }`), for a
    /// node that reaches it through a leaf node (an edge worker); none elsewhere.
    pub domain: Option<String>,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            dedupe_window: Duration::from_secs(120),
            events_max_age: Duration::from_secs(3600),
            tasks_max_age: Duration::from_secs(24 * 3600),
            tasks_max_bytes: 4 * 1024 * 1024 * 1024,
            files_max_bytes: 1024 * 1024 * 1024,
            responses_max_bytes: 1024 * 1024 * 1024,
            domain: None,
        }
    }
}

/// The HTTP gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listen address.
    pub http: String,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Longest a non-streamed request waits for its answer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most requests in progress at once; more get 503 with `Retry-After` at once.
    pub max_concurrent_requests: usize,
    /// Most requests and event streams one API key may have in progress at once on this
    /// gateway (a key's own `max_concurrent` overrides it); more get 429 at once.
    pub max_concurrent_per_key: u32,
    /// Most files one API key may keep in the Files API (uploads and batch outputs).
    pub max_files_per_key: u32,
    /// Most bytes of files one API key may keep.
    pub max_file_bytes_per_key: u64,
    /// Most batches one API key may have in progress at once.
    pub max_batches_per_key: u32,
    /// A batch that ended is removed this long after it ended, with its output and error
    /// files (its input file stays until its owner deletes it).
    #[serde(with = "humantime_serde")]
    pub batch_retention: Duration,
    /// Longest a client may take to send a request's headers; the connection is then
    /// closed (a client that trickles headers cannot hold connections).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body (408 after it). The body is read
    /// before the request takes one of the `max_concurrent_requests` slots.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// An SSE stream with no event for this long is closed (keep-alive comments do not
    /// count); a closed chat stream cancels its task, as a client that went away would.
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// Most open HTTP connections. At the cap, a new connection closes the connection
    /// that has been idle longest (silent since it opened, or between requests); when none
    /// is idle, the new one is closed.
    pub max_connections: usize,
    /// A connection with no request in progress for this long is closed (HTTP/1
    /// keep-alive and HTTP/2 alike). Before its first request, `header_timeout` applies.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive: a ping after this long without frames; a connection that does
    /// not answer within the same time is closed (a peer that vanished mid-stream).
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// An event stream whose client takes none of what was sent for this long (its
    /// buffers are full: it stopped reading) is closed, and a chat stream's task cancelled.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// An admin API key accepted besides those in the keys bucket, for automation that
    /// cannot run `bitinglip keys create` first (at least 32 characters; prefer the
    /// environment, `BITINGLIP_GATEWAY__ADMIN_KEY`, to a file). None by default: every
    /// key then comes from the bucket.
    pub admin_key: Option<Secret>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            http: "127.0.0.1:8080".to_string(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            max_concurrent_requests: 4096,
            max_concurrent_per_key: 1024,
            max_files_per_key: 500,
            max_file_bytes_per_key: 512 * 1024 * 1024,
            max_batches_per_key: 20,
            batch_retention: Duration::from_secs(30 * 24 * 3600),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(15),
            stream_idle_timeout: Duration::from_secs(15 * 60),
            max_connections: 8192,
            idle_timeout: Duration::from_secs(60),
            keep_alive_interval: Duration::from_secs(20),
            write_timeout: Duration::from_secs(30),
            admin_key: None,
        }
    }
}

/// How tasks are sent to a model's workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// `affinity` (default): a conversation's turns go to the worker that served the
    /// earlier ones while it has room (its engine's prefix cache holds their prompt);
    /// `shared`: every task goes to the model's shared queue, for whichever worker is free.
    pub mode: RoutingMode,
}

/// Where the task manager queues an interactive task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// Pinned to the worker that rendezvous hashing of its prompt-cache key picks among
    /// the model's ready workers with room; shared when none has room.
    #[default]
    Affinity,
    /// Always the shared queue.
    Shared,
}

/// The task manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskManagerConfig {
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: u32,
    /// `max_tokens` when the request gives none.
    pub default_max_tokens: u32,
    /// Most messages in one request.
    pub max_messages: usize,
    /// Most queued tasks per model and priority class; more get 429.
    pub queue_max_tasks: i64,
    /// Most bytes of queued tasks, all models together; more get 503.
    pub queue_max_bytes: i64,
    /// A model whose oldest queued task is older than this takes no more (429); 0 = off.
    #[serde(with = "humantime_serde")]
    pub queue_max_age: Duration,
    /// Limits of NATS client identities, by name (`default` is `client.nk`); `*` applies
    /// to every identity without an entry of its own. None: unlimited.
    pub client_limits: BTreeMap<String, ClientLimits>,
}

/// What one NATS client identity may spend, counted across the cluster as an API key's
/// limits are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientLimits {
    /// Submits per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt and completion) per minute.
    pub tpm: Option<u64>,
    /// Tokens per day (UTC).
    pub tokens_per_day: Option<u64>,
    /// Its weight in fair dispatch (1 to 1000; none: 1): a busy model serves tenants in
    /// proportion to their weights, and each client identity is a tenant.
    pub weight: Option<u32>,
}

impl Default for TaskManagerConfig {
    fn default() -> Self {
        Self {
            max_tokens_limit: 32768,
            default_max_tokens: 256,
            max_messages: 1024,
            queue_max_tasks: 10_000,
            queue_max_bytes: 1 << 30,
            queue_max_age: Duration::from_secs(600),
            client_limits: BTreeMap::new(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `bitinglip=debug,async_nats=warn`); `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        // The NATS client's connection chatter (each connect, every event) is for
        // debugging; a node's own log at `info` says what it does.
        Self { level: "info,async_nats=warn".to_string(), format: "text".to_string() }
    }
}

/// Where the layers come from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// A TOML file; it must exist when given.
    pub file: Option<PathBuf>,
    /// Environment variables (pass `std::env::vars()`; tests pass their own).
    pub env: BTreeMap<String, String>,
    /// Overrides from flags, as dotted keys (`gateway.http`) to TOML values.
    pub overrides: Vec<(String, OverrideValue)>,
}

/// A flag's value.
#[derive(Debug, Clone, PartialEq)]
pub enum OverrideValue {
    /// A string.
    Str(String),
    /// A list of strings.
    List(Vec<String>),
    /// A boolean.
    Bool(bool),
}

impl Config {
    /// Merges defaults, the file, the environment and the overrides, then validates.
    pub fn load(sources: Sources) -> Result<Config, ConfigError> {
        use config::{Environment, File, FileFormat};

        let defaults = config::Config::try_from(&Config::default()).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = &sources.file {
            if !path.is_file() {
                return Err(ConfigError::File { path: path.clone(), reason: "no such file".into() });
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::File { path: path.clone(), reason: e.to_string() })?;
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }
        let env: config::Map<String, String> =
            sources.env.into_iter().filter(|(k, _)| k.starts_with("BITINGLIP_") && k != "BITINGLIP_CONFIG").collect();
        builder = builder.add_source(
            Environment::with_prefix("BITINGLIP")
                .prefix_separator("_")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("roles")
                .with_list_parse_key("nats.servers")
                .try_parsing(true)
                .source(Some(env)),
        );
        for (key, value) in sources.overrides {
            builder = match value {
                OverrideValue::Str(s) => builder.set_override(key, s),
                OverrideValue::List(l) => builder.set_override(key, l),
                OverrideValue::Bool(b) => builder.set_override(key, b),
            }
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        let merged = builder.build().map_err(|e| ConfigError::Parse(e.to_string()))?;
        let config: Config = merged.try_deserialize().map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// True when this node runs `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[cfg(test)]
mod tests;
