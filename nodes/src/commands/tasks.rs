//! `bitinglip tasks …`: the task API over NATS.

use std::io::Write;

use anyhow::bail;
use bitinglip_bus_schema::{ChatParams, GetTask, ListTasks, Priority, SubmitRequest, TaskId, TaskRecord, TaskState};
use bitinglip_client::{cancel, Relayed, TaskWatch};
use bitinglip_config::Config;

use crate::cli::TasksCommand;

fn record_json(r: &TaskRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.task_id.as_str(), "model": r.model, "status": r.state.as_str(), "attempts": r.attempt,
        "worker": r.worker, "created_ms": r.created_ms, "updated_ms": r.updated_ms,
        "text": r.result.as_ref().map(|d| d.text.clone()),
        "finish_reason": r.result.as_ref().map(|d| d.finish_reason.as_str()),
        "completion_tokens": r.result.as_ref().map(|d| d.usage.completion_tokens),
        "error": r.error.as_ref().map(|e| format!("{}: {}", e.kind, e.message)),
        "cancel_to_stop_ms": r.cancel_to_stop_ms,
    })
}

/// Whose task `task_id` is: its subjects name the owner.
async fn owner_of(bus: &bitinglip_nats::Bus, task_id: &TaskId) -> anyhow::Result<Option<String>> {
    Ok(bus.call(&GetTask { task_id: task_id.clone() }).await.map_err(super::said)?.owner)
}

pub(super) async fn run(config: Config, cmd: TasksCommand) -> anyhow::Result<()> {
    let bus = super::client_bus(&config).await?;
    match cmd {
        TasksCommand::Submit { model, max_tokens, priority, idempotency_key, prompt } => {
            let priority = match priority.as_str() {
                "interactive" => Priority::Interactive,
                "batch" => Priority::Batch,
                other => bail!("--priority {other:?}: use interactive or batch"),
            };
            let chat = ChatParams { max_tokens, ..ChatParams::user(model, prompt) };
            let req = SubmitRequest { idempotency_key, priority, ..SubmitRequest::new(chat) };
            let a =
                bus.call_as(None, &req).await.map_err(|e| anyhow::anyhow!("rejected ({}): {}", e.kind, e.message))?;
            println!("{}", a.task_id);
        }
        TasksCommand::Get { id } => {
            let task_id = TaskId::parse(id)?;
            let mut r = bus.call(&GetTask { task_id }).await.map_err(super::said)?;
            // An answer too large for one message is in the results store.
            if let Some(done) = r.result.as_mut() {
                if done.text_object.is_some() || done.parts_object.is_some() {
                    let store = bitinglip_nats::Store::open(&bus, &config).await?;
                    if let Some(name) = done.text_object.clone() {
                        done.text = store.results().get(&name).await?.unwrap_or_default();
                    }
                    store.results().resolve_parts(done).await?;
                }
            }
            println!("{}", serde_json::to_string_pretty(&record_json(&r))?)
        }
        TasksCommand::Watch { id, from } => {
            let task_id = TaskId::parse(id)?;
            let store = bitinglip_nats::Store::open(&bus, &config).await?;
            let owner = owner_of(&bus, &task_id).await?;
            let mut watch = TaskWatch::resume(&bus, &store, owner.as_deref(), &task_id, from).await?;
            let mut out = std::io::stdout().lock();
            while let Some(r) = watch.next().await {
                match r {
                    Relayed::Started { attempt, .. } if attempt > 1 => eprintln!("[attempt {attempt}]"),
                    Relayed::Started { .. } => {}
                    Relayed::Text { text, .. } => {
                        out.write_all(text.as_bytes())?;
                        out.flush()?;
                    }
                    Relayed::Done(d) => {
                        writeln!(out)?;
                        eprintln!("[{} · {} tokens]", d.finish_reason.as_str(), d.usage.completion_tokens);
                        return Ok(());
                    }
                    Relayed::Failed(e) => bail!("task failed ({}): {}", e.kind, e.message),
                }
            }
        }
        TasksCommand::Cancel { id } => {
            let task_id = TaskId::parse(id)?;
            let owner = owner_of(&bus, &task_id).await?;
            cancel(&bus, owner.as_deref(), &task_id, "cancelled from the CLI").await?;
            println!("cancel requested for {task_id}");
        }
        TasksCommand::Ls { state, limit, json } => {
            let state = match state.as_deref() {
                None => None,
                Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
                    anyhow::anyhow!("--state {s:?}: use queued, running, completed, failed or cancelled")
                })?),
            };
            let query = ListTasks { limit: Some(limit), state, owner: None, before: None };
            let tasks = bus.call(&query).await.map_err(super::said)?.tasks;
            if json {
                let v: Vec<_> = tasks.iter().map(record_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut rows = vec![["ID", "MODEL", "STATUS", "ATTEMPTS", "WORKER"].map(String::from).to_vec()];
            for t in &tasks {
                rows.push(vec![
                    t.task_id.to_string(),
                    t.model.clone(),
                    t.state.as_str().into(),
                    t.attempt.to_string(),
                    t.worker.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            super::print_table(&rows);
        }
    }
    Ok(())
}
