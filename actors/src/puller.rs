//! The puller: downloads hub models on a node that runs workers (where they will be
//! served), into the Hugging Face cache, and registers them.
//!
//! Supervised by the node supervisor; supervises nothing. Runs on nodes with the worker
//! role. Serves `…model.pull` on the queue group `puller`; publishes progress on
//! `…model.<model>.progress`; registers the pulled model (revision sha, files, sizes)
//! through `…model.register`. A pull that fails leaves hf-hub's partial files in the
//! cache, so the next pull resumes. If its subscription ends it fails and is restarted.

use bitinglip_bus_schema::{ModelRecord, ModelSource, PullModel, RegisterModel, Subjects, WireError};

use crate::{
    ops::{models::folder_estimate, pull::pull},
    serve::{Endpoints, Service, Started},
    NodeContext,
};

/// The puller, run by `serve::Served<Puller>`.
pub struct Puller;

async fn pull_and_register(ctx: &NodeContext, req: PullModel) -> Result<ModelRecord, WireError> {
    let revision = req.revision.clone().unwrap_or_else(|| "main".to_string());
    let pulled = pull(ctx, &req.model, &revision).await?;
    let dir = pulled.dir.clone();
    let (shape, memory) = tokio::task::spawn_blocking(move || folder_estimate(&dir)).await.unwrap_or((None, None));
    let record = ModelRecord {
        id: req.model.clone(),
        source: ModelSource::Hub { revision },
        context_length: None,
        revision_sha: Some(pulled.sha),
        estimated_memory: memory,
        files: pulled.files,
        engine: Default::default(),
        shape,
        created_ms: 0,
        updated_ms: 0,
    };
    let reg = RegisterModel { model: record.clone(), worker: ctx.node_id().to_string() };
    ctx.bus.call(&reg).await.map(|()| record)
}

#[ractor::async_trait]
impl Service for Puller {
    const DESCRIPTION: &'static str = "BitingLip hub downloads on worker nodes";
    const GROUP: fn(&Subjects) -> String = Subjects::puller_queue_group;

    async fn start(on: &Endpoints) -> Started {
        let pull = on.subjects().model_pull();
        on.serve("pull", pull, |ctx, req: PullModel| async move { pull_and_register(&ctx, req).await }).await
    }
}
