//! The agent's update decisions, sans-IO: what to do next given the persisted state, the time and what just
//! happened (an assignment arrived, a download finished, a smoke test failed, an inference succeeded...).
//!
//! The agent driver performs each returned action and feeds back its outcome; it persists [`AgentState`]
//! atomically after every call. Invariants: an active model is never written to (new packages go to the other
//! slot); anything that fails before confirmation rolls back to the last good package, which is then never
//! re-offered to this device's update loop unless an operator clears it; a revoked package is never activated.
//! The loop also decides when it next needs the driver (the next check, with jitter; a health window's end): the
//! driver only sleeps until that deadline.

use std::collections::BTreeSet;

pub mod failover;
pub mod lanes;

/// Most refusals a device remembers (oldest forgotten first).
pub const MAX_REFUSALS: usize = 32;

use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;
use crate::digest::Digest;
use crate::rng::Rng;

/// One of the two model slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// A package the director assigned and TUF lists (the driver checked both before handing it over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// TUF target path.
    pub path: String,
    /// Package digest.
    pub digest: Digest,
    /// Length in bytes, as TUF lists it.
    pub length: u64,
}

/// A package installed in a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The package.
    pub target: Target,
    /// Where it is unpacked.
    pub slot: Slot,
}

/// Where the update loop is. Persisted, so a restart resumes (or safely abandons) the step it was in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing in flight.
    Idle,
    /// Fetching the package into the staging file (resumable).
    Downloading {
        /// The package.
        target: Target,
    },
    /// Verifying, unpacking into the inactive slot, loading and smoke-testing.
    Staging {
        /// The package.
        target: Target,
        /// The slot being written (never the active one).
        slot: Slot,
    },
    /// The new package serves; it must stay healthy to be confirmed.
    Health {
        /// The package on trial.
        target: Target,
        /// Its slot.
        slot: Slot,
        /// When the trial started.
        since: UnixSeconds,
        /// Successful inferences so far.
        ok: u32,
    },
}

/// Everything the update loop remembers across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// What serves now.
    pub active: Option<Installed>,
    /// The last package that passed its health window (what a rollback returns to).
    pub last_good: Option<Installed>,
    /// The good package before `last_good`, while its slot still holds it: the fallback if `last_good` itself
    /// is revoked.
    pub fallback: Option<Installed>,
    /// The step in flight.
    pub phase: Phase,
    /// Packages this device rolled back from: never installed again by the loop.
    pub rolled_back: BTreeSet<Digest>,
    /// Packages the hub revoked: never activated.
    pub revoked: BTreeSet<Digest>,
    /// Highest director assignment version accepted.
    pub assignment_version: u64,
    /// Highest revocation list version accepted: an older list is a replay.
    #[serde(default)]
    pub revocations_version: u64,
    /// When the last assignment was accepted (the last successful update check).
    #[serde(default)]
    pub last_check: Option<UnixSeconds>,
    /// Latest wall-clock time seen; a clock reading below it is treated as this.
    pub last_known_time: UnixSeconds,
    /// The reason for the last failure or rollback, for `status` and the hub.
    pub last_error: Option<String>,
    /// Set by a graceful shutdown, cleared at start: tells a crash from a stop.
    #[serde(default)]
    pub clean_shutdown: bool,
    /// Packages the site policy rejected or deferred, newest last (at most [`MAX_REFUSALS`]).
    #[serde(default)]
    pub refused: Vec<Refusal>,
    /// Digest of the site policy in force (declarative file and WASM modules), if any.
    #[serde(default)]
    pub policy: Option<Digest>,
    /// The site this device belongs to, as its policy names it.
    #[serde(default)]
    pub site: Option<String>,
    /// Operator retries acted on, per package: a package this device rolled back from is tried again once per
    /// new retry the hub announces (`release retry-failed`), never more.
    #[serde(default)]
    pub retries: std::collections::BTreeMap<Digest, u32>,
}

/// A package the site policy refused or put off: kept so a rejected package is never downloaded again under the
/// same policy, and reported to the hub with the rule that fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The package.
    pub digest: Digest,
    /// `name@version`, as the metadata stated it.
    pub package: String,
    /// The rule that fired.
    pub rule: String,
    /// Why, for a human.
    pub reason: String,
    /// Deferred until this time; `None` means rejected.
    pub until: Option<UnixSeconds>,
    /// Digest of the policy that decided (a changed policy decides afresh).
    pub policy: Digest,
    /// When it was decided.
    pub at: UnixSeconds,
    /// Refused by the site node for the whole site rather than by this device's own policy.
    #[serde(default)]
    pub by_site: bool,
}

impl Refusal {
    /// `rejected` or `deferred`.
    pub fn verb(&self) -> &'static str {
        if self.until.is_some() { "deferred" } else { "rejected" }
    }

    fn same_decision(&self, other: &Refusal) -> bool {
        (self.digest, &self.rule, self.until, self.policy, self.by_site)
            == (other.digest, &other.rule, other.until, other.policy, other.by_site)
    }
}

impl AgentState {
    /// A device with nothing installed.
    pub fn new(now: UnixSeconds) -> Self {
        AgentState {
            active: None,
            last_good: None,
            fallback: None,
            phase: Phase::Idle,
            rolled_back: BTreeSet::new(),
            revoked: BTreeSet::new(),
            assignment_version: 0,
            revocations_version: 0,
            last_check: None,
            last_known_time: now,
            last_error: None,
            clean_shutdown: false,
            refused: Vec::new(),
            policy: None,
            site: None,
            retries: std::collections::BTreeMap::new(),
        }
    }
}

/// What a device tells the hub about its update state (deterministic CBOR in a `PostReport`): its real
/// installed state, the packages it rolled back from (the hub stops offering them), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReport {
    /// The package serving now.
    pub active: Option<Digest>,
    /// The last confirmed package.
    pub last_good: Option<Digest>,
    /// Packages this device rolled back from or refused before activation.
    pub rolled_back: Vec<Digest>,
    /// The step in flight, in words.
    pub phase: String,
    /// What happened, for humans.
    pub message: String,
    /// Packages the site policy refused or deferred (with the rule), newest last.
    #[serde(default)]
    pub refusals: Vec<Refusal>,
    /// Digest of the site policy in force.
    #[serde(default)]
    pub policy: Option<Digest>,
    /// The device's site, as its policy names it.
    #[serde(default)]
    pub site: Option<String>,
    /// Shadow answers compared since the previous report (deltas: the hub adds them up).
    #[serde(default)]
    pub shadow: Option<ShadowReport>,
}

/// How a shadow package's answers compared with the active model's since the last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowReport {
    /// The shadow package.
    pub package: Digest,
    /// Answers whose top-1 class matched the active model's.
    pub agreed: u64,
    /// Answers compared.
    pub compared: u64,
}

impl AgentState {
    /// The report of this state, with `message`.
    pub fn report(&self, message: &str) -> StateReport {
        let phase = match &self.phase {
            Phase::Idle => "idle".to_owned(),
            Phase::Downloading { target } => format!("downloading {}", target.digest.short()),
            Phase::Staging { target, .. } => format!("staging {}", target.digest.short()),
            Phase::Health { target, ok, .. } => format!("health window for {} ({ok} ok)", target.digest.short()),
        };
        StateReport {
            active: self.active.as_ref().map(|a| a.target.digest),
            last_good: self.last_good.as_ref().map(|a| a.target.digest),
            rolled_back: self.rolled_back.iter().copied().collect(),
            phase,
            message: message.to_owned(),
            refusals: self.refused.clone(),
            policy: self.policy,
            site: self.site.clone(),
            shadow: None,
        }
    }
}

/// Health-window settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Successful inferences that confirm a new package.
    pub inferences: u32,
    /// Seconds without error that confirm a new package (whichever comes first).
    pub seconds: u64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy { inferences: 20, seconds: 300 }
    }
}

/// Seconds before the hub's attestation of a connection expires at which the agent renews it (on a new
/// connection, at an update check).
pub const RENEW_MARGIN_SECS: u64 = 60;

/// When update checks happen. Decided here rather than by the driver, so tests and simulations run the agent's
/// real schedule on a manual clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Seconds from the end of one update check to the next.
    pub poll_secs: u64,
    /// Up to this many seconds more, drawn at random at the end of each check, so a fleet does not check in
    /// lockstep.
    pub jitter_secs: u64,
    /// Renew the hub's attestation this many seconds before it expires.
    pub renew_margin_secs: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing { poll_secs: 60, jitter_secs: 10, renew_margin_secs: RENEW_MARGIN_SECS }
    }
}

/// When the last update check ended and when the next poll is due (not persisted: a start checks at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Schedule {
    ended: UnixSeconds,
    poll_at: UnixSeconds,
}

/// When update checks happen, for one device whatever it runs: the poll with its jitter, a pushed notice, the
/// attestation's renewal and deferrals' windows. Shared by [`UpdateLoop`] and [`lanes::Lanes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// Poll, jitter and renewal settings.
    pub timing: Timing,
    /// `None` until the first check ends, or after [`check_now`](Checks::check_now): a check is due.
    schedule: Option<Schedule>,
    /// When the hub's attestation of the current connection expires.
    attested_until: Option<UnixSeconds>,
}

impl Checks {
    /// Checks on `timing`; the first is due at once.
    pub fn new(timing: Timing) -> Self {
        Checks { timing, schedule: None, attested_until: None }
    }

    /// When the next update check is due (`None`: now). Deferrals (their `until`) and the renewal count only when
    /// they fall after the last check ended: one that check could not clear waits for the next poll instead of
    /// spinning.
    pub fn next_check(&self, deferrals: impl Iterator<Item = UnixSeconds>) -> Option<UnixSeconds> {
        let Schedule { ended, poll_at } = self.schedule?;
        let renewal = self.attested_until.map(|e| e.saturating_sub(self.timing.renew_margin_secs));
        Some(renewal.into_iter().chain(deferrals).filter(|&t| t > ended).fold(poll_at, UnixSeconds::min))
    }

    /// An update check ended at `now`, whether or not it succeeded: the next poll is due after the poll interval
    /// plus a jitter drawn from `rng`, uniform in `[0, jitter_secs]`.
    pub fn check_ended(&mut self, now: UnixSeconds, rng: &mut dyn Rng) {
        let mut bytes = [0u8; 8];
        rng.fill(&mut bytes);
        let draw = u64::from_le_bytes(bytes);
        let jitter = self.timing.jitter_secs.checked_add(1).map_or(draw, |n| draw % n);
        let poll_at = now.saturating_add(self.timing.poll_secs).saturating_add(jitter);
        self.schedule = Some(Schedule { ended: now, poll_at });
    }

    /// Makes an update check due at once (the hub pushed a notice).
    pub fn check_now(&mut self) {
        self.schedule = None;
    }

    /// The hub attested the connection until `expires` (`None`: not attested, or no connection).
    pub fn attested(&mut self, expires: Option<UnixSeconds>) {
        self.attested_until = expires;
    }

    /// Whether the attestation expires within the renewal margin of `now`: connect afresh and attest again.
    pub fn renewal_due(&self, now: UnixSeconds) -> bool {
        self.attested_until.is_some_and(|e| e <= now.saturating_add(self.timing.renew_margin_secs))
    }
}

/// What happened, fed to [`UpdateLoop::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The agent (re)started with the persisted state. `clean` when it had stopped gracefully; a start after a
    /// crash during a health window counts as a failure of the package on trial.
    Started {
        /// Whether the previous run shut down gracefully.
        clean: bool,
    },
    /// A verified director assignment: the target to run (`None`: keep what runs) and the revoked packages.
    Assigned {
        /// The assignment's version.
        version: u64,
        /// The assigned package, already matched against TUF targets.
        target: Option<Target>,
        /// Revoked packages from the verified revocation list.
        revoked: Vec<Digest>,
        /// The site policy's verdict on `target`, judged on its TUF metadata before download: `None` accepts.
        refusal: Option<Refusal>,
        /// Operator retries of `target` for this device (0: none).
        retry: u32,
    },
    /// The site policy refused the package being fetched or staged, judged on its verified manifest.
    Refused(Refusal),
    /// The package is downloaded and its length and hash match.
    Downloaded,
    /// Download or verification failed.
    DownloadFailed(String),
    /// Unpacked into the slot, loaded, smoke test passed.
    Staged,
    /// Unpacking, loading or the smoke test failed.
    StageFailed(String),
    /// The device's own storage refused to take the unpacked package (full, failing): the package is not at fault,
    /// so it is not refused; the next check stages it again.
    StageInterrupted(String),
    /// One inference on the active model finished.
    Inference {
        /// Whether it succeeded.
        ok: bool,
    },
    /// Time passed: the driver feeds it when [`UpdateLoop::next_deadline`] is reached.
    Tick,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fetch the package into the staging file, resuming from what is there.
    Download(Target),
    /// Verify, unpack into `slot`, load and smoke-test.
    Stage {
        /// The package.
        target: Target,
        /// The inactive slot.
        slot: Slot,
    },
    /// Serve from `slot` now (atomic switch: the old model finishes its in-flight requests).
    Activate(Installed),
    /// Serve nothing: every installed package is unusable.
    Deactivate,
    /// Tell the hub what this device runs and why.
    Report(String),
}

/// The update loop. Besides what [`handle`](UpdateLoop::handle) decides, it says when it next needs the driver
/// ([`next_deadline`](UpdateLoop::next_deadline), as quinn-proto's `poll_timeout`): the next update check and the
/// end of a health window. The driver sleeps until then (or an inference, a pushed notice), runs a check when
/// [`check_due`](UpdateLoop::check_due), feeds [`Event::Tick`], and asks again.
#[derive(Debug, Clone)]
pub struct UpdateLoop {
    /// The persisted state (save it after every `handle`).
    pub state: AgentState,
    /// Health-window settings.
    pub health: HealthPolicy,
    /// When update checks happen.
    pub checks: Checks,
}

impl UpdateLoop {
    /// A loop over `state`, with the default [`Timing`].
    pub fn new(state: AgentState, health: HealthPolicy) -> Self {
        UpdateLoop { state, health, checks: Checks::new(Timing::default()) }
    }

    /// The same loop checking on `timing`.
    pub fn with_timing(self, timing: Timing) -> Self {
        UpdateLoop { checks: Checks::new(timing), ..self }
    }

    /// When the loop next needs the driver: the earliest of the next update check (see
    /// [`check_due`](UpdateLoop::check_due)) and the end of the health window on trial. A time at or before `now`
    /// means at once. There is always a check ahead, so there is always a deadline.
    pub fn next_deadline(&self, now: UnixSeconds) -> UnixSeconds {
        let check = self.next_check().unwrap_or(now);
        self.health_deadline().map_or(check, |h| h.min(check))
    }

    /// When the package on trial is confirmed at the latest, given an [`Event::Tick`] then: its health window's
    /// end, inferences or not. `None` with no package on trial.
    pub fn health_deadline(&self) -> Option<UnixSeconds> {
        match self.state.phase {
            Phase::Health { since, .. } => Some(since.saturating_add(self.health.seconds)),
            _ => None,
        }
    }

    /// Whether an update check is due at `now`: none has ended yet, the poll interval (with its jitter) is over,
    /// a deferred package's window has opened, or the attestation needs renewing.
    pub fn check_due(&self, now: UnixSeconds) -> bool {
        self.next_check().is_none_or(|t| t <= now)
    }

    /// When the next update check is due (`None`: now).
    fn next_check(&self) -> Option<UnixSeconds> {
        self.checks.next_check(self.state.refused.iter().filter_map(|r| r.until))
    }

    /// An update check ended at `now`, whether or not it succeeded: the next poll is due after the poll interval
    /// plus a jitter drawn from `rng`, uniform in `[0, jitter_secs]`.
    pub fn check_ended(&mut self, now: UnixSeconds, rng: &mut dyn Rng) {
        self.checks.check_ended(now, rng);
    }

    /// Makes an update check due at once (the hub pushed a notice).
    pub fn check_now(&mut self) {
        self.checks.check_now();
    }

    /// The hub attested the connection until `expires` (`None`: not attested, or no connection): a check renews
    /// it [`renew_margin_secs`](Timing::renew_margin_secs) before.
    pub fn attested(&mut self, expires: Option<UnixSeconds>) {
        self.checks.attested(expires);
    }

    /// Whether the attestation expires within the renewal margin of `now`: connect afresh and attest again.
    pub fn renewal_due(&self, now: UnixSeconds) -> bool {
        self.checks.renewal_due(now)
    }

    /// Wall time, never below the last time seen (a clock that goes backwards is noticed and held).
    fn time(&mut self, now: UnixSeconds) -> (UnixSeconds, Option<Action>) {
        if now < self.state.last_known_time {
            let held = self.state.last_known_time;
            return (held, Some(Action::Report(format!("clock went backwards: {now} < last known {held}"))));
        }
        self.state.last_known_time = now;
        (now, None)
    }

    /// Advances the loop.
    pub fn handle(&mut self, now: UnixSeconds, event: Event) -> Vec<Action> {
        let (now, clock_note) = self.time(now);
        let mut actions: Vec<Action> = clock_note.into_iter().collect();
        let phase = self.state.phase.clone();
        match (phase, event) {
            (Phase::Health { target, .. }, Event::Started { clean: false }) => {
                // The trial never confirmed before the agent went down: a crash on a new model is evidence.
                actions.extend(self.roll_back(&target, "agent crashed during the health window"));
            }
            (Phase::Health { target, slot, .. }, Event::Started { clean: true }) => {
                // A graceful stop says nothing against the package: the trial goes on.
                actions.push(Action::Activate(Installed { target, slot }));
            }
            // Interrupted work resumes; meanwhile the active model serves again.
            (Phase::Downloading { target }, Event::Started { .. }) => {
                actions.extend(self.state.active.clone().map(Action::Activate));
                actions.push(Action::Download(target));
            }
            (Phase::Staging { target, slot }, Event::Started { .. }) => {
                actions.extend(self.state.active.clone().map(Action::Activate));
                actions.push(Action::Stage { target, slot });
            }
            (Phase::Idle, Event::Started { .. }) => actions.extend(self.state.active.clone().map(Action::Activate)),
            (_, Event::Assigned { version, target, revoked, refusal, retry }) => {
                if version < self.state.assignment_version {
                    actions.push(Action::Report(format!(
                        "refused assignment v{version}: older than accepted v{}",
                        self.state.assignment_version
                    )));
                    return actions;
                }
                self.state.assignment_version = version;
                self.state.last_check = Some(now);
                self.state.revoked.extend(revoked);
                actions.extend(self.enforce_revocation());
                if let Some(t) = &target {
                    // A deferral that no longer holds is forgotten; a standing rejection keeps it from download.
                    self.state.refused.retain(|r| r.digest != t.digest || r.until.is_none());
                    // An operator's new retry lets a package this device rolled back from be tried once more.
                    if retry > self.state.retries.get(&t.digest).copied().unwrap_or(0) {
                        self.state.retries.insert(t.digest, retry);
                        if self.state.rolled_back.remove(&t.digest) {
                            actions.push(Action::Report(format!(
                                "operator retry {retry}: trying {} again",
                                t.digest.short()
                            )));
                        }
                    }
                }
                // A refused package is as good as none assigned: keep what runs, drop work in flight.
                let target = match refusal {
                    Some(refusal) => {
                        actions.extend(self.refuse(refusal));
                        None
                    }
                    None => target,
                };
                match (self.state.phase.clone(), target) {
                    (Phase::Idle, Some(target)) => actions.extend(self.consider(target)),
                    // Work interrupted by a restart resumes when the same package is still assigned...
                    (Phase::Downloading { target: current }, Some(t)) if current.digest == t.digest => {
                        actions.push(Action::Download(current));
                    }
                    (Phase::Staging { target: current, slot }, Some(t)) if current.digest == t.digest => {
                        actions.push(Action::Stage { target: current, slot });
                    }
                    // ...and is dropped for a newer assignment, or for none.
                    (Phase::Downloading { .. } | Phase::Staging { .. }, Some(t)) => {
                        self.state.phase = Phase::Idle;
                        actions.extend(self.consider(t));
                    }
                    (Phase::Downloading { .. } | Phase::Staging { .. }, None) => self.state.phase = Phase::Idle,
                    // A package on trial finishes its health window first.
                    _ => {}
                }
            }
            (Phase::Downloading { target }, Event::Downloaded) => {
                let slot = self.state.active.as_ref().map_or(Slot::A, |a| a.slot.other());
                // Staging overwrites that slot: whatever good package it held is gone as a fallback.
                for keep in [&mut self.state.fallback, &mut self.state.last_good] {
                    if keep.as_ref().is_some_and(|k| k.slot == slot) {
                        *keep = None;
                    }
                }
                self.state.phase = Phase::Staging { target: target.clone(), slot };
                actions.push(Action::Stage { target, slot });
            }
            (Phase::Downloading { target }, Event::DownloadFailed(e)) => {
                // Nothing changed on the device: forget the attempt; the next check retries the download.
                self.state.phase = Phase::Idle;
                self.state.last_error = Some(format!("download of {} failed: {e}", target.digest.short()));
                actions.push(Action::Report(self.state.last_error.clone().unwrap_or_default()));
            }
            (Phase::Staging { target, slot }, Event::Staged) => {
                if self.state.revoked.contains(&target.digest) {
                    self.state.phase = Phase::Idle;
                    actions.push(Action::Report(format!("{} was revoked while staging", target.digest.short())));
                    return actions;
                }
                let installed = Installed { target: target.clone(), slot };
                self.state.active = Some(installed.clone());
                self.state.phase = Phase::Health { target, slot, since: now, ok: 0 };
                actions.push(Action::Activate(installed));
            }
            (Phase::Downloading { target } | Phase::Staging { target, .. }, Event::Refused(refusal))
                if refusal.digest == target.digest =>
            {
                // Judged on the verified manifest: nothing was activated, the active model keeps serving.
                self.state.phase = Phase::Idle;
                actions.extend(self.refuse(refusal));
            }
            (Phase::Staging { target, .. }, Event::StageInterrupted(e)) => {
                // The active slot was never touched; the slot being written is no fallback any more (see above).
                self.state.phase = Phase::Idle;
                self.state.last_error = Some(format!("staging {} could not be written: {e}", target.digest.short()));
                actions.push(Action::Report(self.state.last_error.clone().unwrap_or_default()));
            }
            (Phase::Staging { target, .. }, Event::StageFailed(e)) => {
                // The active slot was never touched: keep serving it, and never try this package again.
                self.state.phase = Phase::Idle;
                self.state.rolled_back.insert(target.digest);
                self.state.last_error = Some(format!("{} refused before activation: {e}", target.digest.short()));
                actions.push(Action::Report(self.state.last_error.clone().unwrap_or_default()));
            }
            (Phase::Health { target, slot, since, ok }, Event::Inference { ok: true }) => {
                self.state.phase = Phase::Health { target, slot, since, ok: ok + 1 };
                actions.extend(self.maybe_confirm(now));
            }
            (Phase::Health { target, .. }, Event::Inference { ok: false }) => {
                actions.extend(self.roll_back(&target, "inference failed during the health window"));
            }
            (Phase::Health { .. }, Event::Tick) => actions.extend(self.maybe_confirm(now)),
            // Anything else (a stale event after a restart, a tick while idle) changes nothing.
            _ => {}
        }
        actions
    }

    fn consider(&mut self, target: Target) -> Vec<Action> {
        let d = target.digest;
        if self.state.active.as_ref().is_some_and(|a| a.target.digest == d) {
            return vec![];
        }
        if self.state.revoked.contains(&d) {
            return vec![Action::Report(format!("not installing {}: revoked", d.short()))];
        }
        if self.state.rolled_back.contains(&d) {
            return vec![Action::Report(format!("not reinstalling {}: this device rolled back from it", d.short()))];
        }
        if self.state.refused.iter().any(|r| r.digest == d && r.until.is_none() && Some(r.policy) == self.state.policy)
        {
            return vec![]; // rejected under this very policy: reported once already
        }
        self.state.phase = Phase::Downloading { target: target.clone() };
        vec![Action::Download(target)]
    }

    /// Records a refusal; reports it when it is news (not the same decision as the one on record).
    fn refuse(&mut self, refusal: Refusal) -> Vec<Action> {
        if self.state.refused.iter().any(|r| r.same_decision(&refusal)) {
            return vec![];
        }
        self.state.refused.retain(|r| r.digest != refusal.digest);
        let message = format!(
            "{} {} ({}) by {} policy: rule `{}`: {}",
            refusal.verb(),
            refusal.package,
            refusal.digest.short(),
            if refusal.by_site { "site" } else { "device" },
            refusal.rule,
            refusal.reason
        );
        self.state.refused.push(refusal);
        let excess = self.state.refused.len().saturating_sub(MAX_REFUSALS);
        self.state.refused.drain(..excess);
        vec![Action::Report(message)]
    }

    fn maybe_confirm(&mut self, now: UnixSeconds) -> Vec<Action> {
        let Phase::Health { target, slot, since, ok } = self.state.phase.clone() else { return vec![] };
        if ok >= self.health.inferences || now.saturating_sub(since) >= self.health.seconds {
            let previous = self.state.last_good.replace(Installed { target: target.clone(), slot });
            if let Some(previous) = previous.filter(|p| p.slot != slot) {
                self.state.fallback = Some(previous);
            }
            self.state.phase = Phase::Idle;
            self.state.last_error = None;
            return vec![Action::Report(format!("confirmed {} after {ok} inferences", target.digest.short()))];
        }
        vec![]
    }

    fn roll_back(&mut self, target: &Target, reason: &str) -> Vec<Action> {
        self.state.rolled_back.insert(target.digest);
        self.state.phase = Phase::Idle;
        let message = format!("rolled back from {}: {reason}", target.digest.short());
        self.state.last_error = Some(message.clone());
        let usable = |i: &Installed| i.target.digest != target.digest && !self.state.revoked.contains(&i.target.digest);
        let back_to = if self.state.last_good.as_ref().is_some_and(usable) {
            self.state.last_good.clone()
        } else if self.state.fallback.as_ref().is_some_and(usable) {
            self.state.last_good = self.state.fallback.take();
            self.state.last_good.clone()
        } else {
            None
        };
        let mut actions = match back_to {
            Some(good) => {
                self.state.active = Some(good.clone());
                vec![Action::Activate(good)]
            }
            None => {
                self.state.active = None;
                vec![Action::Deactivate]
            }
        };
        actions.push(Action::Report(message));
        actions
    }

    fn enforce_revocation(&mut self) -> Vec<Action> {
        let revoked =
            |i: &Option<Installed>, r: &BTreeSet<Digest>| i.as_ref().is_some_and(|i| r.contains(&i.target.digest));
        let mut actions = vec![];
        if revoked(&self.state.fallback, &self.state.revoked) {
            self.state.fallback = None;
        }
        if let Phase::Downloading { target } | Phase::Staging { target, .. } = &self.state.phase
            && self.state.revoked.contains(&target.digest)
        {
            self.state.phase = Phase::Idle;
        }
        if revoked(&self.state.active, &self.state.revoked) {
            let active = self.state.active.clone().map(|a| a.target);
            if let Some(t) = active {
                actions.extend(self.roll_back(&t, "revoked by the hub"));
            }
        }
        actions
    }
}
