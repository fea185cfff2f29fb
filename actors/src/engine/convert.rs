//! Between BitingLip's types and mistral.rs's: message roles, the chat template's
//! messages, tools and tool calls, finish reasons, log probabilities, logit bias and the
//! grammar a guided answer follows.

use bitinglip_bus_schema::{ChatMessage, FinishReason, TokenLogprob, ToolCall, ToolSpec, TopLogprob};
use either::Either;
use indexmap::IndexMap;
use mistralrs::core::ResponseLogprob;
use mistralrs::{Constraint, Function, MessageContent, TextMessageRole, Tool, ToolType};

use super::EngineError;
use crate::guided::Guide;

pub(super) fn role(name: &str) -> TextMessageRole {
    match name {
        "user" => TextMessageRole::User,
        "assistant" => TextMessageRole::Assistant,
        "system" | "developer" => TextMessageRole::System,
        "tool" => TextMessageRole::Tool,
        other => TextMessageRole::Custom(other.to_string()),
    }
}

pub(super) fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "canceled" | "cancelled" => FinishReason::Cancelled,
        "tool_calls" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// The conversation as the chat template reads it: assistant messages with their
/// `tool_calls` (arguments as objects, as Hugging Face templates expect) and `tool`
/// messages with their `tool_call_id`.
pub(super) fn template_messages(messages: &[ChatMessage]) -> Vec<IndexMap<String, MessageContent>> {
    messages
        .iter()
        .map(|m| {
            let mut map = IndexMap::new();
            map.insert("role".to_string(), Either::Left(role(&m.role).to_string()));
            map.insert("content".to_string(), Either::Left(m.content.clone()));
            if !m.tool_calls.is_empty() {
                let calls = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let arguments = serde_json::from_str::<serde_json::Value>(&c.arguments)
                            .unwrap_or_else(|_| serde_json::Value::String(c.arguments.clone()));
                        IndexMap::from([
                            ("id".to_string(), serde_json::Value::String(c.id.clone())),
                            ("type".to_string(), serde_json::Value::String("function".into())),
                            ("function".to_string(), serde_json::json!({"name": c.name, "arguments": arguments})),
                        ])
                    })
                    .collect();
                map.insert("tool_calls".to_string(), Either::Right(calls));
            }
            if let Some(id) = &m.tool_call_id {
                map.insert("tool_call_id".to_string(), Either::Left(id.clone()));
            }
            map
        })
        .collect()
}

/// The tools as mistral.rs describes them to the chat template.
pub(super) fn engine_tools(tools: &[ToolSpec]) -> Result<Option<Vec<Tool>>, EngineError> {
    if tools.is_empty() {
        return Ok(None);
    }
    tools
        .iter()
        .map(|t| {
            let parameters: std::collections::HashMap<String, serde_json::Value> = serde_json::from_str(&t.parameters)
                .map_err(|e| EngineError::Invalid(format!("the parameters of tool `{}`: {e}", t.name)))?;
            Ok(Tool {
                tp: ToolType::Function,
                function: Function {
                    description: t.description.clone(),
                    name: t.name.clone(),
                    parameters: Some(parameters),
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// mistral.rs reports log probabilities in base 10 (and, when it samples by argmax,
/// of raw logits): OpenAI's are natural logs of probabilities, so at most 0.
fn natural(logprob: f32) -> f32 {
    let ln = logprob * std::f32::consts::LN_10;
    if ln.is_finite() {
        ln.min(0.0)
    } else {
        -9999.0
    }
}

pub(super) fn token_logprob(lp: &ResponseLogprob) -> TokenLogprob {
    TokenLogprob {
        token: lp.token.clone(),
        logprob: natural(lp.logprob),
        bytes: lp.bytes.clone().or_else(|| Some(lp.token.as_bytes().to_vec())),
        top: lp
            .top_logprobs
            .iter()
            .map(|t| {
                let token = t.bytes.clone().unwrap_or_else(|| format!("<{}>", t.token));
                TopLogprob { bytes: Some(token.as_bytes().to_vec()), token, logprob: natural(t.logprob) }
            })
            .collect(),
    }
}

pub(super) fn tool_call(call: &mistralrs::ToolCallResponse) -> ToolCall {
    ToolCall { id: call.id.clone(), name: call.function.name.clone(), arguments: call.function.arguments.clone() }
}

/// OpenAI's `logit_bias`: `bias` added to the logit of each token before sampling (ids
/// outside the vocabulary are ignored).
pub(super) struct LogitBias(pub(super) Vec<(u32, f32)>);

impl mistralrs::CustomLogitsProcessor for LogitBias {
    fn apply(&self, logits: &mistralrs::Tensor, _context: &[u32]) -> mistralrs::Result<mistralrs::Tensor> {
        let vocab = logits.dims().last().copied().unwrap_or(0);
        let mut bias = vec![0f32; vocab];
        for (token, b) in &self.0 {
            if let Some(slot) = bias.get_mut(*token as usize) {
                *slot += b;
            }
        }
        let bias = mistralrs::Tensor::from_vec(bias, vocab, logits.device())?.to_dtype(logits.dtype())?;
        logits.broadcast_add(&bias)
    }
}

/// The grammar of a guided answer, as llguidance takes it.
pub(super) fn constraint(guide: Guide) -> Constraint {
    match guide {
        Guide::None => Constraint::None,
        Guide::JsonSchema(schema) => Constraint::JsonSchema(schema),
        Guide::Regex(pattern) => Constraint::Regex(pattern),
        Guide::Lark(grammar) => Constraint::Lark(grammar),
    }
}
