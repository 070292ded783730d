//! The Outpost edge agent: fetches, verifies and runs model packages on a device.
//!
//! `config` (agent.toml), `device` (the device directory and its atomic writes), `driver` (the update driver
//! over `shared::update`'s decisions), `inference` (the local Open Inference Protocol v2 API over the active
//! model), `transport` (the adapter to sigstore-tuf over `outpost_net`'s one transport trait, which the QUIC
//! client to the hub, `outpost_net::client`, implements), `mirror` (the client to a static HTTP(S) mirror of the
//! hub's TUF repository, the other transport), `site` (the site node, serving through `outpost_net::server`), `tuf` (the TUF client over either, shared with `outpost-tuf-conformance`), `gateway` (firmware for
//! the secondaries behind this device), `policy_wasm` (feature `wasm`: site-policy rules as sandboxed
//! WebAssembly modules), `site_policy` (the site policy a device or site node enforces, with its last good copy).
//! Later issues add telemetry.

pub mod attest;
pub mod config;
pub mod device;
pub mod driver;
pub mod gateway;
pub mod inference;
pub mod mirror;
#[cfg(feature = "wasm")]
pub mod policy_wasm;
pub mod site;
pub mod site_policy;
pub mod telemetry;
pub mod transport;
pub mod tuf;
