//! Cancelling and listing tasks.

use async_nats::jetstream::kv;
use bitinglip_bus_schema::{
    decode_body, encode, Ack, CancelTask, Envelope, ErrorKind, ListTasks, TaskEvent, TaskFailed, TaskList, TaskRecord,
    TaskState, WireError,
};
use bitinglip_nats::now_ms;
use futures::TryStreamExt;

use crate::NodeContext;

/// Answers `…task.<id>.cancel`: marks a queued task cancelled (its eventual delivery is
/// then dropped); a running one is stopped by its worker, which gets the same message.
pub(super) async fn handle(ctx: NodeContext, req: CancelTask) -> Result<Ack, WireError> {
    cancel(&ctx, &req).await.map(|()| Ack::Ok)
}

async fn cancel(ctx: &NodeContext, req: &CancelTask) -> Result<(), WireError> {
    let key = req.task_id.as_str();
    for _ in 0..5 {
        let entry = ctx
            .kv
            .tasks
            .entry(key)
            .await
            .map_err(|e| WireError::new(ErrorKind::Unavailable, e.to_string()))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(WireError::new(ErrorKind::NotFound, format!("no task {}", req.task_id)));
        };
        let mut record: TaskRecord = decode_body(&entry.value, usize::MAX)
            .map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?;
        if record.state != TaskState::Queued {
            // Final: nothing to do. Running: its worker got this same message and stops
            // the sequence; the record is the worker's to write (its claim fences it).
            return Ok(());
        }
        let now = now_ms();
        record.cancel_requested_ms.get_or_insert(now);
        record.updated_ms = now;
        let queued = true;
        let error = WireError::new(ErrorKind::Cancelled, "cancelled before it started");
        if queued {
            record.state = TaskState::Cancelled;
            record.error = Some(error.clone());
        }
        let env = Envelope::new(ulid::Ulid::new().to_string(), now, ctx.node_id(), &record);
        let bytes = encode(&env).map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?;
        match ctx.kv.tasks.update(key, bytes.into(), entry.revision).await {
            Ok(_) => {
                if queued {
                    let event = TaskEvent::Failed(TaskFailed { task_id: req.task_id.clone(), attempt: record.attempt, error });
                    let _ = ctx.bus.publish(ctx.bus.subjects().task_events(&req.task_id), &event, None).await;
                }
                return Ok(());
            }
            Err(_) => continue,
        }
    }
    Err(WireError::new(ErrorKind::Unavailable, "the task's record kept changing; retry"))
}

/// Answers `…task.list`: the newest records first.
pub(super) async fn list(ctx: NodeContext, req: ListTasks) -> Result<TaskList, WireError> {
    Ok(TaskList::Tasks { tasks: read_all(&ctx, &req).await? })
}

async fn read_all(ctx: &NodeContext, req: &ListTasks) -> Result<Vec<TaskRecord>, WireError> {
    let unavailable = |e: &dyn std::fmt::Display| WireError::new(ErrorKind::Unavailable, format!("task status store: {e}"));
    let limit = req.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let keys: Vec<String> =
        ctx.kv.tasks.keys().await.map_err(|e| unavailable(&e))?.try_collect().await.map_err(|e| unavailable(&e))?;
    let mut tasks = Vec::new();
    for key in keys {
        let Some(bytes) = ctx.kv.tasks.get(&key).await.map_err(|e| unavailable(&e))? else { continue };
        if let Ok(record) = decode_body::<TaskRecord>(&bytes, usize::MAX) {
            if req.state.is_none_or(|s| s == record.state) {
                tasks.push(record);
            }
        }
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.created_ms));
    tasks.truncate(limit);
    Ok(tasks)
}
