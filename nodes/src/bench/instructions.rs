//! `bitinglip bench --instructions`: what one request and one streamed token cost the
//! platform, in CPU instructions, which unlike times are stable on a noisy machine.
//!
//! Two node processes run under callgrind (valgrind's instruction counter) on a
//! nats-server of their own: a gateway alone, and a node with the task manager, model
//! manager, cluster manager and an echo worker. The benchmark drives the gateway over
//! HTTP from this process (not counted) with streamed chat completions. For each
//! workload both processes' counters are zeroed, the requests run, and the counters are
//! dumped (`callgrind_control`); what the processes do at rest in the same time
//! (heartbeats, timers, measured first) is taken off. Per token is the difference between
//! answers of 8 and of 72 tokens, divided by the 64 tokens more.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bitinglip_bus_schema::Subjects;
use bitinglip_config::Config;
use bitinglip_nats::{Bus, LocalNatsServer, ServerOptions, Store};

use super::{platform, sim::deploy_echo, step};

const BEGIN: &str =
    "<!-- instructions:begin (written by `bitinglip bench --instructions`; edit outside these markers) -->";
const END: &str = "<!-- instructions:end -->";

/// A node process under callgrind.
struct Counted {
    child: Child,
    out: PathBuf,
}

impl Counted {
    fn spawn(dir: &Path, name: &str, envs: &[(&str, String)]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("this binary's path")?;
        let out = dir.join(format!("{name}.callgrind"));
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        let mut command = Command::new("valgrind");
        command
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(exe)
            .arg("node")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().context("starting a node under valgrind (is valgrind installed?)")?;
        Ok(Self { child, out })
    }

    fn control(&self, flag: &str) -> anyhow::Result<()> {
        let status = Command::new("callgrind_control")
            .arg(flag)
            .arg(self.child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("callgrind_control")?;
        anyhow::ensure!(status.success(), "callgrind_control {flag} failed");
        Ok(())
    }

    /// Zeroes the counters.
    fn zero(&self) -> anyhow::Result<()> {
        self.control("-z")
    }

    /// Dumps the counters and reads the instructions since the last zero.
    fn dump(&self) -> anyhow::Result<f64> {
        let before = self.dumps()?;
        self.control("-d")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.dumps()?;
            if let Some(new) = now.iter().find(|p| !before.contains(p)) {
                // Written whole before callgrind_control returns; read it once complete.
                std::thread::sleep(Duration::from_millis(200));
                let text = std::fs::read_to_string(new)?;
                let total = text
                    .lines()
                    .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .context("a callgrind dump without totals")?;
                return Ok(total);
            }
            anyhow::ensure!(Instant::now() < deadline, "callgrind wrote no dump");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn dumps(&self) -> anyhow::Result<Vec<PathBuf>> {
        let name = self.out.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        let dir = self.out.parent().context("a dump folder")?;
        Ok(std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&name) && n != name))
            .collect())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Instructions of one workload, per request, in each process.
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) requests: usize,
    pub(crate) gateway: f64,
    pub(crate) backend: f64,
}

/// Runs `requests` streamed chats answering `words` words at `clients` at once.
async fn drive(base: &str, clients: usize, requests: usize, words: usize) -> anyhow::Result<()> {
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", platform::bench_admin_key()).parse()?);
    let http = reqwest::Client::builder().default_headers(auth).build()?;
    let prompt = (0..words).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let chat = platform::chat("echo", &prompt, 128);
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(requests));
    let loops = (0..clients).map(|_| {
        let (http, base, chat, left) = (http.clone(), base.to_string(), chat.clone(), left.clone());
        async move {
            while left
                .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                    n.checked_sub(1)
                })
                .is_ok()
            {
                platform::http_request(&http, &base, &chat).await.context("a request failed")?;
            }
            anyhow::Ok(())
        }
    });
    for r in futures::future::join_all(loops).await {
        r?;
    }
    Ok(())
}

/// Measures; the rows, and the lines per token.
pub(crate) async fn run(
    nats_binary: &str,
    requests: usize,
    keep: Option<&Path>,
) -> anyhow::Result<(Vec<Row>, (f64, f64))> {
    let dir = tempfile::tempdir()?;
    // The callgrind dumps (one per workload and process, for callgrind_annotate) go where
    // asked, or with the rest into a folder removed at the end.
    let dumps = match keep {
        Some(keep) => {
            std::fs::create_dir_all(keep)?;
            keep.to_path_buf()
        }
        None => dir.path().to_path_buf(),
    };
    let creds = dir.path().join("creds");
    let subjects = Subjects::default();
    bitinglip_nats::permissions::init_credentials(&creds, &subjects, None)?;
    let mut opts = ServerOptions::new(dir.path().join("nats"));
    opts.binary = nats_binary.to_string();
    opts.credentials_dir = Some(creds.clone());
    let mut server = LocalNatsServer::start(opts).await.context("starting the benchmark's nats-server")?;
    let url = server.url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let common = |id: &str, roles: &str| {
        vec![
            ("BITINGLIP_NODE_ID", id.to_string()),
            ("BITINGLIP_ROLES", roles.to_string()),
            ("BITINGLIP_NATS__SERVERS", url.clone()),
            ("BITINGLIP_NATS__CREDENTIALS_DIR", creds.display().to_string()),
        ]
    };
    step("instructions: a backend node (task manager, model manager, cluster manager, worker) under callgrind");
    let backend = Counted::spawn(
        &dumps,
        "backend",
        &common("bench-backend", "task-manager,model-manager,cluster-manager,worker"),
    )?;
    let mut config = Config::default();
    config.nats.servers = vec![url.clone()];
    config.nats.credentials_dir = Some(creds.clone());
    let admin = bitinglip_nats::connect(&config.nats, "bitinglip-bench-admin", None).await?;
    let bus = Bus::new(admin, subjects, "bench-admin", Duration::from_secs(60));
    let started = Instant::now();
    let store = loop {
        match Store::open(&bus, &config).await {
            Ok(store) => break store,
            Err(_) if started.elapsed() < Duration::from_secs(300) => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(err) => return Err(err).context("the backend never provisioned JetStream"),
        }
    };
    step("instructions: a gateway node under callgrind");
    let mut gw_env = common("bench-gateway", "gateway");
    gw_env.push(("BITINGLIP_GATEWAY__HTTP", format!("127.0.0.1:{port}")));
    gw_env.push(("BITINGLIP_GATEWAY__ADMIN_KEY", platform::bench_admin_key().to_string()));
    let gateway = Counted::spawn(&dumps, "gateway", &gw_env)?;
    deploy_echo(&bus, "echo", 1, 0.0, 64).await?;
    platform::wait_ready(&platform::Client { bus: bus.clone(), store }, "echo", Duration::from_secs(600)).await?;
    let base = format!("http://127.0.0.1:{port}");
    let ready = Instant::now();
    while drive(&base, 1, 1, 8).await.is_err() {
        anyhow::ensure!(ready.elapsed() < Duration::from_secs(300), "the gateway never answered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    step("instructions: warming up");
    drive(&base, 16, 64, 8).await?;

    // At rest: what both processes do in a second without requests.
    let measure = |secs_idle: Option<(f64, f64)>| {
        let (gateway, backend) = (&gateway, &backend);
        move |elapsed: f64| -> anyhow::Result<(f64, f64)> {
            let (g, b) = (gateway.dump()?, backend.dump()?);
            let (gi, bi) = secs_idle.unwrap_or((0.0, 0.0));
            Ok(((g - gi * elapsed).max(0.0), (b - bi * elapsed).max(0.0)))
        }
    };
    gateway.zero()?;
    backend.zero()?;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_secs = t.elapsed().as_secs_f64();
    let (gi, bi) = measure(None)(idle_secs)?;
    let idle = (gi / idle_secs, bi / idle_secs);
    step(&format!("instructions: at rest {:.0} (gateway) and {:.0} (backend) per second", idle.0, idle.1));

    let mut rows = Vec::new();
    let mut per_token = (0.0, 0.0);
    let mut short_one = (0.0, 0.0);
    for (what, clients, words) in [
        ("streamed chat, 8 tokens, 1 client", 1, 8),
        ("streamed chat, 8 tokens, 16 clients", 16, 8),
        ("streamed chat, 8 tokens, 64 clients", 64, 8),
        ("streamed chat, 72 tokens, 1 client", 1, 72),
    ] {
        step(&format!("instructions: {requests} × {what}"));
        gateway.zero()?;
        backend.zero()?;
        let t = Instant::now();
        drive(&base, clients, requests, words).await?;
        let (g, b) = measure(Some(idle))(t.elapsed().as_secs_f64())?;
        let row = Row { what: what.to_string(), requests, gateway: g / requests as f64, backend: b / requests as f64 };
        if clients == 1 && words == 8 {
            short_one = (row.gateway, row.backend);
        }
        if words == 72 {
            per_token = ((row.gateway - short_one.0) / 64.0, (row.backend - short_one.1) / 64.0);
        }
        rows.push(row);
    }
    drop(gateway);
    drop(backend);
    server.stop().await;
    Ok((rows, per_token))
}

/// The figures as Markdown, between the markers.
pub(crate) fn markdown(rows: &[Row], per_token: (f64, f64), machine: &str, versions: &str) -> String {
    use std::fmt::Write as _;
    let mut s = format!("{BEGIN}\n\nMachine: {machine}  \nVersions: {versions}\n\n");
    s.push_str("| workload | requests | gateway instructions per request | task manager + worker instructions per request |\n| --- | ---: | ---: | ---: |\n");
    for r in rows {
        let _ = writeln!(s, "| {} | {} | {:.0} | {:.0} |", r.what, r.requests, r.gateway, r.backend);
    }
    let _ = writeln!(
        s,
        "\nPer streamed token (72-token answers less 8-token ones, ÷ 64): **{:.0}** instructions in the gateway (its relay to SSE bytes), **{:.0}** in the worker's node (the engine's callback to the chunk's publish).",
        per_token.0, per_token.1
    );
    s.push('\n');
    s.push_str(END);
    s.push('\n');
    s
}

/// Writes the figures into `doc` between the markers.
pub(crate) fn write_doc(doc: &Path, generated: &str) -> std::io::Result<()> {
    super::sim::write_between(
        doc,
        (BEGIN, END),
        "Instructions per request and per token",
        "bitinglip bench --instructions",
        generated,
    )
}
