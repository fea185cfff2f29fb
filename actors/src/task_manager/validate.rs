//! Validation of a submitted chat request. Every error names the field and the bad value.

use bitinglip_bus_schema::{ErrorKind, SubmitRequest, WireError};
use bitinglip_config::TaskManagerConfig;

fn invalid(msg: String) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, msg)
}

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
    if chat.messages.is_empty() {
        return Err(invalid("`messages` is empty: give at least one message".into()));
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
    if let Some(key) = &req.idempotency_key {
        if key.is_empty() || key.len() > 256 {
            return Err(invalid("`idempotency_key` must be 1 to 256 bytes".into()));
        }
    }
    Ok(())
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
