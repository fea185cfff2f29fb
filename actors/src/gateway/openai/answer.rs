//! The answers of the OpenAI API the gateway writes: whole chat and legacy completions,
//! their stream chunks, tool calls and log probabilities in OpenAI's shapes, usage and
//! models.

use bitinglip_bus_schema::{FinishReason, TaskCompleted, TokenLogprob, ToolCall, Usage};
use serde::Serialize;
use utoipa::ToSchema;

use super::FunctionCall;

/// OpenAI's `usage` object, with BitingLip's timings beside the counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct OpenAiUsage {
    /// Tokens of the prompt.
    prompt_tokens: u32,
    /// Tokens generated.
    completion_tokens: u32,
    /// The sum.
    total_tokens: u32,
    /// Of the prompt's tokens, those the engine took from its prefix cache.
    prompt_tokens_details: PromptTokensDetails,
    /// From the task's start on a worker to its first token, ms.
    time_to_first_token_ms: f64,
    /// On the worker, ms.
    total_time_ms: f64,
    /// Queued before a worker took it, ms.
    queue_time_ms: f64,
}

/// OpenAI's `prompt_tokens_details`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(crate) struct PromptTokensDetails {
    /// Prompt tokens found in the engine's prefix cache (an earlier sequence on the same
    /// worker began the same way), not computed again. Exact: the engine counts them.
    cached_tokens: u32,
}

impl From<&Usage> for OpenAiUsage {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
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
/// The answer to deleting a stored object (a file, a response).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Deleted {
    /// The object's id.
    id: String,
    /// Its kind: `file`, `response`.
    object: &'static str,
    /// `true`.
    deleted: bool,
}

impl Deleted {
    pub(crate) fn new(id: String, object: &'static str) -> Self {
        Self { id, object, deleted: true }
    }
}
