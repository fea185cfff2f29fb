//! `bitinglip models …`: search the hub, pull with a live progress bar, list.

use std::{io::Write, time::Duration};

use bitinglip_bus_schema::{
    DeleteModel, ListModels, ModelRef, ModelSource, ModelState, PullModel, PullProgress, SearchModels, UnloadModel,
};
use bitinglip_config::Config;
use futures::StreamExt;

use crate::cli::ModelsCommand;

fn bar(p: &PullProgress) -> String {
    let frac = if p.file_size == 0 { 1.0 } else { p.file_done as f64 / p.file_size as f64 };
    let filled = (frac * 30.0).round() as usize;
    format!(
        "\r[{}{}] {:>3.0}%  {} ({:.1}/{:.1} MB)  file {}/{}   ",
        "#".repeat(filled.min(30)),
        " ".repeat(30 - filled.min(30)),
        frac * 100.0,
        p.file,
        p.file_done as f64 / 1e6,
        p.file_size as f64 / 1e6,
        p.files_done + 1,
        p.files_total
    )
}

/// For `up --model <hub id>`: the download's live bar (as `models pull` draws it), then the
/// load, until this node serves the model or says why it cannot.
///
/// `progress` is the subscription to the model's progress subject, made before the
/// worker starts so that not even a quick download is missed.
pub(super) async fn follow_load(
    bus: bitinglip_nats::Bus,
    mut progress: async_nats::Subscriber,
    store: bitinglip_nats::store::Store,
    served: String,
    node: String,
) {
    let mut err = std::io::stderr();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut drawing = false;
    let mut said_loading = false;
    loop {
        tokio::select! {
            Some(msg) = progress.next() => {
                if let Ok(p) = bus.decode::<PullProgress>(&msg) {
                    let _ = write!(err, "{}", bar(&p.envelope.body));
                    let _ = err.flush();
                    drawing = true;
                }
            }
            _ = tick.tick() => {
                let statuses = store.model_status().list(Some(&served)).await.unwrap_or_default();
                let Some(status) = statuses.into_iter().find(|s| s.node == node) else { continue };
                let end_bar = |drawing: &mut bool| {
                    if std::mem::take(drawing) {
                        eprintln!();
                    }
                };
                match status.state {
                    ModelState::Loading if !said_loading => {
                        end_bar(&mut drawing);
                        eprintln!("bitinglip: loading {served}");
                        said_loading = true;
                    }
                    ModelState::Loaded => {
                        end_bar(&mut drawing);
                        if !said_loading {
                            // Loaded between two looks: it did load.
                            eprintln!("bitinglip: loading {served}");
                        }
                        eprintln!("bitinglip: {served} loaded; serving");
                        return;
                    }
                    ModelState::Failed => {
                        end_bar(&mut drawing);
                        eprintln!("bitinglip: {served} failed: {}", status.reason.unwrap_or_default());
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

pub(super) async fn run(config: Config, cmd: ModelsCommand) -> anyhow::Result<()> {
    let bus = super::client_bus(&config).await?;
    match cmd {
        ModelsCommand::Search { query, limit, json } => {
            let req = SearchModels { query, limit: Some(limit) };
            let models = bus
                .call_with(&req, None, Some(Duration::from_secs(60)))
                .await
                .map_err(|e| anyhow::anyhow!("search failed ({}): {}", e.kind, e.message))?;
            if json {
                let v: Vec<_> = models
                    .iter()
                    .map(|m| serde_json::json!({"id": m.id, "downloads": m.downloads, "likes": m.likes}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut rows = vec![vec!["ID".to_string(), "DOWNLOADS".into(), "LIKES".into()]];
            for m in models {
                let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
                rows.push(vec![m.id, n(m.downloads), n(m.likes)]);
            }
            super::print_table(&rows);
        }
        ModelsCommand::Pull { model, revision } => {
            let mut progress = bus.subscribe(bus.subjects().model_progress(&model)).await?;
            let req = PullModel { model: model.clone(), revision: Some(revision) };
            let pull = bus.call_with(&req, None, Some(Duration::from_secs(24 * 3600)));
            tokio::pin!(pull);
            let mut err = std::io::stderr();
            let reply = loop {
                tokio::select! {
                    reply = &mut pull => break reply,
                    Some(msg) = progress.next() => {
                        if let Ok(p) = bus.decode::<PullProgress>(&msg) {
                            let _ = write!(err, "{}", bar(&p.envelope.body));
                            let _ = err.flush();
                        }
                    }
                }
            };
            let _ = writeln!(err);
            let record = reply.map_err(|e| anyhow::anyhow!("pull failed ({}): {}", e.kind, e.message))?;
            let bytes: u64 = record.files.iter().map(|f| f.size).sum();
            println!(
                "pulled {} at {} ({} files, {:.1} MB)",
                record.id,
                record.revision_sha.unwrap_or_default(),
                record.files.len(),
                bytes as f64 / 1e6
            );
        }
        ModelsCommand::Status { model } => {
            let req = bitinglip_bus_schema::GetModelStatus { model };
            let statuses = bus.call(&req).await.map_err(super::said)?;
            let mut rows = vec![vec!["MODEL".to_string(), "NODE".into(), "STATE".into(), "REASON".into()]];
            for s in statuses {
                rows.push(vec![s.model, s.node, s.state.as_str().into(), s.reason.unwrap_or_else(|| "-".into())]);
            }
            super::print_table(&rows);
        }
        ModelsCommand::Ls { json } => {
            let models = bus.call(&ListModels {}).await.map_err(super::said)?;
            if json {
                let v: Vec<_> = models
                    .iter()
                    .map(|m| serde_json::json!({"id": m.id, "revision_sha": m.revision_sha, "context_length": m.context_length,
                        "files": m.files.iter().map(|f| serde_json::json!({"name": f.name, "size": f.size, "sha256": f.sha256})).collect::<Vec<_>>()}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut rows =
                vec![vec!["ID".to_string(), "SOURCE".into(), "REVISION".into(), "FILES".into(), "CONTEXT".into()]];
            for m in models {
                let source = match &m.source {
                    ModelSource::Local { path } => path.clone(),
                    ModelSource::Hub { revision } => format!("hub@{revision}"),
                };
                rows.push(vec![
                    m.id.clone(),
                    source,
                    m.revision_sha.clone().map(|s| s.chars().take(12).collect()).unwrap_or_else(|| "-".into()),
                    m.files.len().to_string(),
                    m.context_length.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                ]);
            }
            super::print_table(&rows);
        }
        ModelsCommand::Load { model, replicas } => {
            let req = bitinglip_bus_schema::LoadModel { model, replicas: Some(replicas) };
            let d = bus.call(&req).await.map_err(|e| anyhow::anyhow!("load failed ({}): {}", e.kind, e.message))?;
            println!(
                "{}: {} replica(s) wanted; `bitinglip models status --model {}` shows the load",
                d.model, d.replicas, d.model
            )
        }
        ModelsCommand::Unload { model } => {
            let req = UnloadModel(ModelRef { model: model.clone() });
            bus.call(&req).await.map_err(super::said)?;
            println!("{model}: unloading");
        }
        ModelsCommand::Rm { model } => {
            let req = DeleteModel(ModelRef { model: model.clone() });
            bus.call(&req).await.map_err(super::said)?;
            println!("{model}: removed");
        }
    }
    Ok(())
}
