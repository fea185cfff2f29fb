//! The fairness benchmark's clients: a key per tenant, streamed chats over HTTP, and a
//! tenant's load (a backlog kept in flight, or a fixed rate).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitinglip_actors::ops::keys::{new_key, with_share};
use bitinglip_bus_schema::KeyLimits;
use bitinglip_nats::Store;

use super::{Load, Request, REQUEST_TIMEOUT};

/// The HTTP side: the gateway and a client of it.
pub(super) struct Driver {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) body: serde_json::Value,
}

/// A key of its own for `tenant` at `weight`, as `keys create --tenant --weight` makes one.
pub(super) async fn tenant_key(store: &Store, tenant: &str, weight: u32) -> anyhow::Result<String> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let name = format!("bench fairness {tenant}");
    let new = new_key(&name, "inference", &[], None, KeyLimits::default(), now_ms)?;
    let (_, secret) = store.keys().create(with_share(new, Some(tenant), Some(weight))?).await?;
    Ok(secret)
}

/// One streamed chat with `key`; `None` when refused, broken or without usage.
async fn one(driver: &Driver, key: &str, epoch: Instant) -> Option<Request> {
    let sent = epoch.elapsed().as_secs_f64();
    let url = format!("{}/v1/chat/completions", driver.base);
    let mut resp = driver.http.post(url).bearer_auth(key).json(&driver.body).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let (mut first, mut usage, mut buf) = (None, None, String::new());
    while let Some(bytes) = resp.chunk().await.ok()? {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                let done = epoch.elapsed().as_secs_f64();
                let (prompt, completion) = usage?;
                return Some(Request { sent, first: first.unwrap_or(done), done, prompt, completion });
            }
            let chunk: serde_json::Value = serde_json::from_str(data).ok()?;
            if chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
                first.get_or_insert_with(|| epoch.elapsed().as_secs_f64());
            }
            let tokens = |field: &str| chunk["usage"][field].as_u64().map(|n| n as u32);
            if let (Some(p), Some(c)) = (tokens("prompt_tokens"), tokens("completion_tokens")) {
                usage = Some((p, c));
            }
        }
    }
    None
}

/// One tenant's load until `until` seconds after `epoch`; what came back, and the failures.
/// Requests sent before `until` are awaited, so the worker is idle when it returns.
pub(super) async fn drive(
    driver: &std::sync::Arc<Driver>,
    key: String,
    load: Load,
    epoch: Instant,
    until: f64,
) -> (Vec<Request>, usize) {
    let mut handles = Vec::new();
    match load {
        Load::Backlog(n) => {
            for _ in 0..n {
                let (driver, key) = (driver.clone(), key.clone());
                handles.push(tokio::spawn(async move {
                    let (mut got, mut failed) = (Vec::new(), 0);
                    while epoch.elapsed().as_secs_f64() < until {
                        match tokio::time::timeout(REQUEST_TIMEOUT, one(&driver, &key, epoch)).await {
                            Ok(Some(r)) => got.push(r),
                            _ => {
                                failed += 1;
                                // No tight loop against a gateway that refuses.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    (got, failed)
                }));
            }
        }
        Load::Rate(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            loop {
                tick.tick().await;
                if epoch.elapsed().as_secs_f64() >= until {
                    break;
                }
                let (driver, key) = (driver.clone(), key.clone());
                handles.push(tokio::spawn(async move {
                    match tokio::time::timeout(REQUEST_TIMEOUT, one(&driver, &key, epoch)).await {
                        Ok(Some(r)) => (vec![r], 0),
                        _ => (Vec::new(), 1),
                    }
                }));
            }
        }
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for h in handles {
        match h.await {
            Ok((got, f)) => {
                all.extend(got);
                failed += f;
            }
            Err(_) => failed += 1,
        }
    }
    (all, failed)
}
