//! API keys as the admin API and the CLI create and show them: one validation of a new
//! key's fields, one JSON view (never the hash, the secret only once at creation).

use bitinglip_bus_schema::{ApiKey, ErrorKind, Scope, WireError};
use bitinglip_nats::store::keys::NewKey;
use serde_json::{json, Value};

fn invalid(message: String) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, message)
}

/// Checks a new key's fields: a name of 1 to 100 characters, a known scope, model ids
/// of 1 to 256 characters (at most 1000), and an expiry such as `30d` or `12h`.
pub fn new_key(
    name: &str,
    scope: &str,
    models: &[String],
    expires: Option<&str>,
    now_ms: u64,
) -> Result<NewKey, WireError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("`name` must be 1 to 100 characters".into()));
    }
    let scope = Scope::parse(scope).ok_or_else(|| invalid(format!("`scope` is {scope:?}; use inference or admin")))?;
    if models.len() > 1000 || models.iter().any(|m| m.trim().is_empty() || m.len() > 256) {
        return Err(invalid("`models` takes at most 1000 model ids of 1 to 256 characters".into()));
    }
    let expires_ms = match expires {
        None => None,
        Some(text) => {
            let after = humantime::parse_duration(text.trim())
                .map_err(|e| invalid(format!("`expires` is {text:?}: {e}; use a duration such as 30d or 12h")))?;
            if after.is_zero() {
                return Err(invalid("`expires` must be above zero".into()));
            }
            Some(now_ms.saturating_add(after.as_millis().min(u64::MAX as u128) as u64))
        }
    };
    Ok(NewKey { name: name.to_string(), scope, models: models.to_vec(), expires_ms })
}

/// A key as JSON: everything but the hash; with `secret` once, at creation.
pub fn key_json(key: &ApiKey, secret: Option<&str>) -> Value {
    let mut v = json!({
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "scope": key.scope.as_str(),
        "models": key.models,
        "expires_ms": key.expires_ms,
        "created_ms": key.created_ms,
        "revoked_ms": key.revoked_ms,
    });
    if let Some(secret) = secret {
        v["key"] = json!(secret);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_checked_field_by_field() {
        let k = new_key(" ci ", "inference", &["m".into()], Some("30d"), 1000).unwrap();
        assert_eq!((k.name.as_str(), k.scope, k.expires_ms), ("ci", Scope::Inference, Some(1000 + 30 * 86_400_000)));
        for (name, scope, models, expires, field) in [
            ("", "admin", vec![], None, "name"),
            ("x", "root", vec![], None, "scope"),
            ("x", "admin", vec![String::new()], None, "models"),
            ("x", "admin", vec![], Some("soon"), "expires"),
            ("x", "admin", vec![], Some("0s"), "expires"),
        ] {
            let err = new_key(name, scope, &models, expires, 0).unwrap_err();
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
    }

    #[test]
    fn the_view_never_shows_the_hash_and_shows_the_secret_only_when_given() {
        let k = ApiKey {
            id: "i".into(),
            name: "n".into(),
            scope: Scope::Admin,
            models: vec![],
            expires_ms: None,
            secret_sha256: "deadbeef".into(),
            created_ms: 1,
            revoked_ms: None,
        };
        assert!(!key_json(&k, None).to_string().contains("deadbeef"));
        assert!(key_json(&k, None).get("key").is_none());
        assert_eq!(key_json(&k, Some("blk-s"))["key"], "blk-s");
    }
}
