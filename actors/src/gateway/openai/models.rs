//! `GET /v1/models`: the models the key may use, in OpenAI's list format.

use axum::Json;
use bitinglip_bus_schema::ListModels;

use crate::gateway::access::auth::Caller;
use crate::gateway::{
    error::ApiError,
    openai::{ModelObject, ModelObjectList},
};

/// The models this key may use, in OpenAI's list format.
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, body = ModelObjectList)))]
pub(crate) async fn models(Caller { ctx, key }: Caller) -> Result<Json<ModelObjectList>, ApiError> {
    let models = ctx.bus.call(&ListModels {}).await?;
    let data = models
        .into_iter()
        .filter(|m| key.allows_model(&m.id))
        .map(|m| ModelObject {
            object: "model",
            created: m.created_ms / 1000,
            owned_by: "bitinglip",
            context_length: m.context_length,
            id: m.id,
        })
        .collect();
    Ok(Json(ModelObjectList { object: "list", data }))
}
