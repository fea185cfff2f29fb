//! Wire types of BitingLip: everything that crosses a node boundary.
//!
//! This crate is deliberately pure (serde and rmp-serde only: no tokio, no NATS, no
//! ractor) so that every node and every outside Rust client can share it, and so that it
//! compiles in seconds. A client in another language needs only `docs/NATS-API.md`: every payload
//! is an [`Envelope`] encoded as MessagePack with named fields.

pub mod call;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod kinds;
pub mod messages;
pub mod subjects;

pub use call::{ClusterNodes, DeleteModel, OwnerRequest, Reply, Request, ResultPart, TaskPage, UnloadModel};
pub use codec::{decode, decode_body, decode_event, encode, CodecError, DEFAULT_MAX_PAYLOAD};
pub use envelope::{Envelope, SCHEMA_VERSION};
pub use error::{ErrorKind, WireError};
pub use kinds::{DeviceKind, EngineKind, Role, WorkerState};
pub use messages::*;
pub use subjects::{
    client_name_problem, client_owner, decode_token, encode_token, is_client_owner, model_id_problem, owner_of_token,
    owner_token, SubjectError, Subjects, TaskId, CLIENT_OWNER_PREFIX, DEFAULT_CLIENT, MAX_ID_BYTES, NO_OWNER_TOKEN,
};
