//! The hub's durable state, open once: the registry index and the telemetry store behind the narrow storage traits
//! (`crate::storage`), or with `[store] postgres` the PostgreSQL database the replicas share; the serving hub holds
//! one [`Store`] for its whole life and nothing reopens it per request.
//!
//! Each database file is opened through [`files`]: one handle per file per process, shared, with the log of the
//! device keys written ([`changes`]) and the release records as decoded ([`decoded`]).

pub mod changes;
pub mod decoded;
pub mod files;
pub mod postgres;

use std::path::Path;
use std::sync::Arc;

pub use files::{open_shared, opens};

use crate::storage::{
    AuditEntries, AuditStore, CapabilityStore, CycleStore, DeviceStore, EvaluationStore, PackageStore, ReleaseStore,
    RolloutStore, TelemetryEvents,
};

/// The hub's durable state, open: the registry index (packages, aliases, devices, releases, audit anchor) and the
/// telemetry store. The serving hub opens it once and hands `Arc<Store>` to everything that reads or writes it.
///
/// On PostgreSQL every trait is the database's; the data directory's index still holds what has not moved there
/// (console users and charts, controller records, and the package index `package add` checks lineage in, which
/// also registers the package in the database).
#[derive(Debug)]
pub struct Store {
    registry: crate::Registry,
    backend: Backend,
}

/// Where the traits' state is.
#[derive(Debug)]
enum Backend {
    /// The data directory's redb files.
    Embedded(crate::telemetry::TelemetryStore),
    /// The PostgreSQL database the replicas share.
    Postgres(Arc<postgres::PgStore>),
}

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The registry index could not be opened.
    #[error(transparent)]
    Registry(#[from] crate::RegistryError),
    /// The telemetry store could not be opened.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryStoreError),
    /// hub.toml's `[store] postgres` database could not be opened (unreachable, or its schema not this build's).
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
}

impl Store {
    /// Opens the hub's store in the data directory `dir`, with the default limits.
    pub fn open(dir: &Path, clock: Arc<dyn outpost_shared::clock::Clock>) -> Result<Store, StoreError> {
        Self::open_with(dir, clock, &crate::config::Limits::default())
    }

    /// Opens the hub's store in `dir`, holding to `limits` (`hub.toml`'s `[limits]`).
    pub fn open_with(
        dir: &Path,
        clock: Arc<dyn outpost_shared::clock::Clock>,
        limits: &crate::config::Limits,
    ) -> Result<Store, StoreError> {
        let registry = crate::Registry::open(dir, clock.clone())?;
        let backend = match registry.config().store.postgres.clone() {
            None => Backend::Embedded(
                crate::telemetry::TelemetryStore::open(dir, clock)?
                    .with_max_streams_per_device(limits.max_telemetry_streams_per_device),
            ),
            Some(url) => {
                let blobs = crate::blobs::BlobStore::new(registry.config().store.shared(dir).join("blobs"));
                let pg = postgres::PgStore::open(&url, clock, &postgres::PgLimits::default())?
                    .with_suite_blobs(blobs, limits.max_model_bytes)
                    .with_max_streams_per_device(limits.max_telemetry_streams_per_device);
                Backend::Postgres(Arc::new(pg))
            }
        };
        Ok(Store { registry, backend })
    }

    /// The registry index itself, for what has not moved onto the storage traits yet (console users, controller
    /// records, `package add`'s checks).
    pub fn registry(&self) -> &crate::Registry {
        &self.registry
    }

    /// The PostgreSQL store the replicas share, when hub.toml sets `[store] postgres`.
    pub fn postgres(&self) -> Option<&Arc<postgres::PgStore>> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Embedded(_) => None,
        }
    }

    /// Registered packages and aliases.
    pub fn packages(&self) -> &dyn PackageStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// Capabilities.
    pub fn capabilities(&self) -> &dyn CapabilityStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// Evaluation suites and records.
    pub fn evaluations(&self) -> &dyn EvaluationStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// Challenger cycle records.
    pub fn cycles(&self) -> &dyn CycleStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// Devices.
    pub fn devices(&self) -> &dyn DeviceStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// Staged releases.
    pub fn releases(&self) -> &dyn ReleaseStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// Devices and release records together, for staged rollouts and the director.
    pub fn rollouts(&self) -> &dyn RolloutStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// The audit anchor.
    pub fn audit(&self) -> &dyn AuditStore {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(_) => &self.registry,
        }
    }

    /// Telemetry events.
    pub fn telemetry(&self) -> &dyn TelemetryEvents {
        match &self.backend {
            Backend::Postgres(pg) => &**pg,
            Backend::Embedded(telemetry) => telemetry,
        }
    }

    /// The audit log's entries: on PostgreSQL its table; else the data directory's `audit.log`, opened for this
    /// caller and its whole chain checked, as every append has always done (nothing is appended to a tampered log,
    /// and a log moved aside is not written to through an old handle).
    pub fn audit_log(&self) -> Result<Box<dyn AuditEntries>, crate::audit::AuditError> {
        if let Backend::Postgres(pg) = &self.backend {
            return Ok(Box::new(PgEntries(pg.clone())));
        }
        Ok(Box::new(crate::audit::SharedAuditLog::open(&crate::audit::default_path(self.registry.dir()))?))
    }
}

/// The PostgreSQL store's audit log entries, as a box of their own.
struct PgEntries(Arc<postgres::PgStore>);

impl AuditEntries for PgEntries {
    fn audit_append(
        &self,
        at: outpost_shared::clock::UnixSeconds,
        actor: &str,
        action: outpost_shared::audit::Action,
        subject: &str,
        detail: &str,
    ) -> Result<outpost_shared::audit::Entry, crate::audit::AuditError> {
        self.0.audit_append(at, actor, action, subject, detail)
    }

    fn audit_entries(&self, from: u64) -> Result<Vec<outpost_shared::audit::Entry>, crate::audit::AuditError> {
        self.0.audit_entries(from)
    }
}
