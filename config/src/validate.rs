//! Validation of a merged [`Config`](crate::Config): every check names its key.

use std::path::PathBuf;

use crate::{Config, Role};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A layer does not parse, or a value has the wrong type or an unknown key.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A key has a value outside what it allows.
    #[error("invalid value for `{key}`: {value:?}: {reason}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// The bad value.
        value: String,
        /// What it allows.
        reason: String,
    },
}

fn invalid(key: &str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), value: value.to_string(), reason: reason.to_string() }
}

impl Config {
    /// Checks every key; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.node_id.is_empty() && !self.node_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid("node_id", &self.node_id, "use letters, digits, '-' and '_'"));
        }
        if self.roles.is_empty() {
            return Err(invalid("roles", "[]", "name at least one role"));
        }
        let n = &self.nats;
        if n.servers.is_empty() {
            return Err(invalid("nats.servers", "[]", "name at least one server URL"));
        }
        for s in &n.servers {
            let shown = crate::redact_url(s);
            let parsed =
                url::Url::parse(s).map_err(|e| invalid("nats.servers", &shown, &format!("not a URL ({e})")))?;
            if !matches!(parsed.scheme(), "nats" | "tls" | "ws" | "wss") {
                return Err(invalid("nats.servers", &shown, "scheme must be nats://, tls://, ws:// or wss://"));
            }
            if parsed.host_str().is_none_or(|h| h.is_empty()) {
                return Err(invalid("nats.servers", &shown, "no host"));
            }
        }
        if bitinglip_subject_root_invalid(&n.subject_root) {
            return Err(invalid(
                "nats.subject_root",
                &n.subject_root,
                "use dot-separated tokens of letters, digits, '-' and '_'",
            ));
        }
        if n.user.is_some() != n.password.is_some() {
            return Err(invalid("nats.user", n.user.clone().unwrap_or_default(), "user and password go together"));
        }
        let methods = [
            n.token.is_some(),
            n.user.is_some(),
            n.nkey_seed.is_some(),
            n.creds_file.is_some(),
            n.credentials_dir.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(invalid(
                "nats",
                "several",
                "choose one of token, user/password, nkey_seed, creds_file, credentials_dir",
            ));
        }
        if let Some(seed) = &n.nkey_seed {
            if !seed.expose().starts_with("SU") {
                return Err(invalid("nats.nkey_seed", "<redacted>", "a user nkey seed starts with SU"));
            }
        }
        for (key, file) in [
            ("nats.creds_file", &n.creds_file),
            ("nats.tls_ca_file", &n.tls_ca_file),
            ("nats.tls_cert_file", &n.tls_cert_file),
            ("nats.tls_key_file", &n.tls_key_file),
        ] {
            if let Some(f) = file {
                if !f.is_file() {
                    return Err(invalid(key, f.display(), "no such file"));
                }
            }
        }
        if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
            return Err(invalid("nats.tls_cert_file", "", "tls_cert_file and tls_key_file go together"));
        }
        if n.connect_timeout.is_zero() {
            return Err(invalid("nats.connect_timeout", "0s", "must be above zero"));
        }
        if n.ping_interval < std::time::Duration::from_millis(100) {
            return Err(invalid("nats.ping_interval", format!("{:?}", n.ping_interval), "must be at least 100ms"));
        }
        if n.request_timeout.is_zero() {
            return Err(invalid("nats.request_timeout", "0s", "must be above zero"));
        }
        const GIB: u64 = 1024 * 1024 * 1024;
        if n.embedded.max_memory < GIB {
            return Err(invalid(
                "nats.embedded.max_memory",
                n.embedded.max_memory,
                "must be at least 1 GiB (1073741824)",
            ));
        }
        if n.embedded.max_file < GIB {
            return Err(invalid("nats.embedded.max_file", n.embedded.max_file, "must be at least 1 GiB (1073741824)"));
        }
        if n.embedded.sync != "always" && humantime::parse_duration(&n.embedded.sync).is_err() {
            return Err(invalid("nats.embedded.sync", &n.embedded.sync, "`always` or a duration such as `2m`"));
        }
        let js = &self.jetstream;
        if !matches!(js.replicas, 1..=5) {
            return Err(invalid("jetstream.replicas", js.replicas, "must be 1 to 5"));
        }
        if js.ack_wait < std::time::Duration::from_secs(1) {
            return Err(invalid("jetstream.ack_wait", format!("{:?}", js.ack_wait), "must be at least 1s"));
        }
        if js.max_deliver < 1 {
            return Err(invalid("jetstream.max_deliver", js.max_deliver, "must be at least 1"));
        }
        if let Some(d) = &js.domain {
            if d.is_empty() || !d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(invalid(
                    "jetstream.domain",
                    d,
                    "must be letters, digits, `_` or `-` (a nats-server JetStream domain)",
                ));
            }
        }
        if js.responses_max_bytes < 1024 * 1024 {
            return Err(invalid(
                "jetstream.responses_max_bytes",
                js.responses_max_bytes,
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if js.files_max_bytes < 1024 * 1024 {
            return Err(invalid("jetstream.files_max_bytes", js.files_max_bytes, "must be at least 1048576 (1 MiB)"));
        }
        if js.tasks_max_bytes < 1024 * 1024 {
            return Err(invalid("jetstream.tasks_max_bytes", js.tasks_max_bytes, "must be at least 1048576 (1 MiB)"));
        }
        for (key, d) in [
            ("jetstream.dedupe_window", js.dedupe_window),
            ("jetstream.events_max_age", js.events_max_age),
            ("jetstream.tasks_max_age", js.tasks_max_age),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "0s", "must be above zero"));
            }
        }
        if self.has_role(Role::Gateway) {
            self.gateway
                .http
                .parse::<std::net::SocketAddr>()
                .map_err(|_| invalid("gateway.http", &self.gateway.http, "an address such as 127.0.0.1:8080"))?;
        }
        if self.gateway.admin_key.as_ref().is_some_and(|k| k.expose().trim().len() < 32) {
            return Err(invalid("gateway.admin_key", "<redacted>", "must be at least 32 characters"));
        }
        for (key, d) in [
            ("gateway.header_timeout", self.gateway.header_timeout),
            ("gateway.body_timeout", self.gateway.body_timeout),
            ("gateway.stream_idle_timeout", self.gateway.stream_idle_timeout),
            ("gateway.idle_timeout", self.gateway.idle_timeout),
            ("gateway.keep_alive_interval", self.gateway.keep_alive_interval),
            ("gateway.write_timeout", self.gateway.write_timeout),
            ("gateway.batch_retention", self.gateway.batch_retention),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "0s", "must be above zero"));
            }
        }
        if self.gateway.max_body_bytes < 1024 {
            return Err(invalid("gateway.max_body_bytes", self.gateway.max_body_bytes, "must be at least 1024"));
        }
        let tm = &self.task_manager;
        if tm.default_max_tokens == 0 || tm.default_max_tokens > tm.max_tokens_limit {
            return Err(invalid(
                "task_manager.default_max_tokens",
                tm.default_max_tokens,
                "must be from 1 to task_manager.max_tokens_limit",
            ));
        }
        if tm.queue_max_tasks < 1 {
            return Err(invalid("task_manager.queue_max_tasks", tm.queue_max_tasks, "must be at least 1"));
        }
        if tm.queue_max_bytes < 1024 {
            return Err(invalid("task_manager.queue_max_bytes", tm.queue_max_bytes, "must be at least 1024"));
        }
        for (name, limits) in &tm.client_limits {
            let named = name == "*"
                || (!name.is_empty()
                    && name.len() <= 64
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if !named {
                return Err(invalid(
                    "task_manager.client_limits",
                    name,
                    "keys are client identity names (1 to 64 letters, digits and '_') or \"*\"",
                ));
            }
            if let Some(w) = limits.weight.filter(|w| !(1..=1000).contains(w)) {
                return Err(invalid(&format!("task_manager.client_limits.{name}.weight"), w, "must be 1 to 1000"));
            }
            let zero = limits.rpm == Some(0) || limits.tpm == Some(0) || limits.tokens_per_day == Some(0);
            if zero {
                return Err(invalid(
                    &format!("task_manager.client_limits.{name}"),
                    0,
                    "a limit must be at least 1 (leave it out for none)",
                ));
            }
        }
        for (key, value) in [
            ("gateway.max_concurrent_per_key", u64::from(self.gateway.max_concurrent_per_key)),
            ("gateway.max_files_per_key", u64::from(self.gateway.max_files_per_key)),
            ("gateway.max_file_bytes_per_key", self.gateway.max_file_bytes_per_key),
            ("gateway.max_batches_per_key", u64::from(self.gateway.max_batches_per_key)),
        ] {
            if value == 0 {
                return Err(invalid(key, 0, "must be at least 1"));
            }
        }
        if self.gateway.max_connections < 2 {
            return Err(invalid("gateway.max_connections", self.gateway.max_connections, "must be at least 2"));
        }
        self.validate_hub()?;
        if self.gateway.max_concurrent_requests == 0 {
            return Err(invalid("gateway.max_concurrent_requests", 0, "must be at least 1"));
        }
        if self.roles.contains(&Role::Unknown) {
            return Err(invalid(
                "roles",
                "an unknown role",
                "use gateway, task-manager, model-manager, cluster-manager or worker",
            ));
        }
        for (i, m) in self.worker.models.iter().enumerate() {
            let key = |k: &str| format!("worker.models[{i}].{k}");
            if m.engine == crate::EngineKind::Unknown {
                return Err(invalid(&key("engine"), "an unknown engine", "`mistralrs` or `echo`"));
            }
            if m.source.trim().is_empty() {
                return Err(invalid(&key("source"), &m.source, "a Hugging Face id or a local folder"));
            }
            let looks_like_path = m.source.starts_with('/')
                || m.source.starts_with("./")
                || m.source.starts_with("../")
                || m.source.starts_with('~');
            if looks_like_path && !std::path::Path::new(&m.source).is_dir() {
                return Err(invalid(&key("source"), &m.source, "no such folder"));
            }
            if !(1..=bitinglip_bus_schema::MAX_SEQUENCES).contains(&m.max_sequences) {
                return Err(invalid(&key("max_sequences"), m.max_sequences, "must be 1 to 256"));
            }
            if !(m.echo_tokens_per_sec >= 0.0 && m.echo_tokens_per_sec.is_finite()) {
                return Err(invalid(&key("echo_tokens_per_sec"), m.echo_tokens_per_sec, "must be 0 or above"));
            }
            if m.context_length == Some(0) {
                return Err(invalid(&key("context_length"), 0, "must be 1 or more tokens"));
            }
            if m.gpus.len() > 64 || m.gpus.iter().any(|g| *g >= 64) {
                return Err(invalid(&key("gpus"), format!("{:?}", m.gpus), "at most 64 CUDA ordinals below 64"));
            }
        }
        let c = &self.cluster;
        if c.reconcile_interval < std::time::Duration::from_millis(100) {
            return Err(invalid(
                "cluster.reconcile_interval",
                format!("{:?}", c.reconcile_interval),
                "must be at least 100ms",
            ));
        }
        if c.autoscale_interval < std::time::Duration::from_millis(100) {
            return Err(invalid(
                "cluster.autoscale_interval",
                format!("{:?}", c.autoscale_interval),
                "must be at least 100ms",
            ));
        }
        for (i, d) in c.deployments.iter().enumerate() {
            let key = |k: &str| format!("cluster.deployments[{i}].{k}");
            if d.engine == crate::EngineKind::Unknown {
                return Err(invalid(&key("engine"), "an unknown engine", "`mistralrs` or `echo`"));
            }
            if d.source.trim().is_empty() {
                return Err(invalid(&key("source"), &d.source, "a Hugging Face id or a folder on the serving nodes"));
            }
            if !(1..=bitinglip_bus_schema::MAX_SEQUENCES).contains(&d.max_sequences) {
                return Err(invalid(&key("max_sequences"), d.max_sequences, "must be 1 to 256"));
            }
            if d.replicas > 1000 {
                return Err(invalid(&key("replicas"), d.replicas, "must be at most 1000"));
            }
            if let Some(dev) = &d.device {
                if !matches!(dev.as_str(), "cpu" | "cuda" | "metal") {
                    return Err(invalid(&key("device"), dev, "`cpu`, `cuda` or `metal`"));
                }
            }
            if !(d.echo_tokens_per_sec >= 0.0 && d.echo_tokens_per_sec.is_finite()) {
                return Err(invalid(&key("echo_tokens_per_sec"), d.echo_tokens_per_sec, "must be 0 or above"));
            }
            if d.context_length == Some(0) {
                return Err(invalid(&key("context_length"), 0, "must be 1 or more tokens"));
            }
        }
        if c.heartbeat_interval.is_zero() {
            return Err(invalid("cluster.heartbeat_interval", "0s", "must be above zero"));
        }
        if c.node_ttl <= c.heartbeat_interval {
            return Err(invalid(
                "cluster.node_ttl",
                format!("{:?}", c.node_ttl),
                "must be longer than cluster.heartbeat_interval",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", &self.log.format, "`text` or `json`"));
        }
        self.validate_observability()
    }

    fn validate_hub(&self) -> Result<(), ConfigError> {
        let h = &self.hub;
        if let Some(endpoint) = &h.endpoint {
            let parsed = url::Url::parse(endpoint)
                .map_err(|e| invalid("hub.endpoint", endpoint, &format!("not a URL ({e})")))?;
            match parsed.scheme() {
                "https" => {}
                "http" if h.allow_http => {}
                "http" => {
                    return Err(invalid(
                        "hub.endpoint",
                        endpoint,
                        "an http:// hub is refused: set hub.allow_http = true for a mirror on a trusted network",
                    ))
                }
                _ => return Err(invalid("hub.endpoint", endpoint, "scheme must be https:// (or http://)")),
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("hub.endpoint", endpoint, "no host"));
            }
        }
        if h.chunk_size == Some(0) {
            return Err(invalid("hub.chunk_size", 0, "must be at least 1"));
        }
        if h.parallel_chunks == Some(0) {
            return Err(invalid("hub.parallel_chunks", 0, "must be at least 1"));
        }
        if h.max_pull_bytes == Some(0) {
            return Err(invalid("hub.max_pull_bytes", 0, "must be at least 1"));
        }
        Ok(())
    }

    fn validate_observability(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            let ok = url::Url::parse(endpoint).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    endpoint,
                    "an http(s) URL such as http://127.0.0.1:4318",
                ));
            }
        }
        if self.telemetry.export_interval.is_zero() {
            return Err(invalid("telemetry.export_interval", "0s", "must be above zero"));
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid("metrics.listen", listen, "an address such as 0.0.0.0:9464"));
            }
        }
        Ok(())
    }
}

fn bitinglip_subject_root_invalid(root: &str) -> bool {
    root.is_empty()
        || !root
            .split('.')
            .all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}
