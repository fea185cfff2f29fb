//! The admin API under `/api/v1`: models (registry, hub search, pull, load, unload,
//! remove), deployments, workers and the cluster; API keys and usage (`keys.rs`); the
//! live views of queues and progress (`live.rs`).

pub(super) mod keys;
pub(super) mod live;

use std::time::Duration;

use axum::{extract::State, Json};
use bitinglip_bus_schema::{
    DeleteDeployment, DeleteModel, Deployment, DeploymentStatus, DeviceKind, EngineKind, GetClusterStatus,
    ListDeployments, ListModels, LoadModel, ModelRecord, ModelRef, ModelSource, PullModel, Role, SearchModels,
    SetDeployment, UnloadModel, WorkerState,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, Path, Query};
use crate::NodeContext;

/// A list under `data`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Page<T> {
    /// The items.
    data: Vec<T>,
}

/// Where a registered model comes from.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum SourceView {
    /// A folder in Hugging Face layout on the serving node.
    Local {
        /// The folder.
        path: String,
    },
    /// The hub.
    Hub {
        /// The revision asked for.
        revision: String,
    },
}

/// One file of a registered model.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FileView {
    /// Its path in the repository.
    name: String,
    /// Bytes.
    size: u64,
    /// sha256 (hex), when the hub gives it.
    sha256: Option<String>,
}

/// A model in the registry.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ModelView {
    /// Its id.
    id: String,
    /// Where it comes from.
    source: SourceView,
    /// The commit its files are from (hub models).
    revision_sha: Option<String>,
    /// The engine that serves it.
    engine: EngineKind,
    /// Memory one replica needs, bytes, estimated from the weights.
    estimated_memory: Option<u64>,
    /// The longest context it takes, tokens.
    context_length: Option<u32>,
    /// Its files.
    files: Vec<FileView>,
    /// Registered, ms since the epoch.
    created_ms: u64,
    /// Last changed, ms since the epoch.
    updated_ms: u64,
}

impl From<ModelRecord> for ModelView {
    fn from(m: ModelRecord) -> Self {
        ModelView {
            id: m.id,
            source: match m.source {
                ModelSource::Local { path } => SourceView::Local { path },
                ModelSource::Hub { revision } => SourceView::Hub { revision },
            },
            revision_sha: m.revision_sha,
            engine: m.engine,
            estimated_memory: m.estimated_memory,
            context_length: m.context_length,
            files: m.files.into_iter().map(|f| FileView { name: f.name, size: f.size, sha256: f.sha256 }).collect(),
            created_ms: m.created_ms,
            updated_ms: m.updated_ms,
        }
    }
}

/// A model on the hub.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct SearchHit {
    /// Its hub id.
    id: String,
    /// Downloads, when the hub tells.
    downloads: Option<u64>,
    /// Likes, when the hub tells.
    likes: Option<u64>,
}

/// One node's status of one model.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ModelStatusView {
    /// The model.
    model: String,
    /// The node.
    node: String,
    /// `registered`, `downloading`, `ready`, `loading`, `loaded` or `failed`.
    state: &'static str,
    /// Why it failed.
    reason: Option<String>,
    /// The download or load lease runs until then, ms since the epoch.
    lease_until_ms: Option<u64>,
    /// Last changed, ms since the epoch.
    updated_ms: u64,
}

/// A live worker.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkerView {
    /// Its id.
    worker_id: String,
    /// Its node.
    node_id: String,
    /// The model it serves.
    model: String,
    /// Its engine.
    engine: EngineKind,
    /// Its node's device: `cpu`, `cuda`, `metal`.
    #[schema(value_type = String)]
    device: DeviceKind,
    /// Where it is in its life.
    state: WorkerState,
    /// Tasks it runs now.
    in_flight: u32,
    /// Most tasks it runs at once.
    max_sequences: u32,
    /// Started by a placement (not by the node's config).
    placed: bool,
    /// Last took a task, ms since the epoch.
    last_used_ms: u64,
}

/// A worker, as the cluster view lists it under its node.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct NodeWorkerView {
    /// Its id.
    worker_id: String,
    /// The model it serves.
    model: String,
    /// Where it is in its life.
    state: WorkerState,
    /// Tasks it runs now.
    in_flight: u32,
    /// Most tasks it runs at once.
    max_sequences: u32,
    /// Its engine's prefix cache since it loaded.
    prefix_cache: PrefixCacheView,
}

/// What a worker's prefix cache did since its engine loaded.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PrefixCacheView {
    /// Generations that looked in it.
    lookups: u64,
    /// Of those, the ones that found a prefix of their prompt there.
    hits: u64,
    /// Prompt tokens taken from it instead of computed.
    cached_tokens: u64,
}

impl From<bitinglip_bus_schema::PrefixCacheUse> for PrefixCacheView {
    fn from(u: bitinglip_bus_schema::PrefixCacheUse) -> Self {
        Self { lookups: u.lookups, hits: u.hits, cached_tokens: u.cached_tokens }
    }
}

/// A live node.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct NodeView {
    /// Its id.
    node_id: String,
    /// The roles it runs.
    roles: Vec<Role>,
    /// Its gateway's address, when it runs one.
    http: Option<String>,
    /// `cpu`, `cuda` or `metal`.
    #[schema(value_type = String)]
    device: DeviceKind,
    /// Memory it offers for models, bytes.
    memory_total: u64,
    /// Of which free, bytes.
    memory_free: u64,
    /// Started, ms since the epoch.
    started_ms: u64,
    /// Its last heartbeat, ms since the epoch.
    last_heartbeat_ms: u64,
    /// Its BitingLip version.
    version: String,
    /// Its workers.
    workers: Vec<NodeWorkerView>,
    /// Its GPUs (NVML), with the budget BitingLip may use of each.
    gpus: Vec<bitinglip_bus_schema::GpuInfo>,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ClusterView {
    /// Live nodes.
    nodes: Vec<NodeView>,
    /// The node whose cluster manager leads, when one does.
    leader: Option<String>,
}

/// Done.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Done {
    /// Always true.
    ok: bool,
}

/// The model registry.
#[utoipa::path(get, path = "/api/v1/models", tag = "admin", responses((status = 200, body = Page<ModelView>)))]
pub(super) async fn models(State(ctx): State<NodeContext>) -> Result<Json<Page<ModelView>>, ApiError> {
    let models = ctx.bus.call(&ListModels {}).await?;
    Ok(Json(Page { data: models.into_iter().map(ModelView::from).collect() }))
}

/// The query of `GET /api/v1/models/search`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// Words to look for.
    q: String,
    /// Most results.
    limit: Option<u32>,
}

/// Search the hub.
#[utoipa::path(get, path = "/api/v1/models/search", tag = "admin", params(SearchQuery),
    responses((status = 200, body = Page<SearchHit>)))]
pub(super) async fn search(
    State(ctx): State<NodeContext>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Page<SearchHit>>, ApiError> {
    let req = SearchModels { query: q.q, limit: q.limit };
    let models = ctx.bus.call_with(&req, None, Some(Duration::from_secs(60))).await?;
    Ok(Json(Page {
        data: models.into_iter().map(|m| SearchHit { id: m.id, downloads: m.downloads, likes: m.likes }).collect(),
    }))
}

/// The body of `POST /api/v1/models/pull`.
#[derive(Debug, Deserialize, ToSchema)]
pub(super) struct PullBody {
    /// The hub id.
    model: String,
    /// Branch, tag or commit; `main` when absent.
    #[serde(default)]
    revision: Option<String>,
}

/// Download a hub model on a worker node and register it; answers when done.
///
/// Progress is on the bus, `…model.<model>.progress`.
#[utoipa::path(post, path = "/api/v1/models/pull", tag = "admin", request_body = PullBody,
    responses((status = 200, body = ModelView)))]
pub(super) async fn pull(State(ctx): State<NodeContext>, body: axum::body::Bytes) -> Result<Json<ModelView>, ApiError> {
    let body: PullBody = parse_json(&body)?;
    let req = PullModel { model: body.model, revision: body.revision };
    let record = ctx.bus.call_with(&req, None, Some(Duration::from_secs(24 * 3600))).await?;
    Ok(Json(record.into()))
}

/// The query of `GET /api/v1/models/status`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatusQuery {
    /// Only this model.
    model: Option<String>,
}

/// Every node's status of the models.
#[utoipa::path(get, path = "/api/v1/models/status", tag = "admin", params(StatusQuery),
    responses((status = 200, body = Page<ModelStatusView>)))]
pub(super) async fn status(
    State(ctx): State<NodeContext>,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Page<ModelStatusView>>, ApiError> {
    let req = bitinglip_bus_schema::GetModelStatus { model: q.model };
    let statuses = ctx.bus.call(&req).await?;
    Ok(Json(Page {
        data: statuses
            .into_iter()
            .map(|s| ModelStatusView {
                state: s.state.as_str(),
                model: s.model,
                node: s.node,
                reason: s.reason,
                lease_until_ms: s.lease_until_ms,
                updated_ms: s.updated_ms,
            })
            .collect(),
    }))
}

async fn cluster_nodes(ctx: &NodeContext) -> Result<Vec<bitinglip_bus_schema::NodeHeartbeat>, ApiError> {
    Ok(ctx.bus.call(&GetClusterStatus {}).await?.nodes)
}

/// Live workers.
#[utoipa::path(get, path = "/api/v1/workers", tag = "admin", responses((status = 200, body = Page<WorkerView>)))]
pub(super) async fn workers(State(ctx): State<NodeContext>) -> Result<Json<Page<WorkerView>>, ApiError> {
    let nodes = cluster_nodes(&ctx).await?;
    let data = nodes
        .iter()
        .flat_map(|n| {
            n.workers.iter().map(move |w| WorkerView {
                worker_id: w.worker_id.clone(),
                node_id: n.node_id.clone(),
                model: w.model.clone(),
                engine: w.engine,
                device: n.device,
                state: w.state,
                in_flight: w.in_flight,
                max_sequences: w.max_sequences,
                placed: w.placed,
                last_used_ms: w.last_used_ms,
            })
        })
        .collect();
    Ok(Json(Page { data }))
}

/// Live nodes and their workers, and the leading cluster manager.
#[utoipa::path(get, path = "/api/v1/cluster", tag = "admin", responses((status = 200, body = ClusterView)))]
pub(super) async fn cluster(State(ctx): State<NodeContext>) -> Result<Json<ClusterView>, ApiError> {
    let nodes = cluster_nodes(&ctx).await?;
    let data = nodes
        .into_iter()
        .map(|n| NodeView {
            workers: n
                .workers
                .into_iter()
                .map(|w| NodeWorkerView {
                    worker_id: w.worker_id,
                    model: w.model,
                    state: w.state,
                    in_flight: w.in_flight,
                    max_sequences: w.max_sequences,
                    prefix_cache: w.prefix_cache.into(),
                })
                .collect(),
            node_id: n.node_id,
            roles: n.roles,
            http: n.http,
            device: n.device,
            memory_total: n.memory_total,
            memory_free: n.memory_free,
            started_ms: n.started_ms,
            last_heartbeat_ms: n.time_ms,
            version: n.version,
            gpus: n.gpus,
        })
        .collect();
    let leader = ctx.bus.call(&GetClusterStatus {}).await.ok().and_then(|c| c.leader);
    Ok(Json(ClusterView { nodes: data, leader }))
}

/// Reads a JSON body, naming the field at fault.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        ApiError::invalid(&format!("invalid body at `{path}`: {}", err.inner()), Some(&path))
    })
}

const DONE: Done = Done { ok: true };

/// Every deployment, with the nodes it is placed on and served by.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "admin", responses((status = 200, body = Page<DeploymentStatus>)))]
pub(super) async fn deployments(State(ctx): State<NodeContext>) -> Result<Json<Page<DeploymentStatus>>, ApiError> {
    Ok(Json(Page { data: ctx.bus.call(&ListDeployments {}).await? }))
}

/// Create or replace a deployment: the cluster places its replicas.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "admin", request_body = SetDeployment,
    responses((status = 200, body = Deployment)))]
pub(super) async fn set_deployment(
    State(ctx): State<NodeContext>,
    body: axum::body::Bytes,
) -> Result<Json<Deployment>, ApiError> {
    let req: SetDeployment = parse_json(&body)?;
    Ok(Json(ctx.bus.call(&req).await?))
}

/// Remove a deployment; its replicas are unloaded.
#[utoipa::path(delete, path = "/api/v1/deployments/{model}", tag = "admin",
    params(("model" = String, Path, description = "the model's id; it may hold slashes")),
    responses((status = 200, body = Done)))]
pub(super) async fn delete_deployment(
    State(ctx): State<NodeContext>,
    Path(model): Path<String>,
) -> Result<Json<Done>, ApiError> {
    ctx.bus.call(&DeleteDeployment { model }).await?;
    Ok(Json(DONE))
}

/// Load a known model on at least `replicas` workers (1 when absent).
#[utoipa::path(post, path = "/api/v1/models/load", tag = "admin", request_body = LoadModel,
    responses((status = 200, body = Deployment)))]
pub(super) async fn load(
    State(ctx): State<NodeContext>,
    body: axum::body::Bytes,
) -> Result<Json<Deployment>, ApiError> {
    let req: LoadModel = parse_json(&body)?;
    Ok(Json(ctx.bus.call(&req).await?))
}

/// Unload a model everywhere (its deployment goes to 0 replicas).
#[utoipa::path(post, path = "/api/v1/models/unload", tag = "admin", request_body = ModelRef,
    responses((status = 200, body = Done)))]
pub(super) async fn unload(State(ctx): State<NodeContext>, body: axum::body::Bytes) -> Result<Json<Done>, ApiError> {
    ctx.bus.call(&UnloadModel(parse_json(&body)?)).await?;
    Ok(Json(DONE))
}

/// Remove a model: its deployment, its registry entry and every node's status of it.
#[utoipa::path(delete, path = "/api/v1/models/{model}", tag = "admin",
    params(("model" = String, Path, description = "the model's id; it may hold slashes")),
    responses((status = 200, body = Done)))]
pub(super) async fn remove(State(ctx): State<NodeContext>, Path(model): Path<String>) -> Result<Json<Done>, ApiError> {
    ctx.bus.call(&DeleteModel(ModelRef { model })).await?;
    Ok(Json(DONE))
}
