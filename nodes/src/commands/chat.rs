//! `bitinglip chat`: submit over NATS and stream the answer to the terminal.

use std::io::Write;

use anyhow::bail;
use bitinglip_bus_schema::{ChatMessage, ChatParams, Priority, SubmitRequest, TaskId};
use bitinglip_client::{Relayed, TaskWatch};
use bitinglip_config::Config;

use crate::cli::ChatArgs;

pub(super) async fn run(config: Config, args: ChatArgs) -> anyhow::Result<()> {
    let bus = super::client_bus(&config).await?;
    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", args.prompt));
    let task_id = TaskId::parse(ulid::Ulid::new().to_string())?;
    let req = SubmitRequest {
        chat: ChatParams {
            model: args.model,
            messages,
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            ..ChatParams::default()
        },
        task_id: Some(task_id.clone()),
        idempotency_key: None,
        priority: Priority::Interactive,
        wait_for_model: true,
        owner: None,
        new_id: true,
        tenant: None,
        weight: None,
    };
    let store = bitinglip_nats::Store::open(&bus, &config).await?;
    let mut watch = TaskWatch::subscribe(&bus, &store, None, &task_id).await?;
    bus.call_as(None, &req).await.map_err(|err| anyhow::anyhow!("rejected ({}): {}", err.kind, err.message))?;
    let mut out = std::io::stdout().lock();
    while let Some(r) = watch.next().await {
        match r {
            Relayed::Started { .. } => {}
            Relayed::Text { text: t, .. } => {
                out.write_all(t.as_bytes())?;
                out.flush()?;
            }
            Relayed::Done(done) => {
                writeln!(out)?;
                eprintln!(
                    "[{} · {} prompt + {} completion tokens · first token {:.0} ms · total {:.0} ms]",
                    done.finish_reason.as_str(),
                    done.usage.prompt_tokens,
                    done.usage.completion_tokens,
                    done.usage.time_to_first_token_ms,
                    done.usage.total_time_ms
                );
                return Ok(());
            }
            Relayed::Failed(err) => bail!("task failed ({}): {}", err.kind, err.message),
        }
    }
    bail!("the answer ended without a result")
}
