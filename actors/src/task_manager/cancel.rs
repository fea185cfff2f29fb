//! Cancelling and listing tasks.

use bitinglip_bus_schema::{Ack, CancelTask, ErrorKind, ListTasks, TaskEvent, TaskFailed, TaskList, WireError};
use bitinglip_nats::store::tasks::Cancelled;

use crate::NodeContext;

/// Answers `…task.<id>.cancel`: marks a queued task cancelled (its eventual delivery is
/// then dropped); a running one is stopped by its worker, which gets the same message.
pub(super) async fn handle(ctx: NodeContext, req: CancelTask) -> Result<Ack, WireError> {
    match ctx.store.tasks().cancel_queued(&req.task_id).await? {
        None => Err(WireError::new(ErrorKind::NotFound, format!("no task {}", req.task_id))),
        Some(Cancelled::NotQueued) => Ok(Ack::Ok),
        Some(Cancelled::Queued(record)) => {
            let error = record.error.clone().unwrap_or_else(|| WireError::new(ErrorKind::Cancelled, "cancelled"));
            let event = TaskEvent::Failed(TaskFailed { task_id: req.task_id.clone(), attempt: record.attempt, error });
            let _ = ctx.bus.publish(ctx.bus.subjects().task_events(&req.task_id), &event, None).await;
            Ok(Ack::Ok)
        }
    }
}

/// Answers `…task.list`: the newest records first.
pub(super) async fn list(ctx: NodeContext, req: ListTasks) -> Result<TaskList, WireError> {
    let (tasks, next) = ctx.store.tasks().list(&req).await?;
    Ok(TaskList::Tasks { tasks, next })
}
