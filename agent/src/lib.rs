//! The Outpost edge agent: fetches, verifies and runs model packages on a device.
//!
//! `config` (agent.toml), `device` (the device directory and its atomic writes), `driver` (the update driver
//! over `shared::update`'s decisions), `quic` (the client to the hub). Still to come with the agent issue: the
//! inference API, the `status` details and the demo; later issues add site policy and telemetry.

pub mod config;
pub mod device;
pub mod driver;
pub mod quic;
