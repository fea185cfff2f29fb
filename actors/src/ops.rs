//! Operations several actors need, below the actors: no actor's module is imported here,
//! and an actor reaches another's work only through these or the bus.
//!
//! | module | for |
//! | --- | --- |
//! | `deployments` | set, seed, load on demand, scale, status of deployments |
//! | `estimate` | a model's shape from its files, and what a replica of a deployment takes |
//! | `models` | merging a registration, a replica's worker config |
//! | `keys` | a new API key's fields checked, and its JSON view |
//! | `hub` | the Hugging Face hub through hf-hub: search and verified downloads |
//! | `pull` | a download with progress on the bus and a status lease |
//! | `task_ids` | the task id of a request |
//! | `limits` | whether a window of use is over an API key's or a client identity's limits |

pub mod deployments;
pub mod estimate;
pub mod hub;
pub mod keys;
pub mod limits;
pub mod models;
pub mod pull;
pub mod task_ids;
