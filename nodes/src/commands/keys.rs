//! `bitinglip keys …`: API keys, read and written in the keys bucket over NATS (as an
//! admin of the bus; the HTTP gateway's `/api/v1/keys` does the same for admin keys).

use anyhow::bail;
use bitinglip_actors::ops::keys::{check_day, key_view, new_key, usage_page, with_share};
use bitinglip_config::Config;
use bitinglip_nats::Store;

use crate::cli::KeysCommand;

/// An expiry relative to `now`: `in 29days 23h`, `2h ago`, or `never`.
fn when(at_ms: Option<u64>, now: u64) -> String {
    let Some(at) = at_ms else { return "never".into() };
    let secs = |ms: u64| std::time::Duration::from_secs(ms / 1000);
    if at >= now {
        format!("in {}", humantime::format_duration(secs(at - now)))
    } else {
        format!("{} ago", humantime::format_duration(secs(now - at)))
    }
}

pub(super) async fn run(config: Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let bus = super::client_bus(&config).await?;
    let store = Store::open(&bus, &config).await?;
    match cmd {
        KeysCommand::Create {
            name,
            scope,
            models,
            expires,
            rpm,
            tpm,
            tokens_per_day,
            max_concurrent,
            tenant,
            weight,
            json,
        } => {
            let limits = bitinglip_bus_schema::KeyLimits { rpm, tpm, tokens_per_day, max_concurrent };
            let new = new_key(&name, &scope, &models, expires.as_deref(), limits, bitinglip_nats::now_ms())
                .and_then(|k| with_share(k, tenant.as_deref(), weight))
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let (key, secret) = store.keys().create(new).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&key_view(&key, Some(&secret)))?);
            } else {
                println!("{secret}");
                eprintln!(
                    "key {} ({}, {}) created; the secret above is shown once and stored nowhere",
                    key.id,
                    key.name,
                    key.scope.as_str()
                );
            }
        }
        KeysCommand::Ls { json } => {
            let keys = store.keys().list().await?;
            if json {
                let v: Vec<_> = keys.iter().map(|k| key_view(k, None)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let now = bitinglip_nats::now_ms();
            let mut rows = vec![["ID", "NAME", "SCOPE", "MODELS", "TENANT", "WEIGHT", "EXPIRES", "STATE"]
                .map(String::from)
                .to_vec()];
            for k in &keys {
                let state = if k.revoked_ms.is_some() {
                    "revoked"
                } else if k.active(now) {
                    "active"
                } else {
                    "expired"
                };
                let models = if k.models.is_empty() { "*".to_string() } else { k.models.join(",") };
                rows.push(vec![
                    k.id.clone(),
                    k.name.clone(),
                    k.scope.as_str().into(),
                    models,
                    k.tenant().to_string(),
                    k.weight().to_string(),
                    when(k.expires_ms, now),
                    state.into(),
                ]);
            }
            super::print_table(&rows);
        }
        KeysCommand::Revoke { id } => match store.keys().revoke(&id).await? {
            Some(k) => println!("key {} ({}) revoked", k.id, k.name),
            None => bail!("no API key {id}"),
        },
    }
    Ok(())
}

/// `bitinglip usage`.
pub(super) async fn usage(
    config: Config,
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    for (field, day) in [("--from", &from), ("--to", &to)] {
        check_day(field, day.as_deref()).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    let bus = super::client_bus(&config).await?;
    let store = Store::open(&bus, &config).await?;
    let rows = store.counters().usage(key.as_deref(), from.as_deref(), to.as_deref()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&usage_page(&rows).data)?);
        return Ok(());
    }
    let mut table = vec![["DAY", "KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION"].map(String::from).to_vec()];
    for r in &rows {
        table.push(vec![
            r.day.clone(),
            r.key.clone(),
            r.model.clone(),
            r.requests.to_string(),
            r.prompt_tokens.to_string(),
            r.completion_tokens.to_string(),
        ]);
    }
    super::print_table(&table);
    Ok(())
}
