//! The tasks pinned to one worker by cache-affinity routing: handing one on to the shared
//! queue (a release by a full worker, or a requeue of a delivery with no slot), finding the
//! pinned consumers of workers gone, and counting what waits in pinned consumers.

use async_nats::jetstream::consumer::{pull::Config as PullConfig, PullConsumer};
use futures::StreamExt;

use super::{publish_error, pull_from, Delivery, Pull, Queue, StoreError, WHAT};
use crate::now_ms;

/// How old a pinned consumer must be before its worker's absence from the heartbeats
/// makes it an orphan (a new worker makes its consumer before its first heartbeat).
const ORPHAN_AFTER_MS: i128 = 10_000;

impl Queue<'_> {
    /// Hands a pinned task its worker has no room for to the model's shared queue: a copy
    /// there (deduplicated on the pinned message's sequence, so a release repeated after
    /// a lost ack queues one copy), then the pinned message acked. Only a task no attempt
    /// has claimed is released (its first delivery): the copy is then a fresh task.
    pub async fn release(&self, delivery: &Delivery) -> Result<(), StoreError> {
        // The shared subject is the pinned one without its last token (the worker).
        let Some((shared, _worker)) = delivery.subject().rsplit_once('.') else {
            return Err(StoreError::unavailable(
                WHAT,
                format!("{} is not a pinned task's subject", delivery.subject()),
            ));
        };
        self.copy_then_ack(delivery, shared.to_string()).await
    }

    /// Puts a first delivery its worker has no slot for back at the end of its queue,
    /// without spending one of its deliveries (a NAK would): a copy on its own subject,
    /// deduplicated as [`Self::release`]'s, then the delivery acked.
    pub async fn requeue(&self, delivery: &Delivery) -> Result<(), StoreError> {
        // `…queue.<model>.<class>.<task>`, or pinned with `.<worker>` after it: a pinned
        // one goes to the shared queue (its worker has no slot).
        let all = self.store.inner.subjects.all_queues();
        let root = &all[..all.len() - 1];
        let pinned = delivery.subject().strip_prefix(root).is_some_and(|rest| rest.split('.').count() == 4);
        if pinned {
            return self.release(delivery).await;
        }
        self.copy_then_ack(delivery, delivery.subject().to_string()).await
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
    fn pinned_of(&self, model: &str, filter: &str) -> bool {
        let one = self.store.inner.subjects.pinned_queue(model, "w");
        let stem = &one[..one.len() - 1];
        filter.len() > stem.len() && filter.starts_with(stem) && !filter[stem.len()..].contains('.')
    }

    /// Tasks waiting (not yet delivered) and running (delivered, not acked) in the pinned
    /// consumers of `model`: one listing of the stream's consumers.
    pub(super) async fn pinned_counts(&self, model: &str) -> Result<(u64, u64), StoreError> {
        let stream = self.handle().await?;
        let (mut waiting, mut running) = (0, 0);
        let mut list = stream.consumers();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| StoreError::unavailable(WHAT, e))?;
            if self.pinned_of(model, &info.config.filter_subject) {
                waiting += info.num_pending;
                running += info.num_ack_pending as u64;
            }
        }
        Ok((waiting, running))
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
