//! Device telemetry, sans-IO: the events an agent queues, the batches it drains to the hub, and the latency
//! histogram both sides merge.
//!
//! A batch is deterministic CBOR with exactly one accepted encoding; [`Batch::decode`] checks the size before
//! parsing and every field after, so the hub stores nothing it could not re-encode byte for byte. Within one queue
//! `stream`, sequence numbers start at 1, only go up, and name one event for good: the hub counts `(device,
//! stream, seq)` once however often a batch is resent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::canonical::{self, CanonicalError};
use crate::clock::UnixSeconds;
use crate::digest::Digest;

/// Longest text field (rule, reason, detail, error) in bytes. The agent cuts longer text at a character boundary
/// when it queues the event ([`EventKind::truncate_text`]); a batch carrying longer text is refused.
pub const MAX_TEXT_LEN: usize = 512;

/// One thing that happened on a device, numbered by its queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Position in the device's queue stream, from 1; never reused within a stream.
    pub seq: u64,
    /// When it happened, by the device's clock (which may be wrong: the hub keeps its own receipt time).
    pub at: UnixSeconds,
    /// What happened.
    pub kind: EventKind,
}

/// A step of the update path, as the agent's driver performs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A new assignment names this package; the download starts (or resumes).
    Downloading,
    /// Downloaded; length and hashes match TUF targets metadata.
    Downloaded,
    /// The download or its verification failed.
    DownloadFailed,
    /// Unpacked into the inactive slot, loaded, smoke test passed.
    Staged,
    /// Unpacking, loading or the smoke test failed; the package is never tried again.
    StageFailed,
    /// Serving from its slot; the health window starts.
    Activated,
    /// Passed the health window: now the last good package.
    Confirmed,
}

impl Step {
    /// The snake_case name, as encoded.
    pub fn name(self) -> &'static str {
        match self {
            Step::Downloading => "downloading",
            Step::Downloaded => "downloaded",
            Step::DownloadFailed => "download_failed",
            Step::Staged => "staged",
            Step::StageFailed => "stage_failed",
            Step::Activated => "activated",
            Step::Confirmed => "confirmed",
        }
    }
}

/// What an [`Event`] reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EventKind {
    /// The update path moved on for a package.
    UpdateStep {
        /// The package.
        package: Digest,
        /// The step reached.
        step: Step,
        /// Context for humans (an error message on failure), at most [`MAX_TEXT_LEN`] bytes.
        detail: String,
    },
    /// Site policy refused or deferred a package.
    PolicyRejection {
        /// The package refused.
        package: Digest,
        /// The rule that fired.
        rule: String,
        /// Why, in words.
        reason: String,
        /// For a deferral (a maintenance window, say): when the package may be considered again.
        deferred_until: Option<UnixSeconds>,
    },
    /// The device rolled back from a package.
    Rollback {
        /// The package rolled back from.
        from: Digest,
        /// The package serving afterwards; `None` when nothing usable was left.
        to: Option<Digest>,
        /// Why.
        reason: String,
    },
    /// Inference on one model over an interval ending at the event's `at`.
    InferenceStats {
        /// The model (the package's model digest).
        model: Digest,
        /// Inferences run.
        count: u64,
        /// Of those, how many failed (never more than `count`).
        errors: u64,
        /// Latencies of the inferences recorded.
        latency: Histogram,
    },
    /// Something went wrong that no other kind describes.
    Error {
        /// What, in words.
        what: String,
    },
    /// A package run in shadow beside the active model, compared on the same inputs.
    ShadowDivergence {
        /// The shadow package.
        package: Digest,
        /// Largest absolute difference between any output element of shadow and active (finite, ≥ 0).
        max_abs_diff: f64,
        /// Fraction of samples whose top-1 class agrees, in `[0, 1]`.
        top1_agreement: f64,
        /// Shadow latency over active latency (finite, ≥ 0).
        latency_ratio: f64,
        /// Samples compared.
        samples: u64,
    },
    /// What a route served over an interval ending at the event's `at` (deltas: the hub adds them up).
    RouteQuality {
        /// The route's name.
        route: String,
        /// Requests, errors, fallbacks by reason and latency per candidate.
        quality: crate::route::quality::RouteQuality,
    },
}

impl EventKind {
    /// The kind's snake_case name, as encoded (`update_step`, `policy_rejection`...): the key of per-kind counts.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::UpdateStep { .. } => "update_step",
            EventKind::PolicyRejection { .. } => "policy_rejection",
            EventKind::Rollback { .. } => "rollback",
            EventKind::InferenceStats { .. } => "inference_stats",
            EventKind::Error { .. } => "error",
            EventKind::ShadowDivergence { .. } => "shadow_divergence",
            EventKind::RouteQuality { .. } => "route_quality",
        }
    }

    /// Cuts every text field to [`MAX_TEXT_LEN`] bytes at a character boundary.
    pub fn truncate_text(&mut self) {
        for text in self.texts_mut() {
            if text.len() > MAX_TEXT_LEN {
                let mut cut = MAX_TEXT_LEN;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
        }
    }

    fn texts_mut(&mut self) -> Vec<&mut String> {
        match self {
            EventKind::UpdateStep { detail, .. } => vec![detail],
            EventKind::PolicyRejection { rule, reason, .. } => vec![rule, reason],
            EventKind::Rollback { reason, .. } => vec![reason],
            EventKind::Error { what } => vec![what],
            EventKind::RouteQuality { route, .. } => vec![route],
            EventKind::InferenceStats { .. } | EventKind::ShadowDivergence { .. } => vec![],
        }
    }

    /// Checks every bound a decoded batch must meet: text lengths, finite and in-range figures, histogram buckets.
    pub fn check(&self) -> Result<(), TelemetryError> {
        let text = |field: &'static str, s: &str| {
            if s.len() > MAX_TEXT_LEN {
                return Err(TelemetryError::TextTooLong { field, len: s.len(), limit: MAX_TEXT_LEN });
            }
            Ok(())
        };
        let invalid = |field: &'static str, reason: &'static str| Err(TelemetryError::Invalid { field, reason });
        match self {
            EventKind::UpdateStep { detail, .. } => text("detail", detail),
            EventKind::PolicyRejection { rule, reason, .. } => {
                text("rule", rule)?;
                text("reason", reason)
            }
            EventKind::Rollback { reason, .. } => text("reason", reason),
            EventKind::Error { what } => text("what", what),
            EventKind::InferenceStats { count, errors, latency, .. } => {
                if errors > count {
                    return invalid("errors", "more errors than inferences");
                }
                latency.check()
            }
            EventKind::ShadowDivergence { max_abs_diff, top1_agreement, latency_ratio, .. } => {
                if !(max_abs_diff.is_finite() && *max_abs_diff >= 0.0) {
                    return invalid("max_abs_diff", "must be finite and not negative");
                }
                if !(0.0..=1.0).contains(top1_agreement) {
                    return invalid("top1_agreement", "must be within [0, 1]");
                }
                if !(latency_ratio.is_finite() && *latency_ratio >= 0.0) {
                    return invalid("latency_ratio", "must be finite and not negative");
                }
                Ok(())
            }
            EventKind::RouteQuality { route, quality } => {
                text("route", route)?;
                if quality.candidates.len() > crate::route::MAX_CANDIDATES {
                    return invalid("quality.candidates", "more candidates than a route has");
                }
                let answered =
                    quality.candidates.values().try_fold(quality.unanswered, |n, c| n.checked_add(c.answered));
                if answered.is_none_or(|n| n > quality.requests) {
                    return invalid("quality.requests", "fewer requests than answers");
                }
                for (name, c) in &quality.candidates {
                    text("quality.candidates", name)?;
                    if c.fallbacks.values().try_fold(0u64, |n, f| n.checked_add(*f)).is_none_or(|n| n > c.answered) {
                        return invalid("quality.fallbacks", "more fallbacks than answers");
                    }
                    c.latency.check()?;
                }
                Ok(())
            }
        }
    }
}

/// A histogram built elsewhere (telemetry from devices, counts kept by the agent) exposed as an OpenMetrics
/// histogram on [`Histogram::octave_buckets`]; the encoder escapes label values.
#[cfg(feature = "prometheus")]
impl prometheus_client::encoding::EncodeMetric for Histogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets = self.octave_buckets();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum_us as f64 / 1e6,
            self.count(),
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

#[cfg(feature = "prometheus")]
impl prometheus_client::metrics::TypedMetric for Histogram {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Histogram;
}

/// Latencies on fixed log-scale buckets, in microseconds: four buckets per power of two, so any recorded value
/// is known to within 25% of its bucket's lower bound, whatever the model's speed.
///
/// Bucket `i < 4` holds exactly `i` µs. Above, a value `v` with `2^k ≤ v < 2^(k+1)` (k ≥ 2) falls in bucket
/// `4(k−1) + s`, where `s` is the two bits after `v`'s leading one: bucket bounds run 4, 5, 6, 7, 8, 10, 12, 14,
/// 16, 20, 24, 28, 32, 40... µs. The last finite bucket ends at 2^28 µs (about 268 s); bucket
/// [`Histogram::OVERFLOW`] holds everything slower. Only non-empty buckets are stored or encoded
/// (`{"buckets": {index: count}, "sum_us": total}`), so a histogram costs a few bytes per distinct latency band.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Histogram {
    buckets: BTreeMap<u8, u64>,
    sum_us: u64,
}

impl Histogram {
    /// Number of buckets, the overflow bucket included.
    pub const BUCKETS: usize = 109;
    /// The index of the overflow bucket (2^28 µs and slower).
    pub const OVERFLOW: usize = Self::BUCKETS - 1;

    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bucket a latency of `us` microseconds falls in.
    pub fn bucket_of(us: u64) -> usize {
        if us < 4 {
            return us as usize;
        }
        let k = 63 - us.leading_zeros() as usize; // floor(log2 us) ≥ 2
        let sub = ((us >> (k - 2)) & 3) as usize;
        (4 * (k - 1) + sub).min(Self::OVERFLOW)
    }

    /// The half-open range `[lower, upper)` of microseconds bucket `index` holds (`upper` is `u64::MAX` for the
    /// overflow bucket).
    pub fn bucket_range(index: usize) -> (u64, u64) {
        if index < 4 {
            return (index as u64, index as u64 + 1);
        }
        if index >= Self::OVERFLOW {
            return (1 << 28, u64::MAX);
        }
        let (k, sub) = (index / 4 + 1, (index % 4) as u64);
        let lower = (4 + sub) << (k - 2);
        (lower, lower + (1 << (k - 2)))
    }

    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        self.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one latency of `us` microseconds.
    pub fn record_us(&mut self, us: u64) {
        let slot = self.buckets.entry(Self::bucket_of(us) as u8).or_insert(0);
        *slot = slot.saturating_add(1);
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds every count of `other` to this one.
    pub fn merge(&mut self, other: &Histogram) {
        for (&i, &n) in &other.buckets {
            let slot = self.buckets.entry(i).or_insert(0);
            *slot = slot.saturating_add(n);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.buckets.values().fold(0u64, |a, &n| a.saturating_add(n))
    }

    /// Sum of the latencies recorded, in microseconds (saturating).
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// The non-empty buckets: `(index, count)` in ascending order.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.buckets.iter().map(|(&i, &n)| (usize::from(i), n))
    }

    /// An upper bound, in microseconds, of the `q`-quantile (`q` in `[0, 1]`): the inclusive upper end of the
    /// bucket holding it, like a Prometheus `le`. For the overflow bucket, its lower end (2^28 µs): "at least".
    /// `None` when nothing was recorded.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the q-quantile, from 1 (nearest-rank method).
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, n) in self.buckets() {
            seen = seen.saturating_add(n);
            if seen >= rank {
                let (lower, upper) = Self::bucket_range(i);
                return Some(if i == Self::OVERFLOW { lower } else { upper - 1 });
            }
        }
        None
    }

    /// The histogram on Prometheus buckets, in seconds: `(le, count)` for every power-of-two boundary (a fixed
    /// set, so series from many devices or models sum by `le`), then `+Inf`; counts per bucket, not cumulative
    /// (the encoder adds them up). Latencies are whole microseconds, so the bound below 2^k µs is exactly
    /// `le = 2^k − 1` µs.
    pub fn octave_buckets(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(Self::OCTAVES as usize + 1);
        let mut buckets = self.buckets().peekable();
        // Octave k ends just below 2^k µs, with bucket 4(k−1) − 1 (k ≥ 2), or bucket 1 for k = 1.
        for k in 1..=Self::OCTAVES {
            let last_index = if k == 1 { 1 } else { 4 * (k as usize - 1) - 1 };
            let mut n = 0u64;
            while let Some(&(i, c)) = buckets.peek() {
                if i > last_index {
                    break;
                }
                n = n.saturating_add(c);
                buckets.next();
            }
            out.push((((1u64 << k) - 1) as f64 / 1e6, n));
        }
        out.push((f64::INFINITY, buckets.fold(0u64, |a, (_, c)| a.saturating_add(c))));
        out
    }

    /// The Prometheus bucket bounds [`Histogram::octave_buckets`] uses, in seconds (`+Inf` left out): for a
    /// live `prometheus_client` histogram whose series sum with ones built from telemetry.
    pub fn octave_bounds() -> impl Iterator<Item = f64> {
        (1..=Self::OCTAVES).map(|k| ((1u64 << k) - 1) as f64 / 1e6)
    }

    /// Powers of two up to the last finite bucket (2^28 µs).
    const OCTAVES: u32 = 28;

    fn check(&self) -> Result<(), TelemetryError> {
        let mut total = 0u64;
        for (&i, &n) in &self.buckets {
            if usize::from(i) >= Self::BUCKETS {
                return Err(TelemetryError::Invalid { field: "latency", reason: "bucket index out of range" });
            }
            if n == 0 {
                return Err(TelemetryError::Invalid { field: "latency", reason: "empty bucket encoded" });
            }
            total = total
                .checked_add(n)
                .ok_or(TelemetryError::Invalid { field: "latency", reason: "bucket counts overflow" })?;
        }
        Ok(())
    }
}

/// Bounds on a batch, checked before and after parsing. Start from [`BatchLimits::default`] and tighten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest encoded batch, in bytes; checked before a byte is parsed.
    pub max_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
}

impl BatchLimits {
    /// Default [`BatchLimits::max_bytes`]: 1 MiB, room for the default count of the largest events.
    pub const MAX_BYTES: usize = 1 << 20;
    /// Default [`BatchLimits::max_events`].
    pub const MAX_EVENTS: usize = 512;
    /// Bytes a batch adds around its events' own encodings (map header, keys, four integers, array header),
    /// rounded up: the agent sizes batches with it.
    pub const OVERHEAD: usize = 64;
    /// The largest one event can encode to (text at [`MAX_TEXT_LEN`], every histogram bucket full), rounded up.
    /// [`BatchLimits::max_bytes`] must leave room for one, or a queue could never drain.
    pub const MAX_EVENT_BYTES: usize = 4096;
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits { max_bytes: Self::MAX_BYTES, max_events: Self::MAX_EVENTS }
    }
}

/// A run of one device's queued events, drained to the hub in one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Identifies the device's queue: chosen at random when the queue file is created, so a device whose queue
    /// was wiped (and numbers from 1 again) is not taken for one resending old events.
    pub stream: u64,
    /// The sequence number of the first event; of the next event to come when `events` is empty.
    pub first_seq: u64,
    /// The events, by strictly increasing `seq`, the first one numbered `first_seq`.
    pub events: Vec<Event>,
    /// Events this stream has dropped at its bound since it was created (a running total, so a resent batch
    /// repeats it rather than adding to it).
    pub dropped: u64,
}

impl Batch {
    /// The last event's sequence number: what the hub acknowledges once the batch is stored.
    pub fn last_seq(&self) -> Option<u64> {
        self.events.last().map(|e| e.seq)
    }

    /// Deterministic CBOR, after the same checks [`Batch::decode`] makes.
    pub fn encode(&self, limits: &BatchLimits) -> Result<Vec<u8>, TelemetryError> {
        self.check(limits)?;
        let bytes = canonical::to_vec(self).map_err(TelemetryError::Encode)?;
        if bytes.len() > limits.max_bytes {
            return Err(TelemetryError::TooLarge { len: bytes.len(), limit: limits.max_bytes });
        }
        Ok(bytes)
    }

    /// Decodes a batch, refusing anything oversized, non-canonical, out of order or out of range.
    pub fn decode(bytes: &[u8], limits: &BatchLimits) -> Result<Batch, TelemetryError> {
        if bytes.len() > limits.max_bytes {
            return Err(TelemetryError::TooLarge { len: bytes.len(), limit: limits.max_bytes });
        }
        let batch: Batch = canonical::from_slice(bytes).map_err(|e| match e {
            CanonicalError::NotCanonical => TelemetryError::NotCanonical,
            other => TelemetryError::Malformed(other.to_string()),
        })?;
        batch.check(limits)?;
        // The CBOR was canonical, but serde may have read it leniently (a digest as a byte string, an integer
        // as a float): only the one encoding of the decoded value is accepted.
        if canonical::to_vec(&batch).map_err(TelemetryError::Encode)? != bytes {
            return Err(TelemetryError::NotCanonical);
        }
        Ok(batch)
    }

    fn check(&self, limits: &BatchLimits) -> Result<(), TelemetryError> {
        if self.events.len() > limits.max_events {
            return Err(TelemetryError::TooManyEvents { count: self.events.len(), limit: limits.max_events });
        }
        if self.first_seq == 0 {
            return Err(TelemetryError::Invalid { field: "first_seq", reason: "sequence numbers start at 1" });
        }
        let mut expected_min = self.first_seq;
        for (index, event) in self.events.iter().enumerate() {
            let in_order = if index == 0 { event.seq == self.first_seq } else { event.seq >= expected_min };
            if !in_order {
                return Err(TelemetryError::OutOfOrder { index, seq: event.seq });
            }
            expected_min = event.seq.checked_add(1).ok_or(TelemetryError::OutOfOrder { index, seq: event.seq })?;
            event.kind.check()?;
        }
        Ok(())
    }
}

/// Why a batch or an event was refused.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The encoded batch is larger than [`BatchLimits::max_bytes`].
    #[error("telemetry batch of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The batch holds more than [`BatchLimits::max_events`] events.
    #[error("telemetry batch of {count} events exceeds the limit of {limit}")]
    TooManyEvents {
        /// Events in the batch.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Not CBOR, or not the shape of a batch (a missing or unknown field, an unknown event kind...).
    #[error("malformed telemetry batch: {0}")]
    Malformed(String),
    /// Well-formed, but not the one accepted encoding of its value.
    #[error("telemetry batch is not in canonical form")]
    NotCanonical,
    /// An event's sequence number does not follow the one before (or the first is not `first_seq`).
    #[error("telemetry event {index} has sequence number {seq}, out of order")]
    OutOfOrder {
        /// Position in the batch.
        index: usize,
        /// Its sequence number.
        seq: u64,
    },
    /// A text field is longer than [`MAX_TEXT_LEN`].
    #[error("telemetry field `{field}` is {len} bytes, over the limit of {limit}")]
    TextTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A figure is out of its range (a NaN, a negative ratio, more errors than inferences...).
    #[error("telemetry field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The batch could not be encoded (a bug: every checked batch encodes).
    #[error("cannot encode telemetry: {0}")]
    Encode(CanonicalError),
}

/// The telemetry events one step of the update loop produced: `before` and `after` are the agent's state around
/// [`crate::update::UpdateLoop::handle`], `event` what was fed and `actions` what came out. Pure, so the driver
/// only queues what this returns.
pub fn events_of(
    before: &crate::update::AgentState,
    event: &crate::update::Event,
    actions: &[crate::update::Action],
    after: &crate::update::AgentState,
) -> Vec<EventKind> {
    use crate::update::{Action, Event as Fed, Phase};
    let mut out = Vec::new();
    let step =
        |package: Digest, step: Step, detail: &str| EventKind::UpdateStep { package, step, detail: detail.into() };
    let in_flight = match &before.phase {
        Phase::Downloading { target } | Phase::Staging { target, .. } => Some(target.digest),
        _ => None,
    };
    match (event, in_flight) {
        (Fed::Downloaded, Some(d)) => out.push(step(d, Step::Downloaded, "")),
        (Fed::DownloadFailed(e), Some(d)) => out.push(step(d, Step::DownloadFailed, e)),
        (Fed::Staged, Some(d)) => out.push(step(d, Step::Staged, "")),
        (Fed::StageFailed(e) | Fed::StageInterrupted(e), Some(d)) => out.push(step(d, Step::StageFailed, e)),
        _ => {}
    }
    for action in actions {
        match action {
            Action::Download(t) => out.push(step(t.digest, Step::Downloading, &t.path)),
            Action::Activate(i) if before.active.as_ref().map(|a| a.target.digest) != Some(i.target.digest) => {
                out.push(step(i.target.digest, Step::Activated, &format!("slot {:?}", i.slot)));
            }
            _ => {}
        }
    }
    let confirmed = after.last_good.as_ref().map(|g| g.target.digest);
    if confirmed.is_some() && confirmed != before.last_good.as_ref().map(|g| g.target.digest) {
        out.extend(confirmed.map(|d| step(d, Step::Confirmed, "")));
    }
    for from in after.rolled_back.difference(&before.rolled_back) {
        out.push(EventKind::Rollback {
            from: *from,
            to: after.active.as_ref().map(|a| a.target.digest),
            reason: after.last_error.clone().unwrap_or_default(),
        });
    }
    for r in after.refused.iter().filter(|r| !before.refused.contains(r)) {
        out.push(EventKind::PolicyRejection {
            package: r.digest,
            rule: r.rule.clone(),
            reason: r.reason.clone(),
            deferred_until: r.until,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest([n; 32])
    }

    fn every_kind() -> Vec<EventKind> {
        let mut latency = Histogram::new();
        for us in [3, 250, 900, 12_000, 1 << 30] {
            latency.record_us(us);
        }
        vec![
            EventKind::UpdateStep { package: d(1), step: Step::Staged, detail: "smoke test passed".into() },
            EventKind::PolicyRejection {
                package: d(2),
                rule: "window".into(),
                reason: "outside maintenance window".into(),
                deferred_until: Some(1_800_000_600),
            },
            EventKind::Rollback { from: d(3), to: None, reason: "inference failed".into() },
            EventKind::InferenceStats { model: d(4), count: 10, errors: 1, latency },
            EventKind::Error { what: "disk full".into() },
            EventKind::ShadowDivergence {
                package: d(5),
                max_abs_diff: 0.125,
                top1_agreement: 0.97,
                latency_ratio: 1.5,
                samples: 200,
            },
        ]
    }

    fn batch_of(kinds: Vec<EventKind>) -> Batch {
        let events = kinds.into_iter().enumerate().map(|(i, kind)| Event { seq: 7 + i as u64, at: 1000, kind });
        Batch { stream: 42, first_seq: 7, events: events.collect(), dropped: 3 }
    }

    #[test]
    fn every_event_kind_round_trips_through_its_one_encoding() {
        let limits = BatchLimits::default();
        let batch = batch_of(every_kind());
        let bytes = batch.encode(&limits).unwrap();
        assert_eq!(Batch::decode(&bytes, &limits).unwrap(), batch);
        assert_eq!(batch.last_seq(), Some(12));
    }

    #[test]
    fn oversized_batch_is_refused_before_parsing() {
        let limits = BatchLimits { max_bytes: 16, ..BatchLimits::default() };
        let junk = vec![0xff; 17];
        assert!(matches!(Batch::decode(&junk, &limits), Err(TelemetryError::TooLarge { len: 17, limit: 16 })));
    }

    #[test]
    fn too_many_events_are_refused() {
        let limits = BatchLimits { max_events: 2, ..BatchLimits::default() };
        let bytes = canonical::to_vec(&batch_of(every_kind())).unwrap();
        assert!(matches!(Batch::decode(&bytes, &limits), Err(TelemetryError::TooManyEvents { count: 6, limit: 2 })));
    }

    #[test]
    fn events_out_of_order_or_not_starting_at_first_seq_are_refused() {
        let limits = BatchLimits::default();
        let mut b = batch_of(every_kind());
        b.events.swap(1, 2);
        let bytes = canonical::to_vec(&b).unwrap();
        assert!(matches!(Batch::decode(&bytes, &limits), Err(TelemetryError::OutOfOrder { index: 2, .. })));
        let mut b = batch_of(every_kind());
        b.first_seq = 6;
        let bytes = canonical::to_vec(&b).unwrap();
        assert!(matches!(Batch::decode(&bytes, &limits), Err(TelemetryError::OutOfOrder { index: 0, seq: 7 })));
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let limits = BatchLimits::default();
        let bytes = canonical::to_vec(&batch_of(every_kind())).unwrap();
        let mut v: ciborium::Value = ciborium::de::from_reader(&bytes[..]).unwrap();
        v.as_map_mut().unwrap().push(("extra".into(), 1.into()));
        assert!(matches!(Batch::decode(&canonical::to_vec(&v).unwrap(), &limits), Err(TelemetryError::Malformed(_))));
        let mut v: ciborium::Value = ciborium::de::from_reader(&bytes[..]).unwrap();
        let events = v.as_map_mut().unwrap().iter_mut().find(|(k, _)| k.as_text() == Some("events")).unwrap();
        let first = &mut events.1.as_array_mut().unwrap()[0];
        let kind = first.as_map_mut().unwrap().iter_mut().find(|(k, _)| k.as_text() == Some("kind")).unwrap();
        kind.1 = ciborium::Value::Map(vec![("reboot".into(), ciborium::Value::Map(vec![]))]);
        assert!(matches!(Batch::decode(&canonical::to_vec(&v).unwrap(), &limits), Err(TelemetryError::Malformed(_))));
    }

    #[test]
    fn a_digest_sent_as_a_byte_string_is_not_the_canonical_encoding() {
        let limits = BatchLimits::default();
        let b = batch_of(vec![EventKind::Error { what: "x".into() }]);
        let mut v = ciborium::Value::serialized(&b).unwrap();
        // Replace the event with an update step whose digest is 32 raw bytes instead of hex text.
        let kind = ciborium::Value::Map(vec![(
            "update_step".into(),
            ciborium::Value::Map(vec![
                ("package".into(), ciborium::Value::Bytes(vec![1; 32])),
                ("step".into(), "staged".into()),
                ("detail".into(), "".into()),
            ]),
        )]);
        let events = v.as_map_mut().unwrap().iter_mut().find(|(k, _)| k.as_text() == Some("events")).unwrap();
        let first = &mut events.1.as_array_mut().unwrap()[0];
        first.as_map_mut().unwrap().iter_mut().find(|(k, _)| k.as_text() == Some("kind")).unwrap().1 = kind;
        let bytes = canonical::to_vec(&v).unwrap();
        assert!(matches!(Batch::decode(&bytes, &limits), Err(TelemetryError::NotCanonical)));
    }

    #[test]
    fn out_of_range_figures_are_refused_on_encode_and_decode() {
        let limits = BatchLimits::default();
        let bad = [
            EventKind::ShadowDivergence {
                package: d(1),
                max_abs_diff: f64::NAN,
                top1_agreement: 0.5,
                latency_ratio: 1.0,
                samples: 1,
            },
            EventKind::ShadowDivergence {
                package: d(1),
                max_abs_diff: 0.0,
                top1_agreement: 1.5,
                latency_ratio: 1.0,
                samples: 1,
            },
            EventKind::InferenceStats { model: d(1), count: 1, errors: 2, latency: Histogram::new() },
            EventKind::Error { what: "x".repeat(MAX_TEXT_LEN + 1) },
        ];
        for kind in bad {
            let b = batch_of(vec![kind.clone()]);
            assert!(b.encode(&limits).is_err(), "{kind:?} encodes");
            let bytes = canonical::to_vec(&b).unwrap();
            assert!(
                matches!(
                    Batch::decode(&bytes, &limits),
                    Err(TelemetryError::Invalid { .. } | TelemetryError::TextTooLong { .. })
                ),
                "{kind:?} decodes"
            );
        }
    }

    /// A cheap stand-in for the fuzz target in every test run: mutated batches give typed errors, never a panic,
    /// and whatever is accepted is the one encoding of what it decoded to.
    #[test]
    fn mutated_batches_are_refused_or_canonical_never_a_panic() {
        use crate::rng::{Rng, SeededRng};
        let limits = BatchLimits::default();
        let good = batch_of(every_kind()).encode(&limits).unwrap();
        let mut rng = SeededRng::new(1);
        let mut byte = || {
            let mut b = [0u8; 1];
            rng.fill(&mut b);
            b[0]
        };
        let mut accepted = 0;
        for _ in 0..5000 {
            let mut bytes = good.clone();
            for _ in 0..1 + byte() % 4 {
                let at = (usize::from(byte()) << 8 | usize::from(byte())) % bytes.len();
                match byte() % 3 {
                    0 => bytes[at] = byte(),
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, byte()),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Ok(batch) = Batch::decode(&bytes, &limits) {
                accepted += 1;
                assert_eq!(batch.encode(&limits).unwrap(), bytes);
            }
        }
        assert!(accepted < 5000);
    }

    #[test]
    fn truncated_text_fits_and_keeps_characters_whole() {
        let mut k = EventKind::Error { what: "é".repeat(MAX_TEXT_LEN) };
        k.truncate_text();
        let EventKind::Error { what } = &k else { unreachable!() };
        assert_eq!(what.len(), MAX_TEXT_LEN);
        assert!(k.check().is_ok());
    }

    #[test]
    fn histogram_buckets_are_contiguous_and_log_scaled() {
        let mut expected_lower = 0;
        for i in 0..Histogram::BUCKETS {
            let (lower, upper) = Histogram::bucket_range(i);
            assert_eq!(lower, expected_lower, "bucket {i}");
            assert_eq!(Histogram::bucket_of(lower), i);
            if i < Histogram::OVERFLOW {
                assert_eq!(Histogram::bucket_of(upper - 1), i);
                // Within 25% of the lower bound once past the exact buckets.
                assert!(lower < 4 || (upper - lower) * 4 <= lower, "bucket {i}: [{lower}, {upper})");
            }
            expected_lower = upper;
        }
        assert_eq!(Histogram::bucket_range(Histogram::OVERFLOW).0, 1 << 28);
        assert_eq!(Histogram::bucket_of(u64::MAX), Histogram::OVERFLOW);
    }

    #[test]
    fn histogram_quantiles_bound_the_true_value_within_a_bucket() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record_us(us * 100);
        }
        // True p50 = 50,000 µs and p95 = 95,000 µs; each bound is within 25%.
        let p50 = h.quantile_us(0.5).unwrap();
        let p95 = h.quantile_us(0.95).unwrap();
        assert!((50_000..=62_500).contains(&p50), "p50 {p50}");
        assert!((95_000..=118_750).contains(&p95), "p95 {p95}");
        assert_eq!(h.count(), 1000);
        assert_eq!(h.sum_us(), 100 * 1000 * 1001 / 2);
        assert_eq!(Histogram::new().quantile_us(0.5), None);
    }

    #[test]
    fn merging_histograms_adds_counts_bucket_by_bucket() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        a.record(Duration::from_micros(10));
        a.record(Duration::from_millis(3));
        b.record(Duration::from_micros(11));
        b.record(Duration::from_secs(1000));
        let mut both = a.clone();
        both.merge(&b);
        assert_eq!(both.count(), 4);
        assert_eq!(both.sum_us(), a.sum_us() + b.sum_us());
        let got: Vec<_> = both.buckets().collect();
        assert_eq!(got, [(Histogram::bucket_of(10), 2), (Histogram::bucket_of(3000), 1), (Histogram::OVERFLOW, 1)]);
        assert_eq!(both.quantile_us(1.0), Some(1 << 28));
    }

    #[test]
    fn octave_buckets_count_each_latency_once_below_its_power_of_two() {
        let mut h = Histogram::new();
        for us in [0, 1, 2, 3, 4, 7, 8, 1000, 1 << 30] {
            h.record_us(us);
        }
        let b = h.octave_buckets();
        assert_eq!(b.len(), 28 + 1);
        assert_eq!(b[0], (0.000001, 2));
        assert_eq!(b[1], (0.000003, 2));
        assert_eq!(b[2], (0.000007, 2));
        assert_eq!(b[3], (0.000015, 1));
        // 1000 µs is below 1023 µs (2^10 − 1).
        assert_eq!(b[9], (0.001023, 1));
        assert_eq!(b[27], (268.435455, 0));
        assert_eq!(b[28], (f64::INFINITY, 1));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), h.count());
        let bounds: Vec<f64> = Histogram::octave_bounds().collect();
        assert_eq!(bounds, b[..28].iter().map(|(le, _)| *le).collect::<Vec<_>>());
    }

    #[cfg(feature = "prometheus")]
    #[test]
    fn a_histogram_encodes_as_an_openmetrics_histogram_with_escaped_labels() {
        let mut h = Histogram::new();
        h.record_us(1000);
        let mut family = crate::metrics::Snapshot::new("latency_seconds", "Latency.");
        family.push(vec![("model", "m\"1\nx".to_owned())], h);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(family));
        let out = crate::metrics::encode(&registry, crate::metrics::Format::OpenMetrics);
        assert!(out.contains("# TYPE latency_seconds histogram\n"), "{out}");
        assert!(out.contains(r#"latency_seconds_bucket{le="0.000511",model="m\"1\nx"} 0"#), "{out}");
        assert!(out.contains(r#"latency_seconds_bucket{le="0.001023",model="m\"1\nx"} 1"#), "{out}");
        assert!(out.contains(r#"latency_seconds_bucket{le="+Inf",model="m\"1\nx"} 1"#), "{out}");
        assert!(out.contains(r#"latency_seconds_sum{model="m\"1\nx"} 0.001"#), "{out}");
        assert!(out.contains(r#"latency_seconds_count{model="m\"1\nx"} 1"#), "{out}");
    }

    #[test]
    fn largest_event_fits_its_documented_bound() {
        let mut latency = Histogram::new();
        for i in 0..Histogram::BUCKETS {
            for _ in 0..3 {
                latency.record_us(Histogram::bucket_range(i).0);
            }
        }
        let mut latency_max = latency.clone();
        latency_max.buckets.values_mut().for_each(|n| *n = u64::MAX);
        latency_max.sum_us = u64::MAX;
        let long = "é".repeat(MAX_TEXT_LEN / 2);
        let kinds = [
            EventKind::InferenceStats { model: d(9), count: u64::MAX, errors: u64::MAX, latency: latency_max },
            EventKind::PolicyRejection {
                package: d(9),
                rule: long.clone(),
                reason: long.clone(),
                deferred_until: Some(u64::MAX),
            },
        ];
        for kind in kinds {
            let e = Event { seq: u64::MAX, at: u64::MAX, kind };
            let len = canonical::to_vec(&e).unwrap().len();
            assert!(len <= BatchLimits::MAX_EVENT_BYTES, "{len} bytes");
        }
        let empty = Batch { stream: u64::MAX, first_seq: u64::MAX, events: vec![], dropped: u64::MAX };
        assert!(canonical::to_vec(&empty).unwrap().len() <= BatchLimits::OVERHEAD);
    }
}
