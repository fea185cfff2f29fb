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
    DeleteModel, ErrorKind, GetModelStatus, ListModels, LoadModel, RegisterModel, SearchModels, UnloadModel, WireError,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::{
    ops::{deployments, hub::Hub, models::merge_registration},
    serve::Server,
    NodeContext,
};

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

async fn register(ctx: &NodeContext, req: RegisterModel) -> Result<(), WireError> {
    // Checked as an id from HTTP is: a worker's seed is no more trusted than a client.
    if let Some(problem) = bitinglip_bus_schema::model_id_problem(&req.model.id) {
        return Err(WireError::new(ErrorKind::InvalidRequest, format!("model.id {problem}")));
    }
    let existing = ctx.store.models().get(&req.model.id).await?;
    let record = merge_registration(req.model, existing, bitinglip_nats::now_ms());
    ctx.store.models().put(&record).await?;
    tracing::info!(model = %record.id, worker = %req.worker, "model registered");
    Ok(())
}

/// Removes a model: its deployment (replicas are unloaded), its registry entry and every
/// node's status of it.
async fn remove(ctx: &NodeContext, model: &str) -> Result<(), WireError> {
    let had_deployment = ctx.store.deployments().delete(model).await?;
    let registered = ctx.store.models().remove(model).await?;
    if !had_deployment && !registered {
        return Err(WireError::new(ErrorKind::NotFound, format!("model `{model}` is neither registered nor deployed")));
    }
    tracing::info!(model, "model removed");
    Ok(())
}

#[ractor::async_trait]
impl Actor for ModelManager {
    type Msg = ModelManagerMsg;
    type State = ModelManagerState;
    type Arguments = ModelManagerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ModelManagerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let ctx = args.ctx;
        let subjects = ctx.bus.subjects().clone();
        let group = subjects.model_manager_queue_group();

        let service = ctx
            .bus
            .service("bitinglip-model-manager", "BitingLip model registry: register, list, search", &group)
            .await?;
        let server = Server::new(myself, ModelManagerMsg::SubscriptionEnded, ctx.clone());
        let endpoint = |name, subject| ctx.bus.endpoint(&service, name, subject);

        let register_serve = server
            .serve(endpoint("register", subjects.model_register()).await?, |ctx, req: RegisterModel| async move {
                register(&ctx, req).await
            });
        let search_serve =
            server.serve(endpoint("search", subjects.model_search()).await?, |ctx, req: SearchModels| async move {
                let hub = Hub::new(&ctx.config.hub)?;
                hub.search(&req.query, req.limit.unwrap_or(20).clamp(1, 100)).await
            });
        let status_serve = server
            .serve(endpoint("status", subjects.model_status()).await?, |ctx, q: GetModelStatus| async move {
                Ok(ctx.store.model_status().list(q.model.as_deref()).await?)
            });
        let load_serve =
            server.serve(endpoint("load", subjects.model_load()).await?, |ctx, req: LoadModel| async move {
                let replicas = req.replicas.unwrap_or(1).max(1);
                deployments::ensure_loaded(&ctx.store, &req.model, replicas).await
            });
        let unload_serve = server
            .serve(endpoint("unload", subjects.model_unload()).await?, |ctx, UnloadModel(req)| async move {
                deployments::scale(&ctx.store, &req.model, 0).await.map(|_| ())
            });
        let delete_serve = server
            .serve(endpoint("delete", subjects.model_delete()).await?, |ctx, DeleteModel(req)| async move {
                remove(&ctx, &req.model).await
            });
        let list_serve = server
            .serve(endpoint("list", subjects.model_list()).await?, |ctx, _: ListModels| async move {
                Ok(ctx.store.models().list().await?)
            });
        Ok(ModelManagerState {
            serves: vec![
                register_serve,
                search_serve,
                status_serve,
                load_serve,
                unload_serve,
                delete_serve,
                list_serve,
            ],
            _service: service,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ModelManagerMsg::SubscriptionEnded => Err("model manager subscription ended".into()),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        state.serves.iter().for_each(JoinHandle::abort);
        Ok(())
    }
}
