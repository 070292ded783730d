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

/// Random bytes from the operating system (through aws-lc-rs), injected where keys are made.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRng;

impl outpost_shared::rng::Rng for SystemRng {
    fn fill(&mut self, buf: &mut [u8]) {
        // The system generator failing means the OS cannot provide entropy: nothing safe can continue.
        aws_lc_rs::rand::fill(buf).expect("the operating system's random generator failed");
    }
}
