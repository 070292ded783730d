//! Site policy: a site's declarative rules over a package's signed metadata, evaluated sans-IO on an injected
//! time into **accept**, **defer until T** or **reject**, with the rule that fired and every rule's outcome.
//!
//! A policy is one TOML file per site. Every key is optional (absent: no constraint); an unknown key, a bad
//! value or a rule that can never be met is refused at load with the line and the key, so the agent keeps its
//! last good policy. Facts come from the TUF targets custom fields before download, and from the verified
//! manifest after it; [`PackageFacts::differs_from`] names any field where the two disagree.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::clock::{UnixSeconds, format_rfc3339};
use crate::config::ConfigError;
use crate::manifest::{DataClassification, Manifest, RiskTier};

/// A site's policy, as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The site's name, for reports.
    #[serde(default)]
    pub site: Option<String>,
    /// Capabilities allowed here: exact (`audio.vad`) or a prefix ending in `.*` (`ocr.*`).
    #[serde(default)]
    pub allowed_capabilities: Option<Vec<String>>,
    /// The highest risk tier accepted.
    #[serde(default)]
    pub max_risk: Option<RiskTier>,
    /// Data classifications a model may be meant for.
    #[serde(default)]
    pub allowed_data_classes: Option<Vec<DataClassification>>,
    /// Evaluation metrics a package must report, with bounds.
    #[serde(default)]
    pub required_metrics: Vec<RequiredMetric>,
    /// Largest model file accepted, in bytes.
    #[serde(default)]
    pub max_model_bytes: Option<u64>,
    /// Largest memory budget (the manifest's `runtime.memory_budget_bytes`) accepted.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
    /// Package name → lowest version accepted: no downgrade below it, however well signed.
    #[serde(default)]
    pub version_floor: BTreeMap<String, semver::Version>,
    /// Release channels accepted.
    #[serde(default)]
    pub allowed_channels: Option<Vec<String>>,
    /// Targets key ids that must all have signed the package's release.
    #[serde(default)]
    pub required_signers: Vec<String>,
    /// SPDX licence identifiers accepted.
    #[serde(default)]
    pub allowed_licenses: Option<Vec<String>>,
    /// Seconds a release must have been out before this site installs it.
    #[serde(default)]
    pub min_soak_secs: Option<u64>,
    /// When installs may happen (UTC); outside them a package is deferred to the next window.
    #[serde(default)]
    pub maintenance_windows: Vec<Window>,
}

/// One required evaluation metric.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredMetric {
    /// The metric's name in the evaluation card (`accuracy`).
    pub metric: String,
    /// The evaluation suite it must come from; any suite when absent.
    #[serde(default)]
    pub suite: Option<String>,
    /// Lowest value accepted.
    #[serde(default)]
    pub min: Option<f64>,
    /// Highest value accepted.
    #[serde(default)]
    pub max: Option<f64>,
}

/// A weekly maintenance window in UTC.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days the window opens (`mon` … `sun`); every day when absent.
    #[serde(default = "every_day")]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM`.
    pub start: HourMinute,
    /// Closing time, `HH:MM`; earlier than `start` means the window runs past midnight.
    pub end: HourMinute,
}

fn every_day() -> Vec<Weekday> {
    use Weekday::*;
    vec![Mon, Tue, Wed, Thu, Fri, Sat, Sun]
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    /// Days since Monday.
    fn index(self) -> u64 {
        self as u64
    }
}

/// Minutes after midnight, written `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourMinute(pub u32);

impl<'de> Deserialize<'de> for HourMinute {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("`{s}` is not a time of day as HH:MM (00:00 to 23:59)"));
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 || s.len() != 5 {
            return Err(bad());
        }
        Ok(HourMinute(h * 60 + m))
    }
}

impl fmt::Display for HourMinute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Policy {
    /// Parses and checks a policy file's text; `path` names it in errors. Refuses unknown keys, bad values and
    /// rules no package could ever meet, naming the line and the key.
    pub fn from_toml(text: &str, path: &Path) -> Result<Policy, ConfigError> {
        let policy: Policy = crate::config::parse(text, path)?;
        policy.check().map_err(|(key, problem)| ConfigError::Invalid {
            path: path.into(),
            line: line_of(text, &key),
            key,
            problem,
        })?;
        Ok(policy)
    }

    fn check(&self) -> Result<(), (String, String)> {
        let empty = |key: &str| {
            Err((
                key.to_owned(),
                "an empty list allows nothing: remove the key to allow any, or list at least one".into(),
            ))
        };
        for (key, len) in [
            ("allowed_capabilities", self.allowed_capabilities.as_ref().map(Vec::len)),
            ("allowed_data_classes", self.allowed_data_classes.as_ref().map(Vec::len)),
            ("allowed_channels", self.allowed_channels.as_ref().map(Vec::len)),
            ("allowed_licenses", self.allowed_licenses.as_ref().map(Vec::len)),
        ] {
            if len == Some(0) {
                return empty(key);
            }
        }
        for (i, pattern) in self.allowed_capabilities.iter().flatten().enumerate() {
            let stem = pattern.strip_suffix(".*").unwrap_or(pattern);
            if stem.is_empty() || stem.contains('*') || stem.split('.').any(str::is_empty) {
                return Err((
                    format!("allowed_capabilities[{i}]"),
                    format!("`{pattern}` is neither a capability (`audio.vad`) nor a prefix ending in `.*` (`ocr.*`)"),
                ));
            }
        }
        for (key, v) in [("max_model_bytes", self.max_model_bytes), ("max_memory_bytes", self.max_memory_bytes)] {
            if v == Some(0) {
                return Err((key.into(), "0 bytes admits no model".into()));
            }
        }
        for (i, m) in self.required_metrics.iter().enumerate() {
            let key = format!("required_metrics[{i}]");
            match (m.min, m.max) {
                (None, None) => return Err((key, format!("metric `{}` needs `min`, `max` or both", m.metric))),
                (Some(lo), Some(hi)) if lo > hi => {
                    return Err((key, format!("min {lo} is above max {hi}: no value can meet it")));
                }
                (lo, hi) if lo.into_iter().chain(hi).any(|v| !v.is_finite()) => {
                    return Err((key, "bounds must be finite numbers".into()));
                }
                _ => {}
            }
        }
        for (i, w) in self.maintenance_windows.iter().enumerate() {
            let key = format!("maintenance_windows[{i}]");
            if w.start == w.end {
                return Err((key, format!("opens and closes at {}: the window is empty", w.start)));
            }
            if w.days.is_empty() {
                return Err((key + ".days", "no days: the window never opens".into()));
            }
        }
        Ok(())
    }

    /// Decides on a package at `now`. Every rule is evaluated and listed; the first rejecting rule fires;
    /// without one, the soak time and maintenance windows may defer.
    pub fn evaluate(&self, facts: &PackageFacts, now: UnixSeconds) -> Evaluation {
        let mut rules = Vec::new();
        let mut judge = |rule: &str, outcome: Result<String, String>| {
            let (passed, detail) = match outcome {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            let outcome = if passed { Outcome::Pass } else { Outcome::Reject };
            rules.push(RuleOutcome { rule: rule.to_owned(), outcome, detail });
        };
        if let Some(allowed) = &self.allowed_capabilities {
            let ok = allowed.iter().any(|p| capability_matches(p, &facts.capability));
            judge("allowed_capabilities", verdict(ok, format!("capability `{}`", facts.capability), allowed));
        }
        if let Some(max) = self.max_risk {
            let r = facts.risk_tier;
            judge(
                "max_risk",
                if r <= max { Ok(format!("risk {r} ≤ {max}")) } else { Err(format!("risk {r} > {max}")) },
            );
        }
        if let Some(allowed) = &self.allowed_data_classes {
            let c = facts.data_classification;
            judge("allowed_data_classes", verdict(allowed.contains(&c), format!("data class {c}"), allowed));
        }
        for m in &self.required_metrics {
            judge("required_metrics", metric_outcome(m, facts));
        }
        if let Some(max) = self.max_model_bytes {
            let outcome = match facts.model_bytes {
                Some(n) => within(n, max, "model"),
                None => Err("the model's size is unknown here (a manifest without its model)".into()),
            };
            judge("max_model_bytes", outcome);
        }
        if let Some(max) = self.max_memory_bytes {
            judge("max_memory_bytes", within(facts.memory_budget_bytes, max, "memory budget"));
        }
        if let Some(floor) = self.version_floor.get(&facts.name) {
            let v = &facts.version;
            judge(
                "version_floor",
                if v >= floor {
                    Ok(format!("{} {v} ≥ floor {floor}", facts.name))
                } else {
                    Err(format!(
                        "{} {v} is below this site's floor {floor}: a downgrade, however well signed",
                        facts.name
                    ))
                },
            );
        }
        if let Some(allowed) = &self.allowed_channels {
            let outcome = match &facts.channels {
                None => {
                    Err("the release channels are not known (only the TUF targets metadata carries them)".to_owned())
                }
                Some(chs) => match chs.iter().find(|c| allowed.contains(c)) {
                    Some(c) => Ok(format!("released on `{c}`")),
                    None => Err(format!("released on {chs:?}, this site takes {allowed:?}")),
                },
            };
            judge("allowed_channels", outcome);
        }
        if !self.required_signers.is_empty() {
            let missing: Vec<&String> = self.required_signers.iter().filter(|k| !facts.signers.contains(k)).collect();
            judge(
                "required_signers",
                if missing.is_empty() {
                    Ok(format!("signed by all {} required keys", self.required_signers.len()))
                } else {
                    Err(format!("not signed by required key(s) {}", list(&missing)))
                },
            );
        }
        if let Some(allowed) = &self.allowed_licenses {
            judge(
                "allowed_licenses",
                verdict(allowed.contains(&facts.license), format!("licence {}", facts.license), allowed),
            );
        }

        // Deferrals: the earliest time at or after the soak end that falls inside a window.
        let mut ready_at = now;
        if let Some(soak) = self.min_soak_secs {
            match facts.published_at {
                None => rules.push(RuleOutcome {
                    rule: "min_soak_secs".into(),
                    outcome: Outcome::Reject,
                    detail: "the release time is not known (only the TUF targets metadata carries it)".into(),
                }),
                Some(published) => {
                    let until = published.saturating_add(soak);
                    let (outcome, detail) = if until <= now {
                        (Outcome::Pass, format!("released {}, soaked {soak} s", format_rfc3339(published)))
                    } else {
                        ready_at = until;
                        (
                            Outcome::Defer(until),
                            format!("released {}: soaks until {}", format_rfc3339(published), format_rfc3339(until)),
                        )
                    };
                    rules.push(RuleOutcome { rule: "min_soak_secs".into(), outcome, detail });
                }
            }
        }
        if !self.maintenance_windows.is_empty() {
            let open = next_open(&self.maintenance_windows, ready_at);
            let (outcome, detail) = if open == now {
                (Outcome::Pass, format!("inside a maintenance window at {}", format_rfc3339(now)))
            } else {
                (Outcome::Defer(open), format!("next maintenance window opens {}", format_rfc3339(open)))
            };
            rules.push(RuleOutcome { rule: "maintenance_windows".into(), outcome, detail });
        }

        Evaluation::of(rules)
    }
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Install it.
    Accept,
    /// Not yet: ask again at `until`.
    Defer {
        /// When the package becomes acceptable (if nothing else changes).
        until: UnixSeconds,
        /// The rule that deferred.
        rule: String,
        /// Why, for a human.
        reason: String,
    },
    /// Never, under this policy.
    Reject {
        /// The rule that fired.
        rule: String,
        /// Why, for a human.
        reason: String,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Accept => f.write_str("accept"),
            Decision::Defer { until, rule, reason } => {
                write!(f, "defer until {} (rule `{rule}`: {reason})", format_rfc3339(*until))
            }
            Decision::Reject { rule, reason } => write!(f, "reject (rule `{rule}`: {reason})"),
        }
    }
}

/// A decision with every rule's outcome, in evaluation order.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The decision.
    pub decision: Decision,
    /// Each rule set in the policy, and how the package fared.
    pub rules: Vec<RuleOutcome>,
}

impl Evaluation {
    /// The decision the outcomes make: the first rejection fires; else the latest deferral; else accept.
    pub fn of(rules: Vec<RuleOutcome>) -> Evaluation {
        let decision = match rules.iter().find(|r| r.outcome == Outcome::Reject) {
            Some(r) => Decision::Reject { rule: r.rule.clone(), reason: r.detail.clone() },
            None => match rules.iter().filter_map(|r| r.outcome.defer_until()).max() {
                Some(until) => {
                    let r = rules.iter().rev().find(|r| r.outcome.defer_until() == Some(until)).expect("a deferral");
                    Decision::Defer { until, rule: r.rule.clone(), reason: r.detail.clone() }
                }
                None => Decision::Accept,
            },
        };
        Evaluation { decision, rules }
    }

    /// This evaluation with more rules' outcomes (WASM rules after the declarative ones), decided again.
    pub fn with(mut self, more: impl IntoIterator<Item = RuleOutcome>) -> Evaluation {
        self.rules.extend(more);
        Evaluation::of(self.rules)
    }
}

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleOutcome {
    /// The policy key (or `wasm:<module>` for a WASM rule).
    pub rule: String,
    /// Pass, reject or defer.
    pub outcome: Outcome,
    /// What was compared.
    pub detail: String,
}

/// How a package fared against one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Met.
    Pass,
    /// Not met, and never will be under this policy.
    Reject,
    /// Met from this time on.
    Defer(UnixSeconds),
}

impl Outcome {
    fn defer_until(self) -> Option<UnixSeconds> {
        match self {
            Outcome::Defer(t) => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("pass"),
            Outcome::Reject => f.write_str("REJECT"),
            Outcome::Defer(t) => write!(f, "defer until {}", format_rfc3339(*t)),
        }
    }
}

/// What the policy judges: a package's metadata and the release facts TUF vouches for. WASM rules receive it
/// as deterministic CBOR (field names as here; enums as their lowercase words; versions as strings).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PackageFacts {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: semver::Version,
    /// The manifest's capability.
    pub capability: String,
    /// The manifest's risk tier.
    pub risk_tier: RiskTier,
    /// The manifest's data classification.
    pub data_classification: DataClassification,
    /// The manifest's licence.
    pub license: String,
    /// The model file's length (unknown for a bare manifest).
    pub model_bytes: Option<u64>,
    /// The manifest's memory budget.
    pub memory_budget_bytes: u64,
    /// The evaluation suite's name.
    pub suite: String,
    /// Evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Channels the release is on (from TUF; unknown for a bare manifest).
    pub channels: Option<Vec<String>>,
    /// When the release was published (from TUF; unknown for a bare manifest).
    pub published_at: Option<UnixSeconds>,
    /// Key ids of the targets keys that signed the release (from TUF).
    pub signers: Vec<String>,
}

impl PackageFacts {
    /// The facts a verified manifest states; release facts (channels, time, signers) are left unknown.
    pub fn from_manifest(m: &Manifest, model_bytes: Option<u64>) -> PackageFacts {
        PackageFacts {
            name: m.name.clone(),
            version: m.version.clone(),
            capability: m.capability.clone(),
            risk_tier: m.risk_tier,
            data_classification: m.data_classification,
            license: m.license.clone(),
            model_bytes,
            memory_budget_bytes: m.runtime.memory_budget_bytes,
            suite: m.evaluation.suite.name.clone(),
            metrics: m.evaluation.metrics.clone(),
            channels: None,
            published_at: None,
            signers: Vec::new(),
        }
    }

    /// The manifest's facts with the release facts of `signed` (what TUF vouched for before download).
    pub fn with_release_facts(mut self, signed: &PackageFacts) -> PackageFacts {
        self.channels.clone_from(&signed.channels);
        self.published_at = signed.published_at;
        self.signers.clone_from(&signed.signers);
        self
    }

    /// The first package field where `self` (from the verified manifest) and `advertised` (the targets custom
    /// fields judged before download) disagree: the manifest wins, and a difference means reject.
    pub fn differs_from(&self, advertised: &PackageFacts) -> Option<&'static str> {
        let fields: [(&'static str, bool); 10] = [
            ("name", self.name == advertised.name),
            ("version", self.version == advertised.version),
            ("capability", self.capability == advertised.capability),
            ("risk_tier", self.risk_tier == advertised.risk_tier),
            ("data_classification", self.data_classification == advertised.data_classification),
            ("license", self.license == advertised.license),
            ("model_bytes", self.model_bytes == advertised.model_bytes),
            ("memory_budget_bytes", self.memory_budget_bytes == advertised.memory_budget_bytes),
            ("suite", self.suite == advertised.suite),
            ("metrics", self.metrics == advertised.metrics),
        ];
        fields.into_iter().find(|(_, same)| !same).map(|(f, _)| f)
    }
}

/// The `custom.outpost` fields of a model target in TUF targets metadata, as the hub signs them: what a device's
/// policy judges before a single byte of the package is downloaded. Fields the policy does not use are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdvertisedPackage {
    /// Package digest.
    pub digest: crate::Digest,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: semver::Version,
    /// Capability.
    pub capability: String,
    /// Risk tier.
    pub risk_tier: RiskTier,
    /// Data classification.
    pub data_classification: DataClassification,
    /// Licence.
    pub license: String,
    /// Memory budget.
    pub memory_budget_bytes: u64,
    /// The model file's length.
    pub model_length: u64,
    /// The evaluation card's suite and metrics.
    pub evaluation: AdvertisedEvaluation,
    /// Channels the release is on.
    #[serde(default)]
    pub channels: Vec<String>,
    /// When the release was published to devices (Unix seconds).
    #[serde(default)]
    pub released_at: Option<UnixSeconds>,
}

/// The evaluation part of [`AdvertisedPackage`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdvertisedEvaluation {
    /// Suite name.
    pub suite: String,
    /// Metrics, as decimal strings (exact round trip of the manifest's numbers).
    pub metrics: BTreeMap<String, String>,
}

impl AdvertisedPackage {
    /// The facts these fields state (signers are not known from them).
    pub fn facts(&self) -> Result<PackageFacts, String> {
        let mut metrics = BTreeMap::new();
        for (k, v) in &self.evaluation.metrics {
            let x: f64 = v.parse().map_err(|_| format!("metric `{k}` = `{v}` is not a number"))?;
            metrics.insert(k.clone(), x);
        }
        Ok(PackageFacts {
            name: self.name.clone(),
            version: self.version.clone(),
            capability: self.capability.clone(),
            risk_tier: self.risk_tier,
            data_classification: self.data_classification,
            license: self.license.clone(),
            model_bytes: Some(self.model_length),
            memory_budget_bytes: self.memory_budget_bytes,
            suite: self.evaluation.suite.clone(),
            metrics,
            channels: Some(self.channels.clone()),
            published_at: self.released_at,
            signers: Vec::new(),
        })
    }
}

fn capability_matches(pattern: &str, capability: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(stem) => capability.strip_prefix(stem).is_some_and(|rest| rest.starts_with('.')),
        None => pattern == capability,
    }
}

fn verdict<T: fmt::Debug>(ok: bool, what: String, allowed: &[T]) -> Result<String, String> {
    if ok { Ok(format!("{what} is allowed")) } else { Err(format!("{what} is not among {allowed:?}")) }
}

fn within(n: u64, max: u64, what: &str) -> Result<String, String> {
    if n <= max { Ok(format!("{what} {n} B ≤ {max} B")) } else { Err(format!("{what} {n} B > {max} B")) }
}

fn list(items: &[&String]) -> String {
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn metric_outcome(m: &RequiredMetric, facts: &PackageFacts) -> Result<String, String> {
    let name = &m.metric;
    if let Some(suite) = &m.suite
        && *suite != facts.suite
    {
        return Err(format!("`{name}` must come from suite `{suite}`; the package was evaluated on `{}`", facts.suite));
    }
    let Some(&v) = facts.metrics.get(name) else {
        return Err(format!("the evaluation card has no `{name}`"));
    };
    if v.is_nan() {
        return Err(format!("{name} is not a number"));
    }
    if let Some(lo) = m.min
        && v < lo
    {
        return Err(format!("{name} = {v} < {lo}"));
    }
    if let Some(hi) = m.max
        && v > hi
    {
        return Err(format!("{name} = {v} > {hi}"));
    }
    Ok(format!("{name} = {v} within [{}, {}]", fmt_bound(m.min), fmt_bound(m.max)))
}

fn fmt_bound(b: Option<f64>) -> String {
    b.map_or("-".into(), |v| v.to_string())
}

const DAY: u64 = 86_400;
const MINUTE: u64 = 60;

/// Whether `t` falls inside `w`. A window past midnight belongs to the day it opens.
fn inside(w: &Window, t: UnixSeconds) -> bool {
    let day = t / DAY;
    let minute = ((t % DAY) / MINUTE) as u32;
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = |d: u64| (d + 3) % 7;
    let opens_on = |d: u64| w.days.iter().any(|wd| wd.index() == weekday(d));
    let (start, end) = (w.start.0, w.end.0);
    if start < end {
        opens_on(day) && (start..end).contains(&minute)
    } else {
        (opens_on(day) && minute >= start) || (day > 0 && opens_on(day - 1) && minute < end)
    }
}

/// The first moment at or after `from` inside any window (windows open at whole minutes; at most 8 days away).
fn next_open(windows: &[Window], from: UnixSeconds) -> UnixSeconds {
    if windows.iter().any(|w| inside(w, from)) {
        return from;
    }
    let mut t = from - from % MINUTE + MINUTE;
    for _ in 0..(8 * DAY / MINUTE) {
        if windows.iter().any(|w| inside(w, t)) {
            return t;
        }
        t += MINUTE;
    }
    from // unreachable for a checked policy: every window opens at least weekly
}

/// The 1-based line where the last segment of a dotted `key` (`required_metrics[1].min` → `required_metrics`
/// or `min`) first appears as a key or table header.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let segments: Vec<&str> = key.split('.').map(|s| s.split('[').next().unwrap_or(s)).collect();
    segments
        .iter()
        .rev()
        .find_map(|seg| {
            text.lines().position(|l| {
                let l = l.trim_start();
                let header = l.trim_start_matches('[').trim_end_matches(']').trim();
                l.starts_with('[') && header == *seg
                    || l.strip_prefix(seg).is_some_and(|r| r.trim_start().starts_with('='))
            })
        })
        .map(|i| i + 1)
}
