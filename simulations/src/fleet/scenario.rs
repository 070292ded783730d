//! A fleet scenario as written in `simulations/scenarios/*.toml`: the fleet, its timing (scaled: a poll interval
//! of seconds stands for one of minutes), the story's events in time, and what must hold at the end.
//!
//! Parsing only; every bound is checked here so a run never starts on a scenario it cannot judge.

use std::path::Path;

use serde::Deserialize;

/// Why a scenario file is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The TOML does not parse into a scenario.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What failed, with the line.
        source: toml::de::Error,
    },
    /// A value is out of range or names something the scenario does not define.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Which key and why.
        message: String,
    },
}

/// How simulated devices hold their connection to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// As the agent does: the connection stays open between checks, and the hub pushes revocation notices on it.
    LongLived,
    /// A new connection per check (full handshake and attestation every time), closed after it.
    PerCheck,
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, printed in the report.
    pub name: String,
    /// The story, one paragraph.
    #[serde(default)]
    pub description: String,
    /// Simulated devices.
    pub devices: usize,
    /// How long the run lasts after every device has started, in seconds.
    pub duration_secs: u64,
    /// The agents' update timing (scaled).
    pub timing: Timing,
    /// The fleet's shape.
    #[serde(default)]
    pub fleet: Fleet,
    /// Rollout plans by name (TOML text, as `release start --plan` reads it).
    #[serde(default)]
    pub plans: std::collections::BTreeMap<String, String>,
    /// What happens, in time order.
    #[serde(default, rename = "event")]
    pub events: Vec<Event>,
    /// What must hold.
    #[serde(default, rename = "assert")]
    pub asserts: Vec<Assert>,
}

/// The agents' timing: `[updates]` of `agent.toml`, scaled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Seconds between checks.
    pub poll_secs: u64,
    /// Up to this many seconds more per check, drawn by the agent.
    pub jitter_secs: u64,
    /// Good inferences that confirm a package on trial.
    #[serde(default = "default_health_inferences")]
    pub health_inferences: u32,
    /// Seconds without error that confirm a package on trial.
    #[serde(default = "default_health_secs")]
    pub health_secs: u64,
    /// Over how many seconds the devices start (their first checks), so a fleet does not begin as a herd.
    #[serde(default)]
    pub ramp_secs: u64,
}

fn default_health_inferences() -> u32 {
    3
}

fn default_health_secs() -> u64 {
    300
}

/// The fleet's shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// How devices hold their connection.
    #[serde(default = "default_connection")]
    pub connection: Connection,
    /// UDP sockets the devices share, each on its own loopback address (127.0.0.1, .2, ...), as devices behind
    /// a few NATs.
    #[serde(default = "default_sockets")]
    pub sockets: usize,
    /// Share of devices whose clock is off.
    #[serde(default)]
    pub skew_share: f64,
    /// How far off (seconds; half of the skewed devices ahead, half behind).
    #[serde(default)]
    pub skew_secs: u64,
    /// Share of devices behind the site node (none: no site node).
    #[serde(default)]
    pub site_share: f64,
    /// Median inference latency the devices report, milliseconds.
    #[serde(default = "default_latency_p50")]
    pub latency_p50_ms: f64,
    /// 99th percentile of the reported inference latency, milliseconds (a log-normal through both).
    #[serde(default = "default_latency_p99")]
    pub latency_p99_ms: f64,
    /// Connections the hub serves at once (`serve --max-connections`); default: enough for every device.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

fn default_connection() -> Connection {
    Connection::LongLived
}

fn default_sockets() -> usize {
    4
}

fn default_latency_p50() -> f64 {
    8.0
}

fn default_latency_p99() -> f64 {
    40.0
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet {
            connection: default_connection(),
            sockets: default_sockets(),
            skew_share: 0.0,
            skew_secs: 0,
            site_share: 0.0,
            latency_p50_ms: default_latency_p50(),
            latency_p99_ms: default_latency_p99(),
            max_connections: None,
        }
    }
}

/// One step of the story, at `at_secs` after the start.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    /// Seconds after every device has started.
    pub at_secs: u64,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
}

/// What an event does.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// A new version of the model is added and published; under `plan` it is also started as a staged release.
    Release {
        /// The version (the fleet starts on 1.0.0).
        version: String,
        /// A plan of `[plans]`; none: published only (every device takes it at its next check).
        #[serde(default)]
        plan: Option<String>,
        /// Share of devices on which this version fails its health window (their bodies fail inferences).
        #[serde(default)]
        fail_share: f64,
    },
    /// The version's package is revoked (`release revoke`).
    RevokePackage {
        /// The version.
        version: String,
    },
    /// A share of the devices is revoked (`device revoke`).
    RevokeDevices {
        /// Share of the fleet.
        share: f64,
    },
    /// The hub process is killed with SIGKILL.
    KillHub,
    /// The hub process is started again.
    StartHub,
    /// The site node stops (its devices cannot reach anything).
    SiteDown,
    /// The site node starts again.
    SiteUp,
    /// The link from the site node to the hub drops every packet (the site keeps serving its devices).
    Partition,
    /// The link from the site node to the hub carries packets again.
    Heal,
    /// Every device checks at once (a fleet reconnecting after an outage).
    CheckAll,
}

/// What must hold; each names its measured value when it fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Assert {
    /// At least `share` of the devices (not revoked) run `version` within `within_polls` poll intervals (poll +
    /// jitter) of the event `after` (an index into the events; default: the release of `version`).
    Converge {
        /// The version.
        version: String,
        /// Share of devices.
        share: f64,
        /// Poll intervals.
        within_polls: f64,
        /// Count from this event (index); default: the release of `version`.
        #[serde(default)]
        after: Option<usize>,
    },
    /// At least `share` of the devices running `version` when it was revoked run something else within
    /// `within_secs`.
    RevocationReach {
        /// The version revoked.
        version: String,
        /// Share of the devices that ran it.
        share: f64,
        /// Seconds after the revocation.
        within_secs: f64,
    },
    /// The staged release of `version` ends in `state` (as `release status` words it: `aborted`, `completed`...).
    ReleaseState {
        /// The version whose release is judged.
        version: String,
        /// `aborted`, `completed`, ...
        state: String,
    },
    /// Every revoked device's checks fail from `within_polls` poll intervals after its revocation on, and every
    /// other device's last check succeeded.
    RevokedDevicesRefused {
        /// Poll intervals.
        within_polls: f64,
    },
    /// At the end, at least `share` of the devices (not revoked) run `version`.
    EndsOn {
        /// The version.
        version: String,
        /// Share of devices.
        share: f64,
    },
    /// Within `within_polls` poll intervals of event `after`, at least `share` of the devices had a successful
    /// check begun after it (a fleet back on its feet after an outage). One event per scenario.
    Recovers {
        /// The event (index).
        after: usize,
        /// Share of devices.
        share: f64,
        /// Poll intervals.
        within_polls: f64,
    },
    /// The share of failed checks over the whole run is at most `share`, counting only failures of `kinds` (as
    /// the report names them: `tuf`, `not attested`, `connection`...) when given.
    MaxErrorShare {
        /// Share of checks.
        share: f64,
        /// Kinds of failure counted (none: every kind).
        #[serde(default)]
        kinds: Vec<String>,
    },
    /// Checks per second over the run held at least `share` of what the fleet's timing asks.
    PollRate {
        /// Share of the expected rate.
        share: f64,
    },
    /// Every telemetry event the devices queued reached the hub (every device's queue drained, nothing dropped,
    /// no sequence gap at the hub).
    NoReportLost,
    /// The 99th percentile of check latency is at most `ms`.
    CheckLatencyP99 {
        /// Milliseconds.
        ms: f64,
    },
}

impl Scenario {
    /// Reads and checks a scenario file.
    ///
    /// # Errors
    /// The file cannot be read, does not parse, or holds a value out of range.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| ScenarioError::Read { path: name.clone(), source })?;
        Scenario::parse(&text, &name)
    }

    /// Parses and checks a scenario; `path` names it in errors.
    ///
    /// # Errors
    /// It does not parse, or holds a value out of range.
    pub fn parse(text: &str, path: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|source| ScenarioError::Parse { path: path.into(), source })?;
        let bad = |message: String| Err(ScenarioError::Invalid { path: path.into(), message });
        if s.devices == 0 {
            return bad("devices: must be at least 1".into());
        }
        if s.timing.poll_secs == 0 {
            return bad("timing.poll_secs: must be at least 1".into());
        }
        if s.fleet.sockets == 0 || s.fleet.sockets > 250 {
            return bad("fleet.sockets: must be 1 to 250".into());
        }
        for (key, v) in [("fleet.skew_share", s.fleet.skew_share), ("fleet.site_share", s.fleet.site_share)] {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{key}: must be within 0..1"));
            }
        }
        if !(s.fleet.latency_p50_ms > 0.0 && s.fleet.latency_p99_ms >= s.fleet.latency_p50_ms) {
            return bad("fleet.latency_p50_ms, latency_p99_ms: 0 < p50 <= p99".into());
        }
        let mut versions = vec!["1.0.0".to_owned()];
        for (i, e) in s.events.iter().enumerate() {
            if e.at_secs > s.duration_secs {
                return bad(format!("event {i}: at_secs {} is past duration_secs {}", e.at_secs, s.duration_secs));
            }
            match &e.action {
                Action::Release { version, plan, fail_share } => {
                    if versions.contains(version) {
                        return bad(format!("event {i}: version {version} released twice"));
                    }
                    versions.push(version.clone());
                    if let Some(p) = plan
                        && !s.plans.contains_key(p)
                    {
                        return bad(format!("event {i}: plan `{p}` is not in [plans]"));
                    }
                    if !(0.0..=1.0).contains(fail_share) {
                        return bad(format!("event {i}: fail_share must be within 0..1"));
                    }
                }
                Action::RevokePackage { version } if !versions.contains(version) => {
                    return bad(format!("event {i}: version {version} is not released before"));
                }
                Action::RevokeDevices { share } if !(0.0..=1.0).contains(share) => {
                    return bad(format!("event {i}: share must be within 0..1"));
                }
                Action::SiteDown | Action::SiteUp | Action::Partition | Action::Heal if s.fleet.site_share == 0.0 => {
                    return bad(format!("event {i}: a site event needs fleet.site_share > 0"));
                }
                _ => {}
            }
        }
        for (i, a) in s.asserts.iter().enumerate() {
            let version = match a {
                Assert::Converge { version, after, .. } => {
                    if after.is_some_and(|e| e >= s.events.len()) {
                        return bad(format!("assert {i}: after names no event"));
                    }
                    Some(version)
                }
                Assert::Recovers { after, .. } => {
                    if *after >= s.events.len() {
                        return bad(format!("assert {i}: after names no event"));
                    }
                    None
                }
                Assert::RevocationReach { version, .. }
                | Assert::ReleaseState { version, .. }
                | Assert::EndsOn { version, .. } => Some(version),
                _ => None,
            };
            if let Some(v) = version
                && !versions.contains(v)
            {
                return bad(format!("assert {i}: version {v} is never released"));
            }
        }
        let mut marks = s.asserts.iter().filter_map(|a| match a {
            Assert::Recovers { after, .. } => Some(*after),
            _ => None,
        });
        if let Some(first) = marks.next()
            && marks.any(|m| m != first)
        {
            return bad("recovers: every such assertion must name the same event".into());
        }
        Ok(s)
    }

    /// The versions the run adds, 1.0.0 first.
    pub fn versions(&self) -> Vec<String> {
        let mut v = vec!["1.0.0".to_owned()];
        v.extend(self.events.iter().filter_map(|e| match &e.action {
            Action::Release { version, .. } => Some(version.clone()),
            _ => None,
        }));
        v
    }

    /// The index of the event releasing `version`.
    pub fn release_event(&self, version: &str) -> Option<usize> {
        self.events.iter().position(|e| matches!(&e.action, Action::Release { version: v, .. } if v == version))
    }

    /// Scales time by `factor`: poll, jitter, ramp, health window, run length and event times alike, so a
    /// scenario written for polls of seconds runs at polls of minutes (or the other way) telling the same story.
    pub fn scale_time(&mut self, factor: f64) {
        let scale = |v: &mut u64| *v = ((*v as f64) * factor).round() as u64;
        scale(&mut self.timing.poll_secs);
        self.timing.poll_secs = self.timing.poll_secs.max(1);
        scale(&mut self.timing.jitter_secs);
        scale(&mut self.timing.ramp_secs);
        scale(&mut self.timing.health_secs);
        scale(&mut self.duration_secs);
        for e in &mut self.events {
            scale(&mut e.at_secs);
        }
        for a in &mut self.asserts {
            if let Assert::RevocationReach { within_secs, .. } = a {
                *within_secs *= factor;
            }
        }
    }

    /// One poll interval at its longest (poll plus all the jitter), seconds.
    pub fn poll_interval(&self) -> f64 {
        (self.timing.poll_secs + self.timing.jitter_secs) as f64
    }
}
