//! The tenant lanes this task manager has made: a task is queued in its tenant's lane, so
//! the lane's consumer must be there first (a worker may not make one). Made once per
//! lane and weight, and again after [`REMAKE_AFTER`] (the server deletes a lane nobody
//! pulled for a day), so a submit costs no JetStream call beyond its publish.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use bitinglip_bus_schema::Priority;
use bitinglip_nats::{Store, StoreError};

/// How long a made lane is taken to be there without asking again.
const REMAKE_AFTER: Duration = Duration::from_secs(600);

/// A lane: its model, class and tenant.
type LaneKey = (String, Priority, String);

/// The lanes made, with the weight each was made with and when.
#[derive(Default)]
pub(super) struct Lanes {
    made: Mutex<HashMap<LaneKey, (u32, Instant)>>,
}

impl Lanes {
    /// Makes `tenant`'s lane of `model` and `priority` unless it was made lately with this
    /// `weight`.
    pub(super) async fn ensure(
        &self,
        store: &Store,
        model: &str,
        priority: Priority,
        tenant: &str,
        weight: u32,
    ) -> Result<(), StoreError> {
        let key = (model.to_string(), priority, tenant.to_string());
        let fresh = self.made.lock().ok().and_then(|m| m.get(&key).copied());
        if fresh.is_some_and(|(w, at)| w == weight && at.elapsed() < REMAKE_AFTER) {
            return Ok(());
        }
        store.queue().make_lane(model, priority, tenant, weight).await?;
        if let Ok(mut made) = self.made.lock() {
            made.insert(key, (weight, Instant::now()));
        }
        Ok(())
    }
}
