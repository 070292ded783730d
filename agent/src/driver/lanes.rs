//! Driving the update lanes (`shared::update::lanes`): one lane per capability, each with its own slots
//! directory, model handle in the inference API, staged and previous model — so one capability's rollback,
//! revocation or refusal never touches another's model. Every step is persisted (`state.json`, the lanes form)
//! before it is acted on.

use std::collections::BTreeMap;

use outpost_shared::update::Phase;
use outpost_shared::update::lanes::{DeviceState, LaneAction, LaneAssignment, Lanes};

use super::*;

/// The lane a target joins when TUF states no capability for it (a single-model agent's model, as before).
pub const UNNAMED_LANE: &str = "model";

impl Agent {
    /// The persisted lanes, or none on a fresh device. A single-model agent's state becomes the lane of the
    /// capability its installed model's manifest names (its slots stay `slots/a` and `slots/b`), so its model keeps
    /// serving without a download; a state with nothing installed whose capability cannot be read starts afresh.
    pub(super) fn load_lanes(layout: &Layout) -> Result<DeviceState, CheckError> {
        let mut unreadable = false;
        let state = device::load_device_state(layout, |old| {
            let installed = [&old.active, &old.last_good, &old.fallback].into_iter().flatten();
            let named = installed.filter_map(|i| slot_capability(&layout.slot(i.slot), &i.target.digest)).next();
            named.unwrap_or_else(|| {
                unreadable = true;
                String::new()
            })
        })?;
        let mut state = state.unwrap_or_default();
        if unreadable {
            if state.lanes.get("").is_some_and(|l| l.state.active.is_some()) {
                return Err(CheckError::Invalid(
                    "state.json names an active model whose slot does not say its capability".into(),
                ));
            }
            tracing::warn!("state.json of an earlier agent has no installed model: starting afresh");
            state.lanes.remove("");
            state.primary = None;
        }
        Ok(state)
    }

    /// The model handle `capability` serves from: the agent's own handle for the primary lane, else one of its
    /// own (created here, and routed to).
    pub(super) fn handle_of(&mut self, capability: &str) -> Arc<ModelHandle> {
        if self.lanes.primary().is_none_or(|p| p == capability) {
            return self.models.clone();
        }
        if let Some(h) = self.handles.get(capability) {
            return h.clone();
        }
        let handle = Arc::new(self.models.sibling());
        if let Some(routes) = &self.routes {
            routes.serve_handle(handle.clone());
        }
        self.handles.insert(capability.to_owned(), handle.clone());
        handle
    }

    /// The model `capability` serves now, if any.
    pub fn active_of(&self, capability: &str) -> Option<Arc<Served>> {
        if self.lanes.primary().is_none_or(|p| p == capability) {
            return self.models.current();
        }
        self.handles.get(capability)?.current()
    }

    /// The update lanes (one per capability).
    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    /// `capability`'s slot directory.
    pub(super) fn slot_dir(&self, capability: &str, slot: Slot) -> std::path::PathBuf {
        let legacy = self.lanes.lane(capability).is_some_and(|l| l.legacy_slots);
        self.layout.lane_slot(capability, legacy, slot)
    }

    /// Runs one step of the lanes (`f`), persists it, queues the telemetry each lane's change makes (`event`: what
    /// the step was fed, for the steps that concern one download or stage), and returns the actions to perform. A
    /// state that cannot be saved leaves the lanes as they were (see [`Agent::feed`]).
    pub(super) fn step(
        &mut self,
        event: &Event,
        f: impl FnOnce(&mut Lanes, u64) -> Vec<LaneAction>,
    ) -> Result<Vec<LaneAction>, CheckError> {
        let saved = self.lanes.clone();
        let actions = f(&mut self.lanes, self.clock.wall());
        self.apply_policy();
        if let Err(e) = self.save() {
            self.lanes = saved;
            return Err(e.into());
        }
        let empty = AgentState::new(0);
        for (capability, lane) in self.lanes.lanes() {
            let before = saved.lane(capability).map_or(&empty, |l| &l.state);
            let of_lane: Vec<Action> =
                actions.iter().filter(|a| a.capability == *capability).map(|a| a.action.clone()).collect();
            if of_lane.is_empty() && *before == lane.state {
                continue;
            }
            for kind in telemetry::events_of(before, event, &of_lane, &lane.state) {
                self.queue(kind);
            }
        }
        Ok(actions)
    }

    /// Feeds one lane's own outcome (a download, a stage) to it.
    pub(super) fn feed(&mut self, capability: &str, event: Event) -> Result<Vec<LaneAction>, CheckError> {
        let fed = event.clone();
        self.step(&fed, |lanes, now| lanes.handle(now, capability, event))
    }

    /// Sets the site policy in force on every lane (a lane new in this step included).
    pub(super) fn apply_policy(&mut self) {
        let policy = self.policy.as_ref().map(SitePolicy::digest);
        let site = self.policy.as_ref().and_then(|p| p.site().map(str::to_owned));
        for state in self.lanes.states_mut() {
            state.policy = policy;
            state.site.clone_from(&site);
        }
    }

    /// The packages of a verified assignment, one per capability (its TUF custom fields name the capability and
    /// the memory budget), each judged by the site policy before download. A capability that cannot name a slots
    /// directory is left out and reported.
    pub(super) fn lane_assignments(
        &mut self,
        targets: &[director::AssignedTarget],
        custom: &BTreeMap<String, serde_json::Value>,
        now: u64,
    ) -> Vec<LaneAssignment> {
        let mut out = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let fields = custom.get(&t.path);
            let outpost = fields.and_then(|c| c.get("outpost"));
            let named = outpost.and_then(|o| o.get("capability")).and_then(|c| c.as_str()).map(str::to_owned);
            let capability = match named {
                Some(c) => c,
                // Without the field, the first target is what a single-model agent ran.
                None if i == 0 => self.lanes.primary().unwrap_or(UNNAMED_LANE).to_owned(),
                None => {
                    self.outbox.push(format!("ignored {}: TUF states no capability for it", t.path));
                    continue;
                }
            };
            if !device::lane_name_ok(&capability) {
                self.outbox.push(format!("ignored {}: capability `{capability}` cannot name a lane", t.path));
                continue;
            }
            if i == 0 && self.lanes.primary().is_none() {
                self.lanes.set_primary(&capability);
            }
            let memory_bytes = outpost.and_then(|o| o.get("memory_budget_bytes")).and_then(|m| m.as_u64());
            let target = Target { path: t.path.clone(), digest: t.sha256, length: t.length };
            let refusal = self.judge_before_download(&target, fields, now);
            out.push(LaneAssignment {
                capability,
                target,
                memory_bytes: memory_bytes.unwrap_or(0),
                refusal,
                retry: t.retry,
            });
        }
        out
    }

    /// Performs actions that need no network (activation, reports into the outbox); network actions are
    /// left for the next check.
    pub(super) fn perform_local(&mut self, actions: Vec<LaneAction>) -> Result<(), CheckError> {
        for LaneAction { capability, action } in actions {
            match action {
                Action::Activate(installed) => self.activate(&capability, &installed)?,
                Action::Deactivate => {
                    // Routes say why the capability stopped answering: revoked, or its release failed on the device.
                    let gone = self.handle_of(&capability).clear();
                    if let (Some(gone), Some(routes)) = (gone, &self.routes) {
                        let state = self.lanes.lane(&capability).map(|l| &l.state);
                        let revoked = state.is_some_and(|s| s.revoked.contains(gone.digest()));
                        let why = if revoked { Skip::Revoked } else { Skip::HealthFailed };
                        routes.mark(&gone.manifest().capability, Some(why));
                    }
                }
                Action::Report(message) => {
                    // The primary lane's messages read as a single-model agent's always did.
                    let message = if capability.is_empty() || self.lanes.primary() == Some(capability.as_str()) {
                        message
                    } else {
                        format!("{capability}: {message}")
                    };
                    tracing::info!("{message}");
                    self.outbox.push(message)
                }
                Action::Download(_) | Action::Stage { .. } => {}
            }
        }
        // Confirmed or rolled back: one model per capability in memory again.
        let lanes = self.lanes.lanes();
        self.previous.retain(|c, _| lanes.get(c).is_some_and(|l| matches!(l.state.phase, Phase::Health { .. })));
        Ok(())
    }
}

/// The capability a slot's manifest names, if the slot holds `digest` and its manifest reads.
fn slot_capability(dir: &std::path::Path, digest: &Digest) -> Option<String> {
    let recorded = std::fs::read_to_string(dir.join("digest")).ok()?;
    if recorded.trim() != digest.to_hex() {
        return None;
    }
    let manifest = Manifest::from_cbor(&std::fs::read(dir.join("manifest.cbor")).ok()?).ok()?;
    Some(manifest.capability)
}
