//! The requests of the OpenAI API the gateway reads: chat and legacy completions, their
//! shared sampling fields, tools and formats, and the fields refused by name; each
//! converted to the bus's `ChatParams`.

use bitinglip_bus_schema::{ChatMessage, ChatParams, OutputFormat, ToolCall, ToolChoice, ToolSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, Unsupported};

/// `stop`: a string or a list of strings.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message's `content`: a string, or a list of parts of which only text is supported.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content; only `text` parts are supported.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ContentPart {
    /// `text`.
    #[serde(rename = "type")]
    #[schema(pattern = "^text$")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// A call in an assistant message of the history.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ToolCallIn {
    /// The call's id.
    id: String,
    /// `function`.
    #[serde(rename = "type", default)]
    #[allow(dead_code)] // read for the schema; every call is a function call
    kind: Option<String>,
    /// The function called.
    function: FunctionCall,
}

/// A function call: its name and arguments (JSON text).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct FunctionCall {
    /// The function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// Its arguments as JSON text (in a stream, a piece of it).
    #[serde(default)]
    pub(crate) arguments: String,
}

/// One message of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    role: String,
    #[serde(default)]
    content: Option<Content>,
    /// An assistant message's calls of tools.
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default)]
    tool_call_id: Option<String>,
    /// A participant's name (accepted, not used).
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
}

/// A function offered as a tool.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct FunctionDef {
    /// Its name, `^[A-Za-z0-9_-]{1,64}$`.
    name: String,
    /// What it does.
    #[serde(default)]
    description: Option<String>,
    /// Its parameters, a JSON Schema object (absent: no parameters).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
    /// Accepted: arguments always match the schema when the call is forced.
    #[serde(default)]
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// A tool: only functions.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ToolDef {
    /// `function`.
    #[serde(rename = "type")]
    kind: String,
    /// The function.
    function: FunctionDef,
}

/// `tool_choice`: `auto`, `none`, `required`, or `{"type": "function", "function": {"name"}}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum ToolChoiceIn {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

/// The function a named tool choice forces.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct NamedFunction {
    name: String,
}

/// `response_format`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against a schema.
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct JsonSchemaFormat {
    /// The schema's name.
    name: String,
    /// What the output is for (accepted, not used).
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// The JSON Schema (absent: any JSON object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
    /// Accepted: the output always matches the schema.
    #[serde(default)]
    strict: Option<bool>,
}

/// BitingLip's extension `grammar`: the answer must match a regular expression or a Lark
/// grammar (llguidance's dialect), as mistral.rs takes them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub(crate) enum Grammar {
    /// A regular expression the whole answer matches.
    Regex(String),
    /// A Lark grammar with a `start` rule.
    Lark(String),
}

/// Options of a streamed answer.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the usage (and no choices).
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// The sampling and output fields chat and legacy completions share.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct Sampling {
    /// The most tokens to generate (older name of `max_completion_tokens`).
    #[serde(default)]
    max_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2 (absent: greedy).
    #[serde(default)]
    temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    top_p: Option<f64>,
    /// Where to stop: a string or up to 4.
    #[serde(default)]
    stop: Option<Stop>,
    /// Sampling seed.
    #[serde(default)]
    seed: Option<u64>,
    /// Answers wanted: only 1 is supported.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    n: Option<u32>,
    /// Penalty on tokens already present, -2 to 2.
    #[serde(default)]
    presence_penalty: Option<f32>,
    /// Penalty by how often a token already appeared, -2 to 2.
    #[serde(default)]
    frequency_penalty: Option<f32>,
    /// Token id (as a string) to a bias of -100 to 100 added to its logit.
    #[serde(default)]
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// The end user (kept for the caller's records).
    #[serde(default)]
    user: Option<String>,
    /// Which conversation this is: requests with the same key go to the same worker while
    /// it has room, so its prefix cache serves their common prompt (default: the prompt's
    /// beginning decides).
    #[serde(default)]
    #[schema(max_length = 512)]
    prompt_cache_key: Option<String>,
    /// Answer as server-sent events (`text/event-stream`), one chunk per event, then `[DONE]`.
    #[serde(default)]
    pub(crate) stream: bool,
    /// Options of a streamed answer.
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    /// False: answer 503 with Retry-After while the model loads (default: wait).
    #[serde(default)]
    pub(crate) wait_for_model: Option<bool>,
    /// BitingLip's extension: the answer matches a regular expression or a Lark grammar.
    #[serde(default)]
    grammar: Option<Grammar>,
}

impl Sampling {
    /// The shared fields into `chat`, refusing what BitingLip does not support.
    fn apply(self, chat: &mut ChatParams, logprobs: Option<u32>) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("`n` must be 1: one answer per request", Some("n")));
        }
        let mut bias = Vec::new();
        for (token, value) in self.logit_bias.unwrap_or_default() {
            let id = token.parse::<u32>().map_err(|_| {
                ApiError::invalid(&format!("`logit_bias` key {token:?} is not a token id"), Some("logit_bias"))
            })?;
            bias.push((id, value));
        }
        chat.max_tokens = chat.max_tokens.or(self.max_tokens);
        chat.temperature = self.temperature;
        chat.top_p = self.top_p;
        chat.stop = match self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        chat.seed = self.seed;
        chat.presence_penalty = self.presence_penalty;
        chat.frequency_penalty = self.frequency_penalty;
        chat.logit_bias = bias;
        chat.user = self.user;
        chat.prompt_cache_key = self.prompt_cache_key;
        chat.logprobs = logprobs;
        chat.format = match self.grammar {
            None => None,
            Some(Grammar::Regex(pattern)) => Some(OutputFormat::Regex { pattern }),
            Some(Grammar::Lark(grammar)) => Some(OutputFormat::Lark { grammar }),
        };
        Ok(())
    }
}

/// `POST /v1/chat/completions` body. Fields OpenAI defines that BitingLip does not support
/// are refused by name; other unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ChatCompletionRequest {
    /// A model's id, as `GET /v1/models` lists it.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    /// The conversation so far.
    #[schema(min_items = 1)]
    messages: Vec<Message>,
    /// The most tokens to generate.
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    /// Functions the model may call.
    #[serde(default)]
    tools: Option<Vec<ToolDef>>,
    /// `auto` (default with tools), `none`, `required`, or a named function.
    #[serde(default)]
    tool_choice: Option<ToolChoiceIn>,
    /// False: at most one call (default: any number).
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// `text`, `json_object`, or `json_schema` with a schema the answer follows.
    #[serde(default)]
    response_format: Option<ResponseFormat>,
    /// Return each token's log probability.
    #[serde(default)]
    logprobs: Option<bool>,
    /// With `logprobs`: this many most likely tokens at each position, 0 to 20.
    #[serde(default)]
    top_logprobs: Option<u32>,
    /// The shared sampling and output fields.
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
    /// Fields BitingLip refuses.
    #[serde(flatten)]
    unsupported: Unsupported,
}

/// `logprobs` and `top_logprobs` as the bus takes them (`Some(top)` when asked for).
fn logprobs_of(logprobs: Option<bool>, top: Option<u32>) -> Result<Option<u32>, ApiError> {
    match (logprobs.unwrap_or(false), top) {
        (false, Some(_)) => Err(ApiError::invalid("`top_logprobs` needs `logprobs: true`", Some("top_logprobs"))),
        (false, None) => Ok(None),
        (true, top) => Ok(Some(top.unwrap_or(0))),
    }
}

/// A tool's parameters as JSON text (absent: an object with no properties).
fn parameters_text(parameters: Option<Value>) -> String {
    parameters.unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})).to_string()
}

impl ChatCompletionRequest {
    /// Converts to the bus's chat parameters, refusing what BitingLip does not support.
    pub(crate) fn into_chat(self) -> Result<ChatParams, ApiError> {
        self.unsupported.check()?;
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.into_iter().enumerate() {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.into_iter().enumerate() {
                        if p.kind != "text" {
                            return Err(ApiError::invalid(
                                &format!("`messages[{i}].content[{j}].type` is {:?}; only text is supported", p.kind),
                                Some(&format!("messages[{i}].content[{j}].type")),
                            ));
                        }
                        text.push_str(&p.text.unwrap_or_default());
                    }
                    text
                }
            };
            let tool_calls = m
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.function.name.unwrap_or_default(),
                    arguments: c.function.arguments,
                })
                .collect();
            messages.push(ChatMessage { role: m.role, content, tool_calls, tool_call_id: m.tool_call_id });
        }
        let mut tools = Vec::new();
        for (i, t) in self.tools.unwrap_or_default().into_iter().enumerate() {
            if t.kind != "function" {
                return Err(ApiError::invalid(
                    &format!("`tools[{i}].type` is {:?}; only `function` is supported", t.kind),
                    Some(&format!("tools[{i}].type")),
                ));
            }
            tools.push(ToolSpec {
                name: t.function.name,
                description: t.function.description,
                parameters: parameters_text(t.function.parameters),
            });
        }
        let tool_choice = match self.tool_choice {
            None => ToolChoice::Auto,
            Some(ToolChoiceIn::Mode(mode)) => match mode.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(
                        &format!("`tool_choice` is {other:?}; use auto, none, required or a named function"),
                        Some("tool_choice"),
                    ))
                }
            },
            Some(ToolChoiceIn::Named { kind, function }) if kind == "function" => {
                ToolChoice::Function { name: function.name }
            }
            Some(ToolChoiceIn::Named { kind, .. }) => {
                return Err(ApiError::invalid(
                    &format!("`tool_choice.type` is {kind:?}; only `function` is supported"),
                    Some("tool_choice.type"),
                ))
            }
        };
        let mut chat = ChatParams {
            model: self.model,
            messages,
            max_tokens: self.max_completion_tokens,
            tools,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            ..ChatParams::default()
        };
        let format = match self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(OutputFormat::JsonObject),
            Some(ResponseFormat::JsonSchema { json_schema }) => Some(OutputFormat::JsonSchema {
                name: json_schema.name,
                schema: json_schema.schema.unwrap_or_else(|| serde_json::json!({"type": "object"})).to_string(),
                strict: json_schema.strict.unwrap_or(false),
            }),
        };
        let grammar = self.sampling.grammar.is_some();
        self.sampling.apply(&mut chat, logprobs_of(self.logprobs, self.top_logprobs)?)?;
        if format.is_some() {
            if grammar {
                return Err(ApiError::invalid("give `response_format` or `grammar`, not both", Some("grammar")));
            }
            chat.format = format;
        }
        Ok(chat)
    }
}

/// How the answer's tool calls reach a client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolMode {
    /// Text, and the calls the engine recognized in it.
    Free,
    /// The answer is this function's arguments: streamed as they are generated.
    Named(String),
    /// The answer is a list of calls: sent when it is complete.
    Required,
}

impl ToolMode {
    /// How `chat`'s tool choice shapes its answer.
    pub(crate) fn of(chat: &ChatParams) -> Self {
        match &chat.tool_choice {
            ToolChoice::Function { name } => ToolMode::Named(name.clone()),
            ToolChoice::Required => ToolMode::Required,
            ToolChoice::Auto | ToolChoice::None => ToolMode::Free,
        }
    }
}

/// `POST /v1/completions` body (legacy text completions).
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CompletionRequest {
    /// A model's id.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    /// The text to continue: a string (or a list of one string).
    #[schema(value_type = Object)]
    prompt: Value,
    /// Return the log probabilities of this many most likely tokens at each position, 0 to 5.
    #[serde(default)]
    logprobs: Option<u32>,
    /// Not supported: the prompt is never repeated in the answer.
    #[serde(default)]
    echo: Option<bool>,
    /// Not supported: no text after the completion.
    #[serde(default)]
    suffix: Option<String>,
    /// Not supported above 1.
    #[serde(default)]
    best_of: Option<u32>,
    /// The shared sampling and output fields.
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
}

impl CompletionRequest {
    /// Converts to the bus's parameters (a raw prompt), refusing what is not supported.
    pub(crate) fn into_chat(self) -> Result<ChatParams, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid(
                "`echo` is not supported: the answer never repeats the prompt",
                Some("echo"),
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("`suffix` is not supported", Some("suffix")));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("`best_of` must be 1", Some("best_of")));
        }
        let prompt = match self.prompt {
            Value::String(s) => s,
            Value::Array(items) if items.len() == 1 && items[0].is_string() => {
                items[0].as_str().unwrap_or_default().to_string()
            }
            Value::Array(_) => return Err(ApiError::invalid(
                "`prompt` must be one string: one completion per request (token arrays and batches are not supported)",
                Some("prompt"),
            )),
            _ => return Err(ApiError::invalid("`prompt` must be a string", Some("prompt"))),
        };
        if self.logprobs.is_some_and(|n| n > 5) {
            return Err(ApiError::invalid("`logprobs` is at most 5", Some("logprobs")));
        }
        let mut chat = ChatParams {
            model: self.model,
            prompt: Some(prompt),
            // OpenAI's default for legacy completions.
            max_tokens: if self.sampling.max_tokens.is_none() { Some(16) } else { None },
            ..ChatParams::default()
        };
        self.sampling.apply(&mut chat, self.logprobs)?;
        Ok(chat)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use crate::gateway::openai::parse_request;

    #[test]
    fn parse_errors_name_the_field() {
        let err = parse_request(br#"{"model": "m", "messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("messages[0].content"), "{}", err.message);
        let err = parse_request(br#"{"messages": []}"#).unwrap_err();
        assert!(err.message.contains("model"), "{}", err.message);
        let err = parse_request(br#"{"model": "m", "#).unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        let err = parse_request(br#"{"model": "m", "messages": [], "max_tokens": -1}"#).unwrap_err();
        assert!(err.message.contains("max_tokens"), "{}", err.message);
    }

    #[test]
    fn converts_openai_fields() {
        let req = parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
                "max_completion_tokens":7,"stop":"x","temperature":0.2,"stream":true,"frequency_penalty":0}"#,
        )
        .unwrap();
        assert!(req.sampling.stream);
        let chat = req.into_chat().unwrap();
        assert_eq!(chat.messages[0].content, "ab");
        assert_eq!(chat.max_tokens, Some(7));
        assert_eq!(chat.stop, vec!["x"]);
        let err = parse_request(br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
            .unwrap()
            .into_chat()
            .unwrap_err();
        assert!(err.message.contains("only text"));
    }
}
