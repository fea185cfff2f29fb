//! BitingLip's client library: what a program needs to follow tasks on a cluster, without
//! linking an engine. The gateway, the worker's resume, the CLI and outside Rust programs
//! all use it.
//!
//! - [`sequence`]: the pure state machine that turns events from several attempts, live
//!   and read back, into one ordered answer with no gap and no repeat.
//! - [`watch`]: [`TaskWatch`], which feeds it from the bus and the events stream.
//! - [`cancel`] and [`CancelOnDrop`]: stopping a task.
//!
//! Queue statistics are [`bitinglip_nats::store::queue::Queue::stats`], re-exported here.

pub mod sequence;
pub mod watch;

pub use bitinglip_nats::store::queue::QueueStats;
pub use sequence::{chunks_by_seq, prefix_of, Prefix, Relayed};
pub use watch::{cancel, CancelOnDrop, TaskWatch};
