//! BitingLip's actors, each a ractor actor under the node supervisor, and the layer of
//! shared code below them.
//!
//! Layers inside this crate import downward only:
//!
//! | layer | modules | may import |
//! | --- | --- | --- |
//! | shared | `context`, `engine`, `gpus`, `guided`, `ops`, `serve`, `spans`, `metrics`, `health`, `http`, `timed` | the crates below, each other |
//! | actors | one per file (table below) | the shared layer; never another actor's module |
//! | supervisor | `node` | everything: it alone names the actors |
//!
//! | actor | file | serves |
//! | --- | --- | --- |
//! | node supervisor | `node.rs` | starts the roles, restarts a failed one, follows this node's placement |
//! | heartbeat | `heartbeat.rs` | writes this node's heartbeat into KV |
//! | gateway | `gateway.rs` | HTTP: OpenAI-compatible API, task API, admin API, health, metrics |
//! | task manager | `task_manager.rs` | `…task.submit`, `…task.get`, `…task.list`, `…task.*.cancel` |
//! | worker | `worker.rs` | pulls tasks of one model, runs its engine |
//! | puller | `puller.rs` | `…model.pull`: hub downloads on worker nodes |
//! | model manager | `model_manager.rs` | `…model.register|list|status|search|load|unload|delete` |
//! | cluster manager | `cluster_manager.rs` | `…cluster.status`, `…deployment.*`, failover, placement |
//!
//! The four service roles (task manager, model manager, cluster manager, puller) are each
//! a `serve::Service`, run by the one actor `serve::Served`.
//!
//! Storage is `bitinglip_nats::store` (no bucket or stream handle here); following a task
//! is `bitinglip_client`.

pub mod context;
pub mod engine;
pub mod gpus;
pub mod guided;
pub mod health;
mod http;
pub mod metrics;
pub mod ops;
mod serve;
mod spans;
pub mod timed;

pub mod cluster_manager;
pub mod gateway;
pub mod heartbeat;
pub mod model_manager;
pub mod node;
pub mod puller;
pub mod task_manager;
pub mod worker;

pub use context::NodeContext;
pub use engine::{Engine, EngineError, GenerateRequest, Generation, Piece};
pub use node::{Node, NodeSupervisor, NodeSupervisorArgs, NodeSupervisorMsg, StartError};
