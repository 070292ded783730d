//! Release plans as written (TOML): the optional shadow stage and the cumulative cohorts with their thresholds,
//! validated with the line of each bad key; the device buckets a plan's percentages cover; exact percentages.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::digest::Sha256;

/// Buckets a channel's devices are spread over: a cohort percentage covers whole hundredths of a percent.
pub const BUCKETS: u32 = 10_000;

/// Most stages a plan may have (a bound for parsing, far above any sensible plan).
pub const MAX_STAGES: usize = 64;

/// The device's bucket for a release: the first 8 bytes of SHA-256(`release_id` ‖ `device_id`), read big-endian,
/// modulo [`BUCKETS`]. Pure: re-running a release picks the same devices, and a device enrolled later lands where
/// it always would have. The release id is part of the hash so each release tries a different canary.
///
/// The two ids are concatenated without a separator; device ids are fixed-length key hex, so no two (release,
/// device) pairs of one hub collide in the input.
pub fn bucket(release_id: &str, device_id: &str) -> u32 {
    let mut h = Sha256::new();
    h.update(release_id.as_bytes());
    h.update(device_id.as_bytes());
    let d = h.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.0[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

/// A percentage with at most two decimals, kept as basis points (`12.5` → 1250) so comparisons are exact.
/// Written in TOML as an integer or a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(pub u32);

impl Percent {
    /// Basis points (hundredths of a percent).
    pub fn basis_points(self) -> u32 {
        self.0
    }

    /// Whether `part / whole` ≥ this percentage (exact; `whole == 0` meets any percentage).
    pub fn met_by(self, part: u64, whole: u64) -> bool {
        u128::from(part) * u128::from(BUCKETS) >= u128::from(self.0) * u128::from(whole)
    }

    /// Whether `part / whole` > this percentage (exact; never with `whole == 0`).
    pub fn exceeded_by(self, part: u64, whole: u64) -> bool {
        u128::from(part) * u128::from(BUCKETS) > u128::from(self.0) * u128::from(whole)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 % 100 {
            0 => write!(f, "{}%", self.0 / 100),
            r => write!(f, "{}.{:02}%", self.0 / 100, r),
        }
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_multiple_of(100) {
            s.serialize_u64(u64::from(self.0 / 100))
        } else {
            s.serialize_f64(self.0 as f64 / 100.0)
        }
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage from 0 to 100 with at most two decimals")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Percent, E> {
                if v > 100 {
                    return Err(E::custom(format!("{v} is above 100%")));
                }
                Ok(Percent(v as u32 * 100))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Percent, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{v} is below 0%"))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Percent, E> {
                if !v.is_finite() || !(0.0..=100.0).contains(&v) {
                    return Err(E::custom(format!("{v} is not a percentage from 0 to 100")));
                }
                let bp = (v * 100.0).round();
                if (v * 100.0 - bp).abs() > 1e-6 {
                    return Err(E::custom(format!("{v} has more than two decimals")));
                }
                Ok(Percent(bp as u32))
            }
        }
        d.deserialize_any(V)
    }
}

/// A release plan, as written (`release start DIGEST --plan plan.toml`). See `fixtures/plans/canary.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The plan's name, for reports.
    #[serde(default)]
    pub name: Option<String>,
    /// Share of the affected devices that must report the last good package again for a rollback to count as
    /// recovered (the end of the measured recovery time).
    #[serde(default = "default_recovered_percent")]
    pub recovered_percent: Percent,
    /// Run the package in shadow (beside the active model, serving nothing) on a cohort before the first stage.
    #[serde(default)]
    pub shadow: Option<ShadowStage>,
    /// The serving stages, in order. At least one.
    #[serde(default)]
    pub stage: Vec<Stage>,
    /// Only devices attesting at the hardware tier (enrolled with a TPM) take part; software-only devices keep
    /// what they run. For high-risk packages.
    #[serde(default)]
    pub exclude_software_tier: bool,
}

fn default_recovered_percent() -> Percent {
    Percent(9_500)
}

fn default_min_devices() -> u64 {
    1
}

/// The shadow stage: devices load the package and compare its answers with the active model's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowStage {
    /// Share of the channel's devices that run the shadow (buckets below it).
    pub cohort_percent: Percent,
    /// Devices that must have reported agreement before the gate is judged (or all of them, if fewer).
    #[serde(default = "default_min_devices")]
    pub min_devices: u64,
    /// Seconds the shadow runs, at least, before the gate is judged.
    #[serde(default)]
    pub soak_secs: u64,
    /// Top-1 agreement with the active model (agreeing answers / compared answers, over every shadow device)
    /// required to go on to the first stage; below it the release aborts. Absent: no agreement gate.
    #[serde(default)]
    pub min_agreement_percent: Option<Percent>,
}

/// One serving stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Name, for reports (`stage N`, counted from 1, when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// Cumulative share of the channel's devices running the package once this stage starts: buckets below it.
    /// Strictly increasing from stage to stage.
    pub cohort_percent: Percent,
    /// Devices of the cohort that must have an outcome before the stage is judged (or all eligible, if fewer).
    #[serde(default = "default_min_devices")]
    pub min_devices: u64,
    /// Seconds from the stage's start before it is judged.
    #[serde(default)]
    pub soak_secs: u64,
    /// Installed share of the eligible cohort at which the stage succeeds.
    pub success_percent: Percent,
    /// Error share of the devices with an outcome above which (strictly) the release aborts. Below 100.
    pub error_percent: Percent,
    /// Pause for an operator's `release approve` after this stage succeeds, whatever the risk tier.
    #[serde(default)]
    pub pause_after: bool,
}

impl Plan {
    /// Parses and checks a plan file's text; `path` names it in errors. Refuses unknown keys, bad values and
    /// rules that cannot work (a percentage above 100, cohorts not increasing, an error threshold of 100% or
    /// more...), naming the line and the key.
    pub fn from_toml(text: &str, path: &Path) -> Result<Plan, ConfigError> {
        let plan: Plan = crate::config::parse(text, path)?;
        plan.check().map_err(|(key, problem)| ConfigError::Invalid {
            path: path.into(),
            line: line_of(text, &key),
            key,
            problem,
        })?;
        Ok(plan)
    }

    fn check(&self) -> Result<(), (String, String)> {
        if self.stage.is_empty() {
            return Err(("stage".into(), "a plan needs at least one [[stage]]".into()));
        }
        if self.stage.len() > MAX_STAGES {
            return Err(("stage".into(), format!("{} stages; at most {MAX_STAGES}", self.stage.len())));
        }
        if self.recovered_percent == Percent(0) {
            return Err(("recovered_percent".into(), "0% would call a rollback recovered before it starts".into()));
        }
        if let Some(s) = &self.shadow {
            if s.cohort_percent == Percent(0) {
                return Err(("shadow.cohort_percent".into(), "0% puts no device in the shadow".into()));
            }
            if s.min_devices == 0 {
                return Err(("shadow.min_devices".into(), "must be at least 1".into()));
            }
            if s.min_agreement_percent == Some(Percent(0)) {
                return Err((
                    "shadow.min_agreement_percent".into(),
                    "0% requires nothing: remove the key for no agreement gate".into(),
                ));
            }
        }
        let last = self.stage[self.stage.len() - 1].cohort_percent;
        if let Some(s) = &self.shadow
            && s.cohort_percent > last
        {
            return Err((
                "shadow.cohort_percent".into(),
                format!("{} is above the last stage's {last}: some shadow devices would never serve", s.cohort_percent),
            ));
        }
        let mut previous: Option<Percent> = None;
        let mut names = BTreeSet::new();
        for (i, s) in self.stage.iter().enumerate() {
            let key = |field: &str| format!("stage[{i}].{field}");
            if s.cohort_percent == Percent(0) {
                return Err((key("cohort_percent"), "0% puts no device in the stage".into()));
            }
            if let Some(p) = previous
                && s.cohort_percent <= p
            {
                return Err((
                    key("cohort_percent"),
                    format!(
                        "{} is not above the previous stage's {p}: cohorts are cumulative and must increase",
                        s.cohort_percent
                    ),
                ));
            }
            previous = Some(s.cohort_percent);
            if s.min_devices == 0 {
                return Err((key("min_devices"), "must be at least 1".into()));
            }
            if s.success_percent == Percent(0) {
                return Err((key("success_percent"), "0% would advance before any device installed".into()));
            }
            if s.error_percent >= Percent(BUCKETS) {
                return Err((
                    key("error_percent"),
                    format!(
                        "{}: the error share can never be above it, so the stage could never abort",
                        s.error_percent
                    ),
                ));
            }
            if let Some(n) = &s.name
                && !names.insert(n.as_str())
            {
                return Err((key("name"), format!("`{n}` names two stages")));
            }
        }
        Ok(())
    }

    /// The stage a bucket falls into: the first whose cumulative cohort covers it (`None`: beyond the last).
    pub fn stage_of(&self, bucket: u32) -> Option<usize> {
        self.stage.iter().position(|s| bucket < s.cohort_percent.0)
    }

    /// Whether a bucket falls into the shadow cohort.
    pub fn in_shadow(&self, bucket: u32) -> bool {
        self.shadow.as_ref().is_some_and(|s| bucket < s.cohort_percent.0)
    }

    /// Stage `i`'s name (`stage 1` for the first unnamed one).
    pub fn stage_name(&self, i: usize) -> String {
        self.stage.get(i).and_then(|s| s.name.clone()).unwrap_or_else(|| format!("stage {}", i + 1))
    }
}

/// The 1-based line of a checked key: `stage[2].error_percent` is the `error_percent` line inside the third
/// `[[stage]]` table (or that table's header), `shadow.soak_secs` inside `[shadow]`, `name` before any table.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let (table, field) = match key.split_once('.') {
        Some((t, f)) => (Some(t), Some(f)),
        None if key == "stage" || key == "shadow" => (Some(key), None),
        None => (None, Some(key)),
    };
    let lines: Vec<&str> = text.lines().collect();
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let defines = |l: &str, f: &str| l.trim_start().strip_prefix(f).is_some_and(|r| r.trim_start().starts_with('='));
    let (start, header) = match table {
        None => (0, None),
        Some(t) => {
            let (name, nth) = match t.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()?),
                None => (t, 0),
            };
            let header = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    let h = l.trim();
                    h.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")).map(str::trim) == Some(name)
                        || h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).map(str::trim) == Some(name)
                })
                .nth(nth)
                .map(|(i, _)| i)?;
            (header + 1, Some(header))
        }
    };
    let found = field.and_then(|f| {
        lines[start.min(lines.len())..]
            .iter()
            .take_while(|l| !is_header(l))
            .position(|l| defines(l, f))
            .map(|i| i + start)
    });
    found.or(header).map(|i| i + 1)
}
