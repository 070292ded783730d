//! The system clock, injected into the hub's library code at the binary's edge.
//!
//! This is the one place in the hub allowed to read the operating system's clocks.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outpost_shared::clock::{Clock, UnixSeconds};

/// Wall time from `SystemTime`, monotonic time from `Instant`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[allow(clippy::disallowed_methods)] // The edge where real time enters.
impl Clock for SystemClock {
    fn wall(&self) -> UnixSeconds {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn monotonic(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed()
    }
}
