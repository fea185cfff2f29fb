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
    /// First registered, ms since the epoch.
    pub created_ms: u64,
    /// Last registration, ms since the epoch.
    pub updated_ms: u64,
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
            created_ms: 1,
            updated_ms: 2,
        }
    }

    #[test]
    fn registry_messages_pin_their_fields() {
        pin(record(), &["id", "source", "context_length", "created_ms", "updated_ms"]);
        pin(ModelSource::Local { path: "/m".into() }, &["type", "path"]);
        pin(RegisterModel { model: record(), worker: "w".into() }, &["model", "worker"]);
        pin(ListModels {}, &[]);
        pin(ModelList::Models { models: vec![record()] }, &["type", "models"]);
    }
}
