//! The update loop's decisions, driven through whole release stories on a virtual clock: adoption, a broken
//! package never activated, a rollback that is not retried, revocation, restarts at every step; and when the loop
//! next needs its driver (poll with jitter, health-window end, deferral windows, attestation renewal).

use outpost_shared::Digest;
use outpost_shared::rng::SeededRng;
use outpost_shared::update::{
    Action, AgentState, Event, HealthPolicy, Installed, Phase, Refusal, Slot, Target, Timing, UpdateLoop,
};

const T0: u64 = 1_800_000_000;

fn target(v: &str) -> Target {
    Target { path: format!("packages/low/m-{v}.opkg"), digest: Digest::of(v.as_bytes()), length: 100 }
}

fn assigned(version: u64, t: Option<Target>) -> Event {
    Event::Assigned { version, target: t, revoked: vec![], refusal: None, retry: 0 }
}

fn new_loop() -> UpdateLoop {
    UpdateLoop::new(AgentState::new(T0), HealthPolicy { inferences: 3, seconds: 60 })
}

/// Installs and confirms `t`, returning the slot it went to.
fn install(u: &mut UpdateLoop, version: u64, t: &Target) -> Slot {
    assert_eq!(u.handle(T0, assigned(version, Some(t.clone()))), vec![Action::Download(t.clone())]);
    let stage = u.handle(T0, Event::Downloaded);
    let Action::Stage { slot, .. } = stage[0] else { panic!("{stage:?}") };
    assert_eq!(u.handle(T0, Event::Staged), vec![Action::Activate(Installed { target: t.clone(), slot })]);
    for _ in 0..3 {
        u.handle(T0, Event::Inference { ok: true });
    }
    assert_eq!(u.state.phase, Phase::Idle);
    assert_eq!(u.state.last_good.as_ref().map(|g| g.target.digest), Some(t.digest));
    slot
}

#[test]
fn v1_then_v2_are_adopted_into_alternate_slots() {
    let mut u = new_loop();
    let a = install(&mut u, 1, &target("1"));
    let b = install(&mut u, 2, &target("2"));
    assert_eq!(b, a.other(), "a new package never goes into the active slot");
    assert_eq!(u.state.fallback.as_ref().map(|f| f.target.digest), Some(target("1").digest));
}

#[test]
fn package_failing_its_smoke_test_is_never_activated_nor_retried() {
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    u.handle(T0, assigned(2, Some(target("3"))));
    u.handle(T0, Event::Downloaded);
    let actions = u.handle(T0, Event::StageFailed("smoke test outside tolerance".into()));
    assert!(actions.iter().all(|a| !matches!(a, Action::Activate(_))), "{actions:?}");
    assert_eq!(u.state.active.as_ref().map(|a| a.target.digest), Some(target("1").digest));
    let again = u.handle(T0 + 10, assigned(3, Some(target("3"))));
    assert!(matches!(&again[..], [Action::Report(r)] if r.contains("rolled back")), "{again:?}");
}

#[test]
fn a_package_the_full_disk_could_not_stage_is_retried_when_space_returns_not_refused() {
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    u.handle(T0, assigned(2, Some(target("3"))));
    u.handle(T0, Event::Downloaded);
    let actions = u.handle(T0, Event::StageInterrupted("slots/b: No space left on device".into()));
    assert!(actions.iter().all(|a| !matches!(a, Action::Activate(_))), "{actions:?}");
    assert_eq!(u.state.active.as_ref().map(|a| a.target.digest), Some(target("1").digest));
    assert!(!u.state.rolled_back.contains(&target("3").digest), "the package is not at fault");
    // The next check offers it again, and this time it is staged.
    let again = u.handle(T0 + 10, assigned(3, Some(target("3"))));
    assert!(matches!(&again[..], [Action::Download(t)] if t.digest == target("3").digest), "{again:?}");
    u.handle(T0 + 10, Event::Downloaded);
    let staged = u.handle(T0 + 10, Event::Staged);
    assert!(staged.iter().any(|a| matches!(a, Action::Activate(_))), "{staged:?}");
}

#[test]
fn package_failing_its_health_window_is_rolled_back_and_not_reoffered() {
    let mut u = new_loop();
    let s1 = install(&mut u, 1, &target("1"));
    u.handle(T0, assigned(2, Some(target("4"))));
    u.handle(T0, Event::Downloaded);
    u.handle(T0, Event::Staged);
    u.handle(T0, Event::Inference { ok: true });
    let actions = u.handle(T0 + 1, Event::Inference { ok: false });
    assert_eq!(actions[0], Action::Activate(Installed { target: target("1"), slot: s1 }));
    assert!(u.state.rolled_back.contains(&target("4").digest));
    assert!(matches!(&u.handle(T0 + 5, assigned(3, Some(target("4"))))[..], [Action::Report(_)]));
}

#[test]
fn health_window_also_confirms_by_time() {
    let mut u = new_loop();
    u.handle(T0, assigned(1, Some(target("1"))));
    u.handle(T0, Event::Downloaded);
    u.handle(T0, Event::Staged);
    assert!(u.handle(T0 + 59, Event::Tick).is_empty());
    u.handle(T0 + 60, Event::Tick);
    assert_eq!(u.state.last_good.map(|g| g.target.digest), Some(target("1").digest));
}

#[test]
fn revoked_active_package_is_replaced_by_the_last_good_one() {
    let mut u = new_loop();
    let s1 = install(&mut u, 1, &target("1"));
    install(&mut u, 2, &target("2"));
    let actions = u.handle(
        T0,
        Event::Assigned { version: 3, target: None, revoked: vec![target("2").digest], refusal: None, retry: 0 },
    );
    assert_eq!(actions[0], Action::Activate(Installed { target: target("1"), slot: s1 }));
    // And a revoked package is never installed again.
    let again = u.handle(T0, assigned(4, Some(target("2"))));
    assert!(matches!(&again[..], [Action::Report(r)] if r.contains("revoked")), "{again:?}");
}

#[test]
fn nothing_left_to_serve_deactivates_rather_than_serving_a_revoked_model() {
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    let actions = u.handle(
        T0,
        Event::Assigned { version: 2, target: None, revoked: vec![target("1").digest], refusal: None, retry: 0 },
    );
    assert_eq!(actions[0], Action::Deactivate);
    assert!(u.state.active.is_none());
}

#[test]
fn restart_at_every_step_resumes_or_falls_back_safely() {
    // Downloading: serve the active model again at once, and resume the download.
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    let v1 = u.state.active.clone().unwrap();
    u.handle(T0, assigned(2, Some(target("2"))));
    let mut restarted = UpdateLoop::new(u.state.clone(), u.health);
    assert_eq!(
        restarted.handle(T0, Event::Started { clean: false }),
        vec![Action::Activate(v1.clone()), Action::Download(target("2"))]
    );
    // Staging: serve the active model, and stage again into the same inactive slot.
    restarted.handle(T0, Event::Downloaded);
    let Phase::Staging { slot, .. } = restarted.state.phase.clone() else { panic!() };
    let mut again = UpdateLoop::new(restarted.state.clone(), u.health);
    assert_eq!(
        again.handle(T0, Event::Started { clean: false }),
        vec![Action::Activate(v1), Action::Stage { target: target("2"), slot }]
    );
    // Health window: a restart before confirmation rolls back to the last good package.
    again.handle(T0, Event::Staged);
    let mut after_crash = UpdateLoop::new(again.state.clone(), u.health);
    let actions = after_crash.handle(T0 + 1, Event::Started { clean: false });
    assert_eq!(actions[0], Action::Activate(u.state.last_good.clone().unwrap()));
    // Idle: serve what is active.
    let mut idle = UpdateLoop::new(after_crash.state.clone(), u.health);
    assert_eq!(
        idle.handle(T0 + 2, Event::Started { clean: false }),
        vec![Action::Activate(after_crash.state.active.clone().unwrap())]
    );
}

#[test]
fn replayed_older_assignment_is_refused() {
    let mut u = new_loop();
    install(&mut u, 5, &target("1"));
    let actions = u.handle(T0, assigned(4, Some(target("2"))));
    assert!(matches!(&actions[..], [Action::Report(r)] if r.contains("older")), "{actions:?}");
    assert_eq!(u.state.phase, Phase::Idle);
}

#[test]
fn clock_going_backwards_is_noticed_and_held() {
    let mut u = new_loop();
    u.handle(T0 + 100, Event::Tick);
    let actions = u.handle(T0, Event::Tick);
    assert!(matches!(&actions[..], [Action::Report(r)] if r.contains("backwards")), "{actions:?}");
    assert_eq!(u.state.last_known_time, T0 + 100);
}

#[test]
fn graceful_stop_during_the_health_window_continues_the_trial() {
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    u.handle(T0, assigned(2, Some(target("2"))));
    u.handle(T0, Event::Downloaded);
    u.handle(T0, Event::Staged);
    let mut restarted = UpdateLoop::new(u.state.clone(), u.health);
    let actions = restarted.handle(T0 + 1, Event::Started { clean: true });
    assert!(matches!(&actions[..], [Action::Activate(i)] if i.target == target("2")), "{actions:?}");
    assert!(matches!(restarted.state.phase, Phase::Health { .. }));
}

#[test]
fn interrupted_download_resumes_at_the_next_assignment_of_the_same_package() {
    let mut u = new_loop();
    u.handle(T0, assigned(1, Some(target("1"))));
    // Restarted: the driver may only act on the next check's assignment.
    let mut restarted = UpdateLoop::new(u.state.clone(), u.health);
    restarted.handle(T0, Event::Started { clean: false });
    assert_eq!(restarted.handle(T0 + 1, assigned(2, Some(target("1")))), vec![Action::Download(target("1"))]);
}

#[test]
fn newer_assignment_supersedes_an_unfinished_download_or_staging() {
    let mut u = new_loop();
    u.handle(T0, assigned(1, Some(target("1"))));
    assert_eq!(u.handle(T0, assigned(2, Some(target("2")))), vec![Action::Download(target("2"))]);
    u.handle(T0, Event::Downloaded);
    assert!(matches!(u.state.phase, Phase::Staging { .. }));
    assert_eq!(u.handle(T0, assigned(3, Some(target("3")))), vec![Action::Download(target("3"))]);
    u.handle(T0, assigned(4, None));
    assert_eq!(u.state.phase, Phase::Idle);
}

fn refusal(t: &Target, rule: &str, until: Option<u64>) -> Refusal {
    Refusal {
        digest: t.digest,
        package: "m@2.0.0".into(),
        rule: rule.into(),
        reason: "because".into(),
        until,
        policy: Digest::of(b"site policy"),
        at: T0,
        by_site: false,
    }
}

fn refused(version: u64, t: &Target, r: Refusal) -> Event {
    Event::Assigned { version, target: Some(t.clone()), revoked: vec![], refusal: Some(r), retry: 0 }
}

#[test]
fn package_rejected_by_policy_before_download_is_never_fetched_and_reported_once() {
    let mut u = new_loop();
    u.state.policy = Some(Digest::of(b"site policy"));
    install(&mut u, 1, &target("1"));
    let first = u.handle(T0, refused(2, &target("2"), refusal(&target("2"), "max_risk", None)));
    assert!(matches!(&first[..], [Action::Report(r)] if r.contains("rejected") && r.contains("max_risk")), "{first:?}");
    assert_eq!(u.state.phase, Phase::Idle);
    let again = u.handle(T0 + 60, refused(3, &target("2"), refusal(&target("2"), "max_risk", None)));
    assert!(again.is_empty(), "the same decision is news only once: {again:?}");
    assert_eq!(u.state.active.as_ref().map(|a| a.target.digest), Some(target("1").digest));
    let report = u.state.report("check");
    assert_eq!(report.refusals.len(), 1);
    assert_eq!(report.refusals[0].rule, "max_risk");
}

#[test]
fn package_rejected_on_its_manifest_is_not_downloaded_again_under_the_same_policy() {
    let mut u = new_loop();
    u.state.policy = Some(Digest::of(b"site policy"));
    install(&mut u, 1, &target("1"));
    assert_eq!(u.handle(T0, assigned(2, Some(target("2")))), vec![Action::Download(target("2"))]);
    u.handle(T0, Event::Downloaded);
    let actions = u.handle(T0, Event::Refused(refusal(&target("2"), "manifest", None)));
    assert!(actions.iter().all(|a| !matches!(a, Action::Activate(_))), "{actions:?}");
    assert_eq!(u.state.phase, Phase::Idle);
    // The metadata still passes the policy before download, but the verified manifest did not: no new fetch.
    assert_eq!(u.handle(T0 + 60, assigned(3, Some(target("2")))), vec![]);
    // A new policy decides afresh.
    u.state.policy = Some(Digest::of(b"new policy"));
    assert_eq!(u.handle(T0 + 120, assigned(4, Some(target("2")))), vec![Action::Download(target("2"))]);
}

#[test]
fn deferred_package_is_installed_once_the_policy_accepts_it() {
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    let until = T0 + 3600;
    let first = u.handle(T0, refused(2, &target("2"), refusal(&target("2"), "maintenance_windows", Some(until))));
    assert!(matches!(&first[..], [Action::Report(r)] if r.contains("deferred")), "{first:?}");
    assert_eq!(u.state.phase, Phase::Idle);
    assert_eq!(u.state.report("x").refusals[0].until, Some(until));
    // Inside the window the policy accepts: the deferral is forgotten and the download starts.
    assert_eq!(u.handle(until, assigned(3, Some(target("2")))), vec![Action::Download(target("2"))]);
    assert!(u.state.refused.is_empty());
}

#[test]
fn refusal_arriving_mid_download_stops_the_download_and_keeps_the_active_model() {
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    u.handle(T0, assigned(2, Some(target("2"))));
    assert!(matches!(u.state.phase, Phase::Downloading { .. }));
    u.handle(T0, refused(3, &target("2"), refusal(&target("2"), "allowed_channels", None)));
    assert_eq!(u.state.phase, Phase::Idle);
    assert_eq!(u.state.active.as_ref().map(|a| a.target.digest), Some(target("1").digest));
}

#[test]
fn telemetry_names_each_update_step_rollback_and_refusal_once() {
    use outpost_shared::telemetry::{EventKind, Step, events_of};
    let mut u = new_loop();
    let mut seen = Vec::new();
    let mut feed = |u: &mut UpdateLoop, e: Event| {
        let before = u.state.clone();
        let actions = u.handle(T0, e.clone());
        seen.extend(events_of(&before, &e, &actions, &u.state));
    };
    feed(&mut u, assigned(1, Some(target("1"))));
    feed(&mut u, Event::Downloaded);
    feed(&mut u, Event::Staged);
    for _ in 0..3 {
        feed(&mut u, Event::Inference { ok: true });
    }
    feed(&mut u, assigned(2, Some(target("2"))));
    feed(&mut u, Event::Downloaded);
    feed(&mut u, Event::Staged);
    feed(&mut u, Event::Inference { ok: false });
    feed(&mut u, refused(3, &target("3"), refusal(&target("3"), "max_risk", None)));
    let steps: Vec<(Digest, Step)> = seen
        .iter()
        .filter_map(|e| match e {
            EventKind::UpdateStep { package, step, .. } => Some((*package, *step)),
            _ => None,
        })
        .collect();
    let (d1, d2) = (target("1").digest, target("2").digest);
    assert_eq!(
        steps,
        vec![
            (d1, Step::Downloading),
            (d1, Step::Downloaded),
            (d1, Step::Staged),
            (d1, Step::Activated),
            (d1, Step::Confirmed),
            (d2, Step::Downloading),
            (d2, Step::Downloaded),
            (d2, Step::Staged),
            (d2, Step::Activated),
            (d1, Step::Activated),
        ]
    );
    let rollbacks: Vec<_> = seen.iter().filter(|e| matches!(e, EventKind::Rollback { .. })).collect();
    assert!(matches!(rollbacks[..], [EventKind::Rollback { from, to: Some(to), .. }] if *from == d2 && *to == d1));
    let refusals: Vec<_> = seen.iter().filter(|e| matches!(e, EventKind::PolicyRejection { .. })).collect();
    assert!(matches!(&refusals[..], [EventKind::PolicyRejection { rule, .. }] if rule == "max_risk"));
}

#[test]
fn operator_retry_lets_a_rolled_back_package_be_tried_once_more_and_only_once() {
    let mut u = new_loop();
    install(&mut u, 1, &target("1"));
    u.handle(T0, assigned(2, Some(target("2"))));
    u.handle(T0, Event::Downloaded);
    u.handle(T0, Event::Staged);
    u.handle(T0, Event::Inference { ok: false });
    assert!(u.state.rolled_back.contains(&target("2").digest));
    let retried =
        |version, retry| Event::Assigned { version, target: Some(target("2")), revoked: vec![], refusal: None, retry };
    let again = u.handle(T0, retried(3, 1));
    assert!(again.contains(&Action::Download(target("2"))), "{again:?}");
    u.handle(T0, Event::Downloaded);
    u.handle(T0, Event::Staged);
    u.handle(T0, Event::Inference { ok: false });
    // The same retry announced again does not start another loop.
    let after = u.handle(T0 + 60, retried(4, 1));
    assert!(!after.iter().any(|a| matches!(a, Action::Download(_))), "{after:?}");
}

fn timing(poll_secs: u64, jitter_secs: u64) -> Timing {
    Timing { poll_secs, jitter_secs, renew_margin_secs: 60 }
}

#[test]
fn first_check_is_due_at_once_and_a_pushed_notice_makes_one_due_again() {
    let mut u = new_loop().with_timing(timing(600, 0));
    assert!(u.check_due(T0), "a start checks at once");
    assert_eq!(u.next_deadline(T0), T0);
    u.check_ended(T0, &mut SeededRng::new(1));
    assert!(!u.check_due(T0 + 599));
    assert_eq!(u.next_deadline(T0 + 10), T0 + 600);
    u.check_now();
    assert!(u.check_due(T0 + 10));
}

#[test]
fn jitter_keeps_the_next_check_within_poll_and_poll_plus_jitter() {
    let mut u = new_loop().with_timing(timing(60, 10));
    let mut rng = SeededRng::new(7);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..500 {
        let ended = T0 + i * 100;
        u.check_ended(ended, &mut rng);
        let next = u.next_deadline(ended);
        assert!((ended + 60..=ended + 70).contains(&next), "check {i}: next at +{}", next - ended);
        assert!(!u.check_due(next - 1) && u.check_due(next));
        seen.insert(next - ended);
    }
    assert_eq!(seen.len(), 11, "every offset in [poll, poll + jitter] occurs: {seen:?}");
}

#[test]
fn health_window_ends_on_time_even_without_inferences() {
    let mut u = new_loop().with_timing(timing(600, 0));
    install(&mut u, 1, &target("1"));
    u.handle(T0, assigned(2, Some(target("2"))));
    u.handle(T0, Event::Downloaded);
    u.handle(T0, Event::Staged);
    u.check_ended(T0, &mut SeededRng::new(1));
    assert_eq!(u.health_deadline(), Some(T0 + 60));
    assert_eq!(u.next_deadline(T0), T0 + 60, "the health window ends before the next poll");
    assert_eq!(u.handle(T0 + 59, Event::Tick), vec![], "one second early: still on trial");
    let confirmed = u.handle(u.next_deadline(T0 + 59), Event::Tick);
    assert!(matches!(&confirmed[..], [Action::Report(r)] if r.contains("confirmed")), "{confirmed:?}");
    assert_eq!(u.state.last_good.as_ref().map(|g| g.target.digest), Some(target("2").digest));
    assert_eq!(u.next_deadline(T0 + 60), T0 + 600, "back to polling");
}

/// A loop polling every `poll_secs` that runs v1 and was told at T0 that v2 is deferred until `opens`.
fn deferred_until(poll_secs: u64, opens: u64) -> UpdateLoop {
    let mut u = new_loop().with_timing(timing(poll_secs, 0));
    install(&mut u, 1, &target("1"));
    u.handle(T0, refused(2, &target("2"), refusal(&target("2"), "maintenance_windows", Some(opens))));
    u
}

#[test]
fn deferred_package_is_checked_again_when_its_window_opens() {
    let opens = T0 + 100;
    let mut u = deferred_until(3600, opens);
    u.check_ended(T0, &mut SeededRng::new(1));
    assert_eq!(u.next_deadline(T0), opens, "not the next poll, an hour away");
    assert!(!u.check_due(opens - 1) && u.check_due(opens));
    assert_eq!(u.handle(opens, assigned(3, Some(target("2")))), vec![Action::Download(target("2"))]);
}

#[test]
fn deferral_a_check_could_not_clear_waits_for_the_next_poll_instead_of_spinning() {
    let opens = T0 + 100;
    let mut u = deferred_until(600, opens);
    // The package is no longer assigned when the window opens: the deferral stays on record.
    u.handle(opens, assigned(3, Some(target("1"))));
    u.check_ended(opens, &mut SeededRng::new(1));
    assert_eq!(u.state.refused.len(), 1);
    assert!(!u.check_due(opens + 1));
    assert_eq!(u.next_deadline(opens), opens + 600);
}

#[test]
fn attestation_is_renewed_its_margin_before_expiry_and_a_short_one_does_not_spin() {
    let mut u = new_loop().with_timing(timing(7200, 0));
    u.attested(Some(T0 + 3600));
    u.check_ended(T0, &mut SeededRng::new(1));
    assert_eq!(u.next_deadline(T0), T0 + 3540, "renewed 60 s before it expires, not at the next poll");
    assert!(!u.renewal_due(T0 + 3539) && u.renewal_due(T0 + 3540));
    assert!(u.check_due(T0 + 3540));
    // An attestation shorter than the margin is renewed at every check, not in a loop between them.
    u.attested(Some(T0 + 30));
    u.check_ended(T0, &mut SeededRng::new(1));
    assert!(u.renewal_due(T0) && !u.check_due(T0 + 1));
}
