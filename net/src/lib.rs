//! Outpost's protocol in motion, shared by the hub, the site node and the agent: the QUIC [`server`] and
//! [`client`], their raw-public-key TLS configs ([`tls`]), the one TUF [`transport`] seam, and the log subscriber
//! the binaries install ([`logging`]; the libraries only emit `tracing` events), the services' malloc settings
//! ([`allocator`]), and the binaries' shell completions and man pages ([`docs`]).
//!
//! The protocol itself (frames, requests, limits) is sans-IO in `outpost_shared::wire`; each connection's admission
//! and attestation rules are sans-IO in [`session`]. This crate adds only the tokio + quinn driving around them,
//! behind an async [`server::Backend`] that the hub and the site node implement. It links neither the hub's store
//! nor its signing code, so the edge agent depends on it and not on `outpost-hub`.

pub mod allocator;
pub mod client;
pub mod docs;
pub mod logging;
pub mod server;
pub mod session;
pub mod tls;
pub mod transport;
