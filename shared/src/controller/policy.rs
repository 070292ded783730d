//! The controller policy: the weights of the score's components, the thresholds its rules fire at, and the
//! oscillation controls; versioned TOML by its authors, canonical CBOR inside, whose digest every proposal records.
//!
//! Invariants: weights are non-negative and sum to 1 (so a total is a weighted mean in [0, 1]); every threshold and
//! bound is finite and in its range, checked at parse time with the key named.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::config::{self, ConfigError};
use crate::digest::Digest;

/// Largest policy TOML, in bytes.
pub const MAX_POLICY_TOML_BYTES: usize = 64 * 1024;

/// A controller policy as its authors write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerPolicy {
    /// Raised by the authors at every change; a policy never replaces one of a higher version.
    pub version: u64,
    /// Who wrote it (a name or team); its signer's key is recorded by the hub when it is registered.
    pub author: String,
    /// The weights of the score's components.
    #[serde(default)]
    pub weights: Weights,
    /// Where the rules fire.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// What keeps proposals from flip-flopping.
    #[serde(default)]
    pub oscillation: Oscillation,
}

/// Component weights (non-negative, summing to 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Offline quality against the champion, from evaluation records.
    pub offline_quality: f64,
    /// Field reliability: error rate and rollbacks from telemetry.
    pub field_reliability: f64,
    /// Latency against the capability's budget.
    pub latency: f64,
    /// Memory against the capability's budget.
    pub memory: f64,
    /// Package size against the budget (what every device downloads).
    pub cost: f64,
    /// Share of the capability's traffic it serves (or, for a shadow, would take).
    pub traffic: f64,
    /// How recently it served anything.
    pub staleness: f64,
    /// Its derived risk tier.
    pub risk: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            offline_quality: 0.35,
            field_reliability: 0.25,
            latency: 0.10,
            memory: 0.05,
            cost: 0.05,
            traffic: 0.10,
            staleness: 0.05,
            risk: 0.05,
        }
    }
}

impl Weights {
    /// Name → weight, in the order the decomposition lists components.
    pub fn named(&self) -> [(&'static str, f64); 8] {
        [
            ("offline_quality", self.offline_quality),
            ("field_reliability", self.field_reliability),
            ("latency", self.latency),
            ("memory", self.memory),
            ("cost", self.cost),
            ("traffic", self.traffic),
            ("staleness", self.staleness),
            ("risk", self.risk),
        ]
    }
}

/// Where the rules fire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// A shadow is proposed for promotion when its total beats the champion's by this much.
    pub promote_margin: f64,
    /// ... and only after this many inferences in the field.
    pub min_inferences: u64,
    /// A shadow trailing the champion by this much is proposed for archiving.
    pub archive_margin: f64,
    /// A low-risk candidate within this much of the champion is proposed for shadow.
    pub shadow_margin: f64,
    /// A champion whose total falls to this is proposed for retirement.
    pub retire_below: f64,
    /// An idle package unused this many days is proposed for archiving.
    pub archive_idle_days: f64,
    /// Quality difference from the champion (beyond the noise band) that moves the quality score from 0.5 to 1.
    pub quality_scale: f64,
    /// Field error rate that takes the reliability score to 0.
    pub max_error_rate: f64,
    /// Days without traffic that take the staleness score to 0.
    pub stale_after_days: f64,
    /// Relative error of a projection against actuals above which `controller show` flags it.
    pub projection_error_bound: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            promote_margin: 0.02,
            min_inferences: 1000,
            archive_margin: 0.05,
            shadow_margin: 0.02,
            retire_below: 0.30,
            archive_idle_days: 30.0,
            quality_scale: 0.05,
            max_error_rate: 0.01,
            stale_after_days: 90.0,
            projection_error_bound: 0.25,
        }
    }
}

/// The oscillation controls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oscillation {
    /// Width of the band around each threshold: a rule fires only past threshold + half of it.
    pub hysteresis: f64,
    /// A package keeps a state at least this long before the controller proposes changing it again.
    pub min_dwell_secs: u64,
    /// The window reversals are counted in.
    pub reversal_window_secs: u64,
    /// Most reversals (a change back to the role just left) proposed within the window.
    pub max_reversals: usize,
    /// How far past its threshold a proposal must be to undo a change made within the window.
    pub reversal_margin: f64,
}

impl Default for Oscillation {
    fn default() -> Self {
        Oscillation {
            hysteresis: 0.02,
            min_dwell_secs: 6 * 3600,
            reversal_window_secs: 7 * 24 * 3600,
            max_reversals: 1,
            reversal_margin: 0.05,
        }
    }
}

impl Default for ControllerPolicy {
    fn default() -> Self {
        ControllerPolicy {
            version: 1,
            author: "default".into(),
            weights: Weights::default(),
            thresholds: Thresholds::default(),
            oscillation: Oscillation::default(),
        }
    }
}

impl ControllerPolicy {
    /// Parses and validates a policy TOML; `path` names it in errors, which name the dotted key.
    pub fn from_toml(text: &str, path: &Path) -> Result<ControllerPolicy, ConfigError> {
        config::parse_validated(text, path, MAX_POLICY_TOML_BYTES, ControllerPolicy::validate)
    }

    /// Canonical CBOR, the form stored and hashed.
    pub fn to_cbor(&self) -> Vec<u8> {
        // Strings and numbers in string-keyed maps only: encoding cannot fail.
        canonical::to_vec(self).unwrap_or_default()
    }

    /// SHA-256 of [`ControllerPolicy::to_cbor`]: what each proposal records.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_cbor())
    }

    /// The longest a real, lasting change waits before it is proposed, with the controller running every
    /// `interval_secs`: one dwell time after the package's last change, plus one run.
    pub fn response_bound_secs(&self, interval_secs: u64) -> u64 {
        self.oscillation.min_dwell_secs.saturating_add(interval_secs)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |k: &str, p: String| Err((k.to_owned(), p));
        if self.author.trim().is_empty() || self.author.len() > 256 {
            return fail("author", "must name who wrote the policy (1–256 bytes)".into());
        }
        let mut sum = 0.0;
        for (name, w) in self.weights.named() {
            if !(w.is_finite() && w >= 0.0) {
                return fail(&format!("weights.{name}"), format!("{w} is not a finite, non-negative weight"));
            }
            sum += w;
        }
        if (sum - 1.0).abs() > 1e-6 {
            return fail("weights", format!("the weights sum to {sum}, not 1"));
        }
        let t = &self.thresholds;
        let unit = [
            ("promote_margin", t.promote_margin),
            ("archive_margin", t.archive_margin),
            ("shadow_margin", t.shadow_margin),
            ("retire_below", t.retire_below),
            ("oscillation.hysteresis", self.oscillation.hysteresis),
            ("oscillation.reversal_margin", self.oscillation.reversal_margin),
        ];
        for (name, v) in unit {
            if !(0.0..=1.0).contains(&v) {
                let key = if name.contains('.') { name.to_owned() } else { format!("thresholds.{name}") };
                return fail(&key, format!("{v} is outside 0–1 (totals are in 0–1)"));
            }
        }
        let positive = [
            ("archive_idle_days", t.archive_idle_days),
            ("quality_scale", t.quality_scale),
            ("max_error_rate", t.max_error_rate),
            ("stale_after_days", t.stale_after_days),
            ("projection_error_bound", t.projection_error_bound),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return fail(&format!("thresholds.{name}"), format!("{v} must be a finite number above 0"));
            }
        }
        if self.oscillation.reversal_window_secs < self.oscillation.min_dwell_secs {
            return fail("oscillation.reversal_window_secs", "must be at least min_dwell_secs".into());
        }
        Ok(())
    }
}
