//! `bitinglip bench --conversations`: multi-turn chat on three replicas of one generated
//! model (three worker nodes in this process), in `affinity` and in `shared` routing
//! mode, and the same conversations against one mistral.rs engine in this process with
//! its prefix cache on. Each conversation opens with a distinct system prompt of about a
//! thousand tokens; its later turns repeat everything before them, so an engine that
//! served the earlier turn has their prefix in its cache. Measured per mode: how often a
//! later turn ran on the worker of the turn before, the share of prompt tokens that came
//! from a cache, time to first token (p50, later turns and first turns), the cost of a
//! spill past a full owner (echo engine), and throughput on distinct prompts with no
//! shared prefix.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitinglip_actors::{Engine, GenerateRequest};
use bitinglip_bus_schema::{ChatMessage, ChatParams, Subjects};
use bitinglip_config::{Config, EngineKind, ModelConfig, Role, RoutingMode};
use bitinglip_modelgen::{Arch, ModelSpec};
use bitinglip_nats::{Bus, LocalNatsServer, ServerOptions};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{node_config, platform, step, InProcessNode};

/// The benchmark's shape.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// Conversations.
    pub(crate) conversations: usize,
    /// Turns of each.
    pub(crate) turns: usize,
    /// Conversations running at once.
    pub(crate) concurrent: usize,
    /// Words of each conversation's distinct system prompt.
    pub(crate) prefix_words: usize,
    /// Tokens each turn generates.
    pub(crate) answer_tokens: u32,
    /// Parameters of the generated model.
    pub(crate) params: usize,
    /// Replicas (worker nodes).
    pub(crate) replicas: usize,
}

/// One turn as measured.
#[derive(Debug, Clone)]
struct Turn {
    conversation: usize,
    turn: usize,
    /// The worker that ran it (empty for the direct engine).
    worker: String,
    /// Submit to first text, seconds.
    first: f64,
    prompt_tokens: u32,
    cached_tokens: u32,
}

/// One routing mode's (or the direct engine's) figures.
#[derive(Debug, Clone)]
pub(crate) struct ModeRow {
    pub(crate) mode: &'static str,
    /// Turns 2+ on the previous turn's worker, of all turns 2+.
    pub(crate) same_worker: Option<f64>,
    /// Prompt tokens taken from a cache, of all prompt tokens of turns 2+.
    pub(crate) cached_share: f64,
    /// Time to first token of turns 2+, p50 and p90, ms.
    pub(crate) later_ttft_p50_ms: f64,
    pub(crate) later_ttft_p90_ms: f64,
    /// Time to first token of first turns, p50, ms.
    pub(crate) first_ttft_p50_ms: f64,
    /// Mean prompt tokens of a turn.
    pub(crate) prompt_tokens: f64,
    /// Wall time of all conversations, s.
    pub(crate) secs: f64,
    /// Distinct prompts with no shared prefix: tasks per second (not for direct).
    pub(crate) distinct_per_sec: Option<f64>,
}

/// The spill past a full owner, with the echo engine: time to first token of a turn
/// whose owner is full (it goes to the other worker) and of one whose owner is idle, p50
/// ms.
#[derive(Debug, Clone)]
pub(crate) struct Spill {
    pub(crate) spilled_p50_ms: f64,
    pub(crate) idle_p50_ms: f64,
}

fn p(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// A conversation's distinct system prompt: `words` words drawn from its own seed.
fn system_prompt(conversation: usize, words: usize) -> String {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (conversation as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut out = format!("Conversation {conversation}. Keep these notes in mind:");
    for _ in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!(" n{}", x % 5000));
    }
    out
}

fn question(conversation: usize, turn: usize) -> String {
    format!("Question {turn} of conversation {conversation}: what comes next?")
}

fn summarize(mode: &'static str, turns: &[Turn], secs: f64, direct: bool) -> ModeRow {
    let mut by_conv: HashMap<usize, Vec<&Turn>> = HashMap::new();
    for t in turns {
        by_conv.entry(t.conversation).or_default().push(t);
    }
    let (mut same, mut later) = (0, 0);
    for conv in by_conv.values_mut() {
        conv.sort_by_key(|t| t.turn);
        for pair in conv.windows(2) {
            later += 1;
            same += usize::from(pair[0].worker == pair[1].worker);
        }
    }
    let later_turns: Vec<&Turn> = turns.iter().filter(|t| t.turn > 1).collect();
    let cached: u64 = later_turns.iter().map(|t| u64::from(t.cached_tokens)).sum();
    let prompt: u64 = later_turns.iter().map(|t| u64::from(t.prompt_tokens)).sum();
    let later_first: Vec<f64> = later_turns.iter().map(|t| t.first).collect();
    let first_first: Vec<f64> = turns.iter().filter(|t| t.turn == 1).map(|t| t.first).collect();
    ModeRow {
        mode,
        same_worker: (!direct && later > 0).then(|| same as f64 / later as f64),
        cached_share: if prompt > 0 { cached as f64 / prompt as f64 } else { 0.0 },
        later_ttft_p50_ms: p(&later_first, 0.5) * 1000.0,
        later_ttft_p90_ms: p(&later_first, 0.9) * 1000.0,
        first_ttft_p50_ms: p(&first_first, 0.5) * 1000.0,
        prompt_tokens: turns.iter().map(|t| f64::from(t.prompt_tokens)).sum::<f64>() / turns.len().max(1) as f64,
        secs,
        distinct_per_sec: None,
    }
}

/// One turn through the platform over NATS: its timing, usage, worker and answer.
async fn platform_turn(client: &platform::Client, chat: ChatParams) -> anyhow::Result<(Turn, String)> {
    let (times, done, task_id) = platform::nats_task(client, chat).await?;
    let record = client.store.tasks().get(&task_id).await?.context("the task's record")?;
    let turn = Turn {
        conversation: 0,
        turn: 0,
        worker: record.worker.unwrap_or_default(),
        first: times.first,
        prompt_tokens: done.usage.prompt_tokens,
        cached_tokens: done.usage.cached_tokens,
    };
    Ok((turn, done.text))
}

/// One turn on the engine in this process.
async fn direct_turn(engine: &Arc<dyn Engine>, chat: ChatParams, max_tokens: u32) -> anyhow::Result<(Turn, String)> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<bitinglip_actors::Piece>(256);
    let drain = tokio::spawn(async move {
        let (mut first, mut text) = (None, String::new());
        while let Some(piece) = rx.recv().await {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            text.push_str(&piece.text);
        }
        (first, text)
    });
    let generated = engine
        .generate(GenerateRequest::new(chat, max_tokens), tx, CancellationToken::new())
        .await
        .map_err(|e| anyhow::anyhow!("direct generation failed: {e}"))?;
    let (first, text) = drain.await?;
    let turn = Turn {
        conversation: 0,
        turn: 0,
        worker: String::new(),
        first: first.unwrap_or_else(|| started.elapsed().as_secs_f64()),
        prompt_tokens: generated.prompt_tokens,
        cached_tokens: generated.cached_tokens.unwrap_or(0),
    };
    Ok((turn, text))
}

/// Where the turns go.
#[derive(Clone)]
enum Target {
    Platform(platform::Client),
    Direct(Arc<dyn Engine>),
}

/// Every conversation, `concurrent` at a time, each turn after the one before it.
async fn conversations(target: &Target, model: &str, shape: &Shape) -> anyhow::Result<(Vec<Turn>, f64)> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(shape.concurrent.max(1)));
    let mut handles = Vec::new();
    for c in 0..shape.conversations {
        let (target, model, shape, gate) = (target.clone(), model.to_string(), shape.clone(), gate.clone());
        handles.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut messages = vec![
                ChatMessage::new("system", system_prompt(c, shape.prefix_words)),
                ChatMessage::new("user", question(c, 1)),
            ];
            let mut turns = Vec::new();
            for t in 1..=shape.turns {
                let chat = ChatParams {
                    model: model.clone(),
                    messages: messages.clone(),
                    max_tokens: Some(shape.answer_tokens),
                    temperature: Some(0.0),
                    ..ChatParams::default()
                };
                let (mut turn, answer) = match &target {
                    Target::Platform(client) => platform_turn(client, chat).await?,
                    Target::Direct(engine) => direct_turn(engine, chat, shape.answer_tokens).await?,
                };
                turn.conversation = c;
                turn.turn = t;
                turns.push(turn);
                messages.push(ChatMessage::new("assistant", answer));
                messages.push(ChatMessage::new("user", question(c, t + 1)));
            }
            anyhow::Ok(turns)
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await??);
    }
    Ok((all, started.elapsed().as_secs_f64()))
}

/// Distinct single-turn prompts with no shared prefix, all at once: tasks per second.
async fn distinct(client: &platform::Client, model: &str, shape: &Shape) -> anyhow::Result<f64> {
    let started = Instant::now();
    let n = shape.conversations * 2;
    let mut handles = Vec::new();
    for i in 0..n {
        let words = system_prompt(1000 + i, shape.prefix_words / 4);
        let chat = ChatParams {
            max_tokens: Some(shape.answer_tokens),
            temperature: Some(0.0),
            ..ChatParams::user(model, words)
        };
        let client = client.clone();
        handles.push(tokio::spawn(async move { platform_turn(&client, chat).await }));
    }
    for h in handles {
        h.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// A cluster of its own for one mode: a nats-server, a control node routing in `mode`,
/// and `replicas` worker nodes serving `model`.
struct Cluster {
    _dir: tempfile::TempDir,
    server: LocalNatsServer,
    control: InProcessNode,
    workers: Vec<InProcessNode>,
    client: platform::Client,
}

impl Cluster {
    async fn start(
        config: &Config,
        mode: RoutingMode,
        models: Vec<ModelConfig>,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut opts = ServerOptions::new(dir.path().join("nats"));
        opts.binary = super::nats_binary(config);
        let server = LocalNatsServer::start(opts).await.context("starting a nats-server")?;
        let url = server.url();
        let control_roles = vec![Role::Gateway, Role::TaskManager, Role::ModelManager, Role::ClusterManager];
        let mut control_config = node_config(&url, "conv-control", control_roles, Vec::new());
        control_config.routing.mode = mode;
        let control = InProcessNode::start(control_config).await?;
        let mut workers = Vec::new();
        for i in 0..replicas {
            let c = node_config(&url, &format!("conv-worker-{i}"), vec![Role::Worker], models.clone());
            workers.push(InProcessNode::start(c).await?);
        }
        let mut client_cfg = config.nats.clone();
        client_cfg.servers = vec![url.clone()];
        let nats = bitinglip_nats::connect(&client_cfg, "bitinglip-bench-conversations", None).await?;
        let bus =
            Bus::new(nats, Subjects::new(config.nats.subject_root.clone())?, "bench-client", Duration::from_secs(60));
        let store = bitinglip_nats::Store::open(&bus, config).await?;
        Ok(Self { _dir: dir, server, control, workers, client: platform::Client { bus, store } })
    }

    /// Waits until every replica of `model` is ready (each answers in the heartbeats).
    async fn ready(&self, model: &str, replicas: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let nodes = self.client.store.nodes().live().await.unwrap_or_default();
            let ready = nodes.iter().filter(|n| n.serves(model)).count();
            if ready >= replicas {
                return platform::wait_ready(&self.client, model, Duration::from_secs(600)).await;
            }
            anyhow::ensure!(Instant::now() < deadline, "{ready} of {replicas} replicas of {model} ready after 10 min");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(mut self) {
        for w in self.workers {
            w.stop().await;
        }
        self.control.stop().await;
        self.server.stop().await;
    }
}

/// The spill past a full owner with the echo engine (two one-slot workers): each round
/// occupies the owner of a key with a long answer, then times a turn of the same key
/// (it runs on the other worker), and a turn of a key whose owner is idle.
async fn spill(config: &Config) -> anyhow::Result<Spill> {
    let mut echo = ModelConfig::new("echo-spill");
    echo.engine = EngineKind::Echo;
    echo.echo_tokens_per_sec = 200.0;
    echo.max_sequences = 1;
    let cluster = Cluster::start(config, RoutingMode::Affinity, vec![echo], 2).await?;
    cluster.ready("echo-spill", 2).await?;
    let keyed = |key: &str, words: usize| ChatParams {
        prompt_cache_key: Some(key.to_string()),
        max_tokens: Some(words as u32),
        ..ChatParams::user("echo-spill", (0..words).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" "))
    };
    let (mut spilled, mut idle) = (Vec::new(), Vec::new());
    for round in 0..10 {
        let key = format!("spill-{round}");
        // The owner busy for about a second.
        let long = tokio::spawn({
            let (client, chat) = (cluster.client.clone(), keyed(&key, 200));
            async move { platform_turn(&client, chat).await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        spilled.push(platform_turn(&cluster.client, keyed(&key, 4)).await?.0.first);
        long.await??;
        idle.push(platform_turn(&cluster.client, keyed(&format!("idle-{round}"), 4)).await?.0.first);
    }
    cluster.stop().await;
    Ok(Spill { spilled_p50_ms: p(&spilled, 0.5) * 1000.0, idle_p50_ms: p(&idle, 0.5) * 1000.0 })
}

/// The whole comparison: affinity, shared, direct, and the spill.
pub(crate) async fn run(config: &Config, shape: &Shape) -> anyhow::Result<(Vec<ModeRow>, Spill, String)> {
    let dir = tempfile::tempdir()?;
    let spec = ModelSpec::with_params(Arch::Llama, shape.params);
    step(&format!("conversations: generating a random-weight Llama, {:.0}M parameters", spec.params() as f64 / 1e6));
    let model_dir = dir.path().join("conv-llama");
    let (gen_dir, gen_spec) = (model_dir.clone(), spec.clone());
    tokio::task::spawn_blocking(move || bitinglip_modelgen::generate(&gen_dir, &gen_spec)).await??;
    let mut model = ModelConfig::new(model_dir.display().to_string());
    model.max_sequences = 4;
    let name = model.served_name();
    let desc = format!(
        "random-weight Llama, {:.0}M parameters ({} layers, hidden {}, f32, CPU), {} replicas of 4 sequences each (worker nodes in one process), {} conversations × {} turns, {} at a time, a distinct system prompt of {} words each, {} tokens per answer, greedy",
        spec.params() as f64 / 1e6,
        spec.layers,
        spec.hidden,
        shape.replicas,
        shape.conversations,
        shape.turns,
        shape.concurrent,
        shape.prefix_words,
        shape.answer_tokens
    );

    let mut rows = Vec::new();
    step("conversations: one mistral.rs engine in this process, prefix cache on");
    let engine = bitinglip_actors::engine::load_mistralrs(&model, &config.worker).await?;
    let (turns, secs) = conversations(&Target::Direct(engine), &name, shape).await?;
    let row = summarize("direct mistral.rs", &turns, secs, true);
    eprintln!("bench: {row:?}");
    rows.push(row);

    for (mode, label) in [(RoutingMode::Affinity, "affinity"), (RoutingMode::Shared, "shared")] {
        step(&format!("conversations: {label} routing, {} replicas", shape.replicas));
        let cluster = Cluster::start(config, mode, vec![model.clone()], shape.replicas).await?;
        cluster.ready(&name, shape.replicas).await?;
        let (turns, secs) = conversations(&Target::Platform(cluster.client.clone()), &name, shape).await?;
        let mut row = summarize(label, &turns, secs, false);
        step(&format!("conversations: {label} routing, distinct prompts"));
        row.distinct_per_sec = Some(distinct(&cluster.client, &name, shape).await?);
        eprintln!("bench: {row:?}");
        rows.push(row);
        cluster.stop().await;
    }

    step("conversations: the spill past a full owner (echo engine)");
    let spill = spill(config).await?;
    Ok((rows, spill, desc))
}

/// The figures as Markdown, between the document's conversation markers.
pub(crate) fn markdown(rows: &[ModeRow], spill: &Spill, model: &str, machine: &str, versions: &str) -> String {
    let find = |mode: &str| rows.iter().find(|r| r.mode == mode);
    let mut out = format!("{BEGIN}\n\n{machine}; {versions}.\n\nModel and load: {model}.\n\n");
    out.push_str("| routing | turns 2+ on the previous turn's worker | prompt tokens of turns 2+ from a cache | time to first token, turns 2+ (p50 / p90) | first turns (p50) | mean prompt tokens | all conversations | distinct prompts, tasks/s |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} % | {:.0} / {:.0} ms | {:.0} ms | {:.0} | {:.1} s | {} |\n",
            r.mode,
            r.same_worker.map_or("n/a (one engine)".to_string(), |s| format!("{:.0} %", s * 100.0)),
            r.cached_share * 100.0,
            r.later_ttft_p50_ms,
            r.later_ttft_p90_ms,
            r.first_ttft_p50_ms,
            r.prompt_tokens,
            r.secs,
            r.distinct_per_sec.map_or("n/a".to_string(), |t| format!("{t:.2}")),
        ));
    }
    if let (Some(a), Some(s), Some(d)) = (find("affinity"), find("shared"), find("direct mistral.rs")) {
        let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
        let check = |ok: bool| if ok { "met" } else { "missed" };
        let same = a.same_worker.unwrap_or(0.0);
        let ttft = ratio(a.later_ttft_p50_ms, s.later_ttft_p50_ms);
        let vs_direct = ratio(a.later_ttft_p50_ms, d.later_ttft_p50_ms);
        let distinct = ratio(a.distinct_per_sec.unwrap_or(0.0), s.distinct_per_sec.unwrap_or(1.0));
        let added = spill.spilled_p50_ms - spill.idle_p50_ms;
        out.push_str(&format!(
            "\nTargets:\n\n\
             - turns 2+ on the previous turn's worker ≥ 90 %: {:.0} % ({}; shared mode {:.0} %)\n\
             - their time to first token p50 ≤ 0.5× shared mode's: {ttft:.2}× ({})\n\
             - and no worse than direct mistral.rs with its cache: {vs_direct:.2}× of direct's ({})\n\
             - a spill past a full owner adds ≤ 100 ms: {added:.0} ms (p50 time to first token {:.0} ms spilled, {:.0} ms to an idle owner; echo engine) ({})\n\
             - throughput on distinct prompts not lower than shared mode: {distinct:.2}× ({})\n",
            same * 100.0,
            check(same >= 0.9),
            s.same_worker.unwrap_or(0.0) * 100.0,
            check(ttft <= 0.5),
            check(vs_direct <= 1.0),
            spill.spilled_p50_ms,
            spill.idle_p50_ms,
            check(added <= 100.0),
            check(distinct >= 0.95),
        ));
    }
    out.push_str(&format!("\n{END}\n"));
    out
}

/// Markers of the conversation benchmark's section in the document.
const BEGIN: &str = "<!-- bench-conversations:begin -->";
const END: &str = "<!-- bench-conversations:end -->";

/// Writes the section into `doc`.
pub(crate) fn write_doc(doc: &std::path::Path, generated: &str) -> std::io::Result<()> {
    super::sim::write_between(
        doc,
        (BEGIN, END),
        "Conversations: cache-affinity routing",
        "bitinglip bench --conversations",
        generated,
    )
}
