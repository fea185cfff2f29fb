//! Named choices that config, the wire and every node share: a node's roles, a worker's
//! engine and a worker's state. One type each, so nothing compares them as strings.
//!
//! On the wire each is its kebab- or snake-case name. A name this build does not know
//! (sent by a newer node) decodes as `Unknown` instead of failing the whole message:
//! an older node can still read a newer node's heartbeat. Config refuses `Unknown` (see
//! `bitinglip-config`'s validation), so it never reaches a decision.

use std::fmt;

use serde::{Deserialize, Serialize};

/// For an enum of names with an `Unknown` variant: `ALL` (every variant this build knows,
/// in the order given), `as_str` (the name used in config, on the wire and in the CLI;
/// `unknown` for `Unknown`), `parse` (a known name) and `Display`.
macro_rules! named {
    ($kind:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $kind {
            /// Every one this build knows.
            pub const ALL: [$kind; [$($name),+].len()] = [$($kind::$variant),+];

            /// The name used in config, on the wire and in the CLI.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($kind::$variant => $name,)+
                    $kind::Unknown => "unknown",
                }
            }

            /// Parses a known name.
            pub fn parse(s: &str) -> Option<$kind> {
                Self::ALL.into_iter().find(|k| k.as_str() == s.trim())
            }
        }

        impl fmt::Display for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A role a node can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The HTTP bridge (OpenAI-compatible API).
    Gateway,
    /// Validates and queues tasks.
    TaskManager,
    /// Keeps the model registry.
    ModelManager,
    /// Keeps node membership, deployments and placement.
    ClusterManager,
    /// Runs engines.
    Worker,
    /// A role this build does not know (from a newer node).
    #[serde(other)]
    Unknown,
}

named!(Role {
    // In start order.
    ClusterManager => "cluster-manager",
    ModelManager => "model-manager",
    TaskManager => "task-manager",
    Worker => "worker",
    Gateway => "gateway",
});

/// The engine a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// mistral.rs (the default).
    #[default]
    Mistralrs,
    /// Echoes the prompt back: only for measuring the platform and for fault tests.
    Echo,
    /// An engine this build does not know (from a newer node).
    #[serde(other)]
    Unknown,
}

named!(EngineKind { Mistralrs => "mistralrs", Echo => "echo" });

/// What a node's engines run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// The CPU (the default; also a node without a GPU driver).
    #[default]
    Cpu,
    /// NVIDIA GPUs (a `cuda` build on a node with the driver).
    Cuda,
    /// Apple's GPU (a `metal` build).
    Metal,
    /// A device this build does not know (from a newer node).
    #[serde(other)]
    Unknown,
}

named!(DeviceKind { Cpu => "cpu", Cuda => "cuda", Metal => "metal" });

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Loading its engine (downloading the model first when it comes from the hub).
    Loading,
    /// Loaded and taking tasks.
    Ready,
    /// Stopping: takes no new task, finishes or hands back the ones it runs.
    Draining,
    /// The engine failed to load; it serves nothing.
    Failed,
    /// A state this build does not know (from a newer node).
    #[serde(other)]
    Unknown,
}

named!(WorkerState { Loading => "loading", Ready => "ready", Draining => "draining", Failed => "failed" });

/// OpenAPI schemas (feature `openapi`): a string enum of the names this build knows. Roles
/// and worker states are only ever answered, so their schema adds `unknown` (what a newer
/// node's name reads as); an engine is also asked for, and only a known one is accepted.
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::{schema::Schema, ObjectBuilder, RefOr, Type};

    use super::{EngineKind, Role, WorkerState};

    fn names(names: impl IntoIterator<Item = &'static str>, description: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(names.into_iter().collect::<Vec<_>>()))
            .description(Some(description))
            .into()
    }

    impl utoipa::PartialSchema for Role {
        fn schema() -> RefOr<Schema> {
            names(Role::ALL.map(Role::as_str).into_iter().chain(["unknown"]), "A node's role.")
        }
    }
    impl utoipa::ToSchema for Role {}

    impl utoipa::PartialSchema for EngineKind {
        fn schema() -> RefOr<Schema> {
            names(EngineKind::ALL.map(EngineKind::as_str), "The engine a worker runs.")
        }
    }
    impl utoipa::ToSchema for EngineKind {}

    impl utoipa::PartialSchema for WorkerState {
        fn schema() -> RefOr<Schema> {
            names(
                WorkerState::ALL.map(WorkerState::as_str).into_iter().chain(["unknown"]),
                "Where a worker is in its life.",
            )
        }
    }
    impl utoipa::ToSchema for WorkerState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> T {
        rmp_serde::from_slice(&rmp_serde::to_vec_named(value).unwrap()).unwrap()
    }

    #[test]
    fn names_on_the_wire_are_pinned() {
        for (role, name) in [
            (Role::Gateway, "gateway"),
            (Role::TaskManager, "task-manager"),
            (Role::ModelManager, "model-manager"),
            (Role::ClusterManager, "cluster-manager"),
            (Role::Worker, "worker"),
        ] {
            assert_eq!(rmp_serde::to_vec_named(&role).unwrap(), rmp_serde::to_vec_named(name).unwrap());
            assert_eq!(roundtrip(&role), role);
            assert_eq!(Role::parse(name), Some(role));
        }
        for (engine, name) in [(EngineKind::Mistralrs, "mistralrs"), (EngineKind::Echo, "echo")] {
            assert_eq!(rmp_serde::to_vec_named(&engine).unwrap(), rmp_serde::to_vec_named(name).unwrap());
            assert_eq!(EngineKind::parse(name), Some(engine));
        }
        for (state, name) in [
            (WorkerState::Loading, "loading"),
            (WorkerState::Ready, "ready"),
            (WorkerState::Draining, "draining"),
            (WorkerState::Failed, "failed"),
        ] {
            assert_eq!(rmp_serde::to_vec_named(&state).unwrap(), rmp_serde::to_vec_named(name).unwrap());
            assert_eq!(roundtrip(&state), state);
        }
    }

    #[test]
    fn names_from_a_newer_node_decode_as_unknown() {
        let newer = rmp_serde::to_vec_named("quantum-router").unwrap();
        assert_eq!(rmp_serde::from_slice::<Role>(&newer).unwrap(), Role::Unknown);
        assert_eq!(rmp_serde::from_slice::<EngineKind>(&newer).unwrap(), EngineKind::Unknown);
        assert_eq!(rmp_serde::from_slice::<WorkerState>(&newer).unwrap(), WorkerState::Unknown);
        assert_eq!(rmp_serde::from_slice::<DeviceKind>(&newer).unwrap(), DeviceKind::Unknown);
        for d in DeviceKind::ALL {
            assert_eq!(rmp_serde::to_vec_named(&d).unwrap(), rmp_serde::to_vec_named(d.as_str()).unwrap());
            assert_eq!(DeviceKind::parse(d.as_str()), Some(d));
        }
        assert_eq!(Role::parse("unknown"), None);
        assert_eq!(EngineKind::parse("unknown"), None);
    }
}
