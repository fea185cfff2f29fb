//! Validation of a submitted chat request. Every error names the field and the bad value.

use bitinglip_bus_schema::{ErrorKind, SubmitRequest, WireError};
use bitinglip_config::TaskManagerConfig;

fn invalid(msg: String) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, msg)
}

/// Longest `prompt_cache_key` accepted, in bytes.
const MAX_PROMPT_CACHE_KEY: usize = 512;

/// Checks `req` and fills `max_tokens` when absent.
pub(super) fn request(cfg: &TaskManagerConfig, req: &mut SubmitRequest, max_payload: usize) -> Result<(), WireError> {
    let chat = &mut req.chat;
    if chat.model.trim().is_empty() {
        return Err(invalid("`model` is empty".into()));
    }
    if chat.model.len() > bitinglip_bus_schema::MAX_ID_BYTES {
        return Err(invalid(format!(
            "`model` is {} bytes; at most {}",
            chat.model.len(),
            bitinglip_bus_schema::MAX_ID_BYTES
        )));
    }
    let given = [!chat.messages.is_empty(), chat.prompt.is_some(), !chat.input.is_empty()];
    match given.iter().filter(|g| **g).count() {
        0 => return Err(invalid("`messages` is empty: give at least one message".into())),
        1 => {}
        _ => return Err(invalid("give one of `messages`, `prompt` or `input`".into())),
    }
    let bytes = chat.prompt.as_ref().map_or(0, String::len) + chat.input.iter().map(String::len).sum::<usize>();
    if bytes > max_payload {
        return Err(WireError::new(
            ErrorKind::PayloadTooLarge,
            format!("the request's text is {bytes} bytes; the bus carries at most {max_payload}"),
        ));
    }
    if chat.input.len() > 2048 {
        return Err(invalid(format!("`input` has {} texts; at most 2048", chat.input.len())));
    }
    if let Some(i) = chat.input.iter().position(String::is_empty) {
        return Err(invalid(format!("`input[{i}]` is empty")));
    }
    if chat.prompt_cache_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > MAX_PROMPT_CACHE_KEY) {
        return Err(invalid(format!("`prompt_cache_key` must be 1 to {MAX_PROMPT_CACHE_KEY} bytes")));
    }
    if chat.dimensions == Some(0) {
        return Err(invalid("`dimensions` must be at least 1".into()));
    }
    if chat.messages.len() > cfg.max_messages {
        return Err(invalid(format!(
            "`messages` has {} entries; at most {} are allowed",
            chat.messages.len(),
            cfg.max_messages
        )));
    }
    for (i, m) in chat.messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool" | "developer") {
            return Err(invalid(format!(
                "`messages[{i}].role` is {:?}; use system, user, assistant, tool or developer",
                m.role
            )));
        }
    }
    let text_bytes: usize = chat.messages.iter().map(|m| m.content.len()).sum();
    if text_bytes > max_payload {
        return Err(WireError::new(
            ErrorKind::PayloadTooLarge,
            format!("messages hold {text_bytes} bytes; the bus carries at most {max_payload}"),
        ));
    }
    match chat.max_tokens {
        Some(0) => return Err(invalid("`max_tokens` must be at least 1".into())),
        Some(n) if n > cfg.max_tokens_limit => {
            return Err(invalid(format!("`max_tokens` is {n}; at most {} is allowed", cfg.max_tokens_limit)))
        }
        Some(_) => {}
        None => chat.max_tokens = Some(cfg.default_max_tokens),
    }
    if let Some(t) = chat.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(invalid(format!("`temperature` is {t}; use 0 to 2")));
        }
    }
    if let Some(p) = chat.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(invalid(format!("`top_p` is {p}; use a value above 0 and at most 1")));
        }
    }
    if chat.stop.len() > 4 || chat.stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(invalid("`stop` takes at most 4 non-empty strings of at most 256 bytes".into()));
    }
    generation(chat)?;
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(invalid("`idempotency_key` must be 1 to 256 bytes".into()));
        }
    }
    Ok(())
}

/// The fields beyond sampling: log probabilities, penalties, biases, tools and the output
/// format (the grammar is built here once, so a bad schema is refused at submit).
fn generation(chat: &bitinglip_bus_schema::ChatParams) -> Result<(), WireError> {
    if let Some(n) = chat.logprobs {
        if n > 20 {
            return Err(invalid(format!("`top_logprobs` is {n}; use 0 to 20")));
        }
    }
    for (name, value) in [("presence_penalty", chat.presence_penalty), ("frequency_penalty", chat.frequency_penalty)] {
        if let Some(v) = value {
            if !(-2.0..=2.0).contains(&v) {
                return Err(invalid(format!("`{name}` is {v}; use -2 to 2")));
            }
        }
    }
    if chat.logit_bias.len() > 300 {
        return Err(invalid(format!("`logit_bias` has {} entries; at most 300", chat.logit_bias.len())));
    }
    if let Some((token, bias)) = chat.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
        return Err(invalid(format!("`logit_bias[{token}]` is {bias}; use -100 to 100")));
    }
    if chat.tools.len() > 128 {
        return Err(invalid(format!("`tools` has {} entries; at most 128", chat.tools.len())));
    }
    for (i, tool) in chat.tools.iter().enumerate() {
        let ok = !tool.name.is_empty()
            && tool.name.len() <= 64
            && tool.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(invalid(format!(
                "`tools[{i}].function.name` is {:?}; use 1 to 64 letters, digits, `_` or `-`",
                tool.name
            )));
        }
        if chat.tools[..i].iter().any(|t| t.name == tool.name) {
            return Err(invalid(format!("`tools[{i}].function.name` {:?} is there twice", tool.name)));
        }
    }
    // A grammar that cannot compile is refused here, not by a worker after the queue.
    let guide = crate::guided::guide(chat)?;
    crate::guided::compile_check(&guide)
}

#[cfg(test)]
mod tests {
    use bitinglip_bus_schema::ChatParams;

    use super::*;

    fn req() -> SubmitRequest {
        SubmitRequest::new(ChatParams::user("m", "hi"))
    }

    #[test]
    fn fills_max_tokens_and_names_bad_fields() {
        let cfg = TaskManagerConfig::default();
        let mut ok = req();
        request(&cfg, &mut ok, 1 << 20).unwrap();
        assert_eq!(ok.chat.max_tokens, Some(cfg.default_max_tokens));

        type Mutation = Box<dyn Fn(&mut SubmitRequest)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.chat.messages.clear()), "messages"),
            (Box::new(|r| r.chat.messages[0].role = "robot".into()), "messages[0].role"),
            (Box::new(|r| r.chat.max_tokens = Some(0)), "max_tokens"),
            (Box::new(|r| r.chat.max_tokens = Some(1_000_000)), "max_tokens"),
            (Box::new(|r| r.chat.temperature = Some(3.0)), "temperature"),
            (Box::new(|r| r.chat.top_p = Some(0.0)), "top_p"),
            (Box::new(|r| r.chat.model = " ".into()), "model"),
            (Box::new(|r| r.chat.model = "m".repeat(300)), "model"),
            (Box::new(|r| r.chat.prompt = Some("p".into())), "one of `messages`, `prompt` or `input`"),
            (
                Box::new(|r| {
                    r.chat.messages.clear();
                    r.chat.input = vec!["a".into(), String::new()];
                }),
                "input[1]",
            ),
            (Box::new(|r| r.chat.logprobs = Some(21)), "top_logprobs"),
            (Box::new(|r| r.chat.presence_penalty = Some(3.0)), "presence_penalty"),
            (Box::new(|r| r.chat.logit_bias = vec![(7, 101.0)]), "logit_bias[7]"),
            (
                Box::new(|r| {
                    r.chat.tools = vec![bitinglip_bus_schema::ToolSpec {
                        name: "a b".into(),
                        description: None,
                        parameters: "{}".into(),
                    }]
                }),
                "tools[0].function.name",
            ),
            (Box::new(|r| r.chat.tool_choice = bitinglip_bus_schema::ToolChoice::Required), "no `tools`"),
        ];
        for (mutate, field) in cases {
            let mut r = req();
            mutate(&mut r);
            let err = request(&cfg, &mut r, 1 << 20).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidRequest);
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
        let mut big = req();
        big.chat.messages[0].content = "x".repeat(100);
        assert_eq!(request(&cfg, &mut big, 50).unwrap_err().kind, ErrorKind::PayloadTooLarge);
    }
}
