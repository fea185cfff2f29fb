//! Strict readers for the named choices config shares with the wire. On the wire a name
//! this build does not know decodes as `Unknown` (forward compatibility); in config it is
//! a mistake, refused at once with the bad name in the message.

use bitinglip_bus_schema::{EngineKind, Quantize, Role};
use serde::{de::Error, Deserialize, Deserializer};

/// A list of role names, each one this build knows.
pub(crate) fn roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Role>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|name| {
            Role::parse(name).ok_or_else(|| {
                D::Error::custom(format!(
                    "unknown role {name:?}; use gateway, task-manager, model-manager, cluster-manager or worker"
                ))
            })
        })
        .collect()
}

/// An engine name this build runs.
pub(crate) fn engine<'de, D: Deserializer<'de>>(d: D) -> Result<EngineKind, D::Error> {
    let name = String::deserialize(d)?;
    EngineKind::parse(&name).ok_or_else(|| D::Error::custom(format!("unknown engine {name:?}; use mistralrs or echo")))
}

/// A quantization this build knows (`Q4K`, `q8_0`), or none.
pub(crate) fn quantize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Quantize>, D::Error> {
    Option::<String>::deserialize(d)?.map(|name| Quantize::parse(&name).map_err(D::Error::custom)).transpose()
}
