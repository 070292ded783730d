//! What the QUIC service serves, read from the hub's data directory: TUF metadata and targets from the
//! repository, director bundles per device, the device allow-list from the registry, durable device reports, and
//! the attestation gate (`crate::attest`) with the registry as its device directory.
//!
//! The store (registry index and telemetry) is opened once and held (`crate::store`); no request reopens it. The
//! per-request attestation check reads nothing: it compares the device-status stamp file with the one it last read
//! the revoked devices at.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use outpost_attestation::{AttestationResult, Challenge, Evidence, Presented, PublicKey, Status, Tier};
use outpost_shared::canonical;
use outpost_shared::clock::Clock;
use outpost_shared::director::Bundle;

use crate::attest::{self, FileStamp, Gate};
use crate::director::Director;
use crate::registry::{AttestationRecord, DEVICE_STATUS_STAMP, DeviceStatus, TpmRecord};
use crate::store::Store;
use crate::tuf::TufRepo;
use outpost_net::logging::short;
use outpost_net::server::{Backend, BackendError, Refused, Submitted, Unattested};

/// The hub's serving backend.
pub struct HubBackend {
    dir: PathBuf,
    repo: TufRepo,
    clock: Arc<dyn Clock>,
    /// The open store: given at construction ([`HubBackend::with_store`]) or opened at the first request.
    store: OnceLock<Arc<Store>>,
    /// Signed assignments per device, reused while their targets are unchanged and fresh.
    assignments: Mutex<HashMap<String, CachedAssignment>>,
    /// Metadata files by name, with the (inode, mtime, length) they were read at. Every write of metadata is an
    /// atomic rename, which changes the inode, so a stale entry is never served.
    metadata_cache: Mutex<HashMap<String, CachedFile>>,
    /// The attestation gate.
    gate: Gate,
    /// Revoked device keys, as read when [`DEVICE_STATUS_STAMP`] had this stamp.
    revoked: Mutex<Option<RevokedAt>>,
    /// What the serving process measures itself (appraisal time, refusals at a bound), for `/metrics`.
    live: crate::metrics::Live,
    /// `hub.toml`'s `[limits]`: device reports and telemetry streams.
    limits: crate::config::Limits,
}

/// The revoked device keys, and the device-status stamp they were read at.
type RevokedAt = (Option<FileStamp>, HashSet<[u8; 32]>);

/// A metadata file's bytes, the stamp they were read at, and when (monotonic) the stamp was last confirmed.
struct CachedFile {
    stamp: FileStamp,
    bytes: Arc<Vec<u8>>,
    confirmed: Duration,
}

/// How long a confirmed metadata file is served from memory without looking at the disk again. Metadata is
/// signed and carries its own expiry, so a copy this much older than a just-published one is harmless.
pub const METADATA_FRESH: Duration = Duration::from_millis(250);

struct CachedAssignment {
    targets: Vec<String>,
    bytes: Vec<u8>,
    expires: u64,
    /// The version it carries: served only while no newer one was signed for the device (by another replica on
    /// the same database), so a device moving between replicas never sees its version go back.
    version: u64,
}

impl std::fmt::Debug for HubBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBackend").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl HubBackend {
    /// A backend over the hub in `dir`, its attestation gate configured by `[attestation]` in its `hub.toml` (an
    /// unreadable file gives the defaults: attestation required). It opens the store at its first request and holds
    /// it from then on.
    pub fn new(dir: &Path, repo: TufRepo, clock: Arc<dyn Clock>) -> Self {
        let config = crate::config::HubConfig::load(&dir.join(crate::config::CONFIG_FILE)).unwrap_or_default();
        Self::build(dir, repo, &config, clock, OnceLock::new())
    }

    /// A backend over the already open `store` of the hub in `dir`, configured by `config` (the serving hub reads
    /// `hub.toml` once, at start): the attestation gate by `[attestation]`, reports by `[limits]`.
    pub fn with_store(
        dir: &Path,
        repo: TufRepo,
        config: &crate::config::HubConfig,
        clock: Arc<dyn Clock>,
        store: Arc<Store>,
    ) -> Self {
        Self::build(dir, repo, config, clock, OnceLock::from(store))
    }

    fn build(
        dir: &Path,
        repo: TufRepo,
        config: &crate::config::HubConfig,
        clock: Arc<dyn Clock>,
        store: OnceLock<Arc<Store>>,
    ) -> Self {
        HubBackend {
            dir: dir.to_owned(),
            repo,
            gate: Gate::new(dir, &config.attestation, clock.clone()),
            limits: config.limits.clone(),
            clock,
            store,
            assignments: Mutex::new(HashMap::new()),
            metadata_cache: Mutex::new(HashMap::new()),
            revoked: Mutex::new(None),
            live: crate::metrics::Live::default(),
        }
    }

    /// The hub's OpenMetrics exposition (`crate::metrics`): devices by status, site and package and when each was
    /// last seen; releases with their counts per outcome and stage, state and recovery time; telemetry per site and
    /// latency per model; attestation appraisal time.
    pub fn metrics(&self) -> Result<String, BackendError> {
        self.metrics_as(outpost_shared::metrics::Format::OpenMetrics)
    }

    /// [`HubBackend::metrics`] in `format`.
    pub fn metrics_as(&self, format: outpost_shared::metrics::Format) -> Result<String, BackendError> {
        let store = self.store()?;
        let (devices, releases) = (store.devices().devices()?, crate::rollouts::list(store.rollouts())?);
        let telemetry =
            store.telemetry().aggregate(crate::telemetry::GroupBy::Site, &crate::telemetry::Filter::default())?;
        let fleet = crate::metrics::Fleet { devices: &devices, releases: &releases, telemetry: &telemetry };
        Ok(outpost_shared::metrics::encode(&crate::metrics::registry(&fleet, &self.live), format))
    }

    /// Deletes telemetry the hub received longer ago than `retention`; returns how many events went.
    pub fn apply_telemetry_retention(&self, retention: Duration) -> Result<u64, BackendError> {
        Ok(self.store()?.telemetry().apply_retention(retention)?)
    }

    /// Judges every staged rollout at the clock's time (the serving hub calls this every few seconds); returns
    /// what happened, per release.
    pub fn tick_rollouts(&self) -> Result<Vec<crate::rollouts::Happened>, BackendError> {
        let now = self.clock.wall();
        self.with_registry(|reg| Ok(crate::rollouts::tick(reg, now)?))
    }

    /// How long the rollout judge may sleep now: until the earliest release deadline (a soak end), at most
    /// [`crate::rollouts::MAX_TICK_WAIT`].
    pub fn rollout_wait(&self) -> Result<std::time::Duration, BackendError> {
        let now = self.clock.wall();
        self.with_registry(|reg| Ok(crate::rollouts::wait_after_tick(reg, now)?))
    }

    /// The attestation gate (for `serve` to say whether it can attest anybody).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Appraises, then records the outcome on the device's record.
    fn appraise_and_record(&self, p: &Presented<'_>) -> Result<AttestationResult, Unattested> {
        let verifier = self.gate.verifier().map_err(Unattested)?;
        let key = p.device.to_hex();
        let started = self.clock.monotonic();
        let now = self.clock.wall();
        let (record, (assigned, eligible)) = self
            .with_registry(|reg| {
                let record = self.store()?.devices().device(&key)?;
                let expected = match &record {
                    Some(r) => Director::new(&self.repo).expected_models(reg, r, now)?,
                    None => (None, Vec::new()),
                };
                Ok((record, expected))
            })
            .map_err(|e| {
                tracing::error!(device = short(&key), error = %e, "attestation: reading the device record and assignment");
                Unattested("internal error".into())
            })?;
        // The claims only shape what is expected; the verifier checks the signature before judging any of it.
        let claims = Evidence::parse(p.evidence).ok().map(|e| e.claims_unverified().clone());
        let directory = attest::Directory {
            key: p.device,
            record,
            assigned,
            eligible,
            claimed_model: claims.as_ref().and_then(|c| c.model_digest),
            claimed_policy: claims.as_ref().and_then(|c| c.policy_digest),
        };
        let outcome = verifier.appraise(p, &directory);
        let result = match &outcome {
            Ok(r) if r.status == Status::Affirming => "affirming",
            Ok(_) => "warning",
            Err(_) => "contraindicated",
        };
        let took = self.clock.monotonic().saturating_sub(started);
        self.live.appraised(result, took.as_secs_f64());
        let at = self.clock.wall();
        let entry = match &outcome {
            Ok(r) => {
                tracing::info!(device = short(&key), result, tier = ?r.tier, took_ms = took.as_millis() as u64, "attested");
                AttestationRecord {
                    at,
                    status: if r.status == Status::Affirming { "affirming" } else { "warning" }.into(),
                    tier: Some(if r.tier == Tier::Hardware { "hardware" } else { "software" }.into()),
                    expires: Some(r.expires),
                    software: Some(format!("{} {}", r.software.0, r.software.1)),
                    bootcount: Some(r.bootcount),
                    model: claims.as_ref().and_then(|c| c.model_digest),
                    policy: claims.as_ref().and_then(|c| c.policy_digest),
                    detail: (!r.concerns.is_empty()).then(|| format!("{:?}", r.concerns)),
                }
            }
            Err(e) => {
                tracing::warn!(device = short(&key), result, reason = %e.reason, "attestation refused: {e}");
                AttestationRecord {
                    at,
                    status: "contraindicated".into(),
                    tier: None,
                    expires: None,
                    software: None,
                    bootcount: None,
                    model: None,
                    policy: None,
                    detail: Some(e.reason.to_string()),
                }
            }
        };
        if directory.record.is_some()
            && let Err(e) = self.store().and_then(|s| Ok(s.devices().device_attested(&key, entry)?))
        {
            tracing::error!(device = short(&key), error = %e, "attestation: recording the result");
        }
        outcome.map_err(|e| Unattested(e.reason.to_string()))
    }

    /// The metadata file `name` from memory, if its copy was confirmed on disk within [`METADATA_FRESH`].
    pub fn fresh_metadata(&self, name: &str) -> Option<Vec<u8>> {
        let now = self.clock.monotonic();
        let cache = self.metadata_cache.lock().ok()?;
        let hit = cache.get(name)?;
        (now.saturating_sub(hit.confirmed) < METADATA_FRESH).then(|| hit.bytes.as_ref().clone())
    }

    /// Whether `device` is revoked, by the set read at the current stamp; `None` if the set is stale.
    fn revoked_fast(&self, device: &PublicKey) -> Option<bool> {
        let now = attest::stamp(&self.dir.join(DEVICE_STATUS_STAMP));
        let cache = self.revoked.lock().ok()?;
        let (stamp, set) = cache.as_ref()?;
        (*stamp == now).then(|| set.contains(&device.0))
    }

    /// Reads the revoked devices from the registry, remembering the stamp taken before the read.
    fn revoked_slow(&self, device: &PublicKey) -> Result<bool, BackendError> {
        let stamp = attest::stamp(&self.dir.join(DEVICE_STATUS_STAMP));
        let devices = self.store()?.devices().devices()?;
        let set: HashSet<[u8; 32]> = devices
            .iter()
            .filter(|d| d.status != DeviceStatus::Approved)
            .filter_map(|d| d.key.parse::<PublicKey>().ok().map(|k| k.0))
            .collect();
        let revoked = set.contains(&device.0);
        *self.revoked.lock().map_err(|_| "revocation cache poisoned")? = Some((stamp, set));
        Ok(revoked)
    }

    /// Forgets cached metadata and revoked devices, so the next request reads them again (the service calls this
    /// after every admin command: its effect is served at once).
    pub fn forget_cached(&self) {
        if let Ok(mut cache) = self.metadata_cache.lock() {
            cache.clear();
        }
        if let Ok(mut revoked) = self.revoked.lock() {
            *revoked = None;
        }
    }

    /// Forgets the revoked devices only (a device's status changed on another replica), keeping the metadata.
    pub fn forget_revoked(&self) {
        if let Ok(mut revoked) = self.revoked.lock() {
            *revoked = None;
        }
    }

    /// The open store, opened now if this backend was made without one.
    pub fn store(&self) -> Result<&Arc<Store>, BackendError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = Arc::new(Store::open_with(&self.dir, self.clock.clone(), &self.limits)?);
        Ok(self.store.get_or_init(|| store))
    }

    /// Runs `f` on the devices and release records (the database's on PostgreSQL).
    fn with_registry<T>(
        &self,
        f: impl FnOnce(&dyn crate::storage::RolloutStore) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        f(self.store()?.rollouts())
    }
}

/// The version a sealed assignment carries (its envelope's body; the signature is the device's to check).
fn signed_version(sealed: &[u8]) -> Result<u64, BackendError> {
    let envelope: outpost_shared::director::Envelope = canonical::from_slice(sealed)?;
    let assignment: outpost_shared::director::Assignment = canonical::from_slice(&envelope.body)?;
    Ok(assignment.version)
}

/// A repository-relative path that stays inside its directory: no `..`, no root, no empty parts.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if path.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(p.to_owned())
}

/// The service's blocking work: each runs on tokio's blocking pool, called by the [`Backend`] methods below.
impl HubBackend {
    fn device_approved(&self, key: &[u8; 32]) -> bool {
        self.store()
            .ok()
            .and_then(|s| s.devices().device(&hex::encode(key)).ok())
            .flatten()
            .is_some_and(|d| d.status == DeviceStatus::Approved)
    }

    fn read_metadata(&self, name: &str) -> Result<Option<Vec<u8>>, BackendError> {
        if name.contains('/') {
            return Ok(None);
        }
        let Some(rel) = safe_relative(name) else { return Ok(None) };
        let path = self.repo.metadata_dir().join(rel);
        let stat = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stamp = (std::os::unix::fs::MetadataExt::ino(&stat), stat.modified()?, stat.len());
        let now = self.clock.monotonic();
        if let Some(hit) = self.metadata_cache.lock().map_err(|_| "cache lock poisoned")?.get_mut(name)
            && hit.stamp == stamp
        {
            hit.confirmed = now;
            return Ok(Some(hit.bytes.as_ref().clone()));
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut cache = self.metadata_cache.lock().map_err(|_| "cache lock poisoned")?;
        cache.insert(name.to_owned(), CachedFile { stamp, bytes: Arc::new(bytes.clone()), confirmed: now });
        Ok(Some(bytes))
    }

    fn signed_assignment(&self, device: &[u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        let key = hex::encode(device);
        let director = Director::new(&self.repo);
        let now = self.clock.wall();
        let revoked = director.revocations()?;
        // The newest assignment version signed for the device, by any replica.
        let newest;
        let current: Vec<String> = {
            let published = director.published()?;
            let device_channel = self.with_registry(|reg| {
                let found = self.store()?.devices().device(&key)?;
                let Some(d) = found.filter(|d| d.status == DeviceStatus::Approved) else { return Ok(None) };
                let steer = crate::rollouts::steering(reg, &key, &d.channel, now)?;
                Ok(Some((d, steer)))
            })?;
            let Some((record, steer)) = device_channel else { return Ok(None) };
            newest = record.assignment_version;
            let paths = published
                .iter()
                .filter(|p| p.channels.contains(&record.channel))
                .filter(|p| !revoked.revoked.iter().any(|r| r.digest == p.digest))
                .filter(|p| !record.rolled_back.contains(&p.digest))
                // A republished target may carry new custom fields (a firmware image's length and hash, which
                // the compact manifests state): its publish sequence changes, and so does the key.
                .map(|p| format!("{} {} {}", p.path, p.digest, p.published_at));
            // A gateway's secondaries change its assignment too.
            let secondaries = record.secondaries.iter().map(|s| format!("secondary {} {}", s.device_id, s.hardware_id));
            // So does what the channel's staged rollouts want this device to run.
            let steering = std::iter::once(format!("rollouts {steer:?}"));
            paths.chain(secondaries).chain(steering).collect()
        };
        let margin = self.repo.expiries().resign_margin_secs;
        let cached = {
            let cache = self.assignments.lock().map_err(|_| "cache lock poisoned")?;
            cache
                .get(&key)
                .filter(|c| c.targets == current && c.expires > now + margin && c.version >= newest)
                .map(|c| c.bytes.clone())
        };
        let assignment = match cached {
            Some(bytes) => bytes,
            None => {
                let Some(bytes) = self.with_registry(|reg| Ok(director.assignment(reg, &key, now)?))? else {
                    return Ok(None);
                };
                let expires = now + self.repo.expiries().timestamp_secs;
                let version = signed_version(&bytes)?;
                let mut cache = self.assignments.lock().map_err(|_| "cache lock poisoned")?;
                cache.insert(key, CachedAssignment { targets: current, bytes: bytes.clone(), expires, version });
                bytes
            }
        };
        let bundle = Bundle { assignment, revocations: director.signed_revocations(now)? };
        Ok(Some(canonical::to_vec(&bundle)?))
    }

    fn find_target(&self, path: &str) -> Result<Option<(PathBuf, u64)>, BackendError> {
        let Some(rel) = safe_relative(path) else { return Ok(None) };
        let full = self.repo.targets_dir().join(rel);
        match fs::metadata(&full) {
            Ok(m) if m.is_file() => Ok(Some((full, m.len()))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn ingest_telemetry(&self, device: &[u8; 32], batch: &[u8]) -> Result<u64, BackendError> {
        use outpost_shared::telemetry::{Batch, BatchLimits};
        let batch = Batch::decode(batch, &BatchLimits::default()).map_err(|e| Refused(format!("telemetry: {e}")))?;
        let key = hex::encode(device);
        // Events are attributed to where the device is now: its site, and the staged release it takes part in (its
        // id and the stage it hashes into), else the package it runs.
        let (record, placement) = self.with_registry(|reg| {
            let record = self.store()?.devices().device(&key)?;
            let placement = match &record {
                Some(r) => crate::rollouts::placement(reg, &key, &r.channel)?,
                None => None,
            };
            Ok((record, placement))
        })?;
        let site = record.as_ref().and_then(|r| r.shown_site().map(str::to_owned));
        let (release, stage) = match placement {
            Some((id, stage)) => (Some(id), stage),
            None => (record.as_ref().and_then(|r| r.active).map(|d| d.short()), None),
        };
        let outcome = match self.store()?.telemetry().ingest(&key, site.as_deref(), release.as_deref(), stage, &batch) {
            Ok(outcome) => outcome,
            Err(e @ crate::telemetry::TelemetryStoreError::TooManyStreams { .. }) => {
                self.live.refused("telemetry_streams");
                return Err(Box::new(Refused(e.to_string())));
            }
            Err(e) => return Err(Box::new(e)),
        };
        Ok(outcome.ack.unwrap_or(batch.first_seq.saturating_sub(1)))
    }

    fn tokens_open(&self) -> bool {
        self.store().ok().and_then(|s| s.devices().tokens_open().ok()).unwrap_or(false)
    }

    fn enroll_device(
        &self,
        device: &[u8; 32],
        token: &str,
        hardware: &str,
        tpm: Option<&[u8]>,
    ) -> Result<(), BackendError> {
        let key = hex::encode(device);
        let tpm = match tpm.map(outpost_attestation::TpmEnrolment::from_bytes).transpose() {
            Ok(t) => t.as_ref().map(TpmRecord::of),
            Err(e) => return Err(Box::new(Refused(format!("enrolment refused: TPM facts: {e}")))),
        };
        match self.store()?.devices().enroll(&key, token, hardware, tpm)? {
            Ok(d) => {
                let tier = if d.tpm.is_some() { "hardware tier (TPM)" } else { "software tier" };
                tracing::info!(device = short(&key), channel = %d.channel, tier, "enrolled device {key} on channel {} with a one-time token, {tier}", d.channel);
                Ok(())
            }
            Err(e) => Err(Box::new(Refused(format!("enrolment refused: {e}")))),
        }
    }

    fn site_node_serves(&self, node: &[u8; 32], device: &[u8; 32]) -> bool {
        let (node, device) = (hex::encode(node), hex::encode(device));
        self.store().ok().and_then(|s| s.devices().site_node_serves(&node, &device).ok()).unwrap_or(false)
    }

    fn store_report(&self, device: &[u8; 32], body: &[u8]) -> Result<(), BackendError> {
        // One bounded, rotated append-only file per device (`crate::reports`). Durable before the Ack.
        match crate::reports::append(&self.dir, &hex::encode(device), body, &self.limits.reports()) {
            Ok(crate::reports::Appended::Appended) => {}
            Ok(crate::reports::Appended::Rotated) => self.live.report_file_rotated(),
            Err(e @ crate::reports::ReportError::TooLarge { .. }) => {
                self.live.refused("report_size");
                return Err(Box::new(Refused(e.to_string())));
            }
            Err(e) => return Err(Box::new(e)),
        }
        // A state report updates the device record: the director stops offering what it rolled back from.
        // A device with several capabilities reports each lane too (`lanes`, which an earlier hub ignores): the
        // director stops offering what any of them rolled back from (and any router the device could not
        // install); a release is judged on the lane of its package's capability, a router release on the router
        // the device reports (`rollouts::on_report`).
        if let Ok(report) = canonical::from_slice::<outpost_shared::update::lanes::DeviceReport>(body) {
            let (now, key, store) = (self.clock.wall(), hex::encode(device), self.store()?);
            let record =
                outpost_shared::update::StateReport { rolled_back: report.rolled_back(), ..report.state.clone() };
            store.devices().device_reported(&key, &record)?;
            for happened in crate::rollouts::on_report(store.rollouts(), &key, &report, now)? {
                happened.log();
            }
        }
        Ok(())
    }
}

/// Runs an attestation step on tokio's blocking pool; a panic there refuses the connection as "internal error".
async fn attesting<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Unattested> + Send + 'static,
) -> Result<T, Unattested> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| Err(Unattested("internal error".into())))
}

/// Runs `f` on tokio's blocking pool; a panic there becomes an error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(format!("backend task failed: {e}").into()))
}

impl Backend for HubBackend {
    async fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> bool {
        // The connection's span learns the device's site here, so one site can be followed through the log.
        let span = tracing::Span::current();
        blocking(move || {
            let site = self.store().ok().and_then(|s| s.devices().device(&hex::encode(key)).ok()).flatten();
            if let Some(site) = site.as_ref().and_then(|r| r.shown_site()) {
                span.record("site", site);
            }
            Ok(self.device_approved(&key))
        })
        .await
        .unwrap_or(false)
    }

    async fn metadata(self: Arc<Self>, name: String) -> Result<Option<Vec<u8>>, BackendError> {
        // Update checks are the hottest path: a copy confirmed on disk within METADATA_FRESH is served from memory.
        if let Some(bytes) = self.fresh_metadata(&name) {
            return Ok(Some(bytes));
        }
        blocking(move || self.read_metadata(&name)).await
    }

    async fn assignment(self: Arc<Self>, device: [u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        blocking(move || self.signed_assignment(&device)).await
    }

    async fn target(self: Arc<Self>, path: String) -> Result<Option<(PathBuf, u64)>, BackendError> {
        blocking(move || self.find_target(&path)).await
    }

    async fn report(self: Arc<Self>, device: [u8; 32], body: Vec<u8>) -> Result<(), BackendError> {
        blocking(move || self.store_report(&device, &body)).await
    }

    async fn telemetry(self: Arc<Self>, device: [u8; 32], batch: Vec<u8>) -> Result<u64, BackendError> {
        blocking(move || self.ingest_telemetry(&device, &batch)).await
    }

    async fn acts_for(self: Arc<Self>, node: [u8; 32], device: [u8; 32]) -> bool {
        blocking(move || Ok(self.site_node_serves(&node, &device))).await.unwrap_or(false)
    }

    fn attestation_required(&self) -> bool {
        self.gate.required()
    }

    async fn challenge(self: Arc<Self>, device: PublicKey) -> Result<Challenge, Unattested> {
        attesting(move || {
            let verifier = self.gate.verifier().map_err(Unattested)?;
            verifier.issue_challenge(device, &mut crate::clock::SystemRng).map_err(|e| Unattested(e.to_string()))
        })
        .await
    }

    async fn relayed_challenge(self: Arc<Self>, node: PublicKey, device: PublicKey) -> Result<Challenge, Unattested> {
        attesting(move || {
            let verifier = self.gate.verifier().map_err(Unattested)?;
            let issued = verifier.issue_relayed_challenge(device, node, &mut crate::clock::SystemRng);
            if let Err(outpost_attestation::ChallengeError::RelayFull { .. }) = &issued {
                self.live.refused("relayed_challenges");
            }
            issued.map_err(|e| Unattested(e.to_string()))
        })
        .await
    }

    async fn appraise(self: Arc<Self>, evidence: Submitted) -> Result<AttestationResult, Unattested> {
        attesting(move || self.appraise_and_record(&evidence.presented())).await
    }

    async fn still_attested(self: Arc<Self>, result: AttestationResult) -> Result<(), Unattested> {
        if !result.is_current(&*self.clock) {
            return Err(Unattested("attestation result expired".into()));
        }
        // From memory while the device-status stamp is the one the revoked set was read at; else read on the pool.
        let revoked = match self.revoked_fast(&result.device) {
            Some(revoked) => revoked,
            None => {
                attesting(move || {
                    self.revoked_slow(&result.device).map_err(|e| {
                        tracing::error!(error = %e, "attestation: reading revoked devices");
                        Unattested("internal error".into())
                    })
                })
                .await?
            }
        };
        if revoked { Err(Unattested("device revoked".into())) } else { Ok(()) }
    }

    async fn enrolment_open(self: Arc<Self>) -> bool {
        blocking(move || Ok(self.tokens_open())).await.unwrap_or(false)
    }

    async fn enroll(
        self: Arc<Self>,
        device: [u8; 32],
        token: String,
        hardware: String,
        tpm: Option<Vec<u8>>,
    ) -> Result<(), BackendError> {
        blocking(move || self.enroll_device(&device, &token, &hardware, tpm.as_deref())).await
    }
}
