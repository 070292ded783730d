//! A whole release across 1,000 devices on a manual clock, driven only by the state machines' deadlines: each
//! device's `UpdateLoop` and the hub's `Rollout` say when they next need to run, and the clock jumps there.
//!
//! No sockets, no sleeps: the hub side is the rollout controller fed the way `hub::rollouts` feeds it (outcome,
//! judgement, package; a tick at its deadline), the device side performs the loop's actions as the agent's
//! driver does (reports leave with the next check). What is measured is that the deadlines alone finish a release.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::time::Duration;

use outpost_shared::Digest;
use outpost_shared::clock::{Clock, ManualClock, UnixSeconds};
use outpost_shared::manifest::RiskTier;
use outpost_shared::rng::SeededRng;
use outpost_shared::rollout::{Directive, Plan, Release, Rollout, State, outcome_of};
use outpost_shared::update::{
    Action, AgentState, Event, HealthPolicy, Installed, Phase, Slot, Target, Timing, UpdateLoop,
};

const T0: UnixSeconds = 1_800_000_000;
const DEVICES: usize = 1_000;
/// A release that is not over a simulated day after its start is stuck.
const GIVE_UP: UnixSeconds = T0 + 86_400;

fn target(v: &str) -> Target {
    Target { path: format!("packages/low/m-{v}.opkg"), digest: Digest::of(v.as_bytes()), length: 100 }
}

/// A canary of 1 % soaking 10 minutes, then everyone, soaking 20 minutes; every device must confirm.
fn plan() -> Plan {
    let text = "[[stage]]\nname = \"canary\"\ncohort_percent = 1\nmin_devices = 5\nsoak_secs = 600\n\
                success_percent = 100\nerror_percent = 5\n\n\
                [[stage]]\nname = \"all\"\ncohort_percent = 100\nmin_devices = 100\nsoak_secs = 1200\n\
                success_percent = 100\nerror_percent = 5\n";
    Plan::from_toml(text, Path::new("plan.toml")).unwrap()
}

/// One device: its update loop and the reports waiting for its next check.
struct Device {
    id: String,
    updates: UpdateLoop,
    outbox: Vec<String>,
}

/// The hub's side: the release's controller and the assignment version the director signs.
struct Hub {
    rollout: Rollout,
    v1: Target,
    v2: Target,
}

impl Hub {
    /// What the director assigns `device`: the release's package once its stage started, else the channel's v1.
    fn assignment(&self, device: &str, now: UnixSeconds) -> Event {
        let (target, retry) = match self.rollout.directive(device) {
            Some(Directive::Serve { retry, .. }) => (self.v2.clone(), retry),
            _ => (self.v1.clone(), 0),
        };
        Event::Assigned { version: now, target: Some(target), revoked: vec![], refusal: None, retry }
    }

    /// A device's state report, fed as `hub::rollouts::on_report` feeds it.
    fn report(&mut self, device: &str, report: &outpost_shared::update::StateReport, now: UnixSeconds) {
        let package = self.rollout.release.package;
        if let Some(outcome) = outcome_of(report, &package) {
            self.rollout.report(device, outcome, now);
        }
        self.rollout.tick(now);
        self.rollout.report_package(device, report.active, now);
    }
}

impl Device {
    /// Runs whatever is due at `now`: a tick for the health window, and an update check if one is due.
    fn wake(&mut self, now: UnixSeconds, hub: &mut Hub, rng: &mut SeededRng) {
        let actions = self.updates.handle(now, Event::Tick);
        self.perform(now, actions);
        if self.updates.check_due(now) {
            let actions = self.updates.handle(now, hub.assignment(&self.id, now));
            self.perform(now, actions);
            for message in std::mem::take(&mut self.outbox) {
                hub.report(&self.id, &self.updates.state.report(&message), now);
            }
            self.updates.check_ended(now, rng);
        }
    }

    /// Performs the loop's actions as the agent's driver does: downloads and staging succeed at once.
    fn perform(&mut self, now: UnixSeconds, actions: Vec<Action>) {
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let event = match action {
                Action::Download(_) => Event::Downloaded,
                Action::Stage { .. } => Event::Staged,
                Action::Report(message) => {
                    self.outbox.push(message);
                    continue;
                }
                Action::Activate(_) | Action::Deactivate => continue,
            };
            queue.extend(self.updates.handle(now, event));
        }
    }
}

#[test]
#[allow(clippy::disallowed_methods)] // the test's own wall time, measured and printed, never fed to the machines
fn thousand_devices_and_a_rollout_finish_a_release_on_deadlines_alone() {
    let started = std::time::Instant::now();
    let clock = ManualClock::new(T0);
    let (v1, v2) = (target("1"), target("2"));
    let ids: Vec<String> = (0..DEVICES).map(|i| Digest::of(format!("device {i}").as_bytes()).to_hex()).collect();
    let release = Release {
        id: "r1".into(),
        package: v2.digest,
        last_good: Some(v1.digest),
        risk: RiskTier::Low,
        signers: vec!["k".into()],
    };
    let (rollout, _) = Rollout::start(release, plan(), ids.clone(), clock.wall()).unwrap();
    let mut hub = Hub { rollout, v1: v1.clone(), v2: v2.clone() };
    let health = HealthPolicy { inferences: 20, seconds: 300 };
    let timing = Timing { poll_secs: 60, jitter_secs: 10, ..Timing::default() };
    let running_v1 = Installed { target: v1.clone(), slot: Slot::A };
    let mut fleet: Vec<Device> = ids
        .into_iter()
        .map(|id| {
            let mut state = AgentState::new(T0);
            (state.active, state.last_good) = (Some(running_v1.clone()), Some(running_v1.clone()));
            Device { id, updates: UpdateLoop::new(state, health).with_timing(timing), outbox: vec![] }
        })
        .collect();
    let mut rng = SeededRng::new(15);
    // Each device has exactly one entry: its next deadline.
    let mut due: BinaryHeap<Reverse<(UnixSeconds, usize)>> =
        fleet.iter().enumerate().map(|(i, d)| Reverse((d.updates.next_deadline(T0), i))).collect();
    let (mut steps, mut wakes) = (0u64, 0u64);
    let mut canary_at = None;
    // The rollout's deadline as it said it after its last run (it says none once that time has come).
    let mut rollout_due = hub.rollout.next_deadline(T0);
    while !hub.rollout.is_finished() {
        let now = clock.wall();
        assert!(now < GIVE_UP, "the release is stuck at {:?}", hub.rollout.status());
        while let Some(&Reverse((at, i))) = due.peek()
            && at <= now
        {
            due.pop();
            fleet[i].wake(now, &mut hub, &mut rng);
            due.push(Reverse((fleet[i].updates.next_deadline(now), i)));
            wakes += 1;
        }
        if rollout_due.is_some_and(|t| t <= now) {
            hub.rollout.tick(now);
        }
        rollout_due = hub.rollout.next_deadline(now);
        if canary_at.is_none() && hub.rollout.position == outpost_shared::rollout::Position::Stage(1) {
            canary_at = Some(now - T0);
        }
        let devices_next = due.peek().map(|Reverse((t, _))| *t).expect("devices always have a deadline");
        let next = rollout_due.map_or(devices_next, |t| t.min(devices_next));
        assert!(next > now, "a deadline at or before now after running it would spin");
        clock.advance(Duration::from_secs(next - now));
        steps += 1;
    }
    let took = started.elapsed();
    let finished = clock.wall() - T0;
    eprintln!(
        "{DEVICES} devices: release finished {finished} s after its start (canary passed at {} s), \
         {steps} clock steps, {wakes} device wakes, {:.0} ms wall",
        canary_at.unwrap_or_default(),
        took.as_secs_f64() * 1000.0
    );
    assert!(matches!(hub.rollout.state, State::Completed { .. }), "{:?}", hub.rollout.state);
    assert_eq!(canary_at.map(|t| t >= 600), Some(true), "the canary stage soaked its full 10 minutes");
    for d in &fleet {
        assert_eq!(d.updates.state.phase, Phase::Idle, "{} still busy", d.id);
        let good = d.updates.state.last_good.as_ref().map(|g| g.target.digest);
        assert_eq!(good, Some(v2.digest), "{} confirmed v2 through its health window", d.id);
    }
    // Woken for its checks and its health window's end, never to find nothing to do every second.
    let bound = DEVICES as u64 * (finished / timing.poll_secs + 2);
    assert!(wakes <= bound, "{wakes} device wakes, more than the {bound} the deadlines call for");
    let cohort = hub.rollout.cohort_stats();
    assert_eq!((cohort.installed, cohort.eligible()), (DEVICES as u64, DEVICES as u64));
}
