//! The hub's durable state, open once: the registry index and the telemetry store behind the narrow storage traits
//! (`crate::storage`); the serving hub holds one [`Store`] for its whole life and nothing reopens it per request.
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
    TelemetryEvents,
};

/// The hub's durable state, open: the registry index (packages, aliases, devices, releases, audit anchor) and the
/// telemetry store. The serving hub opens it once and hands `Arc<Store>` to everything that reads or writes it.
#[derive(Debug)]
pub struct Store {
    registry: crate::Registry,
    telemetry: crate::telemetry::TelemetryStore,
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
    /// hub.toml names a PostgreSQL database, which this version does not serve from yet: opening the embedded
    /// store instead would split the hub's state between the two without anyone noticing.
    #[error(
        "{}: `[store] postgres` is set, but this outpost-hub keeps its state only in the embedded store so far \
         (`outpost-hub migrate` is the one command that uses the database); remove the key to use the data directory",
        dir.join(crate::config::CONFIG_FILE).display()
    )]
    PostgresNotServed {
        /// The data directory.
        dir: std::path::PathBuf,
    },
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
        if registry.config().store.postgres.is_some() {
            return Err(StoreError::PostgresNotServed { dir: dir.to_owned() });
        }
        let telemetry = crate::telemetry::TelemetryStore::open(dir, clock)?
            .with_max_streams_per_device(limits.max_telemetry_streams_per_device);
        Ok(Store { registry, telemetry })
    }

    /// The registry index itself, for what has not moved onto the storage traits yet (rollouts, the director).
    pub fn registry(&self) -> &crate::Registry {
        &self.registry
    }

    /// Registered packages and aliases.
    pub fn packages(&self) -> &dyn PackageStore {
        &self.registry
    }

    /// Capabilities.
    pub fn capabilities(&self) -> &dyn CapabilityStore {
        &self.registry
    }

    /// Evaluation suites and records.
    pub fn evaluations(&self) -> &dyn EvaluationStore {
        &self.registry
    }

    /// Challenger cycle records.
    pub fn cycles(&self) -> &dyn CycleStore {
        &self.registry
    }

    /// Devices.
    pub fn devices(&self) -> &dyn DeviceStore {
        &self.registry
    }

    /// Staged releases.
    pub fn releases(&self) -> &dyn ReleaseStore {
        &self.registry
    }

    /// The audit anchor.
    pub fn audit(&self) -> &dyn AuditStore {
        &self.registry
    }

    /// Telemetry events.
    pub fn telemetry(&self) -> &dyn TelemetryEvents {
        &self.telemetry
    }

    /// The audit log's entries: the data directory's `audit.log`, opened for this caller and its whole chain
    /// checked, as every append has always done (nothing is appended to a tampered log, and a log moved aside is
    /// not written to through an old handle).
    pub fn audit_log(&self) -> Result<Box<dyn AuditEntries>, crate::audit::AuditError> {
        Ok(Box::new(crate::audit::SharedAuditLog::open(&crate::audit::default_path(self.registry.dir()))?))
    }
}
