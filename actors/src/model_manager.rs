//! The model manager: keeps the model registry in the models KV bucket.
//!
//! Supervised by the node supervisor; supervises nothing. Serves, on the queue group
//! `model-manager`, `…model.load|unload|delete` (through the model's deployment),
//! `…model.search` (the hub's search API at the configured endpoint),
//! `…model.register` (a worker announces the model it serves; the entry
//! is created or refreshed, keeping its first-registration time) and `…model.list` (every
//! registered model). Stateless: several can run. If a subscription ends it fails and is
//! restarted.

use bitinglip_bus_schema::{
    decode_body, encode, encode_token, Ack, DeploymentReply, Envelope, ErrorKind, GetModelStatus, ListModels, LoadModel,
    ModelList, ModelRecord, ModelRef, ModelStatusList, RegisterModel, SearchModels, SearchResults, WireError,
};
use futures::TryStreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::{cluster_manager::deployments, serve::spawn_endpoint, NodeContext};

pub mod status;

/// The model manager actor.
pub struct ModelManager;

/// Its arguments.
pub struct ModelManagerArgs {
    /// Shared node context.
    pub ctx: NodeContext,
}

/// Its state: the serving tasks.
pub struct ModelManagerState {
    serves: Vec<JoinHandle<()>>,
    _service: async_nats::service::Service,
}

/// Messages to the model manager.
#[derive(Debug, Clone)]
pub enum ModelManagerMsg {
    /// A subscription ended; fail so the supervisor restarts us.
    SubscriptionEnded,
}

fn unavailable(e: impl std::fmt::Display) -> WireError {
    WireError::new(ErrorKind::Unavailable, format!("model registry: {e}"))
}

/// Reads one model's record.
pub async fn get_model(ctx: &NodeContext, id: &str) -> Result<Option<ModelRecord>, WireError> {
    let Some(bytes) = ctx.kv.models.get(encode_token(id)).await.map_err(unavailable)? else { return Ok(None) };
    decode_body::<ModelRecord>(&bytes, usize::MAX)
        .map(Some)
        .map_err(|e| WireError::new(ErrorKind::Internal, format!("registry entry of {id}: {e}")))
}

/// Reads every registered model, sorted by id.
pub async fn list_models(ctx: &NodeContext) -> Result<Vec<ModelRecord>, WireError> {
    let keys: Vec<String> =
        ctx.kv.models.keys().await.map_err(unavailable)?.try_collect().await.map_err(unavailable)?;
    let mut models = Vec::with_capacity(keys.len());
    // `<model>.<node>` keys hold per-node status, not records.
    for key in keys.into_iter().filter(|k| !k.contains('.')) {
        let Some(bytes) = ctx.kv.models.get(&key).await.map_err(unavailable)? else { continue };
        match decode_body::<ModelRecord>(&bytes, usize::MAX) {
            Ok(m) => models.push(m),
            Err(err) => tracing::warn!(key = %key, cause = %err, "undecodable registry entry ignored"),
        }
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(models)
}

/// Memory one replica needs, estimated from its files (name, bytes): the weights plus a
/// fifth for the KV cache and activations.
pub fn estimate_memory<'a>(files: impl IntoIterator<Item = (&'a str, u64)>) -> u64 {
    let weights: u64 = files
        .into_iter()
        .filter(|(name, _)| [".safetensors", ".bin", ".gguf", ".pt", ".pth"].iter().any(|ext| name.ends_with(ext)))
        .map(|(_, size)| size)
        .sum();
    weights + weights / 5
}

/// The same, for a model folder on this node.
pub fn estimate_folder_memory(dir: &std::path::Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let files: Vec<(String, u64)> = entries
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.len())))
        .collect();
    Some(estimate_memory(files.iter().map(|(n, s)| (n.as_str(), *s))))
}

async fn register(ctx: &NodeContext, req: RegisterModel) -> Result<(), WireError> {
    let mut record = req.model;
    if record.id.trim().is_empty() {
        return Err(WireError::new(ErrorKind::InvalidRequest, "model.id is empty"));
    }
    let now = bitinglip_nats::now_ms();
    let is_pull = !record.files.is_empty();
    if let Some(existing) = get_model(ctx, &record.id).await? {
        record.created_ms = existing.created_ms;
        // A worker that loaded the model adds its context length; what a pull recorded
        // (revision sha, files) stays.
        if record.files.is_empty() {
            record.files = existing.files;
        }
        record.revision_sha = record.revision_sha.or(existing.revision_sha);
        record.estimated_memory = record.estimated_memory.or(existing.estimated_memory);
        if is_pull {
            // A pull keeps the engine a worker recorded.
            record.engine = existing.engine;
        }
        record.context_length = record.context_length.or(existing.context_length);
    } else {
        record.created_ms = now;
    }
    record.updated_ms = now;
    let env = Envelope::new(ulid::Ulid::new().to_string(), now, ctx.node_id(), &record);
    let bytes = encode(&env).map_err(|e| WireError::new(ErrorKind::Internal, e.to_string()))?;
    ctx.kv.models.put(encode_token(&record.id), bytes.into()).await.map_err(unavailable)?;
    tracing::info!(model = %record.id, worker = %req.worker, "model registered");
    Ok(())
}

/// Removes a model: its deployment (replicas are unloaded), its registry entry and every
/// node's status of it.
async fn remove(ctx: &NodeContext, model: &str) -> Result<(), WireError> {
    let had_deployment = deployments::delete(ctx, model).await?;
    let registered = get_model(ctx, model).await?.is_some();
    if !had_deployment && !registered {
        return Err(WireError::new(ErrorKind::NotFound, format!("model `{model}` is neither registered nor deployed")));
    }
    let token = encode_token(model);
    let prefix = format!("{token}.");
    let keys: Vec<String> =
        ctx.kv.models.keys().await.map_err(unavailable)?.try_collect().await.map_err(unavailable)?;
    for key in keys.into_iter().filter(|k| *k == token || k.starts_with(&prefix)) {
        ctx.kv.models.delete(&key).await.map_err(unavailable)?;
    }
    tracing::info!(model, "model removed");
    Ok(())
}

#[ractor::async_trait]
impl Actor for ModelManager {
    type Msg = ModelManagerMsg;
    type State = ModelManagerState;
    type Arguments = ModelManagerArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, args: ModelManagerArgs) -> Result<Self::State, ActorProcessingErr> {
        let ctx = args.ctx;
        let subjects = ctx.bus.subjects().clone();
        let group = subjects.model_manager_queue_group();

        let service = ctx.bus.service("bitinglip-model-manager", "BitingLip model registry: register, list, search", &group).await?;
        let end = || ModelManagerMsg::SubscriptionEnded;
        let endpoint = |name, subject| ctx.bus.endpoint(&service, name, subject);

        let register_serve = spawn_endpoint(
            endpoint("register", subjects.model_register()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            Ack::Error,
            |ctx, req: RegisterModel| async move { register(&ctx, req).await.map(|()| Ack::Ok) },
        );
        let search_serve = spawn_endpoint(
            endpoint("search", subjects.model_search()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            SearchResults::Error,
            |ctx, req: SearchModels| async move {
                let hub = crate::puller::hub::Hub::new(&ctx.config.hub)?;
                let models = hub.search(&req.query, req.limit.unwrap_or(20).clamp(1, 100)).await?;
                Ok(SearchResults::Models { models })
            },
        );
        let status_serve = spawn_endpoint(
            endpoint("status", subjects.model_status()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            ModelStatusList::Error,
            |ctx, q: GetModelStatus| async move {
                Ok(ModelStatusList::Statuses { statuses: status::list(&ctx, q.model.as_deref()).await? })
            },
        );
        let load_serve = spawn_endpoint(
            endpoint("load", subjects.model_load()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            DeploymentReply::Error,
            |ctx, req: LoadModel| async move {
                let replicas = req.replicas.unwrap_or(1).max(1);
                deployments::ensure_loaded(&ctx, &req.model, replicas).await.map(DeploymentReply::Deployment)
            },
        );
        let unload_serve = spawn_endpoint(
            endpoint("unload", subjects.model_unload()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            Ack::Error,
            |ctx, req: ModelRef| async move { deployments::scale(&ctx, &req.model, 0).await.map(|_| Ack::Ok) },
        );
        let delete_serve = spawn_endpoint(
            endpoint("delete", subjects.model_delete()).await?,
            myself.clone(),
            end(),
            ctx.clone(),
            Ack::Error,
            |ctx, req: ModelRef| async move { remove(&ctx, &req.model).await.map(|()| Ack::Ok) },
        );
        let list_serve = spawn_endpoint(
            endpoint("list", subjects.model_list()).await?,
            myself,
            end(),
            ctx.clone(),
            ModelList::Error,
            |ctx, _: ListModels| async move { Ok(ModelList::Models { models: list_models(&ctx).await? }) },
        );
        Ok(ModelManagerState {
            serves: vec![register_serve, search_serve, status_serve, load_serve, unload_serve, delete_serve, list_serve],
            _service: service,
        })
    }

    async fn handle(&self, _myself: ActorRef<Self::Msg>, msg: Self::Msg, _state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match msg {
            ModelManagerMsg::SubscriptionEnded => Err("model manager subscription ended".into()),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.serves.iter().for_each(JoinHandle::abort);
        Ok(())
    }
}
