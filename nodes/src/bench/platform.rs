//! The platform under load: a node started in this process (every role, on the
//! benchmark's nats-server), driven over NATS with the same client code as the CLI and
//! over HTTP with the gateway's OpenAI API, as real clients would.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bitinglip_actors::Node;
use bitinglip_bus_schema::{ChatParams, SubmitRequest, TaskId};
use bitinglip_client::{Relayed, TaskWatch};
use bitinglip_config::Config;
use bitinglip_nats::{Bus, Store};

use super::stats::{closed_loop, Samples};

/// A node running in this process, started as production starts one ([`Node::start`]:
/// its connections, JetStream, reprovision on reconnect, the actors).
pub(crate) struct InProcessNode {
    node: Node,
    /// Its gateway, when it runs one.
    pub(crate) http: Option<String>,
}

impl InProcessNode {
    /// Starts a node with `config`'s roles.
    pub(crate) async fn start(config: Config) -> anyhow::Result<Self> {
        let node = Node::start(config).await?;
        let http = node.http_addr().map(|a| format!("http://{a}"));
        Ok(Self { node, http })
    }

    /// Stops it the way a signal would.
    pub(crate) async fn stop(self) {
        self.node.stop().await;
    }
}

pub(crate) fn chat(model: &str, prompt: &str, max_tokens: u32) -> ChatParams {
    ChatParams { max_tokens: Some(max_tokens), temperature: Some(0.0), ..ChatParams::user(model, prompt) }
}

/// A client of the cluster over NATS: the bus, and the storage layer its task watches
/// read events back from.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) bus: Bus,
    pub(crate) store: Store,
}

impl std::ops::Deref for Client {
    type Target = Bus;

    fn deref(&self) -> &Bus {
        &self.bus
    }
}

/// What one request over NATS saw, in seconds from the start: the task manager's
/// `accepted`, the first chunk, completion; and the tokens generated.
pub(crate) struct NatsTimes {
    pub(crate) accepted: f64,
    pub(crate) first: f64,
    pub(crate) done: f64,
    pub(crate) tokens: u32,
}

/// One chat request over NATS, as the CLI makes it.
pub(crate) async fn nats_request(bus: &Client, chat: ChatParams) -> Option<NatsTimes> {
    nats_task(bus, chat).await.ok().map(|(times, _, _)| times)
}

/// One chat request over NATS: its times, how it ended, and its id.
pub(crate) async fn nats_task(
    bus: &Client,
    chat: ChatParams,
) -> anyhow::Result<(NatsTimes, bitinglip_bus_schema::TaskCompleted, TaskId)> {
    let started = Instant::now();
    let task_id = TaskId::parse(ulid::Ulid::new().to_string())?;
    let mut watch = TaskWatch::subscribe(&bus.bus, &bus.store, None, &task_id).await?;
    let req = SubmitRequest { task_id: Some(task_id.clone()), new_id: true, ..SubmitRequest::new(chat) };
    bus.call_as(None, &req).await.map_err(|e| anyhow::anyhow!("submit refused: {}", e.message))?;
    let accepted = started.elapsed().as_secs_f64();
    let mut first = None;
    while let Some(event) = watch.next().await {
        match event {
            Relayed::Started { .. } => {}
            Relayed::Text { .. } => {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            }
            Relayed::Done(done) => {
                let total = started.elapsed().as_secs_f64();
                let times = NatsTimes {
                    accepted,
                    first: first.unwrap_or(total),
                    done: total,
                    tokens: done.usage.completion_tokens,
                };
                return Ok((times, done, task_id));
            }
            Relayed::Failed(error) => anyhow::bail!("the task failed: {}", error.message),
        }
    }
    anyhow::bail!("the task's events ended early")
}

/// The same over HTTP: a streamed `POST /v1/chat/completions`, timed to the first SSE
/// event carrying text and to `[DONE]`.
pub(crate) async fn http_request(http: &reqwest::Client, base: &str, chat: &ChatParams) -> Option<(f64, f64)> {
    let started = Instant::now();
    let body = serde_json::json!({
        "model": chat.model,
        "messages": [{"role": "user", "content": chat.messages[0].content}],
        "max_tokens": chat.max_tokens,
        "stream": true,
    });
    let mut resp = http.post(format!("{base}/v1/chat/completions")).json(&body).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let mut first = None;
    let mut buf = String::new();
    while let Some(bytes) = resp.chunk().await.ok()? {
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("[DONE]") {
                let total = started.elapsed().as_secs_f64();
                return Some((first.unwrap_or(total), total));
            }
            if first.is_none() && event.contains("\"content\":\"") && !event.contains("\"content\":\"\"") {
                first = Some(started.elapsed().as_secs_f64());
            }
        }
    }
    None
}

/// Latencies of one transport at one concurrency.
#[derive(Debug, Clone)]
pub(crate) struct EchoRun {
    /// `nats` or `http`.
    pub(crate) transport: &'static str,
    /// Clients at once.
    pub(crate) clients: usize,
    /// Submit to `accepted` (NATS only).
    pub(crate) accepted: Option<Samples>,
    /// Submit to the first chunk.
    pub(crate) first: Samples,
    /// Submit to completion.
    pub(crate) done: Samples,
    /// Requests that failed.
    pub(crate) failed: usize,
}

/// The echo engine at `clients` concurrent clients over NATS.
pub(crate) async fn echo_nats(bus: &Client, model: &str, prompt: &str, clients: usize, duration: Duration) -> EchoRun {
    let (bus, model, prompt) = (bus.clone(), model.to_string(), prompt.to_string());
    let (mut series, failed) = closed_loop(clients, duration, move || {
        let (bus, chat) = (bus.clone(), chat(&model, &prompt, 64));
        async move { nats_request(&bus, chat).await.map(|t| vec![t.accepted, t.first, t.done]) }
    })
    .await;
    series.resize(3, Samples::default());
    let done = series.pop().unwrap_or_default();
    let first = series.pop().unwrap_or_default();
    let accepted = series.pop();
    EchoRun { transport: "nats", clients, accepted, first, done, failed }
}

/// The echo engine at `clients` concurrent clients over HTTP.
#[allow(clippy::too_many_arguments)] // one measured configuration, named in full
pub(crate) async fn echo_http(
    base: &str,
    key: &str,
    transport: &'static str,
    model: &str,
    prompt: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<EchoRun> {
    // The gateway takes a key like any client's.
    let mut auth = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {key}");
    auth.insert(reqwest::header::AUTHORIZATION, bearer.parse().context("the bench key as a header")?);
    let http =
        reqwest::Client::builder().pool_max_idle_per_host(256).default_headers(auth).build().context("HTTP client")?;
    let (base, chat) = (base.to_string(), chat(model, prompt, 64));
    let (mut series, failed) = closed_loop(clients, duration, move || {
        let (http, base, chat) = (http.clone(), base.clone(), chat.clone());
        async move { http_request(&http, &base, &chat).await.map(|(f, d)| vec![f, d]) }
    })
    .await;
    series.resize(2, Samples::default());
    let done = series.pop().unwrap_or_default();
    let first = series.pop().unwrap_or_default();
    Ok(EchoRun { transport, clients, accepted: None, first, done, failed })
}

/// Waits until `model` answers a one-token request (its worker is loaded and ready).
pub(crate) async fn wait_ready(bus: &Client, model: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::time::timeout(Duration::from_secs(60), nats_request(bus, chat(model, "ping", 1)))
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{model} was not served within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The admin key the benchmark's gateway accepts (`gateway.admin_key`), new for each run.
pub(crate) fn bench_admin_key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| format!("bench-{}-{}", ulid::Ulid::new(), ulid::Ulid::new()))
}

/// What an idle worker's pulls cost: the pull requests it makes a second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdlePulls {
    /// Its sequence slots.
    pub(crate) slots: u32,
    /// Pull requests a second, counted on JetStream's pull subject.
    pub(crate) per_sec: f64,
}

/// Counts the pull requests every worker makes during `window` (a copy of each reaches a
/// subscriber to JetStream's pull subject), with nothing queued: the cost of idle workers.
pub(crate) async fn idle_pulls(client: &async_nats::Client, slots: u32, window: Duration) -> anyhow::Result<IdlePulls> {
    use futures::StreamExt;
    let mut pulls = client.subscribe("$JS.API.CONSUMER.MSG.NEXT.>").await?;
    client.flush().await?;
    let mut seen = 0u64;
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, pulls.next()).await {
        seen += 1;
    }
    Ok(IdlePulls { slots, per_sec: seen as f64 / window.as_secs_f64() })
}
