//! Live state for clients that watch (the dashboard): every model's queues, and a pull's
//! progress as server-sent events.

use std::convert::Infallible;

use axum::{
    extract::{Extension, State},
    response::sse::{Event, KeepAlive, Sse},
    Json,
};
use bitinglip_bus_schema::{ApiKey, ListModels, PullProgress, WireError};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::gateway::error::{ApiError, Query};
use crate::NodeContext;

/// One queue: a model and a priority class.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueView {
    /// The model.
    model: String,
    /// `interactive` or `batch`.
    priority: &'static str,
    /// Tasks not yet delivered to a worker.
    waiting: u64,
    /// Tasks delivered and not yet finished.
    running: u64,
    /// Age of the oldest task in the queue, seconds (0 when empty).
    oldest_age_secs: f64,
    /// Its tenants' lanes, by tenant (the tasks pinned to a worker by cache affinity are
    /// counted above only).
    tenants: Vec<TenantQueueView>,
}

/// One tenant's lane of a queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TenantQueueView {
    /// The tenant (`""`: tasks queued before tenants).
    tenant: String,
    /// Its weight, as its lane was made or last brought up to date.
    weight: u32,
    /// Its tasks not yet delivered to a worker.
    waiting: u64,
    /// Its tasks delivered and not yet finished.
    running: u64,
    /// Age of its oldest task in the queue, seconds (0 when none).
    oldest_age_secs: f64,
    /// Tasks of the tenant the model's live workers finished since their engines loaded
    /// (both classes).
    tasks_served: u64,
    /// Their tokens: prompt tokens computed (not from a prefix cache) and generated.
    tokens_served: u64,
}

/// `GET /api/v1/queues`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QueueList {
    /// `list`.
    object: &'static str,
    /// Every registered model's two queues.
    data: Vec<QueueView>,
}

/// Every registered model's queues: waiting, running, the oldest task's age, and the same
/// for each tenant's lane with what its tenant was served.
#[utoipa::path(get, path = "/api/v1/queues", tag = "admin", responses((status = 200, body = QueueList)))]
pub(crate) async fn queues(State(ctx): State<NodeContext>) -> Result<Json<QueueList>, ApiError> {
    let models: Vec<String> = ctx.bus.call(&ListModels {}).await?.into_iter().map(|m| m.id).collect();
    let stats = ctx.store.queue().stats(&models).await.map_err(|e| ApiError::from(WireError::from(e)))?;
    let data = stats
        .into_iter()
        .map(|q| {
            let served = served_by_tenant(&ctx, &q.model);
            let tenants = q
                .tenants
                .into_iter()
                .map(|l| {
                    let (tasks_served, tokens_served) = served.get(&l.tenant).copied().unwrap_or_default();
                    TenantQueueView {
                        tenant: l.tenant,
                        weight: l.weight,
                        waiting: l.waiting,
                        running: l.running,
                        oldest_age_secs: l.oldest_age_secs,
                        tasks_served,
                        tokens_served,
                    }
                })
                .collect();
            QueueView {
                model: q.model,
                priority: q.priority.as_str(),
                waiting: q.waiting,
                running: q.running,
                oldest_age_secs: q.oldest_age_secs,
                tenants,
            }
        })
        .collect();
    Ok(Json(QueueList { object: "list", data }))
}

/// Tasks and tokens each tenant was served by `model`'s live workers, from their
/// heartbeats.
fn served_by_tenant(ctx: &NodeContext, model: &str) -> std::collections::HashMap<String, (u64, u64)> {
    let mut out = std::collections::HashMap::<String, (u64, u64)>::new();
    for (worker, _) in ctx.nodes.workers_of(model) {
        for s in worker.served {
            let e = out.entry(s.tenant).or_default();
            e.0 += s.tasks;
            e.1 += s.tokens;
        }
    }
    out
}

/// How long a progress stream waits for a pull to start reporting.
const PULL_START: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a progress stream waits for a pull's next report (a large file's checksum is
/// computed between two).
const PULL_QUIET: std::time::Duration = std::time::Duration::from_secs(120);

/// The query of `GET /api/v1/models/progress`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ProgressQuery {
    /// The hub id being pulled.
    #[param(min_length = 1, max_length = 256)]
    model: String,
}

/// A pull's progress as server-sent events (`event: progress`, data: `{model, file,
/// file_done, file_size, files_done, files_total}`): open it, then start the pull (`POST
/// /api/v1/models/pull`). It ends after the last file's last byte, when no pull reports
/// within 5 s of opening, or when one goes quiet for 2 minutes.
#[utoipa::path(get, path = "/api/v1/models/progress", tag = "admin", params(ProgressQuery),
    responses((status = 200, description = "the progress events", content_type = "text/event-stream", body = String)))]
pub(crate) async fn progress(
    State(ctx): State<NodeContext>,
    Extension(_key): Extension<ApiKey>,
    Query(q): Query<ProgressQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let subject = ctx.bus.subjects().model_progress(&q.model);
    let sub = ctx.bus.subscribe(subject).await.map_err(|e| ApiError::from(WireError::from(&e)))?;
    let bus = ctx.bus.clone();
    // Ends after the last file's last byte, or when no pull reports (none started within
    // a few seconds, or one went quiet): a client listens while its pull runs.
    let events = futures::stream::unfold((sub, bus, false, false), |(mut sub, bus, started, ended)| async move {
        if ended {
            return None;
        }
        let wait = if started { PULL_QUIET } else { PULL_START };
        loop {
            let msg = tokio::time::timeout(wait, sub.next()).await.ok()??;
            let Ok(p) = bus.decode::<PullProgress>(&msg).map(|p| p.envelope.body) else { continue };
            let last = p.files_done + 1 >= p.files_total && p.file_done >= p.file_size;
            let body = serde_json::json!({
                "model": p.model, "file": p.file, "file_done": p.file_done, "file_size": p.file_size,
                "files_done": p.files_done, "files_total": p.files_total,
            });
            let event = Ok::<_, Infallible>(Event::default().event("progress").data(body.to_string()));
            return Some((event, (sub, bus, true, last)));
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
