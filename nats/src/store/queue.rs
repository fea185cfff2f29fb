//! The tasks stream: a work queue with one subject per task, under its model and
//! priority class (`…queue.<model>.<class>.<task id>`), or, pinned to one worker by
//! cache-affinity routing, with the worker after it (`…<task id>.<worker>`). The task
//! manager queues accepted tasks here; each model's workers share one durable pull
//! consumer per class, and each worker has one of its own for the tasks pinned to it;
//! queue statistics, the oldest task's age, and a waiting task by its id are read from it.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull::Config as PullConfig, PullConsumer},
    context::{ConsumerInfoErrorKind, PublishError, PublishErrorKind},
    AckKind, ErrorCode,
};
use bitinglip_bus_schema::{decode_body, Priority, TaskId, TaskSpec};
use futures::StreamExt;

mod fair;
mod pinned;

pub use fair::{Census, Lane, LaneStats, Load, UNNAMED_LANE};
pub use pinned::Orphan;

use super::{Store, StoreError, MAX_VALUE_BYTES};
use crate::{now_ms, trace::TraceParent, Bus};

const WHAT: &str = "tasks stream";

/// A task in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The stream already held a message with this task id (within the dedupe window).
    pub duplicate: bool,
}

/// A task delivered to a worker, and the worker's answers to the stream about it: the
/// actors see this, never the JetStream message or its ack kinds.
#[derive(Debug)]
pub struct Delivery {
    msg: jetstream::Message,
}

impl Delivery {
    /// Which delivery of its task this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.msg.info().map(|i| i.delivered as u32).unwrap_or(1)
    }

    /// Its sequence in the stream.
    pub fn stream_sequence(&self) -> u64 {
        self.msg.info().map(|i| i.stream_sequence).unwrap_or(0)
    }

    /// Its subject (`…queue.<model>.<class>.<task id>`).
    pub fn subject(&self) -> &str {
        self.msg.subject.as_str()
    }

    /// The message as it came (its envelope and headers, to decode and trace).
    pub fn message(&self) -> &async_nats::Message {
        &self.msg.message
    }

    /// The subject its acks go to: another node hands the delivery on with it
    /// ([`hand_on`]) when this one dies holding it.
    pub fn ack_subject(&self) -> String {
        self.msg.reply.as_ref().map(|r| r.to_string()).unwrap_or_default()
    }

    /// Done: the task leaves the queue (confirmed by the server).
    pub async fn ack(&self) -> Result<(), StoreError> {
        self.msg.double_ack().await.map_err(|e| StoreError::unavailable(WHAT, e))
    }

    /// Still working on it: its ack wait starts again.
    pub async fn progress(&self) -> Result<(), StoreError> {
        self.msg.ack_with(AckKind::Progress).await.map_err(|e| StoreError::unavailable(WHAT, e))
    }

    /// Hands it back to the queue, for delivery again after `delay` (at once: `None`).
    /// Best effort: unanswered, the ack wait hands it back anyway.
    /// Hands it back at once, the model's fetchers woken to pull it again.
    pub async fn nak(&self, delay: Option<Duration>) {
        if let Err(err) = self.msg.ack_with(AckKind::Nak(delay)).await {
            tracing::debug!(cause = %err, "nak not sent; the ack wait hands the task back");
        }
        if delay.is_none() {
            if let Some(wake) = self.wake_subject() {
                let _ = self.msg.context.client().publish(wake, bytes::Bytes::new()).await;
            }
        }
    }

    /// The wake of its lane (`…queued.<model>.<class>.<tenant>`), or of its model's rescan
    /// when it is not in a lane (pinned, or queued before tenants), from its subject.
    fn wake_subject(&self) -> Option<String> {
        let (root, rest) = self.subject().split_once(".queue.")?;
        let tokens: Vec<&str> = rest.split('.').collect();
        match tokens.as_slice() {
            [model, class, "t", tenant, _task] => Some(format!("{root}.queued.{model}.{class}.{tenant}")),
            [model, ..] => Some(format!("{root}.queued.{model}.rescan")),
            [] => None,
        }
    }

    /// Never to be delivered again (it cannot run, or it ended for good).
    pub async fn term(&self) -> Result<(), StoreError> {
        self.msg.ack_with(AckKind::Term).await.map_err(|e| StoreError::unavailable(WHAT, e))
    }
}

/// Hands the delivery whose acks go to `ack_subject` back to the queue at once, for
/// another worker (a NAK sent for a worker that died holding it), and has `model`'s
/// fetchers scan its lanes for it. True when sent.
pub async fn hand_on(bus: &Bus, ack_subject: &str, model: &str) -> bool {
    let sent = bus.client().publish(ack_subject.to_string(), "-NAK".into()).await.is_ok();
    let _ = bus.client().publish(bus.subjects().model_rescan(model), bytes::Bytes::new()).await;
    sent
}

/// One queue's numbers: a model and a priority class.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    /// The model.
    pub model: String,
    /// The class.
    pub priority: Priority,
    /// Tasks not yet delivered to a worker.
    pub waiting: u64,
    /// Tasks delivered and not yet acked.
    pub running: u64,
    /// Age of the oldest task still in the queue (waiting or running), in seconds.
    pub oldest_age_secs: f64,
    /// Its tenant lanes (the pinned tasks are counted above, not here).
    pub tenants: Vec<LaneStats>,
}

/// A model's two durable consumers, as its workers pull from them, and the asking
/// worker's own consumer of the tasks pinned to it.
#[derive(Clone)]
pub struct Consumers {
    interactive: PullConsumer,
    batch: PullConsumer,
    pinned: Option<PullConsumer>,
}

/// The tasks stream.
pub struct Queue<'a> {
    store: &'a Store,
}

impl Store {
    /// The tasks stream.
    pub fn queue(&self) -> Queue<'_> {
        Queue { store: self }
    }
}

fn publish_error(err: PublishError) -> StoreError {
    if err.kind() == PublishErrorKind::MaxPayloadExceeded {
        return StoreError::TooLarge { message: format!("the task is over the bus's max payload: {err}") };
    }
    let code = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .map(|e| e.error_code());
    if code == Some(ErrorCode::STREAM_STORE_FAILED) {
        // Discard-new limits (per model and class by count, all together by bytes).
        return StoreError::Full { message: format!("the model's queue is full ({err}); retry later") };
    }
    StoreError::unavailable(WHAT, err)
}

impl Queue<'_> {
    async fn stream(&self) -> Result<jetstream::stream::Stream, StoreError> {
        let inner = &self.store.inner;
        inner.js.get_stream(inner.subjects.tasks_stream()).await.map_err(|e| StoreError::unavailable(WHAT, e))
    }

    /// Queues `spec` on its model's subject (pinned to worker `pin`, or shared) with
    /// `Nats-Msg-Id` = task id, and waits for the stream's acknowledgement: from then on
    /// the task is on disk (and replicated).
    pub async fn publish(
        &self,
        spec: &TaskSpec,
        trace: Option<&TraceParent>,
        pin: Option<&str>,
    ) -> Result<Queued, StoreError> {
        let subjects = &self.store.inner.subjects;
        let (model, priority, tenant) = (&spec.chat.model, spec.priority, spec.tenant());
        let subject = match pin {
            Some(worker) => subjects.pinned_task(model, priority, &spec.task_id, worker),
            None => subjects.fair_task(model, priority, tenant, &spec.task_id),
        };
        let queued = self.publish_as(spec, trace, subject, spec.task_id.as_str()).await?;
        if pin.is_none() && !queued.duplicate {
            self.wake(model, priority, tenant).await;
        }
        Ok(queued)
    }

    async fn publish_as(
        &self,
        spec: &TaskSpec,
        trace: Option<&TraceParent>,
        subject: String,
        message_id: &str,
    ) -> Result<Queued, StoreError> {
        let inner = &self.store.inner;
        let payload =
            super::envelope(&inner.node_id, spec).map_err(|e| StoreError::TooLarge { message: e.to_string() })?;
        let mut headers = Bus::headers(trace);
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        let ack = inner
            .js
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(Queued { sequence: ack.sequence, duplicate: ack.duplicate })
    }

    /// `model`'s durable consumers as they are, without creating or changing them (a
    /// worker's view); `None` when one is missing or its filters are not those of now
    /// (made before tasks had subjects of their own): then a task manager makes them
    /// ([`Self::consumers`]).
    pub async fn bind(&self, model: &str, worker: Option<&str>) -> Result<Option<Consumers>, StoreError> {
        let stream = &self.stream().await?;
        let inner = &self.store.inner;
        let consumer = |priority| async move {
            let want = crate::worker_consumer_config(&inner.subjects, model, priority, &inner.jetstream);
            let name = want.durable_name.clone().unwrap_or_default();
            let info = match stream.consumer_info(&name).await {
                Ok(info) => info,
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::unavailable(WHAT, e)),
            };
            let (mut have, mut wanted) = (info.config.filter_subjects.clone(), want.filter_subjects.clone());
            have.sort();
            wanted.sort();
            if have != wanted {
                return Ok(None);
            }
            stream.get_consumer::<PullConfig>(&name).await.map(Some).map_err(|e| StoreError::unavailable(WHAT, e))
        };
        let interactive = consumer(Priority::Interactive).await?;
        let batch = consumer(Priority::Batch).await?;
        let pinned = match worker {
            None => None,
            Some(worker) => {
                let name = inner.subjects.pinned_consumer(model, worker);
                match stream.consumer_info(&name).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(StoreError::unavailable(WHAT, e)),
                }
                Some(stream.get_consumer::<PullConfig>(&name).await.map_err(|e| StoreError::unavailable(WHAT, e))?)
            }
        };
        Ok(interactive.zip(batch).map(|(interactive, batch)| Consumers { interactive, batch, pinned }))
    }

    /// Creates (or brings up to date) `model`'s durable consumers, and `worker`'s pinned
    /// one: task managers do, for the workers that ask (a worker may not create or change
    /// a consumer).
    pub async fn consumers(&self, model: &str, worker: Option<&str>) -> Result<Consumers, StoreError> {
        let stream = &self.stream().await?;
        let inner = &self.store.inner;
        let consumer = |priority| async move {
            let config = crate::worker_consumer_config(&inner.subjects, model, priority, &inner.jetstream);
            // Create or update: a consumer made before tasks had subjects of their own gets
            // the filters of now (which still take what was queued before).
            stream.create_consumer(config).await.map_err(|e| StoreError::unavailable(WHAT, e))
        };
        let pinned = match worker {
            None => None,
            Some(worker) => {
                let config = crate::pinned_consumer_config(&inner.subjects, model, worker, &inner.jetstream);
                Some(stream.create_consumer(config).await.map_err(|e| StoreError::unavailable(WHAT, e))?)
            }
        };
        Ok(Consumers {
            interactive: consumer(Priority::Interactive).await?,
            batch: consumer(Priority::Batch).await?,
            pinned,
        })
    }

    /// Age of the oldest task of `model` and `priority` (waiting or running: a work queue
    /// keeps a task until it is acked), in ms; 0 when there is none or it cannot be read.
    pub async fn oldest_age_ms(&self, model: &str, priority: Priority) -> u64 {
        self.first_age_ms(&self.store.inner.subjects.queue_all(model, priority)).await
    }

    /// Age of the first message on `filter`, in ms; 0 when there is none or it cannot be
    /// read.
    async fn first_age_ms(&self, filter: &str) -> u64 {
        let inner = &self.store.inner;
        let Ok(stream) = inner.js.get_stream_no_info(inner.subjects.tasks_stream()).await else { return 0 };
        match stream.get_first_raw_message_by_subject(filter, 0).await {
            Ok(msg) => {
                let at = msg.time.unix_timestamp_nanos() / 1_000_000;
                (now_ms() as i128 - at).max(0) as u64
            }
            Err(_) => 0,
        }
    }

    /// The queues of `models`, both classes each, with their tenant lanes. A queue no
    /// consumer takes yet (no task or worker ever came) reads as empty.
    pub async fn stats(&self, models: &[String]) -> Result<Vec<QueueStats>, StoreError> {
        let mut out = Vec::new();
        for model in models {
            let census = self.census(model).await?;
            for priority in [Priority::Interactive, Priority::Batch] {
                let (waiting, running) = census.counts(priority);
                let oldest_age_secs = self.oldest_age_ms(model, priority).await as f64 / 1000.0;
                // The lane of before tenants only while it holds tasks.
                let mut tenants: Vec<LaneStats> = census
                    .lanes
                    .iter()
                    .filter(|l| l.priority == priority && (l.tenant != UNNAMED_LANE || l.waiting + l.running > 0))
                    .cloned()
                    .collect();
                for lane in tenants.iter_mut().filter(|l| l.waiting + l.running > 0) {
                    lane.oldest_age_secs = self.lane_age_ms(model, priority, &lane.tenant).await as f64 / 1000.0;
                }
                tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
                out.push(QueueStats { model: model.clone(), priority, waiting, running, oldest_age_secs, tenants });
            }
        }
        Ok(out)
    }

    /// True when the stream holds a task (queued or running) for `model`.
    pub async fn has_tasks(&self, model: &str) -> Result<bool, StoreError> {
        let stream = self.handle().await?;
        match stream.get_first_raw_message_by_subject(self.store.inner.subjects.model_queues(model), 0).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(false),
            Err(e) => Err(StoreError::unavailable(WHAT, e)),
        }
    }

    /// The task `task_id` while it is in a queue (waiting, or running and not yet acked).
    pub async fn find(&self, task_id: &TaskId) -> Result<Option<TaskSpec>, StoreError> {
        let stream = self.handle().await?;
        let subjects = &self.store.inner.subjects;
        let anywhere = [
            subjects.fair_task_anywhere(task_id),
            subjects.pinned_task_anywhere(task_id),
            subjects.queued_task_anywhere(task_id),
        ];
        for subject in anywhere {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => return Ok(decode_body::<TaskSpec>(&message.payload, MAX_VALUE_BYTES).ok()),
                Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(StoreError::unavailable(WHAT, e)),
            }
        }
        Ok(None)
    }

    /// Up to `limit` tasks of every queue (waiting or running), oldest first. Each read
    /// goes to the next message there is, so acked tasks' gaps cost nothing.
    pub async fn waiting(&self, limit: usize) -> Result<Vec<TaskSpec>, StoreError> {
        let stream = self.handle().await?;
        let all = self.store.inner.subjects.all_queues();
        let mut out = Vec::new();
        let mut seq = 0;
        while out.len() < limit {
            match stream.get_first_raw_message_by_subject(&all, seq).await {
                Ok(message) => {
                    seq = message.sequence + 1;
                    if let Ok(spec) = decode_body::<TaskSpec>(&message.payload, MAX_VALUE_BYTES) {
                        out.push(spec);
                    }
                }
                Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(StoreError::unavailable(WHAT, e)),
            }
        }
        Ok(out)
    }

    /// The tasks stream's handle, without asking for its info.
    async fn handle(&self) -> Result<jetstream::stream::Stream<()>, StoreError> {
        let inner = &self.store.inner;
        inner.js.get_stream_no_info(inner.subjects.tasks_stream()).await.map_err(|e| StoreError::unavailable(WHAT, e))
    }

    /// The message at `sequence` (a poison task JetStream gave up on), left in place:
    /// `Some(None)` when it does not decode, `None` when it is gone.
    pub async fn peek(&self, sequence: u64) -> Result<Option<Option<TaskSpec>>, StoreError> {
        Ok(self.peek_with_consumer(sequence).await?.map(|(spec, _)| spec))
    }

    /// [`Self::peek`], with the name of the consumer that serves the message: its model's
    /// shared one for its class, or the pinned one of the worker its subject names.
    pub async fn peek_with_consumer(&self, sequence: u64) -> Result<Option<(Option<TaskSpec>, String)>, StoreError> {
        let stream = self.handle().await?;
        let Ok(message) = stream.get_raw_message(sequence).await else { return Ok(None) };
        let Ok(spec) = decode_body::<TaskSpec>(&message.payload, MAX_VALUE_BYTES) else {
            return Ok(Some((None, String::new())));
        };
        let subjects = &self.store.inner.subjects;
        let (model, priority, tenant) = (&spec.chat.model, spec.priority, spec.tenant());
        if message.subject.as_str() == subjects.fair_task(model, priority, tenant, &spec.task_id) {
            return Ok(Some((Some(spec.clone()), subjects.tenant_consumer(model, priority, tenant))));
        }
        let shared = subjects.queued_task(&spec.chat.model, spec.priority, &spec.task_id);
        let consumer = match message.subject.as_str().strip_prefix(shared.as_str()).and_then(|r| r.strip_prefix('.')) {
            Some(worker) => {
                let worker = bitinglip_bus_schema::decode_token(worker).unwrap_or_default();
                subjects.pinned_consumer(&spec.chat.model, &worker)
            }
            None => subjects.worker_consumer(&spec.chat.model, spec.priority),
        };
        Ok(Some((Some(spec), consumer)))
    }

    /// Removes the message at `sequence` from the queue (only once its task's record says
    /// how it ended: see the cluster manager's poison handling).
    pub async fn remove(&self, sequence: u64) -> Result<(), StoreError> {
        let stream = self.handle().await?;
        stream.delete_message(sequence).await.map(|_| ()).map_err(|e| StoreError::unavailable(WHAT, e))
    }
}

impl Consumers {
    fn of(&self, priority: Priority) -> &PullConsumer {
        match priority {
            Priority::Interactive => &self.interactive,
            Priority::Batch => &self.batch,
        }
    }

    /// Up to `n` tasks of `priority`, as they come: those waiting now (`wait` is
    /// `None`), or those that come within `wait`. One pull request, whatever `n`: a
    /// worker asks for as many tasks as it has free slots at once.
    pub async fn pull(&self, priority: Priority, n: usize, wait: Option<Duration>) -> Result<Pull, StoreError> {
        pull_from(self.of(priority), n, wait).await
    }

    /// Up to `n` of the tasks pinned to this worker, as [`Self::pull`]; an empty pull when
    /// it has no pinned consumer.
    pub async fn pull_pinned(&self, n: usize, wait: Option<Duration>) -> Result<Option<Pull>, StoreError> {
        match &self.pinned {
            Some(consumer) => pull_from(consumer, n, wait).await.map(Some),
            None => Ok(None),
        }
    }
}

/// Up to `n` tasks of `consumer`, as [`Consumers::pull`].
async fn pull_from(consumer: &PullConsumer, n: usize, wait: Option<Duration>) -> Result<Pull, StoreError> {
    {
        let n = n.max(1);
        let batch = match wait {
            None => consumer.fetch().max_messages(n).messages().await,
            Some(wait) => consumer.batch().max_messages(n).expires(wait).messages().await,
        };
        let batch = batch.map_err(|e| StoreError::unavailable(WHAT, e))?;
        let deadline = tokio::time::Instant::now() + wait.unwrap_or_default() + PULL_ANSWER;
        Ok(Pull { batch, deadline })
    }
}

/// The tasks one pull request brings, as they come.
pub struct Pull {
    batch: jetstream::consumer::pull::Batch,
    deadline: tokio::time::Instant,
}

impl Pull {
    /// The next task; `None` once the pull is over (all it asked for came, nothing more
    /// was waiting, or its wait ran out).
    pub async fn next(&mut self) -> Result<Option<Delivery>, StoreError> {
        match tokio::time::timeout_at(self.deadline, self.batch.next()).await {
            Ok(next) => {
                next.transpose().map(|m| m.map(|msg| Delivery { msg })).map_err(|e| StoreError::unavailable(WHAT, e))
            }
            Err(_) => {
                tracing::warn!("a pull went unanswered; pulling again");
                Ok(None)
            }
        }
    }
}

/// How long past its expiry a pull may go unanswered. A pull request is answered by the
/// consumer's leader; one that reached a leader as its server was cut off from the
/// cluster is never answered at all (no message, no timeout status), and a slot waiting
/// on it would wait for ever while the new leader sees no one pulling. Past this, the
/// pull is given up and made again.
const PULL_ANSWER: Duration = Duration::from_secs(5);
