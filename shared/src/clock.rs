//! The clock trait every library crate takes time from, and a manual clock for tests and simulations.
//!
//! Library code never reads the system clock itself (clippy's `disallowed-methods` enforces it); the binaries
//! inject a system clock at the edge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seconds since the Unix epoch (UTC), the unit of every recorded time in Outpost.
pub type UnixSeconds = u64;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync {
    /// Wall-clock time, in seconds since the Unix epoch. May jump, even backwards.
    fn wall(&self) -> UnixSeconds;
    /// Monotonic time since an arbitrary origin. Never goes backwards.
    fn monotonic(&self) -> Duration;
}

/// A clock that only moves when told to: for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall: AtomicU64,
    mono_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock showing `wall` seconds since the epoch and a monotonic reading of zero.
    pub fn new(wall: UnixSeconds) -> Self {
        ManualClock { wall: AtomicU64::new(wall), mono_nanos: AtomicU64::new(0) }
    }

    /// Moves both readings forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.wall.fetch_add(d.as_secs(), Ordering::SeqCst);
        self.mono_nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Sets the wall clock (which may go backwards); the monotonic reading is unaffected.
    pub fn set_wall(&self, wall: UnixSeconds) {
        self.wall.store(wall, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn wall(&self) -> UnixSeconds {
        self.wall.load(Ordering::SeqCst)
    }
    fn monotonic(&self) -> Duration {
        Duration::from_nanos(self.mono_nanos.load(Ordering::SeqCst))
    }
}

/// Formats Unix seconds as an RFC 3339 UTC timestamp (`2026-11-28T15:04:05Z`).
pub fn format_rfc3339(t: UnixSeconds) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether `s` is an RFC 3339 date-time with an explicit offset (`Z` or `±HH:MM`).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20 || !(digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10)) {
        return false;
    }
    let time_ok = matches!(b[10], b'T' | b't' | b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !time_ok {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    if !(1..=12).contains(&num(5..7)) || !(1..=31).contains(&num(8..10)) || num(11..13) > 23 || num(14..16) > 59 {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_881_600), "2026-11-28T16:00:00Z");
        assert_eq!(format_rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    }

    #[test]
    fn rfc3339_validation_rejects_offsetless_and_garbage() {
        assert!(is_rfc3339("2026-11-28T15:04:05Z"));
        assert!(is_rfc3339("2026-11-28T15:04:05.123+01:00"));
        assert!(!is_rfc3339("2026-11-28T15:04:05"));
        assert!(!is_rfc3339("2026-13-28T15:04:05Z"));
        assert!(!is_rfc3339("yesterday"));
    }

    #[test]
    fn manual_clock_wall_can_go_backwards_but_monotonic_cannot() {
        let c = ManualClock::new(1000);
        c.advance(Duration::from_secs(5));
        c.set_wall(10);
        assert_eq!(c.wall(), 10);
        assert_eq!(c.monotonic(), Duration::from_secs(5));
    }
}
