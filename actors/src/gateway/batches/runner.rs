//! Drives batches to their end, from any gateway: each second it looks at every batch
//! that has not ended, and the gateway that holds a batch's lease (a field of its record,
//! renewed by compare-and-swap) submits its next lines, follows their tasks, and writes
//! the output and error files when every line has ended.
//!
//! A batch spends its key's limits as the same requests sent one by one would: each line
//! counts against the key's `rpm`, `tpm` and `tokens_per_day` before it is submitted (a
//! line over the minute's limits waits for the next minute, without spending requests on
//! waiting); once the day's token budget is spent, the remaining lines fail with
//! `rate_limit_exceeded` in the error file. A batch whose key is revoked, expires or is
//! gone is cancelled at the next round (within a second or so).
//!
//! A driven batch's lines are read a page at a time from the files store (the input file
//! is kept in pages of [`PAGE_LINES`] lines), and an ended line is kept as its
//! outcome only (a completed line's answer is read again from its task when the output
//! file is written): what a gateway holds per batch is a page or two and a small entry per
//! ended line, whatever the size of the file.
//!
//! Nothing lives only here: the record says how many lines were submitted, line `n` runs
//! as task `<batch id>-<n>` (submitting it again is recognised by the task manager and
//! runs nothing twice), and a task's record says how it ended. A gateway that dies loses
//! nothing; another takes the lease when it lapses and goes on.
//!
//! The loop is a task its gateway owns ([`Runner`]): stopped with the gateway, and started
//! again with it when its supervisor restarts it.

use std::collections::{BTreeMap, HashMap};

use bitinglip_bus_schema::{
    BatchEndpoint, BatchRecord, BatchStatus, ErrorKind, FileRecord, GetTask, KeyLimits, LineError, Priority,
    SubmitReply, SubmitRequest, TaskId, TaskRecord, TaskState, WireError,
};
use bitinglip_nats::store::keys::KeyWatch;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    input::{page_lines, Line, PAGE_LINES},
    status_of,
};
use crate::{
    gateway::{
        access::{
            auth::CONFIG_ADMIN_ID,
            limits::{line_verdict, LineCost, LineVerdict},
        },
        error::ApiError,
        openai::{
            chat::{Chat, Text},
            embeddings::Embeddings,
            pipeline::{Finished, Shape},
        },
    },
    NodeContext,
};

/// The most lines of one batch in the queue at once: the rest wait their turn, so one
/// batch never fills the model's queue.
const WINDOW: u32 = 64;

/// The most refused lines a batch record lists (each message cut to [`REFUSAL_CHARS`]): past
/// it the batch fails as a whole, so its record stays far under one message whatever its
/// lines are, and a batch of lines that are all refused ends in one round.
const MAX_REFUSED: usize = 1_000;
/// A refusal's message is kept to this many characters in the record.
const REFUSAL_CHARS: usize = 200;

/// How long a gateway's lease on a batch lasts without renewal.
const LEASE_MS: u64 = 15_000;

/// The task that runs line `n` of batch `id`.
pub(crate) fn task_of(id: &str, n: u32) -> TaskId {
    TaskId::parse(format!("{id}-{n}")).expect("batch ids and line numbers make valid task ids")
}

/// How a line ended, as far as this gateway has seen.
#[derive(Debug, Clone)]
enum Ended {
    /// Its answer is read again from its task when the output file is written.
    Completed,
    Failed {
        task: Option<String>,
        error: WireError,
    },
}

/// What this gateway keeps of a batch it drives (all of it can be read again).
#[derive(Default)]
struct Driven {
    /// The pages of input lines loaded now, by page number.
    pages: BTreeMap<u32, Vec<Line>>,
    ended: HashMap<u32, Ended>,
    cancels_sent: bool,
    /// Lines this gateway submitted (the record may not say so yet).
    submitted: u32,
    /// `max_tokens` of the lines submitted and not ended yet.
    running_max_tokens: HashMap<u32, u32>,
}

impl Driven {
    /// Line `n`, when its page is loaded.
    fn line(&self, n: u32) -> Option<&Line> {
        self.pages.get(&(n / PAGE_LINES)).and_then(|p| p.get((n % PAGE_LINES) as usize))
    }

    /// Loads line `n`'s page when it is not. `Ok(false)`: the input file is gone.
    async fn load(&mut self, ctx: &NodeContext, b: &BatchRecord, n: u32) -> Result<bool, WireError> {
        let k = n / PAGE_LINES;
        if self.pages.contains_key(&k) {
            return Ok(true);
        }
        match page_lines(ctx, b.endpoint, &b.input_file_id, k).await? {
            Some(lines) => {
                self.pages.insert(k, lines);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// The batch loop of one gateway: its task and its stop signal.
pub(crate) struct Runner {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    inner: tokio::task::AbortHandle,
}

impl Runner {
    /// Starts driving batches; `ended` is called with the reason when the loop ends (a
    /// panic included), so that its owner can fail and be started again.
    pub(crate) fn start(ctx: NodeContext, ended: impl FnOnce(String) + Send + 'static) -> Self {
        let stop = CancellationToken::new();
        let inner = tokio::spawn(run(ctx, stop.clone()));
        let abort = inner.abort_handle();
        let task = tokio::spawn(async move {
            ended(match inner.await {
                Ok(()) => "stopped".to_string(),
                Err(err) => err.to_string(),
            })
        });
        Self { stop, task: Some(task), inner: abort }
    }

    /// Stops the loop after its current round (a round cut short loses nothing: the next
    /// gateway to hold the lease reads the record again), waiting up to `patience`.
    pub(crate) async fn stop(&mut self, patience: std::time::Duration) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            if tokio::time::timeout(patience, task).await.is_err() {
                self.inner.abort();
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Drives every batch until `stop`.
async fn run(ctx: NodeContext, stop: CancellationToken) {
    let me = ctx.bus.node_id().to_string();
    let keys = ctx.store.watch_keys();
    let mut driven: HashMap<String, Driven> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if stop.is_cancelled() {
            return;
        }
        let ids = match ctx.store.batches().ids().await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::debug!(cause = %err, "batches not readable now");
                continue;
            }
        };
        for id in ids {
            if let Err(err) = drive(&ctx, &keys, &me, &id, &mut driven).await {
                tracing::warn!(batch = %id, cause = %err, "batch not driven this round; trying again");
            }
        }
    }
}

async fn drive(
    ctx: &NodeContext,
    keys: &KeyWatch,
    me: &str,
    id: &str,
    driven: &mut HashMap<String, Driven>,
) -> Result<(), WireError> {
    let Some((mut b, rev)) = ctx.store.batches().get(id).await? else { return Ok(()) };
    let now = bitinglip_nats::now_ms();
    if b.status.is_final() {
        driven.remove(id);
        return Ok(expire(ctx, &b, now).await?);
    }
    if b.runner.as_deref().is_some_and(|r| r != me) && b.runner_until_ms > now {
        // Another gateway drives it.
        driven.remove(id);
        return Ok(());
    }
    // The key that made it: revoked, expired or gone, its batch is cancelled; else its
    // limits hold for every line.
    let mut share = (None, None);
    let limits = match b.owner.as_deref() {
        Some(owner) if owner != CONFIG_ADMIN_ID => {
            let key = keys.get(owner).await?.filter(|k| k.active(now));
            // Its lines go in the key's tenant's fair share, with its weight.
            share = key.as_ref().map_or((None, None), |k| (Some(k.tenant().to_string()), Some(k.weight())));
            if key.is_none() && b.status == BatchStatus::InProgress {
                tracing::info!(batch = %id, key = owner, "the batch's key was revoked or expired; cancelling");
                b.status = BatchStatus::Cancelling;
                b.error = Some("the API key that made this batch was revoked or expired".into());
                b.times.set(BatchStatus::Cancelling, now);
            }
            key.map(|k| k.limits).filter(KeyLimits::any)
        }
        _ => None,
    };
    let d = driven.entry(id.to_string()).or_default();
    if b.submitted < b.total && !d.load(ctx, &b, b.submitted).await? {
        b.status = BatchStatus::Failed;
        b.error = Some(format!("the input file {} is gone", b.input_file_id));
        b.times.set(BatchStatus::Failed, now);
        driven.remove(id);
        return Ok(ctx.store.batches().update(&b, rev).await.map(|_| ())?);
    }
    let stopping = b.status == BatchStatus::Cancelling || now > b.expires_ms;

    // Submit the next lines, at most WINDOW of them unfinished at once.
    for e in &b.refused {
        d.ended.entry(e.line).or_insert_with(|| Ended::Failed {
            task: None,
            error: WireError::new(kind_of(&e.code), e.message.clone()),
        });
    }
    if let Some(e) = &b.refused_from {
        for n in e.line..b.total {
            d.ended.entry(n).or_insert_with(|| Ended::Failed {
                task: None,
                error: WireError::new(kind_of(&e.code), e.message.clone()),
            });
        }
    }
    while !stopping && b.status == BatchStatus::InProgress && b.submitted < b.total {
        let unfinished = b.submitted - d.ended.keys().filter(|n| **n < b.submitted).count() as u32;
        if unfinished >= WINDOW {
            break;
        }
        let n = b.submitted;
        if !d.load(ctx, &b, n).await? {
            break;
        }
        let default_max_tokens = ctx.config.task_manager.default_max_tokens;
        let max_tokens = d.line(n).and_then(|l| l.chat.max_tokens).unwrap_or(default_max_tokens);
        if let (Some(limits), Some(owner)) = (&limits, b.owner.as_deref()) {
            // Lines running since before this gateway took the batch count at the default.
            let reserved = (0..b.submitted)
                .filter(|m| !d.ended.contains_key(m))
                .map(|m| u64::from(d.running_max_tokens.get(&m).copied().unwrap_or(default_max_tokens)))
                .sum();
            match spend(ctx, owner, limits, now, reserved, u64::from(max_tokens)).await? {
                LineVerdict::Go => {}
                LineVerdict::Wait => break,
                LineVerdict::BudgetSpent(message) => {
                    // This line and every one after it fail, as one entry in the record.
                    let e = LineError { line: n, code: ErrorKind::RateLimitExceeded.as_str().to_string(), message };
                    for m in n..b.total {
                        d.ended.insert(
                            m,
                            Ended::Failed {
                                task: None,
                                error: WireError::new(ErrorKind::RateLimitExceeded, &e.message),
                            },
                        );
                    }
                    b.refused_from = Some(e);
                    b.submitted = b.total;
                    d.submitted = b.total;
                    break;
                }
            }
        }
        let Some(line) = d.line(n) else { break };
        let submit = SubmitRequest {
            chat: line.chat.clone(),
            task_id: Some(task_of(id, n)),
            idempotency_key: None,
            priority: Priority::Batch,
            wait_for_model: true,
            owner: b.owner.clone(),
            // A line may have been submitted before (by a gateway whose lease lapsed).
            new_id: false,
            tenant: share.0.clone(),
            weight: share.1,
        };
        match ctx.bus.ask_as(b.owner.as_deref(), &submit, None, None).await {
            Ok(SubmitReply::Accepted(_)) => {
                d.running_max_tokens.insert(n, max_tokens);
            }
            Ok(SubmitReply::Rejected(err))
                if matches!(
                    err.kind,
                    ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Overloaded | ErrorKind::NoWorker
                ) =>
            {
                break;
            }
            Ok(SubmitReply::Rejected(err)) => {
                if b.refused.len() >= MAX_REFUSED {
                    tracing::info!(batch = %id, refused = b.refused.len(), "too many lines refused; the batch fails");
                    b.status = BatchStatus::Failed;
                    b.error = Some(format!(
                        "more than {MAX_REFUSED} of its lines were refused (the first are listed); the rest did not run"
                    ));
                    b.times.set(BatchStatus::Failed, now);
                    break;
                }
                b.refused.push(LineError {
                    line: n,
                    code: err.kind.as_str().to_string(),
                    message: err.message.chars().take(REFUSAL_CHARS).collect(),
                });
                d.ended.insert(n, Ended::Failed { task: None, error: err });
            }
            Err(err) => {
                tracing::debug!(batch = %id, cause = %err, "submit not answered; next round");
                break;
            }
        }
        b.submitted += 1;
        d.submitted = d.submitted.max(b.submitted);
    }

    // A batch that failed as a whole stops the lines it started (best effort: they belong
    // to nothing once it has ended).
    if b.status == BatchStatus::Failed {
        for n in (0..b.submitted).filter(|n| !d.ended.contains_key(n)) {
            let _ = bitinglip_client::cancel(&ctx.bus, b.owner.as_deref(), &task_of(id, n), "batch failed").await;
        }
    }

    // Lines submitted past the recorded count (a gateway that died, or a record changed
    // meanwhile, before the count was written) are found by their tasks.
    while b.submitted < b.total && b.submitted < d.submitted.max(if stopping { b.submitted + WINDOW } else { 0 }) {
        if record_of(ctx, &task_of(id, b.submitted)).await?.is_none() {
            break;
        }
        b.submitted += 1;
    }
    d.submitted = d.submitted.max(b.submitted);

    // Follow the submitted lines' tasks.
    for n in 0..b.submitted {
        if d.ended.contains_key(&n) {
            continue;
        }
        let task = task_of(id, n);
        let Some(record) = record_of(ctx, &task).await? else { continue };
        let ended = match record.state {
            TaskState::Completed => Ended::Completed,
            TaskState::Failed | TaskState::Cancelled => Ended::Failed {
                task: Some(task.to_string()),
                error: record.error.clone().unwrap_or_else(|| WireError::new(ErrorKind::Internal, "the line failed")),
            },
            TaskState::Queued | TaskState::Running => continue,
        };
        d.ended.insert(n, ended);
        d.running_max_tokens.remove(&n);
    }
    // Pages before the next line to submit are done with (the output file reads them again).
    let current = b.submitted / PAGE_LINES;
    d.pages.retain(|k, _| *k >= current);
    b.completed = d.ended.values().filter(|e| matches!(e, Ended::Completed)).count() as u32;
    b.failed = d.ended.len() as u32 - b.completed;

    // Stopping: no line starts any more, and the running ones are told to stop.
    if stopping && !d.cancels_sent {
        let mut all = true;
        for n in (0..b.submitted).filter(|n| !d.ended.contains_key(n)) {
            if let Err(err) =
                bitinglip_client::cancel(&ctx.bus, b.owner.as_deref(), &task_of(id, n), "batch cancelled").await
            {
                tracing::debug!(batch = %id, line = n, cause = %err, "cancel not delivered; the next round asks again");
                all = false;
                break;
            }
        }
        d.cancels_sent = all;
    }
    let all_ended =
        if stopping { (0..b.submitted).all(|n| d.ended.contains_key(&n)) } else { d.ended.len() as u32 == b.total };
    let mut written = Vec::new();
    if all_ended {
        let (output, errors) = files_of(ctx, &b, d).await?;
        for (content, which) in [(output, "output"), (errors, "error")] {
            if content.is_empty() {
                continue;
            }
            let record = FileRecord {
                id: format!("file-{}", ulid::Ulid::new()),
                owner: b.owner.clone(),
                purpose: "batch_output".into(),
                filename: format!("{id}_{which}.jsonl"),
                bytes: content.len() as u64,
                created_ms: now,
            };
            ctx.store.files().put(&record, content.as_bytes()).await?;
            if which == "output" {
                b.output_file_id = Some(record.id.clone());
            } else {
                b.error_file_id = Some(record.id.clone());
            }
            written.push(record.id);
        }
        let status = match (b.status, now > b.expires_ms) {
            (BatchStatus::Cancelling, _) => BatchStatus::Cancelled,
            (_, true) => BatchStatus::Expired,
            _ => BatchStatus::Completed,
        };
        b.times.set(BatchStatus::Finalizing, now);
        b.times.set(status, now);
        b.status = status;
    }
    b.runner = Some(me.to_string());
    b.runner_until_ms = now + LEASE_MS;
    match ctx.store.batches().update(&b, rev).await {
        Ok(_) => {
            if b.status.is_final() {
                tracing::info!(batch = %id, status = b.status.as_str(), completed = b.completed, failed = b.failed, "batch ended");
                driven.remove(id);
            }
            Ok(())
        }
        Err(err) => {
            // Changed meanwhile (a cancel, another gateway): files written for an end
            // that did not happen go; the next round reads the record again (what this
            // gateway submitted it still knows).
            for file in written {
                let _ = ctx.store.files().delete(&file).await;
            }
            if let Some(d) = driven.get_mut(id) {
                d.cancels_sent = false;
            }
            Err(err.into())
        }
    }
}

/// Removes a batch that ended more than `gateway.batch_retention` ago, its output and error
/// files first (so a crash between leaves the record, and the next round finishes).
async fn expire(ctx: &NodeContext, b: &BatchRecord, now: u64) -> Result<(), bitinglip_nats::StoreError> {
    let ended = b.times.latest().unwrap_or(b.created_ms);
    let retention = ctx.config.gateway.batch_retention.as_millis() as u64;
    if now.saturating_sub(ended) < retention {
        return Ok(());
    }
    for file in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
        ctx.store.files().delete(file).await?;
    }
    ctx.store.batches().delete(&b.id).await?;
    tracing::info!(batch = %b.id, "batch removed after its retention");
    Ok(())
}

/// Spends one request of `owner`'s minute for a batch line, when its limits allow one now:
/// the windows are read first, so a line that must wait spends nothing on waiting.
async fn spend(
    ctx: &NodeContext,
    owner: &str,
    limits: &KeyLimits,
    now: u64,
    reserved: u64,
    tokens: u64,
) -> Result<LineVerdict, bitinglip_nats::StoreError> {
    let counters = ctx.store.counters();
    let seen = counters.peek(owner, now).await?;
    match line_verdict(limits, &seen, LineCost { requests: seen.requests + 1, reserved, tokens }) {
        LineVerdict::Go => {
            // Another request of the key may have come in meanwhile: the count decides.
            let counted = counters.count_request(owner, now).await?;
            Ok(line_verdict(limits, &counted, LineCost { requests: counted.requests, reserved, tokens }))
        }
        other => Ok(other),
    }
}

/// A task's record, read through the task managers (`None`: no such task).
async fn record_of(ctx: &NodeContext, task_id: &TaskId) -> Result<Option<TaskRecord>, WireError> {
    match ctx.bus.call(&GetTask { task_id: task_id.clone() }).await {
        Ok(record) => Ok(Some(record)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn kind_of(code: &str) -> ErrorKind {
    serde_json::from_value(json!(code)).unwrap_or(ErrorKind::Unknown)
}

/// The output file (completed lines) and the error file (failed ones), in OpenAI's line
/// format, in line order: a page of lines at a time, each completed line's answer read
/// again from its task.
async fn files_of(ctx: &NodeContext, b: &BatchRecord, d: &Driven) -> Result<(String, String), WireError> {
    let mut output = String::new();
    let mut errors = String::new();
    let mut page: Option<(u32, Vec<Line>)> = None;
    for n in 0..b.total {
        let Some(ended) = d.ended.get(&n) else { continue };
        let k = n / PAGE_LINES;
        if page.as_ref().is_none_or(|(loaded, _)| *loaded != k) {
            let lines = page_lines(ctx, b.endpoint, &b.input_file_id, k).await?.ok_or_else(|| {
                WireError::new(ErrorKind::NotFound, format!("the input file {} is gone", b.input_file_id))
            })?;
            page = Some((k, lines));
        }
        let Some(line) = page.as_ref().and_then(|(_, lines)| lines.get((n % PAGE_LINES) as usize)) else {
            continue;
        };
        let task = task_of(&b.id, n).to_string();
        let (out, status, request_id, body) = match ended {
            Ended::Completed => {
                let Some(record) = record_of(ctx, &task_of(&b.id, n)).await? else { continue };
                let Some(mut done) = record.result else { continue };
                let text = match &done.text_object {
                    Some(name) => ctx.store.results().get(name).await?.unwrap_or_default(),
                    None => std::mem::take(&mut done.text),
                };
                ctx.store.results().resolve_parts(&mut done).await?;
                let finished = Finished { task_id: task_of(&b.id, n), created: record.updated_ms / 1000, text, done };
                (&mut output, 200, Some(task.clone()), render(b.endpoint, line, &finished))
            }
            Ended::Failed { task: ran, error } => {
                let body = serde_json::to_value(ApiError::from(error.clone()).body()).unwrap_or_default();
                (&mut errors, status_of(error.kind), ran.clone(), body)
            }
        };
        let row = json!({
            "id": format!("batch_req_{task}"),
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": null,
        });
        out.push_str(&jsonl_safe(row.to_string()));
        out.push('\n');
    }
    Ok((output, errors))
}

/// `json` with the characters other than `\n` that some readers take for line ends (NEL,
/// the Unicode line and paragraph separators) escaped, as JSON allows: a file of JSON
/// lines then reads as such with any line splitter (Python's `str.splitlines` included).
fn jsonl_safe(json: String) -> String {
    if !json.contains(['\u{85}', '\u{2028}', '\u{2029}']) {
        return json;
    }
    json.replace('\u{85}', "\\u0085").replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029")
}

/// A completed line's answer, as its endpoint would have returned it.
fn render(endpoint: BatchEndpoint, line: &Line, finished: &Finished) -> Value {
    let value = match endpoint {
        BatchEndpoint::ChatCompletions => serde_json::to_value(Chat::of(&line.chat).answer(finished)),
        BatchEndpoint::Completions => serde_json::to_value(Text::of(&line.chat).answer(finished)),
        BatchEndpoint::Embeddings => {
            serde_json::to_value(Embeddings::of(&line.chat.model, line.base64).answer(finished))
        }
    };
    value.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_escape_what_splitters_take_for_line_ends() {
        let row = json!({"text": "a\u{2028}b\u{85}c\nd"}).to_string();
        let safe = jsonl_safe(row);
        assert!(!safe.contains(['\u{85}', '\u{2028}', '\n']), "{safe}");
        let back: Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back["text"], "a\u{2028}b\u{85}c\nd");
    }

    #[test]
    fn lines_run_as_tasks_named_after_the_batch() {
        assert_eq!(task_of("batch_01J", 7).as_str(), "batch_01J-7");
        assert_eq!(kind_of("unknown_model"), ErrorKind::UnknownModel);
    }
}
