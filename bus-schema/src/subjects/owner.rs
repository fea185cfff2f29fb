//! Who a task belongs to, as its subjects name it: an API key's id, a NATS client
//! identity's `client-<name>`, or no one.

use super::{decode_token, encode_token, SubjectError};

/// The token of a task without an owner in its subjects.
pub const NO_OWNER_TOKEN: &str = "=";

/// What every NATS client identity's owner starts with (`client-<name>`); an API key's
/// owner is the key's id (16 hex digits), so the two never meet.
pub const CLIENT_OWNER_PREFIX: &str = "client-";

/// The name of the shared client identity (`client.nk`).
pub const DEFAULT_CLIENT: &str = "default";

/// The subject token of a task's owner: the owner encoded ([`encode_token`]), or
/// [`NO_OWNER_TOKEN`] for none.
pub fn owner_token(owner: Option<&str>) -> String {
    match owner {
        Some(o) if !o.is_empty() => encode_token(o),
        _ => NO_OWNER_TOKEN.to_string(),
    }
}

/// Reverses [`owner_token`].
pub fn owner_of_token(token: &str) -> Result<Option<String>, SubjectError> {
    if token == NO_OWNER_TOKEN {
        return Ok(None);
    }
    decode_token(token).map(Some)
}

/// The owner of the tasks of NATS client identity `name`.
pub fn client_owner(name: &str) -> String {
    format!("{CLIENT_OWNER_PREFIX}{name}")
}

/// Whether `owner` is a NATS client identity's (its tasks' ids and flags are its own
/// choice, never trusted the way a gateway's are).
pub fn is_client_owner(owner: Option<&str>) -> bool {
    owner.is_some_and(|o| o.starts_with(CLIENT_OWNER_PREFIX))
}

/// Why `name` cannot name a NATS client identity: 1 to 64 letters, digits and `_`
/// (it becomes a seed file's name, a subject token and an inbox prefix).
pub fn client_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some(format!("client identity {name:?}: use 1 to 64 letters, digits and '_'"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_owners_are_told_from_keys_and_their_names_checked() {
        assert!(is_client_owner(Some(&client_owner("app"))));
        assert!(!is_client_owner(Some("0123456789abcdef")) && !is_client_owner(None));
        assert!(client_name_problem("app_1").is_none());
        for bad in ["", "a-b", "a.b", "../x", &"x".repeat(65)] {
            assert!(client_name_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(owner_of_token(&owner_token(None)), Ok(None));
        assert_eq!(owner_of_token(&owner_token(Some("client-a"))), Ok(Some("client-a".into())));
    }
}
