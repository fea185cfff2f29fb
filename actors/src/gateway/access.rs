//! Who may do what, and how much: the key check every route is behind (`auth.rs`), the
//! per-key rate limits and the queues a task manager called full (`limits.rs`), and the
//! per-key cap on requests in progress (`in_flight.rs`).

pub(crate) mod auth;
pub(crate) mod in_flight;
pub(crate) mod limits;
