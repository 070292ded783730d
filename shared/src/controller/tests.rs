//! The controller's rules, its explanations and its oscillation controls, on a virtual clock: adversarial
//! telemetry (noise around a threshold, a metric that flips every hour, a slow drift) fed hour by hour, every
//! proposal approved at once (the worst case for flip-flop).

use std::path::Path;

use super::*;
use crate::rng::{Rng, SeededRng};

const HOUR: u64 = 3600;
const T0: UnixSeconds = 1_800_000_000;

fn facts(label: &str, role: Role, quality: f64) -> Facts {
    Facts {
        package: Digest::of(label.as_bytes()),
        label: label.into(),
        capability: "ocr.text-direction".into(),
        channel: Some("stable".into()),
        role,
        risk_low: true,
        risk_score: 1.0,
        quality: Some(("top1_accuracy".into(), quality, 0.90, 0.0)),
        field: Field {
            inferences: 50_000,
            errors: 5,
            rollbacks: 0,
            devices: 10,
            p95_ms: Some(2.0),
            traffic_share: if role == Role::Champion { 1.0 } else { 0.0 },
        },
        offline_p95_ms: Some(2.0),
        latency_budget_ms: 25.0,
        peak_memory_bytes: Some(8 << 20),
        memory_budget_bytes: 64 << 20,
        size_bytes: 600_000,
        size_budget_bytes: 2 << 20,
        channel_devices: 10,
        champion_traffic_share: 1.0,
        idle_days: 0.0,
    }
}

#[test]
fn the_default_policy_is_valid_and_a_policy_whose_weights_do_not_sum_to_one_is_refused_by_key() {
    let text = toml::to_string(&ControllerPolicy::default()).unwrap();
    assert_eq!(ControllerPolicy::from_toml(&text, Path::new("p.toml")).unwrap(), ControllerPolicy::default());
    let bad = "version = 1\nauthor = \"a\"\n[weights]\noffline_quality = 0.9\n";
    let e = ControllerPolicy::from_toml(bad, Path::new("p.toml")).unwrap_err().to_string();
    assert!(e.contains("weights") && e.contains("not 1"), "{e}");
    let bad = "version = 1\nauthor = \"a\"\n[thresholds]\nretire_below = 1.5\n";
    let e = ControllerPolicy::from_toml(bad, Path::new("p.toml")).unwrap_err().to_string();
    assert!(e.contains("thresholds.retire_below"), "{e}");
    let bad = "version = 1\nauthor = \"a\"\n[oscillation]\nmin_dwell_secs = 100\nreversal_window_secs = 10\n";
    assert!(ControllerPolicy::from_toml(bad, Path::new("p.toml")).is_err());
}

#[test]
fn every_component_names_its_inputs_and_weight_and_one_without_data_is_left_out_of_the_total() {
    let p = ControllerPolicy::default();
    let mut f = facts("b@1", Role::Shadow, 0.92);
    let d = decompose(&f, &p);
    assert_eq!(d.components.len(), 8);
    let q = d.components.iter().find(|c| c.name == "offline_quality").unwrap();
    // 0.5 + (0.92 − 0.90) / (2 × 0.05) = 0.7.
    assert!((q.value.unwrap() - 0.7).abs() < 1e-9, "{q:?}");
    assert_eq!(q.inputs["champion"], 0.90);
    assert_eq!(q.weight, 0.35);
    let weighted: f64 = d.components.iter().map(|c| c.weight * c.value.unwrap()).sum();
    assert!((d.total - weighted).abs() < 1e-9, "every component scored: the total is the weighted sum");

    // No telemetry yet: reliability is not scored (not 0, not 1) and its weight leaves the total.
    f.field = Field::default();
    f.field.p95_ms = None;
    let d = decompose(&f, &p);
    let r = d.components.iter().find(|c| c.name == "field_reliability").unwrap();
    assert_eq!(r.value, None);
    assert!(r.formula.contains("no field telemetry"));
    let (sum, w) = d
        .components
        .iter()
        .filter_map(|c| c.value.map(|v| (c.weight * v, c.weight)))
        .fold((0.0, 0.0), |(s, w), (a, b)| (s + a, w + b));
    assert!((d.total - sum / w).abs() < 1e-9);
}

#[test]
fn a_shadow_that_beats_the_champion_is_proposed_for_promotion_with_its_rule_and_projection() {
    let p = ControllerPolicy::default();
    let champion = decompose(&facts("a@1", Role::Champion, 0.90), &p);
    let proposal = propose(&facts("b@1", Role::Shadow, 0.93), Some(&champion), &p, &History::default(), T0);
    assert_eq!(proposal.action, Action::Promote, "{}", proposal.rule);
    assert!(proposal.rule.contains("shadow beats the champion") && proposal.rule.contains("promote_margin"));
    assert_eq!(proposal.policy, p.digest());
    assert_eq!(proposal.projection.bytes_to_ship, 6_000_000, "600 kB to each of 10 devices");
    assert_eq!(proposal.projection.traffic_moving, 1.0);
    assert!(Action::Promote.is_structural() && !Action::Shadow.is_structural());

    // Too few field inferences: no promotion whatever the score.
    let mut few = facts("b@1", Role::Shadow, 0.93);
    few.field.inferences = 10;
    few.field.errors = 0;
    assert_eq!(propose(&few, Some(&champion), &p, &History::default(), T0).action, Action::NoOp);
    // Idle for long: archive. A high-risk candidate is never shadowed by the controller.
    let mut idle = facts("c@1", Role::Idle, 0.9);
    idle.idle_days = 45.0;
    assert_eq!(propose(&idle, Some(&champion), &p, &History::default(), T0).action, Action::Archive);
    let mut risky = facts("d@1", Role::Candidate, 0.95);
    risky.risk_low = false;
    let no = propose(&risky, Some(&champion), &p, &History::default(), T0);
    assert_eq!(no.action, Action::NoOp);
    assert!(no.rule.contains("not low risk"), "{}", no.rule);
    assert_eq!(
        propose(&facts("e@1", Role::Candidate, 0.90), Some(&champion), &p, &History::default(), T0).action,
        Action::Shadow
    );
}

#[test]
fn a_projection_far_from_actuals_is_flagged() {
    let projected = Projection {
        bytes_to_ship: 6_000_000,
        device_memory_bytes: 8 << 20,
        p95_latency_ms: Some(2.0),
        traffic_moving: 1.0,
    };
    let close = Actuals {
        bytes_shipped: Some(5_400_000),
        device_memory_bytes: Some(9 << 20),
        p95_latency_ms: Some(2.2),
        traffic_moved: Some(0.95),
    };
    assert!(reconcile(&projected, &close, 0.25).flagged.is_empty());
    let far = Actuals { bytes_shipped: Some(18_000_000), p95_latency_ms: Some(2.1), ..Actuals::default() };
    let r = reconcile(&projected, &far, 0.25);
    assert_eq!(r.flagged, vec!["bytes_to_ship".to_owned()], "{r:?}");
    assert!((r.fields["bytes_to_ship"].2 - 2.0).abs() < 1e-9);
    assert!(!r.fields.contains_key("traffic_moving"), "no actual, no comparison");
}

/// Two packages, `a` the champion and `b` its shadow, fed hour by hour for `hours`: `gap(h)` is b's offline
/// quality minus a's at hour h. Every proposal is carried out at once (a promotion demotes the champion to
/// shadow). Returns the hours at which the champion changed, and the largest number of reversals any package
/// had within the policy's window.
fn simulate(policy: &ControllerPolicy, hours: u64, gap: impl Fn(u64) -> f64) -> (Vec<u64>, usize) {
    let (mut a_role, mut b_role) = (Role::Champion, Role::Shadow);
    let (mut ha, mut hb) = (History::default(), History::default());
    let mut changes = Vec::new();
    let mut worst = 0;
    for h in 0..hours {
        let now = T0 + h * HOUR;
        let qa = 0.90;
        let qb = 0.90 + gap(h);
        let (fa, fb) = (facts("a@1", a_role, qa), facts("b@1", b_role, qb));
        let (champion, shadow, hist) = if a_role == Role::Champion { (&fa, &fb, &hb) } else { (&fb, &fa, &ha) };
        let c = decompose(champion, policy);
        let p = propose(shadow, Some(&c), policy, hist, now);
        if p.action == Action::Promote {
            changes.push(h);
            let (to_champion, to_shadow) =
                if a_role == Role::Champion { (&mut hb, &mut ha) } else { (&mut ha, &mut hb) };
            to_champion.changes.push(Change { from: Role::Shadow, to: Role::Champion, at: now });
            to_shadow.changes.push(Change { from: Role::Champion, to: Role::Shadow, at: now });
            std::mem::swap(&mut a_role, &mut b_role);
        }
        let window = policy.oscillation.reversal_window_secs;
        worst = worst.max(ha.reversals_within(now, window)).max(hb.reversals_within(now, window));
    }
    (changes, worst)
}

/// No hysteresis, no dwell, no reversal margin or cap: what the controls are measured against.
fn uncontrolled() -> ControllerPolicy {
    ControllerPolicy {
        oscillation: Oscillation {
            hysteresis: 0.0,
            min_dwell_secs: 0,
            reversal_window_secs: 0,
            max_reversals: usize::MAX,
            reversal_margin: 0.0,
        },
        ..ControllerPolicy::default()
    }
}

#[test]
fn noise_around_a_threshold_causes_no_reversals() {
    // b's quality wanders ±0.006 around a's: the totals differ by up to ±0.021, past the bare promote margin
    // (0.02) now and then, never past margin + hysteresis/2.
    let mut rng = SeededRng::new(42);
    let mut next = || {
        let mut b = [0u8; 8];
        rng.fill(&mut b);
        u64::from_le_bytes(b)
    };
    let noise: Vec<f64> = (0..30 * 24).map(|_| (next() % 12_001) as f64 / 1e6 - 0.006).collect();
    let (bare, _) = simulate(&uncontrolled(), 30 * 24, |h| noise[h as usize]);
    assert!(bare.len() >= 5, "without controls the same feed flip-flops: {bare:?}");
    let (controlled, worst) = simulate(&ControllerPolicy::default(), 30 * 24, |h| noise[h as usize]);
    assert!(controlled.is_empty(), "{controlled:?}");
    assert_eq!(worst, 0);
}

#[test]
fn a_metric_that_flips_every_hour_reverses_at_most_max_reversals_per_window() {
    let p = ControllerPolicy::default();
    let (changes, worst) = simulate(&p, 30 * 24, |h| if h % 2 == 0 { 0.05 } else { -0.05 });
    let (bare, _) = simulate(&uncontrolled(), 30 * 24, |h| if h % 2 == 0 { 0.05 } else { -0.05 });
    assert!(bare.len() > 300, "uncontrolled: a change nearly every hour ({})", bare.len());
    assert!(worst <= p.oscillation.max_reversals, "{worst} reversals within a window: {changes:?}");
    // Consecutive changes are at least a dwell time apart.
    assert!(changes.windows(2).all(|w| (w[1] - w[0]) * HOUR >= p.oscillation.min_dwell_secs), "{changes:?}");
    assert!(changes.len() <= 2 * 30 / 7 + 2, "{changes:?}");
}

#[test]
fn a_real_lasting_change_is_proposed_within_the_stated_time() {
    let p = ControllerPolicy::default();
    // A slow drift: b gains 0.0005 quality an hour from 0.02 below a. It is promoted the first hour the totals
    // differ by margin + hysteresis/2, with no history to hold it back.
    let drift = |h: u64| -0.02 + 0.0005 * h as f64;
    let (changes, _) = simulate(&p, 30 * 24, drift);
    assert_eq!(changes.len(), 1, "{changes:?}");
    let first_past = (0..30 * 24)
        .find(|&h| {
            let c = decompose(&facts("a@1", Role::Champion, 0.90), &p);
            let s = decompose(&facts("b@1", Role::Shadow, 0.90 + drift(h)), &p);
            s.total - c.total >= p.thresholds.promote_margin + p.oscillation.hysteresis / 2.0
        })
        .unwrap();
    assert_eq!(changes[0], first_past);

    // A step right after a change: b was demoted at hour 0 (a promoted over it), then becomes clearly better for
    // good at hour 1. Held back by the dwell time, then promoted within the stated bound (runs every hour).
    let mut hb = History::default();
    hb.changes.push(Change { from: Role::Champion, to: Role::Shadow, at: T0 });
    let champion = decompose(&facts("a@1", Role::Champion, 0.90), &p);
    let promoted_at = (1..30 * 24)
        .find(|h| {
            propose(&facts("b@1", Role::Shadow, 0.96), Some(&champion), &p, &hb, T0 + h * HOUR).action
                == Action::Promote
        })
        .unwrap();
    assert!(promoted_at * HOUR <= p.response_bound_secs(HOUR), "promoted at hour {promoted_at}");
    let early = propose(&facts("b@1", Role::Shadow, 0.96), Some(&champion), &p, &hb, T0 + HOUR);
    assert_eq!(early.action, Action::NoOp);
    assert!(
        early.rule.starts_with("held back") && early.held_back.as_deref().unwrap().starts_with("promote"),
        "{early:?}"
    );
}
