//! `bitinglip bench --against MODEL --model-dir DIR`: the streaming comparison against a
//! cluster that is already running (the config's NATS, as the CLI reaches it): the
//! deployment `MODEL` served by the platform against the same folder loaded in this
//! process with the same engine settings, at each number of concurrent streams, with
//! tokens per second and the time to the first token. What `.ci/gpu-check` runs on a GPU
//! machine (and on a CPU one, to try it first); the figures go to `--json`.

use std::{path::PathBuf, time::Duration};

use bitinglip_config::{Config, ModelConfig};
use serde_json::{json, Value};

use super::{
    platform::{self, Client},
    step, stream,
};

/// What the comparison needs besides the config.
pub(crate) struct Against {
    /// The platform's deployment to stream from.
    pub(crate) model: String,
    /// Its folder, loaded in this process for the direct side.
    pub(crate) dir: PathBuf,
    /// Concurrent streams to measure.
    pub(crate) streams: Vec<usize>,
    /// Tokens each stream generates.
    pub(crate) tokens: u32,
    /// Sequences the direct engine runs at once (as the deployment's `max_sequences`).
    pub(crate) max_sequences: u32,
    /// Its context (as the deployment's `context_length`).
    pub(crate) context_length: Option<u32>,
    /// Alternating rounds; each side's best counts.
    pub(crate) rounds: u32,
    /// Where the figures go, as JSON.
    pub(crate) json: Option<PathBuf>,
}

/// Runs the comparison and prints (and writes) the figures.
pub(crate) async fn run(config: &Config, a: Against) -> anyhow::Result<()> {
    let bus = crate::commands::client_bus(config).await?;
    let store = bitinglip_nats::Store::open(&bus, config).await?;
    let client = Client { bus, store };
    step(&format!("waiting for {} to be served", a.model));
    platform::wait_ready(&client, &a.model, Duration::from_secs(600)).await?;

    step(&format!("loading {} in this process", a.dir.display()));
    let mut model = ModelConfig::new(a.dir.display().to_string());
    model.max_sequences = a.max_sequences;
    model.context_length = a.context_length;
    let engine = bitinglip_actors::engine::load_mistralrs(&model, &config.worker).await?;
    // Both sides warm: the first generation compiles kernels and fills pools.
    stream::direct(&engine, 1, 4).await?;
    stream::platform(&client, &a.model, 1, 4).await?;

    let mut rows = Vec::new();
    for &streams in &a.streams {
        let (mut best_platform, mut best_direct): (Option<stream::StreamRun>, Option<stream::StreamRun>) = (None, None);
        for round in 1..=a.rounds.max(1) {
            step(&format!("round {round}: platform, {streams} stream(s)"));
            let p = stream::platform(&client, &a.model, streams, a.tokens).await?;
            step(&format!("round {round}: direct, {streams} stream(s)"));
            let d = stream::direct(&engine, streams, a.tokens).await?;
            if best_platform.as_ref().is_none_or(|b| p.tokens_per_sec() > b.tokens_per_sec()) {
                best_platform = Some(p);
            }
            if best_direct.as_ref().is_none_or(|b| d.tokens_per_sec() > b.tokens_per_sec()) {
                best_direct = Some(d);
            }
        }
        let (p, d) = (best_platform.expect("a round ran"), best_direct.expect("a round ran"));
        let ratio = if d.tokens_per_sec() > 0.0 { p.tokens_per_sec() / d.tokens_per_sec() } else { 0.0 };
        eprintln!(
            "bench: {streams} stream(s): platform {:.1} tokens/s, direct {:.1}, ratio {ratio:.3}; first token p50 {:.1} ms against {:.1} ms",
            p.tokens_per_sec(),
            d.tokens_per_sec(),
            p.first_p50_ms(),
            d.first_p50_ms()
        );
        rows.push(json!({
            "streams": streams,
            "platform": {"tokens": p.tokens, "secs": p.secs, "tokens_per_sec": p.tokens_per_sec(), "first_token_p50_ms": p.first_p50_ms()},
            "direct": {"tokens": d.tokens, "secs": d.secs, "tokens_per_sec": d.tokens_per_sec(), "first_token_p50_ms": d.first_p50_ms()},
            "ratio": ratio,
            "first_token_p50_diff_ms": p.first_p50_ms() - d.first_p50_ms(),
        }));
    }
    let report: Value = json!({
        "model": a.model,
        "dir": a.dir.display().to_string(),
        "tokens_per_stream": a.tokens,
        "max_sequences": a.max_sequences,
        "context_length": a.context_length,
        "device": bitinglip_actors::gpus::device(config.worker.force_cpu),
        "gpus": bitinglip_actors::gpus::inventory(config.worker.gpu_budget),
        "machine": super::machine(),
        "build": super::build_profile(),
        "rows": rows,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        step(&format!("wrote {}", path.display()));
    }
    Ok(())
}
