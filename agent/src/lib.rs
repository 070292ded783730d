//! The Outpost edge agent: fetches, verifies and runs model packages on a device.
//!
//! Will hold: the TUF client over QUIC and HTTPS, the update state machine driver, A/B slots, read-only tract
//! inference behind the Open Inference Protocol v2, site policy (declarative and WASM), the durable telemetry
//! queue and site-node mode. So far it holds `quic`, the client to the hub; the rest arrives with the agent issue.

pub mod quic;
