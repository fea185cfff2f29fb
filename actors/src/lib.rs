//! BitingLip's actors: one per file, each a ractor actor under the node supervisor.
//!
//! | actor | file | serves |
//! | --- | --- | --- |
//! | node supervisor | `node.rs` | starts the roles, restarts a failed one |
//! | heartbeat | `heartbeat.rs` | writes this node's heartbeat into KV |
//! | gateway | `gateway.rs` | HTTP: OpenAI-compatible API, health, metrics |
//! | task manager | `task_manager.rs` | `…task.submit`, `…task.get` |
//! | worker | `worker.rs` | pulls tasks of one model, runs its engine |
//! | puller | `puller.rs` | `…model.pull`: hub downloads on worker nodes |
//! | model manager | `model_manager.rs` | `…model.register`, `…model.list` |
//! | cluster manager | `cluster_manager.rs` | `…cluster.status` |

pub mod client;
pub mod cluster_manager;
pub mod context;
pub mod engines;
pub mod gateway;
pub mod health;
pub mod heartbeat;
pub mod metrics;
pub mod model_manager;
pub mod node;
pub mod puller;
pub mod queues;
mod serve;
mod spans;
pub mod task_manager;
pub mod worker;

pub use context::NodeContext;
pub use node::{NodeSupervisor, NodeSupervisorArgs, NodeSupervisorMsg};
pub use worker::engine::{Engine, EngineError, GenerateRequest, Generation};
