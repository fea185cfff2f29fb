//! A flood: ten times more concurrent streamed chats than a model's queue admits, all at
//! once, over HTTP. What it measures is how fast the ones that do not fit are refused
//! (429), and that every accepted one still gets its whole answer.
//!
//! It runs on the benchmark's nats-server under a subject root of its own, so its tasks
//! stream has its own limit (the queue admits `ADMITTED` tasks, running ones included)
//! and nothing of the main measurements is in its way.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bitinglip_bus_schema::Subjects;
use bitinglip_config::{EngineKind, ModelConfig, Role};
use bitinglip_nats::Bus;

use super::{
    node_config,
    platform::{self, InProcessNode},
    stats::Samples,
};

/// Tasks the flooded model's queue admits (waiting and running together).
const ADMITTED: usize = 40;
/// Slots of its one replica: the rest of the admitted tasks wait.
const SLOTS: u32 = 8;
/// How fast its echo engine answers, tokens per second per sequence: slow enough that
/// the queue stays full while the flood arrives.
const TOKENS_PER_SEC: f64 = 100.0;
/// Words in each prompt (the echo engine answers with them, one token each).
const WORDS: usize = 20;

/// What the flood measured.
pub(crate) struct Flood {
    /// Requests sent at once.
    pub(crate) requests: usize,
    /// What the queue admits.
    pub(crate) admitted: usize,
    /// Time from sending to the 429, per refused request.
    pub(crate) refused: Samples,
    /// Answers streamed to `[DONE]`.
    pub(crate) completed: usize,
    /// Of those, answers whose text is exactly the echo of the prompt.
    pub(crate) exact: usize,
    /// Anything else (another status, a broken stream).
    pub(crate) other: usize,
}

impl Flood {
    pub(crate) fn title(&self) -> String {
        format!(
            "Refusals under a {}× flood: {} streamed chats at once against a model whose queue admits {}",
            self.requests / self.admitted.max(1),
            self.requests,
            self.admitted
        )
    }

    pub(crate) fn table(&self) -> String {
        format!(
            "| refused (429) | refusal p50 ms | refusal p99 ms | refusal max ms | answered in full | of them exact | other |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n| {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            self.refused.secs.len(),
            self.refused.p50(),
            self.refused.p99(),
            self.refused.percentile_ms(100.0),
            self.completed,
            self.exact,
            self.other
        )
    }
}

/// One streamed chat: `Ok(None)` when refused with 429 (after how long, in `refused_after`),
/// `Ok(Some(text))` with the streamed text when answered to `[DONE]`.
async fn one(http: &reqwest::Client, base: &str, prompt: &str) -> Result<Result<String, f64>, String> {
    let started = Instant::now();
    let body = serde_json::json!({
        "model": "flood-echo",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
        "stream": true,
    });
    let mut resp =
        http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.map_err(|e| e.to_string())?;
    if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Ok(Err(started.elapsed().as_secs_f64()));
    }
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let mut text = String::new();
    let mut buf = String::new();
    while let Some(bytes) = resp.chunk().await.map_err(|e| e.to_string())? {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                return Ok(Ok(text));
            }
            let chunk: serde_json::Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
            if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                text.push_str(piece);
            }
        }
    }
    Err("the stream ended before [DONE]".into())
}

/// Floods a fresh model of its own and measures the refusals.
pub(crate) async fn run(url: &str, factor: usize) -> anyhow::Result<Flood> {
    let root = "benchflood";
    let mut echo = ModelConfig::new("flood-echo");
    echo.engine = EngineKind::Echo;
    echo.max_sequences = SLOTS;
    echo.echo_tokens_per_sec = TOKENS_PER_SEC;
    let mut config = node_config(url, "bench-flood", Role::ALL.to_vec(), vec![echo]);
    config.nats.subject_root = root.into();
    config.task_manager.queue_max_tasks = ADMITTED as i64;
    // Its streams and buckets beside the main run's on the same server: small ones, so
    // their reservations fit the server's storage together.
    config.task_manager.queue_max_bytes = 64 << 20;
    config.jetstream.tasks_max_bytes = 64 << 20;
    config.jetstream.files_max_bytes = 16 << 20;
    config.jetstream.responses_max_bytes = 16 << 20;
    let node = InProcessNode::start(config.clone()).await?;
    let base = node.http.clone().context("the flood node's gateway")?;

    let client = bitinglip_nats::connect(&config.nats, "bitinglip-bench-flood", None).await?;
    let bus = Bus::new(client, Subjects::new(root)?, "bench-flood-client", Duration::from_secs(30));
    let store = bitinglip_nats::Store::open(&bus, &config).await?;
    platform::wait_ready(&platform::Client { bus, store }, "flood-echo", Duration::from_secs(60)).await?;

    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", platform::bench_admin_key()).parse()?);
    let http = reqwest::Client::builder().pool_max_idle_per_host(1024).default_headers(auth).build()?;
    let prompt = (0..WORDS).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let requests = ADMITTED * factor;
    // Every connection opened first, so the flood arrives at once rather than at the pace
    // of TCP handshakes.
    let warm: Vec<_> = (0..requests.min(256))
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            async move { http.get(format!("{base}/health")).send().await.map(|_| ()) }
        })
        .collect();
    futures::future::join_all(warm).await;

    let all: Vec<_> = (0..requests)
        .map(|_| {
            let (http, base, prompt) = (http.clone(), base.clone(), prompt.clone());
            tokio::spawn(async move { one(&http, &base, &prompt).await })
        })
        .collect();
    let mut flood =
        Flood { requests, admitted: ADMITTED, refused: Samples::default(), completed: 0, exact: 0, other: 0 };
    let began = Instant::now();
    for handle in all {
        match handle.await {
            Ok(Ok(Err(after))) => flood.refused.secs.push(after),
            Ok(Ok(Ok(text))) => {
                flood.completed += 1;
                let words: Vec<&str> = text.split_whitespace().collect();
                if words.join(" ") == prompt {
                    flood.exact += 1;
                }
            }
            Ok(Err(err)) => {
                eprintln!("bench: flood: {err}");
                flood.other += 1;
            }
            Err(_) => flood.other += 1,
        }
    }
    flood.refused.wall = began.elapsed();
    node.stop().await;
    Ok(flood)
}
