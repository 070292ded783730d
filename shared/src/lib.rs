//! Sans-IO core of Outpost: the types and decisions that the hub, the agent and the simulations share.
//!
//! Nothing here touches the filesystem, the network, the clock or a random source: callers pass bytes and the
//! current time in, and get values, decisions or typed errors back. That keeps every rule testable and lets the
//! simulations run many agents on a virtual clock.

pub mod audit;
pub mod canonical;
pub mod capability;
pub mod challenger;
pub mod clock;
pub mod config;
#[cfg(feature = "testkit")]
pub mod config_reference;
pub mod controller;
pub mod digest;
pub mod director;
pub mod errors;
pub mod evaluation;
pub mod manifest;
#[cfg(feature = "prometheus")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod model;
#[cfg(feature = "npy")]
pub mod npy;
pub mod oip;
#[cfg(feature = "runtime")]
pub mod operators;
pub mod package;
pub mod policy;
pub mod rng;
pub mod rollout;
pub mod route;
pub mod telemetry;
pub mod tensor;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod update;
pub mod wire;

pub use digest::{Digest, DigestParseError, Sha256};
pub use manifest::{Manifest, ManifestError};
pub use package::{Package, PackageError, PackageLimits};
