//! `bitinglip bench --fairness`: the fair share of one saturated worker between two
//! tenants. One node with every role serves one slow echo worker of [`SLOTS`] sequences;
//! two tenants, A and B, each with an API key of its own (`keys create --tenant --weight`),
//! stream chats over the OpenAI HTTP endpoint as real clients would. Five phases, each
//! with fresh tenants (so no phase inherits another's accounting), each settling before a
//! measured window:
//!
//! 1. B alone, light: one request every `1 / B_RATE` s whatever is in flight (open loop);
//!    its latency is the baseline of phase 3.
//! 2. A alone, flooding: A keeps [`A_FACTOR`] × [`B_BACKLOG`] requests in flight (closed
//!    loop, a deep backlog); its throughput is the worker's capacity for one tenant.
//! 3. A floods, B light as in phase 1: B's latency against its baseline, and A's
//!    generation while B has nothing in flight against capacity (the worker does not sit
//!    on B's unused share).
//! 4. A floods, B backlogged (B keeps [`B_BACKLOG`] in flight, so it always has requests
//!    waiting), equal weights: B's share of the tokens, Jain's index.
//! 5. As 4 at weights 3:1 (A 3): the shares.
//!
//! B's wait is measured in phases 1 and 3 with B light, not backlogged: a backlogged
//! tenant waits mostly behind its own requests, and with half the worker instead of all
//! of it those waits double however fair the dispatch. The measured wait is the whole latency (submit to `[DONE]`);
//! time to first token is reported beside it but not held to the target, since on a
//! saturated worker a request always waits for a running sequence to end (dispatch is
//! not preemptive), on average a slot's turn (one answer ÷ slots), which an idle worker
//! never makes it wait.
//!
//! Tokens served per tenant are prompt plus completion tokens from each answer's usage,
//! counted for the requests that ended inside the window. The pure arithmetic (shares,
//! Jain's index, intervals) is in [`tally`], with its tests.

mod drive;
mod tally;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bitinglip_bus_schema::Subjects;
use bitinglip_config::{Config, EngineKind, ModelConfig, Role};
use bitinglip_nats::{Bus, LocalNatsServer, ServerOptions, Store};

use drive::{drive, tenant_key, Driver};
use tally::{covered, generated, jain, shares, while_idle};

use super::{
    node_config,
    platform::{self, InProcessNode},
    stats::Samples,
    step,
};

/// The model the worker serves.
const MODEL: &str = "fair-echo";
/// Its sequences at once: with more requests than this in flight, the rest wait.
const SLOTS: u32 = 4;
/// Tokens a second of each sequence: an answer of [`WORDS`] tokens takes 160 ms.
const TOKENS_PER_SEC: f64 = 200.0;
/// Words of every prompt, and tokens of every answer (the echo engine answers with them).
const WORDS: u32 = 32;
/// Requests a second of a light B: under a tenth of the worker's ceiling, and rare
/// enough that B has nothing in flight for much of phase 3 even when its requests wait.
const B_RATE: f64 = 2.0;
/// Requests a backlogged B keeps in flight: twice the slots, so it always has some
/// waiting even when it holds every slot.
const B_BACKLOG: usize = 8;
/// A keeps this many times B's backlog in flight.
const A_FACTOR: usize = 10;
/// The most one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One of the two tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    A,
    B,
}

impl Who {
    fn label(self) -> &'static str {
        match self {
            Who::A => "A",
            Who::B => "B",
        }
    }
}

/// How a tenant sends.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Keeps this many requests in flight (closed loop).
    Backlog(usize),
    /// Sends this many requests a second, whatever is in flight (open loop).
    Rate(f64),
}

impl Load {
    fn describe(self) -> String {
        match self {
            Load::Backlog(n) => format!("{n} in flight"),
            Load::Rate(r) => format!("one every {:.0} ms", 1000.0 / r),
        }
    }
}

/// The phases, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    BAlone,
    AAlone,
    Light,
    Equal,
    Weighted,
}

impl Phase {
    fn title(self) -> &'static str {
        match self {
            Phase::BAlone => "1. B alone, light",
            Phase::AAlone => "2. A alone, flooding",
            Phase::Light => "3. A floods, B light, 1:1",
            Phase::Equal => "4. both backlogged, 1:1",
            Phase::Weighted => "5. both backlogged, 3:1",
        }
    }

    fn number(self) -> u8 {
        match self {
            Phase::BAlone => 1,
            Phase::AAlone => 2,
            Phase::Light => 3,
            Phase::Equal => 4,
            Phase::Weighted => 5,
        }
    }

    /// Who sends, with which weight and load.
    fn plan(self) -> Vec<(Who, u32, Load)> {
        let flood = Load::Backlog(B_BACKLOG * A_FACTOR);
        let (light, backlog) = (Load::Rate(B_RATE), Load::Backlog(B_BACKLOG));
        match self {
            Phase::BAlone => vec![(Who::B, 1, light)],
            Phase::AAlone => vec![(Who::A, 1, flood)],
            Phase::Light => vec![(Who::A, 1, flood), (Who::B, 1, light)],
            Phase::Equal => vec![(Who::A, 1, flood), (Who::B, 1, backlog)],
            Phase::Weighted => vec![(Who::A, 3, flood), (Who::B, 1, backlog)],
        }
    }
}

/// One request as its client saw it: seconds from the phase's start, and its usage.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Request {
    sent: f64,
    first: f64,
    done: f64,
    prompt: u32,
    completion: u32,
}

/// One tenant's figures in one phase.
#[derive(Debug, Clone)]
struct TenantRow {
    who: Who,
    weight: u32,
    load: Load,
    /// Requests that ended in the window.
    ended: usize,
    /// Their prompt and completion tokens.
    tokens: u64,
    /// Completion tokens generated in the window, a second (each answer's spread evenly
    /// from its first token to its end).
    generated_per_sec: f64,
    /// Of the requests that ended in the window: submit to first token, and to `[DONE]`.
    first: Samples,
    latency: Samples,
    /// Share of the window in which the tenant had a request sent and not yet started.
    waiting: f64,
    /// Requests refused, broken or timed out, in the whole phase.
    failed: usize,
}

/// A's generation while B had nothing in flight.
#[derive(Debug, Clone, Copy)]
struct WhileIdle {
    /// Completion tokens a second.
    per_sec: f64,
    /// Seconds of the window in which B had nothing in flight.
    secs: f64,
}

/// One phase's figures.
#[derive(Debug, Clone)]
struct PhaseRow {
    phase: Phase,
    tenants: Vec<TenantRow>,
    /// Phase 3 only.
    a_while_b_idle: Option<WhileIdle>,
}

impl PhaseRow {
    fn tenant(&self, who: Who) -> Option<&TenantRow> {
        self.tenants.iter().find(|t| t.who == who)
    }

    /// Each tenant's share of the tokens, in the order of `tenants`.
    fn shares(&self) -> Vec<f64> {
        shares(&self.tenants.iter().map(|t| t.tokens as f64).collect::<Vec<_>>())
    }

    fn share(&self, who: Who) -> Option<f64> {
        let i = self.tenants.iter().position(|t| t.who == who)?;
        self.shares().get(i).copied()
    }

    /// Jain's index over tokens ÷ weight.
    fn jain(&self) -> f64 {
        let tokens: Vec<f64> = self.tenants.iter().map(|t| t.tokens as f64).collect();
        let weights: Vec<f64> = self.tenants.iter().map(|t| f64::from(t.weight)).collect();
        jain(&tokens, &weights)
    }
}

/// Everything the fairness benchmark measured.
pub(crate) struct Fairness {
    phases: Vec<PhaseRow>,
    /// The nats-server's version.
    nats: String,
    /// Seconds each phase settled, then measured.
    settle: f64,
    window: f64,
}

impl Fairness {
    fn phase(&self, phase: Phase) -> Option<&PhaseRow> {
        self.phases.iter().find(|p| p.phase == phase)
    }

    fn tenant(&self, phase: Phase, who: Who) -> Option<&TenantRow> {
        self.phase(phase).and_then(|p| p.tenant(who))
    }
}

/// A target's outcome: what it is, the measured value, and met, missed or not measurable.
struct Check {
    target: String,
    value: String,
    met: Option<bool>,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn checks(f: &Fairness) -> Vec<Check> {
    let mut out = Vec::new();
    if let (Some(alone), Some(light)) = (f.tenant(Phase::BAlone, Who::B), f.tenant(Phase::Light, Who::B)) {
        let (a, l) = (alone.latency.percentile_ms(95.0), light.latency.percentile_ms(95.0));
        let r = ratio(l, a);
        out.push(Check {
            target: "B's latency p95 with A flooding ≤ 2× B's alone (B light in both)".into(),
            value: format!("{r:.2}× ({l:.0} ms against {a:.0} ms)"),
            met: Some(r <= 2.0),
        });
    }
    let capacity = f.tenant(Phase::AAlone, Who::A).map(|a| a.generated_per_sec);
    if let (Some(capacity), Some(light)) = (capacity, f.phase(Phase::Light)) {
        let target = "A's generation while B had nothing in flight ≥ 95 % of A's alone (capacity)".to_string();
        match light.a_while_b_idle.filter(|w| w.secs >= 0.2) {
            Some(w) => {
                let r = ratio(w.per_sec, capacity);
                out.push(Check {
                    target,
                    value: format!(
                        "{:.0} % ({:.0} against {capacity:.0} tokens/s, over {:.1} s of the window)",
                        r * 100.0,
                        w.per_sec,
                        w.secs
                    ),
                    met: Some(r >= 0.95),
                });
            }
            None => out.push(Check { target, value: "B was never idle in the window".into(), met: None }),
        }
    }
    if let Some(equal) = f.phase(Phase::Equal) {
        let b = equal.share(Who::B).unwrap_or(0.0);
        out.push(Check {
            target: "B's share of the tokens, both backlogged at equal weights ≥ 45 %".into(),
            value: format!("{:.1} %", b * 100.0),
            met: Some(b >= 0.45),
        });
        let j = equal.jain();
        out.push(Check {
            target: "Jain's index over tokens ÷ weight, equal weights ≥ 0.95".into(),
            value: format!("{j:.3}"),
            met: Some(j >= 0.95),
        });
    }
    if let Some(weighted) = f.phase(Phase::Weighted) {
        let (a, b) = (weighted.share(Who::A).unwrap_or(0.0), weighted.share(Who::B).unwrap_or(0.0));
        out.push(Check {
            target: "shares at weights 3:1: A 75 ± 5 %, B 25 ± 5 %".into(),
            value: format!("{:.1} % / {:.1} %", a * 100.0, b * 100.0),
            met: Some((a - 0.75).abs() <= 0.05 && (b - 0.25).abs() <= 0.05),
        });
    }
    out
}

/// One tenant's figures from its requests (pure).
fn summarize(who: Who, weight: u32, load: Load, requests: &[Request], failed: usize, window: (f64, f64)) -> TenantRow {
    let len = (window.1 - window.0).max(f64::EPSILON);
    let ended: Vec<&Request> = requests.iter().filter(|r| r.done >= window.0 && r.done < window.1).collect();
    let wall = Duration::from_secs_f64(len);
    let samples = |f: fn(&Request) -> f64| Samples { secs: ended.iter().map(|r| f(r)).collect(), wall };
    let waiting: Vec<(f64, f64)> = requests.iter().map(|r| (r.sent, r.first)).collect();
    TenantRow {
        who,
        weight,
        load,
        ended: ended.len(),
        tokens: ended.iter().map(|r| u64::from(r.prompt) + u64::from(r.completion)).sum(),
        generated_per_sec: generated(requests, &[window]) / len,
        first: samples(|r| r.first - r.sent),
        latency: samples(|r| r.done - r.sent),
        waiting: covered(&waiting, window) / len,
        failed,
    }
}

/// Runs every phase on a node of its own and returns the figures.
pub(crate) async fn run(config: &Config, window: Duration) -> anyhow::Result<Fairness> {
    let dir = tempfile::tempdir()?;
    let mut opts = ServerOptions::new(dir.path().join("nats"));
    opts.binary = super::nats_binary(config);
    let mut server = LocalNatsServer::start(opts).await.context("starting the benchmark's nats-server")?;
    let mut echo = ModelConfig::new(MODEL);
    echo.engine = EngineKind::Echo;
    echo.max_sequences = SLOTS;
    echo.echo_tokens_per_sec = TOKENS_PER_SEC;
    let node_cfg = node_config(&server.url(), "fair-node", Role::ALL.to_vec(), vec![echo]);
    step("fairness: a node with every role and a saturable echo worker");
    let node = InProcessNode::start(node_cfg.clone()).await?;
    let base = node.http.clone().context("the node's gateway")?;
    let nats = bitinglip_nats::connect(&node_cfg.nats, "bitinglip-bench-fairness", None).await?;
    let nats_version = nats.server_info().version;
    let subjects = Subjects::new(node_cfg.nats.subject_root.clone())?;
    let bus = Bus::new(nats, subjects, "bench-fairness-client", Duration::from_secs(30));
    let store = Store::open(&bus, &node_cfg).await?;
    let client = platform::Client { bus, store: store.clone() };
    platform::wait_ready(&client, MODEL, Duration::from_secs(60)).await?;

    let prompt = (0..WORDS).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": WORDS,
        "temperature": 0,
        "stream": true,
    });
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    let driver = std::sync::Arc::new(Driver { http, base, body });
    let seconds = window.as_secs_f64();
    let settle = (seconds / 5.0).max(0.5);
    let mut phases = Vec::new();
    for phase in [Phase::BAlone, Phase::AAlone, Phase::Light, Phase::Equal, Phase::Weighted] {
        step(&format!("fairness: phase {} ({:.1} s after {settle:.1} s settling)", phase.title(), seconds));
        let plan = phase.plan();
        let mut keys = Vec::new();
        for (who, weight, _) in &plan {
            let tenant = format!("bench-fair-{}-{}", phase.number(), who.label().to_lowercase());
            keys.push(tenant_key(&store, &tenant, *weight).await?);
        }
        let epoch = Instant::now();
        let until = settle + seconds;
        let runs = futures::future::join_all(
            plan.iter().zip(keys).map(|((_, _, load), key)| drive(&driver, key, *load, epoch, until)),
        )
        .await;
        let window = (settle, until);
        let tenants: Vec<TenantRow> = plan
            .iter()
            .zip(&runs)
            .map(|((who, weight, load), (requests, failed))| summarize(*who, *weight, *load, requests, *failed, window))
            .collect();
        let find = |who: Who| plan.iter().position(|(w, _, _)| *w == who).map(|i| runs[i].0.as_slice());
        let a_while_b_idle = match (phase, find(Who::A), find(Who::B)) {
            (Phase::Light, Some(a), Some(b)) => Some(while_idle(a, b, window)),
            _ => None,
        };
        let row = PhaseRow { phase, tenants, a_while_b_idle };
        for t in &row.tenants {
            eprintln!(
                "bench: fairness {}: {} ended {}, {} tokens, latency p95 {:.0} ms, waiting {:.0} %, failed {}",
                phase.title(),
                t.who.label(),
                t.ended,
                t.tokens,
                t.latency.percentile_ms(95.0),
                t.waiting * 100.0,
                t.failed
            );
        }
        phases.push(row);
    }
    drop(client);
    node.stop().await;
    server.stop().await;
    Ok(Fairness { phases, nats: nats_version, settle, window: seconds })
}

/// The figures as Markdown, between the document's fairness markers.
pub(crate) fn markdown(f: &Fairness, machine: &str, versions: &str) -> String {
    let mut out = format!("{BEGIN}\n\n{machine}; {versions}, nats-server {}.\n\n", f.nats);
    out.push_str(&format!(
        "Setup: one node with every role and one echo worker of {SLOTS} sequences at {TOKENS_PER_SEC:.0} tokens/s each \
         (a ceiling of {:.0} generated tokens/s); every request a streamed chat over HTTP with its tenant's key, a \
         {WORDS}-word prompt answered with {WORDS} tokens. Each phase has tenants of its own, settles {:.0} s, then \
         measures {:.0} s. Tokens are prompt plus completion from each answer's usage, of the requests that ended in \
         the window. Latency is submit to `[DONE]`; \"waiting\" is the share of the window in which the tenant had a \
         request sent and not yet started (no first token). A light B sends at a fixed rate whatever is in flight; a \
         backlogged B keeps {B_BACKLOG} in flight; A keeps {} in flight.\n\n",
        f64::from(SLOTS) * TOKENS_PER_SEC,
        f.settle,
        f.window,
        B_BACKLOG * A_FACTOR,
    ));
    out.push_str(
        "| phase | tenant (weight) | load | answers | tokens | share | tokens/s | first token p50 / p95 | latency p50 / p95 | waiting | failed |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in &f.phases {
        for (t, share) in p.tenants.iter().zip(p.shares()) {
            out.push_str(&format!(
                "| {} | {} ({}) | {} | {} | {} | {:.1} % | {:.0} | {:.0} / {:.0} ms | {:.0} / {:.0} ms | {:.0} % | {} |\n",
                p.phase.title(),
                t.who.label(),
                t.weight,
                t.load.describe(),
                t.ended,
                t.tokens,
                share * 100.0,
                t.tokens as f64 / f.window,
                t.first.p50(),
                t.first.percentile_ms(95.0),
                t.latency.p50(),
                t.latency.percentile_ms(95.0),
                t.waiting * 100.0,
                t.failed,
            ));
        }
    }
    out.push_str("\nTargets:\n\n");
    for c in checks(f) {
        let verdict = match c.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measurable",
        };
        out.push_str(&format!("- {}: {} ({verdict})\n", c.target, c.value));
    }
    out.push_str("\nContext:\n\n");
    if let Some(a) = f.tenant(Phase::AAlone, Who::A) {
        let ceiling = f64::from(SLOTS) * TOKENS_PER_SEC;
        out.push_str(&format!(
            "- capacity, A alone (one tenant): {:.0} tokens/s ({:.1} answers/s); generation {:.0} tokens/s, {:.0} % of the echo worker's ceiling\n",
            a.tokens as f64 / f.window,
            a.ended as f64 / f.window,
            a.generated_per_sec,
            ratio(a.generated_per_sec, ceiling) * 100.0
        ));
    }
    if let (Some(alone), Some(light)) = (f.tenant(Phase::BAlone, Who::B), f.tenant(Phase::Light, Who::B)) {
        out.push_str(&format!(
            "- B's time to first token p95, light: {:.0} ms with A flooding against {:.0} ms alone (on a saturated worker a request starts only when a running one ends, one every {:.0} ms on average with {SLOTS} slots)\n",
            light.first.percentile_ms(95.0),
            alone.first.percentile_ms(95.0),
            f64::from(WORDS) / TOKENS_PER_SEC / f64::from(SLOTS) * 1000.0
        ));
    }
    for phase in [Phase::Equal, Phase::Weighted] {
        if let (Some(p), Some(b)) = (f.phase(phase), f.tenant(phase, Who::B)) {
            out.push_str(&format!(
                "- phase {}: B had a request waiting {:.0} % of the window; Jain's index over tokens ÷ weight {:.3}\n",
                phase.number(),
                b.waiting * 100.0,
                p.jain()
            ));
        }
    }
    out.push_str(&format!("\n{END}\n"));
    out
}

/// Markers of the fairness benchmark's section in the document.
const BEGIN: &str = "<!-- bench-fairness:begin -->";
const END: &str = "<!-- bench-fairness:end -->";

/// Writes the section into `doc`.
pub(crate) fn write_doc(doc: &std::path::Path, generated: &str) -> std::io::Result<()> {
    super::sim::write_between(doc, (BEGIN, END), "Fair share between tenants", "bitinglip bench --fairness", generated)
}
