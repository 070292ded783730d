//! The rollout controller at its edges, on a paused clock: thresholds exactly met and one past, no judgement
//! before the minimum count or the soak time, late enrolment, abort and recovery, retry, approvals, policy
//! rejections; and plan files refused with their line and key.

use std::path::Path;
use std::time::Duration;

use outpost_shared::Digest;
use outpost_shared::canonical;
use outpost_shared::clock::{Clock, ManualClock};
use outpost_shared::config::ConfigError;
use outpost_shared::manifest::RiskTier;
use outpost_shared::rollout::{
    AbortReason, Command, CommandError, DeviceState, Directive, Effect, Outcome, Plan, Position, Release, Rollout,
    StartError, State, bucket,
};
use outpost_shared::update::{AgentState, Refusal, StateReport};

const T0: u64 = 1_800_000_000;
const PUBLISHER: &str = "key-publisher";
const REVIEWER: &str = "key-reviewer";

fn package() -> Digest {
    Digest::of(b"model v2")
}

fn last_good() -> Digest {
    Digest::of(b"model v1")
}

/// Device ids as the hub knows them: 64 hex characters (an Ed25519 public key's hex).
fn device_ids(n: u32) -> Vec<String> {
    (0..n).map(|i| Digest::of(format!("device {i}").as_bytes()).to_hex()).collect()
}

fn release(id: &str, risk: RiskTier) -> Release {
    Release {
        id: id.into(),
        package: package(),
        last_good: Some(last_good()),
        risk,
        signers: vec![PUBLISHER.into(), REVIEWER.into()],
    }
}

fn plan(text: &str) -> Plan {
    Plan::from_toml(text, Path::new("plan.toml")).unwrap()
}

/// Two stages: half the channel, then all; the first judged after `min` outcomes and 600 s.
fn two_stages(min: u64, success: &str, error: &str) -> Plan {
    plan(&format!(
        "[[stage]]\nname = \"half\"\ncohort_percent = 50\nmin_devices = {min}\nsoak_secs = 600\n\
         success_percent = {success}\nerror_percent = {error}\n\n\
         [[stage]]\nname = \"all\"\ncohort_percent = 100\nmin_devices = 1\nsuccess_percent = 90\nerror_percent = 5\n"
    ))
}

/// A rollout on a paused clock.
struct Fleet {
    clock: ManualClock,
    r: Rollout,
    started: Vec<Effect>,
}

impl Fleet {
    fn start(release: Release, plan: Plan, devices: u32) -> Fleet {
        let clock = ManualClock::new(T0);
        let (r, started) = Rollout::start(release, plan, device_ids(devices), clock.wall()).unwrap();
        Fleet { clock, r, started }
    }

    fn low(plan: Plan, devices: u32) -> Fleet {
        Fleet::start(release("r1", RiskTier::Low), plan, devices)
    }

    fn now(&self) -> u64 {
        self.clock.wall()
    }

    fn wait(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.r.tick(self.clock.wall())
    }

    /// Devices currently assigned the package for serving, sorted.
    fn serving(&self) -> Vec<String> {
        self.r.devices.iter().filter(|(_, e)| e.serving).map(|(id, _)| id.clone()).collect()
    }

    fn report(&mut self, ids: &[String], outcome: Outcome) {
        for id in ids {
            assert_eq!(self.r.report(id, outcome.clone(), self.clock.wall()), vec![]);
        }
    }

    fn command(&mut self, cmd: Command) -> Result<Vec<Effect>, CommandError> {
        self.r.command(cmd, self.clock.wall())
    }
}

fn failed() -> Outcome {
    Outcome::Failed { reason: "smoke test failed".into() }
}

fn is_abort(effects: &[Effect]) -> bool {
    effects.iter().any(|e| matches!(e, Effect::Abort { .. }))
}

fn advanced_to(effects: &[Effect]) -> Option<usize> {
    effects.iter().find_map(|e| match e {
        Effect::AdvanceTo { stage, .. } => Some(*stage),
        _ => None,
    })
}

fn assigned(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Assign { devices, package: p } if *p == package() => Some(devices.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn low_risk_release_starts_its_first_stage_and_advances_without_approval() {
    let mut f = Fleet::low(two_stages(10, "100", "10"), 200);
    assert_eq!(advanced_to(&f.started), Some(0));
    let cohort = f.serving();
    assert_eq!(assigned(&f.started), cohort);
    assert!((70..=130).contains(&cohort.len()), "about half of 200: {}", cohort.len());
    f.report(&cohort, Outcome::Installed);
    f.wait(600);
    let next = f.tick();
    assert_eq!(advanced_to(&next), Some(1));
    assert_eq!(assigned(&next).len(), 200 - cohort.len(), "stage 2 assigns only the devices not yet assigned");
    f.report(&f.serving(), Outcome::Installed);
    assert_eq!(f.tick(), vec![Effect::Completed]);
    assert!(f.r.is_finished());
}

#[test]
fn error_rate_exactly_at_threshold_does_not_abort() {
    let mut f = Fleet::low(two_stages(20, "100", "10"), 200);
    let cohort = f.serving();
    f.report(&cohort[..18], Outcome::Installed);
    f.report(&cohort[18..20], failed()); // 2 of 20 = 10%, exactly the threshold
    f.wait(600);
    assert_eq!(f.tick(), vec![]);
    assert_eq!(f.r.state, State::Running);
}

#[test]
fn one_error_above_threshold_aborts() {
    let mut f = Fleet::low(two_stages(20, "100", "10"), 200);
    let cohort = f.serving();
    f.report(&cohort[..18], Outcome::Installed);
    f.report(&cohort[18..20], failed());
    f.wait(600);
    assert_eq!(f.tick(), vec![]);
    f.report(&cohort[20..21], Outcome::RolledBack { reason: "inference failed".into() }); // 3 of 21 > 10%
    let effects = f.tick();
    assert!(is_abort(&effects), "{effects:?}");
    let State::Aborted { reason, .. } = &f.r.state else { panic!("{:?}", f.r.state) };
    assert_eq!(
        *reason,
        AbortReason::ErrorThreshold {
            stage: 0,
            errors: 3,
            done: 21,
            threshold: outpost_shared::rollout::Percent(1000)
        }
    );
}

#[test]
fn zero_error_threshold_aborts_on_the_first_error() {
    let mut f = Fleet::low(two_stages(5, "100", "0"), 200);
    let cohort = f.serving();
    f.report(&cohort[..5], Outcome::Installed);
    f.wait(600);
    assert_eq!(f.tick(), vec![]);
    f.report(&cohort[5..6], failed());
    assert!(is_abort(&f.tick()));
}

#[test]
fn no_judgement_before_minimum_count() {
    let mut f = Fleet::low(two_stages(10, "1", "10"), 200);
    let cohort = f.serving();
    f.report(&cohort[..9], failed()); // every outcome so far an error, but only 9 of the 10 required
    f.wait(6_000);
    assert_eq!(f.tick(), vec![]);
    assert_eq!(f.r.state, State::Running);
    f.report(&cohort[9..10], failed());
    assert!(is_abort(&f.tick()));
}

#[test]
fn no_judgement_before_the_soak_time_has_elapsed() {
    let mut f = Fleet::low(two_stages(10, "1", "10"), 200);
    let cohort = f.serving();
    f.report(&cohort[..10], failed());
    f.wait(599);
    assert_eq!(f.tick(), vec![], "one second short of the soak");
    f.wait(1);
    assert!(is_abort(&f.tick()));
}

#[test]
fn success_short_of_its_threshold_keeps_the_stage_waiting() {
    let mut f = Fleet::low(two_stages(10, "50", "10"), 200);
    let cohort = f.serving();
    let half = cohort.len() / 2;
    // One short of half the cohort installed.
    f.report(&cohort[..half - 1 + cohort.len() % 2], Outcome::Installed);
    f.wait(600);
    assert_eq!(f.tick(), vec![]);
    f.report(&cohort[half..half + 1], Outcome::Installed);
    assert_eq!(advanced_to(&f.tick()), Some(1));
}

#[test]
fn policy_rejections_are_not_counted_as_failures() {
    let mut f = Fleet::low(two_stages(10, "100", "0"), 200);
    let cohort = f.serving();
    let rejected = cohort.len() / 2;
    f.report(&cohort[..rejected], Outcome::RejectedByPolicy { rule: "max_risk".into() });
    f.wait(600);
    // Rejections alone are not outcomes: still waiting for the minimum count, and no abort at 0% errors.
    assert_eq!(f.tick(), vec![]);
    f.report(&cohort[rejected..], Outcome::Installed);
    let stats = f.r.status().cohort;
    assert_eq!((stats.rejected_by_policy, stats.errors(), stats.installed), (rejected as u64, 0, stats.eligible()));
    // Every eligible device installed: 100% success although half the cohort refused the package.
    assert_eq!(advanced_to(&f.tick()), Some(1));
    assert_eq!(f.r.status().stages[0].rejected_by_policy, rejected as u64);
}

#[test]
fn cohorts_are_stable_across_reruns() {
    let mut reversed = device_ids(500);
    reversed.reverse();
    let (a, ea) = Rollout::start(release("r1", RiskTier::Low), two_stages(1, "90", "5"), device_ids(500), T0).unwrap();
    let (_, eb) = Rollout::start(release("r1", RiskTier::Low), two_stages(1, "90", "5"), reversed, T0 + 99).unwrap();
    assert_eq!(assigned(&ea), assigned(&eb), "same release, same devices, whatever the order or time");
    let (_, ec) = Rollout::start(release("r2", RiskTier::Low), two_stages(1, "90", "5"), device_ids(500), T0).unwrap();
    assert_ne!(assigned(&ea), assigned(&ec), "another release tries other devices first");
    // The documented function: first 8 bytes of SHA-256(release id ‖ device id), big-endian, mod 10 000.
    let id = &device_ids(1)[0];
    let d = Digest::of(format!("r1{id}").as_bytes());
    let expected = u64::from_be_bytes(d.0[..8].try_into().unwrap()) % 10_000;
    assert_eq!(u64::from(bucket("r1", id)), expected);
    assert_eq!(a.devices[id].bucket as u64, expected);
    for (id, e) in &a.devices {
        assert_eq!(e.serving, bucket("r1", id) < 5_000);
    }
}

#[test]
fn late_enrolled_device_joins_the_stage_it_hashes_into() {
    let plan = plan(
        "[[stage]]\ncohort_percent = 10\nsuccess_percent = 100\nerror_percent = 50\n\
         [[stage]]\ncohort_percent = 100\nsuccess_percent = 100\nerror_percent = 50\n",
    );
    let mut f = Fleet::low(plan, 50);
    let late: Vec<String> = (0..200).map(|i| Digest::of(format!("late {i}").as_bytes()).to_hex()).collect();
    let early = late.iter().find(|d| bucket("r1", d) < 1_000).unwrap().clone();
    let later = late.iter().find(|d| bucket("r1", d) >= 1_000).unwrap().clone();
    assert_eq!(f.r.enroll(&early, f.now()), vec![Effect::Assign { devices: vec![early.clone()], package: package() }]);
    assert_eq!(f.r.enroll(&later, f.now()), vec![], "its stage has not started");
    assert_eq!(f.r.enroll(&early, f.now()), vec![], "enrolling twice changes nothing");
    f.report(&f.serving(), Outcome::Installed);
    let next = f.tick();
    assert_eq!(advanced_to(&next), Some(1));
    assert!(assigned(&next).contains(&later), "assigned when the stage it hashes into starts");
    assert!(!assigned(&next).contains(&early), "not assigned twice");
}

#[test]
fn abort_reassigns_every_device_to_last_good() {
    let plan = plan(
        "[shadow]\ncohort_percent = 30\n\
         [[stage]]\ncohort_percent = 10\nsuccess_percent = 100\nerror_percent = 50\n\
         [[stage]]\ncohort_percent = 40\nsuccess_percent = 100\nerror_percent = 50\n\
         [[stage]]\ncohort_percent = 100\nsuccess_percent = 100\nerror_percent = 50\n",
    );
    let mut f = Fleet::low(plan, 300);
    let shadow: Vec<String> = f.r.devices.iter().filter(|(_, e)| e.shadowing).map(|(id, _)| id.clone()).collect();
    assert!(f.started.contains(&Effect::AssignShadow { devices: shadow.clone(), package: package() }));
    let shadow_only: Vec<String> = shadow.clone().into_iter().filter(|d| bucket("r1", d) >= 1_000).collect();
    assert!(!shadow_only.is_empty());
    // The shadow has no agreement gate: it passes once a device reports; then stage 1 (10%) and stage 2 (40%).
    f.r.report_shadow(&shadow[0], 10, 10, f.now());
    assert_eq!(advanced_to(&f.tick()), Some(0));
    f.report(&f.serving(), Outcome::Installed);
    assert_eq!(advanced_to(&f.tick()), Some(1));
    let of_release: Vec<String> =
        f.r.devices.iter().filter(|(_, e)| e.serving || e.shadowing).map(|(id, _)| id.clone()).collect();
    assert!(of_release.len() < 300, "some devices were never assigned");
    f.wait(30);
    let effects = f.command(Command::Abort { reason: "bad answers in the field".into() }).unwrap();
    assert_eq!(
        effects,
        vec![
            Effect::Abort { reason: AbortReason::Operator { reason: "bad answers in the field".into() } },
            Effect::Assign { devices: of_release.clone(), package: last_good() },
        ]
    );
    assert!(shadow_only.iter().all(|d| of_release.contains(d)), "shadow devices are reassigned too");
    assert_eq!(
        f.r.state,
        State::Aborted { at: T0 + 30, reason: AbortReason::Operator { reason: "bad answers in the field".into() } }
    );
    // Nothing more happens to an aborted release.
    f.wait(10_000);
    assert_eq!(f.tick(), vec![]);
    assert_eq!(f.r.enroll(&Digest::of(b"new").to_hex(), f.now()), vec![]);
    assert_eq!(f.command(Command::Resume), Err(CommandError::Aborted { release: "r1".into() }));
}

#[test]
fn abort_without_a_last_good_package_unassigns() {
    let mut r = release("first", RiskTier::Low);
    r.last_good = None;
    let mut f = Fleet::start(r, two_stages(1, "90", "5"), 20);
    let cohort = f.serving();
    let effects = f.command(Command::Abort { reason: "no".into() }).unwrap();
    assert_eq!(effects[1], Effect::Unassign { devices: cohort });
}

#[test]
fn recovery_time_measured_to_95_percent() {
    let mut f = Fleet::low(two_stages(1, "100", "5"), 80);
    let affected = f.serving();
    let n = affected.len();
    assert!(n >= 20, "{n}");
    f.wait(100);
    f.command(Command::Abort { reason: "test".into() }).unwrap();
    let need = (n * 95).div_ceil(100);
    for (i, id) in affected.iter().enumerate() {
        f.wait(10);
        // Still on the aborted package, then on the last good one: only the latter counts.
        assert_eq!(f.r.report_package(id, Some(package()), f.now()), vec![]);
        let effects = f.r.report_package(id, Some(last_good()), f.now());
        if i + 1 < need {
            assert_eq!(effects, vec![], "{} of {n} is below 95%", i + 1);
            assert_eq!(f.r.recovery_time(), None);
        } else if i + 1 == need {
            assert_eq!(effects, vec![Effect::Recovered { after_secs: 10 * need as u64 }]);
        } else {
            assert_eq!(effects, vec![], "recovered once");
        }
    }
    assert_eq!(f.r.recovery_time(), Some(Duration::from_secs(10 * need as u64)));
    let rec = f.r.status().recovery.unwrap();
    assert_eq!((rec.affected, rec.recovered, rec.since), (n as u64, n as u64, T0 + 100));
}

#[test]
fn reports_before_the_abort_do_not_count_towards_recovery() {
    let mut f = Fleet::low(two_stages(1, "100", "5"), 40);
    let cohort = f.serving();
    for id in &cohort {
        assert_eq!(f.r.report_package(id, Some(last_good()), f.now()), vec![]);
    }
    f.command(Command::Abort { reason: "test".into() }).unwrap();
    assert_eq!(f.r.status().recovery.unwrap().recovered, 0);
}

#[test]
fn retry_failed_touches_only_failed_devices() {
    let mut f = Fleet::low(two_stages(1000, "100", "90"), 200);
    let c = f.serving();
    f.report(&c[0..3], Outcome::Installed);
    f.report(&c[3..5], failed());
    f.report(&c[5..7], Outcome::RolledBack { reason: "health window".into() });
    f.report(&c[7..9], Outcome::RejectedByPolicy { rule: "max_risk".into() });
    let effects = f.command(Command::RetryFailed).unwrap();
    let mut retried = c[3..7].to_vec();
    retried.sort();
    assert_eq!(effects, vec![Effect::Retry { devices: retried.clone(), package: package() }]);
    for (id, e) in &f.r.devices {
        let expected = if retried.contains(id) { 1 } else { 0 };
        assert_eq!(e.retries, expected, "{id}");
    }
    assert_eq!(f.r.devices[&c[0]].state, DeviceState::Reported(Outcome::Installed));
    assert!(matches!(f.r.devices[&c[7]].state, DeviceState::Reported(Outcome::RejectedByPolicy { .. })));
    assert_eq!(f.r.status().cohort.errors(), 0, "retried devices are pending again");
    assert_eq!(f.command(Command::RetryFailed).unwrap(), vec![], "nothing left to retry");
}

#[test]
fn high_risk_release_waits_for_approval_by_another_key() {
    let mut f = Fleet::start(release("r1", RiskTier::High), two_stages(1, "100", "5"), 100);
    assert_eq!(f.started, vec![Effect::PauseForApproval { stage: 0, name: "half".into() }]);
    assert!(f.serving().is_empty(), "nothing assigned before the approval");
    f.wait(10_000);
    assert_eq!(f.tick(), vec![]);
    assert_eq!(
        f.command(Command::Approve { key_id: PUBLISHER.into() }),
        Err(CommandError::ApproverIsPublisher { release: "r1".into(), key_id: PUBLISHER.into() })
    );
    let effects = f.command(Command::Approve { key_id: REVIEWER.into() }).unwrap();
    assert_eq!(effects[0], Effect::Approved { stage: 0, key_id: REVIEWER.into() });
    assert_eq!(advanced_to(&effects), Some(0));
    assert_eq!(assigned(&effects), f.serving());
    // Between stages it pauses again.
    f.report(&f.serving(), Outcome::Installed);
    f.wait(600);
    assert_eq!(f.tick(), vec![Effect::PauseForApproval { stage: 1, name: "all".into() }]);
    f.wait(600);
    assert_eq!(f.tick(), vec![]);
    assert_eq!(advanced_to(&f.command(Command::Approve { key_id: REVIEWER.into() }).unwrap()), Some(1));
}

#[test]
fn high_risk_release_without_a_second_signature_does_not_start() {
    let mut r = release("r1", RiskTier::High);
    r.signers = vec![PUBLISHER.into(), PUBLISHER.into()];
    assert_eq!(
        Rollout::start(r, two_stages(1, "100", "5"), device_ids(10), T0).unwrap_err(),
        StartError::MissingSecondSignature { release: "r1".into(), signers: 1 }
    );
}

#[test]
fn approve_when_nothing_waits_is_refused() {
    let mut f = Fleet::low(two_stages(1, "100", "5"), 10);
    assert_eq!(
        f.command(Command::Approve { key_id: REVIEWER.into() }),
        Err(CommandError::NotAwaitingApproval { release: "r1".into() })
    );
}

#[test]
fn pause_after_stops_a_low_risk_release_for_any_approver() {
    let plan = plan(
        "[[stage]]\ncohort_percent = 50\nsuccess_percent = 100\nerror_percent = 5\npause_after = true\n\
         [[stage]]\ncohort_percent = 100\nsuccess_percent = 100\nerror_percent = 5\n",
    );
    let mut f = Fleet::low(plan, 40);
    f.report(&f.serving(), Outcome::Installed);
    assert!(matches!(f.tick()[..], [Effect::PauseForApproval { stage: 1, .. }]));
    assert_eq!(advanced_to(&f.command(Command::Approve { key_id: PUBLISHER.into() }).unwrap()), Some(1));
}

#[test]
fn operator_pause_stops_advancing_but_not_the_abort() {
    let mut f = Fleet::low(two_stages(4, "100", "25"), 100);
    let c = f.serving();
    assert_eq!(f.command(Command::Pause).unwrap(), vec![Effect::Paused]);
    f.report(&c, Outcome::Installed);
    f.wait(600);
    assert_eq!(f.tick(), vec![], "paused: no advance");
    assert_eq!(f.command(Command::Resume).unwrap(), vec![Effect::Resumed]);
    f.command(Command::Pause).unwrap();
    f.report(&c[..c.len() / 2], failed());
    assert!(is_abort(&f.tick()), "a pause never hides a failing release");
}

#[test]
fn shadow_agreement_below_the_gate_aborts_before_the_canary() {
    let plan = plan(
        "[shadow]\ncohort_percent = 20\nmin_devices = 2\nsoak_secs = 60\nmin_agreement_percent = 98\n\
         [[stage]]\ncohort_percent = 100\nsuccess_percent = 100\nerror_percent = 5\n",
    );
    let mut f = Fleet::low(plan, 100);
    assert!(f.started.contains(&Effect::ShadowStarted));
    assert!(f.serving().is_empty(), "the shadow serves nothing");
    let shadow: Vec<String> = f.r.devices.iter().filter(|(_, e)| e.shadowing).map(|(id, _)| id.clone()).collect();
    f.r.report_shadow(&shadow[0], 99, 100, f.now());
    f.r.report_shadow(&shadow[1], 96, 100, f.now()); // 195 of 200 = 97.5%
    f.wait(60);
    let effects = f.tick();
    assert_eq!(
        effects[0],
        Effect::Abort {
            reason: AbortReason::ShadowDisagreement {
                agreed: 195,
                compared: 200,
                required: outpost_shared::rollout::Percent(9_800)
            }
        }
    );
    assert_eq!(effects[1], Effect::Assign { devices: shadow, package: last_good() });
}

#[test]
fn shadow_agreement_exactly_at_the_gate_goes_on_to_the_canary() {
    let plan = plan(
        "[shadow]\ncohort_percent = 20\nmin_devices = 2\nsoak_secs = 60\nmin_agreement_percent = 98\n\
         [[stage]]\ncohort_percent = 100\nsuccess_percent = 100\nerror_percent = 5\n",
    );
    let mut f = Fleet::start(release("r1", RiskTier::High), plan, 100);
    assert_eq!(f.started[0], Effect::ShadowStarted, "the shadow needs no approval");
    let shadow: Vec<String> = f.r.devices.iter().filter(|(_, e)| e.shadowing).map(|(id, _)| id.clone()).collect();
    f.r.report_shadow(&shadow[0], 98, 100, f.now());
    f.wait(60);
    assert_eq!(f.tick(), vec![], "one device reported of the two required");
    f.r.report_shadow(&shadow[1], 49, 50, f.now());
    assert_eq!(f.tick(), vec![Effect::PauseForApproval { stage: 0, name: "stage 1".into() }], "high risk");
    assert_eq!(f.r.position, Position::Shadow);
}

#[test]
fn aborted_release_never_blocks_the_next() {
    let mut f = Fleet::low(two_stages(1, "100", "5"), 50);
    f.command(Command::Abort { reason: "broken".into() }).unwrap();
    let mut next = release("r2", RiskTier::Low);
    next.package = Digest::of(b"model v3");
    let (r2, effects) = Rollout::start(next, two_stages(1, "100", "5"), device_ids(50), f.now()).unwrap();
    assert_eq!(advanced_to(&effects), Some(0));
    assert!(effects.iter().any(|e| matches!(e, Effect::Assign { package, .. } if *package == Digest::of(b"model v3"))));
    assert!(!r2.is_finished());
}

#[test]
fn unfinished_release_is_superseded_by_the_next() {
    // A high-risk release nobody approves would wait for ever; the next release takes over.
    let mut f = Fleet::start(release("r1", RiskTier::High), two_stages(1, "100", "5"), 50);
    assert!(!f.r.is_finished());
    assert_eq!(f.r.supersede("r2", f.now()), vec![Effect::Superseded { by: "r2".into() }]);
    assert!(f.r.is_finished());
    assert_eq!(
        f.command(Command::Approve { key_id: REVIEWER.into() }),
        Err(CommandError::Superseded { release: "r1".into(), by: "r2".into() })
    );
    assert_eq!(f.r.enroll(&Digest::of(b"new").to_hex(), f.now()), vec![]);
    // An aborted release stays aborted: its rollback is still measured.
    let mut g = Fleet::low(two_stages(1, "100", "5"), 50);
    g.command(Command::Abort { reason: "broken".into() }).unwrap();
    assert_eq!(g.r.supersede("r2", g.now()), vec![]);
    assert!(matches!(g.r.state, State::Aborted { .. }));
}

#[test]
fn directive_follows_the_rollout_without_replaying_effects() {
    let plan = plan(
        "[shadow]\ncohort_percent = 50\n\
         [[stage]]\ncohort_percent = 20\nsuccess_percent = 100\nerror_percent = 50\n\
         [[stage]]\ncohort_percent = 100\nsuccess_percent = 100\nerror_percent = 50\n",
    );
    let mut f = Fleet::low(plan, 100);
    let by_bucket =
        |lo: u32, hi: u32| f.r.devices.keys().find(|d| (lo..hi).contains(&bucket("r1", d))).unwrap().clone();
    let (canary, shadow, later) = (by_bucket(0, 2_000), by_bucket(2_000, 5_000), by_bucket(5_000, 10_000));
    assert_eq!(f.r.directive(&shadow), Some(Directive::Shadow { package: package() }));
    assert_eq!(f.r.directive(&later), None, "outside the shadow, before its stage");
    f.r.report_shadow(&shadow, 5, 5, f.now());
    f.tick();
    assert_eq!(f.r.directive(&canary), Some(Directive::Serve { package: package(), retry: 0 }));
    assert_eq!(f.r.directive(&shadow), Some(Directive::Shadow { package: package() }));
    f.report(std::slice::from_ref(&canary), failed());
    f.command(Command::RetryFailed).unwrap();
    assert_eq!(f.r.directive(&canary), Some(Directive::Serve { package: package(), retry: 1 }));
    f.command(Command::Abort { reason: "enough".into() }).unwrap();
    for d in [&canary, &shadow] {
        assert_eq!(f.r.directive(d), Some(Directive::Revert { package: Some(last_good()) }));
    }
    assert_eq!(f.r.directive(&later), None);
    assert_eq!(f.r.directive("unknown"), None);
}

#[test]
fn device_leaving_the_channel_is_not_waited_for() {
    let mut f = Fleet::low(two_stages(1, "100", "5"), 100);
    let affected = f.serving();
    let gone = affected.len() / 10 + 1; // more than 5%: the rest alone are below 95%
    f.command(Command::Abort { reason: "test".into() }).unwrap();
    for id in &affected[gone..] {
        assert_eq!(f.r.report_package(id, Some(last_good()), f.now()), vec![]);
    }
    assert_eq!(f.r.recovery_time(), None);
    f.wait(40);
    let mut recovered = vec![];
    for id in &affected[..gone] {
        recovered.extend(f.r.leave(id, f.now()));
    }
    assert_eq!(recovered, vec![Effect::Recovered { after_secs: 40 }], "once enough unreported devices left");
    assert_eq!(f.r.status().recovery.unwrap().affected, (affected.len() - gone) as u64);
}

#[test]
fn state_survives_persistence_between_ticks() {
    let mut f = Fleet::low(two_stages(5, "100", "10"), 100);
    let c = f.serving();
    f.report(&c, Outcome::Installed);
    let bytes = canonical::to_vec(&f.r).unwrap();
    let mut restored: Rollout = canonical::from_slice(&bytes).unwrap();
    assert_eq!(restored, f.r);
    f.wait(600);
    assert_eq!(restored.tick(f.now()), f.tick());
    assert_eq!(advanced_to(&restored.tick(f.now())), None);
}

#[test]
fn state_report_gives_outcomes_of_the_package() {
    // Built from an agent state, so fields the report gains later keep their defaults here.
    let report = |active: Option<Digest>, last_good: Option<Digest>, rolled_back: Vec<Digest>| StateReport {
        active,
        last_good,
        rolled_back,
        ..AgentState::new(T0).report("m")
    };
    use outpost_shared::rollout::outcome_of;
    assert_eq!(outcome_of(&report(Some(package()), Some(package()), vec![]), &package()), Some(Outcome::Installed));
    assert_eq!(
        outcome_of(&report(Some(last_good()), Some(last_good()), vec![package()]), &package()),
        Some(Outcome::RolledBack { reason: "m".into() })
    );
    assert_eq!(outcome_of(&report(Some(package()), Some(last_good()), vec![]), &package()), None, "on trial");
    let refusal = |until: Option<u64>| Refusal {
        digest: package(),
        package: "m@2.0.0".into(),
        rule: "max_risk".into(),
        reason: "risk high > medium".into(),
        until,
        policy: Digest::of(b"policy"),
        at: T0,
        by_site: false,
    };
    let mut refused = report(Some(last_good()), Some(last_good()), vec![]);
    refused.refusals = vec![refusal(Some(T0 + 60)), refusal(None)];
    assert_eq!(outcome_of(&refused, &package()), Some(Outcome::RejectedByPolicy { rule: "max_risk".into() }));
    refused.refusals.reverse();
    assert_eq!(outcome_of(&refused, &package()), None, "deferred since: not an outcome");
}

// Plan files.

fn refused(text: &str) -> (Option<usize>, String, String) {
    match Plan::from_toml(text, Path::new("plan.toml")) {
        Err(ConfigError::Invalid { line, key, problem, .. }) => (line, key, problem),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const STAGE: &str = "cohort_percent = 100\nsuccess_percent = 90\nerror_percent = 5\n";

#[test]
fn fixture_plans_load() {
    for name in ["canary", "high-risk"] {
        let path = format!("{}/../fixtures/plans/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let p = Plan::from_toml(&std::fs::read_to_string(&path).unwrap(), Path::new(&path)).unwrap();
        assert_eq!(p.stage.last().unwrap().cohort_percent.basis_points(), 10_000, "{name}");
        assert!(p.shadow.is_some());
    }
}

#[test]
fn plan_percentage_above_100_is_refused_with_line_and_key() {
    let (line, key, problem) = refused(&format!("[[stage]]\n{STAGE}\n[[stage]]\ncohort_percent = 100.5\n"));
    assert_eq!((line, key.as_str()), (Some(7), "stage[1].cohort_percent"));
    assert!(problem.contains("100.5"), "{problem}");
}

#[test]
fn plan_stages_not_increasing_are_refused_with_line_and_key() {
    let text = "[[stage]]\ncohort_percent = 10\nsuccess_percent = 90\nerror_percent = 5\n\n\
                [[stage]]\nname = \"b\"\nsuccess_percent = 90\ncohort_percent = 10\nerror_percent = 5\n";
    let (line, key, problem) = refused(text);
    assert_eq!((line, key.as_str()), (Some(9), "stage[1].cohort_percent"));
    assert!(problem.contains("must increase"), "{problem}");
}

#[test]
fn plan_error_threshold_of_100_is_refused_with_line_and_key() {
    let (line, key, _) = refused("[[stage]]\ncohort_percent = 100\nsuccess_percent = 90\nerror_percent = 100\n");
    assert_eq!((line, key.as_str()), (Some(4), "stage[0].error_percent"));
}

#[test]
fn plan_unknown_key_is_refused_with_line_and_key() {
    let (line, key, problem) = refused(&format!("[[stage]]\n{STAGE}soak = 60\n"));
    assert_eq!((line, key.as_str()), (Some(5), "stage[0].soak"));
    assert!(problem.contains("soak_secs"), "the problem lists the keys that exist: {problem}");
    let (line, key, _) = refused(&format!("[shadow]\ncohort_percent = 5\nmin_agreement = 0.9\n[[stage]]\n{STAGE}"));
    assert_eq!((line, key.as_str()), (Some(3), "shadow.min_agreement"));
}

#[test]
fn plan_bad_values_are_refused_with_line_and_key() {
    let (line, key, _) = refused(&format!("[[stage]]\n{STAGE}min_devices = -1\n"));
    assert_eq!((line, key.as_str()), (Some(5), "stage[0].min_devices"));
    let (line, key, problem) = refused("[[stage]]\ncohort_percent = 12.345\nsuccess_percent = 90\nerror_percent = 5\n");
    assert_eq!((line, key.as_str()), (Some(2), "stage[0].cohort_percent"));
    assert!(problem.contains("two decimals"), "{problem}");
    let (line, key, _) = refused(&format!("[[stage]]\n{STAGE}min_devices = 0\n"));
    assert_eq!((line, key.as_str()), (Some(5), "stage[0].min_devices"));
    let (line, key, _) =
        refused(&format!("[shadow]\ncohort_percent = 5\nmin_agreement_percent = 0\n[[stage]]\n{STAGE}"));
    assert_eq!((line, key.as_str()), (Some(3), "shadow.min_agreement_percent"));
    let (line, key, problem) = refused(&format!("name = \"x\"\n\n[[stage]]\n{STAGE}\n[[stage]]\nname = \"x\"\n"));
    assert_eq!((line, key.as_str()), (Some(8), "stage[1]"));
    assert!(problem.contains("cohort_percent"), "{problem}");
}

#[test]
fn plan_without_stages_is_refused() {
    let (line, key, _) = refused("name = \"empty\"\n");
    assert_eq!((line, key.as_str()), (None, "stage"));
}

#[test]
fn plan_with_two_stages_of_one_name_is_refused() {
    let text = format!(
        "[[stage]]\nname = \"a\"\ncohort_percent = 50\nsuccess_percent = 90\nerror_percent = 5\n\
                        [[stage]]\nname = \"a\"\n{STAGE}"
    );
    let (line, key, _) = refused(&text);
    assert_eq!((line, key.as_str()), (Some(7), "stage[1].name"));
}

#[test]
fn plan_percentages_round_trip_through_persistence() {
    let path = format!("{}/../fixtures/plans/canary.toml", env!("CARGO_MANIFEST_DIR"));
    let p = Plan::from_toml(&std::fs::read_to_string(&path).unwrap(), Path::new(&path)).unwrap();
    let back: Plan = canonical::from_slice(&canonical::to_vec(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    assert_eq!(p.shadow.unwrap().min_agreement_percent.unwrap().to_string(), "98.50%");
}

#[test]
fn plan_shadow_wider_than_the_last_stage_is_refused() {
    let text =
        "[shadow]\ncohort_percent = 60\n\n[[stage]]\ncohort_percent = 50\nsuccess_percent = 90\nerror_percent = 5\n";
    let (line, key, _) = refused(text);
    assert_eq!((line, key.as_str()), (Some(2), "shadow.cohort_percent"));
}

#[test]
fn soak_end_is_the_rollouts_deadline_and_judgement_there_advances() {
    let mut f = Fleet::low(two_stages(1, "100", "10"), 100);
    assert_eq!(f.r.next_deadline(f.now()), Some(T0 + 600), "the first stage soaks 600 s");
    f.report(&f.serving(), Outcome::Installed);
    f.wait(599);
    assert_eq!(f.tick(), vec![], "every device installed, but the soak is not over");
    assert_eq!(f.r.next_deadline(f.now()), Some(T0 + 600));
    f.wait(1);
    assert_eq!(advanced_to(&f.tick()), Some(1), "judged at its deadline");
    // The last stage has no soak: from here only reports move it.
    assert_eq!(f.r.next_deadline(f.now()), None);
}

#[test]
fn soak_over_but_outcomes_missing_leaves_judgement_to_the_reports() {
    let mut f = Fleet::low(two_stages(5, "100", "10"), 100);
    f.wait(600);
    assert_eq!(f.tick(), vec![], "no outcome yet");
    assert_eq!(f.r.next_deadline(f.now()), None, "no time-based step left: no busy ticking");
}

#[test]
fn paused_rollout_keeps_its_soak_deadline_because_aborts_are_still_judged() {
    let mut f = Fleet::low(two_stages(1, "100", "10"), 100);
    f.command(Command::Pause).unwrap();
    assert_eq!(f.r.next_deadline(f.now()), Some(T0 + 600));
}

#[test]
fn rollout_waiting_for_approval_or_aborted_has_no_deadline() {
    let mut f = Fleet::start(release("r1", RiskTier::High), two_stages(1, "100", "10"), 100);
    assert!(matches!(f.started[..], [Effect::PauseForApproval { stage: 0, .. }]));
    assert_eq!(f.r.next_deadline(f.now()), None, "only an operator moves it");
    f.wait(30);
    f.command(Command::Approve { key_id: REVIEWER.into() }).unwrap();
    assert_eq!(f.r.next_deadline(f.now()), Some(T0 + 30 + 600), "the soak runs from the approval");
    f.command(Command::Abort { reason: "test".into() }).unwrap();
    assert_eq!(f.r.next_deadline(f.now()), None);
}
