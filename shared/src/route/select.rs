//! Which candidates of a route may answer one request, in order, sans-IO: those whose niche the request falls in
//! and that are usable now (installed, ready, healthy, allowed, not revoked, circuit closed), specialists first and
//! the fallback last; the others with the reason each was passed over.
//!
//! The driver tries the order until one answers (a candidate that errs on the request is passed over with
//! [`Skip::Erred`] and the next one answers), so a specialist going away never fails a request the fallback can
//! serve. A request no candidate can serve gets every reason back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{COST_TIER_PARAMETER, Candidate, Niche, Route};
use crate::manifest::Dim;

/// Why a candidate did not answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// The request is not in its niche (ordinary routing, not a fallback).
    OutsideNiche,
    /// No package of its capability is installed.
    NotInstalled,
    /// Installed but not loaded for serving (staging, or nothing active).
    NotReady,
    /// Its package is on trial and its health window failed.
    HealthFailed,
    /// The site policy refuses its package.
    RefusedByPolicy,
    /// Its package is revoked.
    Revoked,
    /// Its circuit breaker is open: it erred or answered over its latency budget too often, and cools down.
    CircuitOpen,
    /// It failed on this very request.
    Erred,
}

impl Skip {
    /// The reason as a label (`fallback_reason` in answers, metrics and telemetry).
    pub fn name(self) -> &'static str {
        match self {
            Skip::OutsideNiche => "outside_niche",
            Skip::NotInstalled => "not_installed",
            Skip::NotReady => "not_ready",
            Skip::HealthFailed => "health_failed",
            Skip::RefusedByPolicy => "refused_by_policy",
            Skip::Revoked => "revoked",
            Skip::CircuitOpen => "circuit_open",
            Skip::Erred => "error",
        }
    }
}

/// What routing reads from a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// Each input's shape.
    pub shapes: BTreeMap<String, Vec<u64>>,
    /// Request parameters given as strings (the cost tier is [`COST_TIER_PARAMETER`]).
    pub parameters: BTreeMap<String, String>,
}

impl Niche {
    /// Whether `request` falls in this niche.
    pub fn admits(&self, request: &RequestFacts) -> bool {
        let shape_fits = |(input, dims): (&String, &Vec<Dim>)| {
            request.shapes.get(input).is_some_and(|given| {
                given.len() == dims.len()
                    && given.iter().zip(dims).all(|(g, d)| matches!(d, Dim::Symbol(_)) || *d == Dim::Fixed(*g))
            })
        };
        let tier = request.parameters.get(COST_TIER_PARAMETER);
        self.shapes.iter().all(shape_fits)
            && self.cost_tier.as_ref().is_none_or(|t| tier == Some(t))
            && self.parameters.iter().all(|(k, v)| request.parameters.get(k) == Some(v))
    }
}

/// The candidates to try for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Indexes into the route's candidates, in the order to try them.
    pub order: Vec<usize>,
    /// Candidates passed over, with why.
    pub skipped: Vec<(usize, Skip)>,
}

impl Plan {
    /// Why the candidate at `order[tried]` answers rather than a candidate before it whose niche the request was
    /// in: the first such candidate's reason (`None`: nothing in front of it was meant for the request).
    pub fn fallback_reason(&self, answered: usize) -> Option<Skip> {
        self.skipped.iter().find(|(i, s)| *i < answered && *s != Skip::OutsideNiche).map(|(_, s)| *s)
    }

    /// Records that the candidate at `index` failed on the request.
    pub fn erred(&mut self, index: usize) {
        self.order.retain(|i| *i != index);
        self.skipped.push((index, Skip::Erred));
        self.skipped.sort_by_key(|(i, _)| *i);
    }
}

/// Orders `route`'s candidates for `request`; `usable` says whether a candidate can answer now, or why not.
pub fn plan(route: &Route, request: &RequestFacts, usable: impl Fn(&Candidate) -> Result<(), Skip>) -> Plan {
    let mut plan = Plan { order: vec![], skipped: vec![] };
    for (i, c) in route.candidates.iter().enumerate() {
        let verdict = if c.niche.admits(request) { usable(c) } else { Err(Skip::OutsideNiche) };
        match verdict {
            Ok(()) => plan.order.push(i),
            Err(skip) => plan.skipped.push((i, skip)),
        }
    }
    plan
}
