//! Several capabilities on one device: each lane updates, fails and rolls back on its own; the device's memory
//! limit is checked over every lane before a package is fetched; an earlier agent's single-lane state keeps its
//! active model after an upgrade.

use outpost_shared::Digest;
use outpost_shared::update::lanes::{DeviceState, LaneAction, LaneAssignment, Lanes, MEMORY_RULE};
use outpost_shared::update::{Action, AgentState, Event, HealthPolicy, Installed, Phase, Slot, Target, Timing};

const T0: u64 = 1_800_000_000;
const OCR: &str = "ocr.text-direction";
const VAD: &str = "audio.vad";
const MIB: u64 = 1 << 20;

fn target(v: &str) -> Target {
    Target { path: format!("packages/low/{v}.opkg"), digest: Digest::of(v.as_bytes()), length: 100 }
}

fn lane(capability: &str, v: &str, memory_bytes: u64) -> LaneAssignment {
    LaneAssignment { capability: capability.into(), target: target(v), memory_bytes, refusal: None, retry: 0 }
}

fn lanes(limit: Option<u64>) -> Lanes {
    Lanes::new(DeviceState::default(), HealthPolicy { inferences: 3, seconds: 60 }, Timing::default(), limit)
}

/// Downloads and stages what the actions ask for, as a driver whose downloads and smoke tests pass would.
fn perform(l: &mut Lanes, now: u64, actions: Vec<LaneAction>) {
    let mut queue: std::collections::VecDeque<LaneAction> = actions.into();
    while let Some(LaneAction { capability, action }) = queue.pop_front() {
        let event = match action {
            Action::Download(_) => Event::Downloaded,
            Action::Stage { .. } => Event::Staged,
            _ => continue,
        };
        queue.extend(l.handle(now, &capability, event));
    }
}

fn serving(l: &Lanes, capability: &str) -> Option<Digest> {
    l.serving().get(capability).map(|i| i.target.digest)
}

fn confirm(l: &mut Lanes, model: &str) {
    for _ in 0..3 {
        l.inference(T0, target(model).digest, true);
    }
}

#[test]
fn one_capabilitys_rollback_leaves_anothers_model_serving() {
    let mut l = lanes(None);
    let actions = l.assigned(T0, 1, vec![lane(OCR, "ocr-1", MIB), lane(VAD, "vad-1", MIB)], vec![]);
    perform(&mut l, T0, actions);
    confirm(&mut l, "ocr-1");
    confirm(&mut l, "vad-1");
    assert_eq!(serving(&l, OCR), Some(target("ocr-1").digest));
    assert_eq!(serving(&l, VAD), Some(target("vad-1").digest));

    // A new VAD release fails in its health window...
    let actions = l.assigned(T0 + 1, 2, vec![lane(OCR, "ocr-1", MIB), lane(VAD, "vad-2", MIB)], vec![]);
    perform(&mut l, T0 + 1, actions);
    assert_eq!(serving(&l, VAD), Some(target("vad-2").digest));
    let rollback = l.inference(T0 + 2, target("vad-2").digest, false);
    // ...and only the VAD lane acts: back to vad-1, while the OCR model is not touched.
    assert!(rollback.iter().all(|a| a.capability == VAD), "{rollback:?}");
    assert!(
        rollback.iter().any(|a| matches!(&a.action, Action::Activate(i) if i.target.digest == target("vad-1").digest)),
        "{rollback:?}"
    );
    assert_eq!(serving(&l, VAD), Some(target("vad-1").digest));
    assert_eq!(serving(&l, OCR), Some(target("ocr-1").digest));
    assert!(l.lane(VAD).is_some_and(|v| v.state.rolled_back.contains(&target("vad-2").digest)));
    assert!(l.lane(OCR).is_some_and(|o| o.state.rolled_back.is_empty() && o.state.last_error.is_none()));

    // Revoking the OCR package rolls back only the OCR lane (to nothing: it had no other good package).
    let actions =
        l.assigned(T0 + 3, 3, vec![lane(OCR, "ocr-1", MIB), lane(VAD, "vad-1", MIB)], vec![target("ocr-1").digest]);
    assert!(actions.iter().any(|a| a.capability == OCR && a.action == Action::Deactivate), "{actions:?}");
    assert!(actions.iter().all(|a| a.capability == OCR || matches!(a.action, Action::Report(_))), "{actions:?}");
    assert_eq!(serving(&l, OCR), None);
    assert_eq!(serving(&l, VAD), Some(target("vad-1").digest));
}

#[test]
fn each_capability_has_its_own_slots_and_health_window() {
    let mut l = lanes(None);
    let actions = l.assigned(T0, 1, vec![lane(OCR, "ocr-1", MIB), lane(VAD, "vad-1", MIB)], vec![]);
    let downloads: Vec<&str> =
        actions.iter().filter(|a| matches!(a.action, Action::Download(_))).map(|a| a.capability.as_str()).collect();
    assert_eq!(downloads, [VAD, OCR], "both lanes fetch in one check: {actions:?}");
    perform(&mut l, T0, actions);
    confirm(&mut l, "ocr-1");
    // The VAD package is still on trial: its window ends on its own deadline.
    assert!(matches!(l.lane(VAD).map(|v| &v.state.phase), Some(Phase::Health { .. })));
    assert_eq!(l.lane(OCR).map(|o| &o.state.phase), Some(&Phase::Idle));
    assert_eq!(l.next_deadline(T0), T0, "no check has ended yet: one is due");
    l.check_ended(T0, &mut outpost_shared::rng::SeededRng::new(1));
    assert_eq!(l.next_deadline(T0), T0 + 60, "the VAD health window's end comes before the next poll");
    let confirmed = l.tick(T0 + 60);
    assert!(confirmed.iter().all(|a| a.capability == VAD), "{confirmed:?}");
    assert_eq!(l.lane(VAD).map(|v| &v.state.phase), Some(&Phase::Idle));
}

#[test]
fn a_device_over_its_memory_budget_refuses_the_package_that_would_exceed_it() {
    let mut l = lanes(Some(100 * MIB));
    let actions = l.assigned(T0, 1, vec![lane(OCR, "ocr-1", 40 * MIB)], vec![]);
    perform(&mut l, T0, actions);
    confirm(&mut l, "ocr-1");
    assert_eq!(l.resident_memory(), 40 * MIB);

    // 40 MiB held + 70 MiB > 100 MiB: the VAD package is refused before download, with the numbers.
    let actions = l.assigned(T0 + 1, 2, vec![lane(OCR, "ocr-1", 40 * MIB), lane(VAD, "vad-big", 70 * MIB)], vec![]);
    assert!(actions.iter().all(|a| !matches!(a.action, Action::Download(_))), "{actions:?}");
    let vad = l.lane(VAD).expect("the VAD lane exists");
    let refusal = vad.state.refused.last().expect("refused");
    assert_eq!((refusal.digest, refusal.rule.as_str(), refusal.until), (target("vad-big").digest, MEMORY_RULE, None));
    for figure in [&(70 * MIB).to_string(), &(40 * MIB).to_string(), &(110 * MIB).to_string(), &(100 * MIB).to_string()]
    {
        assert!(refusal.reason.contains(figure.as_str()), "{figure} missing from {}", refusal.reason);
    }
    let report = actions.iter().find_map(|a| match &a.action {
        Action::Report(r) => Some(r.clone()),
        _ => None,
    });
    assert!(report.is_some_and(|r| r.contains(MEMORY_RULE)), "{actions:?}");
    assert_eq!(serving(&l, OCR), Some(target("ocr-1").digest), "the OCR model keeps serving");

    // A package that fits is fetched: 40 + 60 = 100 MiB.
    let actions = l.assigned(T0 + 2, 3, vec![lane(OCR, "ocr-1", 40 * MIB), lane(VAD, "vad-1", 60 * MIB)], vec![]);
    assert!(actions.iter().any(|a| a.capability == VAD && matches!(a.action, Action::Download(_))), "{actions:?}");
    perform(&mut l, T0 + 2, actions);
    confirm(&mut l, "vad-1");
    assert_eq!(l.resident_memory(), 100 * MIB);

    // A new OCR release needs room beside the old one through its health window: 60 + 40 + 20 > 100.
    let actions = l.assigned(T0 + 3, 4, vec![lane(OCR, "ocr-2", 20 * MIB), lane(VAD, "vad-1", 60 * MIB)], vec![]);
    assert!(actions.iter().all(|a| !matches!(a.action, Action::Download(_))), "{actions:?}");
    assert_eq!(l.lane(OCR).and_then(|o| o.state.refused.last()).map(|r| r.rule.as_str()), Some(MEMORY_RULE));
}

#[test]
fn an_upgraded_agent_keeps_its_active_model_in_its_old_slots() {
    // What a single-capability agent wrote to state.json.
    let mut old = AgentState::new(T0);
    let active = Installed { target: target("ocr-1"), slot: Slot::B };
    old.active = Some(active.clone());
    old.last_good = Some(active.clone());
    old.assignment_version = 7;
    let bytes = serde_json::to_vec(&old).expect("encodes");

    let state = DeviceState::from_json(&bytes, OCR).expect("an old state reads");
    let migrated = state.lanes.get(OCR).expect("the old state is the OCR lane");
    assert!(migrated.legacy_slots, "its slots stay where they are on disk");
    assert_eq!(migrated.state, old);

    // The new form reads back as written.
    let again = DeviceState::from_json(&serde_json::to_vec(&state).expect("encodes"), "ignored").expect("reads");
    assert_eq!(again, state);

    // Started, it serves its model at once, and an older assignment is still refused.
    let mut l = Lanes::new(state, HealthPolicy::default(), Timing::default(), None);
    let started = l.started(T0 + 1, true);
    assert_eq!(started, vec![LaneAction { capability: OCR.into(), action: Action::Activate(active) }]);
    let stale = l.assigned(T0 + 2, 6, vec![lane(OCR, "ocr-0", MIB)], vec![]);
    assert!(stale.iter().all(|a| !matches!(a.action, Action::Download(_))), "{stale:?}");
}

#[test]
fn a_report_of_several_lanes_reads_as_the_primary_lanes_report_on_an_earlier_hub() {
    use outpost_shared::canonical;
    use outpost_shared::update::StateReport;
    use outpost_shared::update::lanes::DeviceReport;

    let mut l = lanes(None);
    let actions = l.assigned(T0, 1, vec![lane(OCR, "ocr-1", MIB), lane(VAD, "vad-1", MIB)], vec![]);
    perform(&mut l, T0, actions);
    confirm(&mut l, "ocr-1");
    let failing = l.inference(T0, target("vad-1").digest, false);
    assert!(failing.iter().any(|a| a.capability == VAD && a.action == Action::Deactivate), "{failing:?}");
    l.set_primary(OCR);

    let report = l.report("hello", None);
    let bytes = canonical::to_vec(&report).expect("encodes");
    // An earlier hub decodes a StateReport: the primary lane's, as a single-model agent sent it.
    let old: StateReport = canonical::from_slice(&bytes).expect("an earlier hub reads it");
    assert_eq!(old, report.state);
    assert_eq!(old.active, Some(target("ocr-1").digest));
    assert_eq!(old.rolled_back, Vec::<Digest>::new(), "the VAD lane's rollback is not the OCR lane's");
    // This hub sees every lane.
    let new: DeviceReport = canonical::from_slice(&bytes).expect("reads back");
    assert_eq!(new, report);
    assert_eq!(new.lanes[VAD].rolled_back, vec![target("vad-1").digest]);
    assert_eq!(new.rolled_back(), vec![target("vad-1").digest]);
    // A report without lanes keeps its bytes, and reads as a DeviceReport without lanes.
    let single = canonical::to_vec(&report.state).expect("encodes");
    let read: DeviceReport = canonical::from_slice(&single).expect("an earlier agent's report reads");
    assert!(read.lanes.is_empty());
    assert_eq!(canonical::to_vec(&read).expect("encodes"), single);
}
