//! Task status records, one per task under its id. A queued task has none: its message in
//! the tasks stream (one subject per task) is its record until a worker claims it, which
//! writes the first record (a create: no read before it). Workers then finish it (fenced
//! on the claim's revision); the task manager writes one for a task cancelled while
//! queued, a cluster manager for a poisoned one. [`Tasks::status`] reads either.
//!
//! The decisions (may this attempt claim it? may this cancel apply?) are pure functions
//! of the record, with unit tests; the operations feed them through the bucket's one
//! compare-and-swap helper.

use async_nats::jetstream;
use bitinglip_bus_schema::{ErrorKind, ListTasks, TaskId, TaskRecord, TaskSpec, TaskState, WireError};

use super::{Bucket, Step, Store, StoreError};
use crate::now_ms;

/// The most records one page of the task list reads (stream messages, gaps included).
const MAX_PAGE_READS: usize = 1_000;

/// The task records.
pub struct Tasks<'a> {
    bucket: &'a Bucket,
    store: &'a Store,
}

impl Store {
    /// The task status records.
    pub fn tasks(&self) -> Tasks<'_> {
        Tasks { bucket: &self.inner.tasks, store: self }
    }
}

/// The key of a task's record.
fn key(task_id: &TaskId) -> &str {
    task_id.as_str()
}

/// What a worker's claim of a delivery found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This attempt owns the task; its later writes are fenced on `revision`.
    Owned {
        /// The record's revision after the claim.
        revision: u64,
        /// The record as claimed.
        record: Box<TaskRecord>,
    },
    /// Already finished (redelivered after its final write, before the ack), or cancelled
    /// while queued: the record as it stands.
    Final(Box<TaskRecord>),
    /// A newer attempt owns it.
    Stale,
    /// Another copy of the same task is running.
    Duplicate,
}

/// Who claims a delivery.
#[derive(Debug, Clone)]
pub struct Claimant<'a> {
    /// The worker.
    pub worker: &'a str,
    /// The delivery attempt (JetStream's delivered count).
    pub attempt: u32,
    /// The message's sequence in the tasks stream.
    pub stream_seq: u64,
    /// The delivery's ack subject (a cluster manager naks it if the worker dies).
    pub ack_subject: &'a str,
}

/// What cancelling a queued task did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// It was queued and is now cancelled: no worker will run it.
    Queued(Box<TaskRecord>),
    /// It runs or has finished: nothing written (a running one is its worker's to stop).
    NotQueued,
}

/// Decides a claim from the current record (pure): none yet is the usual case, a task
/// that waited in its queue with the stream message as its only record.
fn decide_claim(current: Option<TaskRecord>, spec: &TaskSpec, who: &Claimant<'_>, now: u64) -> Step<TaskRecord, Claim> {
    let mut record = current.unwrap_or_else(|| spec.queued_record());
    if record.state.is_final() {
        return Step::Done(Claim::Final(Box::new(record)));
    }
    if record.attempt > who.attempt {
        return Step::Done(Claim::Stale);
    }
    if record.state == TaskState::Running && record.stream_seq != 0 && record.stream_seq != who.stream_seq {
        // A second copy of a task that is already running (resubmitted after the dedupe
        // window): the first copy carries it.
        return Step::Done(Claim::Duplicate);
    }
    record.state = TaskState::Running;
    record.stream_seq = who.stream_seq;
    record.attempt = who.attempt;
    record.worker = Some(who.worker.to_string());
    record.ack_subject = Some(who.ack_subject.to_string());
    record.updated_ms = now;
    let claimed = Claim::Owned { revision: 0, record: Box::new(record.clone()) };
    Step::Write(record, claimed)
}

/// Decides a cancel from the current record (pure).
fn decide_cancel(mut record: TaskRecord, now: u64) -> Step<TaskRecord, Cancelled> {
    if record.state != TaskState::Queued {
        // Final: nothing to do. Running: its worker got the same cancel message and stops
        // the sequence; the record is the worker's to write (its claim fences it).
        return Step::Done(Cancelled::NotQueued);
    }
    record.cancel_requested_ms.get_or_insert(now);
    record.updated_ms = now;
    record.state = TaskState::Cancelled;
    record.error = Some(WireError::new(ErrorKind::Cancelled, "cancelled before it started"));
    Step::Write(record.clone(), Cancelled::Queued(Box::new(record)))
}

impl Tasks<'_> {
    /// A task's record, when a worker, a cancel or a failure wrote one.
    pub async fn get(&self, task_id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.bucket.get(key(task_id)).await
    }

    /// A task's status: its record, or, for a task still waiting in its queue (no record
    /// yet), the one its stream message stands for. `None` when there is no such task.
    pub async fn status(&self, task_id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        if let Some(record) = self.get(task_id).await? {
            return Ok(Some(record));
        }
        let queued = self.store.queue().find(task_id).await?;
        // Claimed between the two reads: the record is there now.
        match queued {
            Some(spec) => Ok(Some(self.get(task_id).await?.unwrap_or_else(|| spec.queued_record()))),
            None => Ok(None),
        }
    }

    /// The task `task_id` when there is one, for a submit that may be its retry: as
    /// [`Tasks::status`], except that a `queued` record with no stream message (written by
    /// an older version whose publish never happened) is no task yet.
    pub async fn existing(&self, task_id: &TaskId) -> Result<Option<TaskRecord>, StoreError> {
        match self.get(task_id).await? {
            Some(r) if r.state == TaskState::Queued => Ok(self.store.queue().find(task_id).await?.map(|_| r)),
            Some(r) => Ok(Some(r)),
            None => self.status(task_id).await,
        }
    }

    /// A page of records, most recently changed first, filtered by state and owner: at
    /// most `limit` (1 to 1000, 100 when absent), and the cursor of the next page. The
    /// work is bounded: records are read newest first from the bucket's stream (no list of
    /// every key), at most twenty per record asked for, so a filter that matches little
    /// ends a page early with a cursor to go on from. The first page starts with the tasks
    /// still waiting in their queues (they have no record yet), oldest `limit` of them.
    pub async fn list(&self, query: &ListTasks) -> Result<(Vec<TaskRecord>, Option<u64>), StoreError> {
        let limit = query.limit.unwrap_or(100).clamp(1, 1000) as usize;
        let mut waiting = Vec::new();
        if query.before.is_none() && query.state.is_none_or(|s| s == TaskState::Queued) {
            for spec in self.store.queue().waiting(limit).await? {
                if (query.owner.is_none() || spec.owner == query.owner) && self.get(&spec.task_id).await?.is_none() {
                    waiting.push(spec.queued_record());
                }
            }
            waiting.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
        }
        if query.state == Some(TaskState::Queued) && query.before.is_none() && waiting.len() >= limit {
            return Ok((waiting, None));
        }
        let (mut records, next) = self.recorded(query, limit - waiting.len()).await?;
        waiting.append(&mut records);
        Ok((waiting, next))
    }

    /// [`Tasks::list`] of the records only, at most `limit` (a page with none left over
    /// for them answers none, and a cursor at the newest).
    async fn recorded(&self, query: &ListTasks, limit: usize) -> Result<(Vec<TaskRecord>, Option<u64>), StoreError> {
        let unavailable = |e: &dyn std::fmt::Display| self.bucket.unavailable(e);
        let mut stream = self.bucket.kv.stream.clone();
        let (last, first) = {
            let info = stream.info().await.map_err(|e| unavailable(&e))?;
            (info.state.last_sequence, info.state.first_sequence.max(1))
        };
        let mut seq = match query.before {
            Some(before) => before.saturating_sub(1).min(last),
            None => last,
        };
        if limit == 0 {
            return Ok((Vec::new(), (seq >= first).then_some(seq + 1)));
        }
        let mut tasks = Vec::new();
        let mut reads = 0usize;
        // A page costs at most this many reads, whatever the filter: a key with few tasks
        // among many pages through them with the cursor, each page as cheap as the next.
        let max_reads = (limit * 4).clamp(limit, MAX_PAGE_READS.max(limit));
        while seq >= first && tasks.len() < limit && reads < max_reads {
            reads += 1;
            match stream.direct_get(seq).await {
                Ok(msg) => {
                    // A delete or purge marker is no record.
                    let marker = msg.headers.get("KV-Operation").is_some();
                    let key = msg.subject.rsplit('.').next().unwrap_or_default().to_string();
                    if let (false, Ok(record)) = (marker, self.bucket.decode::<TaskRecord>(&key, &msg.payload)) {
                        let wanted = query.state.is_none_or(|s| s == record.state)
                            && (query.owner.is_none() || record.owner == query.owner);
                        if wanted {
                            tasks.push(record);
                        }
                    }
                }
                // A revision replaced since (history 1 keeps only the last): a gap.
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(unavailable(&e)),
            }
            seq -= 1;
        }
        let next = (seq >= first).then_some(seq + 1);
        Ok((tasks, next))
    }

    /// Claims a delivered task for `who`: compare-and-swap on the record, so of two
    /// attempts at once exactly one owns it.
    pub async fn claim(&self, spec: &TaskSpec, who: &Claimant<'_>) -> Result<Claim, StoreError> {
        let now = now_ms();
        // A first delivery is almost always of a task without a record: create it, with
        // no read first. A record already there (cancelled while queued, a copy of a
        // resubmitted task) makes the create conflict; then read and decide.
        if who.attempt <= 1 {
            if let Step::Write(record, _) = decide_claim(None, spec, who, now) {
                match self.bucket.create(key(&spec.task_id), &record).await {
                    Ok(revision) => return Ok(Claim::Owned { revision, record: Box::new(record) }),
                    Err(StoreError::Conflict { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        let (claim, revision) =
            self.bucket.modify(key(&spec.task_id), |current| Ok(decide_claim(current, spec, who, now))).await?;
        Ok(match (claim, revision) {
            (Claim::Owned { record, .. }, Some(revision)) => Claim::Owned { revision, record },
            (other, _) => other,
        })
    }

    /// True while the record is still at the claim's `revision` (nobody else wrote it).
    pub async fn still_owner(&self, task_id: &TaskId, revision: u64) -> Result<bool, StoreError> {
        Ok(self.bucket.revision(key(task_id)).await? == Some(revision))
    }

    /// True when the record says `attempt` runs the task (its claim still stands).
    pub async fn claim_stands(&self, task_id: &TaskId, attempt: u32) -> Result<bool, StoreError> {
        Ok(self.get(task_id).await?.is_some_and(|r| r.state == TaskState::Running && r.attempt == attempt))
    }

    /// Writes an attempt's final record, fenced on its claim's `revision`. False when
    /// someone else wrote the record meanwhile (a newer attempt): that attempt must then
    /// publish nothing more and not ack.
    pub async fn finish(&self, mut record: TaskRecord, revision: u64) -> Result<bool, StoreError> {
        record.updated_ms = now_ms();
        match self.bucket.update(key(&record.task_id), &record, revision).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Cancels a task that is still queued (its delivery is then dropped by the worker's
    /// claim). `None` when there is no such task.
    pub async fn cancel_queued(&self, task_id: &TaskId) -> Result<Option<Cancelled>, StoreError> {
        let now = now_ms();
        let decide = |current: Option<TaskRecord>| {
            Ok(match current.map(|r| decide_cancel(r, now)) {
                None => Step::Done(None),
                Some(Step::Write(r, c)) => Step::Write(r, Some(c)),
                Some(Step::Done(c)) => Step::Done(Some(c)),
            })
        };
        let (outcome, _) = self.bucket.modify(key(task_id), decide).await?;
        if outcome.is_some() {
            return Ok(outcome);
        }
        // No record: queued (its stream message is its record) or no such task.
        let Some(spec) = self.store.queue().find(task_id).await? else { return Ok(None) };
        let Step::Write(record, cancelled) = decide_cancel(spec.queued_record(), now) else {
            return Ok(Some(Cancelled::NotQueued));
        };
        match self.bucket.create(key(task_id), &record).await {
            Ok(_) => Ok(Some(cancelled)),
            // A worker claimed it meanwhile: it is running, its worker's to stop.
            Err(StoreError::Conflict { .. }) => Ok(Some(Cancelled::NotQueued)),
            Err(err) => Err(err),
        }
    }

    /// Marks a task failed with `error` unless it already ended (one never claimed gets
    /// its first record); the record written, if any.
    pub async fn fail(&self, spec: &TaskSpec, error: &WireError) -> Result<Option<TaskRecord>, StoreError> {
        let now = now_ms();
        let (failed, _) = self
            .bucket
            .modify(key(&spec.task_id), |current: Option<TaskRecord>| {
                let mut r = current.unwrap_or_else(|| spec.queued_record());
                Ok(if r.state.is_final() {
                    Step::Done(None)
                } else {
                    r.state = TaskState::Failed;
                    r.error = Some(error.clone());
                    r.updated_ms = now;
                    Step::Write(r.clone(), Some(r))
                })
            })
            .await?;
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::{ChatParams, Priority};

    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec {
            task_id: TaskId::parse("t1").unwrap(),
            chat: ChatParams::user("m", "hi"),
            priority: Priority::Interactive,
            accepted_ms: 5,
            owner: Some("k1".into()),
            request_sha256: None,
            tenant: None,
            weight: None,
        }
    }

    fn who(attempt: u32, stream_seq: u64) -> Claimant<'static> {
        Claimant { worker: "w1", attempt, stream_seq, ack_subject: "$JS.ACK.x" }
    }

    fn claimed(step: Step<TaskRecord, Claim>) -> TaskRecord {
        match step {
            Step::Write(r, Claim::Owned { .. }) => r,
            _ => panic!("expected a claim"),
        }
    }

    fn done(step: Step<TaskRecord, Claim>) -> Claim {
        match step {
            Step::Done(c) => c,
            Step::Write(..) => panic!("expected no write"),
        }
    }

    #[test]
    fn a_queued_or_missing_record_is_claimed_by_the_attempt() {
        let r = claimed(decide_claim(None, &spec(), &who(1, 7), 10));
        assert_eq!((r.state, r.attempt, r.stream_seq, r.worker.as_deref()), (TaskState::Running, 1, 7, Some("w1")));
        assert_eq!(r.created_ms, 5, "a record made at claim time keeps the acceptance time");
        assert_eq!(r.owner.as_deref(), Some("k1"), "and the owner the stream message carries");
        let queued = TaskRecord::queued(spec().task_id, "m".into(), Priority::Interactive, 5);
        let r = claimed(decide_claim(Some(queued), &spec(), &who(1, 7), 10));
        assert_eq!(r.ack_subject.as_deref(), Some("$JS.ACK.x"));
    }

    #[test]
    fn a_redelivery_takes_over_from_an_older_attempt_of_the_same_copy() {
        let running = claimed(decide_claim(None, &spec(), &who(1, 7), 10));
        let r = claimed(decide_claim(Some(running), &spec(), &who(2, 7), 20));
        assert_eq!(r.attempt, 2);
    }

    #[test]
    fn final_stale_and_duplicate_deliveries_write_nothing() {
        let mut finished = claimed(decide_claim(None, &spec(), &who(1, 7), 10));
        finished.state = TaskState::Completed;
        assert_eq!(
            done(decide_claim(Some(finished.clone()), &spec(), &who(2, 7), 20)),
            Claim::Final(Box::new(finished))
        );
        let newer = claimed(decide_claim(None, &spec(), &who(3, 7), 10));
        assert_eq!(done(decide_claim(Some(newer.clone()), &spec(), &who(2, 7), 20)), Claim::Stale);
        assert_eq!(done(decide_claim(Some(newer), &spec(), &who(3, 9), 20)), Claim::Duplicate);
    }

    #[test]
    fn only_a_queued_task_is_cancelled_here() {
        let id = spec().task_id;
        let queued = TaskRecord::queued(id.clone(), "m".into(), Priority::Interactive, 5);
        match decide_cancel(queued, 9) {
            Step::Write(r, Cancelled::Queued(_)) => {
                assert_eq!(r.state, TaskState::Cancelled);
                assert_eq!(r.cancel_requested_ms, Some(9));
                assert_eq!(r.error.unwrap().kind, ErrorKind::Cancelled);
            }
            _ => panic!("a queued task is cancelled"),
        }
        let running = claimed(decide_claim(None, &spec(), &who(1, 7), 10));
        assert!(matches!(decide_cancel(running, 9), Step::Done(Cancelled::NotQueued)));
    }
}
