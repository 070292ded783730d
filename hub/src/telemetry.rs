//! The hub's telemetry store: devices' event batches in their own redb file (`telemetry.redb`), kept for a
//! retention period and summed per release, stage, site and device.
//!
//! Invariants: an event is stored at most once per `(device, stream, seq)`, so a batch resent after a lost ack
//! counts once; a batch commits whole and durably before [`TelemetryStore::ingest`] returns, so the ack the caller
//! sends afterwards never covers an event the hub could lose. Events carry the site, release and stage the device
//! had when they arrived, so they stay attributed to that release after the device moves on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use outpost_shared::canonical;
use outpost_shared::clock::{Clock, UnixSeconds};
use outpost_shared::telemetry::{Batch, EventKind, Histogram};

/// File name of the telemetry store inside the hub's data directory.
pub const TELEMETRY_FILE: &str = "telemetry.redb";
/// How long events are kept unless the operator says otherwise: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Distinct streams kept per device unless the operator says otherwise. A device has one queue, and a new stream
/// only when its queue file is recreated, so this is far above any honest device's count; the stream id is the
/// device's choice, so without a bound one device could add a record per batch for ever.
pub const DEFAULT_MAX_STREAMS_PER_DEVICE: u32 = 16;

/// (device, stream, seq) → [`StoredEvent`] (canonical CBOR).
const EVENTS: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("events");
/// (received at, device, stream, seq): the retention index over [`EVENTS`].
const BY_RECEIPT: TableDefinition<(u64, &str, u64, u64), ()> = TableDefinition::new("by_receipt");
/// (device, stream) → [`StreamRecord`] (canonical CBOR).
const STREAMS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("streams");

/// One event as the hub keeps it: the device's event plus where the device stood when it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// When the hub stored it (hub clock): what retention goes by.
    pub received_at: UnixSeconds,
    /// When it happened (device clock).
    pub at: UnixSeconds,
    /// The device's site, if it has one.
    pub site: Option<String>,
    /// The release the device was in.
    pub release: Option<String>,
    /// The rollout stage it was in.
    pub stage: Option<u32>,
    /// What happened.
    pub kind: EventKind,
}

impl StoredEvent {
    /// An event arriving now from a device at this site, release and stage; `at` and `kind` are the event's to
    /// fill in (both backends).
    pub(crate) fn arriving(
        now: UnixSeconds,
        site: &Option<String>,
        release: &Option<String>,
        stage: Option<u32>,
    ) -> StoredEvent {
        let (site, release, kind) = (site.clone(), release.clone(), EventKind::Error { what: String::new() });
        StoredEvent { received_at: now, at: 0, site, release, stage, kind }
    }
}

/// What the hub knows of one device queue (stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Events the device dropped at its queue's bound (the highest running total it reported).
    pub dropped: u64,
    /// The highest sequence number received.
    pub highest_seq: u64,
    /// Distinct events ever stored from this stream (pruning does not lower it).
    pub received: u64,
    /// When its last batch arrived (hub clock).
    pub last_received: UnixSeconds,
    /// The device's site at its last batch.
    pub site: Option<String>,
    /// The device's release at its last batch.
    pub release: Option<String>,
    /// The device's stage at its last batch.
    pub stage: Option<u32>,
}

impl StreamRecord {
    /// Sequence numbers up to [`StreamRecord::highest_seq`] that never arrived. A queue numbers events without
    /// gaps and removes them only on the hub's ack, so anything but 0 means events were lost on the way.
    pub fn missing(&self) -> u64 {
        self.highest_seq.saturating_sub(self.received)
    }
}

/// One device queue, as [`TelemetryStore::streams`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceStream {
    /// The device.
    pub device: String,
    /// Its queue's stream id.
    pub stream: u64,
    /// What the hub knows of it.
    pub record: StreamRecord,
}

/// What [`TelemetryStore::ingest`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Events stored for the first time.
    pub stored: u64,
    /// Events already stored (a resent batch), ignored.
    pub duplicates: u64,
    /// What to acknowledge to the device: the batch's last sequence number (`None` for an empty batch).
    pub ack: Option<u64>,
}

/// Why a telemetry store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryStoreError {
    /// The store's database failed.
    #[error("telemetry store {}: {source}", path.display())]
    Db {
        /// The store's file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
    /// The store's file is not a database redb can open any more (damaged, or not a redb file): the hub does not
    /// start on it until the operator recovers it (docs/OPERATING.md, "A damaged store").
    #[error(
        "the hub's telemetry store {} is damaged ({problem}); nothing was changed. Recover it as docs/OPERATING.md \
         \"A damaged store\" says",
        path.display()
    )]
    DamagedStore {
        /// The store's file.
        path: PathBuf,
        /// What redb found.
        problem: String,
    },
    /// Another process holds the store open.
    #[error("telemetry store {} is in use by another outpost-hub process; try again when it finishes", path.display())]
    Busy {
        /// The store's file.
        path: PathBuf,
    },
    /// The device already has [`TelemetryStore::max_streams_per_device`] streams and sent a batch on a new one
    /// (the peer misbehaved, or recreated its queue that often): the batch is not stored.
    #[error(
        "telemetry from device {device} on a new stream {stream} refused: it already has {held} streams (limit {max})"
    )]
    TooManyStreams {
        /// The device.
        device: String,
        /// The new stream id.
        stream: u64,
        /// Streams the store holds for it.
        held: u64,
        /// The limit.
        max: u32,
    },
    /// The PostgreSQL store failed (`crate::store::postgres`).
    #[error(transparent)]
    Postgres(#[from] crate::store::postgres::PgError),
    /// A PostgreSQL row's record could not be encoded or decoded: a bug, or a damaged row.
    #[error("telemetry on PostgreSQL: record {what} is damaged: {problem}")]
    CorruptRow {
        /// Which record.
        what: String,
        /// What went wrong.
        problem: String,
    },
    /// A record could not be encoded or decoded: a bug, or a damaged file.
    #[error("telemetry store {}: record {what} is damaged: {problem}", path.display())]
    Corrupt {
        /// The store's file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// What went wrong.
        problem: String,
    },
}

/// Which dimension [`TelemetryStore::aggregate`] groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// One group per release id.
    Release,
    /// One group per rollout stage.
    Stage,
    /// One group per site.
    Site,
    /// One group per device.
    Device,
}

/// Which events [`TelemetryStore::aggregate`] looks at; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this release.
    pub release: Option<String>,
    /// Only this stage.
    pub stage: Option<u32>,
    /// Only this site.
    pub site: Option<String>,
    /// Only this device.
    pub device: Option<String>,
    /// Only events received at or after this time.
    pub since: Option<UnixSeconds>,
}

impl Filter {
    fn matches(&self, device: &str, site: &Option<String>, release: &Option<String>, stage: Option<u32>) -> bool {
        self.device.as_deref().is_none_or(|d| d == device)
            && self.site.as_ref().is_none_or(|s| site.as_ref() == Some(s))
            && self.release.as_ref().is_none_or(|r| release.as_ref() == Some(r))
            && self.stage.is_none_or(|s| stage == Some(s))
    }
}

/// One group's totals, e.g. one row of `fleet status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// The group's release id, stage, site or device key; `-` for events without one.
    pub key: String,
    /// Its totals.
    pub summary: Summary,
}

/// Totals over a set of events.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Events.
    pub events: u64,
    /// Distinct devices that sent them.
    pub devices: u64,
    /// Events per kind (`update_step`, `policy_rejection`, `rollback`, `inference_stats`, `error`,
    /// `shadow_divergence`).
    pub by_kind: BTreeMap<String, u64>,
    /// Update steps reached, per step (`downloaded`, `activated`, `confirmed`...).
    pub update_steps: BTreeMap<String, u64>,
    /// Policy rejections (deferrals included) per rule.
    pub rejections_by_rule: BTreeMap<String, u64>,
    /// Of the rejections, those that were deferrals.
    pub deferrals: u64,
    /// Rollbacks.
    pub rollbacks: u64,
    /// Rollbacks per package rolled back from (digest, hex).
    pub rollbacks_from: BTreeMap<String, u64>,
    /// `error` events.
    pub errors: u64,
    /// Inference per model (digest, hex).
    pub inference: BTreeMap<String, InferenceSummary>,
    /// Shadow runs per package (digest, hex).
    pub shadow: BTreeMap<String, ShadowSummary>,
    /// Route quality per route: requests, errors, fallbacks by reason and latency per candidate.
    pub routes: BTreeMap<String, outpost_shared::route::quality::RouteQuality>,
    /// Events the group's devices dropped at their queue bound (each queue counted in the group of its last batch).
    pub dropped: u64,
    /// Events that left a device's queue but never reached the store ([`StreamRecord::missing`], counted like
    /// `dropped`): 0 unless something is broken.
    pub missing: u64,
    /// When the latest of these events arrived (hub clock).
    pub last_received: Option<UnixSeconds>,
}

/// Inference totals for one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InferenceSummary {
    /// Inferences.
    pub count: u64,
    /// Failed inferences.
    pub errors: u64,
    /// Latencies, every report merged.
    pub latency: Histogram,
    /// Upper bound of the median latency, µs (see [`Histogram::quantile_us`]).
    pub p50_us: Option<u64>,
    /// Upper bound of the 95th percentile latency, µs.
    pub p95_us: Option<u64>,
}

/// Shadow-run totals for one package.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowSummary {
    /// Reports.
    pub reports: u64,
    /// Samples compared, over all reports.
    pub samples: u64,
    /// Largest absolute output difference any report saw.
    pub max_abs_diff: f64,
    /// Top-1 agreement, averaged over samples.
    pub top1_agreement: f64,
    /// Shadow / active latency ratio, averaged over samples.
    pub latency_ratio: f64,
}

impl Summary {
    fn add(&mut self, device_new: bool, e: &StoredEvent) {
        self.events += 1;
        self.devices += u64::from(device_new);
        *self.by_kind.entry(e.kind.name().to_owned()).or_default() += 1;
        self.last_received = self.last_received.max(Some(e.received_at));
        match &e.kind {
            EventKind::UpdateStep { step, .. } => *self.update_steps.entry(step.name().to_owned()).or_default() += 1,
            EventKind::PolicyRejection { rule, deferred_until, .. } => {
                *self.rejections_by_rule.entry(rule.clone()).or_default() += 1;
                self.deferrals += u64::from(deferred_until.is_some());
            }
            EventKind::Rollback { from, .. } => {
                self.rollbacks += 1;
                *self.rollbacks_from.entry(from.to_hex()).or_default() += 1;
            }
            EventKind::InferenceStats { model, count, errors, latency } => {
                let s = self.inference.entry(model.to_hex()).or_default();
                s.count = s.count.saturating_add(*count);
                s.errors = s.errors.saturating_add(*errors);
                s.latency.merge(latency);
            }
            EventKind::Error { .. } => self.errors += 1,
            EventKind::RouteQuality { route, quality } => self.routes.entry(route.clone()).or_default().merge(quality),
            EventKind::ShadowDivergence { package, max_abs_diff, top1_agreement, latency_ratio, samples } => {
                let s = self.shadow.entry(package.to_hex()).or_default();
                // Running sample-weighted means: exact for the counts seen, with no sums to overflow.
                let total = s.samples.saturating_add(*samples);
                if total > 0 {
                    let w = *samples as f64 / total as f64;
                    s.top1_agreement += (top1_agreement - s.top1_agreement) * w;
                    s.latency_ratio += (latency_ratio - s.latency_ratio) * w;
                }
                s.reports += 1;
                s.samples = total;
                s.max_abs_diff = s.max_abs_diff.max(*max_abs_diff);
            }
        }
    }

    fn finish(&mut self) {
        for s in self.inference.values_mut() {
            s.p50_us = s.latency.quantile_us(0.50);
            s.p95_us = s.latency.quantile_us(0.95);
        }
    }
}

/// Refuses a batch on a stream new to the store when its device holds `held` streams, `max` or more (both backends).
pub(crate) fn stream_allowed(device: &str, stream: u64, held: u64, max: u32) -> Result<(), TelemetryStoreError> {
    if held >= u64::from(max) {
        return Err(TelemetryStoreError::TooManyStreams { device: device.to_owned(), stream, held, max });
    }
    Ok(())
}

/// A stream's record after `batch` stored `stored` new events (both backends): running totals only rise, the
/// device's place is its latest.
pub(crate) fn stream_after(
    previous: Option<&StreamRecord>,
    batch: &Batch,
    stored: u64,
    now: UnixSeconds,
    site: Option<String>,
    release: Option<String>,
    stage: Option<u32>,
) -> StreamRecord {
    StreamRecord {
        dropped: previous.map_or(0, |p| p.dropped).max(batch.dropped),
        highest_seq: previous.map_or(0, |p| p.highest_seq).max(batch.last_seq().unwrap_or(0)),
        received: previous.map_or(0, |p| p.received).saturating_add(stored),
        last_received: now,
        site,
        release,
        stage,
    }
}

/// Sort key of a group: (absent?, stage number, name), so stages sort numerically and "-" comes last.
type GroupKey = (bool, u32, String);

/// Totals being summed for [`TelemetryStore::aggregate`], fed events and streams in key order (both backends).
pub(crate) struct Aggregation<'a> {
    by: GroupBy,
    filter: &'a Filter,
    groups: BTreeMap<GroupKey, (Summary, BTreeSet<String>)>,
}

impl<'a> Aggregation<'a> {
    pub(crate) fn new(by: GroupBy, filter: &'a Filter) -> Aggregation<'a> {
        Aggregation { by, filter, groups: BTreeMap::new() }
    }

    fn key_of(&self, device: &str, site: &Option<String>, release: &Option<String>, stage: Option<u32>) -> GroupKey {
        let text = |t: &Option<String>| t.clone().map_or((true, 0, "-".to_owned()), |t| (false, 0, t));
        match self.by {
            GroupBy::Release => text(release),
            GroupBy::Site => text(site),
            GroupBy::Device => (false, 0, device.to_owned()),
            GroupBy::Stage => stage.map_or((true, 0, "-".to_owned()), |s| (false, s, s.to_string())),
        }
    }

    /// Counts `device`'s event `e` if the filter takes it.
    pub(crate) fn event(&mut self, device: &str, e: &StoredEvent) {
        if !self.filter.matches(device, &e.site, &e.release, e.stage)
            || self.filter.since.is_some_and(|t| e.received_at < t)
        {
            return;
        }
        let key = self.key_of(device, &e.site, &e.release, e.stage);
        let (summary, devices) = self.groups.entry(key).or_default();
        let device_new = !devices.contains(device) && devices.insert(device.to_owned());
        summary.add(device_new, e);
    }

    /// Counts what `device`'s stream `s` dropped or lost, in the group of its last batch.
    pub(crate) fn stream(&mut self, device: &str, s: &StreamRecord) {
        if (s.dropped == 0 && s.missing() == 0) || !self.filter.matches(device, &s.site, &s.release, s.stage) {
            return;
        }
        let key = self.key_of(device, &s.site, &s.release, s.stage);
        let (summary, _) = self.groups.entry(key).or_default();
        summary.dropped = summary.dropped.saturating_add(s.dropped);
        summary.missing = summary.missing.saturating_add(s.missing());
    }

    /// The groups, in order.
    pub(crate) fn finish(self) -> Vec<Group> {
        self.groups
            .into_iter()
            .map(|((_, _, key), (mut summary, _))| {
                summary.finish();
                Group { key, summary }
            })
            .collect()
    }
}

/// The telemetry store.
pub struct TelemetryStore {
    db: Arc<crate::store::files::SharedDb>,
    path: PathBuf,
    clock: Arc<dyn Clock>,
    max_streams_per_device: u32,
}

impl TelemetryStore {
    /// Opens (creating if needed) the store in the hub data directory `dir`, sharing the handle this process
    /// already holds (`crate::store`); another process holding it is [`TelemetryStoreError::Busy`] at once.
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<TelemetryStore, TelemetryStoreError> {
        let path = dir.join(TELEMETRY_FILE);
        let db = match crate::store::files::open_shared(&path, true) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(TelemetryStoreError::Busy { path }),
            Err(e) => match crate::store::files::damage(&e) {
                Some(problem) => return Err(TelemetryStoreError::DamagedStore { path, problem }),
                None => return Err(TelemetryStoreError::Db { path, source: e.into() }),
            },
        };
        let store = TelemetryStore { db, path, clock, max_streams_per_device: DEFAULT_MAX_STREAMS_PER_DEVICE };
        let tx = store.db.begin_write().map_err(|e| store.db_err(e))?;
        tx.open_table(EVENTS).map_err(|e| store.db_err(e))?;
        tx.open_table(BY_RECEIPT).map_err(|e| store.db_err(e))?;
        tx.open_table(STREAMS).map_err(|e| store.db_err(e))?;
        tx.commit().map_err(|e| store.db_err(e))?;
        Ok(store)
    }

    /// The store with at most `max` distinct streams per device (at least 1).
    pub fn with_max_streams_per_device(mut self, max: u32) -> TelemetryStore {
        self.max_streams_per_device = max.max(1);
        self
    }

    /// Distinct streams kept per device; a batch on a new stream beyond it is
    /// [`TelemetryStoreError::TooManyStreams`].
    pub fn max_streams_per_device(&self) -> u32 {
        self.max_streams_per_device
    }

    /// Stores a device's batch (already checked by [`Batch::decode`]) in one durable transaction, attributing its
    /// events to the site, release and stage the device is in now. Events already stored for `(device, stream,
    /// seq)` are left as they were. Acknowledge `ack` of the outcome to the device only after this returns `Ok`.
    /// A batch on a stream new to the store is refused when the device has
    /// [`TelemetryStore::max_streams_per_device`] already.
    pub fn ingest(
        &self,
        device: &str,
        site: Option<&str>,
        release: Option<&str>,
        stage: Option<u32>,
        batch: &Batch,
    ) -> Result<IngestOutcome, TelemetryStoreError> {
        let now = self.clock.wall();
        let (site, release) = (site.map(str::to_owned), release.map(str::to_owned));
        let mut outcome = IngestOutcome { stored: 0, duplicates: 0, ack: batch.last_seq() };
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut events = tx.open_table(EVENTS).map_err(|e| self.db_err(e))?;
            let mut by_receipt = tx.open_table(BY_RECEIPT).map_err(|e| self.db_err(e))?;
            let mut streams = tx.open_table(STREAMS).map_err(|e| self.db_err(e))?;
            if streams.get((device, batch.stream)).map_err(|e| self.db_err(e))?.is_none() {
                let mut held = 0u64;
                for entry in streams.range((device, 0)..=(device, u64::MAX)).map_err(|e| self.db_err(e))? {
                    entry.map_err(|e| self.db_err(e))?;
                    held += 1;
                }
                stream_allowed(device, batch.stream, held, self.max_streams_per_device)?;
            }
            let mut stored = StoredEvent::arriving(now, &site, &release, stage);
            for event in &batch.events {
                let key = (device, batch.stream, event.seq);
                stored.at = event.at;
                stored.kind = event.kind.clone();
                let bytes = canonical::to_vec(&stored).map_err(|e| self.corrupt(&key, e))?;
                // Insert first and undo on the rare duplicate: one tree walk for the common case.
                let previous =
                    events.insert(key, bytes.as_slice()).map_err(|e| self.db_err(e))?.map(|v| v.value().to_vec());
                match previous {
                    Some(previous) => {
                        events.insert(key, previous.as_slice()).map_err(|e| self.db_err(e))?;
                        outcome.duplicates += 1;
                    }
                    None => {
                        by_receipt.insert((now, device, batch.stream, event.seq), ()).map_err(|e| self.db_err(e))?;
                        outcome.stored += 1;
                    }
                }
            }
            let previous = match streams.get((device, batch.stream)).map_err(|e| self.db_err(e))? {
                Some(v) => Some(self.decode::<StreamRecord>(&(device, batch.stream), v.value())?),
                None => None,
            };
            let record = stream_after(previous.as_ref(), batch, outcome.stored, now, site, release, stage);
            let bytes = canonical::to_vec(&record).map_err(|e| self.corrupt(&(device, batch.stream), e))?;
            streams.insert((device, batch.stream), bytes.as_slice()).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(outcome)
    }

    /// Deletes every event the hub received before `older_than` (hub clock, so a device with a wrong clock can
    /// neither lose its events early nor keep them forever). Returns how many were deleted.
    pub fn prune(&self, older_than: UnixSeconds) -> Result<u64, TelemetryStoreError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        let mut removed = 0;
        {
            let mut events = tx.open_table(EVENTS).map_err(|e| self.db_err(e))?;
            let mut by_receipt = tx.open_table(BY_RECEIPT).map_err(|e| self.db_err(e))?;
            let mut old =
                by_receipt.extract_from_if(..(older_than, "", 0, 0), |_, _| true).map_err(|e| self.db_err(e))?;
            for entry in old.by_ref() {
                let (key, _) = entry.map_err(|e| self.db_err(e))?;
                let (_, device, stream, seq) = key.value();
                events.remove((device, stream, seq)).map_err(|e| self.db_err(e))?;
                removed += 1;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(removed)
    }

    /// Deletes what is older than `retention` by the hub's clock (see [`TelemetryStore::prune`]).
    pub fn apply_retention(&self, retention: Duration) -> Result<u64, TelemetryStoreError> {
        self.prune(self.clock.wall().saturating_sub(retention.as_secs()))
    }

    /// Events stored.
    pub fn len(&self) -> Result<u64, TelemetryStoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        tx.open_table(EVENTS).map_err(|e| self.db_err(e))?.len().map_err(|e| self.db_err(e))
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> Result<bool, TelemetryStoreError> {
        Ok(self.len()? == 0)
    }

    /// Totals of the stored events that match `filter`, one [`Group`] per value of `by`, in order (stages by
    /// number, the others by name; `-` for events without a value, last).
    pub fn aggregate(&self, by: GroupBy, filter: &Filter) -> Result<Vec<Group>, TelemetryStoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let events = tx.open_table(EVENTS).map_err(|e| self.db_err(e))?;
        let streams = tx.open_table(STREAMS).map_err(|e| self.db_err(e))?;
        let mut groups = Aggregation::new(by, filter);
        let range = match &filter.device {
            Some(d) => events.range((d.as_str(), 0, 0)..=(d.as_str(), u64::MAX, u64::MAX)),
            None => events.range::<(&str, u64, u64)>(..),
        };
        for entry in range.map_err(|e| self.db_err(e))? {
            let (key, value) = entry.map_err(|e| self.db_err(e))?;
            let key = key.value();
            let e: StoredEvent = self.decode(&key, value.value())?;
            groups.event(key.0, &e);
        }
        // One device's streams are a key range, as its events are.
        let streams = match &filter.device {
            Some(d) => streams.range((d.as_str(), 0)..=(d.as_str(), u64::MAX)),
            None => streams.range::<(&str, u64)>(..),
        };
        for entry in streams.map_err(|e| self.db_err(e))? {
            let (key, value) = entry.map_err(|e| self.db_err(e))?;
            let (device, stream) = key.value();
            let s: StreamRecord = self.decode(&(device, stream), value.value())?;
            groups.stream(device, &s);
        }
        Ok(groups.finish())
    }

    /// What the store knows of each device queue, by device.
    pub fn streams(&self) -> Result<Vec<DeviceStream>, TelemetryStoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let streams = tx.open_table(STREAMS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for entry in streams.iter().map_err(|e| self.db_err(e))? {
            let (key, value) = entry.map_err(|e| self.db_err(e))?;
            let (device, stream) = key.value();
            let record = self.decode(&(device, stream), value.value())?;
            out.push(DeviceStream { device: device.to_owned(), stream, record });
        }
        Ok(out)
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: &dyn std::fmt::Debug,
        bytes: &[u8],
    ) -> Result<T, TelemetryStoreError> {
        canonical::from_slice(bytes).map_err(|e| self.corrupt(key, e))
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> TelemetryStoreError {
        TelemetryStoreError::Db { path: self.path.clone(), source: crate::store::files::note(e.into()) }
    }

    fn corrupt(&self, key: &dyn std::fmt::Debug, problem: impl ToString) -> TelemetryStoreError {
        TelemetryStoreError::Corrupt { path: self.path.clone(), what: format!("{key:?}"), problem: problem.to_string() }
    }
}

impl std::fmt::Debug for TelemetryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryStore").field("path", &self.path).finish()
    }
}
