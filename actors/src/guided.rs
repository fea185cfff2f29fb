//! Constrained decoding for tools and output formats: the grammar an answer must follow,
//! and the tool calls read back out of an answer that followed it. Pure, engine-free and
//! tested here; the mistral.rs engine hands the grammar to llguidance.
//!
//! A forced tool choice is a JSON grammar: a named function's answer is its arguments
//! (an object valid against the function's parameter schema); `required` is one call
//! `{"name", "arguments"}` of any tool, or a list of them when parallel calls are allowed.
//! Because the grammar constrains every token, the calls parse and validate whatever the
//! model's weights.

use bitinglip_bus_schema::{ChatParams, ErrorKind, OutputFormat, ToolCall, ToolChoice, ToolSpec, WireError};
use serde_json::{json, Value};

/// The most calls one answer may make under `required` with parallel calls.
pub const MAX_PARALLEL_CALLS: u64 = 8;

/// What the answer must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Guide {
    /// Free text.
    None,
    /// JSON valid against this schema (compact: no whitespace between tokens).
    JsonSchema(Value),
    /// Text matching this regular expression.
    Regex(String),
    /// Text in this Lark grammar's language.
    Lark(String),
}

/// A request this module refuses, with what is wrong.
fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, message)
}

/// The schema of `tool`'s parameters, parsed.
fn parameters(tool: &ToolSpec) -> Result<Value, WireError> {
    let v: Value = serde_json::from_str(&tool.parameters)
        .map_err(|e| invalid(format!("the parameters of tool `{}` are not JSON: {e}", tool.name)))?;
    if !v.is_object() {
        return Err(invalid(format!("the parameters of tool `{}` must be a JSON Schema object", tool.name)));
    }
    Ok(v)
}

/// Compact JSON (as OpenAI's models write it): llguidance's flexible whitespace would let
/// a model pad the answer forever.
fn compact(mut schema: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| json!({"whitespace_flexible": false}));
    }
    schema
}

/// One call of `tool`: `{"name": <its name>, "arguments": <its parameters>}`.
fn call_schema(tool: &ToolSpec) -> Result<Value, WireError> {
    Ok(json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": parameters(tool)?},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    }))
}

/// The tool `name` among `tools`.
fn named<'a>(tools: &'a [ToolSpec], name: &str) -> Result<&'a ToolSpec, WireError> {
    tools
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| invalid(format!("`tool_choice` names `{name}`, which is not in `tools`")))
}

/// The grammar `chat` asks for; an error names what is wrong with the request.
pub fn guide(chat: &ChatParams) -> Result<Guide, WireError> {
    for tool in &chat.tools {
        parameters(tool)?;
    }
    match &chat.tool_choice {
        ToolChoice::Function { name } => {
            if chat.format.is_some() {
                return Err(invalid("a forced tool call and `response_format` cannot be combined"));
            }
            return Ok(Guide::JsonSchema(compact(parameters(named(&chat.tools, name)?)?)));
        }
        ToolChoice::Required => {
            if chat.tools.is_empty() {
                return Err(invalid("`tool_choice` is `required` but there are no `tools`"));
            }
            if chat.format.is_some() {
                return Err(invalid("a forced tool call and `response_format` cannot be combined"));
            }
            let calls = chat.tools.iter().map(call_schema).collect::<Result<Vec<_>, _>>()?;
            let one = json!({"anyOf": calls});
            let schema = if chat.parallel_tool_calls == Some(false) {
                one
            } else {
                json!({"type": "array", "items": one, "minItems": 1, "maxItems": MAX_PARALLEL_CALLS})
            };
            return Ok(Guide::JsonSchema(compact(schema)));
        }
        ToolChoice::Auto | ToolChoice::None => {}
    }
    Ok(match &chat.format {
        None => Guide::None,
        Some(OutputFormat::JsonObject) => Guide::JsonSchema(compact(json!({"type": "object"}))),
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            let v: Value = serde_json::from_str(schema)
                .map_err(|e| invalid(format!("`response_format.json_schema.schema` is not JSON: {e}")))?;
            if !v.is_object() && !v.is_boolean() {
                return Err(invalid("`response_format.json_schema.schema` must be a JSON Schema object"));
            }
            Guide::JsonSchema(compact(v))
        }
        Some(OutputFormat::Regex { pattern }) => Guide::Regex(pattern.clone()),
        Some(OutputFormat::Lark { grammar }) => Guide::Lark(grammar.clone()),
    })
}

/// Compiles a regex or a Lark grammar as llguidance will, without a tokenizer and within
/// llguidance's default limits, so that a request whose grammar cannot compile is refused
/// at submit rather than failing on a worker after the queue. Other guides pass.
pub fn compile_check(guide: &Guide) -> Result<(), WireError> {
    use llguidance::{
        api::{GrammarInit, ParserLimits, TopLevelGrammar},
        earley::ValidationResult,
    };
    let (grammar, what) = match guide {
        Guide::Regex(rx) => (TopLevelGrammar::from_regex(rx), "`grammar` regex"),
        Guide::Lark(g) => (TopLevelGrammar::from_lark(g.clone()), "`grammar` Lark grammar"),
        Guide::None | Guide::JsonSchema(_) => return Ok(()),
    };
    // A grammar is a client's input: a panic in the compiler is a refusal, not a crash.
    let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        GrammarInit::Serialized(grammar).validate(None, ParserLimits::default())
    }));
    match verdict {
        Ok(ValidationResult::Error(e)) => Err(invalid(format!("the {what} does not compile: {e}"))),
        Ok(_) => Ok(()),
        Err(_) => Err(invalid(format!("the {what} does not compile"))),
    }
}

/// The id of call `index` of task `task`: stable across attempts, so a continued answer
/// names its calls as the first attempt would have.
pub fn call_id(task: &str, index: usize) -> String {
    format!("call_{task}_{index}")
}

/// The tool calls in `text`, the whole answer of a task whose tool choice was forced; `None`
/// when it is not (yet) the calls the grammar describes (a cut-off answer).
pub fn forced_calls(chat: &ChatParams, task: &str, text: &str) -> Option<Vec<ToolCall>> {
    let value: Value = serde_json::from_str(text).ok()?;
    let call = |index: usize, name: String, arguments: &Value| ToolCall {
        id: call_id(task, index),
        name,
        arguments: serde_json::to_string(arguments).unwrap_or_default(),
    };
    match &chat.tool_choice {
        ToolChoice::Function { name } => value.is_object().then(|| vec![call(0, name.clone(), &value)]),
        ToolChoice::Required => {
            let items = match value {
                Value::Array(items) => items,
                one @ Value::Object(_) => vec![one],
                _ => return None,
            };
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let name = item.get("name")?.as_str()?.to_string();
                    Some(call(i, name, item.get("arguments")?))
                })
                .collect()
        }
        ToolChoice::Auto | ToolChoice::None => None,
    }
}

/// The calls of a forced answer that `max_tokens` cut short (OpenAI returns them, with
/// `finish_reason: "length"`): a named function's arguments so far, or under `required`
/// the first call's name and arguments so far (none while its name is incomplete).
pub fn cut_calls(chat: &ChatParams, task: &str, text: &str) -> Vec<ToolCall> {
    match &chat.tool_choice {
        ToolChoice::Function { name } => {
            vec![ToolCall { id: call_id(task, 0), name: name.clone(), arguments: text.to_string() }]
        }
        ToolChoice::Required => {
            // `[{"name":"f","arguments":{…` or `{"name":"f","arguments":{…`: the grammar
            // writes the name first, compact.
            let Some(rest) = text.split_once("\"name\":\"").map(|(_, r)| r) else { return vec![] };
            let Some((name, rest)) = rest.split_once('"') else { return vec![] };
            let arguments = rest.split_once("\"arguments\":").map_or("", |(_, a)| a);
            vec![ToolCall { id: call_id(task, 0), name: name.to_string(), arguments: arguments.to_string() }]
        }
        ToolChoice::Auto | ToolChoice::None => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolSpec {
        ToolSpec {
            name: "get_weather".into(),
            description: Some("the weather in a city".into()),
            parameters: r#"{"type":"object","properties":{"city":{"enum":["Paris","Oslo"]}},"required":["city"]}"#
                .into(),
        }
    }

    fn with(choice: ToolChoice) -> ChatParams {
        ChatParams { tools: vec![weather()], tool_choice: choice, ..ChatParams::user("m", "hi") }
    }

    #[test]
    fn a_named_function_constrains_its_arguments() {
        let chat = with(ToolChoice::Function { name: "get_weather".into() });
        let Guide::JsonSchema(schema) = guide(&chat).unwrap() else { panic!("a JSON grammar") };
        assert_eq!(schema["properties"]["city"]["enum"][1], "Oslo");
        assert_eq!(schema["x-guidance"]["whitespace_flexible"], false);
        let calls = forced_calls(&chat, "t1", r#"{"city":"Oslo"}"#).unwrap();
        assert_eq!(
            calls,
            vec![ToolCall {
                id: "call_t1_0".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into()
            }]
        );
        assert_eq!(forced_calls(&chat, "t1", r#"{"city":"Os"#), None, "a cut-off answer is no call");
    }

    #[test]
    fn required_is_a_list_of_calls_unless_parallel_calls_are_off() {
        let mut chat = with(ToolChoice::Required);
        let Guide::JsonSchema(schema) = guide(&chat).unwrap() else { panic!("a JSON grammar") };
        assert_eq!(schema["type"], "array");
        assert_eq!(schema["items"]["anyOf"][0]["properties"]["name"]["const"], "get_weather");
        let calls = forced_calls(&chat, "t", r#"[{"name":"get_weather","arguments":{"city":"Paris"}}]"#).unwrap();
        assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("get_weather", r#"{"city":"Paris"}"#));
        chat.parallel_tool_calls = Some(false);
        let Guide::JsonSchema(schema) = guide(&chat).unwrap() else { panic!("a JSON grammar") };
        assert!(schema["anyOf"].is_array());
        assert_eq!(forced_calls(&chat, "t", r#"{"name":"get_weather","arguments":{}}"#).unwrap().len(), 1);
    }

    #[test]
    fn bad_requests_are_named() {
        let err = guide(&with(ToolChoice::Function { name: "nope".into() })).unwrap_err();
        assert!(err.message.contains("`nope`"), "{err}");
        let err = guide(&ChatParams { tool_choice: ToolChoice::Required, ..ChatParams::user("m", "x") }).unwrap_err();
        assert!(err.message.contains("no `tools`"), "{err}");
        let mut chat = with(ToolChoice::Auto);
        chat.tools[0].parameters = "{".into();
        assert!(guide(&chat).unwrap_err().message.contains("get_weather"));
        let chat = ChatParams {
            format: Some(OutputFormat::JsonSchema { name: "s".into(), schema: "[".into(), strict: true }),
            ..ChatParams::user("m", "x")
        };
        assert!(guide(&chat).unwrap_err().message.contains("json_schema.schema"));
    }

    #[test]
    fn formats_become_grammars() {
        let chat = |format| ChatParams { format: Some(format), ..ChatParams::user("m", "x") };
        assert_eq!(guide(&ChatParams::user("m", "x")).unwrap(), Guide::None);
        let Guide::JsonSchema(s) = guide(&chat(OutputFormat::JsonObject)).unwrap() else { panic!() };
        assert_eq!(s["type"], "object");
        assert_eq!(guide(&chat(OutputFormat::Regex { pattern: "a+".into() })).unwrap(), Guide::Regex("a+".into()));
        assert!(compile_check(&Guide::Regex("a+[0-9]{2}".into())).is_ok());
        let err = compile_check(&Guide::Regex("a(".into())).unwrap_err();
        assert!(err.message.contains("regex does not compile"), "{err}");
        assert!(compile_check(&Guide::Lark("start: \"yes\" | \"no\"".into())).is_ok());
        let err = compile_check(&Guide::Lark("start: (".into())).unwrap_err();
        assert!(err.message.contains("Lark grammar does not compile"), "{err}");
        assert!(compile_check(&Guide::Lark("start: missing_rule".into())).is_err());
        let schema = r#"{"type":"object","x-guidance":{"whitespace_flexible":true}}"#.to_string();
        let Guide::JsonSchema(s) =
            guide(&chat(OutputFormat::JsonSchema { name: "n".into(), schema, strict: false })).unwrap()
        else {
            panic!()
        };
        assert_eq!(s["x-guidance"]["whitespace_flexible"], true, "the caller's own options stand");
    }

    #[test]
    fn a_cut_forced_answer_keeps_its_calls_so_far() {
        let named = with(ToolChoice::Function { name: "get_weather".into() });
        let calls = cut_calls(&named, "t", r#"{"city":"Os"#);
        assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("get_weather", r#"{"city":"Os"#));
        let required = with(ToolChoice::Required);
        let calls = cut_calls(&required, "t", r#"[{"name":"get_weather","arguments":{"ci"#);
        assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("get_weather", r#"{"ci"#));
        assert!(cut_calls(&required, "t", r#"[{"name":"get_w"#).is_empty(), "no call before its name is whole");
        assert!(cut_calls(&with(ToolChoice::Auto), "t", "text").is_empty());
    }
}
