//! The admin API under `/api/v1`: models (registry, hub search, pull), workers, cluster,
//! and the OpenAPI document at `/openapi.json`.

use std::time::Duration;

use axum::{
    extract::{Path, Query, State},
    Json,
};
use bitinglip_bus_schema::{
    Ack, ClusterStatus, DeleteDeployment, DeploymentList, DeploymentReply, GetClusterStatus, ListDeployments,
    ListModels, LoadModel, ModelList, ModelRecord, ModelRef, ModelSource, PullModel, PullReply, SearchModels,
    SearchResults, SetDeployment, WireError,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openai::ApiError;
use crate::NodeContext;

fn bus_error(e: bitinglip_nats::BusError) -> ApiError {
    ApiError::from(WireError::from(&e))
}

fn model_json(m: &ModelRecord) -> Value {
    json!({
        "id": m.id,
        "source": match &m.source {
            ModelSource::Local { path } => json!({"type": "local", "path": path}),
            ModelSource::Hub { revision } => json!({"type": "hub", "revision": revision}),
        },
        "revision_sha": m.revision_sha,
        "engine": m.engine,
        "estimated_memory": m.estimated_memory,
        "context_length": m.context_length,
        "files": m.files.iter().map(|f| json!({"name": f.name, "size": f.size, "sha256": f.sha256})).collect::<Vec<_>>(),
        "created_ms": m.created_ms,
        "updated_ms": m.updated_ms,
    })
}

/// `GET /api/v1/models`: the registry.
pub(super) async fn models(State(ctx): State<NodeContext>) -> Result<Json<Value>, ApiError> {
    match ctx
        .bus
        .request::<_, ModelList>(ctx.bus.subjects().model_list(), &ListModels {}, None, None)
        .await
        .map_err(bus_error)?
    {
        ModelList::Models { models } => Ok(Json(json!({"data": models.iter().map(model_json).collect::<Vec<_>>()}))),
        ModelList::Error(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct SearchQuery {
    q: String,
    limit: Option<u32>,
}

/// `GET /api/v1/models/search?q=…&limit=…`: the hub's search.
pub(super) async fn search(
    State(ctx): State<NodeContext>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = SearchModels { query: q.q, limit: q.limit };
    match ctx
        .bus
        .request::<_, SearchResults>(ctx.bus.subjects().model_search(), &req, None, Some(Duration::from_secs(60)))
        .await
        .map_err(bus_error)?
    {
        SearchResults::Models { models } => Ok(Json(json!({
            "data": models.iter().map(|m| json!({"id": m.id, "downloads": m.downloads, "likes": m.likes})).collect::<Vec<_>>()
        }))),
        SearchResults::Error(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct PullBody {
    model: String,
    #[serde(default)]
    revision: Option<String>,
}

/// `POST /api/v1/models/pull {model, revision?}`: downloads on a worker node; answers when
/// done (progress is on the bus, `…model.<model>.progress`).
pub(super) async fn pull(State(ctx): State<NodeContext>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let body: PullBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid(&format!("invalid body: {e}"), None))?;
    let req = PullModel { model: body.model, revision: body.revision };
    match ctx
        .bus
        .request::<_, PullReply>(ctx.bus.subjects().model_pull(), &req, None, Some(Duration::from_secs(24 * 3600)))
        .await
        .map_err(bus_error)?
    {
        PullReply::Pulled(record) => Ok(Json(model_json(&record))),
        PullReply::Error(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct StatusQuery {
    model: Option<String>,
}

/// `GET /api/v1/models/status?model=…`: every node's status of the models.
pub(super) async fn status(
    State(ctx): State<NodeContext>,
    Query(q): Query<StatusQuery>,
) -> Result<Json<Value>, ApiError> {
    let req = bitinglip_bus_schema::GetModelStatus { model: q.model };
    match ctx
        .bus
        .request::<_, bitinglip_bus_schema::ModelStatusList>(ctx.bus.subjects().model_status(), &req, None, None)
        .await
        .map_err(bus_error)?
    {
        bitinglip_bus_schema::ModelStatusList::Statuses { statuses } => Ok(Json(json!({
            "data": statuses.iter().map(|s| json!({"model": s.model, "node": s.node, "state": s.state.as_str(),
                "reason": s.reason, "lease_until_ms": s.lease_until_ms, "updated_ms": s.updated_ms})).collect::<Vec<_>>()
        }))),
        bitinglip_bus_schema::ModelStatusList::Error(e) => Err(e.into()),
    }
}

async fn cluster_nodes(ctx: &NodeContext) -> Result<Vec<bitinglip_bus_schema::NodeHeartbeat>, ApiError> {
    match ctx
        .bus
        .request::<_, ClusterStatus>(ctx.bus.subjects().cluster_status(), &GetClusterStatus {}, None, None)
        .await
        .map_err(bus_error)?
    {
        ClusterStatus::Nodes { nodes, .. } => Ok(nodes),
        ClusterStatus::Error(e) => Err(e.into()),
    }
}

/// `GET /api/v1/workers`.
pub(super) async fn workers(State(ctx): State<NodeContext>) -> Result<Json<Value>, ApiError> {
    let nodes = cluster_nodes(&ctx).await?;
    let data: Vec<Value> = nodes
        .iter()
        .flat_map(|n| {
            n.workers.iter().map(move |w| {
                json!({"worker_id": w.worker_id, "node_id": n.node_id, "model": w.model, "engine": w.engine, "device": n.device,
                       "state": w.state, "in_flight": w.in_flight, "max_sequences": w.max_sequences,
                       "placed": w.placed, "last_used_ms": w.last_used_ms})
            })
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

/// `GET /api/v1/cluster`.
pub(super) async fn cluster(State(ctx): State<NodeContext>) -> Result<Json<Value>, ApiError> {
    let nodes = cluster_nodes(&ctx).await?;
    let data: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({"node_id": n.node_id, "roles": n.roles, "http": n.http, "device": n.device, "memory_total": n.memory_total,
                   "memory_free": n.memory_free, "started_ms": n.started_ms, "last_heartbeat_ms": n.time_ms, "version": n.version,
                   "workers": n.workers.iter().map(|w| json!({"worker_id": w.worker_id, "model": w.model, "state": w.state,
                       "in_flight": w.in_flight, "max_sequences": w.max_sequences})).collect::<Vec<_>>()})
        })
        .collect();
    let leader = match ctx
        .bus
        .request::<_, ClusterStatus>(ctx.bus.subjects().cluster_status(), &GetClusterStatus {}, None, None)
        .await
    {
        Ok(ClusterStatus::Nodes { leader, .. }) => leader,
        _ => None,
    };
    Ok(Json(json!({"nodes": data, "leader": leader})))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        ApiError::invalid(&format!("invalid body at `{path}`: {}", err.inner()), Some(&path))
    })
}

fn ack(reply: Ack) -> Result<Json<Value>, ApiError> {
    match reply {
        Ack::Ok => Ok(Json(json!({"ok": true}))),
        Ack::Error(e) => Err(e.into()),
    }
}

fn deployment(reply: DeploymentReply) -> Result<Json<Value>, ApiError> {
    match reply {
        DeploymentReply::Deployment(d) => Ok(Json(serde_json::to_value(d).unwrap_or_default())),
        DeploymentReply::Error(e) => Err(e.into()),
    }
}

/// `GET /api/v1/deployments`: every deployment with where it is placed and served.
pub(super) async fn deployments(State(ctx): State<NodeContext>) -> Result<Json<Value>, ApiError> {
    let subject = ctx.bus.subjects().deployment_list();
    match ctx.bus.request::<_, DeploymentList>(subject, &ListDeployments {}, None, None).await.map_err(bus_error)? {
        DeploymentList::Deployments { deployments } => Ok(Json(json!({"data": deployments}))),
        DeploymentList::Error(e) => Err(e.into()),
    }
}

/// `POST /api/v1/deployments {model?, spec, replicas, constraints?, memory?}`.
pub(super) async fn set_deployment(
    State(ctx): State<NodeContext>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: SetDeployment = parse_json(&body)?;
    deployment(ctx.bus.request(ctx.bus.subjects().deployment_set(), &req, None, None).await.map_err(bus_error)?)
}

/// `DELETE /api/v1/deployments/{model}`.
pub(super) async fn delete_deployment(
    State(ctx): State<NodeContext>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let req = DeleteDeployment { model };
    ack(ctx.bus.request(ctx.bus.subjects().deployment_delete(), &req, None, None).await.map_err(bus_error)?)
}

/// `POST /api/v1/models/load {model, replicas?}`.
pub(super) async fn load(State(ctx): State<NodeContext>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let req: LoadModel = parse_json(&body)?;
    deployment(ctx.bus.request(ctx.bus.subjects().model_load(), &req, None, None).await.map_err(bus_error)?)
}

/// `POST /api/v1/models/unload {model}`.
pub(super) async fn unload(State(ctx): State<NodeContext>, body: axum::body::Bytes) -> Result<Json<Value>, ApiError> {
    let req: ModelRef = parse_json(&body)?;
    ack(ctx.bus.request(ctx.bus.subjects().model_unload(), &req, None, None).await.map_err(bus_error)?)
}

/// `DELETE /api/v1/models/{model}`: deployment, registry entry and node statuses.
pub(super) async fn remove(State(ctx): State<NodeContext>, Path(model): Path<String>) -> Result<Json<Value>, ApiError> {
    let req = ModelRef { model };
    ack(ctx.bus.request(ctx.bus.subjects().model_delete(), &req, None, None).await.map_err(bus_error)?)
}

/// `GET /openapi.json`: this API, described.
pub(super) async fn openapi() -> Json<Value> {
    let op = |summary: &str| json!({"summary": summary, "responses": {"200": {"description": "OK"}, "default": {"description": "an error in OpenAI's shape", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}});
    let with_body = |summary: &str, schema: &str| {
        let mut v = op(summary);
        v["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
        v
    };
    // The probes need no key.
    let open = |mut v: Value| {
        v["security"] = json!([]);
        v
    };
    let id_param = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "BitingLip", "version": env!("CARGO_PKG_VERSION"), "description": "OpenAI-compatible inference, a durable task API and cluster administration."},
        "paths": {
            "/v1/chat/completions": {"post": with_body("Chat completion, plain or streamed (SSE)", "ChatCompletionRequest")},
            "/v1/models": {"get": op("Registered models, OpenAI list format")},
            "/v1/tasks": {"post": with_body("Queue a chat task; 202 with its id", "ChatCompletionRequest"), "get": op("Recent tasks")},
            "/v1/tasks/{id}": {"parameters": id_param, "get": op("A task's status and result"), "delete": op("Cancel a task")},
            "/v1/tasks/{id}/events": {"parameters": id_param, "get": op("A task's events as SSE; resume with Last-Event-ID")},
            "/api/v1/models": {"get": op("The model registry")},
            "/api/v1/models/search": {"get": {"summary": "Search the hub", "parameters": [{"name": "q", "in": "query", "required": true, "schema": {"type": "string"}}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}], "responses": {"200": {"description": "OK"}}}},
            "/api/v1/models/pull": {"post": with_body("Download a hub model on a worker node", "PullRequest")},
            "/api/v1/models/status": {"get": op("Every node's status of the models")},
            "/api/v1/models/load": {"post": with_body("Load a known model on at least N workers", "LoadModel")},
            "/api/v1/models/unload": {"post": with_body("Unload a model everywhere (deployment to 0 replicas)", "ModelRef")},
            "/api/v1/models/{model}": {"parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "delete": op("Remove a model: deployment, registry entry, node statuses")},
            "/api/v1/deployments": {"get": op("Deployments with their placements"), "post": with_body("Create or replace a deployment", "SetDeployment")},
            "/api/v1/deployments/{model}": {"parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}], "delete": op("Remove a deployment")},
            "/api/v1/workers": {"get": op("Live workers")},
            "/api/v1/cluster": {"get": op("Live nodes and their workers")},
            "/api/v1/keys": {"get": op("API keys (never their secrets); admin"), "post": with_body("Create an API key; the answer holds its secret, once; admin", "CreateKey")},
            "/api/v1/keys/{id}": {"parameters": id_param, "delete": op("Revoke an API key; admin")},
            "/health": {"get": open(op("Alive"))},
            "/ready": {"get": open(op("NATS connected, JetStream reachable, a model loaded"))},
            "/metrics": {"get": op("Prometheus metrics")},
        },
        "components": {"schemas": {
            "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"], "properties": {
                "model": {"type": "string"},
                "messages": {"type": "array", "items": {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}, "content": {}}}},
                "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2}, "top_p": {"type": "number"},
                "stop": {}, "stream": {"type": "boolean"}, "seed": {"type": "integer"}}},
            "LoadModel": {"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}, "replicas": {"type": "integer", "minimum": 1}}},
            "ModelRef": {"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}}},
            "SetDeployment": {"type": "object", "required": ["spec", "replicas"], "properties": {
                "model": {"type": "string", "description": "the id clients name; default: spec.source"},
                "spec": {"type": "object", "required": ["source"], "properties": {"source": {"type": "string"}, "revision": {"type": "string"},
                    "engine": {"enum": ["mistralrs", "echo"]}, "max_sequences": {"type": "integer", "minimum": 1}, "echo_tokens_per_sec": {"type": "number"}}},
                "replicas": {"type": "integer", "minimum": 0},
                "constraints": {"type": "object", "properties": {"min_memory": {"type": "integer"}, "device": {"enum": ["cpu", "cuda", "metal"]}}},
                "memory": {"type": "integer", "description": "bytes per replica; estimated from the weights when absent"}}},
            "CreateKey": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 100},
                "scope": {"enum": ["inference", "admin"], "default": "inference"},
                "models": {"type": "array", "items": {"type": "string"}, "description": "the only models it may use; empty: all"},
                "expires": {"type": "string", "description": "from now, such as 30d or 12h"}}},
            "PullRequest": {"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}, "revision": {"type": "string"}}},
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "message": {"type": "string"}, "type": {"type": "string"}, "param": {}, "code": {"type": "string"}}}}},
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key: `bitinglip keys create`, or the one `bitinglip up` writes to its data folder"}}},
        "security": [{"bearer": []}],
    }))
}
