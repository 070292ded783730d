//! A candidate's circuit breaker, sans-IO on an injected monotonic time: after `failures_to_trip` consecutive
//! failures (errors, or answers over the latency budget) it opens and the route's next candidate answers; after
//! `cool_down` one request probes it, and a good answer closes it again (a bad one opens it for another cool-down).
//!
//! Not per-request guessing: while closed every request goes to the candidate, while open none does, and the
//! breaker says when it next changes on its own ([`Breaker::next_deadline`]).

use std::time::Duration;

/// When a breaker trips and how long it cools down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failures_to_trip: u32,
    /// How long it stays open before a probe.
    pub cool_down: Duration,
    /// An answer slower than this counts as a failure (`None`: only errors count).
    pub latency_budget: Option<Duration>,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy { failures_to_trip: 5, cool_down: Duration::from_secs(30), latency_budget: None }
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests go to the candidate; `failures` in a row so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// No request goes to the candidate until `until`.
    Open {
        /// The end of the cool-down.
        until: Duration,
    },
    /// One probe request is out since `since`; the others go elsewhere until it answers (or a cool-down passes
    /// without an answer, when another probe goes).
    HalfOpen {
        /// When the probe went.
        since: Duration,
    },
}

/// Whether a request may go to the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// The cool-down is over: this request is the probe.
    Probe,
    /// Open (or a probe is out): try the next candidate.
    Refused,
}

/// One candidate's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Its policy.
    pub policy: BreakerPolicy,
    state: BreakerState,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(policy: BreakerPolicy) -> Self {
        Breaker { policy, state: BreakerState::Closed { failures: 0 } }
    }

    /// Where it is.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a request at `now` may go to the candidate.
    pub fn admit(&mut self, now: Duration) -> Admission {
        if matches!(self.state, BreakerState::Closed { .. }) {
            return Admission::Allowed;
        }
        if self.next_deadline().is_some_and(|t| now >= t) {
            self.state = BreakerState::HalfOpen { since: now };
            return Admission::Probe;
        }
        Admission::Refused
    }

    /// The outcome of a request admitted at or before `now`: `ok` and how long it took. Returns the new state
    /// when it changed.
    pub fn record(&mut self, now: Duration, ok: bool, took: Duration) -> Option<BreakerState> {
        let good = ok && self.policy.latency_budget.is_none_or(|b| took <= b);
        let next = match (self.state, good) {
            (BreakerState::Closed { failures }, false) if failures + 1 >= self.policy.failures_to_trip => {
                BreakerState::Open { until: now.saturating_add(self.policy.cool_down) }
            }
            (BreakerState::Closed { failures }, false) => BreakerState::Closed { failures: failures + 1 },
            (BreakerState::Closed { .. }, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::HalfOpen { .. }, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::HalfOpen { .. }, false) => {
                BreakerState::Open { until: now.saturating_add(self.policy.cool_down) }
            }
            // An answer that was in flight when the breaker opened changes nothing.
            (BreakerState::Open { until }, _) => BreakerState::Open { until },
        };
        let changed = std::mem::discriminant(&next) != std::mem::discriminant(&self.state);
        self.state = next;
        changed.then_some(next)
    }

    /// When the breaker next lets a probe through by itself (`None`: closed).
    pub fn next_deadline(&self) -> Option<Duration> {
        match self.state {
            BreakerState::Closed { .. } => None,
            BreakerState::Open { until } => Some(until),
            BreakerState::HalfOpen { since } => Some(since.saturating_add(self.policy.cool_down)),
        }
    }
}
