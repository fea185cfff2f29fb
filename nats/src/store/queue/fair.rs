//! Tenant lanes: each tenant's waiting tasks of one model and class are a FIFO of their
//! own in the tasks stream (`…queue.<model>.<class>.t.<tenant>.<task>`), with a durable
//! pull consumer a task manager makes when it first queues a task of the tenant. The
//! model's workers pull the lanes by weighted fair share (their fetchers keep the
//! counters); nothing waits anywhere but in the stream.
//!
//! The per-class consumers of before tenants are lanes too, of the tenant `""`: they still
//! take the tasks queued there before an upgrade.

use std::{collections::HashSet, time::Duration};

use async_nats::jetstream::{
    consumer::{pull::Config as PullConfig, PullConsumer},
    context::ConsumerInfoErrorKind,
};
use bitinglip_bus_schema::{decode_token, Priority};
use futures::StreamExt;

use super::{pull_from, Pull, Queue, StoreError, WHAT};
use crate::provision::{LANE_CLASS, LANE_MODEL, LANE_TENANT, LANE_WEIGHT};

/// The tenant of the per-class lanes of before tenants.
pub const UNNAMED_LANE: &str = "";

/// One lane's numbers, as the consumer listing gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneStats {
    /// The model.
    pub model: String,
    /// The class.
    pub priority: Priority,
    /// The tenant (`""`: the per-class lane of before tenants).
    pub tenant: String,
    /// The tenant's weight when its lane was made or last brought up to date.
    pub weight: u32,
    /// Tasks not yet delivered to a worker.
    pub waiting: u64,
    /// Tasks delivered and not yet acked.
    pub running: u64,
    /// Age of its oldest task (waiting or running), in seconds; read by
    /// [`Queue::stats`] only (0 elsewhere).
    pub oldest_age_secs: f64,
}

/// What waits and runs in one model's queues: its lanes, and its pinned consumers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    /// Every lane of the model, both classes.
    pub lanes: Vec<LaneStats>,
    /// Waiting and running in its workers' pinned consumers (interactive).
    pub pinned: (u64, u64),
    /// Whether any pinned consumer of the model exists.
    pub any_pinned: bool,
    /// Each consumer with tasks waiting: its filter subject and the stream sequence after
    /// its last delivery (where its oldest waiting task is, or after).
    pub heads: Vec<(String, u64)>,
}

/// What one model's queue holds, for the autoscaler.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Tasks not yet delivered to a worker, both classes.
    pub waiting: u64,
    /// Tasks delivered and not yet acked, both classes.
    pub running: u64,
    /// Age of the oldest task not yet delivered, ms (0 when none waits).
    pub oldest_waiting_ms: u64,
}

impl Census {
    /// Waiting and running tasks of `priority`, every lane (and the pinned consumers for
    /// interactive) together.
    pub fn counts(&self, priority: Priority) -> (u64, u64) {
        let lanes = self.lanes.iter().filter(|l| l.priority == priority);
        let (mut waiting, mut running) = lanes.fold((0, 0), |(w, r), l| (w + l.waiting, r + l.running));
        if priority == Priority::Interactive {
            waiting += self.pinned.0;
            running += self.pinned.1;
        }
        (waiting, running)
    }

    /// Whether some consumer takes `priority`'s tasks.
    fn consumed(&self, priority: Priority) -> bool {
        self.lanes.iter().any(|l| l.priority == priority) || (priority == Priority::Interactive && self.any_pinned)
    }
}

/// A lane a worker pulls.
#[derive(Clone)]
pub struct Lane {
    consumer: PullConsumer,
}

impl Lane {
    /// Up to `n` of its waiting tasks: those waiting now (`wait` is `None`), or those that
    /// come within `wait`. One pull request.
    pub async fn pull(&self, n: usize, wait: Option<Duration>) -> Result<Pull, StoreError> {
        pull_from(&self.consumer, n, wait).await
    }
}

impl Queue<'_> {
    /// Makes `tenant`'s lane of `model`'s queue for `priority`, or brings it up to date
    /// (its weight): task managers do, before they queue the tenant's task.
    pub async fn make_lane(
        &self,
        model: &str,
        priority: Priority,
        tenant: &str,
        weight: u32,
    ) -> Result<(), StoreError> {
        let stream = self.stream().await?;
        let inner = &self.store.inner;
        let config = crate::tenant_consumer_config(&inner.subjects, model, priority, tenant, weight, &inner.jetstream);
        stream.create_consumer(config).await.map(|_| ()).map_err(|e| StoreError::unavailable(WHAT, e))
    }

    /// Makes again the lanes of `model` that hold tasks but whose consumer is gone (one
    /// nobody pulled for a day is deleted by the server, its tasks left in the stream), at
    /// weight 1 until the tenant's next task brings its weight. The number made.
    pub async fn restore_lanes(&self, model: &str) -> Result<usize, StoreError> {
        let full = self.stream().await?;
        let subjects = &self.store.inner.subjects;
        let mut made = 0;
        for priority in [Priority::Interactive, Priority::Batch] {
            let mut tenants = HashSet::new();
            let mut listing = full
                .info_with_subjects(subjects.tenant_queues(model, priority))
                .await
                .map_err(|e| StoreError::unavailable(WHAT, e))?;
            while let Some(entry) = listing.next().await {
                let (subject, _) = entry.map_err(|e| StoreError::unavailable(WHAT, e))?;
                let mut tokens = subject.rsplit('.');
                if let Some(Ok(tenant)) = tokens.nth(1).map(decode_token) {
                    tenants.insert(tenant);
                }
            }
            for tenant in tenants {
                match full.consumer_info(subjects.tenant_consumer(model, priority, &tenant)).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                        self.make_lane(model, priority, &tenant, 1).await?;
                        made += 1;
                    }
                    Err(e) => return Err(StoreError::unavailable(WHAT, e)),
                }
            }
        }
        Ok(made)
    }

    /// `tenant`'s lane of `model`'s queue for `priority` (the per-class one of before
    /// tenants: [`UNNAMED_LANE`]), to pull; `None` when its consumer is not there.
    pub async fn lane(&self, model: &str, priority: Priority, tenant: &str) -> Result<Option<Lane>, StoreError> {
        let stream = self.handle().await?;
        let subjects = &self.store.inner.subjects;
        let name = match tenant {
            UNNAMED_LANE => subjects.worker_consumer(model, priority),
            tenant => subjects.tenant_consumer(model, priority, tenant),
        };
        match stream.consumer_info(&name).await {
            Ok(_) => {}
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::unavailable(WHAT, e)),
        }
        let consumer = stream.get_consumer::<PullConfig>(&name).await.map_err(|e| StoreError::unavailable(WHAT, e))?;
        Ok(Some(Lane { consumer }))
    }

    /// What waits and runs in `model`'s lanes and pinned consumers: one listing of the
    /// stream's consumers.
    pub async fn census(&self, model: &str) -> Result<Census, StoreError> {
        let mut all = self.censuses(&[model.to_string()]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// [`Queue::census`] of each of `models`, in their order, from one listing of the
    /// stream's consumers (what the autoscaler reads every second, whatever the number of
    /// models).
    pub async fn censuses(&self, models: &[String]) -> Result<Vec<Census>, StoreError> {
        let stream = self.handle().await?;
        let subjects = &self.store.inner.subjects;
        let unnamed: Vec<(String, Priority, usize)> = models
            .iter()
            .enumerate()
            .flat_map(|(i, m)| [Priority::Interactive, Priority::Batch].map(|p| (subjects.worker_consumer(m, p), p, i)))
            .collect();
        let mut all = vec![Census::default(); models.len()];
        let mut list = stream.consumers();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| StoreError::unavailable(WHAT, e))?;
            let (waiting, running) = (info.num_pending, info.num_ack_pending as u64);
            let filter = &info.config.filter_subject;
            let meta = &info.config.metadata;
            let lane = match (meta.get(LANE_MODEL), meta.get(LANE_CLASS), meta.get(LANE_TENANT)) {
                (Some(m), Some(class), Some(tenant)) => models.iter().position(|x| x == m).and_then(|i| {
                    let weight = meta.get(LANE_WEIGHT).and_then(|w| w.parse().ok()).unwrap_or(1);
                    Priority::parse(class).map(|p| (i, p, tenant.clone(), weight))
                }),
                (Some(_), _, _) => None,
                _ => unnamed
                    .iter()
                    .find(|(n, _, _)| *n == info.name)
                    .map(|(_, p, i)| (*i, *p, UNNAMED_LANE.to_string(), 1)),
            };
            let owner = match &lane {
                Some((i, ..)) => Some(*i),
                None => models.iter().position(|m| self.pinned_of(m, filter)),
            };
            let Some(census) = owner.and_then(|i| all.get_mut(i)) else { continue };
            if waiting > 0 && !filter.is_empty() {
                census.heads.push((filter.clone(), info.delivered.stream_sequence + 1));
            }
            match lane {
                Some((_, priority, tenant, weight)) => census.lanes.push(LaneStats {
                    model: models[owner.unwrap_or_default()].clone(),
                    priority,
                    tenant,
                    weight,
                    waiting,
                    running,
                    oldest_age_secs: 0.0,
                }),
                None => {
                    census.any_pinned = true;
                    census.pinned.0 += waiting;
                    census.pinned.1 += running;
                }
            }
        }
        Ok(all)
    }

    /// What each of `models`' queues holds now, in their order: its waiting and running
    /// tasks (one listing of the consumers for all of them) and the age of its oldest
    /// waiting task (one read per consumer with tasks waiting, from the sequence after its
    /// last delivery).
    pub async fn loads(&self, models: &[String]) -> Result<Vec<Load>, StoreError> {
        let censuses = self.censuses(models).await?;
        let mut out = Vec::with_capacity(censuses.len());
        let mut stream = None;
        for census in censuses {
            let mut load = Load::default();
            for priority in [Priority::Interactive, Priority::Batch] {
                let (waiting, running) = census.counts(priority);
                load.waiting += waiting;
                load.running += running;
            }
            if load.waiting > 0 {
                if stream.is_none() {
                    stream = Some(self.handle().await?);
                }
                let stream = stream.as_ref().expect("just set");
                for (filter, from) in &census.heads {
                    if let Ok(msg) = stream.get_first_raw_message_by_subject(filter, *from).await {
                        let at = (msg.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
                        load.oldest_waiting_ms = load.oldest_waiting_ms.max(crate::now_ms().saturating_sub(at));
                    }
                }
            }
            out.push(load);
        }
        Ok(out)
    }

    /// Tasks in `model`'s queue of `priority`, waiting or running (not yet acked): its
    /// consumers' pending and unacknowledged counts (one listing), or, before any consumer
    /// takes them, the stream's count of the queue's subjects.
    pub async fn depth(&self, model: &str, priority: Priority) -> Result<u64, StoreError> {
        let census = self.census(model).await?;
        if census.consumed(priority) {
            let (waiting, running) = census.counts(priority);
            return Ok(waiting + running);
        }
        let full = self.stream().await?;
        let mut subjects = full
            .info_with_subjects(self.store.inner.subjects.queue_all(model, priority))
            .await
            .map_err(|e| StoreError::unavailable(WHAT, e))?;
        let mut n = 0;
        while let Some(entry) = subjects.next().await {
            n += entry.map_err(|e| StoreError::unavailable(WHAT, e))?.1 as u64;
        }
        Ok(n)
    }

    /// Age of the oldest task in `tenant`'s lane of `model`'s queue for `priority`
    /// (waiting or running), in ms; 0 when there is none or it cannot be read.
    pub(super) async fn lane_age_ms(&self, model: &str, priority: Priority, tenant: &str) -> u64 {
        let subjects = &self.store.inner.subjects;
        let filter = match tenant {
            UNNAMED_LANE => subjects.queue(model, priority),
            tenant => subjects.tenant_queue(model, priority, tenant),
        };
        self.first_age_ms(&filter).await
    }

    /// Wakes `model`'s fetchers: a task joined `tenant`'s lane for `priority` (a core
    /// message, best effort: a fetcher's scan finds the task anyway).
    pub(super) async fn wake(&self, model: &str, priority: Priority, tenant: &str) {
        let inner = &self.store.inner;
        let subject = inner.subjects.queue_wake(model, priority, tenant);
        if let Err(err) = inner.js.client().publish(subject, bytes::Bytes::new()).await {
            tracing::debug!(cause = %err, "lane wake not sent; the fetchers' scan finds the task");
        }
    }
}
