//! The tasks pinned to one worker by cache-affinity routing: handing one on to its tenant's
//! lane (a release by a full worker, or a requeue of a delivery with no slot), and finding
//! the pinned consumers of workers gone.

use async_nats::jetstream::consumer::{pull::Config as PullConfig, PullConsumer};
use futures::StreamExt;

use bitinglip_bus_schema::{decode_body, TaskSpec};

use super::{publish_error, pull_from, Delivery, Pull, Queue, StoreError, MAX_VALUE_BYTES, WHAT};
use crate::now_ms;

/// How old a pinned consumer must be before its worker's absence from the heartbeats
/// makes it an orphan (a new worker makes its consumer before its first heartbeat).
const ORPHAN_AFTER_MS: i128 = 10_000;

impl Queue<'_> {
    /// Hands a pinned task its worker has no room for to its tenant's lane of the model's
    /// queue: a copy there (deduplicated on the pinned message's sequence, so a release
    /// repeated after a lost ack queues one copy), then the pinned message acked, then the
    /// model's fetchers woken. Only a task no attempt has claimed is released (its first
    /// delivery): the copy is then a fresh task.
    pub async fn release(&self, delivery: &Delivery) -> Result<(), StoreError> {
        let spec = decode_body::<TaskSpec>(&delivery.msg.payload, MAX_VALUE_BYTES)
            .map_err(|e| StoreError::unavailable(WHAT, format!("a pinned task that does not decode: {e}")))?;
        let (model, priority, tenant) = (&spec.chat.model, spec.priority, spec.tenant());
        let lane = self.store.inner.subjects.fair_task(model, priority, tenant, &spec.task_id);
        self.copy_then_ack(delivery, lane).await?;
        self.wake(model, priority, tenant).await;
        Ok(())
    }

    /// Puts a first delivery its worker has no slot for back at the end of its queue,
    /// without spending one of its deliveries (a NAK would): a copy on its own subject,
    /// deduplicated as [`Self::release`]'s, then the delivery acked. A pinned one goes to
    /// its tenant's lane (its worker has no slot).
    pub async fn requeue(&self, delivery: &Delivery) -> Result<(), StoreError> {
        // `…queue.<model>.<class>.<task>` (before tenants), `….t.<tenant>.<task>` (a
        // lane), or pinned: `….<task>.<worker>`.
        let all = self.store.inner.subjects.all_queues();
        let root = &all[..all.len() - 1];
        let tokens = delivery.subject().strip_prefix(root).map_or(0, |rest| rest.split('.').count());
        if tokens == 4 {
            return self.release(delivery).await;
        }
        self.copy_then_ack(delivery, delivery.subject().to_string()).await?;
        if let Ok(spec) = decode_body::<TaskSpec>(&delivery.msg.payload, MAX_VALUE_BYTES) {
            self.wake(&spec.chat.model, spec.priority, spec.tenant()).await;
        }
        Ok(())
    }

    async fn copy_then_ack(&self, delivery: &Delivery, subject: String) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        let mut headers = delivery.msg.headers.clone().unwrap_or_default();
        let id = format!("released-{}", delivery.stream_sequence());
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        inner
            .js
            .publish_with_headers(subject, headers, delivery.msg.payload.clone())
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        delivery.ack().await
    }

    /// The pinned consumers of `model` whose workers are not in `live` (dead, or gone
    /// since): their tasks are for the model's other workers to take. A consumer younger
    /// than 10 s counts only when its worker is in `gone` (seen leaving). One listing of
    /// the stream's consumers.
    pub async fn orphaned(
        &self,
        model: &str,
        live: &std::collections::HashSet<String>,
        gone: &std::collections::HashSet<String>,
    ) -> Result<Vec<Orphan>, StoreError> {
        let stream = self.handle().await?;
        let subjects = &self.store.inner.subjects;
        let mut names = Vec::new();
        let mut list = stream.consumers();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| StoreError::unavailable(WHAT, e))?;
            let filter = &info.config.filter_subject;
            // A consumer just made may belong to a worker whose first heartbeat is on
            // its way: not an orphan yet, unless its worker was seen leaving.
            let age_ms = now_ms() as i128 - info.created.unix_timestamp_nanos() / 1_000_000;
            let seen_leaving = gone.iter().any(|w| subjects.pinned_queue(model, w) == *filter);
            if self.pinned_of(model, filter)
                && (age_ms >= ORPHAN_AFTER_MS || seen_leaving)
                && !live.iter().any(|w| subjects.pinned_queue(model, w) == *filter)
            {
                names.push(info.name);
            }
        }
        let mut out = Vec::new();
        for name in names {
            // One deleted since the listing is simply not taken over.
            if let Ok(consumer) = stream.get_consumer::<PullConfig>(&name).await {
                out.push(Orphan { consumer });
            }
        }
        Ok(out)
    }

    /// True when `filter` is a pinned consumer's filter of `model`.
    pub(super) fn pinned_of(&self, model: &str, filter: &str) -> bool {
        let one = self.store.inner.subjects.pinned_queue(model, "w");
        let stem = &one[..one.len() - 1];
        filter.len() > stem.len() && filter.starts_with(stem) && !filter[stem.len()..].contains('.')
    }
}

/// The pinned consumer of a worker gone (or draining), whose tasks another worker takes
/// over.
#[derive(Clone)]
pub struct Orphan {
    consumer: PullConsumer,
}

impl Orphan {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.consumer.cached_info().name
    }

    /// Its filter: the worker's pinned subject.
    pub fn filter(&self) -> &str {
        &self.consumer.cached_info().config.filter_subject
    }

    /// Up to `n` of its waiting tasks, those waiting now.
    pub async fn pull(&self, n: usize) -> Result<Pull, StoreError> {
        pull_from(&self.consumer, n, None).await
    }
}
