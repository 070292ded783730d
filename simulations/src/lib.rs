//! Simulations for Outpost: fleets of agents against a real hub, fault scenarios and benchmark drivers.
//!
//! Holds no product logic: it only drives the hub and agent crates, in process or as processes. The library holds
//! what several binaries share: an inference API client ([`http`]) and what /proc says of a process ([`procfs`]),
//! and the fleet simulator behind `outpost-sim fleet` ([`fleet`]).
//!
//! The binaries are one-shot tools: their progress and results are plain lines for the person running them
//! (stderr, stdout). The hubs and agents they run in-process log through `tracing`; [`log_warnings`] shows their
//! warnings and errors among those lines.

pub mod fleet;
pub mod http;
pub mod procfs;

/// Installs the text log subscriber at `warn` (or as `RUST_LOG` says), so what goes wrong inside the hub or agent
/// code a simulation drives is seen; a subscriber already installed is left alone.
pub fn log_warnings() {
    let level = std::env::var("RUST_LOG").ok().filter(|l| !l.trim().is_empty()).unwrap_or_else(|| "warn".into());
    if let Err(e) = outpost_net::logging::init(outpost_net::logging::LogFormat::Text, Some(&level)) {
        eprintln!("logging: {e}");
    }
}
