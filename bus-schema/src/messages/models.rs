//! The model registry.

use serde::{Deserialize, Serialize};

use crate::WireError;

/// Where a model's files come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelSource {
    /// A folder in Hugging Face layout on the serving node.
    Local {
        /// The folder.
        path: String,
    },
    /// A Hugging Face hub repository, through the hf-hub cache.
    Hub {
        /// Branch, tag or commit.
        revision: String,
    },
}

/// A registered model, in the models KV bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The id clients name in requests.
    pub id: String,
    /// Where its files come from.
    pub source: ModelSource,
    /// Longest sequence (prompt plus answer) the model accepts, when known.
    #[serde(default)]
    pub context_length: Option<u32>,
    /// Commit sha the revision resolved to, for hub models that were pulled.
    #[serde(default)]
    pub revision_sha: Option<String>,
    /// The model's files, for hub models that were pulled.
    #[serde(default)]
    pub files: Vec<ModelFile>,
    /// Memory one replica needs, bytes, estimated from the weights' size.
    #[serde(default)]
    pub estimated_memory: Option<u64>,
    /// The engine that serves it (what an on-demand load uses).
    #[serde(default)]
    pub engine: crate::EngineKind,
    /// Its shape, read from `config.json` and the weights' headers: what memory
    /// estimates are computed from.
    #[serde(default)]
    pub shape: Option<ModelShape>,
    /// First registered, ms since the epoch.
    pub created_ms: u64,
    /// Last registration, ms since the epoch.
    pub updated_ms: u64,
}

/// What memory estimates need of a model, read from its files once (by the node that
/// pulled it, or the worker that loaded its folder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelShape {
    /// Parameters in all.
    pub params: u64,
    /// Of them, those in the weight matrices of linear layers (what quantization packs;
    /// embeddings and norms stay in the model's dtype).
    pub linear_params: u64,
    /// Transformer layers.
    pub layers: u32,
    /// Key/value heads per layer.
    pub kv_heads: u32,
    /// Size of one head.
    pub head_dim: u32,
    /// Hidden size.
    pub hidden: u32,
    /// MLP width.
    pub intermediate: u32,
    /// Attention heads.
    pub heads: u32,
    /// Vocabulary size.
    pub vocab: u32,
    /// Longest sequence the model takes (`max_position_embeddings`), when its config says.
    #[serde(default)]
    pub max_context: Option<u32>,
    /// The dtype of the weights in the files (`bf16`, `f32`, …).
    pub file_dtype: String,
}

/// Where a model is on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Known to the registry, nothing on this node yet.
    Registered,
    /// Files are being downloaded (holds a lease).
    Downloading,
    /// Files are in the node's cache, verified.
    Ready,
    /// The engine is loading it (holds a lease).
    Loading,
    /// Loaded; a worker serves it.
    Loaded,
    /// Failed, with the reason.
    Failed,
}

impl ModelState {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Registered => "registered",
            ModelState::Downloading => "downloading",
            ModelState::Ready => "ready",
            ModelState::Loading => "loading",
            ModelState::Loaded => "loaded",
            ModelState::Failed => "failed",
        }
    }

    /// True for the states a node must keep renewing (downloading, loading).
    pub fn holds_lease(self) -> bool {
        matches!(self, ModelState::Downloading | ModelState::Loading)
    }
}

/// One node's status of one model, in the models bucket under
/// `<model token>.<node token>`. A state that holds a lease is valid only until
/// `lease_until_ms`: a node that dies mid-download leaves nothing stuck.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelNodeStatus {
    /// Model id.
    pub model: String,
    /// Node id.
    pub node: String,
    /// Where it is.
    pub state: ModelState,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// For downloading and loading: valid until then, ms since the epoch.
    #[serde(default)]
    pub lease_until_ms: Option<u64>,
    /// Last change, ms since the epoch.
    pub updated_ms: u64,
}

impl ModelNodeStatus {
    /// The state as of `now_ms`: a lease that ran out reads as failed.
    pub fn effective(&self, now_ms: u64) -> ModelNodeStatus {
        let mut s = self.clone();
        if s.state.holds_lease() && s.lease_until_ms.is_some_and(|until| until < now_ms) {
            s.reason = Some(format!("the node stopped renewing its {} lease", s.state.as_str()));
            s.state = ModelState::Failed;
        }
        s
    }
}

/// Request on `…model.status`: every node's status of every model (or one model).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetModelStatus {
    /// Only this model.
    #[serde(default)]
    pub model: Option<String>,
}

/// Reply on `…model.status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelStatusList {
    /// Statuses, leases already applied.
    Statuses {
        /// The statuses.
        statuses: Vec<ModelNodeStatus>,
    },
    /// Why not.
    Error(WireError),
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    /// Path inside the repository.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// sha256 (hex), when the hub gives it (LFS files).
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Request on `…model.pull`: download a hub model into the Hugging Face cache of a node
/// that runs workers, verify it, and register it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullModel {
    /// Hub id (`org/name`).
    pub model: String,
    /// Branch, tag or commit (default `main`).
    #[serde(default)]
    pub revision: Option<String>,
}

/// Reply on `…model.pull`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullReply {
    /// Downloaded, verified and registered.
    Pulled(ModelRecord),
    /// Why not.
    Error(WireError),
}

/// Published on `…model.<model>.progress` while a pull runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullProgress {
    /// Hub id.
    pub model: String,
    /// The file being downloaded.
    pub file: String,
    /// Bytes of this file so far (resumed bytes included).
    pub file_done: u64,
    /// Bytes of this file.
    pub file_size: u64,
    /// Files finished.
    pub files_done: u32,
    /// Files in all.
    pub files_total: u32,
}

/// Request on `…model.search`: search the hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchModels {
    /// Search text.
    pub query: String,
    /// Most results (default 20).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Reply on `…model.search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SearchResults {
    /// Hub models, as the hub ranks them.
    Models {
        /// The results.
        models: Vec<HubModel>,
    },
    /// Why not.
    Error(WireError),
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubModel {
    /// Hub id.
    pub id: String,
    /// Downloads, when the hub says.
    #[serde(default)]
    pub downloads: Option<u64>,
    /// Likes, when the hub says.
    #[serde(default)]
    pub likes: Option<u64>,
}

/// Request on `…model.register`: a worker announces the model it serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterModel {
    /// The model.
    pub model: ModelRecord,
    /// The announcing worker.
    pub worker: String,
}

/// Request on `…model.list`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ListModels {}

/// Reply on `…model.list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelList {
    /// Every registered model.
    Models {
        /// The models.
        models: Vec<ModelRecord>,
    },
    /// The registry could not be read.
    Error(WireError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    fn record() -> ModelRecord {
        ModelRecord {
            id: "org/m".into(),
            source: ModelSource::Hub { revision: "main".into() },
            context_length: Some(2048),
            revision_sha: Some("abc".into()),
            files: vec![ModelFile { name: "config.json".into(), size: 10, sha256: None }],
            estimated_memory: Some(12),
            engine: crate::EngineKind::Mistralrs,
            shape: None,
            created_ms: 1,
            updated_ms: 2,
        }
    }

    /// A model record's fields, in order.
    const RECORD_FIELDS: &[&str] = &[
        "id",
        "source",
        "context_length",
        "revision_sha",
        "files",
        "estimated_memory",
        "engine",
        "shape",
        "created_ms",
        "updated_ms",
    ];

    #[test]
    fn registry_messages_pin_their_fields() {
        pin(record(), RECORD_FIELDS);
        pin(record().files[0].clone(), &["name", "size", "sha256"]);
        pin(PullModel { model: "a/b".into(), revision: None }, &["model", "revision"]);
        pin(PullReply::Pulled(record()), &[&["type"], RECORD_FIELDS].concat());
        pin(
            PullProgress {
                model: "a/b".into(),
                file: "f".into(),
                file_done: 1,
                file_size: 2,
                files_done: 0,
                files_total: 3,
            },
            &["model", "file", "file_done", "file_size", "files_done", "files_total"],
        );
        pin(SearchModels { query: "q".into(), limit: Some(3) }, &["query", "limit"]);
        let st = ModelNodeStatus {
            model: "a/b".into(),
            node: "n".into(),
            state: ModelState::Downloading,
            reason: None,
            lease_until_ms: Some(10),
            updated_ms: 5,
        };
        pin(st.clone(), &["model", "node", "state", "reason", "lease_until_ms", "updated_ms"]);
        pin(GetModelStatus { model: None }, &["model"]);
        pin(ModelStatusList::Statuses { statuses: vec![st.clone()] }, &["type", "statuses"]);
        assert_eq!(st.effective(9).state, ModelState::Downloading);
        assert_eq!(st.effective(11).state, ModelState::Failed);
        pin(
            SearchResults::Models { models: vec![HubModel { id: "a/b".into(), downloads: Some(1), likes: None }] },
            &["type", "models"],
        );
        pin(ModelSource::Local { path: "/m".into() }, &["type", "path"]);
        pin(RegisterModel { model: record(), worker: "w".into() }, &["model", "worker"]);
        pin(ListModels {}, &[]);
        pin(ModelList::Models { models: vec![record()] }, &["type", "models"]);
    }
}
