//! Downloading a hub model on this node: progress published on `…model.<model>.progress`,
//! this node's state of the model held as `downloading` (a lease) and then `ready` or
//! `failed`. The puller serves it on the bus; a worker runs it before loading a hub model.

use bitinglip_bus_schema::{ErrorKind, ModelState, PullProgress, WireError};

use super::hub::{Hub, Pulled};
use crate::NodeContext;

/// Pulls `model` at `revision` into the hub cache.
pub async fn pull(ctx: &NodeContext, model: &str, revision: &str) -> Result<Pulled, WireError> {
    if let Some(problem) = bitinglip_bus_schema::model_id_problem(model) {
        return Err(WireError::new(ErrorKind::InvalidRequest, format!("invalid model id {model:?}: it {problem}")));
    }
    let hub = Hub::new(&ctx.config.hub)?;
    let bus = ctx.bus.clone();
    let subject = bus.subjects().model_progress(model);
    let progress = move |p: PullProgress| {
        let (bus, subject) = (bus.clone(), subject.clone());
        tokio::spawn(async move {
            let _ = bus.publish(subject, &p, None).await;
        });
    };
    tracing::info!(model, revision, "pulling from the hub");
    let lease = ctx.store.hold_model_status(model, ModelState::Downloading).await;
    let pulled = hub.pull(model, revision, progress).await;
    drop(lease);
    let (state, reason) = match &pulled {
        Ok(_) => (ModelState::Ready, None),
        Err(err) => (ModelState::Failed, Some(err.to_string())),
    };
    if let Err(err) = ctx.store.model_status().set(model, state, reason).await {
        tracing::warn!(model, cause = %err, "model status not written");
    }
    let pulled = pulled?;
    tracing::info!(model, sha = %pulled.sha, files = pulled.files.len(), dir = %pulled.dir.display(), "pulled");
    Ok(pulled)
}
