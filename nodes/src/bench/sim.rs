//! `bitinglip bench --sim N,…`: the control plane at scale without GPUs. For each N it
//! starts a nats-server (authorizing the per-role users, as `up` does), the control plane
//! as a node process of its own (task manager, model manager, cluster manager, with the
//! `events` user), and N simulated worker nodes in this process: each a real node
//! supervisor with its own node id, NATS connection (as `worker`), heartbeat, memory and
//! placement watch, whose replicas run the echo engine. It measures, at rest, the
//! heartbeat and bus messages per second and the CPU of the control plane and of the
//! nats-server; the time for the leader to place 100 deployments; submit to completion
//! under load; and the time from one node's death to its replicas serving elsewhere.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitinglip_actors::Node;
use bitinglip_bus_schema::{Constraints, EngineKind, ListDeployments, ModelSpec, Role, SetDeployment, Subjects};
use bitinglip_config::Config;
use bitinglip_nats::{Bus, LocalNatsServer, ServerOptions, Store};
use futures::{FutureExt as _, StreamExt};

mod scaling;

use super::{platform, stats::Samples, step};
use scaling::{scaling_step, ScalingRow};

/// Deployments the leader places in each run.
const DEPLOYMENTS: usize = 100;
/// What each simulated node offers, bytes.
const NODE_MEMORY: u64 = 16 << 30;
/// What each replica needs, bytes.
const REPLICA_MEMORY: u64 = 1 << 30;

/// One simulated cluster's figures.
#[derive(Debug, Clone)]
pub(crate) struct SimRow {
    pub(crate) nodes: usize,
    /// From the first node's start to every heartbeat in the bucket.
    pub(crate) join: Duration,
    /// Heartbeat writes per second, at rest.
    pub(crate) heartbeats_per_sec: f64,
    /// Every message the nats-server took in per second (all subjects, JetStream's
    /// own included: its `/varz` `in_msgs`), at rest.
    pub(crate) bus_per_sec: f64,
    /// CPU of the control plane's process, in cores, at rest.
    pub(crate) control_cpu: f64,
    /// CPU of the nats-server, in cores, at rest.
    pub(crate) nats_cpu: f64,
    /// From setting 100 deployments to every one serving.
    pub(crate) place: Duration,
    /// Submit to completion under load.
    pub(crate) done: Samples,
    /// Requests that failed under load.
    pub(crate) failed: usize,
    /// From the death of the node running a stream to the stream's next token.
    pub(crate) next_token: Duration,
    /// From a node's death to its heartbeat gone from the cluster.
    pub(crate) detect: Duration,
    /// From a node's death to its replicas serving on other nodes.
    pub(crate) replace: Duration,
    /// Autoscaling's cost and decision time.
    pub(crate) scaling: ScalingRow,
}

/// A simulated worker node running in this process.
struct SimNode {
    id: String,
    node: Node,
}

impl SimNode {
    /// A worker node, started as production starts one ([`Node::start`]: as the
    /// `worker` user, on the streams and buckets the control plane provisioned).
    async fn start(mut config: Config) -> anyhow::Result<Self> {
        config.roles = vec![Role::Worker];
        config.worker.memory = Some(NODE_MEMORY);
        let id = config.node_id.clone();
        let node = Node::start(config).await.with_context(|| format!("simulated node {id}"))?;
        Ok(Self { id, node })
    }

    /// Dies: its connections close first (the server sees it go, its heartbeat stays
    /// behind, unremoved), then its actors stop.
    async fn die(self) {
        self.node.die().await;
    }

    async fn stop(self) {
        self.node.stop().await;
    }
}

/// CPU time of process `pid` so far, seconds (user + system, from `/proc/<pid>/stat`,
/// whose ticks are USER_HZ, 100 a second on Linux).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The control plane as a node process of its own (this binary), on `url`.
fn spawn_control(url: &str, creds: &Path, log: &Path) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("this binary's path")?;
    let log = std::fs::File::create(log)?;
    Command::new(exe)
        .arg("node")
        .env("BITINGLIP_NODE_ID", "sim-control")
        .env("BITINGLIP_ROLES", "task-manager,model-manager,cluster-manager")
        .env("BITINGLIP_NATS__SERVERS", url)
        .env("BITINGLIP_NATS__CREDENTIALS_DIR", creds)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the control plane's node")
}

/// Polls `done` every 50 ms until it holds or `timeout` passes; the time it took.
async fn until<F, Fut>(what: &str, timeout: Duration, mut done: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        if started.elapsed() > timeout {
            anyhow::bail!("not within {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed())
}

/// Sets a deployment of the echo engine: `replicas` of `model` at `tokens_per_sec`.
async fn deploy(bus: &Bus, model: &str, replicas: u32, tokens_per_sec: f64) -> anyhow::Result<()> {
    deploy_echo(bus, model, replicas, tokens_per_sec, 8).await
}

/// Sets a deployment of the echo engine with `slots` sequences per replica.
pub(crate) async fn deploy_echo(
    bus: &Bus,
    model: &str,
    replicas: u32,
    tokens_per_sec: f64,
    slots: u32,
) -> anyhow::Result<()> {
    set_echo(bus, model, replicas, tokens_per_sec, slots, None).await
}

/// [`deploy_echo`], autoscaled when `autoscale` says.
async fn set_echo(
    bus: &Bus,
    model: &str,
    replicas: u32,
    tokens_per_sec: f64,
    slots: u32,
    autoscale: Option<bitinglip_bus_schema::Autoscale>,
) -> anyhow::Result<()> {
    let req = SetDeployment {
        model: Some(model.to_string()),
        spec: ModelSpec {
            source: model.to_string(),
            revision: None,
            engine: EngineKind::Echo,
            max_sequences: Some(slots),
            echo_tokens_per_sec: Some(tokens_per_sec),
            context_length: None,
            quantize: None,
        },
        replicas,
        constraints: Constraints::default(),
        memory: Some(REPLICA_MEMORY),
        autoscale,
    };
    bus.call(&req).await.map_err(|e| anyhow::anyhow!("deployment of {model} not set: {}", e.message))?;
    Ok(())
}

async fn deployments(bus: &Bus) -> Vec<bitinglip_bus_schema::DeploymentStatus> {
    bus.call(&ListDeployments {}).await.unwrap_or_default()
}

/// Runs the simulated cluster of `n` worker nodes and measures it.
pub(crate) async fn run_one(nats_binary: &str, n: usize, load: Duration) -> anyhow::Result<SimRow> {
    let dir = tempfile::tempdir()?;
    let creds = dir.path().join("creds");
    let subjects = Subjects::default();
    bitinglip_nats::permissions::init_credentials(&creds, &subjects, None)?;
    let mut opts = ServerOptions::new(dir.path().join("nats"));
    opts.binary = nats_binary.to_string();
    opts.sync = "2m".into();
    opts.credentials_dir = Some(creds.clone());
    // Its monitoring port: `/varz` counts every message the server took in.
    let monitor = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    opts.extra_config = format!("http: \"127.0.0.1:{monitor}\"\n");
    let mut server = LocalNatsServer::start(opts).await.context("starting the simulation's nats-server")?;
    let url = server.url();
    let mut config = Config::default();
    config.nats.servers = vec![url.clone()];
    config.nats.credentials_dir = Some(creds.clone());

    // The control plane first: it provisions the streams and buckets.
    let mut control = spawn_control(&url, &creds, &dir.path().join("control.log"))?;
    let admin = bitinglip_nats::connect(&config.nats, "bitinglip-sim-admin", None).await?;
    let bus = Bus::new(admin.clone(), subjects.clone(), "sim-admin", Duration::from_secs(30));
    let store = {
        let started = Instant::now();
        loop {
            match Store::open(&bus, &config).await {
                Ok(store) => break store,
                Err(_) if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(err) => return Err(err).context("the control plane never provisioned JetStream"),
            }
        }
    };
    let client = platform::Client { bus: bus.clone(), store: store.clone() };
    let live = |store: Store| async move { store.nodes().live().await.map(|n| n.len()).unwrap_or(0) };
    until("the control plane's heartbeat", Duration::from_secs(60), || live(store.clone()).map(|c| c >= 1)).await?;

    step(&format!("sim {n}: starting {n} simulated worker nodes"));
    let started = Instant::now();
    let mut sims = Vec::with_capacity(n);
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i:04}")).collect();
    for chunk in ids.chunks(50) {
        let starts = chunk.iter().map(|id| {
            let mut c = config.clone();
            c.node_id = id.clone();
            SimNode::start(c)
        });
        for node in futures::future::join_all(starts).await {
            sims.push(node?);
        }
    }
    until("every simulated node's heartbeat", Duration::from_secs(300), || live(store.clone()).map(|c| c > n)).await?;
    let join = started.elapsed();

    step(&format!("sim {n}: at rest, 10 s"));
    let nodes_subject = format!("$KV.{}.>", subjects.nodes_bucket());
    let mut heartbeats = admin.subscribe(nodes_subject).await?;
    admin.flush().await?;
    let varz = format!("http://127.0.0.1:{monitor}/varz");
    let in_msgs = || async {
        let v: serde_json::Value = reqwest::get(&varz).await?.json().await?;
        anyhow::Ok(v["in_msgs"].as_u64().unwrap_or(0))
    };
    let m0 = in_msgs().await?;
    let window = Duration::from_secs(10);
    let (control_pid, nats_pid) = (control.id(), server.pid().unwrap_or(0));
    let (c0, s0) = (cpu_secs(control_pid), cpu_secs(nats_pid));
    let count = |sub: &mut async_nats::Subscriber| {
        let mut k = 0u64;
        while let Some(Some(_)) = sub.next().now_or_never() {
            k += 1;
        }
        k
    };
    let rest_started = Instant::now();
    let mut hb = 0u64;
    while rest_started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(100)).await;
        hb += count(&mut heartbeats);
    }
    let secs = rest_started.elapsed().as_secs_f64();
    let all = in_msgs().await?.saturating_sub(m0);
    let (control_cpu, nats_cpu) = ((cpu_secs(control_pid) - c0) / secs, (cpu_secs(nats_pid) - s0) / secs);
    drop(heartbeats);

    step(&format!("sim {n}: placing {DEPLOYMENTS} deployments"));
    let placing = Instant::now();
    for j in 0..DEPLOYMENTS {
        deploy(&bus, &format!("sim-m{j:03}"), 1, 0.0).await?;
    }
    until("every deployment serving", Duration::from_secs(300), || async {
        let all = deployments(&bus).await;
        all.len() >= DEPLOYMENTS && all.iter().all(|d| !d.serving.is_empty())
    })
    .await?;
    let place = placing.elapsed();

    step(&format!("sim {n}: submit to completion, 32 clients, {load:?}"));
    let models: Vec<String> = (0..DEPLOYMENTS).map(|j| format!("sim-m{j:03}")).collect();
    let turn = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mut series, failed) = super::stats::closed_loop(32, load, move || {
        let k = turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (client, chat) = (client.clone(), platform::chat(&models[k % models.len()], "one two three four", 16));
        async move { platform::nats_request(&client, chat).await.map(|t| vec![t.done]) }
    })
    .await;
    let done = series.pop().unwrap_or_default();

    step(&format!("sim {n}: the node running a stream dies"));
    // A stream of 200 tokens at 20 a second, from a model with two replicas; after 20
    // tokens the node running it dies.
    deploy(&bus, "sim-stream", 2, 20.0).await?;
    until("both stream replicas serving", Duration::from_secs(120), || async {
        deployments(&bus).await.iter().any(|d| d.deployment.model == "sim-stream" && d.serving.len() >= 2)
    })
    .await?;
    let task_id = bitinglip_bus_schema::TaskId::parse(ulid::Ulid::new().to_string())?;
    let mut watch = bitinglip_client::TaskWatch::subscribe(&bus, &store, None, &task_id)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    let submit = bitinglip_bus_schema::SubmitRequest {
        task_id: Some(task_id.clone()),
        new_id: true,
        ..bitinglip_bus_schema::SubmitRequest::new(platform::chat("sim-stream", &words.join(" "), 200))
    };
    bus.call_as(None, &submit).await?;
    let mut tokens = 0;
    while tokens < 20 {
        match watch.next().await {
            Some(bitinglip_client::Relayed::Text { .. }) => tokens += 1,
            Some(bitinglip_client::Relayed::Started { .. }) => {}
            _ => anyhow::bail!("the stream ended before its node could die"),
        }
    }
    let running = store.tasks().get(&task_id).await?.and_then(|r| r.worker).context("the stream's worker")?;
    let index = sims
        .iter()
        .position(|s| running.starts_with(&format!("{}-", s.id)))
        .context("the stream runs on a simulated node")?;
    let victim_id = sims[index].id.clone();
    let before = deployments(&bus).await;
    let orphans: Vec<String> =
        before.iter().filter(|d| d.serving.contains(&victim_id)).map(|d| d.deployment.model.clone()).collect();
    let victim = sims.swap_remove(index);
    // Its heartbeat is deleted when the cluster finds it dead from its closed connection;
    // expired (no event) when only the node TTL finds it: watch for the one, poll for the
    // other.
    let deletion = store.nodes().follow(&victim_id).await?;
    let died = Instant::now();
    victim.die().await;
    // Chunks the dead node sent before it died may still be on their way: the next token
    // is the first one after the next attempt started.
    let next_token = async {
        let mut resumed = false;
        loop {
            match watch.next().await {
                Some(bitinglip_client::Relayed::Text { .. }) if resumed => return Ok(died.elapsed()),
                Some(bitinglip_client::Relayed::Text { .. }) => {}
                Some(bitinglip_client::Relayed::Started { attempt, .. }) => resumed = attempt > 1,
                Some(bitinglip_client::Relayed::Failed(e)) => anyhow::bail!("the stream failed: {}", e.message),
                _ => anyhow::bail!("the stream ended without continuing"),
            }
        }
    };
    let next_token = tokio::time::timeout(Duration::from_secs(60), next_token)
        .await
        .context("no token within 60 s of the node's death")??;
    let deleted = deletion.wait();
    let expired = until("the dead node's heartbeat gone", Duration::from_secs(60), || async {
        !store.nodes().live().await.map(|nodes| nodes.iter().any(|hb| hb.node_id == victim_id)).unwrap_or(true)
    });
    tokio::select! {
        () = deleted => {}
        gone = expired => { gone?; }
    }
    let detect = died.elapsed();
    until("its replicas serving elsewhere", Duration::from_secs(120), || async {
        let all = deployments(&bus).await;
        orphans
            .iter()
            .all(|m| all.iter().any(|d| &d.deployment.model == m && d.serving.iter().any(|s| s != &victim_id)))
    })
    .await?;
    let replace = died.elapsed();

    step(&format!("sim {n}: every deployment autoscaled, at rest, 10 s; then a burst on one"));
    let scaler = platform::Client { bus: bus.clone(), store: store.clone() };
    let scaling = scaling_step(&bus, &scaler, &in_msgs, control_pid, all as f64 / secs).await?;

    step(&format!("sim {n}: stopping"));
    let stops = sims.into_iter().map(SimNode::stop);
    futures::future::join_all(stops).await;
    let _ = control.kill();
    let _ = control.wait();
    drop(bus);
    drop(admin);
    server.stop().await;
    Ok(SimRow {
        nodes: n,
        join,
        heartbeats_per_sec: hb as f64 / secs,
        bus_per_sec: all as f64 / secs,
        control_cpu,
        nats_cpu,
        place,
        done,
        failed,
        next_token,
        detect,
        replace,
        scaling,
    })
}

/// Where the simulation's part of the document starts and ends.
const BEGIN: &str = "<!-- sim:begin (written by `bitinglip bench --sim`; edit outside these markers) -->";
const END: &str = "<!-- sim:end -->";

/// The figures as Markdown.
pub(crate) fn markdown(rows: &[SimRow], machine: &str, png: Option<&str>) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{BEGIN}\n\n");
    let _ = writeln!(out, "Machine: {machine}. One nats-server; the control plane (task manager, model manager, cluster manager) in a node process of its own; N worker nodes simulated in one process, each a real node supervisor with its own id, connection, heartbeat (every 2 s, default settings) and {} GiB of memory, serving echo replicas. {DEPLOYMENTS} deployments of one replica ({} GiB) each.\n", NODE_MEMORY >> 30, REPLICA_MEMORY >> 30);
    out.push_str("| worker nodes | all joined | heartbeats/s | bus messages/s at rest | control plane CPU at rest | nats-server CPU at rest | place 100 deployments | submit→completion p50 / p99 (32 clients) | tasks/s (failed) | node death → stream's next token | dead node gone | its replicas serving elsewhere |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} s | {:.0} | {:.0} | {:.1} % of a core | {:.1} % of a core | {:.2} s | {:.1} / {:.1} ms | {:.0} ({}) | {:.2} s | {:.2} s | {:.2} s |",
            r.nodes,
            r.join.as_secs_f64(),
            r.heartbeats_per_sec,
            r.bus_per_sec,
            r.control_cpu * 100.0,
            r.nats_cpu * 100.0,
            r.place.as_secs_f64(),
            r.done.p50(),
            r.done.p99(),
            r.done.per_sec(),
            r.failed,
            r.next_token.as_secs_f64(),
            r.detect.as_secs_f64(),
            r.replace.as_secs_f64(),
        );
    }
    out.push_str("\nAutoscaling on the same cluster: every deployment autoscaled (1 to 3 replicas, queue wait < 2 s), at rest for 10 s; then a burst of 16 tasks of 5 s on an idle autoscaled deployment of 2 sequences a replica (1 to 4 replicas).\n\n");
    out.push_str("| worker nodes | bus messages/s the leader's reading adds (one step a second) | control plane CPU, all autoscaled, at rest | burst → first decision up | burst → its replicas serving |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let s = &r.scaling;
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} % of a core | {:.2} s | {:.2} s |",
            r.nodes,
            s.step_messages,
            s.control_cpu * 100.0,
            s.decision.as_secs_f64(),
            s.serving.as_secs_f64(),
        );
    }
    if let Some(png) = png {
        let _ = writeln!(out, "\n![Control-plane cost against worker nodes]({png})");
    }
    out.push('\n');
    out.push_str(END);
    out.push('\n');
    out
}

/// Writes the figures into `doc` between the markers (appended when it has none).
pub(crate) fn write_doc(doc: &Path, generated: &str) -> std::io::Result<()> {
    write_between(doc, (BEGIN, END), "The control plane at scale", "bitinglip bench --sim", generated)
}

/// Writes `generated` (which starts and ends with `markers`) into `doc` in place of what
/// is between them; appended under a new `heading` when `doc` has no such markers.
pub(crate) fn write_between(
    doc: &Path,
    markers: (&str, &str),
    heading: &str,
    command: &str,
    generated: &str,
) -> std::io::Result<()> {
    let (begin, end) = markers;
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    let text = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &old[..b], generated.trim_end(), &old[e + end.len()..]),
        _ => format!("{}\n\n## {heading}\n\nMeasured by `{command}`.\n\n{generated}", old.trim_end()),
    };
    std::fs::write(doc, text)
}

/// Draws the control plane's cost against worker nodes: CPU (control plane and
/// nats-server, % of a core) and bus messages per second at rest.
pub(crate) fn plot(rows: &[SimRow], png: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    super::report::register_a_font()?;
    let root = BitMapBackend::new(png, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let max_n = rows.iter().map(|r| r.nodes).max().unwrap_or(1) as f64 * 1.1;
    let max_cpu = rows.iter().map(|r| r.control_cpu.max(r.nats_cpu) * 100.0).fold(1.0, f64::max) * 1.2;
    let max_msgs = rows.iter().map(|r| r.bus_per_sec).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption("Control-plane cost at rest against simulated worker nodes", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .right_y_label_area_size(72)
        .build_cartesian_2d(0f64..max_n, 0f64..max_cpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .set_secondary_coord(0f64..max_n, 0f64..max_msgs);
    chart
        .configure_mesh()
        .x_desc("worker nodes")
        .y_desc("CPU, % of one core")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_secondary_axes().y_desc("bus messages per second").draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let series = |f: fn(&SimRow) -> f64| rows.iter().map(move |r| (r.nodes as f64, f(r))).collect::<Vec<_>>();
    for (label, points, color) in [
        ("control plane CPU", series(|r| r.control_cpu * 100.0), RED),
        ("nats-server CPU", series(|r| r.nats_cpu * 100.0), BLUE),
    ] {
        super::report::line_with_points(&mut chart, label, &points, color)?;
    }
    let msgs = series(|r| r.bus_per_sec);
    let green = RGBColor(0, 140, 60);
    chart
        .draw_secondary_series(LineSeries::new(msgs.clone(), green.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("bus messages/s (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
