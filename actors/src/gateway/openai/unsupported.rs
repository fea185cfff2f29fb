//! The fields OpenAI defines for a generation that BitingLip does not support, each
//! refused by name (a 400 with `param` set) rather than ignored.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiError;

/// Fields OpenAI defines for a generation that BitingLip does not support: a request that
/// sets one (to anything but null or its default) is refused with a 400 naming it.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct Unsupported {
    /// Audio output.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    audio: Option<Value>,
    /// Output modalities other than `["text"]`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    modalities: Option<Value>,
    /// Predicted outputs.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    prediction: Option<Value>,
    /// Web search.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    web_search_options: Option<Value>,
    /// Reasoning effort of reasoning models.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    reasoning_effort: Option<Value>,
    /// Verbosity of reasoning models.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    verbosity: Option<Value>,
    /// The deprecated `functions` (use `tools`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    functions: Option<Value>,
    /// The deprecated `function_call` (use `tool_choice`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    function_call: Option<Value>,
    /// Storing completions for distillation (`true`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    store: Option<Value>,
    /// Metadata of stored completions.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// A service tier other than `auto` or `default`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    service_tier: Option<Value>,
}

impl Unsupported {
    /// The first field set that BitingLip does not support.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
        let fields: [(&str, bool); 11] = [
            ("audio", set(&self.audio)),
            ("modalities", set(&self.modalities) && self.modalities != Some(serde_json::json!(["text"]))),
            ("prediction", set(&self.prediction)),
            ("web_search_options", set(&self.web_search_options)),
            ("reasoning_effort", set(&self.reasoning_effort)),
            ("verbosity", set(&self.verbosity)),
            ("functions", set(&self.functions)),
            ("function_call", set(&self.function_call)),
            ("store", set(&self.store) && self.store != Some(Value::Bool(false))),
            ("metadata", set(&self.metadata) && self.metadata != Some(serde_json::json!({}))),
            (
                "service_tier",
                set(&self.service_tier)
                    && !matches!(self.service_tier.as_ref().and_then(Value::as_str), Some("auto" | "default")),
            ),
        ];
        match fields.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(ApiError::invalid(&format!("`{name}` is not supported by BitingLip"), Some(name))),
            None => Ok(()),
        }
    }
}
