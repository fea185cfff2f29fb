//! Running one task: claim it (fenced by attempt number), generate, relay the text as
//! chunk events, record the outcome, and only then ack.
//!
//! Ordering is what makes "accepted" mean "never lost": the stream message is acked only
//! after the final state is in KV and the final event is published, so a crash anywhere
//! before that means redelivery, not loss. While generating, an in-progress ack every third
//! of AckWait keeps the lease, so a long generation is never redelivered while its worker
//! lives. Chunks cost one core-NATS publish each, never a JetStream round trip; a worker
//! whose lease was not confirmed recently checks that it still owns the task before it
//! publishes more, so a frozen worker that wakes up cannot interleave with its successor.
//!
//! The steps, in order: [`claim_delivery`], [`resume_prefix`], [`generate`] (with the
//! lease and the fence), `ending` (a pure decision: finish, hand back or retry; see
//! `worker/ending.rs`), then `finish` (fenced final write, final event, ack; see `worker/finish.rs`).

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use bitinglip_bus_schema::{TaskEvent, TaskId, TaskRecord, TaskSpec, TaskStarted, TaskState, TokenChunk, Usage};
use bitinglip_client::{prefix_of, Prefix};
use bitinglip_nats::store::queue::Delivery;
use bitinglip_nats::{
    now_ms,
    store::tasks::{Claim, Claimant},
    trace::TraceParent,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    ending::{ending, Ending, Generated},
    finish::{finish, record_usage},
    Running, WorkerShared,
};
use crate::{
    engine::{EngineError, GenerateRequest, Generation, Piece},
    metrics::metrics,
    NodeContext,
};

/// Puts what the generation did on its span and into the metrics: time to first token,
/// tokens, tokens per second after the first.
fn record_generation(
    span: &tracing::Span,
    model: &str,
    result: &Result<Generation, EngineError>,
    first_token: Option<Duration>,
    first_last: Option<(Instant, Instant)>,
    pieces: u64,
) {
    if let Ok(g) = result {
        if let Some(cached) = g.cached_tokens {
            metrics().prefix_cache_lookups.with_label_values(&[model]).inc();
            if cached > 0 {
                metrics().prefix_cache_hits.with_label_values(&[model]).inc();
                metrics().prefix_cache_tokens.with_label_values(&[model]).inc_by(u64::from(cached));
            }
            span.record("gen_ai.usage.cached_input_tokens", cached);
        }
        span.record("gen_ai.usage.input_tokens", g.prompt_tokens);
        span.record("gen_ai.usage.output_tokens", g.completion_tokens);
        span.record("gen_ai.response.finish_reasons", g.finish_reason.as_str());
    }
    if let Some(ttft) = first_token {
        span.record("time_to_first_token_ms", ttft.as_secs_f64() * 1000.0);
        metrics().time_to_first_token.with_label_values(&[model]).observe(ttft.as_secs_f64());
    }
    metrics().generated_tokens.with_label_values(&[model]).inc_by(pieces);
    if let Some((first, last)) = first_last.filter(|_| pieces > 1) {
        let secs = (last - first).as_secs_f64();
        if secs > 0.0 {
            let rate = (pieces - 1) as f64 / secs;
            span.record("tokens_per_second", rate);
            metrics().tokens_per_second.with_label_values(&[model]).observe(rate);
        }
    }
}

/// A delivery this attempt owns.
struct Owned {
    /// The record's revision after the claim: every later write is fenced on it.
    revision: u64,
    record: TaskRecord,
    ack_subject: String,
    claimed_at: Instant,
}

/// One delivery of a task, as every step of running it reads it.
pub(super) struct Attempt {
    /// The delivery, answered at the end (ack, nak, term) and kept meanwhile (progress).
    pub(super) msg: Delivery,
    /// The task.
    pub(super) spec: TaskSpec,
    /// Which delivery of the task this is, from 1.
    pub(super) number: u32,
    /// The caller's trace, continued by this attempt's events.
    pub(super) trace: Option<TraceParent>,
}

impl Attempt {
    fn owner(&self) -> Option<&str> {
        self.spec.owner.as_deref()
    }
}

/// What a claimed attempt holds while it generates: its claim, where an earlier
/// attempt's answer stopped, and its cancel token.
struct Claimed {
    owned: Owned,
    prefix: Prefix,
    cancel: CancellationToken,
}

fn publish_event_subject(ctx: &NodeContext, owner: Option<&str>, task: &TaskId) -> String {
    ctx.bus.subjects().task_events(owner, task)
}

pub(super) async fn publish_event(
    ctx: &NodeContext,
    owner: Option<&str>,
    task: &TaskId,
    event: &TaskEvent,
    trace: Option<&TraceParent>,
) {
    if let Err(err) = ctx.bus.publish(publish_event_subject(ctx, owner, task), event, trace).await {
        tracing::warn!(task.id = %task, cause = %err, "event not published");
    }
}

pub(super) async fn nak(msg: &Delivery, delay: Option<Duration>) {
    msg.nak(delay).await;
}

/// How long a delivery waits for the store (an election, a server rejoining its
/// cluster) before it is handed back: meanwhile it is kept with in-progress acks, so an
/// outage of the store does not use up the task's deliveries.
const STORE_PATIENCE: Duration = Duration::from_secs(60);

/// Runs `op` against the store until it answers or [`STORE_PATIENCE`] is over, keeping
/// the delivery `msg` meanwhile; the last error when it never answered.
async fn patiently<T, F, Fut>(msg: &Delivery, what: &str, mut op: F) -> Result<T, bitinglip_nats::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, bitinglip_nats::StoreError>>,
{
    let deadline = Instant::now() + STORE_PATIENCE;
    let mut delay = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(err) if Instant::now() + delay < deadline => {
                tracing::warn!(cause = %err, what, "store not answering; keeping the delivery and asking again");
                let _ = msg.progress().await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Runs one delivered task to its end (`spec`: the task, when the fetcher decoded it
/// already).
pub(super) async fn run_task(shared: &Arc<WorkerShared>, msg: Delivery, spec: Option<TaskSpec>) {
    let ctx = &shared.ctx;
    let attempt = msg.attempt();
    let trace = bitinglip_nats::trace_of(msg.message());
    let decoded = match spec {
        Some(spec) => Ok(spec),
        None => ctx.bus.decode::<TaskSpec>(msg.message()).map(|s| s.envelope.body),
    };
    let spec = match decoded {
        Ok(s) => s,
        Err(err) => {
            // Nothing can ever run this message: terminate it so it is not redelivered.
            tracing::error!(subject = %msg.subject(), cause = %err, "undecodable task terminated");
            let _ = msg.term().await;
            return;
        }
    };
    let model = spec.chat.model.as_str();
    if attempt > 1 {
        metrics().redeliveries.with_label_values(&[model]).inc();
    }
    // The trace goes on: task manager, then the time in the queue, then this worker.
    let queued = crate::spans::record_queue(trace.as_ref(), spec.accepted_ms, spec.task_id.as_str(), model, attempt);
    let span = tracing::info_span!("worker", otel.kind = "consumer", task.id = %spec.task_id, attempt, worker = %shared.worker_id,
        gen_ai.request.model = %model, trace_id = trace.map(|t| t.trace_id_hex()).unwrap_or_default());
    bitinglip_nats::trace::continue_trace(&span, queued.as_ref());
    run_claimed(shared, Attempt { msg, spec, number: attempt, trace }).instrument(span).await
}

async fn run_claimed(shared: &Arc<WorkerShared>, a: Attempt) {
    let ctx = &shared.ctx;
    let (spec, attempt) = (&a.spec, a.number);
    let task_id = spec.task_id.clone();
    let model = spec.chat.model.clone();
    let Some(owned) = claim_delivery(shared, &a).instrument(tracing::info_span!("claim", attempt)).await else {
        return;
    };
    let queue_time_ms = now_ms().saturating_sub(spec.accepted_ms) as f64;
    if attempt == 1 {
        metrics().queue_time.with_label_values(&[&model]).observe(queue_time_ms / 1000.0);
    }
    let Some(prefix) = resume_prefix(ctx, &a).await else { return };

    let cancel = start_running(shared, &a, &owned.ack_subject);
    let started = TaskStarted {
        task_id: task_id.clone(),
        attempt,
        worker: shared.worker_id.clone(),
        resume_from_seq: prefix.next_seq,
    };
    publish_event(ctx, a.owner(), &task_id, &TaskEvent::Started(started), a.trace.as_ref()).await;

    let claimed = Claimed { owned, prefix, cancel };
    let generated = generate(shared, &a, &claimed).await;
    let owned = claimed.owned;
    if generated.stale {
        return;
    }
    let max_deliver = ctx.config.jetstream.max_deliver.max(1) as u32;
    // A continued answer counts the earlier attempts' text by tokenizing it again, which
    // can come out longer than what was generated: never more than was asked for.
    let most = spec.chat.max_tokens.unwrap_or(u32::MAX);
    let usage_of = |g: &Generation| {
        let total = owned.claimed_at.elapsed();
        Usage {
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens.min(most),
            time_to_first_token_ms: generated.first_token.unwrap_or(total).as_secs_f64() * 1000.0,
            total_time_ms: total.as_secs_f64() * 1000.0,
            queue_time_ms,
            cached_tokens: g.cached_tokens.unwrap_or(0),
        }
    };
    let stop_ms = generated
        .cancelled_at
        .map(|at| generated.last_token.filter(|t| *t > at).map_or(0.0, |t| (t - at).as_secs_f64() * 1000.0));
    let usage = generated.result.as_ref().ok().map(usage_of);
    if let Some(u) = &usage {
        // The fair share is charged what the task cost: the prompt tokens the engine
        // computed (not those from its prefix cache) and those generated.
        let cost = u64::from(u.prompt_tokens.saturating_sub(u.cached_tokens)) + u64::from(u.completion_tokens);
        if let Some(tenant) = shared.share.ended(&task_id, cost) {
            metrics().tenant_tokens(&model, &tenant, cost);
        }
    }
    let ending = ending(
        &owned.record,
        &spec.chat,
        &generated,
        attempt,
        max_deliver,
        shared.hand_back.is_cancelled(),
        usage,
        stop_ms,
    );
    match &ending {
        Ending::HandBack => {
            tracing::info!("worker stopping; task handed back");
            metrics().tasks.with_label_values(&[&model, "handed_back"]).inc();
            nak(&a.msg, None).await;
        }
        Ending::Retry => {
            tracing::warn!(cause = ?generated.result.as_ref().err(), "engine failed; task will be retried");
            metrics().tasks.with_label_values(&[&model, "retried"]).inc();
            nak(&a.msg, Some(Duration::from_secs(1))).await;
        }
        Ending::Finish { outcome, .. } => {
            if *outcome == TaskState::Cancelled {
                tracing::info!(cancel_to_stop_ms = ?stop_ms, "cancelled");
                metrics().cancels.with_label_values(&[&model]).inc();
                if let Some(ms) = stop_ms {
                    metrics().cancel_to_stop.with_label_values(&[&model]).observe(ms / 1000.0);
                }
            }
            let tokens = generated.result.as_ref().map_or((0, 0), |g| (g.prompt_tokens, g.completion_tokens.min(most)));
            finish(ctx, &a, ending, owned.revision, tokens).await;
        }
    }
}

/// Claims the delivery in the task's record. `None` when this attempt does not own the
/// task; the message was then acked, terminated or handed back as the record says.
async fn claim_delivery(shared: &WorkerShared, a: &Attempt) -> Option<Owned> {
    let (msg, spec, attempt) = (&a.msg, &a.spec, a.number);
    let ack_subject = msg.ack_subject();
    let stream_seq = msg.stream_sequence();
    let claimed_at = Instant::now();
    let who = Claimant { worker: &shared.worker_id, attempt, stream_seq, ack_subject: &ack_subject };
    let tasks = shared.ctx.store.tasks();
    match patiently(msg, "claim", || tasks.claim(spec, &who)).await {
        Ok(Claim::Owned { revision, record }) => Some(Owned { revision, record: *record, ack_subject, claimed_at }),
        Ok(Claim::Final(record)) => {
            // Finished before a crash stopped the ack: its usage may not have been counted.
            // Counting it again is deduplicated, so count, then ack.
            if record_usage(&shared.ctx, &record.task_id).await.is_ok() {
                let _ = msg.ack().await;
            } else {
                nak(msg, Some(Duration::from_secs(1))).await;
            }
            None
        }
        Ok(Claim::Stale) => {
            tracing::info!("stale delivery ignored");
            None
        }
        Ok(Claim::Duplicate) => {
            tracing::info!("duplicate copy of a running task dropped");
            let _ = msg.term().await;
            None
        }
        Err(err) => {
            tracing::warn!(cause = %err, "claim failed; handing back");
            nak(msg, Some(Duration::from_secs(1))).await;
            None
        }
    }
}

/// What earlier attempts streamed, which this one continues after. `None` when it
/// cannot be read: the task was handed back.
async fn resume_prefix(ctx: &NodeContext, a: &Attempt) -> Option<Prefix> {
    if a.number == 1 {
        return Some(Prefix::default());
    }
    let msg = &a.msg;
    match patiently(msg, "earlier chunks", || ctx.store.stored_events(a.owner(), &a.spec.task_id)).await {
        Ok(events) => {
            let prefix = prefix_of(&events);
            if prefix.next_seq > 0 {
                tracing::info!(resume_from_seq = prefix.next_seq, "continuing after an earlier attempt");
            }
            Some(prefix)
        }
        Err(err) => {
            tracing::warn!(cause = %err, "cannot read earlier chunks; handing back");
            nak(msg, Some(Duration::from_secs(1))).await;
            None
        }
    }
}

/// Marks the task running in this worker (for cancels and the heartbeat) and returns
/// its cancel token, already fired when a cancel arrived just before the claim.
fn start_running(shared: &WorkerShared, a: &Attempt, ack_subject: &str) -> CancellationToken {
    let (task_id, attempt) = (&a.spec.task_id, a.number);
    let cancel = CancellationToken::new();
    let owner = a.owner().map(String::from);
    let cancelled_before =
        shared.recent_cancels.lock().ok().and_then(|mut r| r.remove(&(owner.clone(), task_id.clone())));
    if let Ok(mut running) = shared.running.lock() {
        running.insert(
            task_id.clone(),
            Running {
                owner,
                cancel: cancel.clone(),
                attempt,
                ack_subject: ack_subject.to_string(),
                cancelled_at: cancelled_before,
            },
        );
    }
    if cancelled_before.is_some() {
        cancel.cancel();
    }
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    shared.publish_info();
    cancel
}

/// Runs the engine and relays its text as chunk events, holding the lease (in-progress
/// acks) and the fence (no chunk without a recent confirmation of the claim).
async fn generate(shared: &Arc<WorkerShared>, a: &Attempt, claimed: &Claimed) -> Generated {
    let (msg, spec, attempt, trace) = (&a.msg, &a.spec, a.number, a.trace.as_ref());
    let Claimed { owned, prefix, cancel } = claimed;
    let ctx = &shared.ctx;
    let task_id = &spec.task_id;
    let model = spec.chat.model.as_str();
    // The lease: an in-progress ack resets AckWait while we generate. Fence: the chunks
    // below are published only while the lease was confirmed within half the shorter of
    // AckWait and the node TTL (after which a cluster manager may hand the task on).
    let ack_wait = ctx.config.jetstream.ack_wait;
    let fence_after = ack_wait.min(ctx.config.cluster.node_ttl) / 2;
    let confirmed = std::sync::Mutex::new(Instant::now());
    let stale = CancellationToken::new();
    // Confirms the claim still stands; when it does not, stops this attempt for good. A
    // store that cannot be reached confirms nothing: the relay holds its next chunk until
    // a confirmation (or a loss) comes.
    let confirm = || async {
        match claim_of(ctx.store.tasks().still_owner(task_id, owned.revision).await) {
            ClaimCheck::Confirmed => {
                if let Ok(mut c) = confirmed.lock() {
                    *c = Instant::now();
                }
                ClaimCheck::Confirmed
            }
            ClaimCheck::Lost => {
                tracing::warn!("lost the task to a newer attempt; stopping");
                stale.cancel();
                cancel.cancel();
                ClaimCheck::Lost
            }
            ClaimCheck::Unknown => {
                tracing::warn!("cannot confirm the claim now; not confirmed");
                ClaimCheck::Unknown
            }
        }
    };
    let lease = async {
        let mut tick = tokio::time::interval((ack_wait / 3).min(fence_after));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(err) = msg.progress().await {
                tracing::warn!(cause = %err, "in-progress ack failed");
            }
            confirm().await;
        }
    };

    // The drain grace ending cancels the sequence too, and hands the task back.
    let hand_back = shared.hand_back.clone();
    let engine_cancel = cancel.clone();
    let watch_hand_back = async {
        hand_back.cancelled().await;
        engine_cancel.cancel();
        std::future::pending::<()>().await
    };

    // A constrained answer cannot go on from the middle (its grammar starts at the
    // beginning): a later attempt generates it again from its start and streams only what
    // goes beyond what was streamed before. Sampling is greedy unless asked otherwise, so
    // the answer is the same one.
    let restart = spec.chat.format.is_some() || spec.chat.tool_choice.is_forced();
    let mut replay = if restart { prefix.text.len() } else { 0 };
    let request = GenerateRequest {
        chat: spec.chat.clone(),
        prefix: if restart { String::new() } else { prefix.text.clone() },
        max_tokens: spec.chat.max_tokens.unwrap_or(256),
    };
    let (tx, mut rx) = mpsc::channel::<Piece>(256);
    // In its own task, so an engine that panics fails this attempt, not the slot.
    let engine = shared.engine.clone();
    let engine_token = cancel.clone();
    let run_engine = async move {
        match tokio::spawn(async move { engine.generate(request, tx, engine_token).await }).await {
            Ok(result) => result,
            Err(join) => Err(EngineError::Failed(format!("the engine panicked: {join}"))),
        }
    };
    let (mut text, mut logprobs) =
        if restart { (String::new(), vec![]) } else { (prefix.text.clone(), prefix.logprobs.clone()) };
    let mut tool_calls = Vec::new();
    let mut seq = prefix.next_seq;
    let mut first_token: Option<Duration> = None;
    let mut last_token: Option<Instant> = None;
    let mut first_at: Option<Instant> = None;
    let mut pieces = 0u64;
    let generation = tracing::info_span!(
        "generate",
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.cached_input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        time_to_first_token_ms = tracing::field::Empty,
        tokens_per_second = tracing::field::Empty,
        gen_ai.response.finish_reasons = tracing::field::Empty
    );
    // Made once for every chunk of this attempt: the subject, the trace header, and the
    // model's inter-token histogram.
    let events_subject = async_nats::Subject::from(publish_event_subject(ctx, spec.owner.as_deref(), task_id));
    let chunk_headers = bitinglip_nats::Bus::headers(trace);
    let inter_token = metrics().inter_token_latency.with_label_values(&[model]);
    let relay = async {
        while let Some(piece) = rx.recv().await {
            if stale.is_cancelled() {
                continue;
            }
            let fresh = confirmed.lock().map(|c| c.elapsed() < fence_after).unwrap_or(false);
            if !fresh {
                // Held, not dropped, while the store cannot say: the answer keeps every piece.
                let mut delay = Duration::from_millis(50);
                while confirm().await == ClaimCheck::Unknown && !stale.is_cancelled() && !cancel.is_cancelled() {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                if stale.is_cancelled() {
                    continue;
                }
            }
            let now = Instant::now();
            first_token.get_or_insert_with(|| now - owned.claimed_at);
            if let Some(last) = last_token {
                inter_token.observe((now - last).as_secs_f64());
            }
            last_token = Some(now);
            first_at.get_or_insert(now);
            pieces += 1;
            let before = text.len();
            text.push_str(&piece.text);
            logprobs.extend(piece.logprobs.iter().cloned());
            tool_calls.extend(piece.tool_calls.iter().cloned());
            let Piece { text: mut piece_text, logprobs: piece_logprobs, tool_calls: piece_calls } = piece;
            if replay > 0 {
                // Streamed already by an earlier attempt: only what goes beyond it is new.
                if text.len() <= replay {
                    continue;
                }
                let mut cut = replay - before;
                while !piece_text.is_char_boundary(cut) {
                    cut += 1;
                }
                piece_text.drain(..cut);
                replay = 0;
            }
            let chunk = TaskEvent::Chunk(TokenChunk {
                task_id: task_id.clone(),
                attempt,
                seq,
                text: piece_text,
                logprobs: piece_logprobs,
                tool_calls: piece_calls,
            });
            seq += 1;
            if let Err(err) = ctx.bus.publish_prepared(&events_subject, &chunk_headers, &chunk).await {
                tracing::warn!(task.id = %task_id, cause = %err, "chunk not published");
            }
        }
    };
    let result = tokio::select! {
        (result, ()) = futures::future::join(run_engine, relay).instrument(generation.clone()) => result,
        _ = lease => unreachable!("the lease loop never ends"),
        _ = watch_hand_back => unreachable!("the hand-back watch never ends"),
    };
    record_generation(&generation, model, &result, first_token, first_at.zip(last_token), pieces);
    if let (Some(ttft), Ok(mut recent)) = (first_token, shared.first_tokens.lock()) {
        recent.add(Instant::now(), ttft);
    }
    if let Some(cached) = result.as_ref().ok().and_then(|g| g.cached_tokens) {
        shared.count_prefix_lookup(cached);
    }

    let cancelled_at = shared.running.lock().ok().and_then(|mut r| r.remove(task_id)).and_then(|t| t.cancelled_at);
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    shared.publish_info();
    Generated {
        result,
        text,
        logprobs,
        tool_calls,
        chunks: seq,
        first_token,
        last_token,
        stale: stale.is_cancelled(),
        cancelled_at,
    }
}

/// What a check of the claim says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimCheck {
    /// The record still holds this attempt's claim.
    Confirmed,
    /// A newer attempt wrote the record: stop.
    Lost,
    /// The store could not answer: not confirmed (never "still owner").
    Unknown,
}

fn claim_of(still_owner: Result<bool, bitinglip_nats::StoreError>) -> ClaimCheck {
    match still_owner {
        Ok(true) => ClaimCheck::Confirmed,
        Ok(false) => ClaimCheck::Lost,
        Err(_) => ClaimCheck::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_error_never_confirms_a_claim() {
        assert_eq!(claim_of(Ok(true)), ClaimCheck::Confirmed);
        assert_eq!(claim_of(Ok(false)), ClaimCheck::Lost);
        let down = bitinglip_nats::StoreError::Unavailable { what: "task status store", message: "timed out".into() };
        assert_eq!(claim_of(Err(down)), ClaimCheck::Unknown);
    }
}
