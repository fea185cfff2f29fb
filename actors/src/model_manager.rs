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
    DeleteModel, ErrorKind, GetModelStatus, ListModels, LoadModel, RegisterModel, SearchModels, Subjects, UnloadModel,
    WireError,
};

use crate::{
    ops::{deployments, hub::Hub, models::merge_registration},
    serve::{Endpoints, Service, Started},
    NodeContext,
};

/// The model manager, run by `serve::Served<ModelManager>`.
pub struct ModelManager;

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
impl Service for ModelManager {
    const DESCRIPTION: &'static str = "BitingLip model registry: register, list, search";
    const GROUP: fn(&Subjects) -> String = Subjects::model_manager_queue_group;

    async fn start(on: &Endpoints) -> Started {
        let subjects = on.subjects();
        on.serve(
            "register",
            subjects.model_register(),
            |ctx, req: RegisterModel| async move { register(&ctx, req).await },
        )
        .await?;
        on.serve("search", subjects.model_search(), |ctx, req: SearchModels| async move {
            let hub = Hub::new(&ctx.config.hub)?;
            hub.search(&req.query, req.limit.unwrap_or(20).clamp(1, 100)).await
        })
        .await?;
        on.serve("status", subjects.model_status(), |ctx, q: GetModelStatus| async move {
            Ok(ctx.store.model_status().list(q.model.as_deref()).await?)
        })
        .await?;
        on.serve("load", subjects.model_load(), |ctx, req: LoadModel| async move {
            let replicas = req.replicas.unwrap_or(1).max(1);
            deployments::ensure_loaded(&ctx.store, &req.model, replicas).await
        })
        .await?;
        on.serve("unload", subjects.model_unload(), |ctx, UnloadModel(req)| async move {
            deployments::scale(&ctx.store, &req.model, 0).await.map(|_| ())
        })
        .await?;
        on.serve(
            "delete",
            subjects.model_delete(),
            |ctx, DeleteModel(req)| async move { remove(&ctx, &req.model).await },
        )
        .await?;
        on.serve(
            "list",
            subjects.model_list(),
            |ctx, _: ListModels| async move { Ok(ctx.store.models().list().await?) },
        )
        .await
    }
}
