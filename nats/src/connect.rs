//! Connecting to NATS from config: server list, auth, TLS, and reconnects that keep every
//! subscription (async-nats resubscribes by itself after a reconnect).

use bitinglip_config::NatsConfig;

use crate::{permissions::NatsRole, ConnectError};

/// Chooses rustls's ring provider for this process unless one is chosen already: with
/// several providers compiled in (the dependency tree brings more than one), rustls will
/// not pick one by itself and a TLS connection would panic.
pub fn ensure_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// True when credentials would reach a server on another machine without TLS.
pub(crate) fn credentials_in_the_clear(cfg: &NatsConfig) -> bool {
    !cfg.tls_required && !cfg.servers.iter().all(|s| loopback(s) || s.starts_with("tls://"))
}

/// True when `url` names this machine.
fn loopback(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.rsplit('@').next().unwrap_or(rest);
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| host.starts_with(h))
}

/// Connects with every option of `cfg`. `name` shows up in the server's connection list.
/// `reconnected`, when given, is notified on every connection after the first, so the
/// caller can provision again (a restarted server may have lost memory-stored streams).
pub async fn connect(
    cfg: &NatsConfig,
    name: &str,
    reconnected: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> Result<async_nats::Client, ConnectError> {
    connect_as(cfg, NatsRole::Admin, name, reconnected).await
}

/// Connects as `role`: with `nats.credentials_dir`, as that role's NATS user (its nkey
/// seed, its inbox prefix; a worker node's own identity, `worker-<node id>.nk`, when the
/// folder has one); otherwise as [`connect`] does.
pub async fn connect_as(
    cfg: &NatsConfig,
    role: NatsRole,
    name: &str,
    reconnected: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> Result<async_nats::Client, ConnectError> {
    connect_node(cfg, role, "", name, reconnected).await
}

/// [`connect_as`] for node `node_id`.
pub async fn connect_node(
    cfg: &NatsConfig,
    role: NatsRole,
    node_id: &str,
    name: &str,
    reconnected: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> Result<async_nats::Client, ConnectError> {
    ensure_tls_provider();
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(cfg.connect_timeout)
        .request_timeout(Some(cfg.request_timeout))
        .ping_interval(cfg.ping_interval)
        // A node outlives any server restart: reconnect forever, with the client's backoff.
        .max_reconnects(None)
        .event_callback(move |event| {
            let first = first.clone();
            let reconnected = reconnected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!("nats connected");
                        if !first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                            if let Some(n) = &reconnected {
                                n.notify_one();
                            }
                        }
                    }
                    async_nats::Event::Disconnected => tracing::warn!("nats disconnected; reconnecting"),
                    other => tracing::debug!(event = %other, "nats event"),
                }
            }
        });
    if let Some(token) = &cfg.token {
        opts = opts.token(token.expose().to_string());
    }
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(seed) = &cfg.nkey_seed {
        opts = opts.nkey(seed.expose().to_string());
    }
    if let Some(dir) = &cfg.credentials_dir {
        let path = crate::permissions::seed_for(dir, role, node_id);
        let seed = std::fs::read_to_string(&path)
            .map_err(|source| ConnectError::Credentials { path: path.display().to_string(), source })?;
        opts = opts.nkey(seed.trim().to_string()).custom_inbox_prefix(role.inbox_prefix());
        if credentials_in_the_clear(cfg) {
            tracing::warn!("NATS credentials go over plaintext to a server that is not on this machine: set nats.tls_required (and tls:// URLs)");
        }
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials { path: path.display().to_string(), source })?;
    }
    if cfg.tls_required {
        opts = opts.require_tls(true);
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert_file, &cfg.tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = cfg.servers.iter().filter_map(|s| s.parse().ok()).collect();
    opts.connect(servers)
        .await
        .map_err(|source| ConnectError::Connect { servers: bitinglip_config::redact_urls(&cfg.servers), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_clear_only_to_another_machine_without_tls() {
        let cfg = |servers: &[&str], tls: bool| NatsConfig {
            servers: servers.iter().map(|s| s.to_string()).collect(),
            tls_required: tls,
            ..NatsConfig::default()
        };
        assert!(!credentials_in_the_clear(&cfg(&["nats://127.0.0.1:4222", "nats://localhost:4223"], false)));
        assert!(credentials_in_the_clear(&cfg(&["nats://10.0.0.5:4222"], false)));
        assert!(credentials_in_the_clear(&cfg(&["nats://127.0.0.1:4222", "nats://nats-2:4222"], false)));
        assert!(!credentials_in_the_clear(&cfg(&["tls://10.0.0.5:4222"], false)));
        assert!(!credentials_in_the_clear(&cfg(&["nats://10.0.0.5:4222"], true)));
    }
}
