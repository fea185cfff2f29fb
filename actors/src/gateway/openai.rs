//! The OpenAI wire format the gateway speaks: request parsing with errors that name the
//! field, responses, stream chunks, and the error shape.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use bitinglip_bus_schema::{
    ChatMessage, ChatParams, ErrorKind, FinishReason, OutputFormat, TaskCompleted, TokenLogprob, ToolCall, ToolChoice,
    ToolSpec, Usage, WireError,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

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
    name: Option<String>,
    /// Its arguments as JSON text (in a stream, a piece of it).
    #[serde(default)]
    arguments: String,
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
    fn check(&self) -> Result<(), ApiError> {
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

/// Parses a `POST /v1/chat/completions` body, naming the offending field on error.
pub(crate) fn parse_request(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    parse_flattened(body)
}

/// Parses a `POST /v1/completions` body, naming the offending field on error.
pub(crate) fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    parse_flattened(body)
}

/// A request with the shared fields flattened in: serde loses the path of an error in a
/// flattened struct, so those are read once on their own first (an error there names its
/// field), then the whole.
fn parse_flattened<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: Value = parse(body)?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    }
    named(serde_path_to_error::deserialize::<_, Sampling>(&value))?;
    named(serde_path_to_error::deserialize::<_, Unsupported>(&value))?;
    named(serde_path_to_error::deserialize(&value))
}

/// Parses a JSON request body, naming the offending field on error.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    named(serde_path_to_error::deserialize(de))
}

fn named<T>(result: Result<T, serde_path_to_error::Error<serde_json::Error>>) -> Result<T, ApiError> {
    result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid field `{path}`: {inner}")
        };
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .with_param((path != ".").then_some(path))
    })
}

/// `axum::extract::Query`, refusing a bad query string with an error in OpenAI's shape
/// (axum's own refusal is plain text).
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct Query<T>(pub(crate) T);

/// `axum::extract::Path`, refusing a bad path parameter with an error in OpenAI's shape.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct Path<T>(pub(crate) T);

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::invalid(&format!("invalid query: {}", rejection.body_text()), None)
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        ApiError::invalid(&format!("invalid path: {}", rejection.body_text()), None)
    }
}

/// An error in OpenAI's shape, as every route answers one.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub(crate) error: ErrorDetail,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// For a person.
    pub(crate) message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `service_unavailable`, `server_error`, …
    #[serde(rename = "type")]
    kind: String,
    /// The request field at fault, when one is.
    pub(crate) param: Option<String>,
    /// A machine-readable reason: `invalid_api_key`, `unknown_model`, `overloaded`, …
    code: Option<String>,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<String>,
    code: Option<String>,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    pub(crate) fn invalid(message: &str, param: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param.map(str::to_string))
    }

    fn with_param(mut self, param: Option<String>) -> Self {
        self.param = param;
        self
    }

    /// Sets `Retry-After`, in seconds.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Sets the `code` (a machine-readable reason such as `invalid_api_key`).
    pub(crate) fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }
}

impl From<WireError> for ApiError {
    fn from(err: WireError) -> Self {
        let (status, kind, retry) = match err.kind {
            ErrorKind::Decode
            | ErrorKind::InvalidRequest
            | ErrorKind::ContextLength
            | ErrorKind::UnsupportedVersion => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            ErrorKind::UnknownModel | ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error", None),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "invalid_request_error", None),
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None),
            ErrorKind::NoWorker | ErrorKind::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", Some(1))
            }
            ErrorKind::ModelLoading => (StatusCode::SERVICE_UNAVAILABLE, "model_loading", Some(2)),
            ErrorKind::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some(1)),
            ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout", None),
            ErrorKind::Cancelled => (StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), "cancelled", None),
            ErrorKind::Engine | ErrorKind::Internal | ErrorKind::Unknown => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None)
            }
        };
        let mut e = ApiError::new(status, kind, err.message);
        e.code = Some(err.kind.as_str().to_string());
        e.retry_after = retry;
        e
    }
}

impl ApiError {
    /// The bus error kind (`unknown_model`, `overloaded`, …), or the error type when the
    /// error never reached the bus (a malformed request).
    pub(crate) fn code(&self) -> &str {
        self.code.as_deref().unwrap_or(self.kind)
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_string(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// OpenAI's `usage` object, with BitingLip's timings beside the counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct OpenAiUsage {
    /// Tokens of the prompt.
    prompt_tokens: u32,
    /// Tokens generated.
    completion_tokens: u32,
    /// The sum.
    total_tokens: u32,
    /// From the task's start on a worker to its first token, ms.
    time_to_first_token_ms: f64,
    /// On the worker, ms.
    total_time_ms: f64,
    /// Queued before a worker took it, ms.
    queue_time_ms: f64,
}

impl From<&Usage> for OpenAiUsage {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            time_to_first_token_ms: u.time_to_first_token_ms,
            total_time_ms: u.total_time_ms,
            queue_time_ms: u.queue_time_ms,
        }
    }
}

/// OpenAI's finish reason for ours.
pub(crate) fn finish(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Cancelled | FinishReason::Error => "stop",
    }
}

/// A model as `GET /v1/models` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelObject {
    /// The id requests name.
    pub(crate) id: String,
    /// `model`.
    pub(crate) object: &'static str,
    /// Registered, seconds since the epoch.
    pub(crate) created: u64,
    /// `bitinglip`.
    pub(crate) owned_by: &'static str,
    /// The longest context it takes, tokens, when known.
    pub(crate) context_length: Option<u32>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelObjectList {
    /// `list`.
    pub(crate) object: &'static str,
    /// The models this key may use.
    pub(crate) data: Vec<ModelObject>,
}

/// A tool call of the answer (in a stream: its part in this chunk).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ToolCallOut {
    /// Its position among the answer's calls (in stream chunks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<u32>,
    /// The call's id (in a stream: in the call's first chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// `function` (in a stream: in the call's first chunk).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    /// The function's name and (a piece of) its arguments.
    pub(crate) function: FunctionCall,
}

impl ToolCallOut {
    /// A whole call; `index` set for a stream chunk.
    pub(crate) fn whole(call: &ToolCall, index: Option<u32>) -> Self {
        Self {
            index,
            id: Some(call.id.clone()),
            kind: Some("function"),
            function: FunctionCall { name: Some(call.name.clone()), arguments: call.arguments.clone() },
        }
    }

    /// The first chunk of a call whose arguments follow in pieces.
    pub(crate) fn opening(id: String, name: String) -> Self {
        Self {
            index: Some(0),
            id: Some(id),
            kind: Some("function"),
            function: FunctionCall { name: Some(name), arguments: String::new() },
        }
    }

    /// A piece of call 0's arguments.
    pub(crate) fn arguments(piece: String) -> Self {
        Self { index: Some(0), id: None, kind: None, function: FunctionCall { name: None, arguments: piece } }
    }
}

/// One of the most likely tokens at a position.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopLogprobOut {
    /// The token.
    token: String,
    /// Its log probability.
    logprob: f32,
    /// Its UTF-8 bytes.
    bytes: Option<Vec<u8>>,
}

/// A generated token's log probability.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LogprobOut {
    /// The token.
    token: String,
    /// Its log probability.
    logprob: f32,
    /// Its UTF-8 bytes.
    bytes: Option<Vec<u8>>,
    /// The most likely tokens at its position (`top_logprobs` of them).
    top_logprobs: Vec<TopLogprobOut>,
}

/// A choice's `logprobs`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChoiceLogprobs {
    /// One per generated token.
    content: Vec<LogprobOut>,
}

/// `logprobs` of a choice from the bus's, when the request asked for them.
pub(crate) fn choice_logprobs(wanted: bool, logprobs: &[TokenLogprob]) -> Option<ChoiceLogprobs> {
    wanted.then(|| ChoiceLogprobs {
        content: logprobs
            .iter()
            .map(|l| LogprobOut {
                token: l.token.clone(),
                logprob: l.logprob,
                bytes: l.bytes.clone(),
                top_logprobs: l
                    .top
                    .iter()
                    .map(|t| TopLogprobOut { token: t.token.clone(), logprob: t.logprob, bytes: t.bytes.clone() })
                    .collect(),
            })
            .collect(),
    })
}

/// The answer's message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AssistantMessage {
    /// `assistant`.
    role: &'static str,
    /// The text generated; null when the answer is only tool calls.
    content: Option<String>,
    /// The calls of tools the answer makes.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<ToolCallOut>>,
    /// Always null: BitingLip's models do not refuse in a separate field.
    refusal: Option<String>,
}

/// One answer of a completion (there is one: `n` is 1).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Choice {
    /// 0.
    index: u32,
    /// The answer.
    message: AssistantMessage,
    /// The tokens' log probabilities, when asked for.
    logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    finish_reason: &'static str,
}

/// A whole (non-streamed) chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChatCompletion {
    /// `chatcmpl-<task id>`.
    id: String,
    /// `chat.completion`.
    object: &'static str,
    /// Seconds since the epoch.
    created: u64,
    /// The model.
    model: String,
    /// Always null.
    system_fingerprint: Option<String>,
    /// The answer.
    choices: Vec<Choice>,
    /// Tokens and timings.
    usage: OpenAiUsage,
}

/// A whole (non-streamed) completion. `forced`: the answer's text is its tool calls' JSON,
/// not content.
pub(crate) fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: String,
    done: &TaskCompleted,
    forced: bool,
    logprobs: bool,
) -> ChatCompletion {
    let calls = (!done.tool_calls.is_empty())
        .then(|| done.tool_calls.iter().map(|c| ToolCallOut::whole(c, None)).collect::<Vec<_>>());
    let content = if calls.is_some() && (forced || text.is_empty()) { None } else { Some(text) };
    ChatCompletion {
        id: id.to_string(),
        object: "chat.completion",
        created,
        model: model.to_string(),
        system_fingerprint: None,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage { role: "assistant", content, tool_calls: calls, refusal: None },
            logprobs: choice_logprobs(logprobs, &done.logprobs),
            finish_reason: finish(done.finish_reason),
        }],
        usage: OpenAiUsage::from(&done.usage),
    }
}

/// What a stream chunk adds to the answer: the role first, then text or tool calls.
#[derive(Debug, Default, Serialize, ToSchema)]
pub(crate) struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    /// More text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<String>,
    /// Tool calls, or pieces of their arguments, by `index`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tool_calls: Option<Vec<ToolCallOut>>,
}

/// One answer's part in a chunk.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChunkChoice {
    /// 0.
    index: u32,
    /// What this chunk adds.
    delta: Delta,
    /// This chunk's tokens' log probabilities, when asked for.
    logprobs: Option<ChoiceLogprobs>,
    /// Set in the last chunk with a choice: `stop`, `length` or `tool_calls`.
    finish_reason: Option<&'static str>,
}

/// One server-sent event of a streamed chat completion (`data: <chunk>`; the last event is
/// `data: [DONE]`).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChatCompletionChunk {
    /// `chatcmpl-<task id>`, the same in every chunk.
    id: String,
    /// `chat.completion.chunk`.
    object: &'static str,
    /// Seconds since the epoch.
    created: u64,
    /// The model.
    model: String,
    /// Always null.
    system_fingerprint: Option<String>,
    /// The answer's part; empty in the usage chunk.
    choices: Vec<ChunkChoice>,
    /// In the last chunk with a choice, and in the usage chunk
    /// (`stream_options.include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

/// One stream chunk.
pub(crate) fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Delta,
    logprobs: Option<ChoiceLogprobs>,
    reason: Option<FinishReason>,
    usage: Option<&Usage>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: id.to_string(),
        object: "chat.completion.chunk",
        created,
        model: model.to_string(),
        system_fingerprint: None,
        choices: vec![ChunkChoice { index: 0, delta, logprobs, finish_reason: reason.map(finish) }],
        usage: usage.map(OpenAiUsage::from),
    }
}

/// The separate usage chunk OpenAI sends last when `stream_options.include_usage` is set.
pub(crate) fn usage_chunk(id: &str, created: u64, model: &str, usage: &Usage) -> ChatCompletionChunk {
    ChatCompletionChunk { choices: vec![], ..chunk(id, created, model, Delta::default(), None, None, Some(usage)) }
}

/// A legacy completion's `logprobs`: parallel lists, one entry per token.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LegacyLogprobs {
    /// The tokens.
    tokens: Vec<String>,
    /// Their log probabilities.
    token_logprobs: Vec<f32>,
    /// At each position, the most likely tokens and their log probabilities.
    top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    /// Each token's offset in the text, in bytes.
    text_offset: Vec<usize>,
}

/// The legacy `logprobs` of `logprobs`, whose text starts at byte `offset` of the answer.
pub(crate) fn legacy_logprobs(wanted: bool, logprobs: &[TokenLogprob], mut offset: usize) -> Option<LegacyLogprobs> {
    wanted.then(|| {
        let mut out =
            LegacyLogprobs { tokens: vec![], token_logprobs: vec![], top_logprobs: vec![], text_offset: vec![] };
        for l in logprobs {
            out.text_offset.push(offset);
            offset += l.token.len();
            out.tokens.push(l.token.clone());
            out.token_logprobs.push(l.logprob);
            out.top_logprobs.push(l.top.iter().map(|t| (t.token.clone(), t.logprob)).collect());
        }
        out
    })
}

/// One choice of a legacy completion (or its part in a stream chunk).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TextChoice {
    /// The text (in a stream: this chunk's).
    text: String,
    /// 0.
    index: u32,
    /// Its tokens' log probabilities, when asked for.
    logprobs: Option<LegacyLogprobs>,
    /// `stop` or `length`; in a stream, only in the last chunk.
    finish_reason: Option<&'static str>,
}

/// A legacy text completion (`text_completion`), whole or one stream chunk of it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TextCompletion {
    /// `cmpl-<task id>`.
    id: String,
    /// `text_completion`.
    object: &'static str,
    /// Seconds since the epoch.
    created: u64,
    /// The model.
    model: String,
    /// Always null.
    system_fingerprint: Option<String>,
    /// The answer (in a stream's usage chunk: none).
    choices: Vec<TextChoice>,
    /// Tokens and timings (whole answers, the last stream chunk and the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<OpenAiUsage>,
}

/// A legacy completion or one of its stream chunks.
pub(crate) fn text_completion(
    id: &str,
    created: u64,
    model: &str,
    choice: Option<(String, Option<LegacyLogprobs>, Option<FinishReason>)>,
    usage: Option<&Usage>,
) -> TextCompletion {
    TextCompletion {
        id: id.to_string(),
        object: "text_completion",
        created,
        model: model.to_string(),
        system_fingerprint: None,
        choices: choice
            .map(|(text, logprobs, reason)| TextChoice { text, index: 0, logprobs, finish_reason: reason.map(finish) })
            .into_iter()
            .collect(),
        usage: usage.map(OpenAiUsage::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn wire_errors_map_to_statuses() {
        let cases = [
            (ErrorKind::UnknownModel, 404),
            (ErrorKind::NoWorker, 503),
            (ErrorKind::ModelLoading, 503),
            (ErrorKind::PayloadTooLarge, 413),
            (ErrorKind::InvalidRequest, 400),
            (ErrorKind::ContextLength, 400),
            (ErrorKind::Overloaded, 429),
            (ErrorKind::Internal, 500),
        ];
        for (kind, status) in cases {
            assert_eq!(ApiError::from(WireError::new(kind, "x")).status.as_u16(), status, "{kind}");
        }
    }
}
