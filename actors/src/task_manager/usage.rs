//! What workers ask of task managers so that a worker's seed sets no shared state: a
//! finished task's usage is counted from the task's record rather than the worker's word
//! (so no worker can take a key's usage down with a negative `Nats-Incr`, nor charge
//! another owner), and a model's queue consumers are made with the cluster's config
//! (so no worker can reconfigure the consumers every worker shares).

use bitinglip_bus_schema::{EnsureConsumers, ErrorKind, RecordUsage, WireError};
use bitinglip_nats::store::counters::{TaskUsage, NO_KEY};

use crate::NodeContext;

/// Answers `…task.usage`: adds the finished task's tokens (as its record says) to its
/// owner's counters, once per task (a repeat within ten minutes changes nothing).
pub(super) async fn record(ctx: NodeContext, req: RecordUsage) -> Result<(), WireError> {
    let record = ctx
        .store
        .tasks()
        .get(&req.task_id)
        .await?
        .ok_or_else(|| WireError::new(ErrorKind::NotFound, format!("no task record {}", req.task_id)))?;
    if !record.state.is_final() {
        return Err(WireError::new(
            ErrorKind::Conflict,
            format!("task {} is {}, not finished: nothing to count yet", req.task_id, record.state.as_str()),
        ));
    }
    let (prompt, completion) =
        record.result.as_ref().map_or((0, 0), |r| (r.usage.prompt_tokens, r.usage.completion_tokens));
    let usage = TaskUsage {
        task_id: req.task_id.as_str(),
        key: record.owner.as_deref().unwrap_or(NO_KEY),
        model: &record.model,
        prompt_tokens: u64::from(prompt),
        completion_tokens: u64::from(completion),
        at_ms: record.updated_ms,
    };
    ctx.store.counters().record(&usage).await?;
    Ok(())
}

/// Answers `…task.consumers`: makes `model`'s queue consumers (both classes) with the
/// cluster's config, or brings them up to date, and the asking worker's pinned one, and
/// makes again any tenant lane that holds tasks but lost its consumer.
pub(super) async fn consumers(ctx: NodeContext, req: EnsureConsumers) -> Result<(), WireError> {
    if let Some(problem) = bitinglip_bus_schema::model_id_problem(&req.model) {
        return Err(WireError::new(ErrorKind::InvalidRequest, format!("model id {:?} {problem}", req.model)));
    }
    if let Some(worker) = &req.worker_id {
        if worker.is_empty() || worker.len() > 128 {
            return Err(WireError::new(ErrorKind::InvalidRequest, "worker_id must be 1 to 128 bytes"));
        }
    }
    let queue = ctx.store.queue();
    queue.consumers(&req.model, req.worker_id.as_deref()).await?;
    // Lanes the server deleted while nobody pulled them, whose tasks wait on.
    let restored = queue.restore_lanes(&req.model).await?;
    if restored > 0 {
        tracing::info!(model = %req.model, lanes = restored, "tenant lanes with waiting tasks made again");
    }
    Ok(())
}
