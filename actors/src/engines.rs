//! Engines outside any worker. The benchmark drives the very engine a worker runs, in its
//! own process, as the baseline the platform's streaming rate is measured against.

use std::sync::Arc;

use bitinglip_config::ModelConfig;

use crate::{Engine, EngineError};

/// Loads `model` into a mistral.rs engine, as a worker would.
pub async fn load_mistralrs(model: &ModelConfig, force_cpu: bool) -> Result<Arc<dyn Engine>, EngineError> {
    Ok(Arc::new(crate::worker::mistral::MistralEngine::load(model, force_cpu).await?))
}
