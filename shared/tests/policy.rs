//! Site policy decides before download, on signed metadata: one test per rule, the deferrals on a virtual clock,
//! and policy files that are refused at load with their line and key.

use std::path::Path;
use std::time::Duration;

use outpost_shared::Manifest;
use outpost_shared::clock::{Clock, ManualClock, format_rfc3339};
use outpost_shared::config::ConfigError;
use outpost_shared::policy::{Decision, Outcome, PackageFacts, Policy};

/// The real PP-OCR fixture's metadata, released on `stable` by key `k1` at `published`.
fn facts() -> PackageFacts {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/models/ppocr-direction-fixed.toml");
    let m = Manifest::from_toml(&std::fs::read_to_string(path).unwrap(), "ppocr-direction-fixed.toml").unwrap();
    let mut f = PackageFacts::from_manifest(&m, Some(585_000));
    f.channels = Some(vec!["stable".into()]);
    f.published_at = Some(at("2026-11-20T00:00:00Z"));
    f.signers = vec!["k1".into()];
    f
}

/// Unix seconds of a `YYYY-MM-DDTHH:MM:SSZ` time (checked against the crate's own formatter).
fn at(rfc3339: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| rfc3339[r].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let t = (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64;
    assert_eq!(format_rfc3339(t), rfc3339);
    t
}

fn policy(text: &str) -> Policy {
    Policy::from_toml(text, Path::new("site.toml")).unwrap()
}

/// A Saturday noon, outside any night window.
fn now() -> u64 {
    at("2026-11-28T12:00:00Z")
}

fn rejected_by(p: &Policy, f: &PackageFacts) -> (String, String) {
    match p.evaluate(f, now()).decision {
        Decision::Reject { rule, reason } => (rule, reason),
        other => panic!("expected a rejection, got {other}"),
    }
}

#[test]
fn empty_policy_accepts() {
    assert_eq!(policy("").evaluate(&facts(), now()).decision, Decision::Accept);
}

#[test]
fn package_within_every_rule_is_accepted_and_every_rule_is_listed() {
    let p = policy(
        r#"
site = "plant-7"
allowed_capabilities = ["ocr.*", "audio.vad"]
max_risk = "medium"
allowed_data_classes = ["public", "internal"]
max_model_bytes = 1000000
max_memory_bytes = 33554432
allowed_channels = ["stable"]
required_signers = ["k1"]
allowed_licenses = ["Apache-2.0", "MIT"]
min_soak_secs = 86400
[version_floor]
ppocr-direction = "2.0.0"
[[required_metrics]]
metric = "reference_outputs"
suite = "onnxruntime-parity"
min = 1.0
"#,
    );
    let e = p.evaluate(&facts(), now());
    assert_eq!(e.decision, Decision::Accept);
    let rules: Vec<&str> = e.rules.iter().map(|r| r.rule.as_str()).collect();
    assert_eq!(
        rules,
        [
            "allowed_capabilities",
            "max_risk",
            "allowed_data_classes",
            "required_metrics",
            "max_model_bytes",
            "max_memory_bytes",
            "version_floor",
            "allowed_channels",
            "required_signers",
            "allowed_licenses",
            "min_soak_secs"
        ]
    );
    assert!(e.rules.iter().all(|r| r.outcome == Outcome::Pass), "{:?}", e.rules);
}

#[test]
fn high_risk_package_is_rejected_by_max_risk_medium() {
    let mut f = facts();
    f.risk_tier = outpost_shared::manifest::RiskTier::High;
    let (rule, reason) = rejected_by(&policy(r#"max_risk = "medium""#), &f);
    assert_eq!(rule, "max_risk");
    assert!(reason.contains("high > medium"), "{reason}");
}

#[test]
fn downgrade_below_the_floor_is_rejected_even_though_correctly_signed() {
    let p = policy("required_signers = [\"k1\"]\n[version_floor]\nppocr-direction = \"2.1.0\"\n");
    let (rule, reason) = rejected_by(&p, &facts());
    assert_eq!(rule, "version_floor");
    assert!(reason.contains("2.0.1 is below this site's floor 2.1.0"), "{reason}");
    // The signature rule itself passed: being well signed does not lift the floor.
    let e = p.evaluate(&facts(), now());
    assert!(e.rules.iter().any(|r| r.rule == "required_signers" && r.outcome == Outcome::Pass));
}

#[test]
fn package_missing_a_required_metric_is_rejected() {
    let (rule, reason) = rejected_by(&policy("[[required_metrics]]\nmetric = \"accuracy\"\nmin = 0.92\n"), &facts());
    assert_eq!(rule, "required_metrics");
    assert!(reason.contains("no `accuracy`"), "{reason}");
}

#[test]
fn metric_below_its_minimum_or_from_another_suite_is_rejected() {
    let mut f = facts();
    f.metrics.insert("accuracy".into(), 0.91);
    let (_, reason) = rejected_by(&policy("[[required_metrics]]\nmetric = \"accuracy\"\nmin = 0.92\n"), &f);
    assert!(reason.contains("accuracy = 0.91 < 0.92"), "{reason}");
    let p = policy("[[required_metrics]]\nmetric = \"accuracy\"\nsuite = \"imagenet-val\"\nmin = 0.5\n");
    let (_, reason) = rejected_by(&p, &f);
    assert!(reason.contains("must come from suite `imagenet-val`"), "{reason}");
}

#[test]
fn capability_outside_the_allow_list_is_rejected_and_prefixes_match_whole_segments() {
    let (rule, _) = rejected_by(&policy(r#"allowed_capabilities = ["audio.*"]"#), &facts());
    assert_eq!(rule, "allowed_capabilities");
    let mut f = facts();
    f.capability = "ocrx.direction".into();
    rejected_by(&policy(r#"allowed_capabilities = ["ocr.*"]"#), &f);
    f.capability = "ocr.text-direction".into();
    assert_eq!(policy(r#"allowed_capabilities = ["ocr.*"]"#).evaluate(&f, now()).decision, Decision::Accept);
}

#[test]
fn data_class_size_memory_channel_licence_and_signer_rules_each_reject() {
    let cases = [
        (r#"allowed_data_classes = ["public"]"#, "allowed_data_classes"),
        ("max_model_bytes = 1000", "max_model_bytes"),
        ("max_memory_bytes = 1000", "max_memory_bytes"),
        (r#"allowed_channels = ["beta"]"#, "allowed_channels"),
        (r#"allowed_licenses = ["MIT"]"#, "allowed_licenses"),
        (r#"required_signers = ["k1", "k2"]"#, "required_signers"),
    ];
    for (text, expected) in cases {
        let (rule, reason) = rejected_by(&policy(text), &facts());
        assert_eq!(rule, expected, "{text}: {reason}");
    }
}

#[test]
fn first_rejecting_rule_fires_and_later_rules_are_still_listed() {
    let mut f = facts();
    f.risk_tier = outpost_shared::manifest::RiskTier::High;
    let e = policy("max_risk = \"low\"\nallowed_licenses = [\"MIT\"]\n").evaluate(&f, now());
    assert!(matches!(&e.decision, Decision::Reject { rule, .. } if rule == "max_risk"));
    assert_eq!(e.rules.iter().filter(|r| r.outcome == Outcome::Reject).count(), 2);
}

#[test]
fn maintenance_window_defers_and_then_installs_inside_the_window() {
    // Nightly 02:00–04:00 UTC on weekends; it is Saturday noon.
    let p = policy("[[maintenance_windows]]\ndays = [\"sat\", \"sun\"]\nstart = \"02:00\"\nend = \"04:00\"\n");
    let clock = ManualClock::new(now());
    let Decision::Defer { until, rule, .. } = p.evaluate(&facts(), clock.wall()).decision else { panic!() };
    assert_eq!(rule, "maintenance_windows");
    assert_eq!(until, at("2026-11-29T02:00:00Z"), "Sunday 02:00 is the next opening");
    clock.advance(Duration::from_secs(until - clock.wall() - 60));
    assert!(matches!(p.evaluate(&facts(), clock.wall()).decision, Decision::Defer { .. }), "a minute early");
    clock.advance(Duration::from_secs(60));
    assert_eq!(p.evaluate(&facts(), clock.wall()).decision, Decision::Accept, "inside the window");
    clock.advance(Duration::from_secs(2 * 3600));
    let Decision::Defer { until, .. } = p.evaluate(&facts(), clock.wall()).decision else { panic!() };
    assert_eq!(until, at("2026-12-05T02:00:00Z"), "closed again until next Saturday");
}

#[test]
fn maintenance_window_past_midnight_belongs_to_the_day_it_opens() {
    let p = policy("[[maintenance_windows]]\ndays = [\"fri\"]\nstart = \"23:00\"\nend = \"01:00\"\n");
    assert_eq!(p.evaluate(&facts(), at("2026-11-28T00:30:00Z")).decision, Decision::Accept, "Saturday 00:30");
    let Decision::Defer { until, .. } = p.evaluate(&facts(), at("2026-11-28T01:00:00Z")).decision else { panic!() };
    assert_eq!(until, at("2026-12-04T23:00:00Z"));
}

#[test]
fn soak_time_defers_until_the_release_has_been_out_long_enough_then_the_next_window() {
    let mut f = facts();
    f.published_at = Some(at("2026-11-28T06:00:00Z"));
    let p = policy("min_soak_secs = 43200\n");
    let Decision::Defer { until, rule, .. } = p.evaluate(&f, now()).decision else { panic!() };
    assert_eq!((until, rule.as_str()), (at("2026-11-28T18:00:00Z"), "min_soak_secs"));
    // With a window, the deferral runs to the first opening after the soak ends.
    let p = policy("min_soak_secs = 43200\n[[maintenance_windows]]\nstart = \"02:00\"\nend = \"04:00\"\n");
    let Decision::Defer { until, .. } = p.evaluate(&f, now()).decision else { panic!() };
    assert_eq!(until, at("2026-11-29T02:00:00Z"));
}

#[test]
fn release_facts_unknown_for_a_bare_manifest_fail_closed() {
    let mut f = facts();
    f.channels = None;
    f.published_at = None;
    let e = policy("allowed_channels = [\"stable\"]\nmin_soak_secs = 1\n").evaluate(&f, now());
    assert!(matches!(&e.decision, Decision::Reject { rule, .. } if rule == "allowed_channels"));
    assert_eq!(e.rules[1].outcome, Outcome::Reject);
}

#[test]
fn manifest_that_differs_from_the_advertised_metadata_is_named() {
    let advertised = facts();
    let mut verified = facts();
    assert_eq!(verified.differs_from(&advertised), None);
    verified.risk_tier = outpost_shared::manifest::RiskTier::High;
    assert_eq!(verified.differs_from(&advertised), Some("risk_tier"));
}

fn refused(text: &str) -> (Option<usize>, String, String) {
    match Policy::from_toml(text, Path::new("site.toml")).unwrap_err() {
        ConfigError::Invalid { line, key, problem, .. } => (line, key, problem),
        other => panic!("{other}"),
    }
}

#[test]
fn malformed_policy_files_are_refused_with_line_and_key() {
    let (line, key, problem) = refused("site = \"x\"\nmax_risk = \"medium\"\nmax_rsik = \"low\"\n");
    assert_eq!((line, key.as_str()), (Some(3), "max_rsik"), "{problem}");

    let (line, key, problem) = refused("site = \"x\"\nmax_risk = \"severe\"\n");
    assert_eq!((line, key.as_str()), (Some(2), "max_risk"), "{problem}");

    let (line, key, _) = refused("site = \"x\"\n\nmax_model_bytes = \"big\"\n");
    assert_eq!((line, key.as_str()), (Some(3), "max_model_bytes"));

    let (line, key, problem) = refused("[[maintenance_windows]]\nstart = \"25:00\"\nend = \"04:00\"\n");
    assert_eq!(key, "maintenance_windows[0].start");
    assert_eq!(line, Some(2), "{problem}");

    let (line, key, _) = refused("site = \"x\"\n[version_floor]\nppocr = \"two\"\n");
    assert_eq!((line, key.as_str()), (Some(3), "version_floor.ppocr"));

    let (line, _, problem) = refused("max_risk = \n");
    assert_eq!(line, Some(1), "{problem}");
}

#[test]
fn impossible_rules_are_refused_at_load() {
    let (line, key, problem) =
        refused("site = \"x\"\n[[required_metrics]]\nmetric = \"accuracy\"\nmin = 0.9\nmax = 0.8\n");
    assert_eq!(key, "required_metrics[0]");
    assert_eq!(line, Some(2));
    assert!(problem.contains("no value can meet it"), "{problem}");
    for (text, key) in [
        ("allowed_licenses = []", "allowed_licenses"),
        ("max_model_bytes = 0", "max_model_bytes"),
        ("allowed_capabilities = [\"*\"]", "allowed_capabilities[0]"),
        ("[[required_metrics]]\nmetric = \"accuracy\"\n", "required_metrics[0]"),
        ("[[maintenance_windows]]\nstart = \"02:00\"\nend = \"02:00\"\n", "maintenance_windows[0]"),
        ("[[maintenance_windows]]\ndays = []\nstart = \"02:00\"\nend = \"03:00\"\n", "maintenance_windows[0].days"),
    ] {
        assert_eq!(refused(text).1, key, "{text}");
    }
}

#[test]
fn example_site_policy_in_the_repo_loads_and_accepts_the_fixture_release() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/policies/plant-7.toml");
    let p = Policy::from_toml(&std::fs::read_to_string(path).unwrap(), Path::new(path)).unwrap();
    assert_eq!(p.evaluate(&facts(), now()).decision, Decision::Accept);
}
