//! Staged rollouts on the hub: starts releases under a plan, feeds each release's sans-IO controller
//! (`shared::rollout`) the devices' reports, operator commands and clock ticks, persists it in the index, and
//! tells the director what each device should run.
//!
//! A release is one package on one channel under one plan, with an id (`r1`, `r2`...). Its `Rollout` is saved in
//! the index after every call that changes it (`crate::registry::releases`: a report writes the release's header
//! and the reporting device's row, a new stage every row), so the hub can stop at any point; the director reads the
//! rollout's level-triggered `directive` for a device rather than replaying effects. The serving hub judges the
//! releases when the earliest of their deadlines comes ([`wait_after_tick`]); reports are judged as they arrive.

use std::sync::Arc;
use std::time::Duration;

use outpost_shared::Digest;
use outpost_shared::clock::UnixSeconds;
use outpost_shared::rollout::{Command, Directive, Effect, Plan, Release, Rollout, State};
use outpost_shared::update::lanes::DeviceReport;
use serde::{Deserialize, Serialize};

use crate::registry::releases::Changed;
use crate::registry::{DeviceStatus, RegistryError};
use crate::storage::RolloutStore;

/// A release as the hub keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The channel it rolls out on.
    pub channel: String,
    /// `name@version` of its package.
    pub package: String,
    /// When it started.
    pub started_at: UnixSeconds,
    /// The controller.
    pub rollout: Rollout,
    /// The capability its package serves (its manifest's): a device is judged by its lane of it. `None` in a
    /// record of an earlier hub: judged by the device's primary lane, as then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// Its package is a router: a line of its own on the channel (see [`Line`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub router: bool,
}

/// What a release's package is, beyond its digest: the line of releases it belongs to on its channel. A model
/// release and a router release on one channel never supersede each other; a model release judges a device by
/// the lane of its capability, a router release by the router the device reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line {
    /// The package's capability (`None`: judged by the device's primary lane).
    pub capability: Option<String>,
    /// The package is a router.
    pub router: bool,
}

impl ReleaseRecord {
    /// Whether the release still steers its channel (running, waiting for approval, or aborted and rolling back).
    pub fn steers(&self) -> bool {
        matches!(self.rollout.state, State::Running | State::AwaitingApproval { .. } | State::Aborted { .. })
    }

    /// Whether the release is in its shadow stage and still going (its package runs beside the last good one).
    pub fn shadowing(&self) -> bool {
        self.rollout.position == outpost_shared::rollout::Position::Shadow
            && matches!(self.rollout.state, State::Running | State::AwaitingApproval { .. })
    }
}

/// Why a rollout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The index failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The controller refused to start.
    #[error("{0}")]
    Start(#[from] outpost_shared::rollout::StartError),
    /// The controller refused the command.
    #[error("{0}")]
    Command(#[from] outpost_shared::rollout::CommandError),
    /// No release has this id.
    #[error("no release `{0}` (see `outpost-hub release list`)")]
    Unknown(String),
}

/// Starts a release of `package` on `channel` judged by the devices' primary lanes: [`start_line`] without a
/// line (a single-capability channel).
pub fn start(
    reg: &dyn RolloutStore,
    release: Release,
    package_name: &str,
    plan: Plan,
    channel: &str,
    now: UnixSeconds,
) -> Result<(String, Vec<Effect>), RolloutError> {
    start_line(reg, release, package_name, Line::default(), plan, channel, now)
}

/// Starts a release of `package` on `channel`: `last_good` is what the channel ran before on the same line (the
/// model of the capability, or the router, before it). Every approved device on the channel is counted; newer
/// starts supersede an unfinished release of the same line (models or routers) on the same channel.
pub fn start_line(
    reg: &dyn RolloutStore,
    release: Release,
    package_name: &str,
    line: Line,
    plan: Plan,
    channel: &str,
    now: UnixSeconds,
) -> Result<(String, Vec<Effect>), RolloutError> {
    let _writing = writing();
    let existing = reg.releases_shared()?;
    let id = format!("r{}", existing.len() + 1);
    let release = Release { id: id.clone(), ..release };
    let devices: Vec<String> = reg
        .devices()?
        .into_iter()
        .filter(|d| d.channel == channel && d.status == DeviceStatus::Approved && !d.site_node)
        .filter(|d| !plan.exclude_software_tier || d.tpm.is_some())
        .map(|d| d.key)
        .collect();
    let (rollout, effects) = Rollout::start(release, plan, devices, now)?;
    // The newest release of a line on a channel steers it: an unfinished older one stops where it is. Routers and
    // models are separate lines: a router release leaves a model release running, and the other way round.
    for (old_id, old) in existing {
        if old.channel == channel
            && old.router == line.router
            && old.steers()
            && !matches!(old.rollout.state, State::Aborted { .. })
        {
            modify(reg, &old_id, |old| (old.rollout.supersede(&id, now), Changed::Whole))?;
        }
    }
    let record = ReleaseRecord {
        channel: channel.into(),
        package: package_name.into(),
        started_at: now,
        rollout,
        capability: line.capability,
        router: line.router,
    };
    reg.release_put(&id, &record)?;
    Ok((id, effects))
}

/// Held by whoever reads a release record to write it back (start, commands, ticks, reports, enrolments), so
/// two reports at once cannot each write their copy and lose the other's change (found by the fleet simulator's
/// hub-restart scenario: a release stuck below its success threshold with every device healthy). One process
/// writes the store (the serving hub; admin commands go through it); replicas on PostgreSQL will need the
/// database's row lock instead.
fn writing() -> std::sync::MutexGuard<'static, ()> {
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    WRITING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Changes release `id` with `change` under the store's hold on it (`ReleaseStore::release_change`); `None`: no
/// such release.
fn modify<R>(
    reg: &dyn RolloutStore,
    id: &str,
    change: impl FnOnce(&mut ReleaseRecord) -> (R, Changed),
) -> Result<Option<R>, RegistryError> {
    let (mut change, mut out) = (Some(change), None);
    let found = reg.release_change(id, &mut |record| {
        let Some(f) = change.take() else { return Changed::Nothing };
        let (r, changed) = f(record);
        out = Some(r);
        changed
    })?;
    Ok(if found { out } else { None })
}

/// Every release, oldest first.
pub fn list(reg: &dyn RolloutStore) -> Result<Vec<(String, ReleaseRecord)>, RolloutError> {
    Ok(list_shared(reg)?.into_iter().map(|(id, r)| (id, ReleaseRecord::clone(&r))).collect())
}

/// [`list`] without copying the records.
pub fn list_shared(reg: &dyn RolloutStore) -> Result<Vec<(String, Arc<ReleaseRecord>)>, RolloutError> {
    let mut all = reg.releases_shared()?;
    all.sort_by_key(|(id, r)| (r.started_at, id[1..].parse::<u64>().unwrap_or(0)));
    Ok(all)
}

/// One release.
pub fn get(reg: &dyn RolloutStore, id: &str) -> Result<ReleaseRecord, RolloutError> {
    reg.release(id)?.map(|r| ReleaseRecord::clone(&r)).ok_or_else(|| RolloutError::Unknown(id.into()))
}

/// An operator command on release `id`.
pub fn command(reg: &dyn RolloutStore, id: &str, cmd: Command, now: UnixSeconds) -> Result<Vec<Effect>, RolloutError> {
    let _writing = writing();
    let done = modify(reg, id, |record| match record.rollout.command(cmd, now) {
        Ok(effects) => (Ok(effects), Changed::Whole),
        Err(e) => (Err(e), Changed::Nothing),
    })?;
    let effects = done.ok_or_else(|| RolloutError::Unknown(id.into()))??;
    apply_retries(reg, &effects)?;
    Ok(effects)
}

/// Judges every release that still steers its channel at `now`; returns what happened, per release.
pub fn tick(reg: &dyn RolloutStore, now: UnixSeconds) -> Result<Vec<Happened>, RolloutError> {
    let mut out = Vec::new();
    let _writing = writing();
    for (id, shared) in reg.releases_shared()? {
        if !shared.steers() {
            continue;
        }
        drop(shared); // so the record is changed in place
        let happened = modify(reg, &id, |record| {
            let before = header(&record.rollout);
            let effects = record.rollout.tick(now);
            let changed = touched(&before, &record.rollout, None);
            (Happened::each(&id, record, effects).collect::<Vec<_>>(), changed)
        })?;
        out.extend(happened.into_iter().flatten());
    }
    Ok(out)
}

/// Longest the serving hub waits between two judgements of the releases with nothing due: a release started or
/// approved by another process (`release start`, `release approve`) has its soak end noticed within this.
pub const MAX_TICK_WAIT: Duration = Duration::from_secs(10);

/// The earliest time a release steering its channel needs judging again (`Rollout::next_deadline`: a soak
/// end), if any.
pub fn next_deadline(reg: &dyn RolloutStore, now: UnixSeconds) -> Result<Option<UnixSeconds>, RolloutError> {
    Ok(reg
        .releases_shared()?
        .into_iter()
        .filter(|(_, r)| r.steers())
        .filter_map(|(_, r)| r.rollout.next_deadline(now))
        .min())
}

/// How long the serving hub may sleep after judging the releases at `now`: until the earliest deadline, at most
/// [`MAX_TICK_WAIT`].
pub fn wait_after_tick(reg: &dyn RolloutStore, now: UnixSeconds) -> Result<Duration, RolloutError> {
    let wait = next_deadline(reg, now)?.map_or(MAX_TICK_WAIT, |t| Duration::from_secs(t.saturating_sub(now)));
    Ok(wait.min(MAX_TICK_WAIT))
}

/// Feeds a device's report to every release steering its channel: its outcome for the release's package (a
/// site-policy rejection counts apart) and the package it runs now (rollback recovery), both read from the lane of
/// the release's capability ([`DeviceReport::lane`]; an earlier agent's report is its single lane) or, for a
/// router release, from the router it reports. A device with no lane of the capability (or reporting no router)
/// has nothing to say about the release yet.
pub fn on_report(
    reg: &dyn RolloutStore,
    device: &str,
    report: &DeviceReport,
    now: UnixSeconds,
) -> Result<Vec<Happened>, RolloutError> {
    let Some(d) = reg.device(device)? else { return Ok(vec![]) };
    let mut out = Vec::new();
    let _writing = writing();
    for (id, shared) in reg.releases_shared()? {
        if shared.channel != d.channel || !shared.steers() {
            continue;
        }
        if shared.rollout.plan.exclude_software_tier && d.tpm.is_none() {
            continue; // a software-tier device takes no part in this release
        }
        // What the device says of this release's line: the outcome for its package, the package it runs now, and
        // shadow results (a model's only).
        let package = shared.rollout.release.package;
        let said = if shared.router {
            report.router.as_ref().map(|r| (outpost_shared::rollout::router_outcome_of(r, &package), r.active, None))
        } else {
            let lane = match &shared.capability {
                Some(c) => report.lane(c),
                None => Some(report.state.clone()),
            };
            lane.map(|l| (outpost_shared::rollout::outcome_of(&l, &package), l.active, l.shadow))
        };
        drop(shared); // so the record is changed in place
        let happened = modify(reg, &id, |record| {
            // Most reports repeat what the release already knows: only what the report changed is written back
            // (`touched`), and every change carries the newest time seen, so a restart resumes no earlier than
            // the release's last change.
            let before = (header(&record.rollout), record.rollout.devices.get(device).cloned());
            let mut effects = record.rollout.enroll(device, now);
            let (outcome, active, shadow) = said.clone().unwrap_or((None, None, None));
            if let Some(outcome) = outcome {
                effects.extend(record.rollout.report(device, outcome, now));
            }
            // Judged first, so a report that makes the release abort also counts towards its recovery: a device
            // that already rolled back by itself is back on the last good package at the abort decision.
            effects.extend(record.rollout.tick(now));
            if said.is_some() {
                effects.extend(record.rollout.report_package(device, active, now));
            }
            if let Some(sh) = shadow.filter(|sh| sh.package == package) {
                effects.extend(record.rollout.report_shadow(device, sh.agreed, sh.compared, now));
                effects.extend(record.rollout.tick(now));
            }
            let mut changed = touched(&before.0, &record.rollout, Some(device));
            if changed == Changed::Device(device.into()) && record.rollout.devices.get(device) == before.1.as_ref() {
                changed = if header(&record.rollout) == before.0 { Changed::Nothing } else { Changed::Header };
            }
            (Happened::each(&id, record, effects).collect::<Vec<_>>(), changed)
        })?;
        out.extend(happened.into_iter().flatten());
    }
    Ok(out)
}

/// What a change of a rollout from the header `before` touched, given that only `device`'s part (if any) may
/// have changed without a change of the header's state or position: the rollout changes other devices' parts
/// only when it enters a stage or the shadow (`position`, `since`) or aborts (`state`), and an operator command
/// is written whole by its caller.
fn touched(before: &Rollout, after: &Rollout, device: Option<&str>) -> Changed {
    let moved = before.state != after.state
        || before.position != after.position
        || before.since != after.since
        || before.paused != after.paused
        || before.plan != after.plan
        || before.release != after.release;
    match device {
        _ if moved => Changed::Whole,
        Some(d) => Changed::Device(d.to_owned()),
        None if before.recovery != after.recovery || before.last_known_time != after.last_known_time => Changed::Header,
        None => Changed::Nothing,
    }
}

/// A rollout without its devices: what a report may change besides the reporting device's part (a change to
/// other devices' parts comes with a change here, a new position or state, and with effects).
pub(crate) fn header(r: &Rollout) -> Rollout {
    Rollout {
        release: r.release.clone(),
        plan: r.plan.clone(),
        state: r.state.clone(),
        position: r.position,
        paused: r.paused,
        since: r.since,
        devices: Default::default(),
        recovery: r.recovery,
        last_known_time: r.last_known_time,
    }
}

/// What the releases on `channel` want `device` to run: packages to keep from it (releases it is not part of
/// yet, or aborted) and the package to run instead of the channel's newest, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    /// Packages the device must not be assigned.
    pub withhold: Vec<Digest>,
    /// The package it must be assigned, if a release says so.
    pub assign: Option<Digest>,
    /// The release that says so (its id).
    pub release: Option<String>,
    /// Operator retries of the package for this device: offer it even if the device rolled back from it.
    pub retry: u32,
    /// A package to run in shadow beside the active one (a release's shadow stage).
    pub shadow: Option<Digest>,
    /// The release whose shadow stage that is.
    pub shadow_release: Option<String>,
    /// The router it must be assigned, if a router release says so (its own line: `assign` is a model's).
    pub router: Option<Digest>,
    /// The router release that says so (its id).
    pub router_release: Option<String>,
}

/// The steering for `device` on `channel` from every release that steers it (newest last, so it wins). A device
/// a release has not seen yet (enrolled after its start) joins it here, in the stage it hashes into.
pub fn steering(
    reg: &dyn RolloutStore,
    device: &str,
    channel: &str,
    now: UnixSeconds,
) -> Result<Steering, RolloutError> {
    let mut s = Steering::default();
    let hardware = reg.device(device)?.is_some_and(|d| d.tpm.is_some());
    for (id, shared) in list_shared(reg)? {
        if shared.channel != channel || !shared.steers() {
            continue;
        }
        // Looked at in place; copied only to enrol a device the release has not seen.
        if shared.rollout.plan.exclude_software_tier && !hardware {
            // A software-tier device takes no part: it never sees the package.
            s.withhold.push(shared.rollout.release.package);
            continue;
        }
        let router = shared.router;
        let (package, directive) = if shared.rollout.devices.contains_key(device) {
            (shared.rollout.release.package, shared.rollout.directive(device))
        } else {
            // Enrolled under the writers' lock, in the record as it is then (the one read above may be behind).
            drop(shared);
            let _writing = writing();
            modify(reg, &id, |record| {
                let mut changed = Changed::Nothing;
                if !record.rollout.devices.contains_key(device) {
                    let before = header(&record.rollout);
                    record.rollout.enroll(device, now);
                    changed = touched(&before, &record.rollout, Some(device));
                }
                ((record.rollout.release.package, record.rollout.directive(device)), changed)
            })?
            .ok_or_else(|| RolloutError::Unknown(id.clone()))?
        };
        if router {
            // A router release steers the assignment's router alone; a shadow stage has nothing to compare a
            // router with, so its package is withheld there like outside the cohorts.
            match directive {
                Some(Directive::Serve { package, .. }) => {
                    s.router = Some(package);
                    s.router_release = Some(id.clone());
                }
                Some(Directive::Revert { package: last_good }) => {
                    s.withhold.push(package);
                    s.router = last_good;
                    s.router_release = last_good.map(|_| id.clone());
                }
                Some(Directive::Shadow { .. }) | None => s.withhold.push(package),
            }
            continue;
        }
        match directive {
            Some(Directive::Serve { package, retry }) => {
                s.assign = Some(package);
                s.release = Some(id.clone());
                s.retry = retry;
            }
            Some(Directive::Revert { package: last_good }) => {
                s.withhold.push(package);
                s.assign = last_good;
                s.release = last_good.map(|_| id.clone());
                s.retry = 0;
            }
            // A shadow package runs beside the active model and is never served.
            Some(Directive::Shadow { package }) => {
                s.withhold.push(package);
                s.shadow = Some(package);
                s.shadow_release = Some(id.clone());
            }
            // A device outside the cohorts so far keeps what it runs.
            None => s.withhold.push(package),
        }
    }
    for a in s.assign.into_iter().chain(s.router) {
        s.withhold.retain(|w| *w != a);
    }
    Ok(s)
}

/// Where `device` stands in the newest release it is part of on `channel`: the release id and the stage it hashes
/// into (`None` beyond the last stage or in the shadow only). Telemetry is attributed to these.
pub fn placement(
    reg: &dyn RolloutStore,
    device: &str,
    channel: &str,
) -> Result<Option<(String, Option<u32>)>, RolloutError> {
    Ok(list_shared(reg)?.into_iter().rev().filter(|(_, r)| r.channel == channel).find_map(|(id, r)| {
        let e = r.rollout.devices.get(device).filter(|e| e.serving || e.shadowing)?;
        Some((id, e.stage.and_then(|s| u32::try_from(s).ok())))
    }))
}

/// Lets the director offer a package again to the devices an operator retried.
fn apply_retries(reg: &dyn RolloutStore, effects: &[Effect]) -> Result<(), RegistryError> {
    for e in effects {
        if let Effect::Retry { devices, package } = e {
            for d in devices {
                reg.device_retry(d, package)?;
            }
        }
    }
    Ok(())
}

/// One thing that happened to a release when it was judged: which release, its package, and the effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Happened {
    /// The release id.
    pub release: String,
    /// The package it rolls out.
    pub package: Digest,
    /// What happened.
    pub effect: Effect,
}

impl Happened {
    fn each(release: &str, record: &ReleaseRecord, effects: Vec<Effect>) -> impl Iterator<Item = Happened> {
        let (release, package) = (release.to_owned(), record.rollout.release.package);
        effects.into_iter().map(move |effect| Happened { release: release.clone(), package, effect })
    }

    /// Logs it inside a `release` span carrying the release id and the package (so one release can be followed
    /// through the log): an abort as a warning, the rest as information.
    pub fn log(&self) {
        let package = self.package.short();
        let _span = tracing::info_span!("release", release = %self.release, package = %package).entered();
        let (release, what) = (&self.release, describe(&self.effect));
        match self.effect {
            Effect::Abort { .. } => tracing::warn!("release {release}: {what}"),
            _ => tracing::info!("release {release}: {what}"),
        }
    }
}

/// One effect, for logs and the CLI.
pub fn describe(e: &Effect) -> String {
    let n = |d: &[String]| format!("{} device{}", d.len(), if d.len() == 1 { "" } else { "s" });
    match e {
        Effect::AssignShadow { devices, package } => format!("{} run {} in shadow", n(devices), package.short()),
        Effect::Assign { devices, package } => format!("{} assigned {}", n(devices), package.short()),
        Effect::Retry { devices, package } => format!("{} retry {}", n(devices), package.short()),
        Effect::Unassign { devices } => format!("{} unassigned", n(devices)),
        Effect::ShadowStarted => "shadow stage started".into(),
        Effect::AdvanceTo { stage, name } => format!("stage {} ({name}) started", stage + 1),
        Effect::PauseForApproval { stage, name } => {
            format!("waiting for `release approve` before stage {} ({name})", stage + 1)
        }
        Effect::Approved { stage, key_id } => format!("stage {} approved by {key_id}", stage + 1),
        Effect::Paused => "paused".into(),
        Effect::Resumed => "resumed".into(),
        Effect::Abort { reason } => format!("ABORTED: {reason}; every device of the release goes back"),
        Effect::Completed => "completed".into(),
        Effect::Superseded { by } => format!("superseded by {by}"),
        Effect::Recovered { after_secs } => format!("rollback recovered in {after_secs} s"),
    }
}

/// A release's state in a few words, as `release list` and the console show it.
pub fn state_word(st: &outpost_shared::rollout::Status) -> String {
    use outpost_shared::rollout::Position;
    match (&st.state, st.position) {
        (State::Running, Position::Stage(i)) if st.paused => format!("paused at stage {}", i + 1),
        (State::Running, Position::Stage(i)) => format!("running stage {}", i + 1),
        (State::Running, Position::Shadow) if st.paused => "paused in shadow".into(),
        (State::Running, Position::Shadow) => "running shadow".into(),
        (State::Running, Position::NotStarted) => "starting".into(),
        (State::AwaitingApproval { next }, _) => format!("awaiting approval ({})", next + 1),
        (State::Aborted { .. }, _) => "ABORTED".into(),
        (State::Completed { .. }, _) => "completed".into(),
        (State::Superseded { by, .. }, _) => format!("superseded by {by}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use std::sync::{Arc, Mutex};

    /// A log writer into memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    use outpost_shared::update::StateReport;

    /// A single-model device's report (an earlier agent's, without lanes): it serves `active`, after rolling back
    /// from `rolled_back`.
    fn serving(active: Digest, rolled_back: Vec<Digest>) -> DeviceReport {
        DeviceReport { state: state(active, rolled_back), lanes: Default::default(), router: None }
    }

    fn state(active: Digest, rolled_back: Vec<Digest>) -> StateReport {
        StateReport {
            active: Some(active),
            last_good: Some(active),
            rolled_back,
            phase: "idle".into(),
            message: String::new(),
            refusals: vec![],
            policy: None,
            site: None,
            shadow: None,
        }
    }

    #[test]
    fn reports_from_many_devices_at_once_are_each_counted_none_lost_to_another_write() {
        let dir = tempfile::tempdir().unwrap();
        Registry::init(dir.path()).unwrap();
        let now = 1_800_000_000;
        let reg = Registry::open(dir.path(), Arc::new(outpost_shared::clock::ManualClock::new(now))).unwrap();
        let keys: Vec<String> = (1..=48u8).map(|i| hex::encode([i; 32])).collect();
        for k in &keys {
            reg.device_approve(k, "stable").unwrap();
        }
        let plan = "name = \"all\"\n[[stage]]\nname = \"all\"\ncohort_percent = 100\nmin_devices = 1\n\
                    soak_secs = 3600\nsuccess_percent = 100\nerror_percent = 5\n";
        let plan = Plan::from_toml(plan, std::path::Path::new("plan.toml")).unwrap();
        let package = Digest::of(b"the release's package");
        let risk = outpost_shared::manifest::RiskTier::Low;
        let release = Release { id: String::new(), package, last_good: None, risk, signers: vec!["k1".into()] };
        let (id, _) = start(&reg, release, "p@1.0.0", plan, "stable", now).unwrap();
        let report = serving(package, vec![]);
        // Every device reports at once, as a fleet does after a pushed notice.
        std::thread::scope(|scope| {
            for chunk in keys.chunks(6) {
                let (reg, report) = (&reg, &report);
                scope.spawn(move || {
                    for k in chunk {
                        on_report(reg, k, report, now + 1).unwrap();
                    }
                });
            }
        });
        let record = get(&reg, &id).unwrap();
        let counted = keys
            .iter()
            .filter(|k| {
                let state = record.rollout.devices.get(*k).map(|e| e.state.clone());
                state
                    == Some(outpost_shared::rollout::DeviceState::Reported(outpost_shared::rollout::Outcome::Installed))
            })
            .count();
        assert_eq!(counted, keys.len(), "every report counted");
    }

    /// One lane of a device's report: it serves `active`, after rolling back from `rolled_back`.
    fn lane(active: Digest, rolled_back: Vec<Digest>) -> outpost_shared::update::lanes::LaneReport {
        let failed = (!rolled_back.is_empty()).then(|| "health window failed".to_owned());
        outpost_shared::update::lanes::LaneReport {
            active: Some(active),
            last_good: Some(active),
            rolled_back,
            phase: "idle".into(),
            last_error: failed,
            refusals: vec![],
        }
    }

    #[test]
    fn a_release_of_a_second_capability_is_judged_by_that_capabilitys_lane() {
        use outpost_shared::rollout::{DeviceState, Outcome};
        let dir = tempfile::tempdir().unwrap();
        Registry::init(dir.path()).unwrap();
        let now = 1_800_000_000;
        let reg = Registry::open(dir.path(), Arc::new(outpost_shared::clock::ManualClock::new(now))).unwrap();
        let keys: Vec<String> = (1..=4u8).map(|i| hex::encode([i; 32])).collect();
        for k in &keys {
            reg.device_approve(k, "stable").unwrap();
        }
        let plan = "name = \"all\"\n[[stage]]\nname = \"all\"\ncohort_percent = 100\nmin_devices = 1\n\
                    soak_secs = 3600\nsuccess_percent = 100\nerror_percent = 99\n";
        let plan = Plan::from_toml(plan, std::path::Path::new("plan.toml")).unwrap();
        let (ocr, vad, old_vad) = (Digest::of(b"ocr 1"), Digest::of(b"vad 2"), Digest::of(b"vad 1"));
        let risk = outpost_shared::manifest::RiskTier::Low;
        let release =
            Release { id: String::new(), package: vad, last_good: Some(old_vad), risk, signers: vec!["k1".into()] };
        let line = Line { capability: Some("audio.vad".into()), router: false };
        let (id, _) = start_line(&reg, release, "vad@2.0.0", line, plan, "stable", now).unwrap();
        tick(&reg, now).unwrap();

        // Every device's primary lane serves the OCR model; their VAD lanes tell the release's story.
        let with_lanes = |lanes: Vec<(&str, outpost_shared::update::lanes::LaneReport)>| DeviceReport {
            state: state(ocr, vec![]),
            lanes: lanes.into_iter().map(|(c, l)| (c.to_owned(), l)).collect(),
            router: None,
        };
        let reports = [
            with_lanes(vec![("ocr.text-direction", lane(ocr, vec![])), ("audio.vad", lane(vad, vec![]))]),
            with_lanes(vec![("ocr.text-direction", lane(ocr, vec![])), ("audio.vad", lane(old_vad, vec![vad]))]),
            // No VAD lane yet: nothing to say about the release (not "installed" because OCR runs fine).
            with_lanes(vec![("ocr.text-direction", lane(ocr, vec![]))]),
            // An earlier agent's report, without lanes, speaks of its single model.
            serving(vad, vec![]),
        ];
        for (k, r) in keys.iter().zip(&reports) {
            on_report(&reg, k, r, now + 1).unwrap();
        }
        let record = get(&reg, &id).unwrap();
        let states: Vec<DeviceState> = keys.iter().map(|k| record.rollout.devices[k].state.clone()).collect();
        assert_eq!(states[0], DeviceState::Reported(Outcome::Installed));
        assert_eq!(
            states[1],
            DeviceState::Reported(Outcome::RolledBack { reason: "health window failed".into() }),
            "the VAD lane's rollback, not the primary lane's health"
        );
        assert_eq!(states[2], DeviceState::Assigned);
        assert_eq!(states[3], DeviceState::Reported(Outcome::Installed));

        // Aborted by an operator: a device counts as recovered when its VAD lane is back on the VAD model before,
        // not when another lane happens to run that digest.
        command(&reg, &id, Command::Abort { reason: "vad misfires".into() }, now + 2).unwrap();
        on_report(&reg, &keys[0], &with_lanes(vec![("audio.vad", lane(old_vad, vec![vad]))]), now + 3).unwrap();
        on_report(&reg, &keys[2], &with_lanes(vec![("ocr.text-direction", lane(old_vad, vec![]))]), now + 3).unwrap();
        let record = get(&reg, &id).unwrap();
        let recovered: Vec<bool> = keys.iter().map(|k| record.rollout.devices[k].recovered).collect();
        assert_eq!(recovered, [true, false, false, false], "only the VAD lane's package counts: {recovered:?}");
    }

    #[test]
    fn a_router_release_steers_only_the_router_of_the_devices_in_its_cohorts_beside_a_model_release() {
        let dir = tempfile::tempdir().unwrap();
        Registry::init(dir.path()).unwrap();
        let now = 1_800_000_000;
        let reg = Registry::open(dir.path(), Arc::new(outpost_shared::clock::ManualClock::new(now))).unwrap();
        let keys: Vec<String> = (1..=20u8).map(|i| hex::encode([i; 32])).collect();
        for k in &keys {
            reg.device_approve(k, "stable").unwrap();
        }
        let plan = |percent: u32| {
            let text = format!(
                "name = \"p\"\n[[stage]]\nname = \"canary\"\ncohort_percent = {percent}\nmin_devices = 1\n\
                 soak_secs = 3600\nsuccess_percent = 100\nerror_percent = 50\n"
            );
            Plan::from_toml(&text, std::path::Path::new("plan.toml")).unwrap()
        };
        let risk = outpost_shared::manifest::RiskTier::Low;
        let (model, old_model) = (Digest::of(b"model 2"), Digest::of(b"model 1"));
        let (router, old_router) = (Digest::of(b"router 2"), Digest::of(b"router 1"));
        let release = |package, last_good| Release {
            id: String::new(),
            package,
            last_good: Some(last_good),
            risk,
            signers: vec!["k1".into()],
        };
        let model_line = Line { capability: Some("test.affine".into()), router: false };
        let (m, _) = start_line(&reg, release(model, old_model), "m@2", model_line, plan(100), "stable", now).unwrap();
        let router_line = Line { capability: Some("router.test".into()), router: true };
        let (r, _) =
            start_line(&reg, release(router, old_router), "r@2", router_line, plan(50), "stable", now).unwrap();
        tick(&reg, now).unwrap();
        assert_eq!(get(&reg, &m).unwrap().rollout.state, State::Running, "a router release leaves a model release");

        let in_cohort = |k: &String| get(&reg, &r).unwrap().rollout.devices[k].serving;
        let (inside, outside): (Vec<&String>, Vec<&String>) = keys.iter().partition(|k| in_cohort(k));
        assert!(!inside.is_empty() && !outside.is_empty(), "{} of {} in the canary", inside.len(), keys.len());
        for k in &inside {
            let s = steering(&reg, k, "stable", now + 1).unwrap();
            assert_eq!((s.router, s.router_release.as_deref()), (Some(router), Some(r.as_str())));
            assert_eq!(s.assign, Some(model), "the model release's steering is its own");
        }
        for k in &outside {
            let s = steering(&reg, k, "stable", now + 1).unwrap();
            assert_eq!(s.router, None, "outside the cohorts: the channel's router before");
            assert!(s.withhold.contains(&router) && !s.withhold.contains(&model), "{s:?}");
            assert_eq!(s.assign, Some(model));
        }
        // Aborted: every device of the release is steered to the router before it; the model release goes on.
        command(&reg, &r, Command::Abort { reason: "bad route".into() }, now + 2).unwrap();
        for k in &inside {
            let s = steering(&reg, k, "stable", now + 3).unwrap();
            assert_eq!(s.router, Some(old_router));
            assert!(s.withhold.contains(&router));
            assert_eq!(s.assign, Some(model));
        }
        assert_eq!(get(&reg, &m).unwrap().rollout.state, State::Running);
    }

    #[test]
    fn a_release_driven_by_reports_through_stages_and_an_abort_reads_back_the_same_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        Registry::init(dir.path()).unwrap();
        let now = 1_800_000_000;
        let open = || Registry::open(dir.path(), Arc::new(outpost_shared::clock::ManualClock::new(now))).unwrap();
        let reg = open();
        let keys: Vec<String> = (1..=40u8).map(|i| hex::encode([i; 32])).collect();
        for k in &keys[..30] {
            reg.device_approve(k, "stable").unwrap();
        }
        let plan = "name = \"two\"\n[[stage]]\nname = \"canary\"\ncohort_percent = 30\nmin_devices = 1\n\
                    soak_secs = 0\nsuccess_percent = 90\nerror_percent = 50\n[[stage]]\nname = \"all\"\n\
                    cohort_percent = 100\nmin_devices = 1\nsoak_secs = 0\nsuccess_percent = 100\n\
                    error_percent = 10\n";
        let plan = Plan::from_toml(plan, std::path::Path::new("plan.toml")).unwrap();
        let (package, last_good) = (Digest::of(b"new"), Digest::of(b"old"));
        let risk = outpost_shared::manifest::RiskTier::Low;
        let release =
            Release { id: String::new(), package, last_good: Some(last_good), risk, signers: vec!["k1".into()] };
        let (id, _) = start(&reg, release, "p@1.0.0", plan, "stable", now).unwrap();
        tick(&reg, now).unwrap();
        let report = serving;
        // Devices enrolled after the start join through their update checks.
        for k in &keys[30..] {
            reg.device_approve(k, "stable").unwrap();
            steering(&reg, k, "stable", now + 1).unwrap();
        }
        // The canary installs and the release moves to its second stage (every other device assigned, none of
        // which has reported yet): a restart reads that back.
        let mut t = now + 2;
        let canary: Vec<String> =
            get(&reg, &id).unwrap().rollout.devices.iter().filter(|(_, e)| e.serving).map(|(k, _)| k.clone()).collect();
        assert!(!canary.is_empty() && canary.len() < keys.len());
        for k in &canary {
            on_report(&reg, k, &report(package, vec![]), t).unwrap();
            t += 1;
        }
        let held = get(&reg, &id).unwrap();
        assert_eq!(held.rollout.position, outpost_shared::rollout::Position::Stage(1));
        drop(reg);
        let reg = open();
        assert_eq!(get(&reg, &id).unwrap(), held, "what a restart reads is what the hub held");
        // Then a third of the rest fail: aborted; the devices report the last good package one by one (recovery).
        for (i, k) in keys.iter().filter(|k| !canary.contains(k)).enumerate() {
            let r = if i % 3 == 0 { report(last_good, vec![package]) } else { report(package, vec![]) };
            on_report(&reg, k, &r, t).unwrap();
            t += 1;
        }
        tick(&reg, t).unwrap();
        for k in &keys {
            on_report(&reg, k, &report(last_good, vec![package]), t).unwrap();
            t += 1;
        }
        let held = get(&reg, &id).unwrap();
        assert!(matches!(held.rollout.state, State::Aborted { .. }), "{:?}", held.rollout.state);
        assert!(held.rollout.recovery.is_some_and(|r| r.recovered > 0), "{:?}", held.rollout.recovery);
        drop(reg);
        assert_eq!(get(&open(), &id).unwrap(), held, "what a restart reads is what the hub held");
    }

    #[test]
    fn what_happened_to_a_release_is_logged_inside_a_span_carrying_the_release_and_its_package() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(move || writer.clone())
            .finish();
        let package = Digest::of(b"a package");
        let reason = outpost_shared::rollout::AbortReason::Operator { reason: "bad batch".into() };
        let abort = Effect::Abort { reason };
        tracing::subscriber::with_default(subscriber, || {
            Happened { release: "r7".into(), package, effect: abort }.log();
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "WARN", "an abort is a warning: {line}");
        assert_eq!(line["span"]["name"], "release", "{line}");
        assert_eq!(line["span"]["release"], "r7", "{line}");
        assert_eq!(line["span"]["package"], package.short(), "{line}");
        assert!(
            line["fields"]["message"].as_str().unwrap().contains("ABORTED: aborted by an operator: bad batch"),
            "{line}"
        );
    }
}
