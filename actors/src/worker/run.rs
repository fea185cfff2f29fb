//! Running one task: claim it (fenced by attempt number), generate, relay the text as
//! chunk events, record the outcome, and only then ack.
//!
//! Ordering is what makes "accepted" mean "never lost": the stream message is acked only
//! after the final state is in KV and the final event is published, so a crash anywhere
//! before that means redelivery, not loss. While generating, an in-progress ack every third
//! of AckWait keeps the lease, so a long generation is never redelivered while its worker
//! lives. Chunks cost one core-NATS publish each, never a JetStream round trip.

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::PullConsumer, kv, AckKind};
use bitinglip_bus_schema::{
    decode_body, encode, Envelope, ErrorKind, FinishReason, TaskCompleted, TaskEvent, TaskFailed, TaskId, TaskRecord,
    TaskSpec, TaskStarted, TaskState, TokenChunk, Usage, WireError,
};
use bitinglip_nats::{now_ms, trace::TraceParent, worker_consumer_config};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    engine::{EngineError, GenerateRequest},
    WorkerShared,
};
use crate::NodeContext;

/// Creates (or finds) the model's durable consumer.
pub(super) async fn ensure_consumer(ctx: &NodeContext, model: &str) -> Result<PullConsumer, ractor::ActorProcessingErr> {
    let subjects = ctx.bus.subjects();
    let stream = ctx.bus.jetstream().get_stream(subjects.tasks_stream()).await?;
    let config = worker_consumer_config(subjects, model, &ctx.config.jetstream);
    let name = config.durable_name.clone().unwrap_or_default();
    Ok(stream.get_or_create_consumer(&name, config).await?)
}

/// One sequence slot: pull one task, run it, repeat, until shutdown.
pub(super) async fn slot_loop(shared: Arc<WorkerShared>, consumer: PullConsumer, slot: u32) {
    let mut backoff = Duration::from_millis(100);
    while !shared.shutdown.is_cancelled() {
        let fetch = consumer.fetch().max_messages(1).expires(Duration::from_secs(10)).messages();
        let mut batch = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            b = fetch => match b {
                Ok(b) => b,
                Err(err) => {
                    tracing::warn!(slot, cause = %err, "fetch failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        loop {
            let next = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                n = batch.next() => n,
            };
            match next {
                None => break,
                Some(Ok(msg)) => run_task(&shared, msg).await,
                Some(Err(err)) => {
                    tracing::debug!(slot, cause = %err, "fetch ended");
                    break;
                }
            }
        }
    }
}

enum Claim {
    /// This attempt owns the task; writes are fenced on this KV revision.
    Owned { revision: u64, record: TaskRecord },
    /// Already finished (redelivered after its final write, before the ack).
    Final,
    /// A newer attempt owns it.
    Stale,
}

fn record_bytes(ctx: &NodeContext, record: &TaskRecord) -> bytes::Bytes {
    let env = Envelope::new(ulid::Ulid::new().to_string(), now_ms(), ctx.node_id(), record);
    encode(&env).expect("a task record always encodes").into()
}

async fn claim(shared: &WorkerShared, spec: &TaskSpec, attempt: u32) -> Result<Claim, String> {
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
                TaskRecord {
                    task_id: spec.task_id.clone(),
                    model: spec.chat.model.clone(),
                    state: TaskState::Queued,
                    attempt: 0,
                    worker: None,
                    created_ms: spec.accepted_ms,
                    updated_ms: now,
                    result: None,
                    error: None,
                },
                other.map(|e| e.revision),
            ),
        };
        if record.state.is_final() {
            return Ok(Claim::Final);
        }
        if record.attempt > attempt {
            return Ok(Claim::Stale);
        }
        record.state = TaskState::Running;
        record.attempt = attempt;
        record.worker = Some(shared.worker_id.clone());
        record.updated_ms = now;
        let bytes = record_bytes(ctx, &record);
        let result = match revision {
            Some(rev) => ctx.kv.tasks.update(key, bytes, rev).await.map_err(|e| e.to_string()),
            None => ctx.kv.tasks.create(key, bytes).await.map_err(|e| e.to_string()),
        };
        match result {
            Ok(revision) => return Ok(Claim::Owned { revision, record }),
            // Someone wrote in between (a newer attempt, a cancel): read again.
            Err(_) => continue,
        }
    }
    Err("task status record kept changing under the claim".into())
}

/// Writes the final record, fenced on the claim's revision. False when a newer attempt
/// owns the task: then this attempt must publish nothing more and not ack.
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
    let span = tracing::info_span!("worker", task.id = %spec.task_id, attempt, worker = %shared.worker_id,
        trace_id = trace.map(|t| t.trace_id_hex()).unwrap_or_default());
    run_claimed(shared, msg, spec, attempt, trace).instrument(span).await
}

async fn run_claimed(shared: &Arc<WorkerShared>, msg: jetstream::Message, spec: TaskSpec, attempt: u32, trace: Option<TraceParent>) {
    let ctx = &shared.ctx;
    let task_id = spec.task_id.clone();
    let claimed_at = Instant::now();
    let (revision, record) = match claim(shared, &spec, attempt).await {
        Ok(Claim::Owned { revision, record }) => (revision, record),
        Ok(Claim::Final) => {
            let _ = msg.double_ack().await;
            return;
        }
        Ok(Claim::Stale) => {
            tracing::info!(task.id = %task_id, attempt, "stale delivery ignored");
            return;
        }
        Err(err) => {
            tracing::warn!(task.id = %task_id, cause = %err, "claim failed; handing back");
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    };
    let queue_time_ms = now_ms().saturating_sub(spec.accepted_ms) as f64;

    let cancel = CancellationToken::new();
    if let Ok(mut running) = shared.running.lock() {
        running.insert(task_id.clone(), cancel.clone());
    }
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    shared.publish_info();

    publish_event(ctx, &task_id, &TaskEvent::Started(TaskStarted {
        task_id: task_id.clone(),
        attempt,
        worker: shared.worker_id.clone(),
        resume_from_seq: 0,
    }), trace.as_ref()).await;

    // Keep the lease: an in-progress ack resets AckWait while we generate.
    let progress_every = ctx.config.jetstream.ack_wait / 3;
    let lease = async {
        let mut tick = tokio::time::interval(progress_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(err) = msg.ack_with(AckKind::Progress).await {
                tracing::warn!(task.id = %task_id, cause = %err, "in-progress ack failed");
            }
        }
    };

    // Shutdown of the worker cancels the sequence too, but hands the task back.
    let shutdown = shared.shutdown.clone();
    let engine_cancel = cancel.clone();
    let watch_shutdown = async {
        shutdown.cancelled().await;
        engine_cancel.cancel();
        std::future::pending::<()>().await
    };

    let mut max_tokens = spec.chat.max_tokens.unwrap_or(256);
    if let Some(ctx_len) = shared.engine.context_length() {
        max_tokens = max_tokens.min(ctx_len.max(1));
    }
    let request = GenerateRequest {
        messages: spec.chat.messages.clone(),
        max_tokens,
        temperature: spec.chat.temperature,
        top_p: spec.chat.top_p,
        stop: spec.chat.stop.clone(),
    };
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let generate = shared.engine.generate(request, tx, cancel.clone());
    let mut text = String::new();
    let mut seq = 0u64;
    let mut first_token: Option<Duration> = None;
    let relay = async {
        while let Some(piece) = rx.recv().await {
            first_token.get_or_insert_with(|| claimed_at.elapsed());
            text.push_str(&piece);
            let chunk = TaskEvent::Chunk(TokenChunk { task_id: task_id.clone(), attempt, seq, text: piece });
            seq += 1;
            publish_event(ctx, &task_id, &chunk, trace.as_ref()).await;
        }
    };
    let result = tokio::select! {
        (result, ()) = futures::future::join(generate, relay) => result,
        _ = lease => unreachable!("the lease loop never ends"),
        _ = watch_shutdown => unreachable!("the shutdown watch never ends"),
    };
    let total = claimed_at.elapsed();

    if let Ok(mut running) = shared.running.lock() {
        running.remove(&task_id);
    }
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    shared.publish_info();

    let fail = |error: WireError| {
        let mut r = record.clone();
        r.state = if error.kind == ErrorKind::Cancelled { TaskState::Cancelled } else { TaskState::Failed };
        r.error = Some(error);
        r
    };
    let (final_record, event, ack) = match result {
        Ok(_) if shared.shutdown.is_cancelled() => {
            // Hand back: the task goes to another worker at once.
            tracing::info!(task.id = %task_id, "worker stopping; task handed back");
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        Ok(g) if g.finish_reason == FinishReason::Cancelled => {
            let error = WireError::new(ErrorKind::Cancelled, "cancelled by the client");
            let event = TaskEvent::Failed(TaskFailed { task_id: task_id.clone(), attempt, error: error.clone() });
            (fail(error), event, AckKind::Ack)
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
                tracing::warn!(task.id = %task_id, attempt, cause = %reason, "engine failed; task will be retried");
                let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
            let error = WireError::new(ErrorKind::Engine, format!("failed after {attempt} attempts: {reason}"));
            let event = TaskEvent::Failed(TaskFailed { task_id: task_id.clone(), attempt, error: error.clone() });
            (fail(error), event, AckKind::Term)
        }
    };

    match finish_record(ctx, final_record, revision).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(task.id = %task_id, attempt, "a newer attempt owns the task; result dropped");
            return;
        }
        Err(err) => {
            // The record could not be written (store unreachable): hand back rather than
            // ack a task whose outcome nobody can read.
            tracing::warn!(task.id = %task_id, cause = %err, "final record not written; handing back");
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
        tracing::warn!(task.id = %task_id, cause = %err, "ack not confirmed; a redelivery will find the task finished");
    }
}
