//! The task id of a request: the caller's, one derived from the idempotency key (so a
//! retry through any gateway maps to the same task), or a new ULID.

use bitinglip_bus_schema::{SubmitRequest, TaskId};
use sha2::Digest;

/// The task id for `req`.
pub fn task_id_for(req: &SubmitRequest) -> TaskId {
    if let Some(id) = &req.task_id {
        return id.clone();
    }
    if let Some(key) = &req.idempotency_key {
        let digest = sha2::Sha256::digest(key.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        return TaskId::parse(format!("idem-{hex}")).expect("hex is a valid task id");
    }
    TaskId::parse(ulid::Ulid::new().to_string()).expect("a ULID is a valid task id")
}
