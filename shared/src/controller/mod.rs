//! The viability controller: scores each package of a capability from what the hub knows (evaluation records,
//! field telemetry, budgets, size, traffic, age, risk), proposes one action per package with the rule that fired,
//! projects the action's effect, and keeps its own proposals from oscillating. It recommends; it never acts.
//!
//! Invariants: pure (facts and `now` in, proposals out); every proposal carries the decomposition it was decided
//! on, the policy digest and the rule; a proposal that would change a package's state is held back while the
//! state is younger than the policy's dwell time, while reversals in the window are at their cap, and unless the
//! score is past the threshold by the hysteresis band (and, to undo a recent change, by the reversal margin too).

mod policy;
mod score;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;
use crate::digest::Digest;

pub use policy::{ControllerPolicy, Oscillation, Thresholds, Weights};
pub use score::{Component, Decomposition, Facts, Field, decompose};

/// Where a package stands in its capability, as the hub's records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// What a channel serves.
    Champion,
    /// A challenger running in shadow beside the champion.
    Shadow,
    /// Registered and passed its offline gate (promoted by a cycle), not released.
    Candidate,
    /// Registered, neither serving nor a candidate.
    Idle,
    /// Archived: kept, offered to nobody.
    Archived,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Champion => "champion",
            Role::Shadow => "shadow",
            Role::Candidate => "candidate",
            Role::Idle => "idle",
            Role::Archived => "archived",
        })
    }
}

/// What the controller proposes for one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Leave it as it is.
    NoOp,
    /// Stop offering it (a candidate or idle package, or a shadow that lost).
    Archive,
    /// Start it in shadow beside the champion.
    Shadow,
    /// Withdraw a champion from service (structural).
    Retire,
    /// Make a shadowed challenger the champion (structural).
    Promote,
}

impl Action {
    /// Structural actions need approval by a key holder other than the controller policy's author.
    pub fn is_structural(self) -> bool {
        matches!(self, Action::Promote | Action::Retire)
    }

    /// The role the package has once the action is carried out.
    pub fn role_after(self, role: Role) -> Role {
        match self {
            Action::NoOp => role,
            Action::Archive | Action::Retire => Role::Archived,
            Action::Shadow => Role::Shadow,
            Action::Promote => Role::Champion,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::NoOp => "no-op",
            Action::Archive => "archive",
            Action::Shadow => "shadow",
            Action::Retire => "retire",
            Action::Promote => "promote",
        })
    }
}

/// One change of a package's role that was carried out (by an approved proposal, or as the consequence of one:
/// a champion becomes a shadow when another is promoted): what the oscillation controls look back on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The role it left.
    pub from: Role,
    /// The role it took.
    pub to: Role,
    /// When.
    pub at: UnixSeconds,
}

/// The projected effect of carrying a proposal out, in the units telemetry reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// Bytes to ship: package size × devices that would download it.
    pub bytes_to_ship: u64,
    /// Model memory on each device serving it, in bytes (the package's measured peak, else its budget).
    pub device_memory_bytes: u64,
    /// Fleet p95 latency once carried out, in milliseconds (the package's offline p95), if known.
    pub p95_latency_ms: Option<f64>,
    /// Share of the capability's traffic that moves to (or away from) the package, 0–1.
    pub traffic_moving: f64,
}

/// A projection set against what telemetry showed once the proposal was carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// Field → (projected, actual, relative error). A field with no actual figure is absent.
    pub fields: BTreeMap<String, (f64, f64, f64)>,
    /// Fields whose relative error exceeds the policy's bound.
    pub flagged: Vec<String>,
}

/// What telemetry showed after a proposal was carried out (fields it could not measure are `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Actuals {
    /// Bytes the devices downloaded for the package.
    pub bytes_shipped: Option<u64>,
    /// Model memory reported on devices.
    pub device_memory_bytes: Option<u64>,
    /// Fleet p95 latency, milliseconds.
    pub p95_latency_ms: Option<f64>,
    /// Share of traffic that moved.
    pub traffic_moved: Option<f64>,
}

/// Compares a projection with actuals: relative error `|actual − projected| / max(|projected|, floor)` per field
/// (the floor keeps a projection of 0 from dividing by zero: 1 byte, 1 ms, 1 % of traffic), flagged above `bound`.
pub fn reconcile(projected: &Projection, actual: &Actuals, bound: f64) -> Reconciliation {
    let mut fields = BTreeMap::new();
    let mut put = |name: &str, p: f64, a: Option<f64>, floor: f64| {
        if let Some(a) = a {
            fields.insert(name.to_owned(), (p, a, (a - p).abs() / p.abs().max(floor)));
        }
    };
    put("bytes_to_ship", projected.bytes_to_ship as f64, actual.bytes_shipped.map(|b| b as f64), 1.0);
    put("device_memory_bytes", projected.device_memory_bytes as f64, actual.device_memory_bytes.map(|b| b as f64), 1.0);
    if let Some(p) = projected.p95_latency_ms {
        put("p95_latency_ms", p, actual.p95_latency_ms, 1.0);
    }
    put("traffic_moving", projected.traffic_moving, actual.traffic_moved, 0.01);
    let flagged = fields.iter().filter(|(_, (_, _, e))| e.is_nan() || *e > bound).map(|(k, _)| k.clone()).collect();
    Reconciliation { fields, flagged }
}

/// One package's proposal: the action, the rule that fired, the decomposition it was decided on, what was held
/// back by the oscillation controls (if anything), and the projected effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The package.
    pub package: Digest,
    /// `name@version`.
    pub label: String,
    /// Its capability.
    pub capability: String,
    /// The channel the proposal acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Its role when proposed.
    pub role: Role,
    /// What to do.
    pub action: Action,
    /// The rule that fired, in words with its numbers.
    pub rule: String,
    /// A change the score alone would have proposed, held back, and why (dwell, reversal cap, margin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<String>,
    /// The package's score.
    pub decomposition: Decomposition,
    /// The champion's score it was compared with, for shadows and candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub champion_total: Option<f64>,
    /// The controller policy's digest.
    pub policy: Digest,
    /// The projected effect of carrying it out (zero for a no-op).
    pub projection: Projection,
    /// When it was proposed.
    pub at: UnixSeconds,
}

/// The oscillation state of one package: its role since when, and its recent changes (newest last).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Changes carried out, oldest first.
    pub changes: Vec<Change>,
}

impl History {
    /// Reversals within `window` before `now`: changes that moved the package back to a role it had just left.
    pub fn reversals_within(&self, now: UnixSeconds, window: u64) -> usize {
        self.changes.windows(2).filter(|w| now.saturating_sub(w[1].at) <= window && w[1].to == w[0].from).count()
    }

    /// The last change, if any.
    pub fn last(&self) -> Option<&Change> {
        self.changes.last()
    }
}

/// Proposes an action for `facts` (a package of a capability) given the champion's score, the policy and the
/// package's history, at `now`.
pub fn propose(
    facts: &Facts,
    champion: Option<&Decomposition>,
    policy: &ControllerPolicy,
    history: &History,
    now: UnixSeconds,
) -> Proposal {
    let d = decompose(facts, policy);
    let t = &policy.thresholds;
    let band = policy.oscillation.hysteresis / 2.0;
    let champion_total = champion.map(|c| c.total);
    // The score's own answer: (action, rule, how far past its threshold it is).
    let (action, rule, past): (Action, String, f64) = match facts.role {
        Role::Shadow => match champion_total {
            Some(c) if d.total - c >= t.promote_margin + band && facts.field.inferences >= t.min_inferences => (
                Action::Promote,
                format!(
                    "shadow beats the champion: total {:.4} − champion {c:.4} = {:+.4} ≥ promote_margin {} + \
                     hysteresis/2 {band} with {} inferences (≥ {})",
                    d.total,
                    d.total - c,
                    t.promote_margin,
                    facts.field.inferences,
                    t.min_inferences
                ),
                d.total - c - t.promote_margin,
            ),
            Some(c) if c - d.total >= t.archive_margin + band => (
                Action::Archive,
                format!(
                    "shadow trails the champion: champion {c:.4} − total {:.4} = {:.4} ≥ archive_margin {} + \
                     hysteresis/2 {band}",
                    d.total,
                    c - d.total,
                    t.archive_margin
                ),
                c - d.total - t.archive_margin,
            ),
            _ => (Action::NoOp, no_op_rule(&d, champion_total, t, band, facts), 0.0),
        },
        Role::Champion if d.total <= t.retire_below - band => (
            Action::Retire,
            format!("champion's total {:.4} ≤ retire_below {} − hysteresis/2 {band}", d.total, t.retire_below),
            t.retire_below - d.total,
        ),
        Role::Candidate => match champion_total {
            Some(c) if d.total >= c - t.shadow_margin + band && facts.risk_low => (
                Action::Shadow,
                format!(
                    "candidate within shadow_margin {} of the champion ({:.4} vs {c:.4}, hysteresis/2 {band}) and \
                     low risk",
                    t.shadow_margin, d.total
                ),
                d.total - (c - t.shadow_margin),
            ),
            _ => (Action::NoOp, no_op_rule(&d, champion_total, t, band, facts), 0.0),
        },
        Role::Idle if facts.idle_days >= t.archive_idle_days => (
            Action::Archive,
            format!("idle for {:.1} days ≥ archive_idle_days {}", facts.idle_days, t.archive_idle_days),
            facts.idle_days - t.archive_idle_days,
        ),
        _ => (Action::NoOp, no_op_rule(&d, champion_total, t, band, facts), 0.0),
    };
    let (action, rule, held_back) = hold_back(action, rule, past, facts.role, policy, history, now);
    let projection = if action == Action::NoOp { Projection::default() } else { project(action, facts) };
    Proposal {
        package: facts.package,
        label: facts.label.clone(),
        capability: facts.capability.clone(),
        channel: facts.channel.clone(),
        role: facts.role,
        action,
        rule,
        held_back,
        decomposition: d,
        champion_total,
        policy: policy.digest(),
        projection,
        at: now,
    }
}

fn no_op_rule(d: &Decomposition, champion: Option<f64>, t: &Thresholds, band: f64, facts: &Facts) -> String {
    match (facts.role, champion) {
        (Role::Shadow, Some(c)) => format!(
            "shadow within the band: total {:.4} vs champion {c:.4} ({:+.4}); promote needs ≥ {} + {band} with ≥ {} \
             inferences ({} so far), archive ≤ −({} + {band})",
            d.total,
            d.total - c,
            t.promote_margin,
            t.min_inferences,
            facts.field.inferences,
            t.archive_margin
        ),
        (Role::Champion, _) => format!("champion's total {:.4} > retire_below {} − {band}", d.total, t.retire_below),
        (Role::Candidate, Some(c)) if !facts.risk_low => {
            format!("candidate is not low risk: shadowing it is a release decision, not the controller's (vs {c:.4})")
        }
        (Role::Candidate, Some(c)) => {
            format!("candidate total {:.4} below champion {c:.4} − shadow_margin {} + {band}", d.total, t.shadow_margin)
        }
        (Role::Idle, _) => format!("idle {:.1} days < archive_idle_days {}", facts.idle_days, t.archive_idle_days),
        (Role::Archived, _) => "archived: nothing to do".into(),
        (_, None) => "no champion to compare with".into(),
    }
}

/// Applies the oscillation controls to the score's answer: dwell time, reversal cap, and the margin a reversal of
/// a recent change needs beyond the hysteresis band.
fn hold_back(
    action: Action,
    rule: String,
    past: f64,
    role: Role,
    policy: &ControllerPolicy,
    history: &History,
    now: UnixSeconds,
) -> (Action, String, Option<String>) {
    if action == Action::NoOp {
        return (action, rule, None);
    }
    let o = &policy.oscillation;
    let Some(last) = history.last() else { return (action, rule, None) };
    let age = now.saturating_sub(last.at);
    let held = |why: String| (Action::NoOp, format!("held back: {why}"), Some(format!("{action}: {rule}")));
    if age < o.min_dwell_secs {
        return held(format!("the package became {} {age} s ago, min_dwell_secs {}", last.to, o.min_dwell_secs));
    }
    let reverses = action.role_after(role) == last.from && age <= o.reversal_window_secs;
    if reverses {
        if history.reversals_within(now, o.reversal_window_secs) >= o.max_reversals {
            return held(format!(
                "{} reversal(s) within {} s already, max_reversals {}",
                history.reversals_within(now, o.reversal_window_secs),
                o.reversal_window_secs,
                o.max_reversals
            ));
        }
        if past < o.reversal_margin {
            return held(format!(
                "it would undo the change from {} of {age} s ago and is past its threshold by {past:.4} < \
                 reversal_margin {}",
                last.from, o.reversal_margin
            ));
        }
    }
    (action, rule, None)
}

/// The projected effect of carrying `action` out on `facts`' package.
fn project(action: Action, facts: &Facts) -> Projection {
    let memory = facts.peak_memory_bytes.unwrap_or(facts.memory_budget_bytes);
    match action {
        Action::NoOp => Projection::default(),
        // Every device of the channel downloads it (a shadow runs beside the champion: same devices).
        Action::Shadow | Action::Promote => Projection {
            bytes_to_ship: facts.size_bytes.saturating_mul(facts.channel_devices),
            device_memory_bytes: memory,
            p95_latency_ms: facts.offline_p95_ms,
            traffic_moving: if action == Action::Promote { facts.champion_traffic_share } else { 0.0 },
        },
        Action::Archive | Action::Retire => Projection {
            bytes_to_ship: 0,
            device_memory_bytes: 0,
            p95_latency_ms: None,
            traffic_moving: facts.field.traffic_share,
        },
    }
}
