//! What a Responses API request becomes: its input items as the conversation (after the
//! stored one it continues), its tools, tool choice and text format as the task's
//! parameters, and the settings its answer echoes.

use axum::http::StatusCode;
use bitinglip_bus_schema::{
    ApiKey, ChatMessage, ChatParams, OutputFormat, Scope, ToolCall, ToolChoice, ToolSpec, WireError,
};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::gateway::error::ApiError;
use crate::NodeContext;

/// `POST /v1/responses` body (text only).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ResponseRequest {
    /// A model's id.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    /// A text (one user message), or a list of items: messages (`{role, content}`, content
    /// a text or `input_text`/`output_text` parts), `function_call` and
    /// `function_call_output` items.
    #[schema(value_type = Object)]
    input: Value,
    /// A system message put before the conversation (not carried on to later responses).
    #[serde(default)]
    instructions: Option<String>,
    /// The most tokens to generate.
    #[serde(default)]
    max_output_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (absent: greedy).
    #[serde(default)]
    temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    top_p: Option<f64>,
    /// Function tools: `{type: "function", name, description?, parameters?, strict?}`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{type: "function", name}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    /// False: at most one call.
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// `{format: {type: "text" | "json_object" | "json_schema", name?, schema?, strict?}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    text: Option<Value>,
    /// Continue the conversation of this stored response (of the same key).
    #[serde(default)]
    previous_response_id: Option<String>,
    /// Answer as server-sent events, one typed event each (`response.created`, …,
    /// `response.completed`).
    #[serde(default)]
    stream: bool,
    /// False: do not store the response (it cannot be read back or continued).
    #[serde(default)]
    store: Option<bool>,
    /// Up to 16 string pairs, returned with the response.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// The end user (kept for the caller's records).
    #[serde(default)]
    user: Option<String>,
    /// Which conversation this is: requests with the same key go to the same worker while
    /// it has room (default: the input's beginning decides).
    #[serde(default)]
    #[schema(max_length = 512)]
    prompt_cache_key: Option<String>,
    /// Not supported (reasoning models).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    reasoning: Option<Value>,
    /// Not supported: every response runs in the foreground (use the task API to submit
    /// now and read later).
    #[serde(default)]
    background: Option<bool>,
}

/// What a request becomes: the task's parameters and what the answer echoes.
pub(super) struct Prepared {
    pub(super) chat: ChatParams,
    /// The conversation without the instructions: what is stored.
    pub(super) conversation: Vec<ChatMessage>,
    pub(super) echo: Value,
    pub(super) stream: bool,
    pub(super) store: bool,
}

fn invalid(message: &str, param: &str) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// The text of a message's `content`: a string, or text parts.
fn content_text(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    other => {
                        return Err(invalid(
                            &format!("`{at}.content[{j}].type` is {other:?}; only text parts are supported"),
                            &format!("{at}.content[{j}].type"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => Err(invalid(&format!("`{at}.content` must be a string or a list of parts"), &format!("{at}.content"))),
    }
}

/// The conversation items of `input`.
fn input_messages(input: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![ChatMessage::new("user", s.clone())]),
        Value::Array(items) if !items.is_empty() => items,
        _ => return Err(invalid("`input` must be a string or a non-empty list of items", "input")),
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let field = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_string);
        match item.get("type").and_then(Value::as_str) {
            None | Some("message") => {
                let role =
                    field("role").ok_or_else(|| invalid(&format!("`{at}.role` is missing"), &format!("{at}.role")))?;
                let content = content_text(item.get("content").unwrap_or(&Value::Null), &at)?;
                messages.push(ChatMessage::new(role, content));
            }
            Some("function_call") => {
                let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                    return Err(invalid(&format!("`{at}` needs `call_id` and `name`"), &at));
                };
                let call = ToolCall { id: call_id, name, arguments: field("arguments").unwrap_or_default() };
                messages.push(ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") });
            }
            Some("function_call_output") => {
                let call_id = field("call_id")
                    .ok_or_else(|| invalid(&format!("`{at}.call_id` is missing"), &format!("{at}.call_id")))?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                messages.push(ChatMessage { tool_call_id: Some(call_id), ..ChatMessage::new("tool", output) });
            }
            Some(other) => {
                return Err(invalid(
                    &format!("`{at}.type` is {other:?}; use message, function_call or function_call_output"),
                    &format!("{at}.type"),
                ))
            }
        }
    }
    Ok(messages)
}

fn tools_of(tools: &[Value]) -> Result<Vec<ToolSpec>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(&format!("`tools[{i}].type` must be `function`"), &format!("tools[{i}].type")));
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(&format!("`tools[{i}].name` is missing"), &format!("tools[{i}].name")))?;
        let parameters = t.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        out.push(ToolSpec {
            name: name.to_string(),
            description: t.get("description").and_then(Value::as_str).map(str::to_string),
            parameters: parameters.to_string(),
        });
    }
    Ok(out)
}

fn tool_choice_of(choice: Option<&Value>) -> Result<ToolChoice, ApiError> {
    Ok(match choice {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => return Err(invalid(&format!("`tool_choice` is {other:?}"), "tool_choice")),
        },
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => {
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("`tool_choice.name` is missing", "tool_choice.name"))?;
            ToolChoice::Function { name: name.to_string() }
        }
        Some(_) => return Err(invalid("`tool_choice` must be auto, none, required or a function", "tool_choice")),
    })
}

fn format_of(text: Option<&Value>) -> Result<Option<OutputFormat>, ApiError> {
    let Some(format) = text.and_then(|t| t.get("format")) else { return Ok(None) };
    Ok(match format.get("type").and_then(Value::as_str) {
        Some("text") => None,
        Some("json_object") => Some(OutputFormat::JsonObject),
        Some("json_schema") => Some(OutputFormat::JsonSchema {
            name: format.get("name").and_then(Value::as_str).unwrap_or("output").to_string(),
            schema: format.get("schema").cloned().unwrap_or_else(|| json!({"type": "object"})).to_string(),
            strict: format.get("strict").and_then(Value::as_bool).unwrap_or(false),
        }),
        other => return Err(invalid(&format!("`text.format.type` is {other:?}"), "text.format.type")),
    })
}

pub(super) async fn prepare(ctx: &NodeContext, key: &ApiKey, r: ResponseRequest) -> Result<Prepared, ApiError> {
    if r.reasoning.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(invalid("`reasoning` is not supported by BitingLip", "reasoning"));
    }
    if r.background == Some(true) {
        return Err(invalid(
            "`background` is not supported: use the task API (`POST /v1/tasks`) to submit now and read later",
            "background",
        ));
    }
    let mut conversation = Vec::new();
    if let Some(previous) = &r.previous_response_id {
        let stored = ctx.store.responses().get(previous).await.map_err(WireError::from)?;
        match stored {
            Some(s) if key.scope == Scope::Admin || s.owner.as_deref() == Some(key.id.as_str()) => {
                conversation = s.conversation
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    format!("no stored response {previous:?} for this key"),
                )
                .with_code("not_found"))
            }
        }
    }
    conversation.extend(input_messages(&r.input)?);
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if let Some(instructions) = &r.instructions {
        messages.push(ChatMessage::new("system", instructions.clone()));
    }
    messages.extend(conversation.iter().cloned());
    let tools = tools_of(r.tools.as_deref().unwrap_or_default())?;
    let tool_choice = tool_choice_of(r.tool_choice.as_ref())?;
    let format = format_of(r.text.as_ref())?;
    let echo = json!({
        "instructions": r.instructions,
        "max_output_tokens": r.max_output_tokens,
        "metadata": r.metadata.clone().unwrap_or_else(|| json!({})),
        "parallel_tool_calls": r.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": r.previous_response_id,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "tool_choice": r.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        "tools": r.tools.clone().unwrap_or_default(),
        "text": r.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
        "store": r.store.unwrap_or(true),
        "user": r.user,
    });
    let chat = ChatParams {
        model: r.model,
        messages,
        max_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        tools,
        tool_choice,
        parallel_tool_calls: r.parallel_tool_calls,
        format,
        user: r.user,
        prompt_cache_key: r.prompt_cache_key,
        ..ChatParams::default()
    };
    Ok(Prepared { chat, conversation, echo, stream: r.stream, store: r.store.unwrap_or(true) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_items_become_the_conversation() {
        let input = json!([
            {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ]);
        let m = input_messages(&input).unwrap();
        assert_eq!(m[0], ChatMessage::new("user", "ab"));
        assert_eq!(m[1].tool_calls[0].name, "f");
        assert_eq!(
            (m[2].role.as_str(), m[2].tool_call_id.as_deref(), m[2].content.as_str()),
            ("tool", Some("c1"), "42")
        );
        assert_eq!(input_messages(&json!("hi")).unwrap(), vec![ChatMessage::new("user", "hi")]);
        for (bad, param) in [
            (json!([{"role": "user", "content": [{"type": "input_image"}]}]), "input[0].content[0].type"),
            (json!([{"type": "reasoning"}]), "input[0].type"),
            (json!([]), "input"),
        ] {
            let err = input_messages(&bad).unwrap_err();
            assert_eq!(err.body().error.param.as_deref(), Some(param));
        }
    }

    #[test]
    fn formats_and_tool_choices_map() {
        let f = format_of(Some(&json!({"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}})))
            .unwrap();
        assert!(matches!(f, Some(OutputFormat::JsonSchema { .. })));
        assert_eq!(format_of(Some(&json!({"format": {"type": "text"}}))).unwrap(), None);
        assert_eq!(
            tool_choice_of(Some(&json!({"type": "function", "name": "f"}))).unwrap(),
            ToolChoice::Function { name: "f".into() }
        );
        assert!(tool_choice_of(Some(&json!("sometimes"))).is_err());
    }
}
