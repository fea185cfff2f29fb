//! What the guide's commands show, read back: CLI tables, node status, chats.

use super::*;

/// The echo engine's pace in the test's deployment: a task of N words takes N/20 s.
pub(crate) const TOKENS_PER_SEC: u32 = 20;

/// `deployments ls`'s row of the model: replicas, placed and serving nodes (sorted).
pub(crate) fn deployment(out: &str) -> Option<(u32, Vec<String>, Vec<String>)> {
    let row: Vec<&str> = out.lines().find(|l| l.starts_with(MODEL))?.split_whitespace().collect();
    let nodes = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s.split(',').filter(|n| *n != "-").map(String::from).collect();
        v.sort();
        v
    };
    Some((row.get(3)?.parse().ok()?, nodes(row.get(4)?), nodes(row.get(5)?)))
}

pub(crate) fn nodes(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A table row the CLI printed whose first columns are `first`.
pub(crate) fn has_row(out: &str, first: &[&str]) -> bool {
    out.lines().any(|l| l.split_whitespace().take(first.len()).eq(first.iter().copied()))
}

/// `status --json`'s entry of `node`.
pub(crate) fn node_status(site: &Site, node: &str) -> Result<Value, String> {
    let out = site.sh("hostA", &site.guide.command(&format!("{CLI} status --json")))?;
    let all: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    all.as_array().and_then(|a| a.iter().find(|n| n["node_id"] == node).cloned()).ok_or(out)
}

/// Waits until `status` says the bus is fine with `nodes` nodes and `workers` workers, all
/// ready; its output.
pub(crate) fn wait_status(site: &mut Site, nodes: usize, workers: usize) -> String {
    let status = site.guide.command(&format!("{CLI} status"));
    let want = format!("JetStream ok · {nodes} node(s) · {workers}/{workers} worker(s) ready");
    site.wait(&format!("`status` says {want:?}"), WAIT, |s| {
        let out = s.sh("hostA", &status)?;
        if out.lines().next().is_some_and(|l| l.ends_with(&want)) {
            Ok(out)
        } else {
            Err(out)
        }
    })
}

/// Waits until `node` has started since `since_ms`, is healthy, and its workers are ready
/// (one at least when `worker`).
pub(crate) fn wait_node_back(site: &mut Site, node: &str, since_ms: u64, worker: bool) {
    site.wait(&format!("{node} back with health ok and its workers ready"), WAIT, |s| {
        let n = node_status(s, node)?;
        let workers = n["workers"].as_array().cloned().unwrap_or_default();
        let back = n["started_ms"].as_u64().is_some_and(|t| t >= since_ms)
            && n["health"] == "ok"
            && n["version"] == VERSION
            && workers.iter().all(|w| w["state"] == "ready")
            && (!worker || !workers.is_empty());
        if back {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
}

/// The admin API key of `node.env`.
pub(crate) fn admin_key(site: &Site) -> String {
    let env = fs::read_to_string(site.setup().join("node.env")).expect("node.env");
    env.lines().find_map(|l| l.strip_prefix("BITINGLIP_GATEWAY__ADMIN_KEY=")).expect("the admin key").to_string()
}

/// A chat through `via`'s gateway with the admin key of `node.env`: the answer's text.
pub(crate) fn chat(site: &Site, via: &str, content: &str) -> Result<String, String> {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    let url = format!("http://{}:8080/v1/chat/completions", site.ip(via));
    let headers = format!("-H 'content-type: application/json' -H 'Authorization: Bearer {}'", admin_key(site));
    let out = site.sh("hostA", &format!("curl -sS {url} {headers} -d '{body}'"))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    v["choices"][0]["message"]["content"].as_str().map(String::from).ok_or(out)
}

/// `stream`'s last sequence in `host`'s nats-server (its own copy), from `/jsz?streams=true`.
pub(crate) fn last_seq(site: &Site, host: &str, stream: &str) -> Result<u64, String> {
    let out = site.sh(host, "curl -fsS 'http://127.0.0.1:8222/jsz?streams=true'")?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    v["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
        .find(|s| s["name"] == stream)
        .and_then(|s| s["state"]["last_seq"].as_u64())
        .ok_or_else(|| format!("no {stream} on {host}"))
}

/// Whether the nats-server at `url` lets `seed` connect (over TLS trusting `ca`); `Err`
/// with the reason it refused.
pub(crate) fn nats_connect(url: &str, seed: &str, ca: PathBuf) -> Result<(), async_nats::ConnectErrorKind> {
    bitinglip_nats::ensure_tls_provider();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    rt.block_on(async {
        let opts = async_nats::ConnectOptions::with_nkey(seed.trim().to_string())
            .add_root_certificates(ca)
            .require_tls(true)
            .connection_timeout(Duration::from_secs(5));
        match tokio::time::timeout(Duration::from_secs(10), opts.connect(url)).await {
            Ok(Ok(client)) => {
                drop(client);
                Ok(())
            }
            Ok(Err(e)) => Err(e.kind()),
            Err(_) => Err(async_nats::ConnectErrorKind::TimedOut),
        }
    })
}
