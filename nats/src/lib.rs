//! Everything BitingLip does with NATS: connecting from config, typed request / publish /
//! subscribe with trace headers, idempotent JetStream provisioning, and a launcher for a
//! local `nats-server`.

mod bus;
mod connect;
mod error;
mod provision;
mod server;
pub mod trace;

pub use async_nats;
pub use bus::{now_ms, trace_of, Bus, Incoming};
pub use connect::connect;
pub use error::{BusError, ConnectError, ProvisionError, ServerError};
pub use provision::{provision, worker_consumer_config, Provisioned};
pub use server::{find_nats_server, LocalNatsServer, ServerOptions};
