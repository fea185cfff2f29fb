//! API keys as the admin API and the CLI create and show them: one validation of a new
//! key's fields, one JSON view (never the hash, the secret only once at creation).

use bitinglip_bus_schema::{ApiKey, ErrorKind, KeyLimits, Scope, WireError};
use bitinglip_nats::store::{counters::UsageRow, keys::NewKey};
use serde::Serialize;
use utoipa::ToSchema;

fn invalid(message: String) -> WireError {
    WireError::new(ErrorKind::InvalidRequest, message)
}

/// Checks a new key's fields: a name of 1 to 100 characters, a known scope, model ids
/// of 1 to 256 characters (at most 1000), an expiry such as `30d` or `12h`, and limits
/// of at least 1.
pub fn new_key(
    name: &str,
    scope: &str,
    models: &[String],
    expires: Option<&str>,
    limits: KeyLimits,
    now_ms: u64,
) -> Result<NewKey, WireError> {
    for (field, value) in [
        ("rpm", limits.rpm.map(u64::from)),
        ("tpm", limits.tpm),
        ("tokens_per_day", limits.tokens_per_day),
        ("max_concurrent", limits.max_concurrent.map(u64::from)),
    ] {
        if value == Some(0) {
            return Err(invalid(format!("`{field}` must be at least 1 (leave it out for no limit)")));
        }
    }
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
    Ok(NewKey {
        name: name.to_string(),
        scope,
        models: models.to_vec(),
        expires_ms,
        limits,
        tenant: None,
        weight: None,
    })
}

/// `new` in `tenant`'s fair share (absent: a tenant of its own) with `weight` (absent: 1),
/// both checked.
pub fn with_share(mut new: NewKey, tenant: Option<&str>, weight: Option<u32>) -> Result<NewKey, WireError> {
    if let Some(t) = tenant {
        if !bitinglip_bus_schema::valid_tenant(t) {
            return Err(invalid(format!(
                "`tenant` is {t:?}: use 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `client-`"
            )));
        }
    }
    if weight.is_some_and(|w| !(1..=bitinglip_bus_schema::MAX_WEIGHT).contains(&w)) {
        return Err(invalid(format!("`weight` must be 1 to {}", bitinglip_bus_schema::MAX_WEIGHT)));
    }
    new.tenant = tenant.map(str::to_string);
    new.weight = weight;
    Ok(new)
}

/// A key as the admin API and the CLI show it: everything but the hash; the secret only
/// once, at creation.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    /// Its id (`key_…`): what `revoke`, usage and metrics name.
    pub id: String,
    /// `api_key`.
    pub object: &'static str,
    /// A name for people.
    pub name: String,
    /// `inference` (the OpenAI routes and the task API) or `admin` (everything).
    pub scope: &'static str,
    /// The only models it may use; empty: all.
    pub models: Vec<String>,
    /// Refused from then on, ms since the epoch.
    pub expires_ms: Option<u64>,
    /// Created, ms since the epoch.
    pub created_ms: u64,
    /// Revoked at, ms since the epoch.
    pub revoked_ms: Option<u64>,
    /// Its limits.
    pub limits: LimitsView,
    /// The tenant whose fair share of a busy model its tasks get: the one it was given,
    /// or its own id.
    pub tenant: String,
    /// Its tenant's weight in fair dispatch (1 unless set).
    pub weight: u32,
    /// The secret (`Authorization: Bearer <key>`): in the answer that creates the key, and
    /// never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A key's limits; absent: none.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsView {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt and completion) per minute.
    pub tpm: Option<u64>,
    /// Tokens per UTC day.
    pub tokens_per_day: Option<u64>,
    /// Requests and event streams in progress at once, on each gateway.
    pub max_concurrent: Option<u32>,
}

/// A key's view; with `secret` once, at creation.
pub fn key_view(key: &ApiKey, secret: Option<&str>) -> KeyView {
    KeyView {
        id: key.id.clone(),
        object: "api_key",
        name: key.name.clone(),
        scope: key.scope.as_str(),
        models: key.models.clone(),
        expires_ms: key.expires_ms,
        created_ms: key.created_ms,
        revoked_ms: key.revoked_ms,
        limits: LimitsView {
            rpm: key.limits.rpm,
            tpm: key.limits.tpm,
            tokens_per_day: key.limits.tokens_per_day,
            max_concurrent: key.limits.max_concurrent,
        },
        tenant: key.tenant().to_string(),
        weight: key.weight(),
        key: secret.map(str::to_string),
    }
}

/// Checks a `YYYY-MM-DD` day given as `field`.
pub fn check_day(field: &str, day: Option<&str>) -> Result<(), WireError> {
    let Some(day) = day else { return Ok(()) };
    let shape = day.len() == 10
        && day.char_indices().all(|(i, c)| if i == 4 || i == 7 { c == '-' } else { c.is_ascii_digit() });
    if shape {
        Ok(())
    } else {
        Err(invalid(format!("`{field}` is {day:?}; use a UTC day such as 2026-11-27")))
    }
}

/// One key's use of one model on one UTC day.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    /// The key's id.
    pub key: String,
    /// The model.
    pub model: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// Requests finished.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// The sum.
    pub total_tokens: u64,
}

/// `GET /api/v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsagePage {
    /// `list`.
    pub object: &'static str,
    /// One row per key, model and day.
    pub data: Vec<UsageView>,
}

/// Usage rows as the admin API and the CLI show them.
pub fn usage_page(rows: &[UsageRow]) -> UsagePage {
    let data = rows
        .iter()
        .map(|r| UsageView {
            key: r.key.clone(),
            model: r.model.clone(),
            day: r.day.clone(),
            requests: r.requests,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            total_tokens: r.prompt_tokens + r.completion_tokens,
        })
        .collect();
    UsagePage { object: "list", data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_checked_field_by_field() {
        let k = new_key(" ci ", "inference", &["m".into()], Some("30d"), KeyLimits::default(), 1000).unwrap();
        assert_eq!((k.name.as_str(), k.scope, k.expires_ms), ("ci", Scope::Inference, Some(1000 + 30 * 86_400_000)));
        for (name, scope, models, expires, field) in [
            ("", "admin", vec![], None, "name"),
            ("x", "root", vec![], None, "scope"),
            ("x", "admin", vec![String::new()], None, "models"),
            ("x", "admin", vec![], Some("soon"), "expires"),
            ("x", "admin", vec![], Some("0s"), "expires"),
        ] {
            let err = new_key(name, scope, &models, expires, KeyLimits::default(), 0).unwrap_err();
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
        let zero = KeyLimits { rpm: Some(0), ..Default::default() };
        assert!(new_key("x", "admin", &[], None, zero, 0).unwrap_err().message.contains("rpm"));
        let plain = new_key("x", "inference", &[], None, KeyLimits::default(), 0).unwrap();
        let shared = with_share(plain.clone(), Some("team-a"), Some(3)).unwrap();
        assert_eq!((shared.tenant.as_deref(), shared.weight), (Some("team-a"), Some(3)));
        assert!(with_share(plain.clone(), Some("client-x"), None).unwrap_err().message.contains("`tenant`"));
        assert!(with_share(plain.clone(), None, Some(0)).unwrap_err().message.contains("`weight`"));
        assert!(with_share(plain, None, Some(1001)).unwrap_err().message.contains("`weight`"));
    }

    #[test]
    fn days_are_checked_by_shape() {
        assert!(check_day("from", Some("2026-11-27")).is_ok());
        assert!(check_day("from", None).is_ok());
        assert!(check_day("to", Some("27/11/2026")).unwrap_err().message.contains("`to`"));
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
            limits: Default::default(),
            tenant: None,
            weight: None,
        };
        let shown = |secret| serde_json::to_value(key_view(&k, secret)).unwrap();
        assert!(!shown(None).to_string().contains("deadbeef"));
        assert!(shown(None).get("key").is_none());
        assert_eq!(shown(Some("blk-s"))["key"], "blk-s");
    }
}
