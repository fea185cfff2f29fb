//! Cancelling, reading and listing tasks, each for the owner the subject names.

use bitinglip_bus_schema::{
    CancelTask, ErrorKind, GetResult, GetTask, ListTasks, ResultPart, TaskEvent, TaskFailed, TaskPage, TaskRecord,
    WireError, RESULT_PART_MAX,
};
use bitinglip_nats::store::tasks::Cancelled;

use crate::NodeContext;

fn no_task(task_id: &impl std::fmt::Display) -> WireError {
    WireError::new(ErrorKind::NotFound, format!("no task {task_id}"))
}

/// `owner`'s task `task_id`: another owner's is `not_found`, as an unknown one is.
async fn owned(
    ctx: &NodeContext,
    owner: &Option<String>,
    task_id: &bitinglip_bus_schema::TaskId,
) -> Result<TaskRecord, WireError> {
    match ctx.store.tasks().status(task_id).await? {
        Some(record) if record.owner == *owner => Ok(record),
        _ => Err(no_task(task_id)),
    }
}

/// Answers `…task.<owner>.<id>.cancel`: marks `owner`'s queued task cancelled (its
/// eventual delivery is then dropped); a running one is stopped by its worker, which gets
/// the same message (and checks the owner too).
pub(super) async fn handle(ctx: NodeContext, owner: Option<String>, req: CancelTask) -> Result<(), WireError> {
    owned(&ctx, &owner, &req.task_id).await?;
    match ctx.store.tasks().cancel_queued(&req.task_id).await? {
        None => Err(no_task(&req.task_id)),
        Some(Cancelled::NotQueued) => Ok(()),
        Some(Cancelled::Queued(record)) => {
            let error = record.error.clone().unwrap_or_else(|| WireError::new(ErrorKind::Cancelled, "cancelled"));
            let event = TaskEvent::Failed(TaskFailed { task_id: req.task_id.clone(), attempt: record.attempt, error });
            let subject = ctx.bus.subjects().task_events(record.owner.as_deref(), &req.task_id);
            let _ = ctx.bus.publish(subject, &event, None).await;
            Ok(())
        }
    }
}

/// Answers `…task.list`: the newest records first.
pub(super) async fn list(ctx: NodeContext, req: ListTasks) -> Result<TaskPage, WireError> {
    let (tasks, next) = ctx.store.tasks().list(&req).await?;
    Ok(TaskPage { tasks, next })
}

/// Answers `…task.<owner>.list`: the owner's tasks only, whatever the request's `owner`.
pub(super) async fn list_own(
    ctx: NodeContext,
    owner: Option<String>,
    mut req: ListTasks,
) -> Result<TaskPage, WireError> {
    // An owner-less subject lists the owner-less tasks, not every task.
    let Some(owner) = owner else {
        return Err(WireError::new(ErrorKind::InvalidRequest, "an owner's list needs an owner"));
    };
    req.owner = Some(owner);
    list(ctx, req).await
}

/// Answers `…task.<owner>.get`: the record of one of the owner's tasks.
pub(super) async fn get_own(ctx: NodeContext, owner: Option<String>, req: GetTask) -> Result<TaskRecord, WireError> {
    owned(&ctx, &owner, &req.task_id).await
}

/// Answers `…task.<owner>.result`: a part of an object the results store keeps for one of
/// the owner's tasks (its name starts with the task's id).
pub(super) async fn result_part(
    ctx: NodeContext,
    owner: Option<String>,
    req: GetResult,
) -> Result<ResultPart, WireError> {
    owned(&ctx, &owner, &req.task_id).await?;
    let gone = || WireError::new(ErrorKind::NotFound, format!("no result {} of task {}", req.name, req.task_id));
    if !req.name.strip_prefix(req.task_id.as_str()).is_some_and(|rest| rest.starts_with('.')) {
        return Err(gone());
    }
    let (data, size) = ctx.store.results().part(&req.name, req.offset, RESULT_PART_MAX).await?.ok_or_else(gone)?;
    Ok(ResultPart { offset: req.offset.min(size), data, size })
}
