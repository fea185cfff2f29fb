//! `bitinglip bench`: the performance baseline, in one run on one machine.
//!
//! It starts a nats-server of its own and measures, on that same server: the floor (core
//! NATS request/reply, JetStream publish plus consume); the platform with the echo engine
//! (submit to first chunk and to completion, p50 and p99, tasks per second, at 1, 16 and 64
//! concurrent clients, over NATS and over HTTP); and streaming tokens per second of 1 and
//! 16 concurrent streams through the platform against the same mistral.rs engine called
//! in this process, on a generated random-weight model. It prints the ratios and writes
//! the figures into `docs/BENCHMARKS.md` with a plot. Timings are never asserted; the
//! ratios against baselines measured in the same run are what it is for.

mod against;
mod autoscale;
mod conversations;
mod fairness;
mod flood;
mod floor;
mod instructions;
mod platform;
mod report;
mod sim;
mod stats;
mod stream;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitinglip_bus_schema::Subjects;
use bitinglip_config::{Config, EngineKind, ModelConfig, Role};
use bitinglip_modelgen::{Arch, ModelSpec};
use bitinglip_nats::{Bus, LocalNatsServer, ServerOptions};
use clap::Args;

use platform::InProcessNode;

/// `bitinglip bench` flags.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Seconds each latency measurement runs (after a warm-up of a sixth of it).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Parameters of the generated model for the streaming comparison.
    #[arg(long, default_value_t = 150_000_000)]
    params: usize,
    /// Tokens each stream generates (one stream; each of 16 streams generates a quarter).
    #[arg(long, default_value_t = 64)]
    tokens: u32,
    /// Rounds of the streaming comparison, platform and direct alternating; each side's
    /// best round is reported.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// JetStream `sync_interval` of the benchmark's nats-server: `always` (what `up` runs,
    /// an fsync per write) or a duration such as `2m` (the nats-server default).
    #[arg(long, default_value = "always")]
    sync: String,
    /// The Markdown file the figures go into (between its bench markers).
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    doc: PathBuf,
    /// Print only; write neither the document nor the plot.
    #[arg(long)]
    no_write: bool,
    /// Instead of the baseline, simulate clusters of these many worker nodes (e.g.
    /// `100,300,1000`) and measure the control plane (see `docs/BENCHMARKS.md`).
    #[arg(long, value_delimiter = ',')]
    sim: Vec<usize>,
    /// Instead of the baseline, count the CPU instructions of a request and of a streamed
    /// token in the gateway and in the worker's node, under callgrind (needs valgrind).
    #[arg(long)]
    instructions: bool,
    /// Requests per workload with `--instructions`.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// With `--instructions`, keep the callgrind dumps in this folder (for
    /// `callgrind_annotate`), one per workload and process in the order measured.
    #[arg(long)]
    callgrind_dir: Option<PathBuf>,
    /// Instead of the baseline, stream from this deployment of the running cluster (the
    /// config's NATS) against its folder (`--model-dir`) loaded in this process, at each
    /// of `--streams` (what `.ci/gpu-check` runs).
    #[arg(long, requires = "model_dir")]
    against: Option<String>,
    /// With `--against`: the deployment's model folder.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// With `--against`: the numbers of concurrent streams.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    streams: Vec<usize>,
    /// With `--against`: sequences at once in this process's engine (as the deployment's).
    #[arg(long, default_value_t = 64)]
    max_sequences: u32,
    /// With `--against`: the context of this process's engine (as the deployment's).
    #[arg(long)]
    context_length: Option<u32>,
    /// With `--against`: write the figures to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of the baseline, the conversation benchmark: multi-turn chat on three
    /// replicas in `affinity` and in `shared` routing, and on one mistral.rs engine in
    /// this process with its prefix cache (see `docs/BENCHMARKS.md`).
    #[arg(long)]
    conversations: bool,
    /// With `--conversations`: how many conversations.
    #[arg(long, default_value_t = 12)]
    conversation_count: usize,
    /// With `--conversations`: turns of each.
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// With `--conversations`: conversations at once.
    #[arg(long, default_value_t = 3)]
    concurrent: usize,
    /// With `--conversations`: words of each conversation's distinct system prompt (about
    /// six tokens each with the generated tokenizer).
    #[arg(long, default_value_t = 200)]
    prefix_words: usize,
    /// With `--conversations`: parameters of the generated model.
    #[arg(long, default_value_t = 20_000_000)]
    conversation_params: usize,
    /// Instead of the baseline, the fair-share benchmark: two tenants' keys against one
    /// saturated echo worker, each alone, then together at equal weights and at 3:1 (see
    /// `docs/BENCHMARKS.md`).
    #[arg(long)]
    fairness: bool,
    /// With `--fairness`: seconds each of its five phases measures (after settling for a
    /// fifth of that).
    #[arg(long, default_value_t = 25.0)]
    phase_seconds: f64,
    /// Instead of the baseline, the autoscaling benchmark: three worker nodes, a step
    /// from 1 to 8 requests a second, idle to zero, a cold start, scale-downs under load
    /// (see `docs/BENCHMARKS.md`).
    #[arg(long)]
    autoscale: bool,
}

/// The nats-server to start: the configured binary, else the one `.ci/setup` installs.
fn nats_binary(config: &Config) -> String {
    let configured = &config.nats.embedded.binary;
    if bitinglip_nats::find_nats_server(configured).is_some() {
        return configured.clone();
    }
    let venv = PathBuf::from(".venv/bin/nats-server");
    if venv.is_file() {
        return venv.display().to_string();
    }
    configured.clone()
}

fn node_config(url: &str, node_id: &str, roles: Vec<Role>, models: Vec<ModelConfig>) -> Config {
    let mut c = Config { node_id: node_id.into(), roles, ..Default::default() };
    c.nats.servers = vec![url.to_string()];
    c.gateway.http = "127.0.0.1:0".into();
    c.gateway.admin_key = Some(bitinglip_config::Secret(platform::bench_admin_key().to_string()));
    c.worker.models = models;
    c
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| format!("{:.0} GB RAM", kb / 1e6))
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    format!("{cpu}, {cores} cores available, {mem}, {os}")
}

/// The mistral.rs version this binary was built with, from the workspace's lock file.
fn mistralrs_version() -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"mistralrs\"" {
            if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = ")) {
                return v.trim_matches('"').to_string();
            }
        }
    }
    "unknown".into()
}

/// How this binary was built: the profile, and the optimization of BitingLip's own
/// crates (dependencies are optimized in every profile).
fn build_profile() -> String {
    if !cfg!(debug_assertions) {
        return "release build".into();
    }
    match option_env!("CARGO_PROFILE_DEV_OPT_LEVEL") {
        Some(level) => format!("dev profile, BitingLip's crates at opt-level {level}, dependencies at 3"),
        None => "dev profile, BitingLip's crates unoptimized, dependencies at opt-level 3".into(),
    }
}

fn step(what: &str) {
    eprintln!("bench: {what}");
}

/// `--sim`: the simulated clusters, one after another; the figures printed and written.
async fn run_sim(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let binary = nats_binary(config);
    let load = Duration::from_secs_f64(args.seconds.max(0.5));
    let mut rows = Vec::new();
    for &n in &args.sim {
        let row = sim::run_one(&binary, n, load).await?;
        eprintln!(
            "bench: sim {n}: {:.0} heartbeats/s, {:.0} bus messages/s, control plane {:.1} % and nats-server {:.1} % of a core at rest; 100 placed in {:.2?}; p50 {:.1} ms; node death to the stream's next token {:.2?}, node gone in {:.2?}, replaced in {:.2?}",
            row.heartbeats_per_sec,
            row.bus_per_sec,
            row.control_cpu * 100.0,
            row.nats_cpu * 100.0,
            row.place,
            row.done.p50(),
            row.next_token,
            row.detect,
            row.replace
        );
        rows.push(row);
    }
    let png_name = "bench-sim.png";
    let png = args.doc.with_file_name(png_name);
    let drawn = if args.no_write {
        None
    } else {
        match sim::plot(&rows, &png) {
            Ok(()) => Some(png_name),
            Err(err) => {
                eprintln!("bench: no plot: {err}");
                None
            }
        }
    };
    let text = sim::markdown(&rows, &machine(), drawn);
    publish(args, &text, sim::write_doc)
}

/// `bitinglip VERSION; PROFILE; N s in all`, since `began`.
fn timed_versions(began: Instant) -> String {
    format!(
        "bitinglip {}; {}; {:.0} s in all",
        env!("CARGO_PKG_VERSION"),
        build_profile(),
        began.elapsed().as_secs_f64()
    )
}

/// Prints a variant's report and, unless `--no-write`, writes it into the document.
fn publish(
    args: &BenchArgs,
    text: &str,
    write: impl Fn(&std::path::Path, &str) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    println!("{text}");
    if !args.no_write {
        write(&args.doc, text)?;
        eprintln!("bench: wrote {}", args.doc.display());
    }
    Ok(())
}

pub(crate) async fn run(config: Config, args: BenchArgs) -> anyhow::Result<()> {
    if let (Some(model), Some(dir)) = (args.against.clone(), args.model_dir.clone()) {
        let against = against::Against {
            model,
            dir,
            streams: args.streams.clone(),
            tokens: args.tokens,
            max_sequences: args.max_sequences,
            context_length: args.context_length,
            rounds: args.rounds,
            json: args.json.clone(),
        };
        return against::run(&config, against).await;
    }
    if !args.sim.is_empty() {
        return run_sim(&config, &args).await;
    }
    if args.conversations {
        let shape = conversations::Shape {
            conversations: args.conversation_count.max(1),
            turns: args.turns.max(2),
            concurrent: args.concurrent.max(1),
            prefix_words: args.prefix_words.max(1),
            answer_tokens: 16,
            params: args.conversation_params,
            replicas: 3,
        };
        let began = Instant::now();
        let (rows, spill, model) = conversations::run(&config, &shape).await?;
        let versions = format!(
            "bitinglip {}, mistral.rs {}; {}; {:.0} s in all",
            env!("CARGO_PKG_VERSION"),
            mistralrs_version(),
            build_profile(),
            began.elapsed().as_secs_f64()
        );
        let text = conversations::markdown(&rows, &spill, &model, &machine(), &versions);
        return publish(&args, &text, conversations::write_doc);
    }
    if args.autoscale {
        let began = Instant::now();
        let scaling = autoscale::run(&config).await?;
        let versions = timed_versions(began);
        let text = autoscale::markdown(&scaling, &machine(), &versions);
        return publish(&args, &text, autoscale::write_doc);
    }
    if args.fairness {
        let began = Instant::now();
        let fair = fairness::run(&config, Duration::from_secs_f64(args.phase_seconds.max(1.0))).await?;
        let versions = timed_versions(began);
        let text = fairness::markdown(&fair, &machine(), &versions);
        return publish(&args, &text, fairness::write_doc);
    }
    if args.instructions {
        let (rows, per_token) =
            instructions::run(&nats_binary(&config), args.requests.max(1), args.callgrind_dir.as_deref()).await?;
        let versions = format!("bitinglip {}; {}", env!("CARGO_PKG_VERSION"), build_profile());
        let text = instructions::markdown(&rows, per_token, &machine(), &versions);
        return publish(&args, &text, instructions::write_doc);
    }
    let began = Instant::now();
    let duration = Duration::from_secs_f64(args.seconds.max(0.5));
    let dir = tempfile::tempdir()?;
    let mut opts = ServerOptions::new(dir.path().join("nats"));
    opts.binary = nats_binary(&config);
    opts.sync = args.sync.clone();
    let mut server = LocalNatsServer::start(opts).await.context("starting the benchmark's nats-server")?;
    let url = server.url();
    step(&format!("nats-server at {url}"));

    step("floor: core NATS request/reply");
    let mut floor_rr = Vec::new();
    for clients in [1, 16, 64] {
        floor_rr.push((clients, floor::request_reply(&url, clients, duration).await?));
    }
    let mut floor_js = Vec::new();
    for clients in [1, 16, 64] {
        step(&format!("floor: JetStream publish + consume, {clients} client(s)"));
        floor_js.push((clients, floor::jetstream_publish_consume(&url, clients, duration).await?));
    }

    step("platform: a node with every role and an echo worker");
    let mut echo = ModelConfig::new("echo");
    echo.engine = EngineKind::Echo;
    echo.max_sequences = 64;
    let front = InProcessNode::start(node_config(&url, "bench-node", Role::ALL.to_vec(), vec![echo])).await?;
    let base = front.http.clone().context("the node's gateway")?;
    let mut client_cfg = config.nats.clone();
    client_cfg.servers = vec![url.clone()];
    let client = bitinglip_nats::connect(&client_cfg, "bitinglip-bench-client", None).await?;
    let subjects = Subjects::new(config.nats.subject_root.clone())?;
    let bus = Bus::new(client.clone(), subjects, "bench-client", Duration::from_secs(30));
    let store = bitinglip_nats::Store::open(&bus, &config).await?;
    let bus = platform::Client { bus, store };
    platform::wait_ready(&bus, "echo", Duration::from_secs(60)).await?;
    let prompt = "one two three four five six seven eight";
    let mut echo_runs = Vec::new();
    for clients in [1, 16, 64] {
        step(&format!("echo over NATS, {clients} client(s)"));
        echo_runs.push(platform::echo_nats(&bus, "echo", prompt, clients, duration).await);
        step(&format!("echo over HTTP, {clients} client(s)"));
        let key = platform::bench_admin_key();
        echo_runs.push(platform::echo_http(&base, key, "http", "echo", prompt, clients, duration).await?);
    }
    // What a rate-limited key costs: its limit is never reached, but every request is
    // counted cluster-wide (one JetStream round trip).
    step("echo over HTTP with a rate-limited key, 16 clients");
    let new = bitinglip_nats::store::keys::NewKey {
        name: "bench (limited)".into(),
        scope: bitinglip_bus_schema::Scope::Inference,
        models: Vec::new(),
        expires_ms: None,
        limits: bitinglip_bus_schema::KeyLimits { rpm: Some(u32::MAX), ..Default::default() },
        tenant: None,
        weight: None,
    };
    let (_, limited) = bus.store.keys().create(new).await?;
    echo_runs.push(platform::echo_http(&base, &limited, "http-limited", "echo", prompt, 16, duration).await?);

    step("idle: the pull requests of the 64-slot echo worker, 10 s");
    let idle = platform::idle_pulls(&client, 64, Duration::from_secs(10)).await?;

    step("a 10× flood of streamed chats against a model whose queue admits 40");
    let flood = flood::run(&url, 10).await?;

    let spec = ModelSpec::with_params(Arch::Llama, args.params);
    let model_name = "bench-llama";
    step(&format!("generating a random-weight Llama model, {:.0}M parameters", spec.params() as f64 / 1e6));
    let model_dir = dir.path().join(model_name);
    let gen_spec = spec.clone();
    let gen_dir = model_dir.clone();
    tokio::task::spawn_blocking(move || bitinglip_modelgen::generate(&gen_dir, &gen_spec)).await??;
    let mut model = ModelConfig::new(model_dir.display().to_string());
    model.max_sequences = 16;
    let model_desc = format!(
        "random-weight Llama, {:.0}M parameters ({} layers, hidden {}, f32, CPU), greedy, at most {} tokens for 1 stream and {} per stream for 16, best of {} alternating rounds",
        spec.params() as f64 / 1e6,
        spec.layers,
        spec.hidden,
        args.tokens,
        (args.tokens / 4).max(1),
        args.rounds.max(1)
    );

    step("streaming: loading the model on a worker node, and in this process");
    let worker =
        InProcessNode::start(node_config(&url, "bench-worker", vec![Role::Worker], vec![model.clone()])).await?;
    platform::wait_ready(&bus, model_name, Duration::from_secs(600)).await?;
    let engine = bitinglip_actors::engine::load_mistralrs(&model, &config.worker).await?;
    stream::direct(&engine, 1, 1).await?;
    // Alternating rounds, so neither side gains from going first (warm caches, a busier
    // moment of the machine); each side's best round counts.
    let shapes = [(1, args.tokens), (16, (args.tokens / 4).max(1))];
    let mut platform_runs: Vec<stream::StreamRun> = Vec::new();
    let mut direct_runs: Vec<stream::StreamRun> = Vec::new();
    let best = |runs: &mut Vec<stream::StreamRun>, i: usize, run: stream::StreamRun| {
        if runs.len() <= i {
            runs.push(run);
        } else if run.tokens_per_sec() > runs[i].tokens_per_sec() {
            runs[i] = run;
        }
    };
    for round in 1..=args.rounds.max(1) {
        for (i, (streams, tokens)) in shapes.into_iter().enumerate() {
            step(&format!("round {round}: platform, {streams} stream(s)"));
            best(&mut platform_runs, i, stream::platform(&bus, model_name, streams, tokens).await?);
            step(&format!("round {round}: direct, {streams} stream(s)"));
            best(&mut direct_runs, i, stream::direct(&engine, streams, tokens).await?);
        }
    }
    drop(engine);
    worker.stop().await;

    let versions = format!(
        "bitinglip {}, nats-server {} (JetStream sync_interval {}), mistral.rs {}, async-nats 0.51; {}",
        env!("CARGO_PKG_VERSION"),
        client.server_info().version,
        args.sync,
        mistralrs_version(),
        build_profile()
    );
    front.stop().await;
    drop(bus);
    drop(client);
    server.stop().await;

    let report = report::Report {
        machine: machine(),
        versions,
        floor_rr,
        floor_js,
        flood: Some(flood),
        idle: Some(idle),
        echo: echo_runs,
        model: model_desc,
        platform: platform_runs,
        direct: direct_runs,
        elapsed_secs: began.elapsed().as_secs_f64(),
    };
    report.print();
    if !args.no_write {
        let png_name = "bench-latency.png";
        let png = args.doc.with_file_name(png_name);
        if let Some(dir) = png.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let drawn = match report.plot(&png) {
            Ok(()) => Some(png_name),
            Err(err) => {
                eprintln!("bench: no plot: {err}");
                None
            }
        };
        report.write_doc(&args.doc, drawn)?;
        eprintln!(
            "bench: wrote {}{}",
            args.doc.display(),
            if drawn.is_some() { format!(" and {}", png.display()) } else { String::new() }
        );
    }
    Ok(())
}
