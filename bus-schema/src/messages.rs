//! Every message type on the bus, grouped by domain.

mod autoscale;
mod batches;
mod cluster;
mod deployments;
mod events;
mod generation;
mod keys;
mod models;
mod responses;
mod task;
mod task_record;
mod task_requests;

pub use autoscale::*;
pub use batches::*;
pub use cluster::*;
pub use deployments::*;
pub use events::*;
pub use generation::*;
pub use keys::*;
pub use models::*;
pub use responses::*;
pub use task::*;
pub use task_record::*;
pub use task_requests::*;

use serde::{Deserialize, Serialize};

/// A plain positive answer to a request that returns nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Ack {
    /// Done.
    Ok,
    /// Refused, with the reason.
    Error(crate::WireError),
}

#[cfg(test)]
pub(crate) mod testing {
    //! Round-trip and field-name pinning used by every message's tests.

    use serde::{de::DeserializeOwned, Serialize};

    use crate::{decode, encode, Envelope, DEFAULT_MAX_PAYLOAD};

    /// Encodes `value` in an envelope, decodes it back, and checks equality; then checks
    /// that the body's top-level MessagePack map has exactly `fields` as keys.
    pub(crate) fn pin<T>(value: T, fields: &[&str])
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Clone,
    {
        let env = Envelope::new("01J", 7, "node-a", value.clone());
        let bytes = encode(&env).unwrap();
        let back: Envelope<T> = decode(&bytes, DEFAULT_MAX_PAYLOAD).unwrap();
        assert_eq!(back, env);
        let generic = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let outer = keys(&generic);
        assert_eq!(outer, ["v", "id", "time_ms", "source", "body"]);
        let body = generic.as_map().unwrap().iter().find(|(k, _)| k.as_str() == Some("body")).unwrap();
        let mut got = keys(&body.1);
        got.sort();
        let mut want: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "encoded field names of {}", std::any::type_name::<T>());
    }

    fn keys(v: &rmpv::Value) -> Vec<String> {
        v.as_map().expect("a map").iter().map(|(k, _)| k.as_str().expect("string keys").to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::pin;
    use super::*;
    use crate::{ErrorKind, WireError};

    #[test]
    fn ack_pins_its_fields() {
        pin(Ack::Ok, &["type"]);
        pin(Ack::Error(WireError::new(ErrorKind::NotFound, "x")), &["type", "kind", "message"]);
    }
}
