//! Several capabilities on one device, sans-IO: one update lane per capability (`ocr.text-direction`,
//! `audio.vad`...), each an [`UpdateLoop`] over its own [`AgentState`] — its own A/B slots, smoke test, health
//! window, rollback and revocation — so a failing release of one capability never touches another's model.
//!
//! What the lanes share is decided here: one update check schedule, one assignment version, one revocation list,
//! one wall clock (held when it goes backwards, reported once), and the device's memory: before a package is
//! downloaded, the memory budgets of what the device would then hold are summed and a package that would exceed
//! the device's limit is refused with the numbers (a [`Refusal`] with rule [`MEMORY_RULE`]). The persisted form is
//! [`DeviceState`]; [`DeviceState::from_json`] also reads the single-lane `state.json` of earlier agents, so an
//! agent upgraded in the field keeps its active model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    Action, AgentState, Checks, Event, HealthPolicy, Installed, Phase, Refusal, ShadowReport, StateReport, Target,
    Timing, UpdateLoop,
};
use crate::clock::UnixSeconds;
use crate::digest::Digest;
use crate::rng::Rng;

/// The rule a refusal for the device's memory limit names.
pub const MEMORY_RULE: &str = "memory_budget";

/// What a refusal for the memory limit carries as its policy digest (no site policy decided it).
pub fn memory_rule_digest() -> Digest {
    Digest::of(b"outpost device memory budget")
}

/// One capability's lane, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    /// The lane's update state (its slots, last good package, rollbacks...).
    pub state: AgentState,
    /// The lane migrated from a single-capability agent: its slots are the device's old `slots/a` and `slots/b`
    /// rather than `slots/<capability>/a` and `/b`.
    #[serde(default)]
    pub legacy_slots: bool,
    /// Memory budget (`runtime.memory_budget_bytes`) of the packages this lane holds or fetches, as assigned.
    #[serde(default)]
    pub memory: BTreeMap<Digest, u64>,
}

impl Lane {
    fn new(now: UnixSeconds) -> Self {
        Lane { state: AgentState::new(now), legacy_slots: false, memory: BTreeMap::new() }
    }

    fn budget(&self, i: Option<&Installed>) -> u64 {
        i.and_then(|i| self.memory.get(&i.target.digest)).copied().unwrap_or(0)
    }

    /// Memory the lane's models hold now: the active one, and during a health window the one it replaced, which
    /// stays loaded so a rollback is a pointer swap.
    fn resident(&self) -> u64 {
        let trial = matches!(self.state.phase, Phase::Health { .. });
        let kept = self.state.last_good.as_ref().filter(|g| trial && Some(*g) != self.state.active.as_ref());
        self.budget(self.state.active.as_ref()) + self.budget(kept)
    }

    /// [`resident`](Lane::resident) plus a package on its way in (downloading or staging).
    fn committed(&self) -> u64 {
        let incoming = match &self.state.phase {
            Phase::Downloading { target } | Phase::Staging { target, .. } => self.memory.get(&target.digest),
            _ => None,
        };
        self.resident() + incoming.copied().unwrap_or(0)
    }

    /// The digest the lane serves, stages or fetches now.
    fn holds(&self, d: &Digest) -> bool {
        let s = &self.state;
        let in_flight = match &s.phase {
            Phase::Downloading { target } | Phase::Staging { target, .. } | Phase::Health { target, .. } => {
                Some(target.digest)
            }
            Phase::Idle => None,
        };
        s.active.as_ref().is_some_and(|a| a.target.digest == *d) || in_flight == Some(*d)
    }

    /// Forgets budgets of packages the lane no longer holds or remembers as a rollback target.
    fn prune_memory(&mut self) {
        let s = &self.state;
        let mut keep: Vec<Digest> =
            [&s.active, &s.last_good, &s.fallback].into_iter().flatten().map(|i| i.target.digest).collect();
        if let Phase::Downloading { target } | Phase::Staging { target, .. } | Phase::Health { target, .. } = &s.phase {
            keep.push(target.digest);
        }
        self.memory.retain(|d, _| keep.contains(d));
    }
}

/// Everything a multi-capability agent persists (`state.json`): one lane per capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    /// Lanes by capability name.
    pub lanes: BTreeMap<String, Lane>,
    /// The lane a single-model reader sees (the old report fields, attestation's model, `status`): the capability
    /// of the package the director names first, or the lane migrated from a single-capability agent. Absent until
    /// known (and then not written, so earlier lanes files keep their bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
}

impl DeviceState {
    /// Reads a persisted state: this form, or an earlier agent's single [`AgentState`], which becomes the lane of
    /// `legacy_capability` (the capability its active package's manifest names) with its slots where they were.
    pub fn from_json(bytes: &[u8], legacy_capability: &str) -> Result<DeviceState, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        if value.get("lanes").is_some() {
            return serde_json::from_value(value);
        }
        let state: AgentState = serde_json::from_value(value)?;
        let lane = Lane { state, legacy_slots: true, memory: BTreeMap::new() };
        let lanes = BTreeMap::from([(legacy_capability.to_owned(), lane)]);
        Ok(DeviceState { lanes, primary: Some(legacy_capability.to_owned()) })
    }

    /// The primary lane's state ([`DeviceState::primary`], else the first lane by name).
    pub fn primary_state(&self) -> Option<&AgentState> {
        let named = self.primary.as_ref().and_then(|p| self.lanes.get(p));
        named.or_else(|| self.lanes.values().next()).map(|l| &l.state)
    }
}

/// One lane in a device's report ([`DeviceReport::lanes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneReport {
    /// The package this capability serves now.
    pub active: Option<Digest>,
    /// Its last confirmed package.
    pub last_good: Option<Digest>,
    /// Packages this lane rolled back from or refused before activation.
    pub rolled_back: Vec<Digest>,
    /// The lane's step in flight, in words.
    pub phase: String,
    /// The lane's last failure or rollback, if any.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Packages refused for this lane (site policy, the device's memory limit), newest last.
    #[serde(default)]
    pub refusals: Vec<Refusal>,
}

/// What a device with several capabilities posts (deterministic CBOR): a [`StateReport`] whose fields speak of the
/// primary lane, so a hub that reads a `StateReport` sees what it always saw, plus every lane under `lanes`
/// (additive: left out when empty, so a report without lanes keeps its bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The primary lane, as earlier agents reported their single model.
    #[serde(flatten)]
    pub state: StateReport,
    /// Every lane, by capability.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lanes: BTreeMap<String, LaneReport>,
    /// The router package the device routes by (additive: left out by a device without routes or an earlier
    /// agent, so such a report keeps its bytes). A router release is judged on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterReport>,
}

/// The router package a device routes by, in its [`DeviceReport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterReport {
    /// The router installed into its routes now.
    pub active: Option<Digest>,
    /// Router packages the device could not install (download, verification, not a router, rules not its
    /// manifest's), newest last: the router before keeps routing.
    #[serde(default)]
    pub failed: Vec<Digest>,
    /// Why the last of them failed, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

impl DeviceReport {
    /// What the lane of `capability` reports, in the [`StateReport`] form a release is judged on: that lane's
    /// packages, rollbacks, refusals and last failure (as `message`), the device's site, policy and shadow
    /// results (which name their package: a release takes only its own). A report without
    /// lanes (an earlier agent's) speaks of its single model: that is the lane of any capability. `None`: the
    /// device has lanes but none of `capability` (no package of it was ever assigned to it).
    pub fn lane(&self, capability: &str) -> Option<StateReport> {
        if self.lanes.is_empty() {
            return Some(self.state.clone());
        }
        let lane = self.lanes.get(capability)?;
        Some(StateReport {
            active: lane.active,
            last_good: lane.last_good,
            rolled_back: lane.rolled_back.clone(),
            phase: lane.phase.clone(),
            message: lane.last_error.clone().unwrap_or_default(),
            refusals: lane.refusals.clone(),
            policy: self.state.policy,
            site: self.state.site.clone(),
            shadow: self.state.shadow,
        })
    }

    /// Every package any lane rolled back from or refused before activation, and every router package the
    /// device could not install (what the director should stop offering this device), the primary lane's first.
    pub fn rolled_back(&self) -> Vec<Digest> {
        let mut all = self.state.rolled_back.clone();
        let routers = self.router.iter().flat_map(|r| &r.failed);
        for d in self.lanes.values().flat_map(|l| &l.rolled_back).chain(routers) {
            if !all.contains(d) {
                all.push(*d);
            }
        }
        all
    }
}

impl AgentState {
    /// This state as one lane of a [`DeviceReport`].
    pub fn lane_report(&self) -> LaneReport {
        let report = self.report("");
        LaneReport {
            active: report.active,
            last_good: report.last_good,
            rolled_back: report.rolled_back,
            phase: report.phase,
            last_error: self.last_error.clone(),
            refusals: report.refusals,
        }
    }
}

/// One package the director assigns for one capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneAssignment {
    /// The capability the package serves (its manifest's; its lane).
    pub capability: String,
    /// The package, matched against TUF.
    pub target: Target,
    /// Its `runtime.memory_budget_bytes`, as its signed metadata states it.
    pub memory_bytes: u64,
    /// The site policy's verdict before download (`None`: accepted).
    pub refusal: Option<Refusal>,
    /// Operator retries of the package for this device.
    pub retry: u32,
}

/// An action of one lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneAction {
    /// The lane (capability) it belongs to; empty for the device as a whole (a clock note).
    pub capability: String,
    /// What to do.
    pub action: Action,
}

/// The update lanes of one device. Save [`state`](Lanes::state) after every call that returns actions.
#[derive(Debug, Clone)]
pub struct Lanes {
    lanes: BTreeMap<String, Lane>,
    /// Health-window settings, the same for every lane.
    pub health: HealthPolicy,
    /// When update checks happen (one schedule for the device).
    pub checks: Checks,
    /// The device's memory for models (`None`: unbounded).
    pub memory_limit: Option<u64>,
    last_known_time: UnixSeconds,
    primary: Option<String>,
}

impl Lanes {
    /// Lanes over `state`.
    pub fn new(state: DeviceState, health: HealthPolicy, timing: Timing, memory_limit: Option<u64>) -> Self {
        let last_known_time = state.lanes.values().map(|l| l.state.last_known_time).max().unwrap_or(0);
        let primary = state.primary;
        Lanes { lanes: state.lanes, health, checks: Checks::new(timing), memory_limit, last_known_time, primary }
    }

    /// The persisted form.
    pub fn state(&self) -> DeviceState {
        DeviceState { lanes: self.lanes.clone(), primary: self.primary.clone() }
    }

    /// Every lane, by capability.
    pub fn lanes(&self) -> &BTreeMap<String, Lane> {
        &self.lanes
    }

    /// One lane's update state, to change what the lanes do not decide (the site policy in force, the
    /// revocation list's version, a graceful stop). Save [`state`](Lanes::state) after.
    pub fn lane_state_mut(&mut self, capability: &str) -> Option<&mut AgentState> {
        self.lanes.get_mut(capability).map(|l| &mut l.state)
    }

    /// Every lane's update state, mutable (see [`lane_state_mut`](Lanes::lane_state_mut)).
    pub fn states_mut(&mut self) -> impl Iterator<Item = &mut AgentState> {
        self.lanes.values_mut().map(|l| &mut l.state)
    }

    /// The primary lane's capability (see [`DeviceState::primary`]).
    pub fn primary(&self) -> Option<&str> {
        self.primary.as_deref()
    }

    /// Makes `capability` the primary lane (the director's first package is of it).
    pub fn set_primary(&mut self, capability: &str) {
        self.primary = Some(capability.to_owned());
    }

    /// The primary lane's update state: its own, else the first lane's by name.
    pub fn primary_state(&self) -> Option<&AgentState> {
        let named = self.primary.as_ref().and_then(|p| self.lanes.get(p));
        named.or_else(|| self.lanes.values().next()).map(|l| &l.state)
    }

    /// The report of every lane, with `message`: the [`StateReport`] fields speak of the primary lane.
    pub fn report(&self, message: &str, shadow: Option<ShadowReport>) -> DeviceReport {
        let mut state = self.primary_state().cloned().unwrap_or_else(|| AgentState::new(self.last_known_time));
        if let Some(policy) = self.lanes.values().find_map(|l| l.state.policy) {
            state.policy = Some(policy);
        }
        let mut report = state.report(message);
        report.shadow = shadow;
        let lanes = self.lanes.iter().map(|(c, l)| (c.clone(), l.state.lane_report())).collect();
        DeviceReport { state: report, lanes, router: None }
    }

    /// The earliest end of a health window among the lanes.
    pub fn health_deadline(&self) -> Option<UnixSeconds> {
        self.lanes.values().filter_map(|l| self.health_end(l)).min()
    }

    /// The lane that has `model` on trial in a health window, if any.
    pub fn on_trial(&self, model: &Digest) -> Option<&str> {
        self.lanes
            .iter()
            .find(|(_, l)| matches!(&l.state.phase, Phase::Health { target, .. } if target.digest == *model))
            .map(|(c, _)| c.as_str())
    }

    /// One lane's state, if the device has that capability.
    pub fn lane(&self, capability: &str) -> Option<&Lane> {
        self.lanes.get(capability)
    }

    /// What serves now, per capability.
    pub fn serving(&self) -> BTreeMap<&str, &Installed> {
        self.lanes.iter().filter_map(|(c, l)| Some((c.as_str(), l.state.active.as_ref()?))).collect()
    }

    /// Memory the device's models hold now (the budgets of every lane's resident models).
    pub fn resident_memory(&self) -> u64 {
        self.lanes.values().map(Lane::resident).sum()
    }

    /// Wall time, never below the last time seen; a clock going backwards is reported once for the device.
    fn time(&mut self, now: UnixSeconds, actions: &mut Vec<LaneAction>) -> UnixSeconds {
        if now < self.last_known_time {
            let held = self.last_known_time;
            let action = Action::Report(format!("clock went backwards: {now} < last known {held}"));
            actions.push(LaneAction { capability: String::new(), action });
            return held;
        }
        self.last_known_time = now;
        now
    }

    /// Feeds `event` to one lane (created empty if new), tagging its actions.
    fn feed(&mut self, now: UnixSeconds, capability: &str, event: Event) -> Vec<LaneAction> {
        let lane = self.lanes.entry(capability.to_owned()).or_insert_with(|| Lane::new(now));
        let state = std::mem::replace(&mut lane.state, AgentState::new(now));
        let mut update = UpdateLoop::new(state, self.health);
        let actions = update.handle(now, event);
        lane.state = update.state;
        lane.prune_memory();
        actions.into_iter().map(|action| LaneAction { capability: capability.to_owned(), action }).collect()
    }

    /// The agent (re)started: every lane serves its active model again and resumes (or, after a crash in a health
    /// window, rolls back) on its own.
    pub fn started(&mut self, now: UnixSeconds, clean: bool) -> Vec<LaneAction> {
        let mut actions = vec![];
        let now = self.time(now, &mut actions);
        let names: Vec<String> = self.lanes.keys().cloned().collect();
        for c in names {
            actions.extend(self.feed(now, &c, Event::Started { clean }));
        }
        actions
    }

    /// A verified director assignment: one package per capability, and the revocation list. Every lane hears the
    /// version and the revocations (a capability the assignment leaves out keeps what it runs); a package that
    /// would take the device's models past its memory limit is refused before download.
    pub fn assigned(
        &mut self,
        now: UnixSeconds,
        version: u64,
        assigned: Vec<LaneAssignment>,
        revoked: Vec<Digest>,
    ) -> Vec<LaneAction> {
        let mut actions = vec![];
        let now = self.time(now, &mut actions);
        let mut by_capability: BTreeMap<String, LaneAssignment> = BTreeMap::new();
        for a in assigned {
            if by_capability.contains_key(&a.capability) {
                let action = Action::Report(format!(
                    "ignored {} for {}: the assignment names two packages for one capability",
                    a.target.digest.short(),
                    a.capability
                ));
                actions.push(LaneAction { capability: a.capability, action });
                continue;
            }
            by_capability.insert(a.capability.clone(), a);
        }
        let mut names: Vec<String> = self.lanes.keys().cloned().collect();
        names.extend(by_capability.keys().filter(|c| !self.lanes.contains_key(*c)).cloned());
        for c in names {
            let (target, refusal, retry) = match by_capability.remove(&c) {
                Some(a) => {
                    let refusal = a.refusal.clone().or_else(|| self.over_memory(now, &a));
                    let lane = self.lanes.entry(c.clone()).or_insert_with(|| Lane::new(now));
                    lane.memory.insert(a.target.digest, a.memory_bytes);
                    (Some(a.target), refusal, a.retry)
                }
                None => (None, None, 0),
            };
            let event = Event::Assigned { version, target, revoked: revoked.clone(), refusal, retry };
            actions.extend(self.feed(now, &c, event));
        }
        actions
    }

    /// The refusal of `a` when the device's models would then need more memory than its limit: every other
    /// lane's resident and incoming models, this lane's resident ones (the active model stays loaded through the
    /// new package's health window), and the new package.
    fn over_memory(&self, now: UnixSeconds, a: &LaneAssignment) -> Option<Refusal> {
        let limit = self.memory_limit?;
        let lane = self.lanes.get(&a.capability);
        if lane.is_some_and(|l| l.holds(&a.target.digest)) {
            return None; // admitted already
        }
        let others: u64 = self.lanes.iter().filter(|(c, _)| **c != a.capability).map(|(_, l)| l.committed()).sum();
        let own = lane.map_or(0, Lane::resident);
        let total = others.saturating_add(own).saturating_add(a.memory_bytes);
        (total > limit).then(|| Refusal {
            digest: a.target.digest,
            package: a.target.path.clone(),
            rule: MEMORY_RULE.into(),
            reason: format!(
                "needs {} bytes beside {} bytes held by the device's models ({} of them this capability's): \
                 {total} bytes would exceed the device's memory limit of {limit} bytes",
                a.memory_bytes,
                others.saturating_add(own),
                own
            ),
            until: None,
            policy: memory_rule_digest(),
            at: now,
            by_site: false,
        })
    }

    /// An event of one lane's own work: a download, staging or refusal outcome.
    pub fn handle(&mut self, now: UnixSeconds, capability: &str, event: Event) -> Vec<LaneAction> {
        let mut actions = vec![];
        let now = self.time(now, &mut actions);
        if !self.lanes.contains_key(capability) {
            return actions;
        }
        actions.extend(self.feed(now, capability, event));
        actions
    }

    /// One inference on `model` finished: it counts in the health window of the lane that has it on trial.
    pub fn inference(&mut self, now: UnixSeconds, model: Digest, ok: bool) -> Vec<LaneAction> {
        let on_trial = self
            .lanes
            .iter()
            .find(|(_, l)| matches!(&l.state.phase, Phase::Health { target, .. } if target.digest == model));
        match on_trial.map(|(c, _)| c.clone()) {
            Some(c) => self.handle(now, &c, Event::Inference { ok }),
            None => vec![],
        }
    }

    /// Time passed: every lane whose health window has ended confirms its package.
    pub fn tick(&mut self, now: UnixSeconds) -> Vec<LaneAction> {
        let mut actions = vec![];
        let now = self.time(now, &mut actions);
        let due: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| self.health_end(l).is_some_and(|t| t <= now))
            .map(|(c, _)| c.clone())
            .collect();
        for c in due {
            actions.extend(self.feed(now, &c, Event::Tick));
        }
        actions
    }

    fn health_end(&self, lane: &Lane) -> Option<UnixSeconds> {
        match lane.state.phase {
            Phase::Health { since, .. } => Some(since.saturating_add(self.health.seconds)),
            _ => None,
        }
    }

    /// When the lanes next need the driver: the next update check or the earliest end of a health window.
    pub fn next_deadline(&self, now: UnixSeconds) -> UnixSeconds {
        let deferrals = self.lanes.values().flat_map(|l| l.state.refused.iter().filter_map(|r| r.until));
        let check = self.checks.next_check(deferrals).unwrap_or(now);
        self.lanes.values().filter_map(|l| self.health_end(l)).fold(check, UnixSeconds::min)
    }

    /// Whether an update check is due at `now`.
    pub fn check_due(&self, now: UnixSeconds) -> bool {
        let deferrals = self.lanes.values().flat_map(|l| l.state.refused.iter().filter_map(|r| r.until));
        self.checks.next_check(deferrals).is_none_or(|t| t <= now)
    }

    /// An update check ended at `now` (see [`Checks::check_ended`]).
    pub fn check_ended(&mut self, now: UnixSeconds, rng: &mut dyn Rng) {
        self.checks.check_ended(now, rng);
    }
}
