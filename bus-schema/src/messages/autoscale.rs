//! Autoscaling of a deployment: its bounds and target, and the record of what the leading
//! cluster manager decided and why.

use serde::{Deserialize, Serialize};

/// The most replicas a deployment may have (and an autoscaled one may grow to).
pub const MAX_REPLICAS: u32 = 1000;

/// How many of a deployment's scaling decisions it keeps, newest last.
pub const SCALE_EVENTS_KEPT: usize = 10;

/// What an autoscaled deployment keeps under its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ScaleSignal {
    /// How long tasks wait in the model's queue before a worker takes them (the oldest
    /// waiting task's age, which bounds the p95 of those waiting).
    QueueWait,
    /// Time to first token at p95 over the replicas' last 10 s (from a worker's claim to
    /// its first token), or the queue wait when that is longer.
    FirstToken,
}

impl ScaleSignal {
    /// Every signal, in the order the docs list them.
    pub const ALL: [ScaleSignal; 2] = [ScaleSignal::QueueWait, ScaleSignal::FirstToken];

    /// The name used in the CLI, the API and the bus.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleSignal::QueueWait => "queue_wait",
            ScaleSignal::FirstToken => "first_token",
        }
    }

    /// Reads a name (`queue_wait`, `first_token`; `-` may stand for `_`).
    pub fn parse(raw: &str) -> Option<ScaleSignal> {
        let raw = raw.trim().replace('-', "_");
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// How it reads in a reason (`queue wait p95`).
    pub fn describe(self) -> &'static str {
        match self {
            ScaleSignal::QueueWait => "queue wait p95",
            ScaleSignal::FirstToken => "time to first token p95",
        }
    }
}

impl std::fmt::Display for ScaleSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deployment's autoscaling: the leading cluster manager keeps its replicas between
/// `min_replicas` and `max_replicas`, adding one when the signal is over its target and
/// as many as the waiting and running tasks need, and removing replicas (by drain) once
/// the load has fit fewer for the cluster's scale-down window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Autoscale {
    /// Fewest replicas; 0 lets an idle deployment unload (scale to zero), and a request
    /// that then arrives waits durably in the queue while a replica starts.
    pub min_replicas: u32,
    /// Most replicas (1 to 1000, at least `min_replicas`).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max_replicas: u32,
    /// What it keeps under `target_ms`.
    pub signal: ScaleSignal,
    /// The target, ms (at least 1).
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub target_ms: u64,
    /// With `min_replicas` 0: how long without a task waiting or running before it goes
    /// to 0 replicas, ms (default: the cluster's `cluster.idle_unload`).
    #[serde(default)]
    pub idle_ms: Option<u64>,
}

impl Autoscale {
    /// What is wrong with these bounds, if anything (for the error an operator sees).
    pub fn problem(&self) -> Option<String> {
        if self.max_replicas == 0 || self.max_replicas > MAX_REPLICAS {
            return Some(format!("`autoscale.max_replicas` is {}; use 1 to {MAX_REPLICAS}", self.max_replicas));
        }
        if self.min_replicas > self.max_replicas {
            return Some(format!(
                "`autoscale.min_replicas` ({}) is above `autoscale.max_replicas` ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        if self.target_ms == 0 {
            return Some("`autoscale.target_ms` is 0; give the wait to stay under, in ms (1 or more)".into());
        }
        if self.idle_ms == Some(0) {
            return Some("`autoscale.idle_ms` is 0; give how long an idle deployment waits before 0 replicas".into());
        }
        None
    }
}

/// One scaling decision, kept with the deployment (`deployments ls` shows the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScaleEvent {
    /// Replicas before.
    pub from: u32,
    /// Replicas after.
    pub to: u32,
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Why (`queue wait p95 4.2 s > 2 s`).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::testing::pin;

    #[test]
    fn autoscale_messages_pin_their_fields_and_names() {
        let a = Autoscale {
            min_replicas: 0,
            max_replicas: 3,
            signal: ScaleSignal::QueueWait,
            target_ms: 2000,
            idle_ms: Some(30_000),
        };
        pin(a.clone(), &["min_replicas", "max_replicas", "signal", "target_ms", "idle_ms"]);
        pin(ScaleEvent { from: 1, to: 3, at_ms: 5, reason: "r".into() }, &["from", "to", "at_ms", "reason"]);
        for s in ScaleSignal::ALL {
            assert_eq!(ScaleSignal::parse(s.as_str()), Some(s));
            let encoded = rmp_serde::to_vec_named(&s).unwrap();
            assert_eq!(rmp_serde::from_slice::<String>(&encoded).unwrap(), s.as_str());
        }
        assert_eq!(ScaleSignal::parse("first-token"), Some(ScaleSignal::FirstToken));
        assert_eq!(a.problem(), None);
        let bad = Autoscale { min_replicas: 4, ..a.clone() };
        assert!(bad.problem().unwrap().contains("min_replicas` (4)"));
        assert!(Autoscale { max_replicas: 0, ..a.clone() }.problem().unwrap().contains("max_replicas` is 0"));
        assert!(Autoscale { target_ms: 0, ..a }.problem().unwrap().contains("target_ms"));
    }
}
