//! The puller: downloads hub models on a node that runs workers (where they will be
//! served), into the Hugging Face cache, and registers them.
//!
//! Supervised by the node supervisor; supervises nothing. Runs on nodes with the worker
//! role. Serves `…model.pull` on the queue group `puller`; publishes progress on
//! `…model.<model>.progress`; registers the pulled model (revision sha, files, sizes)
//! through `…model.register`. A pull that fails leaves hf-hub's partial files in the
//! cache, so the next pull resumes. If its subscription ends it fails and is restarted.

use bitinglip_bus_schema::{ModelRecord, ModelSource, PullModel, RegisterModel, WireError};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::{
    ops::{models::folder_estimate, pull::pull},
    serve::Server,
    NodeContext,
};

/// The puller actor.
pub struct Puller;

/// Its arguments.
pub struct PullerArgs {
    /// Shared node context.
    pub ctx: NodeContext,
}

/// Its state: the serving task.
pub struct PullerState {
    serve: JoinHandle<()>,
    _service: async_nats::service::Service,
}

/// Messages to the puller.
#[derive(Debug, Clone)]
pub enum PullerMsg {
    /// The subscription ended; fail so the supervisor restarts us.
    SubscriptionEnded,
}

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
impl Actor for Puller {
    type Msg = PullerMsg;
    type State = PullerState;
    type Arguments = PullerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PullerMsg>,
        args: PullerArgs,
    ) -> Result<PullerState, ActorProcessingErr> {
        let ctx = args.ctx;
        let subjects = ctx.bus.subjects().clone();
        let service = ctx
            .bus
            .service("bitinglip-puller", "BitingLip hub downloads on worker nodes", &subjects.puller_queue_group())
            .await?;
        let sub = ctx.bus.endpoint(&service, "pull", subjects.model_pull()).await?;
        let server = Server::new(myself, PullerMsg::SubscriptionEnded, ctx);
        let serve = server.serve(sub, |ctx, req: PullModel| async move { pull_and_register(&ctx, req).await });
        Ok(PullerState { serve, _service: service })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PullerMsg>,
        msg: PullerMsg,
        _state: &mut PullerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PullerMsg::SubscriptionEnded => Err("puller subscription ended".into()),
        }
    }

    async fn post_stop(&self, _myself: ActorRef<PullerMsg>, state: &mut PullerState) -> Result<(), ActorProcessingErr> {
        state.serve.abort();
        Ok(())
    }
}
