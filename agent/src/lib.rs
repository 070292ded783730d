//! The Outpost edge agent: fetches, verifies and runs model packages on a device.
//!
//! `config` (agent.toml), `device` (the device directory and its atomic writes), `driver` (the update driver
//! over `shared::update`'s decisions), `inference` (the local Open Inference Protocol v2 API over the active
//! model), `transport` (the adapter to sigstore-tuf over `outpost_net`'s one transport trait, which the QUIC
//! client to the hub, `outpost_net::client`, implements), `mirror` (feature `mirror`: the client to a static
//! HTTP(S) mirror of the hub's TUF repository, the other transport), `tuf` (the TUF client over either, shared
//! with `outpost-tuf-conformance`), `gateway` (feature `gateway`: firmware for the secondaries behind this device),
//! `policy_wasm` (feature `wasm`: site-policy rules as sandboxed WebAssembly modules), `site_policy` (the site
//! policy a device or site node enforces, with its last good copy), `telemetry` (the durable queue of events for
//! the hub), `site` (feature `site`: a site node for one site's devices, serving through `outpost_net::server`),
//! `upstream` (the hub's replicas, and which failures move the agent or site node to the next one).
//!
//! Parts a plain device does not need are cargo features (`site`, `mirror`, `wasm`, `gateway`, `tpm`; see
//! Cargo.toml); asking a build for a part it leaves out is refused with [`NotBuilt`].

pub mod attest;
pub mod config;
pub mod device;
pub mod driver;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod inference;
pub mod metrics;
#[cfg(feature = "mirror")]
pub mod mirror;
#[cfg(feature = "wasm")]
pub mod policy_wasm;
#[cfg(feature = "site")]
pub mod site;
pub mod site_policy;
pub mod telemetry;
pub mod transport;
pub mod tuf;
pub mod upstream;

/// A configuration or command asked for a part of the agent that this build leaves out (a cargo feature that was
/// not enabled). Refused rather than ignored: a device must not quietly run without what its operator configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} needs the `{feature}` feature, which this build of outpost-agent leaves out (build it with `--features {feature}`)"
)]
pub struct NotBuilt {
    /// What was asked for, as the operator named it (`run --mode site`, `[hub] mirror`...).
    pub what: &'static str,
    /// The cargo feature of `outpost-agent` that provides it.
    pub feature: &'static str,
}
