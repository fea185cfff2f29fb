//! API keys: the records the gateway checks every HTTP request against. The secret is
//! never stored, only its sha256.

use serde::{Deserialize, Serialize};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The OpenAI routes and the task API (`/v1/…`).
    #[default]
    Inference,
    /// Everything, the admin API (`/api/v1/…`) and `/metrics` included.
    Admin,
    /// A scope this build does not know (from a newer node): allows nothing.
    #[serde(other)]
    Unknown,
}

impl Scope {
    /// The snake-case name used on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::Admin => "admin",
            Scope::Unknown => "unknown",
        }
    }

    /// Parses a known scope's name.
    pub fn parse(s: &str) -> Option<Scope> {
        [Scope::Inference, Scope::Admin].into_iter().find(|k| k.as_str() == s.trim())
    }
}

/// An API key, in the keys KV bucket under its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The key's id (public; part of the secret, shown by `keys ls`, used by `keys revoke`).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// The models it may use; empty: every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// When it stops working, ms since the epoch.
    #[serde(default)]
    pub expires_ms: Option<u64>,
    /// sha256 (hex) of the secret.
    pub secret_sha256: String,
    /// Created at, ms since the epoch.
    pub created_ms: u64,
    /// Revoked at, ms since the epoch.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
    /// Its limits, counted across every gateway.
    #[serde(default)]
    pub limits: KeyLimits,
    /// The tenant it belongs to: keys of one tenant share its fair share of a busy model
    /// ([`valid_tenant`]); absent: the key is a tenant of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Its tenant's weight in fair dispatch, 1 to [`MAX_WEIGHT`]; absent: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// The largest weight a tenant may have.
pub const MAX_WEIGHT: u32 = 1000;

/// True for a tenant name: 1 to 64 characters of letters, digits, `-`, `_` and `.`, not
/// starting with `client-` (NATS client identities are tenants under that prefix).
pub fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with(crate::CLIENT_OWNER_PREFIX)
}

/// What one API key may use; absent: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Tokens per day (UTC).
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// Requests and event streams in progress at once, on each gateway (absent: the
    /// gateway's `gateway.max_concurrent_per_key`).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

impl KeyLimits {
    /// True when any limit is set.
    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.tokens_per_day.is_some()
    }
}

impl ApiKey {
    /// True while it is neither revoked nor expired at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|at| now_ms < at)
    }

    /// The tenant its tasks are dispatched under: its own, or its id.
    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.id)
    }

    /// Its tenant's weight (1 when unset).
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1).clamp(1, MAX_WEIGHT)
    }

    /// True when it may use `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.scope == Scope::Admin || self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    fn key() -> ApiKey {
        ApiKey {
            id: "k1".into(),
            name: "ci".into(),
            scope: Scope::Inference,
            models: vec!["m".into()],
            expires_ms: Some(100),
            secret_sha256: "ab".into(),
            created_ms: 1,
            revoked_ms: None,
            limits: KeyLimits { rpm: Some(60), tpm: None, tokens_per_day: Some(1000), max_concurrent: Some(4) },
            tenant: Some("team-a".into()),
            weight: Some(3),
        }
    }

    #[test]
    fn keys_pin_their_fields_and_scopes_their_names() {
        pin(
            key(),
            &[
                "id",
                "name",
                "scope",
                "models",
                "expires_ms",
                "secret_sha256",
                "created_ms",
                "revoked_ms",
                "limits",
                "tenant",
                "weight",
            ],
        );
        pin(KeyLimits::default(), &["rpm", "tpm", "tokens_per_day", "max_concurrent"]);
        assert_eq!(rmp_serde::to_vec_named(&Scope::Admin).unwrap(), rmp_serde::to_vec_named("admin").unwrap());
        let newer = rmp_serde::to_vec_named("superuser").unwrap();
        assert_eq!(rmp_serde::from_slice::<Scope>(&newer).unwrap(), Scope::Unknown);
        assert_eq!(Scope::parse("unknown"), None);
    }

    #[test]
    fn a_key_works_until_it_expires_or_is_revoked_and_only_for_its_models() {
        let k = key();
        assert!(k.active(99) && !k.active(100));
        assert!(k.allows_model("m") && !k.allows_model("other"));
        let revoked = ApiKey { revoked_ms: Some(5), expires_ms: None, ..key() };
        assert!(!revoked.active(6));
        let admin = ApiKey { scope: Scope::Admin, ..key() };
        assert!(admin.allows_model("other"));
        let all = ApiKey { models: vec![], ..key() };
        assert!(all.allows_model("anything"));
    }

    #[test]
    fn a_key_is_its_own_tenant_unless_it_names_one_and_weighs_one_unless_set() {
        let k = key();
        assert_eq!((k.tenant(), k.weight()), ("team-a", 3));
        let alone = ApiKey { tenant: None, weight: None, ..key() };
        assert_eq!((alone.tenant(), alone.weight()), ("k1", 1));
        assert!(valid_tenant("team-a.prod_1"));
        for bad in ["", "a b", "a*", "client-x", &"x".repeat(65)] {
            assert!(!valid_tenant(bad), "{bad:?}");
        }
    }
}
