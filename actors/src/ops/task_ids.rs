//! The task id of a request: the caller's, one derived from the idempotency key and the
//! API key that sent it (so a retry through any gateway maps to the same task, and two
//! API keys using the same idempotency key get two tasks), or a new ULID; and the hash
//! of a request, which tells a retry from another request under the same key.

use bitinglip_bus_schema::{ChatParams, SubmitRequest, TaskId};
use sha2::Digest;

/// The task id for `req`.
pub fn task_id_for(req: &SubmitRequest) -> TaskId {
    if let Some(id) = &req.task_id {
        return id.clone();
    }
    if let Some(key) = &req.idempotency_key {
        let scoped = match &req.owner {
            Some(owner) => format!("{owner}\n{key}"),
            None => key.clone(),
        };
        let digest = sha2::Sha256::digest(scoped.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        return TaskId::parse(format!("idem-{hex}")).expect("hex is a valid task id");
    }
    TaskId::parse(ulid::Ulid::new().to_string()).expect("a ULID is a valid task id")
}

/// sha256 (hex) of the request as the task manager validated it.
pub fn request_sha256(chat: &ChatParams) -> String {
    // Named MessagePack of a plain struct: the same request always gives the same bytes.
    let bytes = rmp_serde::to_vec_named(chat).expect("a chat request always encodes");
    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(owner: Option<&str>, key: Option<&str>) -> SubmitRequest {
        SubmitRequest {
            idempotency_key: key.map(str::to_string),
            owner: owner.map(str::to_string),
            ..SubmitRequest::new(ChatParams::user("m", "hi"))
        }
    }

    #[test]
    fn idempotency_keys_are_scoped_to_the_api_key() {
        let a = task_id_for(&req(Some("k1"), Some("retry-1")));
        assert_eq!(a, task_id_for(&req(Some("k1"), Some("retry-1"))));
        assert_ne!(a, task_id_for(&req(Some("k2"), Some("retry-1"))));
        assert_ne!(a, task_id_for(&req(None, Some("retry-1"))));
        assert_ne!(task_id_for(&req(Some("k1"), None)), task_id_for(&req(Some("k1"), None)));
    }

    #[test]
    fn the_request_hash_tells_another_request_from_a_retry() {
        let one = req(None, None).chat;
        let mut other = one.clone();
        other.messages[0].content = "bye".into();
        assert_eq!(request_sha256(&one), request_sha256(&one.clone()));
        assert_ne!(request_sha256(&one), request_sha256(&other));
    }
}
