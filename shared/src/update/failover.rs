//! Which hub replica an agent or site node talks to, sans-IO: replicas share one hub identity and its data, so any
//! of them serves a device alike; they are tried round robin, each round starting at the one that last answered.
//!
//! A round ends when every replica failed in turn. The agent's update checks are its rounds (a failed round fails
//! the check, and [`Checks`](super::Checks) schedules the next after the poll interval and its jitter); a site
//! node, which has no schedule of its own, waits out a [`Backoff`] before the next round ([`Replicas::ready`]).

use crate::clock::UnixSeconds;
use crate::rng::Rng;

/// How long a caller without a schedule of its own waits after a round that reached no replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failed round, in seconds; it doubles with each further failed round.
    pub first_secs: u64,
    /// The longest wait, however many rounds failed.
    pub max_secs: u64,
}

impl Backoff {
    /// A site node's: 2 s, doubling up to a minute. Its devices ask again at their own polls, so a longer wait
    /// would only delay the site's recovery once a replica is back.
    pub const SITE_NODE: Backoff = Backoff { first_secs: 2, max_secs: 60 };

    /// The wait after `rounds` failed rounds in a row (at least 1): `first_secs` doubled per round after the
    /// first, capped at `max_secs`, plus a jitter drawn from `rng`, uniform in `[0, wait / 2]`, so the callers
    /// that lost the same replicas at once do not come back in lockstep.
    pub fn wait(&self, rounds: u32, rng: &mut dyn Rng) -> u64 {
        let doublings = rounds.saturating_sub(1).min(63);
        let wait = self.first_secs.saturating_mul(1u64 << doublings).min(self.max_secs);
        let mut bytes = [0u8; 8];
        rng.fill(&mut bytes);
        wait + u64::from_le_bytes(bytes) % (wait / 2 + 1)
    }
}

/// A switch from one replica to the next, after the first failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch<A> {
    /// The replica that failed.
    pub from: A,
    /// The replica to try next (the same one when there is only one).
    pub to: A,
    /// Every replica failed in this round: `to` is where it began, and the next round starts there after a wait.
    pub round_over: bool,
}

/// The replicas of one hub (at least one), in the order configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicas<A> {
    addresses: Vec<A>,
    /// The one to talk to: the one that last answered, or the next to try.
    current: usize,
    /// Replicas failed in the round under way.
    failed_in_round: usize,
    /// Rounds in a row that reached no replica.
    rounds_failed: u32,
    /// The wait after a failed round; `None`: the caller paces its rounds itself.
    backoff: Option<Backoff>,
    /// No new round before this time (after a failed round, with a backoff).
    retry_at: Option<UnixSeconds>,
}

impl<A: Clone> Replicas<A> {
    /// Round robin over `addresses`, starting with the first; `None` when there are none. Rounds are paced by
    /// the caller ([`Replicas::ready`] is always true) unless [`with_backoff`](Replicas::with_backoff) says.
    pub fn new(addresses: Vec<A>) -> Option<Self> {
        (!addresses.is_empty()).then_some(Replicas {
            addresses,
            current: 0,
            failed_in_round: 0,
            rounds_failed: 0,
            backoff: None,
            retry_at: None,
        })
    }

    /// The same replicas, waiting `backoff` after each round that reached none of them.
    pub fn with_backoff(self, backoff: Backoff) -> Self {
        Replicas { backoff: Some(backoff), ..self }
    }

    /// The replica to talk to now.
    pub fn current(&self) -> &A {
        &self.addresses[self.current]
    }

    /// How many replicas there are.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Always false: there is at least one replica.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The current replica answered: the next round starts with it, and any backoff is over.
    pub fn worked(&mut self) {
        self.failed_in_round = 0;
        self.rounds_failed = 0;
        self.retry_at = None;
    }

    /// The current replica could not be reached at `now` (connecting failed, or the connection was lost or went
    /// silent): move to the next. When that ends the round, a backoff (if any) decides when the next may start.
    pub fn failed(&mut self, now: UnixSeconds, rng: &mut dyn Rng) -> Switch<A> {
        let from = self.current().clone();
        self.current = (self.current + 1) % self.addresses.len();
        self.failed_in_round += 1;
        let round_over = self.failed_in_round >= self.addresses.len();
        if round_over {
            self.failed_in_round = 0;
            self.rounds_failed = self.rounds_failed.saturating_add(1);
            self.retry_at = self.backoff.map(|b| now.saturating_add(b.wait(self.rounds_failed, rng)));
        }
        Switch { from, to: self.current().clone(), round_over }
    }

    /// Whether a new round may start at `now` (with a backoff: not before it is over).
    pub fn ready(&self, now: UnixSeconds) -> bool {
        self.retry_at.is_none_or(|t| t <= now)
    }

    /// When the next round may start, while a backoff holds it.
    pub fn retry_at(&self) -> Option<UnixSeconds> {
        self.retry_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn a_failed_replica_passes_to_the_next_and_a_round_ends_where_it_began() {
        let mut r = Replicas::new(vec!["a", "b", "c"]).unwrap();
        let mut rng = SeededRng::new(1);
        assert_eq!(r.failed(0, &mut rng), Switch { from: "a", to: "b", round_over: false });
        r.worked();
        // The next round starts at the one that answered last.
        assert_eq!(*r.current(), "b");
        assert_eq!(r.failed(0, &mut rng), Switch { from: "b", to: "c", round_over: false });
        assert_eq!(r.failed(0, &mut rng), Switch { from: "c", to: "a", round_over: false });
        assert_eq!(r.failed(0, &mut rng), Switch { from: "a", to: "b", round_over: true });
        assert!(r.ready(0), "without a backoff the caller paces its rounds");
    }

    #[test]
    fn one_replica_is_a_round_of_one() {
        let mut r = Replicas::new(vec![7]).unwrap();
        assert_eq!(r.failed(0, &mut SeededRng::new(1)), Switch { from: 7, to: 7, round_over: true });
        assert_eq!(Replicas::<u8>::new(vec![]), None);
    }

    #[test]
    fn failed_rounds_back_off_doubling_with_jitter_up_to_the_cap_until_a_replica_answers() {
        let backoff = Backoff { first_secs: 2, max_secs: 10 };
        let mut r = Replicas::new(vec!["a", "b"]).unwrap().with_backoff(backoff);
        let mut rng = SeededRng::new(3);
        let (mut waits, mut now) = (Vec::new(), 100);
        for _ in 0..5 {
            assert!(r.ready(now), "the backoff of the round before is over");
            assert!(!r.failed(now, &mut rng).round_over, "the round goes on to the next replica at once");
            assert!(r.failed(now, &mut rng).round_over);
            let wait = r.retry_at().unwrap() - now;
            assert!(!r.ready(now + wait - 1) && r.ready(now + wait));
            waits.push(wait);
            now += wait;
        }
        for (wait, base) in waits.iter().zip([2, 4, 8, 10, 10]) {
            assert!((base..=base + base / 2).contains(wait), "{waits:?}");
        }
        r.worked();
        assert!(r.ready(100) && r.retry_at().is_none());
        // Jitter: many draws of the same round spread over its range.
        let draws: std::collections::BTreeSet<u64> = (0..64).map(|_| backoff.wait(3, &mut rng)).collect();
        assert!(draws.len() > 3 && draws.iter().all(|w| (8..=12).contains(w)), "{draws:?}");
    }
}
