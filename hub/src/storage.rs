//! The hub's storage seams: narrow traits with what the serving backend and the admin commands call on the store,
//! implemented by the redb store (`Registry`, `TelemetryStore`, the audit log file's `SharedAuditLog`) and by
//! PostgreSQL (`crate::store::postgres::PgStore`).
//!
//! Rollouts and the director take [`RolloutStore`] (devices and release records together).

use std::sync::Arc;

use outpost_shared::Digest;
use outpost_shared::Manifest;
use outpost_shared::audit::{Action, Anchor, Entry};
use outpost_shared::clock::UnixSeconds;
use outpost_shared::rng::Rng;
use outpost_shared::telemetry::Batch;
use outpost_shared::update::StateReport;

use outpost_shared::capability::Capability;
use outpost_shared::challenger::CycleRecord;
use outpost_shared::evaluation::{EvaluationRecord, SuiteManifest};

use crate::audit::AuditError;
use crate::registry::releases::Changed;
use crate::registry::{
    AliasEvent, AttestationRecord, CapabilityAdded, CapabilityCheck, CapabilityRecord, DeviceRecord, EnrolError,
    PackageRecord, Registry, RegistryError, SuiteAdded, TpmRecord,
};
use crate::rollouts::ReleaseRecord;
use crate::telemetry::{Filter, Group, GroupBy, IngestOutcome, TelemetryStore, TelemetryStoreError};

/// Registered packages and their aliases.
pub trait PackageStore: Send + Sync {
    /// The package with this digest, if registered.
    fn record(&self, d: &Digest) -> Result<Option<PackageRecord>, RegistryError>;
    /// Every registered package.
    fn list(&self) -> Result<Vec<PackageRecord>, RegistryError>;
    /// The digest a reference (digest, unique prefix, name@version or alias) names.
    fn resolve(&self, reference: &str) -> Result<Digest, RegistryError>;
    /// A package's manifest, as stored (CBOR) and parsed.
    fn manifest(&self, d: &Digest) -> Result<(Vec<u8>, Manifest), RegistryError>;
    /// Points `alias` at `d`, recording the change.
    fn alias_set(&self, alias: &str, d: &Digest) -> Result<AliasEvent, RegistryError>;
    /// Every alias and the package it names.
    fn aliases(&self) -> Result<Vec<(String, Digest)>, RegistryError>;
    /// Every change of `alias`, oldest first.
    fn alias_history(&self, alias: &str) -> Result<Vec<AliasEvent>, RegistryError>;
}

/// Capabilities: the boundary packages of one capability live in, and its revisions.
pub trait CapabilityStore: Send + Sync {
    /// Registers a capability or a new revision of it (a changed contract is refused).
    fn capability_add(&self, cap: &Capability) -> Result<(CapabilityRecord, CapabilityAdded), RegistryError>;
    /// The current definition of a capability, if registered.
    fn capability(&self, name: &str) -> Result<Option<CapabilityRecord>, RegistryError>;
    /// Every registered capability, by name.
    fn capabilities(&self) -> Result<Vec<CapabilityRecord>, RegistryError>;
    /// Every revision of a capability, oldest first.
    fn capability_history(&self, name: &str) -> Result<Vec<CapabilityRecord>, RegistryError>;
    /// Whether a package with this manifest may be published under its capability (owners named, still fits).
    fn publish_check(&self, m: &Manifest) -> Result<CapabilityCheck, RegistryError>;
}

/// Evaluation suites and evaluation records, both write-once.
pub trait EvaluationStore: Send + Sync {
    /// Registers the suite in a directory (`suite.toml` and its arrays); the same suite again changes nothing.
    fn suite_add(&self, dir: &std::path::Path) -> Result<SuiteAdded, RegistryError>;
    /// The suite a name, digest or digest prefix names.
    fn suite(&self, reference: &str) -> Result<(Digest, SuiteManifest), RegistryError>;
    /// Every suite, by name.
    fn suites(&self) -> Result<Vec<(Digest, SuiteManifest)>, RegistryError>;
    /// Stores a record under its id (never replacing one).
    fn evaluation_put(&self, record: &EvaluationRecord) -> Result<Digest, RegistryError>;
    /// A package's records, oldest first.
    fn evaluations(&self, package: &Digest) -> Result<Vec<(Digest, EvaluationRecord)>, RegistryError>;
}

/// Challenger cycle records, write-once.
pub trait CycleStore: Send + Sync {
    /// Stores a cycle's record under its id (never replacing one).
    fn cycle_put(&self, record: &CycleRecord) -> Result<Digest, RegistryError>;
    /// The cycle an id or unique prefix names.
    fn cycle(&self, reference: &str) -> Result<(Digest, CycleRecord), RegistryError>;
    /// Every cycle, oldest first.
    fn cycles(&self) -> Result<Vec<(Digest, CycleRecord)>, RegistryError>;
}

/// Devices: the allow-list, enrolment and what devices last told the hub.
pub trait DeviceStore: Send + Sync {
    /// The device with this key (hex), if known.
    fn device(&self, key: &str) -> Result<Option<DeviceRecord>, RegistryError>;
    /// Every known device.
    fn devices(&self) -> Result<Vec<DeviceRecord>, RegistryError>;
    /// The sequence number of the next device write: taken before [`DeviceStore::devices`], it is where
    /// [`DeviceStore::devices_changed_since`] starts.
    fn device_change_head(&self) -> u64;
    /// The keys of the devices written since sequence number `seq` (or that too much was written to say).
    fn devices_changed_since(&self, seq: u64) -> crate::store::changes::Since;
    /// Approves a device on `channel`.
    fn device_approve(&self, key: &str, channel: &str) -> Result<DeviceRecord, RegistryError>;
    /// Refuses a device from now on.
    fn device_revoke(&self, key: &str) -> Result<DeviceRecord, RegistryError>;
    /// Sets a device's site (and whether it is that site's node).
    fn device_set_site(&self, key: &str, site: Option<&str>, node: bool) -> Result<DeviceRecord, RegistryError>;
    /// Records (or forgets) the TPM a device attests with.
    fn device_set_tpm(&self, key: &str, tpm: Option<TpmRecord>) -> Result<DeviceRecord, RegistryError>;
    /// Records an attestation outcome on the device.
    fn device_attested(&self, key: &str, outcome: AttestationRecord) -> Result<DeviceRecord, RegistryError>;
    /// Records a device's state report.
    fn device_reported(&self, key: &str, report: &StateReport) -> Result<DeviceRecord, RegistryError>;
    /// Creates a one-time enrolment token; returns it (only its hash is stored).
    fn token_create(
        &self,
        channel: &str,
        site: Option<&str>,
        valid_secs: u64,
        rng: &mut dyn Rng,
    ) -> Result<String, RegistryError>;
    /// Whether any enrolment token is still usable.
    fn tokens_open(&self) -> Result<bool, RegistryError>;
    /// Enrols a device presenting `token`; the inner error is a refusal of the device.
    fn enroll(
        &self,
        key: &str,
        token: &str,
        hardware: &str,
        tpm: Option<TpmRecord>,
    ) -> Result<Result<DeviceRecord, EnrolError>, RegistryError>;
    /// Whether the site node `node` serves `device`.
    fn site_node_serves(&self, node: &str, device: &str) -> Result<bool, RegistryError>;
    /// Offers `digest` again to a device that rolled back from it.
    fn device_retry(&self, key: &str, digest: &Digest) -> Result<DeviceRecord, RegistryError>;
    /// Adds (or updates) a secondary behind a gateway device.
    fn device_secondary_add(
        &self,
        key: &str,
        device_id: &str,
        hardware_id: &str,
    ) -> Result<DeviceRecord, RegistryError>;
    /// Stops assigning firmware to a secondary.
    fn device_secondary_remove(&self, key: &str, device_id: &str) -> Result<DeviceRecord, RegistryError>;
    /// Bumps the device's assignment version and returns its record: versions only rise, each bump gets its own.
    fn device_next_assignment(&self, key: &str) -> Result<DeviceRecord, RegistryError>;
}

/// Staged releases under their rollout plans.
pub trait ReleaseStore: Send + Sync {
    /// Stores a release's record under `id`, replacing what was there.
    fn release_put(&self, id: &str, record: &ReleaseRecord) -> Result<(), RegistryError>;
    /// Every release record, by id.
    fn releases(&self) -> Result<Vec<(String, ReleaseRecord)>, RegistryError>;
    /// Every release record, by id, as held (no copy of a rollout over every device).
    fn releases_shared(&self) -> Result<Vec<(String, Arc<ReleaseRecord>)>, RegistryError>;
    /// One release record, as held.
    fn release(&self, id: &str) -> Result<Option<Arc<ReleaseRecord>>, RegistryError>;
    /// Changes the record `id` with `change` (called once), holding it against every other writer (every replica's)
    /// until what `change` says it touched is written; `false`: no such release.
    fn release_change(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut ReleaseRecord) -> Changed,
    ) -> Result<bool, RegistryError>;
}

/// What staged rollouts and the director read and write: devices and release records (`crate::rollouts`,
/// `crate::director`), on whichever backend holds both.
pub trait RolloutStore: DeviceStore + ReleaseStore {}

impl<T: DeviceStore + ReleaseStore> RolloutStore for T {}

/// The anchor that ties the audit log's newest entry to the store.
pub trait AuditStore: Send + Sync {
    /// Records the audit log's newest anchor.
    fn audit_anchor_put(&self, anchor: &Anchor) -> Result<(), RegistryError>;
    /// The audit log's newest anchor as last recorded.
    fn audit_anchor(&self) -> Result<Option<Anchor>, RegistryError>;
}

/// The audit log's entries: one hash chain, whichever replica appends (the admin commands append through it,
/// `Store::audit_log`; on PostgreSQL `audit verify` and `audit show` read it too, `crate::audit::verify_entries`).
pub trait AuditEntries: Send + Sync {
    /// Appends the entry for `action` by `actor` on `subject` at `at`, linked to the newest entry whoever wrote it;
    /// durable before it returns.
    fn audit_append(
        &self,
        at: UnixSeconds,
        actor: &str,
        action: Action,
        subject: &str,
        detail: &str,
    ) -> Result<Entry, AuditError>;
    /// The entries from sequence number `from` on, oldest first (check them with `outpost_shared::audit::verify`).
    fn audit_entries(&self, from: u64) -> Result<Vec<Entry>, AuditError>;
}

/// Devices' telemetry events.
pub trait TelemetryEvents: Send + Sync {
    /// Stores a device's checked batch durably, attributed to its site, release and stage.
    fn ingest(
        &self,
        device: &str,
        site: Option<&str>,
        release: Option<&str>,
        stage: Option<u32>,
        batch: &Batch,
    ) -> Result<IngestOutcome, TelemetryStoreError>;
    /// Events grouped by `by`, filtered.
    fn aggregate(&self, by: GroupBy, filter: &Filter) -> Result<Vec<Group>, TelemetryStoreError>;
    /// Deletes events received longer ago than `retention`; returns how many went.
    fn apply_retention(&self, retention: std::time::Duration) -> Result<u64, TelemetryStoreError>;
}

impl PackageStore for Registry {
    fn record(&self, d: &Digest) -> Result<Option<PackageRecord>, RegistryError> {
        Registry::record(self, d)
    }
    fn list(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        Registry::list(self)
    }
    fn resolve(&self, reference: &str) -> Result<Digest, RegistryError> {
        Registry::resolve(self, reference)
    }
    fn manifest(&self, d: &Digest) -> Result<(Vec<u8>, Manifest), RegistryError> {
        Registry::manifest(self, d)
    }
    fn alias_set(&self, alias: &str, d: &Digest) -> Result<AliasEvent, RegistryError> {
        Registry::alias_set(self, alias, d)
    }
    fn aliases(&self) -> Result<Vec<(String, Digest)>, RegistryError> {
        Registry::aliases(self)
    }
    fn alias_history(&self, alias: &str) -> Result<Vec<AliasEvent>, RegistryError> {
        Registry::alias_history(self, alias)
    }
}

impl CapabilityStore for Registry {
    fn capability_add(&self, cap: &Capability) -> Result<(CapabilityRecord, CapabilityAdded), RegistryError> {
        Registry::capability_add(self, cap)
    }
    fn capability(&self, name: &str) -> Result<Option<CapabilityRecord>, RegistryError> {
        Registry::capability(self, name)
    }
    fn capabilities(&self) -> Result<Vec<CapabilityRecord>, RegistryError> {
        Registry::capabilities(self)
    }
    fn capability_history(&self, name: &str) -> Result<Vec<CapabilityRecord>, RegistryError> {
        Registry::capability_history(self, name)
    }
    fn publish_check(&self, m: &Manifest) -> Result<CapabilityCheck, RegistryError> {
        Registry::publish_check(self, m)
    }
}

impl EvaluationStore for Registry {
    fn suite_add(&self, dir: &std::path::Path) -> Result<SuiteAdded, RegistryError> {
        Registry::suite_add(self, dir)
    }
    fn suite(&self, reference: &str) -> Result<(Digest, SuiteManifest), RegistryError> {
        Registry::suite(self, reference)
    }
    fn suites(&self) -> Result<Vec<(Digest, SuiteManifest)>, RegistryError> {
        Registry::suites(self)
    }
    fn evaluation_put(&self, record: &EvaluationRecord) -> Result<Digest, RegistryError> {
        Registry::evaluation_put(self, record)
    }
    fn evaluations(&self, package: &Digest) -> Result<Vec<(Digest, EvaluationRecord)>, RegistryError> {
        Registry::evaluations(self, package)
    }
}

impl CycleStore for Registry {
    fn cycle_put(&self, record: &CycleRecord) -> Result<Digest, RegistryError> {
        Registry::cycle_put(self, record)
    }
    fn cycle(&self, reference: &str) -> Result<(Digest, CycleRecord), RegistryError> {
        Registry::cycle(self, reference)
    }
    fn cycles(&self) -> Result<Vec<(Digest, CycleRecord)>, RegistryError> {
        Registry::cycles(self)
    }
}

impl DeviceStore for Registry {
    fn device(&self, key: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        Registry::device(self, key)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        Registry::devices(self)
    }
    fn device_change_head(&self) -> u64 {
        Registry::device_change_head(self)
    }
    fn devices_changed_since(&self, seq: u64) -> crate::store::changes::Since {
        Registry::devices_changed_since(self, seq)
    }
    fn device_approve(&self, key: &str, channel: &str) -> Result<DeviceRecord, RegistryError> {
        Registry::device_approve(self, key, channel)
    }
    fn device_revoke(&self, key: &str) -> Result<DeviceRecord, RegistryError> {
        Registry::device_revoke(self, key)
    }
    fn device_set_site(&self, key: &str, site: Option<&str>, node: bool) -> Result<DeviceRecord, RegistryError> {
        Registry::device_set_site(self, key, site, node)
    }
    fn device_set_tpm(&self, key: &str, tpm: Option<TpmRecord>) -> Result<DeviceRecord, RegistryError> {
        Registry::device_set_tpm(self, key, tpm)
    }
    fn device_attested(&self, key: &str, outcome: AttestationRecord) -> Result<DeviceRecord, RegistryError> {
        Registry::device_attested(self, key, outcome)
    }
    fn device_reported(&self, key: &str, report: &StateReport) -> Result<DeviceRecord, RegistryError> {
        Registry::device_reported(self, key, report)
    }
    fn token_create(
        &self,
        channel: &str,
        site: Option<&str>,
        valid_secs: u64,
        rng: &mut dyn Rng,
    ) -> Result<String, RegistryError> {
        Registry::token_create(self, channel, site, valid_secs, rng)
    }
    fn tokens_open(&self) -> Result<bool, RegistryError> {
        Registry::tokens_open(self)
    }
    fn enroll(
        &self,
        key: &str,
        token: &str,
        hardware: &str,
        tpm: Option<TpmRecord>,
    ) -> Result<Result<DeviceRecord, EnrolError>, RegistryError> {
        Registry::enroll(self, key, token, hardware, tpm)
    }
    fn site_node_serves(&self, node: &str, device: &str) -> Result<bool, RegistryError> {
        Registry::site_node_serves(self, node, device)
    }
    fn device_retry(&self, key: &str, digest: &Digest) -> Result<DeviceRecord, RegistryError> {
        Registry::device_retry(self, key, digest)
    }
    fn device_secondary_add(
        &self,
        key: &str,
        device_id: &str,
        hardware_id: &str,
    ) -> Result<DeviceRecord, RegistryError> {
        Registry::device_secondary_add(self, key, device_id, hardware_id)
    }
    fn device_secondary_remove(&self, key: &str, device_id: &str) -> Result<DeviceRecord, RegistryError> {
        Registry::device_secondary_remove(self, key, device_id)
    }
    fn device_next_assignment(&self, key: &str) -> Result<DeviceRecord, RegistryError> {
        Registry::device_next_assignment(self, key)
    }
}

impl ReleaseStore for Registry {
    fn release_put(&self, id: &str, record: &ReleaseRecord) -> Result<(), RegistryError> {
        Registry::release_put(self, id, record)
    }
    fn releases(&self) -> Result<Vec<(String, ReleaseRecord)>, RegistryError> {
        Registry::releases(self)
    }
    fn releases_shared(&self) -> Result<Vec<(String, Arc<ReleaseRecord>)>, RegistryError> {
        Registry::releases_shared(self)
    }
    fn release(&self, id: &str) -> Result<Option<Arc<ReleaseRecord>>, RegistryError> {
        Registry::release(self, id)
    }
    fn release_change(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut ReleaseRecord) -> Changed,
    ) -> Result<bool, RegistryError> {
        Ok(Registry::release_modify(self, id, |r| ((), change(r)))?.is_some())
    }
}

impl AuditStore for Registry {
    fn audit_anchor_put(&self, anchor: &Anchor) -> Result<(), RegistryError> {
        Registry::audit_anchor_put(self, anchor)
    }
    fn audit_anchor(&self) -> Result<Option<Anchor>, RegistryError> {
        Registry::audit_anchor(self)
    }
}

impl TelemetryEvents for TelemetryStore {
    fn ingest(
        &self,
        device: &str,
        site: Option<&str>,
        release: Option<&str>,
        stage: Option<u32>,
        batch: &Batch,
    ) -> Result<IngestOutcome, TelemetryStoreError> {
        TelemetryStore::ingest(self, device, site, release, stage, batch)
    }
    fn aggregate(&self, by: GroupBy, filter: &Filter) -> Result<Vec<Group>, TelemetryStoreError> {
        TelemetryStore::aggregate(self, by, filter)
    }
    fn apply_retention(&self, retention: std::time::Duration) -> Result<u64, TelemetryStoreError> {
        TelemetryStore::apply_retention(self, retention)
    }
}
