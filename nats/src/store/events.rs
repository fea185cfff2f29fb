//! The task events stream: it captures every event workers publish on `…task.<id>.events`
//! (core NATS, no per-token round trip) so that a client can read back what it missed
//! and a new attempt can continue after what earlier ones streamed.

use std::time::Duration;

use async_nats::jetstream::consumer;
use bitinglip_bus_schema::{decode_body, TaskEvent, TaskId};
use futures::StreamExt;

use super::{Store, StoreError, MAX_VALUE_BYTES};

const WHAT: &str = "events stream";

impl Store {
    /// Every event stored for `task_id`, in publication order. Events that do not decode
    /// are skipped.
    pub async fn stored_events(&self, task_id: &TaskId) -> Result<Vec<TaskEvent>, StoreError> {
        let unavailable = |e: &dyn std::fmt::Display| StoreError::unavailable(WHAT, e);
        let inner = &self.inner;
        let stream = inner.js.get_stream(inner.subjects.events_stream()).await.map_err(|e| unavailable(&e))?;
        // An ephemeral consumer of this task's subject only, gone after 30 s unused.
        let mut consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: inner.subjects.task_events(task_id),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(&e))?;
        let pending = consumer.info().await.map_err(|e| unavailable(&e))?.num_pending;
        let mut events = Vec::new();
        if pending > 0 {
            let mut messages = consumer
                .batch()
                .max_messages(pending as usize)
                .expires(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| unavailable(&e))?;
            let mut seen = 0u64;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(|e| unavailable(&e))?;
                seen += 1;
                if let Ok(event) = decode_body::<TaskEvent>(&msg.message.payload, MAX_VALUE_BYTES) {
                    events.push(event);
                }
                if seen >= pending {
                    break;
                }
            }
        }
        let _ = stream.delete_consumer(&consumer.cached_info().name).await;
        Ok(events)
    }
}
