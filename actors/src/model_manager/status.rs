//! Per-node model status in the models bucket (`<model>.<node>` keys), with leases: a
//! node downloading or loading a model renews its entry every third of the node TTL; an
//! entry whose lease ran out reads as failed, so a node that dies mid-way leaves nothing
//! stuck in "downloading".

use std::time::Duration;

use bitinglip_bus_schema::{decode_body, encode, Envelope, ErrorKind, ModelNodeStatus, ModelState, WireError};
use bitinglip_nats::now_ms;
use futures::TryStreamExt;
use tokio::task::JoinHandle;

use crate::NodeContext;

fn status(ctx: &NodeContext, model: &str, state: ModelState, reason: Option<String>) -> ModelNodeStatus {
    let now = now_ms();
    let ttl = ctx.config.cluster.node_ttl.as_millis() as u64;
    ModelNodeStatus {
        model: model.to_string(),
        node: ctx.node_id().to_string(),
        state,
        reason,
        lease_until_ms: state.holds_lease().then_some(now + ttl),
        updated_ms: now,
    }
}

/// Writes this node's status of `model`.
pub async fn set(ctx: &NodeContext, model: &str, state: ModelState, reason: Option<String>) {
    let st = status(ctx, model, state, reason);
    let env = Envelope::new(ulid::Ulid::new().to_string(), st.updated_ms, ctx.node_id(), &st);
    let Ok(bytes) = encode(&env) else { return };
    let key = ctx.bus.subjects().model_node_key(model, ctx.node_id());
    if let Err(err) = ctx.kv.models.put(key, bytes.into()).await {
        tracing::warn!(model, state = state.as_str(), cause = %err, "model status not written");
    }
}

/// Removes this node's status of `model` (the node no longer has it loaded).
pub async fn clear(ctx: &NodeContext, model: &str) {
    let _ = ctx.kv.models.delete(ctx.bus.subjects().model_node_key(model, ctx.node_id())).await;
}

/// Holds a lease on a downloading or loading state: renewed until dropped.
pub struct Lease {
    renew: JoinHandle<()>,
}

impl Lease {
    /// Writes `state` now and keeps renewing it.
    pub async fn hold(ctx: &NodeContext, model: &str, state: ModelState) -> Lease {
        set(ctx, model, state, None).await;
        let (ctx, model) = (ctx.clone(), model.to_string());
        let every = (ctx.config.cluster.node_ttl / 3).max(Duration::from_millis(100));
        let renew = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                set(&ctx, &model, state, None).await;
            }
        });
        Lease { renew }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}

/// Every node's status (of `model`, or of all), leases applied.
pub async fn list(ctx: &NodeContext, model: Option<&str>) -> Result<Vec<ModelNodeStatus>, WireError> {
    let unavailable = |e: &dyn std::fmt::Display| WireError::new(ErrorKind::Unavailable, format!("model registry: {e}"));
    let keys: Vec<String> =
        ctx.kv.models.keys().await.map_err(|e| unavailable(&e))?.try_collect().await.map_err(|e| unavailable(&e))?;
    let now = now_ms();
    let mut out = Vec::new();
    for key in keys.into_iter().filter(|k| k.contains('.')) {
        let Some(bytes) = ctx.kv.models.get(&key).await.map_err(|e| unavailable(&e))? else { continue };
        if let Ok(st) = decode_body::<ModelNodeStatus>(&bytes, usize::MAX) {
            if model.is_none_or(|m| m == st.model) {
                out.push(st.effective(now));
            }
        }
    }
    out.sort_by(|a, b| a.model.cmp(&b.model).then(a.node.cmp(&b.node)));
    Ok(out)
}
