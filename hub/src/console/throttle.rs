//! Login throttling: after a few failed logins for one user name, further attempts for that name are refused
//! without checking the password for a cool-down that doubles with each further failure, up to a ceiling.
//!
//! Invariants: an unknown name is throttled like a known one (no hint of which names exist); a success clears the
//! name's record; the table is bounded (the oldest records go first), so a flood of made-up names costs a fixed
//! amount of memory; time comes from the caller (the hub's clock), never from the OS here.

use std::collections::HashMap;
use std::sync::Mutex;

use outpost_shared::clock::UnixSeconds;

/// How logins are throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Failures allowed before the first cool-down.
    pub free_failures: u32,
    /// The first cool-down, in seconds; each further failure doubles it.
    pub first_cooldown_secs: u64,
    /// The longest cool-down, in seconds.
    pub max_cooldown_secs: u64,
    /// Names tracked at once.
    pub max_names: usize,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        ThrottleLimits { free_failures: 5, first_cooldown_secs: 2, max_cooldown_secs: 900, max_names: 10_000 }
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    /// No attempt before this time.
    until: UnixSeconds,
    /// Last failure, for dropping the oldest records.
    last: UnixSeconds,
}

/// Failed logins per user name.
#[derive(Debug, Default)]
pub struct Throttle {
    names: Mutex<HashMap<String, Record>>,
    limits: ThrottleLimits,
}

impl Throttle {
    /// An empty table with these limits.
    pub fn new(limits: ThrottleLimits) -> Throttle {
        Throttle { names: Mutex::default(), limits }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(seconds)` when `name` may not try before that many seconds from `now`.
    pub fn check(&self, name: &str, now: UnixSeconds) -> Result<(), u64> {
        match self.names().get(name) {
            Some(r) if r.until > now => Err(r.until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed login for `name` at `now`.
    pub fn failed(&self, name: &str, now: UnixSeconds) {
        let l = self.limits;
        let mut names = self.names();
        if !names.contains_key(name) && names.len() >= l.max_names.max(1) {
            let oldest = names.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                names.remove(&k);
            }
        }
        let r = names.entry(name.to_owned()).or_insert(Record { failures: 0, until: 0, last: now });
        r.failures = r.failures.saturating_add(1);
        r.last = now;
        if r.failures >= l.free_failures {
            let doublings = (r.failures - l.free_failures).min(32);
            let wait = l.first_cooldown_secs.saturating_mul(1u64 << doublings).min(l.max_cooldown_secs);
            r.until = now.saturating_add(wait);
        }
    }

    /// Clears `name`'s failures (it logged in).
    pub fn succeeded(&self, name: &str) {
        self.names().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guessed_password_is_refused_for_a_growing_cooldown_after_a_few_failures() {
        let t = Throttle::new(ThrottleLimits {
            free_failures: 3,
            first_cooldown_secs: 2,
            max_cooldown_secs: 10,
            max_names: 10,
        });
        for _ in 0..2 {
            t.failed("op", 100);
            assert_eq!(t.check("op", 100), Ok(()));
        }
        t.failed("op", 100);
        assert_eq!(t.check("op", 100), Err(2));
        assert_eq!(t.check("op", 102), Ok(()));
        t.failed("op", 102);
        assert_eq!(t.check("op", 102), Err(4));
        for _ in 0..5 {
            t.failed("op", 200);
        }
        assert_eq!(t.check("op", 200), Err(10), "capped");
        assert_eq!(t.check("other", 200), Ok(()), "another name is not throttled");
        t.succeeded("op");
        assert_eq!(t.check("op", 200), Ok(()));
    }

    #[test]
    fn a_flood_of_made_up_names_keeps_the_table_bounded() {
        let t = Throttle::new(ThrottleLimits { max_names: 3, free_failures: 1, ..ThrottleLimits::default() });
        for i in 0..10u64 {
            t.failed(&format!("n{i}"), i);
        }
        assert_eq!(t.names().len(), 3);
        assert!(t.check("n9", 9).is_err(), "the newest are kept");
    }
}
