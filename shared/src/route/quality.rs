//! Route quality, sans-IO: per route and candidate, the requests answered, the errors, the fallbacks by reason and
//! the latency (p50/p95 from a [`Histogram`]), and how concentrated the traffic is — the top candidate's share and
//! the Herfindahl–Hirschman index of the shares — so an operator sees when a fallback carries the traffic.
//!
//! The agent counts into [`RouteQuality`] as it serves; the same record goes out in telemetry, to `/metrics` and,
//! merged per route, to `outpost-hub fleet status`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::select::Skip;
use crate::telemetry::Histogram;

/// One candidate's figures on one route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateQuality {
    /// Requests it answered.
    pub answered: u64,
    /// Requests it was tried on and failed (another candidate may then have answered).
    pub errors: u64,
    /// Requests it answered as a fallback, by the reason the candidate in front was passed over.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fallbacks: BTreeMap<Skip, u64>,
    /// Latency of its answers.
    pub latency: Histogram,
}

/// One route's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteQuality {
    /// Requests to the route.
    pub requests: u64,
    /// Requests no candidate answered.
    pub unanswered: u64,
    /// Per candidate capability.
    pub candidates: BTreeMap<String, CandidateQuality>,
}

/// How concentrated a route's traffic is.
#[derive(Debug, Clone, PartialEq)]
pub struct Concentration {
    /// The candidate that answered most.
    pub top: String,
    /// Its share of the answers, 0–1.
    pub top_share: f64,
    /// Sum of the squared shares, 1/n (even) to 1 (one candidate answers everything).
    pub hhi: f64,
}

impl RouteQuality {
    /// Counts a request `answered` by a candidate in `took` (`None`: no candidate could), after `erred` failed
    /// on it; `fallback` is why a candidate in front was passed over.
    pub fn record(&mut self, answered: Option<(&str, Duration)>, erred: &[&str], fallback: Option<Skip>) {
        self.requests += 1;
        for c in erred {
            self.candidates.entry((*c).to_owned()).or_default().errors += 1;
        }
        match answered {
            Some((c, took)) => {
                let q = self.candidates.entry(c.to_owned()).or_default();
                q.answered += 1;
                q.latency.record(took);
                if let Some(reason) = fallback {
                    *q.fallbacks.entry(reason).or_default() += 1;
                }
            }
            None => self.unanswered += 1,
        }
    }

    /// Adds another record of the same route (another device, another period); sums saturate, as devices send
    /// these.
    pub fn merge(&mut self, other: &RouteQuality) {
        self.requests = self.requests.saturating_add(other.requests);
        self.unanswered = self.unanswered.saturating_add(other.unanswered);
        for (c, o) in &other.candidates {
            let q = self.candidates.entry(c.clone()).or_default();
            q.answered = q.answered.saturating_add(o.answered);
            q.errors = q.errors.saturating_add(o.errors);
            for (reason, n) in &o.fallbacks {
                let f = q.fallbacks.entry(*reason).or_default();
                *f = f.saturating_add(*n);
            }
            q.latency.merge(&o.latency);
        }
    }

    /// Fallbacks on the route by reason.
    pub fn fallbacks(&self) -> BTreeMap<Skip, u64> {
        let mut out = BTreeMap::new();
        for q in self.candidates.values() {
            for (reason, n) in &q.fallbacks {
                let f: &mut u64 = out.entry(*reason).or_default();
                *f = f.saturating_add(*n);
            }
        }
        out
    }

    /// The top candidate's share and the HHI of the answers (`None`: nothing answered yet).
    pub fn concentration(&self) -> Option<Concentration> {
        let total: u64 = self.candidates.values().map(|q| q.answered).sum();
        if total == 0 {
            return None;
        }
        let share = |n: u64| n as f64 / total as f64;
        let (top, most) = self.candidates.iter().max_by_key(|(_, q)| q.answered).map(|(c, q)| (c, q.answered))?;
        let hhi = self.candidates.values().map(|q| share(q.answered).powi(2)).sum();
        Some(Concentration { top: top.clone(), top_share: share(most), hhi })
    }
}
