//! Staged rollout of one release, sans-IO: a plan file (optional shadow stage, then cumulative cohorts with
//! thresholds) and the controller that judges device outcomes on an injected clock and says what to assign.
//!
//! The hub feeds a [`Rollout`] the channel's devices, their outcomes, operator commands and `tick(now)`, and
//! persists the whole value (serde) after every call. What a device should run is [`Rollout::directive`], read
//! whenever the device asks (level-triggered, so a crash between persisting and acting loses nothing); the
//! [`Effect`]s returned say what changed, for pushing assignments early, the audit log and metrics. Each release
//! has its own `Rollout`, with no state shared between them: an aborted release never blocks the next one, and an
//! unfinished one is [`superseded`](Rollout::supersede) by it.
//!
//! # How devices are counted
//! A device belongs to the stage its bucket ([`bucket`]) falls into. A stage is judged on its *cohort*: every
//! device assigned so far (its own and every earlier stage's, late enrolments included). In that cohort:
//! - **eligible** = devices assigned − devices that rejected the package by site policy;
//! - **done** = installed (confirmed) + failed + rolled back: devices that reached an outcome;
//! - **errors** = failed + rolled back.
//!
//! A policy rejection is neither a success nor an error: it leaves both denominators and is counted apart
//! (`rejected_by_policy`). Judgement waits until `done ≥ min(min_devices, eligible)` **and** the stage's soak time
//! has elapsed since it started; then errors/done **>** `error_percent` (strictly) aborts, else
//! installed/eligible **≥** `success_percent` advances (or pauses for approval), else the stage keeps waiting.
//! Percentages are compared exactly, in integers of basis points (hundredths of a percent).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::UnixSeconds;
use crate::digest::Digest;
use crate::manifest::RiskTier;

mod plan;
pub use plan::{BUCKETS, MAX_STAGES, Percent, Plan, ShadowStage, Stage, bucket};

/// The release a rollout delivers, as the hub knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Release id (unique per hub; part of the cohort hash).
    pub id: String,
    /// The package being rolled out.
    pub package: Digest,
    /// The package the channel ran before: what an abort reassigns. `None` for a channel's first release.
    pub last_good: Option<Digest>,
    /// The package's risk tier (from its signed manifest).
    pub risk: RiskTier,
    /// Targets key ids that signed the release, in signing order: the first is the publisher.
    pub signers: Vec<String>,
}

impl Release {
    fn publisher(&self) -> Option<&str> {
        self.signers.first().map(String::as_str)
    }
}

/// What a device reported about the release, fed to [`Rollout::report`]. The package a device serves is fed
/// apart, to [`Rollout::report_package`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The package passed its health window on the device (its state report's `last_good`).
    Installed,
    /// Download, verification, unpacking or the smoke test failed; the device never switched.
    Failed {
        /// Why.
        reason: String,
    },
    /// The device activated the package, then rolled back from it.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// The site's policy rejected the package: neither a success nor an error.
    RejectedByPolicy {
        /// The rule that fired.
        rule: String,
    },
}

/// An operator command, fed to [`Rollout::command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Stop advancing (judgement for abort goes on: a pause never hides a failing release).
    Pause,
    /// Advance again.
    Resume,
    /// Abort now and reassign every device of the release to the last good package.
    Abort {
        /// Why, for the record.
        reason: String,
    },
    /// Assign the package again to the devices that failed or rolled back, and to no other.
    RetryFailed,
    /// Let the release go on to the stage it waits before.
    Approve {
        /// The approving targets key id (high risk: not the publisher's).
        key_id: String,
    },
}

/// What a call changed: assignments to push now (the same truth [`Rollout::directive`] gives on request) and
/// events for the audit log, status and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// Have these devices run `package` in shadow (beside their active model, serving nothing).
    AssignShadow {
        /// Device ids, sorted.
        devices: Vec<String>,
        /// The package.
        package: Digest,
    },
    /// Assign `package` to these devices (director assignment).
    Assign {
        /// Device ids, sorted.
        devices: Vec<String>,
        /// The package.
        package: Digest,
    },
    /// Assign `package` again to devices that failed or rolled back from it: the assignment must let them try
    /// again (a device otherwise never reinstalls a package it rolled back from).
    Retry {
        /// Device ids, sorted.
        devices: Vec<String>,
        /// The package.
        package: Digest,
    },
    /// Take the release's package away from these devices (an abort with no last good package to return to).
    Unassign {
        /// Device ids, sorted.
        devices: Vec<String>,
    },
    /// The shadow stage started.
    ShadowStarted,
    /// Stage `stage` (0-based) started.
    AdvanceTo {
        /// Index into the plan's stages.
        stage: usize,
        /// Its name.
        name: String,
    },
    /// The release waits for `release approve` before stage `stage`.
    PauseForApproval {
        /// The stage it waits before.
        stage: usize,
        /// Its name.
        name: String,
    },
    /// An operator approved stage `stage`.
    Approved {
        /// The stage.
        stage: usize,
        /// The approving key.
        key_id: String,
    },
    /// An operator paused the release.
    Paused,
    /// An operator resumed it.
    Resumed,
    /// The release is aborted; an `Assign` to the last good package (or an `Unassign`) follows.
    Abort {
        /// Why.
        reason: AbortReason,
    },
    /// Every stage succeeded.
    Completed,
    /// A newer release took over.
    Superseded {
        /// The newer release.
        by: String,
    },
    /// The rollback after an abort recovered: the plan's share of affected devices report the last good package.
    Recovered {
        /// Seconds from the abort decision.
        after_secs: u64,
    },
}

/// What one device should run as far as a release is concerned: see [`Rollout::directive`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Directive {
    /// Serve the release's package. `retry` counts the operator's retries of this device: a device that rolled
    /// back from the package may try it again when `retry` is above the count it last acted on.
    Serve {
        /// The package.
        package: Digest,
        /// Operator retries so far.
        retry: u32,
    },
    /// Run the package in shadow beside the active model, serving nothing.
    Shadow {
        /// The package.
        package: Digest,
    },
    /// The release was aborted: run the last good package (`None`: the channel had none before this release).
    Revert {
        /// The last good package.
        package: Option<Digest>,
    },
}

/// Why a release was aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// The stage's error share went above its threshold.
    ErrorThreshold {
        /// The stage.
        stage: usize,
        /// Failed and rolled-back devices in the cohort.
        errors: u64,
        /// Devices with an outcome in the cohort.
        done: u64,
        /// The plan's threshold.
        threshold: Percent,
    },
    /// The shadow's top-1 agreement stayed below the plan's gate.
    ShadowDisagreement {
        /// Agreeing answers.
        agreed: u64,
        /// Compared answers.
        compared: u64,
        /// The plan's gate.
        required: Percent,
    },
    /// An operator aborted.
    Operator {
        /// As given.
        reason: String,
    },
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::ErrorThreshold { stage, errors, done, threshold } => {
                write!(f, "stage {}: {errors} errors of {done} devices with an outcome, above {threshold}", stage + 1)
            }
            AbortReason::ShadowDisagreement { agreed, compared, required } => {
                write!(f, "shadow: {agreed} of {compared} answers agreed, below {required}")
            }
            AbortReason::Operator { reason } => write!(f, "aborted by an operator: {reason}"),
        }
    }
}

/// Why a rollout could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// A high-risk release is installable only with two distinct signatures.
    #[error("release {release} is high risk and has {signers} distinct signer(s): it needs a second signature first")]
    MissingSecondSignature {
        /// The release.
        release: String,
        /// Distinct signers it has.
        signers: usize,
    },
}

/// An operator command the rollout refuses (the caller misused the API, or the operator asked the impossible).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The release is aborted: nothing more happens to it (start a new release instead).
    #[error("release {release} is aborted")]
    Aborted {
        /// The release.
        release: String,
    },
    /// A newer release took over: nothing more happens to this one.
    #[error("release {release} was superseded by release {by}")]
    Superseded {
        /// The release.
        release: String,
        /// The newer release.
        by: String,
    },
    /// The release completed: only an abort (roll back) still applies.
    #[error("release {release} has completed")]
    Completed {
        /// The release.
        release: String,
    },
    /// `approve` while the release waits for no approval.
    #[error("release {release} is not waiting for an approval")]
    NotAwaitingApproval {
        /// The release.
        release: String,
    },
    /// A high-risk release must be approved by another key holder than its publisher.
    #[error("key {key_id} published release {release}: a high-risk release needs another key holder's approval")]
    ApproverIsPublisher {
        /// The release.
        release: String,
        /// The refused key.
        key_id: String,
    },
}

/// Where the rollout has got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// No stage entered yet (waiting for approval before the first).
    NotStarted,
    /// In the shadow stage.
    Shadow,
    /// In serving stage `i` (0-based): stages `0..=i` are assigned.
    Stage(usize),
}

/// The rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Judged at each tick.
    Running,
    /// Waiting for `approve` before entering stage `next`.
    AwaitingApproval {
        /// The stage it waits before.
        next: usize,
    },
    /// Stopped for good; the last good package was reassigned.
    Aborted {
        /// When the abort was decided.
        at: UnixSeconds,
        /// Why.
        reason: AbortReason,
    },
    /// Every stage succeeded.
    Completed {
        /// When.
        at: UnixSeconds,
    },
    /// A newer release on the channel took over before this one finished: it stopped where it was, and its devices
    /// follow the newer release.
    Superseded {
        /// When.
        at: UnixSeconds,
        /// The newer release.
        by: String,
    },
}

/// Where one device stands in the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// Its stage has not started: nothing assigned yet.
    Waiting,
    /// Assigned; no outcome yet.
    Assigned,
    /// Its latest outcome.
    Reported(Outcome),
}

/// One device of the channel, as the rollout tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// Its bucket ([`bucket`]).
    pub bucket: u32,
    /// The stage it hashes into (`None`: beyond the last stage; it only takes part in the shadow, if at all).
    pub stage: Option<usize>,
    /// Whether it hashes into the shadow cohort.
    pub shadow: bool,
    /// Whether the package was assigned to it for serving.
    pub serving: bool,
    /// Whether the package was assigned to it in shadow.
    pub shadowing: bool,
    /// Its outcome.
    pub state: DeviceState,
    /// Shadow answers that agreed with the active model / that were compared.
    pub shadow_agreed: u64,
    /// Shadow answers compared.
    pub shadow_compared: u64,
    /// Times an operator retried it.
    pub retries: u32,
    /// Reported the last good package after the abort.
    pub recovered: bool,
}

impl DeviceEntry {
    fn of_release(&self) -> bool {
        self.serving || self.shadowing
    }
}

/// Counts over a set of devices; see the module documentation for how they enter the percentages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Devices assigned the package.
    pub assigned: u64,
    /// Of those, without an outcome yet.
    pub pending: u64,
    /// Confirmed it.
    pub installed: u64,
    /// Failed before switching.
    pub failed: u64,
    /// Rolled back.
    pub rolled_back: u64,
    /// Refused by their site's policy: neither successes nor errors.
    pub rejected_by_policy: u64,
}

impl Stats {
    /// Failed + rolled back.
    pub fn errors(&self) -> u64 {
        self.failed + self.rolled_back
    }

    /// Devices with an outcome (installed or an error; policy rejections excluded).
    pub fn done(&self) -> u64 {
        self.installed + self.errors()
    }

    /// Assigned devices that did not reject the package by policy: the success denominator.
    pub fn eligible(&self) -> u64 {
        self.assigned - self.rejected_by_policy
    }

    fn add(&mut self, e: &DeviceEntry) {
        self.assigned += 1;
        match e.state {
            DeviceState::Waiting | DeviceState::Assigned => self.pending += 1,
            DeviceState::Reported(Outcome::Installed) => self.installed += 1,
            DeviceState::Reported(Outcome::Failed { .. }) => self.failed += 1,
            DeviceState::Reported(Outcome::RolledBack { .. }) => self.rolled_back += 1,
            DeviceState::Reported(Outcome::RejectedByPolicy { .. }) => self.rejected_by_policy += 1,
        }
    }
}

/// The rollback after an abort: how many devices had to return to the last good package, and when they had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// When the abort was decided.
    pub since: UnixSeconds,
    /// Devices reassigned.
    pub affected: u64,
    /// Of those, devices that have reported the last good package since.
    pub recovered: u64,
    /// When the plan's share (`recovered_percent`, 95% by default) was reached.
    pub recovered_at: Option<UnixSeconds>,
}

impl Recovery {
    /// Rollback recovery time: from the abort decision until the plan's share of affected devices reported the
    /// last good package again (`None` while not there yet, and for ever when the channel had no last good
    /// package: then nothing can be reported back).
    pub fn time(&self) -> Option<Duration> {
        self.recovered_at.map(|t| Duration::from_secs(t - self.since))
    }
}

/// A summary for `release status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The release.
    pub release: String,
    /// Its state.
    pub state: State,
    /// Where it has got to.
    pub position: Position,
    /// Whether an operator paused it.
    pub paused: bool,
    /// When the current position (stage or shadow) started.
    pub since: UnixSeconds,
    /// The cohort the current stage is judged on (all serving devices so far).
    pub cohort: Stats,
    /// Per serving stage, the devices that hash into it.
    pub stages: Vec<Stats>,
    /// The shadow devices (their shadow outcomes), if the plan has a shadow stage.
    pub shadow: Option<Stats>,
    /// Shadow answers that agreed / compared.
    pub shadow_agreement: (u64, u64),
    /// The rollback after an abort.
    pub recovery: Option<Recovery>,
}

/// The controller of one release's rollout. Persist it (serde) after every call; it holds no clock of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The release.
    pub release: Release,
    /// Its plan.
    pub plan: Plan,
    /// Its state.
    pub state: State,
    /// Where it has got to.
    pub position: Position,
    /// Operator pause: no advance while set.
    pub paused: bool,
    /// When the current position started (its soak runs from here).
    pub since: UnixSeconds,
    /// The channel's devices by id.
    pub devices: BTreeMap<String, DeviceEntry>,
    /// The rollback after an abort.
    pub recovery: Option<Recovery>,
    /// Latest time seen: an earlier `now` (a clock gone backwards) is read as this.
    pub last_known_time: UnixSeconds,
}

impl Rollout {
    /// Starts `release` under `plan` over the channel's `devices` at `now`. Returns the rollout and its first
    /// effects: the shadow or first stage's assignments, or a pause for approval (high risk).
    pub fn start(
        release: Release,
        plan: Plan,
        devices: impl IntoIterator<Item = String>,
        now: UnixSeconds,
    ) -> Result<(Rollout, Vec<Effect>), StartError> {
        let distinct: BTreeSet<&String> = release.signers.iter().collect();
        if release.risk == RiskTier::High && distinct.len() < 2 {
            return Err(StartError::MissingSecondSignature { release: release.id.clone(), signers: distinct.len() });
        }
        let mut r = Rollout {
            release,
            plan,
            state: State::Running,
            position: Position::NotStarted,
            paused: false,
            since: now,
            devices: BTreeMap::new(),
            recovery: None,
            last_known_time: now,
        };
        for d in devices {
            r.insert(d);
        }
        let mut effects = vec![];
        r.advance(now, &mut effects);
        Ok((r, effects))
    }

    fn time(&mut self, now: UnixSeconds) -> UnixSeconds {
        self.last_known_time = self.last_known_time.max(now);
        self.last_known_time
    }

    fn insert(&mut self, id: String) -> bool {
        if self.devices.contains_key(&id) {
            return false;
        }
        let b = bucket(&self.release.id, &id);
        let entry = DeviceEntry {
            bucket: b,
            stage: self.plan.stage_of(b),
            shadow: self.plan.in_shadow(b),
            serving: false,
            shadowing: false,
            state: DeviceState::Waiting,
            shadow_agreed: 0,
            shadow_compared: 0,
            retries: 0,
            recovered: false,
        };
        self.devices.insert(id, entry);
        true
    }

    /// Whether the rollout is over (aborted, completed or superseded). Nothing here holds up another release: a
    /// rollout that is not finished is simply [`supersede`](Rollout::supersede)d when the next one starts.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Aborted { .. } | State::Completed { .. } | State::Superseded { .. })
    }

    /// A newer release (`by`) starts on the channel: a running, paused or waiting rollout stops where it is, and
    /// its devices follow the newer release. An aborted or completed rollout is left as it is.
    pub fn supersede(&mut self, by: &str, now: UnixSeconds) -> Vec<Effect> {
        let now = self.time(now);
        if self.is_finished() {
            return vec![];
        }
        self.state = State::Superseded { at: now, by: by.to_owned() };
        vec![Effect::Superseded { by: by.to_owned() }]
    }

    /// What `device` should run as far as this release is concerned (`None`: the release says nothing about it;
    /// it follows the channel's previous package, or a newer release). This is the level-triggered truth for the
    /// director: read it whenever a device asks for its assignment, so nothing is lost if the hub stops between
    /// persisting the rollout and acting on the [`Effect`]s.
    pub fn directive(&self, device: &str) -> Option<Directive> {
        let e = self.devices.get(device).filter(|e| e.of_release())?;
        let package = self.release.package;
        match self.state {
            State::Superseded { .. } => None,
            State::Aborted { .. } => Some(Directive::Revert { package: self.release.last_good }),
            _ if e.serving => Some(Directive::Serve { package, retry: e.retries }),
            _ => Some(Directive::Shadow { package }),
        }
    }

    /// A device left the channel (revoked, decommissioned): it no longer counts anywhere, nor among the devices
    /// a rollback waits for.
    pub fn leave(&mut self, device: &str, now: UnixSeconds) -> Vec<Effect> {
        let now = self.time(now);
        let Some(e) = self.devices.remove(device) else { return vec![] };
        if let (State::Aborted { .. }, Some(rec)) = (&self.state, self.recovery.as_mut())
            && e.of_release()
        {
            rec.affected -= 1;
            rec.recovered -= u64::from(e.recovered);
            return self.check_recovery(now);
        }
        vec![]
    }

    /// Stages whose devices are assigned: `0..entered`.
    fn entered(&self) -> usize {
        match (&self.state, self.position) {
            (State::Completed { .. }, _) => self.plan.stage.len(),
            (_, Position::Stage(i)) => i + 1,
            _ => 0,
        }
    }

    /// A device enrolled in the channel after the start: it joins the stage it hashes into (assigned now if that
    /// stage has started, when it starts otherwise), and the shadow if that is running and covers it.
    pub fn enroll(&mut self, device: &str, now: UnixSeconds) -> Vec<Effect> {
        self.time(now);
        if !self.insert(device.to_owned()) || matches!(self.state, State::Aborted { .. } | State::Superseded { .. }) {
            return vec![];
        }
        let entered = self.entered();
        let package = self.release.package;
        let e = self.devices.get_mut(device).expect("just inserted");
        if e.stage.is_some_and(|s| s < entered) {
            e.serving = true;
            e.state = DeviceState::Assigned;
            return vec![Effect::Assign { devices: vec![device.to_owned()], package }];
        }
        if self.position == Position::Shadow && e.shadow {
            e.shadowing = true;
            e.state = DeviceState::Assigned;
            return vec![Effect::AssignShadow { devices: vec![device.to_owned()], package }];
        }
        vec![]
    }

    /// A device's report. Outcomes from devices the package was never assigned to are ignored; the latest
    /// outcome of a device replaces its earlier one. Judgement happens at the next [`tick`](Rollout::tick).
    pub fn report(&mut self, device: &str, outcome: Outcome, now: UnixSeconds) -> Vec<Effect> {
        self.time(now);
        if let Some(e) = self.devices.get_mut(device).filter(|e| e.of_release()) {
            e.state = DeviceState::Reported(outcome);
        }
        vec![]
    }

    /// The package a device of the release serves now (its state report's `active`). After an abort, the first
    /// report of the last good package counts the device as recovered; it may return [`Effect::Recovered`].
    pub fn report_package(&mut self, device: &str, active: Option<Digest>, now: UnixSeconds) -> Vec<Effect> {
        let now = self.time(now);
        let Some(e) = self.devices.get_mut(device).filter(|e| e.of_release()) else { return vec![] };
        if let (State::Aborted { .. }, Some(rec)) = (&self.state, self.recovery.as_mut())
            && active.is_some()
            && active == self.release.last_good
            && !e.recovered
        {
            e.recovered = true;
            rec.recovered += 1;
            return self.check_recovery(now);
        }
        vec![]
    }

    /// Shadow results from a device: `agreed` of `compared` answers matched the active model's top-1.
    /// Accumulates over reports.
    pub fn report_shadow(&mut self, device: &str, agreed: u64, compared: u64, now: UnixSeconds) -> Vec<Effect> {
        self.time(now);
        if let Some(e) = self.devices.get_mut(device).filter(|e| e.shadowing) {
            e.shadow_compared = e.shadow_compared.saturating_add(compared);
            e.shadow_agreed = e.shadow_agreed.saturating_add(agreed.min(compared));
        }
        vec![]
    }

    /// An operator command. Refused with a typed error when it cannot apply; see [`Command`].
    pub fn command(&mut self, cmd: Command, now: UnixSeconds) -> Result<Vec<Effect>, CommandError> {
        let now = self.time(now);
        let release = self.release.id.clone();
        match (&self.state, &cmd) {
            (State::Aborted { .. }, _) => return Err(CommandError::Aborted { release }),
            (State::Superseded { by, .. }, _) => return Err(CommandError::Superseded { release, by: by.clone() }),
            (State::Completed { .. }, Command::Pause | Command::Resume | Command::Approve { .. }) => {
                return Err(CommandError::Completed { release });
            }
            _ => {}
        }
        let mut effects = vec![];
        match cmd {
            Command::Pause => {
                if !self.paused {
                    self.paused = true;
                    effects.push(Effect::Paused);
                }
            }
            Command::Resume => {
                if self.paused {
                    self.paused = false;
                    effects.push(Effect::Resumed);
                }
            }
            Command::Abort { reason } => self.abort(AbortReason::Operator { reason }, now, &mut effects),
            Command::RetryFailed => {
                let (mut serving, mut shadow) = (vec![], vec![]);
                for (id, e) in &mut self.devices {
                    if e.of_release()
                        && matches!(e.state, DeviceState::Reported(Outcome::Failed { .. } | Outcome::RolledBack { .. }))
                    {
                        e.state = DeviceState::Assigned;
                        e.retries += 1;
                        if e.serving { &mut serving } else { &mut shadow }.push(id.clone());
                    }
                }
                let package = self.release.package;
                if !serving.is_empty() {
                    effects.push(Effect::Retry { devices: serving, package });
                }
                if !shadow.is_empty() {
                    effects.push(Effect::AssignShadow { devices: shadow, package });
                }
            }
            Command::Approve { key_id } => {
                let State::AwaitingApproval { next } = self.state else {
                    return Err(CommandError::NotAwaitingApproval { release });
                };
                if self.release.risk == RiskTier::High && self.release.publisher() == Some(key_id.as_str()) {
                    return Err(CommandError::ApproverIsPublisher { release, key_id });
                }
                effects.push(Effect::Approved { stage: next, key_id });
                self.state = State::Running;
                self.enter(Position::Stage(next), now, &mut effects);
            }
        }
        Ok(effects)
    }

    /// Judges the current stage at `now`: abort on errors, advance (or pause for approval) on success, complete
    /// after the last stage. Nothing is judged before the stage's minimum count and soak time.
    pub fn tick(&mut self, now: UnixSeconds) -> Vec<Effect> {
        let now = self.time(now);
        let mut effects = vec![];
        if self.state != State::Running {
            return effects;
        }
        match self.position {
            Position::NotStarted => {}
            Position::Shadow => {
                let Some(shadow) = self.plan.shadow.clone() else { return effects };
                let stats = self.shadow_stats();
                let reported = self.devices.values().filter(|e| e.shadowing && e.shadow_compared > 0).count() as u64;
                let required = shadow.min_devices.min(stats.eligible());
                if reported < required || now < self.since.saturating_add(shadow.soak_secs) {
                    return effects;
                }
                let (agreed, compared) = self.shadow_agreement();
                if let Some(gate) = shadow.min_agreement_percent {
                    if compared == 0 && stats.eligible() > 0 {
                        return effects;
                    }
                    if !gate.met_by(agreed, compared) {
                        self.abort(
                            AbortReason::ShadowDisagreement { agreed, compared, required: gate },
                            now,
                            &mut effects,
                        );
                        return effects;
                    }
                }
                if !self.paused {
                    self.advance(now, &mut effects);
                }
            }
            Position::Stage(i) => {
                let stage = self.plan.stage[i].clone();
                let c = self.cohort_stats();
                if c.done() < stage.min_devices.min(c.eligible()) || now < self.since.saturating_add(stage.soak_secs) {
                    return effects;
                }
                if stage.error_percent.exceeded_by(c.errors(), c.done()) {
                    let reason = AbortReason::ErrorThreshold {
                        stage: i,
                        errors: c.errors(),
                        done: c.done(),
                        threshold: stage.error_percent,
                    };
                    self.abort(reason, now, &mut effects);
                } else if stage.success_percent.met_by(c.installed, c.eligible()) && !self.paused {
                    self.advance(now, &mut effects);
                }
            }
        }
        effects
    }

    /// When the controller next needs a [`tick`](Rollout::tick) with no new input (as quinn-proto's
    /// `poll_timeout`): the end of the running stage's soak, or the shadow's. `None` when only a report or an
    /// operator command can move it: no soak left to wait out (judgement then follows the reports, which the
    /// driver feeds with a tick each), waiting for approval, or finished. Ask after ticking at `now`; a soak end
    /// at or before `now` was judged by that tick.
    pub fn next_deadline(&self, now: UnixSeconds) -> Option<UnixSeconds> {
        if self.state != State::Running {
            return None;
        }
        let soak = match self.position {
            Position::NotStarted => return None,
            Position::Shadow => self.plan.shadow.as_ref()?.soak_secs,
            Position::Stage(i) => self.plan.stage.get(i)?.soak_secs,
        };
        let end = self.since.saturating_add(soak);
        (end > now.max(self.last_known_time)).then_some(end)
    }

    /// Goes to the position after the current one, through an approval where one is needed.
    fn advance(&mut self, now: UnixSeconds, effects: &mut Vec<Effect>) {
        let next = match self.position {
            Position::NotStarted if self.plan.shadow.is_some() => Position::Shadow,
            Position::NotStarted | Position::Shadow => Position::Stage(0),
            Position::Stage(i) if i + 1 < self.plan.stage.len() => Position::Stage(i + 1),
            Position::Stage(_) => {
                self.state = State::Completed { at: now };
                effects.push(Effect::Completed);
                return;
            }
        };
        let needs_approval = match (self.position, next) {
            (_, Position::Shadow) => false,
            (Position::Stage(i), _) => self.release.risk == RiskTier::High || self.plan.stage[i].pause_after,
            _ => self.release.risk == RiskTier::High,
        };
        match next {
            Position::Stage(n) if needs_approval => {
                self.state = State::AwaitingApproval { next: n };
                effects.push(Effect::PauseForApproval { stage: n, name: self.plan.stage_name(n) });
            }
            _ => self.enter(next, now, effects),
        }
    }

    fn enter(&mut self, pos: Position, now: UnixSeconds, effects: &mut Vec<Effect>) {
        self.position = pos;
        self.since = now;
        let package = self.release.package;
        let mut devices = vec![];
        match pos {
            Position::NotStarted => {}
            Position::Shadow => {
                effects.push(Effect::ShadowStarted);
                for (id, e) in &mut self.devices {
                    if e.shadow && !e.shadowing {
                        e.shadowing = true;
                        e.state = DeviceState::Assigned;
                        devices.push(id.clone());
                    }
                }
                if !devices.is_empty() {
                    effects.push(Effect::AssignShadow { devices, package });
                }
            }
            Position::Stage(n) => {
                effects.push(Effect::AdvanceTo { stage: n, name: self.plan.stage_name(n) });
                for (id, e) in &mut self.devices {
                    if e.stage.is_some_and(|s| s <= n) && !e.serving {
                        // A shadow device starts afresh: its shadow outcome says nothing about serving.
                        e.serving = true;
                        e.state = DeviceState::Assigned;
                        devices.push(id.clone());
                    }
                }
                if !devices.is_empty() {
                    effects.push(Effect::Assign { devices, package });
                }
            }
        }
    }

    fn abort(&mut self, reason: AbortReason, now: UnixSeconds, effects: &mut Vec<Effect>) {
        self.state = State::Aborted { at: now, reason: reason.clone() };
        self.paused = false;
        effects.push(Effect::Abort { reason });
        let devices: Vec<String> =
            self.devices.iter().filter(|(_, e)| e.of_release()).map(|(id, _)| id.clone()).collect();
        for e in self.devices.values_mut() {
            e.recovered = false;
        }
        self.recovery = Some(Recovery { since: now, affected: devices.len() as u64, recovered: 0, recovered_at: None });
        if !devices.is_empty() {
            effects.push(match self.release.last_good {
                Some(package) => Effect::Assign { devices, package },
                None => Effect::Unassign { devices },
            });
        }
        effects.extend(self.check_recovery(now));
    }

    fn check_recovery(&mut self, now: UnixSeconds) -> Vec<Effect> {
        let share = self.plan.recovered_percent;
        let Some(rec) = self.recovery.as_mut() else { return vec![] };
        if rec.recovered_at.is_none() && share.met_by(rec.recovered, rec.affected) {
            rec.recovered_at = Some(now);
            return vec![Effect::Recovered { after_secs: now - rec.since }];
        }
        vec![]
    }

    /// Counts over the current stage's cohort: every device assigned the package for serving.
    pub fn cohort_stats(&self) -> Stats {
        let mut s = Stats::default();
        self.devices.values().filter(|e| e.serving).for_each(|e| s.add(e));
        s
    }

    fn shadow_stats(&self) -> Stats {
        let mut s = Stats::default();
        self.devices.values().filter(|e| e.shadowing && !e.serving).for_each(|e| s.add(e));
        s
    }

    fn shadow_agreement(&self) -> (u64, u64) {
        self.devices
            .values()
            .filter(|e| e.shadowing)
            .fold((0, 0), |(a, c), e| (a + e.shadow_agreed, c + e.shadow_compared))
    }

    /// The rollback recovery time, once recovered (see [`Recovery::time`]).
    pub fn recovery_time(&self) -> Option<Duration> {
        self.recovery.and_then(|r| r.time())
    }

    /// A summary of where the rollout stands.
    pub fn status(&self) -> Status {
        let mut stages = vec![Stats::default(); self.plan.stage.len()];
        for e in self.devices.values().filter(|e| e.serving) {
            if let Some(s) = e.stage {
                stages[s].add(e);
            }
        }
        Status {
            release: self.release.id.clone(),
            state: self.state.clone(),
            position: self.position,
            paused: self.paused,
            since: self.since,
            cohort: self.cohort_stats(),
            stages,
            shadow: self.plan.shadow.as_ref().map(|_| self.shadow_stats()),
            shadow_agreement: self.shadow_agreement(),
            recovery: self.recovery,
        }
    }
}

/// The outcome a device's state report (`update::StateReport`) states about `package`: rolled back when listed
/// among its rolled-back packages (which include packages refused before activation), installed when it is the
/// device's last good package, rejected by policy when its newest refusal of the package is a rejection (a
/// deferral is no outcome: the device installs later), else none yet. Feed the report's `active` to
/// [`Rollout::report_package`] too.
pub fn outcome_of(report: &crate::update::StateReport, package: &Digest) -> Option<Outcome> {
    if report.rolled_back.contains(package) {
        return Some(Outcome::RolledBack { reason: report.message.clone() });
    }
    if report.last_good.as_ref() == Some(package) {
        return Some(Outcome::Installed);
    }
    match report.refusals.iter().rev().find(|r| r.digest == *package) {
        Some(r) if r.until.is_none() => Some(Outcome::RejectedByPolicy { rule: r.rule.clone() }),
        _ => None,
    }
}

/// The outcome for a router `package` that a device's router report shows: installed into its routes, or failed
/// to install (the router before keeps routing). A router has no health window on the device.
pub fn router_outcome_of(report: &crate::update::lanes::RouterReport, package: &Digest) -> Option<Outcome> {
    if report.active.as_ref() == Some(package) {
        return Some(Outcome::Installed);
    }
    report.failed.contains(package).then(|| Outcome::Failed { reason: report.last_error.clone().unwrap_or_default() })
}
