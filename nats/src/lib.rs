//! Everything BitingLip does with NATS: connecting from config, typed request / publish /
//! subscribe with trace headers, idempotent JetStream provisioning, the typed storage
//! layer ([`store`]: the only code that touches a KV bucket or a stream), and a launcher
//! for a local `nats-server`.

mod bus;
mod connect;
mod error;
pub mod permissions;
mod provision;
mod server;
pub mod store;
pub mod trace;

pub use async_nats;
pub use bus::{now_ms, trace_of, Bus, Incoming};
pub use connect::{connect, connect_as, connect_node, ensure_tls_provider};
pub use error::{BusError, ConnectError, ProvisionError, ServerError};
pub use provision::{pinned_consumer_config, tenant_consumer_config, worker_consumer_config, Changes};
pub use server::{find_nats_server, LocalNatsServer, ServerOptions, ServerTls};
pub use store::{Store, StoreError};
