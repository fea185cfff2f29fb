//! What a generation may be asked beyond plain text, and what it returns beside text:
//! tools and tool calls, a constrained output format, log probabilities. JSON schemas and
//! tool-call arguments travel as JSON text, so a client in any language writes and reads
//! them with its own JSON library.

use serde::{Deserialize, Serialize};

/// A function the model may call (OpenAI's `tools[].function`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The function's name (`^[A-Za-z0-9_-]{1,64}$`).
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its parameters as a JSON Schema, in JSON text (`{"type":"object",…}`).
    pub parameters: String,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides (the default).
    #[default]
    Auto,
    /// No tool call; the tools are still described to the model.
    None,
    /// At least one call of one of the tools; the output is constrained to match.
    Required,
    /// A call of this function; the arguments are constrained to its parameter schema.
    Function {
        /// The function's name, one of `tools`.
        name: String,
    },
}

impl ToolChoice {
    /// True for [`ToolChoice::Auto`] (not sent on the wire).
    pub fn is_auto(&self) -> bool {
        *self == ToolChoice::Auto
    }

    /// True when the output must be a tool call.
    pub fn is_forced(&self) -> bool {
        matches!(self, ToolChoice::Required | ToolChoice::Function { .. })
    }
}

/// A call the model made (OpenAI's `tool_calls[]`, always of type `function`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_…`); a `tool` message answers it by this id.
    pub id: String,
    /// The function called.
    pub name: String,
    /// Its arguments, as JSON text.
    pub arguments: String,
}

/// The form the answer must take; the engine constrains decoding so that it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `schema`.
    JsonSchema {
        /// The schema's name.
        name: String,
        /// A JSON Schema, in JSON text.
        schema: String,
        /// OpenAI's `strict` flag (the output always matches; kept for the record).
        #[serde(default)]
        strict: bool,
    },
    /// Text matching a regular expression (the whole answer).
    Regex {
        /// The pattern (Rust `regex` syntax, anchored at both ends).
        pattern: String,
    },
    /// Text in the language of a Lark grammar (llguidance's dialect).
    Lark {
        /// The grammar, with a `start` rule.
        grammar: String,
    },
}

/// The log probability of a token (OpenAI's `logprobs.content[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes, when the engine gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
    /// The most likely tokens at this position, most likely first (`top_logprobs` of
    /// them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

/// One of the most likely tokens at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log probability.
    pub logprob: f32,
    /// Its UTF-8 bytes, when the engine gives them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    #[test]
    fn generation_types_pin_their_fields() {
        pin(ToolSpec { name: "f".into(), description: None, parameters: "{}".into() }, &["name", "parameters"]);
        pin(ToolChoice::Required, &["type"]);
        pin(ToolChoice::Function { name: "f".into() }, &["type", "name"]);
        pin(ToolCall { id: "call_1".into(), name: "f".into(), arguments: "{}".into() }, &["id", "name", "arguments"]);
        pin(OutputFormat::JsonObject, &["type"]);
        pin(
            OutputFormat::JsonSchema { name: "s".into(), schema: "{}".into(), strict: true },
            &["type", "name", "schema", "strict"],
        );
        pin(OutputFormat::Regex { pattern: "a+".into() }, &["type", "pattern"]);
        pin(OutputFormat::Lark { grammar: "start: \"a\"".into() }, &["type", "grammar"]);
        let top = TopLogprob { token: "a".into(), logprob: -0.5, bytes: Some(vec![97]) };
        pin(top.clone(), &["token", "logprob", "bytes"]);
        pin(
            TokenLogprob { token: "a".into(), logprob: -0.5, bytes: None, top: vec![top] },
            &["token", "logprob", "top"],
        );
    }
}
