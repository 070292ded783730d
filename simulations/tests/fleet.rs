//! Every fleet scenario of `simulations/scenarios/`, small (50 devices) against the real `outpost-hub` binary
//! (`cargo test --workspace` builds it; alone, `cargo build -p outpost-hub` first); and the package-revocation
//! scenario against a hub broken on purpose (revocation notices never pushed), which must fail: the scenarios can
//! fail. Stories bounded by polls alone run at half their time scale (polls of a second); those whose bounds meet
//! the agent's own connect and stall timeouts, which no scale shrinks, run as written.
//!
//! The runs measure time on real hubs, so they take turns (one at a time).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use outpost_sim::fleet::{self, report, scenario::Scenario};

/// One run at a time: each measures time on a real hub.
static TURN: Mutex<()> = Mutex::new(());

/// Devices in each test run.
const DEVICES: usize = 50;

/// Scenario `name` with [`DEVICES`] devices, its time scaled by `scale`.
fn scenario(name: &str, scale: f64) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(format!("{name}.toml"));
    let mut s = Scenario::load(&path).unwrap();
    s.devices = DEVICES;
    s.scale_time(scale);
    s
}

/// Runs `s` on its own port; the verdicts, printed with the report.
fn run(s: &Scenario, port: u16, fault: Option<&str>) -> Vec<report::Verdict> {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let opts = fleet::Options {
        dir: tmp.path().join("fleet"),
        devices_dir: None,
        port,
        chart: None,
        sim_fault: fault.map(str::to_owned),
        progress: None,
        sample: Duration::from_millis(100),
        threads: 2,
        count_bytes: false,
    };
    let record = fleet::run(s, &opts).unwrap();
    let verdicts = report::judge(&record);
    println!("{}", report::render(&record, &verdicts));
    verdicts
}

/// Asserts every verdict held, naming those that did not.
fn passes(name: &str, scale: f64, port: u16) {
    passes_with(scenario(name, scale), port);
}

/// Asserts every verdict of `s` held, naming those that did not.
fn passes_with(s: Scenario, port: u16) {
    let name = s.name.clone();
    let verdicts = run(&s, port, None);
    let failed: Vec<_> = verdicts.iter().filter(|v| !v.held).collect();
    assert!(failed.is_empty(), "{name}: {failed:#?}");
}

#[test]
fn steady_state_holds_its_poll_rate_with_no_failed_check_and_no_report_lost() {
    passes("steady", 0.5, 18_101);
}

#[test]
fn staged_rollout_converges_and_completes() {
    passes("rollout", 0.5, 18_111);
}

#[test]
fn release_failing_in_the_canary_is_aborted_and_every_device_returns_to_the_last_good_package() {
    // 100 devices: the canary (25%) then holds devices that fail the release.
    let mut s = scenario("canary-abort", 0.5);
    s.devices = 100;
    passes_with(s, 18_121);
}

#[test]
fn package_revocation_reaches_connected_devices_before_their_next_poll() {
    passes("package-revocation", 1.0, 18_131);
}

#[test]
fn revoked_devices_are_refused_from_their_next_check_and_nobody_else_notices() {
    passes("device-revocation", 0.5, 18_141);
}

#[test]
fn hub_killed_mid_rollout_and_restarted_loses_no_report_and_the_rollout_completes() {
    passes("hub-restart", 1.0, 18_151);
}

#[test]
fn site_node_lost_keeps_its_devices_serving_and_they_catch_up_when_it_returns() {
    passes("site-lost", 1.0, 18_161);
}

#[test]
fn site_partitioned_from_the_hub_catches_up_after_the_heal() {
    passes("site-partition", 1.0, 18_171);
}

#[test]
fn devices_with_clocks_an_hour_off_update_like_the_rest() {
    passes("skewed-clocks", 0.5, 18_181);
}

#[test]
fn fleet_reconnecting_all_at_once_after_an_outage_recovers_within_two_polls() {
    passes("thundering-herd", 1.0, 18_191);
}

#[test]
fn package_revocation_scenario_fails_against_a_hub_that_does_not_push_revocations() {
    let verdicts = run(&scenario("package-revocation", 1.0), 18_201, Some("no-revocation-push"));
    let reach = verdicts.iter().find(|v| v.what.starts_with("revocation of 1.0.1")).expect("the reach assertion");
    assert!(!reach.held, "the revocation reached devices in time without pushed notices: {reach:?}");
    // Only the reach fails: the devices still learn at their next poll, and nothing else is broken.
    assert!(verdicts.iter().filter(|v| !std::ptr::eq(*v, reach)).all(|v| v.held), "{verdicts:#?}");
}

#[test]
fn scenario_naming_an_undefined_plan_is_refused_with_the_event() {
    let text = r#"
name = "bad"
devices = 1
duration_secs = 5
[timing]
poll_secs = 1
jitter_secs = 0
[[event]]
at_secs = 1
action = "release"
version = "1.0.1"
plan = "nowhere"
"#;
    let e = Scenario::parse(text, "bad.toml").unwrap_err();
    assert!(
        matches!(&e, fleet::scenario::ScenarioError::Invalid { message, .. } if message.contains("plan `nowhere`")),
        "{e}"
    );
}
