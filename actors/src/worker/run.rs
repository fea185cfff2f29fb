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

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, kv, AckKind};
use bitinglip_bus_schema::{
    decode_body, encode, Envelope, ErrorKind, FinishReason, TaskCompleted, TaskEvent, TaskFailed, TaskId, TaskRecord,
    TaskSpec, TaskStarted, TaskState, TokenChunk, Usage, WireError,
};
use bitinglip_nats::{now_ms, trace::TraceParent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    engine::{EngineError, GenerateRequest},
    resume::{read_prefix, Prefix},
    Running, WorkerShared,
};
use crate::{metrics::metrics, NodeContext};

/// Puts what the generation did on its span and into the metrics: time to first token,
/// tokens, tokens per second after the first.
fn record_generation(
    span: &tracing::Span,
    model: &str,
    result: &Result<super::engine::Generation, EngineError>,
    first_token: Option<Duration>,
    first_last: Option<(Instant, Instant)>,
    pieces: u64,
) {
    if let Ok(g) = result {
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

#[allow(clippy::large_enum_variant)] // one per claim, on the stack of one task
enum Claim {
    /// This attempt owns the task; writes are fenced on this KV revision.
    Owned { revision: u64, record: Box<TaskRecord> },
    /// Already finished (redelivered after its final write, before the ack), or cancelled
    /// while queued.
    Final,
    /// A newer attempt owns it.
    Stale,
    /// Another copy of the same task is running.
    Duplicate,
}

fn record_bytes(ctx: &NodeContext, record: &TaskRecord) -> bytes::Bytes {
    let env = Envelope::new(ulid::Ulid::new().to_string(), now_ms(), ctx.node_id(), record);
    encode(&env).expect("a task record always encodes").into()
}

async fn claim(shared: &WorkerShared, spec: &TaskSpec, attempt: u32, stream_seq: u64, ack_subject: &str) -> Result<Claim, String> {
    let ctx = &shared.ctx;
    let key = spec.task_id.as_str();
    for _ in 0..5 {
        let entry = ctx.kv.tasks.entry(key).await.map_err(|e| e.to_string())?;
        let now = now_ms();
        let (mut record, revision) = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let record = decode_body::<TaskRecord>(&e.value, usize::MAX).map_err(|e| e.to_string())?;
                (record, Some(e.revision))
            }
            other => (
                TaskRecord::queued(spec.task_id.clone(), spec.chat.model.clone(), spec.priority, spec.accepted_ms),
                other.map(|e| e.revision),
            ),
        };
        if record.state.is_final() {
            return Ok(Claim::Final);
        }
        if record.attempt > attempt {
            return Ok(Claim::Stale);
        }
        if record.state == TaskState::Running && record.stream_seq != 0 && record.stream_seq != stream_seq {
            // A second copy of a task that is already running (resubmitted after the
            // dedupe window): the first copy carries it.
            return Ok(Claim::Duplicate);
        }
        record.state = TaskState::Running;
        record.stream_seq = stream_seq;
        record.attempt = attempt;
        record.worker = Some(shared.worker_id.clone());
        record.ack_subject = Some(ack_subject.to_string());
        record.updated_ms = now;
        let bytes = record_bytes(ctx, &record);
        let result = match revision {
            Some(rev) => ctx.kv.tasks.update(key, bytes, rev).await.map_err(|e| e.to_string()),
            None => ctx.kv.tasks.create(key, bytes).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(revision) => return Ok(Claim::Owned { revision, record: Box::new(record) }),
            // Someone wrote in between (a newer attempt, a cancel): read again.
            Err(_) => continue,
        }
    }
    Err("task status record kept changing under the claim".into())
}

/// True while the record still carries our claim's revision (nobody else wrote it).
async fn still_owner(ctx: &NodeContext, task_id: &TaskId, revision: u64) -> bool {
    match ctx.kv.tasks.entry(task_id.as_str()).await {
        Ok(Some(e)) => e.revision == revision,
        Ok(None) => false,
        // The store is unreachable: keep going; the final write is fenced anyway.
        Err(_) => true,
    }
}

/// Writes the final record, fenced on the claim's revision. False when someone else
/// wrote the record (a newer attempt): then this attempt must publish nothing more and not
/// ack.
async fn finish_record(ctx: &NodeContext, mut record: TaskRecord, revision: u64) -> Result<bool, String> {
    record.updated_ms = now_ms();
    let bytes = record_bytes(ctx, &record);
    match ctx.kv.tasks.update(record.task_id.as_str(), bytes, revision).await {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(err) => Err(err.to_string()),
    }
}

async fn publish_event(ctx: &NodeContext, task: &TaskId, event: &TaskEvent, trace: Option<&TraceParent>) {
    if let Err(err) = ctx.bus.publish(ctx.bus.subjects().task_events(task), event, trace).await {
        tracing::warn!(task.id = %task, cause = %err, "event not published");
    }
}

/// Runs one delivered task to its end.
pub(super) async fn run_task(shared: &Arc<WorkerShared>, msg: jetstream::Message) {
    let ctx = &shared.ctx;
    let attempt = msg.info().map(|i| i.delivered as u32).unwrap_or(1);
    let trace = bitinglip_nats::trace_of(&msg.message);
    let spec = match ctx.bus.decode::<TaskSpec>(&msg.message) {
        Ok(s) => s.envelope.body,
        Err(err) => {
            // Nothing can ever run this message: terminate it so it is not redelivered.
            tracing::error!(subject = %msg.subject, cause = %err, "undecodable task terminated");
            let _ = msg.ack_with(AckKind::Term).await;
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
    run_claimed(shared, msg, spec, attempt, trace).instrument(span).await
}

async fn run_claimed(shared: &Arc<WorkerShared>, msg: jetstream::Message, spec: TaskSpec, attempt: u32, trace: Option<TraceParent>) {
    let ctx = &shared.ctx;
    let task_id = spec.task_id.clone();
    let ack_subject = msg.reply.as_ref().map(|r| r.to_string()).unwrap_or_default();
    let stream_seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let claimed_at = Instant::now();
    let model = spec.chat.model.clone();
    let claimed = claim(shared, &spec, attempt, stream_seq, &ack_subject).instrument(tracing::info_span!("claim", attempt)).await;
    let (revision, record) = match claimed {
        Ok(Claim::Owned { revision, record }) => (revision, *record),
        Ok(Claim::Final) => {
            let _ = msg.double_ack().await;
            return;
        }
        Ok(Claim::Stale) => {
            tracing::info!("stale delivery ignored");
            return;
        }
        Ok(Claim::Duplicate) => {
            tracing::info!("duplicate copy of a running task dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        Err(err) => {
            tracing::warn!(cause = %err, "claim failed; handing back");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    };
    let queue_time_ms = now_ms().saturating_sub(spec.accepted_ms) as f64;
    if attempt == 1 {
        metrics().queue_time.with_label_values(&[&model]).observe(queue_time_ms / 1000.0);
    }

    // A redelivered task continues after what earlier attempts streamed.
    let prefix = if attempt > 1 {
        match read_prefix(ctx, &task_id).await {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!(cause = %err, "cannot read earlier chunks; handing back");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        }
    } else {
        Prefix::default()
    };
    if prefix.next_seq > 0 {
        tracing::info!(resume_from_seq = prefix.next_seq, "continuing after an earlier attempt");
    }

    let cancel = CancellationToken::new();
    let cancelled_before = shared.recent_cancels.lock().ok().and_then(|mut r| r.remove(&task_id));
    if let Ok(mut running) = shared.running.lock() {
        running.insert(task_id.clone(), Running {
            cancel: cancel.clone(),
            attempt,
            ack_subject: ack_subject.clone(),
            cancelled_at: cancelled_before,
        });
    }
    if cancelled_before.is_some() {
        cancel.cancel();
    }
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    shared.publish_info();

    publish_event(ctx, &task_id, &TaskEvent::Started(TaskStarted {
        task_id: task_id.clone(),
        attempt,
        worker: shared.worker_id.clone(),
        resume_from_seq: prefix.next_seq,
    }), trace.as_ref()).await;

    // The lease: an in-progress ack resets AckWait while we generate. Fence: the chunks
    // below are published only while the lease was confirmed within half the shorter of
    // AckWait and the node TTL (after which a cluster manager may hand the task on).
    let ack_wait = ctx.config.jetstream.ack_wait;
    let fence_after = ack_wait.min(ctx.config.cluster.node_ttl) / 2;
    let confirmed = std::sync::Mutex::new(Instant::now());
    let stale = CancellationToken::new();
    // Confirms the claim still stands; when it does not, stops this attempt for good.
    let confirm = || async {
        if still_owner(ctx, &task_id, revision).await {
            if let Ok(mut c) = confirmed.lock() {
                *c = Instant::now();
            }
            true
        } else {
            tracing::warn!("lost the task to a newer attempt; stopping");
            stale.cancel();
            cancel.cancel();
            false
        }
    };
    let lease = async {
        let mut tick = tokio::time::interval((ack_wait / 3).min(fence_after));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(err) = msg.ack_with(AckKind::Progress).await {
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

    let request = GenerateRequest {
        messages: spec.chat.messages.clone(),
        prefix: prefix.text.clone(),
        max_tokens: spec.chat.max_tokens.unwrap_or(256),
        temperature: spec.chat.temperature,
        top_p: spec.chat.top_p,
        stop: spec.chat.stop.clone(),
    };
    let (tx, mut rx) = mpsc::channel::<String>(256);
    // In its own task, so an engine that panics fails this attempt, not the slot.
    let engine = shared.engine.clone();
    let engine_token = cancel.clone();
    let generate = async move {
        match tokio::spawn(async move { engine.generate(request, tx, engine_token).await }).await {
            Ok(result) => result,
            Err(join) => Err(EngineError::Failed(format!("the engine panicked: {join}"))),
        }
    };
    let mut text = prefix.text.clone();
    let mut seq = prefix.next_seq;
    let mut first_token: Option<Duration> = None;
    let mut last_token: Option<Instant> = None;
    let mut first_at: Option<Instant> = None;
    let mut pieces = 0u64;
    let generation = tracing::info_span!("generate", gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty, time_to_first_token_ms = tracing::field::Empty,
        tokens_per_second = tracing::field::Empty, gen_ai.response.finish_reasons = tracing::field::Empty);
    let relay = async {
        while let Some(piece) = rx.recv().await {
            if stale.is_cancelled() {
                continue;
            }
            let fresh = confirmed.lock().map(|c| c.elapsed() < fence_after).unwrap_or(true);
            if !fresh && !confirm().await {
                continue;
            }
            let now = Instant::now();
            first_token.get_or_insert_with(|| now - claimed_at);
            if let Some(last) = last_token {
                metrics().inter_token_latency.with_label_values(&[&model]).observe((now - last).as_secs_f64());
            }
            last_token = Some(now);
            first_at.get_or_insert(now);
            pieces += 1;
            text.push_str(&piece);
            let chunk = TaskEvent::Chunk(TokenChunk { task_id: task_id.clone(), attempt, seq, text: piece });
            seq += 1;
            publish_event(ctx, &task_id, &chunk, trace.as_ref()).await;
        }
    };
    let result = tokio::select! {
        (result, ()) = futures::future::join(generate, relay).instrument(generation.clone()) => result,
        _ = lease => unreachable!("the lease loop never ends"),
        _ = watch_hand_back => unreachable!("the hand-back watch never ends"),
    };
    let total = claimed_at.elapsed();
    record_generation(&generation, &model, &result, first_token, first_at.zip(last_token), pieces);
    drop(generation);

    let cancelled_at = shared.running.lock().ok().and_then(|mut r| r.remove(&task_id)).and_then(|t| t.cancelled_at);
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    shared.publish_info();

    if stale.is_cancelled() {
        return;
    }
    let fail = |error: WireError| {
        let mut r = record.clone();
        r.state = if error.kind == ErrorKind::Cancelled { TaskState::Cancelled } else { TaskState::Failed };
        r.error = Some(error);
        r
    };
    let (final_record, event, ack) = match result {
        Ok(_) if shared.hand_back.is_cancelled() => {
            // Hand back: the task goes to another worker at once, which continues it.
            tracing::info!("worker stopping; task handed back");
            metrics().tasks.with_label_values(&[&model, "handed_back"]).inc();
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        Ok(g) if g.finish_reason == FinishReason::Cancelled => {
            // From the cancel reaching us to the engine's last token.
            let stop_ms = cancelled_at.map(|at| last_token.filter(|t| *t > at).map_or(0.0, |t| (t - at).as_secs_f64() * 1000.0));
            tracing::info!(cancel_to_stop_ms = ?stop_ms, "cancelled");
            metrics().cancels.with_label_values(&[&model]).inc();
            if let Some(ms) = stop_ms {
                metrics().cancel_to_stop.with_label_values(&[&model]).observe(ms / 1000.0);
            }
            let error = WireError::new(ErrorKind::Cancelled, "cancelled by the client");
            let event = TaskEvent::Failed(TaskFailed { task_id: task_id.clone(), attempt, error: error.clone() });
            let mut r = fail(error);
            r.cancel_to_stop_ms = stop_ms;
            (r, event, AckKind::Ack)
        }
        Ok(g) => {
            let usage = Usage {
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
                time_to_first_token_ms: first_token.unwrap_or(total).as_secs_f64() * 1000.0,
                total_time_ms: total.as_secs_f64() * 1000.0,
                queue_time_ms,
            };
            let completed = TaskCompleted {
                task_id: task_id.clone(),
                attempt,
                text: text.clone(),
                finish_reason: g.finish_reason,
                usage,
                chunks: seq,
            };
            let mut r = record.clone();
            r.state = TaskState::Completed;
            r.result = Some(completed.clone());
            (r, TaskEvent::Completed(completed), AckKind::Ack)
        }
        Err(err @ (EngineError::Invalid(_) | EngineError::ContextLength(_))) => {
            let kind = if matches!(err, EngineError::ContextLength(_)) { ErrorKind::ContextLength } else { ErrorKind::InvalidRequest };
            let error = WireError::new(kind, err.to_string());
            let event = TaskEvent::Failed(TaskFailed { task_id: task_id.clone(), attempt, error: error.clone() });
            (fail(error), event, AckKind::Term)
        }
        Err(EngineError::Failed(reason)) => {
            let max = ctx.config.jetstream.max_deliver.max(1) as u32;
            if attempt < max {
                tracing::warn!(cause = %reason, "engine failed; task will be retried");
                metrics().tasks.with_label_values(&[&model, "retried"]).inc();
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
            let error = WireError::new(ErrorKind::Engine, format!("failed after {attempt} attempts: {reason}"));
            let event = TaskEvent::Failed(TaskFailed { task_id: task_id.clone(), attempt, error: error.clone() });
            (fail(error), event, AckKind::Term)
        }
    };

    let outcome = match final_record.state {
        TaskState::Completed => "completed",
        TaskState::Cancelled => "cancelled",
        _ => "failed",
    };
    match finish_record(ctx, final_record, revision).await {
        Ok(true) => metrics().tasks.with_label_values(&[&model, outcome]).inc(),
        Ok(false) => {
            tracing::info!("a newer attempt owns the task; result dropped");
            return;
        }
        Err(err) => {
            // The record could not be written (store unreachable): hand back rather than
            // ack a task whose outcome nobody can read.
            tracing::warn!(cause = %err, "final record not written; handing back");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    }
    publish_event(ctx, &task_id, &event, trace.as_ref()).await;
    let acked = match ack {
        AckKind::Ack => msg.double_ack().await,
        other => msg.ack_with(other).await,
    };
    if let Err(err) = acked {
        tracing::warn!(cause = %err, "ack not confirmed; a redelivery will find the task finished");
    }
}
