//! Requests and event streams each API key has in progress on this gateway, held to the
//! key's `max_concurrent` (else `gateway.max_concurrent_per_key`): one key cannot take
//! every slot and connection of a gateway, whatever its rate limits. A request counts
//! from the moment its key is checked until its response body is finished or dropped, so
//! a stream counts for as long as it is open. Over the cap is a 429 at once
//! (`too_many_concurrent_requests`), with no round trip.
//!
//! The count is per gateway, in memory: a client spread over N gateways may have N times
//! the cap, as with connections. A cluster-wide count would put a round trip on every
//! request and a leak on every crash.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::http::Method;

use crate::gateway::error::ApiError;

/// This gateway's requests in progress per key (its `Auth` holds them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts(Arc<Mutex<HashMap<String, u32>>>);

/// Whether a request to `path` is counted: the routes that run a task, and event streams.
pub(crate) fn applies(method: &Method, path: &str) -> bool {
    super::limits::counted(method, path)
        || (method == Method::GET && (path.ends_with("/events") || path == "/api/v1/models/progress"))
}

/// One request of a key in progress; dropping it ends it.
#[derive(Debug)]
pub(crate) struct InFlight {
    key: String,
    counts: Counts,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Counts a request of `key`, or refuses it when `cap` are in progress already.
pub(crate) fn enter(all: &Counts, key: &str, cap: u32) -> Result<InFlight, ApiError> {
    let mut counts = all.0.lock().unwrap_or_else(|e| e.into_inner());
    let n = counts.entry(key.to_string()).or_insert(0);
    if *n >= cap {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("this key has {cap} requests and event streams in progress on this gateway, its limit; retry when one ends"),
        )
        .with_code("too_many_concurrent_requests")
        .with_retry_after(1));
    }
    *n += 1;
    Ok(InFlight { key: key.to_string(), counts: all.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_has_at_most_its_cap_in_progress_and_a_finished_one_frees_its_place() {
        let counts = Counts::default();
        let a = enter(&counts, "in-flight-test", 2).unwrap();
        let _b = enter(&counts, "in-flight-test", 2).unwrap();
        let refused = enter(&counts, "in-flight-test", 2).unwrap_err();
        assert_eq!(axum::response::IntoResponse::into_response(refused).status(), 429);
        assert!(enter(&counts, "in-flight-other", 2).is_ok(), "another key is not affected");
        drop(a);
        assert!(enter(&counts, "in-flight-test", 2).is_ok());
        // Another gateway's counts are its own.
        assert!(enter(&Counts::default(), "in-flight-test", 1).is_ok());
    }

    #[test]
    fn runs_and_streams_are_counted_and_reads_are_not() {
        assert!(applies(&Method::POST, "/v1/chat/completions"));
        assert!(applies(&Method::GET, "/v1/tasks/01J/events"));
        assert!(!applies(&Method::GET, "/v1/tasks/01J"));
        assert!(!applies(&Method::GET, "/v1/models"));
    }
}
