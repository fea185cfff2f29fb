//! `bitinglip bench --autoscale`: replicas following the load on three worker nodes. A
//! control node and three worker nodes run in this process on the benchmark's
//! nats-server; one echo deployment of [`SLOTS`] sequences per replica, answers of
//! [`WORDS`] tokens at [`TOKENS_PER_SEC`] (1 s each, so a replica serves 3 requests a
//! second), autoscaled from 0 to 3 replicas on a queue wait p95 target of 2 s, idle for
//! [`IDLE`] before zero. Clients stream chats over the OpenAI HTTP endpoint, open loop
//! (a fixed rate whatever is in flight):
//!
//! 1. 1 request a second for [`BASE_SECS`] s: one replica;
//! 2. a step to 8 a second for [`STEP_SECS`] s: the time from the step until 3 replicas
//!    serve, and the time to first token (which bounds the queue wait from above) of the
//!    requests sent once they do;
//! 3. no request: the time from the last answer until 0 replicas;
//! 4. one request: the cold start, request to first token, while a replica starts;
//! 5. 4 requests a second while an operator moves the bounds between 3 and 2 replicas
//!    [`SCALE_DOWNS`] times, each state held [`HOLD`] (each a scale-down by drain, with a
//!    grace shorter than an answer): answers lost (failed, broken) and repeated (any text
//!    but the prompt's echo).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitinglip_bus_schema::{
    Autoscale, Constraints, DeploymentStatus, EngineKind, ListDeployments, ModelSpec, ScaleSignal, SetDeployment,
    Subjects,
};
use bitinglip_config::{Config, Role};
use bitinglip_nats::{Bus, LocalNatsServer, ServerOptions};

use super::{
    node_config,
    platform::{bench_admin_key, InProcessNode},
    stats::Samples,
    step,
};

/// The deployment.
const MODEL: &str = "scale-echo";
/// Sequences per replica.
const SLOTS: u32 = 3;
/// Tokens a second of each sequence.
const TOKENS_PER_SEC: f64 = 20.0;
/// Words of each prompt, tokens of each answer.
const WORDS: usize = 20;
/// The queue wait p95 target.
const TARGET: Duration = Duration::from_secs(2);
/// Idle time before zero replicas.
const IDLE: Duration = Duration::from_secs(30);
/// Seconds of phase 1 and of phase 2.
const BASE_SECS: f64 = 10.0;
const STEP_SECS: f64 = 40.0;
/// Scale-downs of phase 5, and how long each state holds.
const SCALE_DOWNS: usize = 20;
const HOLD: Duration = Duration::from_millis(1500);
/// How long a drained replica lets its tasks run before it hands them on: less than an
/// answer, so that scale-downs hand streams on mid-answer.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// The most one request may take before it counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What one request saw, seconds from the benchmark's epoch; `first` and `done` absent
/// when it was lost.
#[derive(Debug, Clone, Copy)]
struct Seen {
    sent: f64,
    first: Option<f64>,
    done: Option<f64>,
    /// Whether the text streamed was exactly the prompt's echo.
    exact: bool,
}

/// Everything the autoscaling benchmark measured.
pub(crate) struct Scaling {
    /// From the step to 3 replicas serving, s (`None`: never within the phase).
    up: Option<f64>,
    /// Time to first token of the requests sent in the step once 3 replicas served.
    after_up: Samples,
    /// Requests of phase 2, and those lost.
    step_requests: usize,
    step_lost: usize,
    /// From the last answer to 0 replicas, s.
    to_zero: Option<f64>,
    /// Request to first token from zero replicas, s.
    cold: Option<f64>,
    /// Scale-downs made in phase 5, its requests, those lost and those not exact.
    downs: usize,
    drain_requests: usize,
    /// Attempts the drained replicas handed on mid-answer (to continue on another).
    handed_on: u64,
    lost: usize,
    repeated: usize,
    /// The deployment's scaling decisions, as `deployments ls` shows them.
    decisions: Vec<String>,
    /// A generated model's cold start, request to first token, s, and what it is.
    generated: (Option<f64>, String),
    nats: String,
}

/// The status of `model`'s deployment over the bus.
async fn status(bus: &Bus, model: &str) -> Option<DeploymentStatus> {
    let all = bus.call(&ListDeployments {}).await.ok()?;
    all.into_iter().find(|s| s.deployment.model == model)
}

/// (replicas wanted, nodes serving) of `model`.
async fn replicas(bus: &Bus, model: &str) -> (u32, usize) {
    status(bus, model).await.map_or((0, 0), |s| (s.deployment.replicas, s.serving.len()))
}

/// Polls until `(wanted, serving)` of the echo deployment is `want` or `timeout` passes;
/// the time it took.
async fn until(bus: &Bus, want: (u32, usize), timeout: Duration) -> Option<f64> {
    until_of(bus, MODEL, want, timeout).await
}

/// [`until`] for `model`.
async fn until_of(bus: &Bus, model: &str, want: (u32, usize), timeout: Duration) -> Option<f64> {
    let began = Instant::now();
    while began.elapsed() < timeout {
        if replicas(bus, model).await == want {
            return Some(began.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The echo deployment, autoscaled between `min` and `max`, starting at `replicas`.
fn deployment(min: u32, max: u32, replicas: u32) -> SetDeployment {
    let spec = ModelSpec {
        source: MODEL.into(),
        revision: None,
        engine: EngineKind::Echo,
        max_sequences: Some(SLOTS),
        echo_tokens_per_sec: Some(TOKENS_PER_SEC),
        context_length: None,
        quantize: None,
    };
    autoscaled(MODEL, spec, (min, max, replicas), IDLE)
}

/// A deployment of `spec` as `model`, autoscaled between `min` and `max` from `replicas`,
/// idle for `idle` before zero.
fn autoscaled(model: &str, spec: ModelSpec, (min, max, replicas): (u32, u32, u32), idle: Duration) -> SetDeployment {
    SetDeployment {
        model: Some(model.into()),
        spec,
        replicas,
        constraints: Constraints::default(),
        memory: Some(1 << 30),
        autoscale: Some(Autoscale {
            min_replicas: min,
            max_replicas: max,
            signal: ScaleSignal::QueueWait,
            target_ms: TARGET.as_millis() as u64,
            idle_ms: Some(idle.as_millis() as u64),
        }),
    }
}

/// One streamed chat; what it saw.
async fn one(http: &reqwest::Client, base: &str, model: &str, n: u64, epoch: Instant) -> Seen {
    let sent = epoch.elapsed().as_secs_f64();
    let prompt = format!("r{n} {}", (1..WORDS).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "));
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": WORDS,
        "stream": true,
    });
    let lost = Seen { sent, first: None, done: None, exact: false };
    let answer = async {
        let url = format!("{base}/v1/chat/completions");
        let mut resp = http.post(url).bearer_auth(bench_admin_key()).json(&body).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let (mut first, mut text, mut buf) = (None, String::new(), String::new());
        while let Some(bytes) = resp.chunk().await.ok()? {
            buf.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let Some(data) = event.trim().strip_prefix("data: ") else { continue };
                if data == "[DONE]" {
                    let done = epoch.elapsed().as_secs_f64();
                    return Some(Seen { sent, first: first.or(Some(done)), done: Some(done), exact: text == prompt });
                }
                let chunk: serde_json::Value = serde_json::from_str(data).ok()?;
                if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str().filter(|c| !c.is_empty()) {
                    first.get_or_insert_with(|| epoch.elapsed().as_secs_f64());
                    text.push_str(piece);
                }
            }
        }
        None
    };
    tokio::time::timeout(REQUEST_TIMEOUT, answer).await.ok().flatten().unwrap_or(lost)
}

/// Sends `rate` requests a second for `secs`, open loop; what they saw, once all ended.
async fn open_loop(http: &reqwest::Client, base: &str, rate: f64, secs: f64, epoch: Instant) -> Vec<Seen> {
    let began = Instant::now();
    open_loop_while(http, base, rate, epoch, move || began.elapsed().as_secs_f64() < secs).await
}

/// Sends `rate` requests a second while `go` holds, open loop; what they saw, once all
/// ended.
async fn open_loop_while(
    http: &reqwest::Client,
    base: &str,
    rate: f64,
    epoch: Instant,
    go: impl Fn() -> bool,
) -> Vec<Seen> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut handles = Vec::new();
    let mut n = 0u64;
    while go() {
        tick.tick().await;
        n += 1;
        let (http, base) = (http.clone(), base.to_string());
        let id = epoch.elapsed().as_nanos() as u64 ^ n;
        handles.push(tokio::spawn(async move { one(&http, &base, MODEL, id, epoch).await }));
    }
    let mut all = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(seen) = h.await {
            all.push(seen);
        }
    }
    all
}

/// Parameters of the generated model of phase 6.
const GENERATED_PARAMS: usize = 12_000_000;

/// Phase 6: a random-weight Llama in a folder, autoscaled 0 to 1, idle until zero, then
/// one request: its time to first token, while a replica loads it.
async fn cold_generated(
    bus: &Bus,
    http: &reqwest::Client,
    base: &str,
    dir: &std::path::Path,
    epoch: Instant,
) -> anyhow::Result<(Option<f64>, String)> {
    let spec = bitinglip_modelgen::ModelSpec::with_params(bitinglip_modelgen::Arch::Llama, GENERATED_PARAMS);
    let folder = dir.join("cold-llama");
    let (gen_dir, gen_spec) = (folder.clone(), spec.clone());
    tokio::task::spawn_blocking(move || bitinglip_modelgen::generate(&gen_dir, &gen_spec)).await??;
    let what = format!("a random-weight Llama of {:.0}M parameters (f32, CPU)", spec.params() as f64 / 1e6);
    let model = "cold-llama";
    let engine_spec = ModelSpec {
        source: folder.display().to_string(),
        revision: None,
        engine: EngineKind::Mistralrs,
        max_sequences: Some(2),
        echo_tokens_per_sec: None,
        context_length: Some(512),
        quantize: None,
    };
    let idle = Duration::from_secs(3);
    bus.call(&autoscaled(model, engine_spec, (0, 1, 1), idle))
        .await
        .map_err(|e| anyhow::anyhow!("deployment refused: {}", e.message))?;
    until_of(bus, model, (1, 1), Duration::from_secs(120)).await.context("the generated model never served")?;
    until_of(bus, model, (0, 0), Duration::from_secs(60)).await.context("the generated model never went to zero")?;
    let cold = one(http, base, model, u64::MAX - 1, epoch).await;
    Ok((cold.first.map(|f| f - cold.sent), what))
}

/// Runs the phases and returns the figures.
pub(crate) async fn run(config: &Config) -> anyhow::Result<Scaling> {
    let dir = tempfile::tempdir()?;
    let mut opts = ServerOptions::new(dir.path().join("nats"));
    opts.binary = super::nats_binary(config);
    let mut server = LocalNatsServer::start(opts).await.context("starting the benchmark's nats-server")?;
    let url = server.url();
    let control_roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
    let mut control_cfg = node_config(&url, "scale-control", control_roles, vec![]);
    control_cfg.cluster.scale_down_window = Duration::from_secs(10);
    step("autoscale: a control node and three worker nodes");
    let control = InProcessNode::start(control_cfg.clone()).await?;
    let mut workers = Vec::new();
    for i in 1..=3 {
        let mut w = node_config(&url, &format!("scale-worker-{i}"), vec![Role::Worker], vec![]);
        w.worker.drain_grace = DRAIN_GRACE;
        workers.push(InProcessNode::start(w).await?);
    }
    let base = control.http.clone().context("the control node's gateway")?;
    let nats = bitinglip_nats::connect(&control_cfg.nats, "bitinglip-bench-autoscale", None).await?;
    let nats_version = nats.server_info().version;
    let subjects = Subjects::new(control_cfg.nats.subject_root.clone())?;
    let bus = Bus::new(nats, subjects, "bench-autoscale-client", Duration::from_secs(30));
    bus.call(&deployment(0, 3, 1)).await.map_err(|e| anyhow::anyhow!("deployment refused: {}", e.message))?;
    until(&bus, (1, 1), Duration::from_secs(60)).await.context("the first replica never served")?;
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let epoch = Instant::now();

    step("autoscale: phase 1, 1 request/s");
    open_loop(&http, &base, 1.0, BASE_SECS, epoch).await;

    step("autoscale: phase 2, a step to 8 requests/s");
    let stepped = epoch.elapsed().as_secs_f64();
    let watch_bus = bus.clone();
    let watch = tokio::spawn(async move { until(&watch_bus, (3, 3), Duration::from_secs_f64(STEP_SECS)).await });
    let step_seen = open_loop(&http, &base, 8.0, STEP_SECS, epoch).await;
    let up = watch.await.ok().flatten();
    let after = up.map_or(f64::INFINITY, |u| stepped + u);
    let after_up = Samples {
        secs: step_seen.iter().filter(|s| s.sent >= after).filter_map(|s| s.first.map(|f| f - s.sent)).collect(),
        wall: Duration::from_secs_f64(STEP_SECS),
    };
    let step_lost = step_seen.iter().filter(|s| s.done.is_none()).count();

    step("autoscale: phase 3, idle until zero replicas");
    let to_zero = until(&bus, (0, 0), IDLE * 3).await;

    step("autoscale: phase 4, a cold start");
    let cold = one(&http, &base, MODEL, u64::MAX, epoch).await;
    let cold = cold.first.map(|f| f - cold.sent);

    step("autoscale: phase 5, scale-downs under load");
    // The nodes run in this process: their workers count into its metrics.
    let handed = || bitinglip_actors::metrics::metrics().tasks.with_label_values(&[MODEL, "handed_back"]).get();
    let handed_before = handed();
    let going = Arc::new(AtomicBool::new(true));
    let (load_http, load_base, load_going) = (http.clone(), base.clone(), going.clone());
    let load = tokio::spawn(async move {
        open_loop_while(&load_http, &load_base, 4.0, epoch, move || load_going.load(Ordering::Relaxed)).await
    });
    let mut downs = 0;
    for _ in 0..SCALE_DOWNS {
        // Each state holds for a while under load, so each scale-down finds tasks running
        // on the replica it drains.
        let three = bus.call(&deployment(3, 3, 3)).await.is_ok()
            && until(&bus, (3, 3), Duration::from_secs(60)).await.is_some();
        tokio::time::sleep(HOLD).await;
        let two = bus.call(&deployment(2, 2, 2)).await.is_ok()
            && until(&bus, (2, 2), Duration::from_secs(60)).await.is_some();
        tokio::time::sleep(HOLD).await;
        if three && two {
            downs += 1;
        }
    }
    going.store(false, Ordering::Relaxed);
    let drained = load.await.unwrap_or_default();
    let handed_on = handed().saturating_sub(handed_before);
    let decisions = status(&bus, MODEL)
        .await
        .map(|s| s.deployment.scaling.iter().map(|e| format!("{} → {}: {}", e.from, e.to, e.reason)).collect())
        .unwrap_or_default();

    step("autoscale: phase 6, a cold start of a generated model");
    let generated = cold_generated(&bus, &http, &base, dir.path(), epoch).await?;

    drop(bus);
    for w in workers {
        w.stop().await;
    }
    control.stop().await;
    server.stop().await;
    Ok(Scaling {
        up,
        after_up,
        step_requests: step_seen.len(),
        step_lost,
        to_zero,
        cold,
        downs,
        drain_requests: drained.len(),
        handed_on,
        lost: drained.iter().filter(|s| s.done.is_none()).count(),
        repeated: drained.iter().filter(|s| s.done.is_some() && !s.exact).count(),
        decisions,
        generated,
        nats: nats_version,
    })
}

fn secs(v: Option<f64>) -> String {
    v.map_or("never".into(), |s| format!("{s:.1} s"))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

/// The figures as Markdown, between the document's autoscaling markers.
pub(crate) fn markdown(s: &Scaling, machine: &str, versions: &str) -> String {
    let mut out = format!("{BEGIN}\n\n{machine}; {versions}, nats-server {}.\n\n", s.nats);
    out.push_str(&format!(
        "Setup: a control node and three worker nodes in one process; one echo deployment of {SLOTS} sequences per \
         replica answering {WORDS} tokens at {TOKENS_PER_SEC:.0} tokens/s (1 s an answer, 3 requests/s a replica), \
         autoscaled 0 to 3 replicas (one per node) on queue wait p95 < {} s, idle {} s before zero, \
         `cluster.scale_down_window` 10 s, `worker.drain_grace` {} ms (shorter than an answer, so a scale-down hands streams on mid-answer). Requests are streamed chats over HTTP, open loop. \
         Time to first token includes the queue wait, so its p95 bounds the wait's from above.\n\n",
        TARGET.as_secs(),
        IDLE.as_secs(),
        DRAIN_GRACE.as_millis()
    ));
    let p95 = s.after_up.percentile_ms(95.0) / 1000.0;
    let rows = [
        (
            "1 → 3 replicas after a step from 1 to 8 requests/s ≤ 10 s".to_string(),
            secs(s.up),
            s.up.is_some_and(|u| u <= 10.0),
        ),
        (
            format!("time to first token p95 once 3 serve ≤ {} s", TARGET.as_secs()),
            format!("{p95:.2} s ({} requests)", s.after_up.secs.len()),
            !s.after_up.secs.is_empty() && p95 <= TARGET.as_secs_f64(),
        ),
        (
            format!("idle → 0 replicas (idle time {} s)", IDLE.as_secs()),
            secs(s.to_zero),
            s.to_zero.is_some_and(|z| z <= IDLE.as_secs_f64() + 5.0),
        ),
        ("cold start of the echo model, request to first token".to_string(), secs(s.cold), s.cold.is_some()),
        (
            format!("cold start of {}, request to first token ≤ 5 s", s.generated.1),
            secs(s.generated.0),
            s.generated.0.is_some_and(|c| c <= 5.0),
        ),
        (
            format!("lost or repeated across {SCALE_DOWNS} scale-downs under load = 0"),
            format!(
                "{} lost, {} repeated of {} requests, {} scale-downs made, {} answers handed on mid-stream",
                s.lost, s.repeated, s.drain_requests, s.downs, s.handed_on
            ),
            s.lost == 0 && s.repeated == 0 && s.downs == SCALE_DOWNS,
        ),
    ];
    out.push_str("| target | measured | |\n|---|---|---|\n");
    for (target, value, met) in rows {
        out.push_str(&format!("| {target} | {value} | {} |\n", verdict(met)));
    }
    out.push_str(&format!(
        "\nThe step's requests: {} sent, {} lost. The last decisions, as `deployments ls` keeps them:\n\n",
        s.step_requests, s.step_lost
    ));
    for d in &s.decisions {
        out.push_str(&format!("- {d}\n"));
    }
    out.push_str(&format!("\n{END}\n"));
    out
}

/// Markers of the autoscaling benchmark's section in the document.
const BEGIN: &str = "<!-- bench-autoscale:begin -->";
const END: &str = "<!-- bench-autoscale:end -->";

/// Writes the section into `doc`.
pub(crate) fn write_doc(doc: &std::path::Path, generated: &str) -> std::io::Result<()> {
    super::sim::write_between(doc, (BEGIN, END), "Autoscaling", "bitinglip bench --autoscale", generated)
}
