//! The one open handle per database file: a process opens each redb file at most once and shares the handle, so
//! the serving hub holds its index and telemetry store for its whole life and nothing reopens them per request.
//!
//! In-process callers that open the same data directory again (tests, simulations) get the handle already open;
//! another process meets redb's file lock and gets a typed "busy" error at once (no sleep-and-retry): while a hub
//! serves, admin commands reach it over its socket (`crate::admin`) instead of opening the store themselves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use redb::{Database, DatabaseError};

use crate::storage::{AuditStore, DeviceStore, PackageStore, ReleaseStore, TelemetryEvents};

/// Database files open in this process by canonical path, with how many times each was really opened. Locked only
/// while opening, never per request.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Opened>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// A file's shared handle (gone once its last user drops it) and how many times it was really opened.
type Opened = (Weak<Database>, u64);

/// How many times this process has really opened (not shared) a database file in the directory `dir`; tests use it
/// to prove that nothing reopens the store per request.
pub fn opens(dir: &Path) -> u64 {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    open.iter().filter(|(path, _)| path.parent() == Some(dir.as_path())).map(|(_, (_, n))| n).sum()
}

/// Opens the redb file at `path` (creating it if `create`), or shares the handle this process already holds.
pub fn open_shared(path: &Path, create: bool) -> Result<Arc<Database>, DatabaseError> {
    let key = canonical(path);
    let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = open.entry(key).or_insert_with(|| (Weak::new(), 0));
    if let Some(db) = entry.0.upgrade() {
        return Ok(db);
    }
    let db = Arc::new(if create { Database::create(path)? } else { Database::open(path)? });
    *entry = (Arc::downgrade(&db), entry.1 + 1);
    Ok(db)
}

/// The path with its directory canonicalised (the file itself may not exist yet).
fn canonical(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            parent.canonicalize().map_or_else(|_| path.to_owned(), |p| p.join(name))
        }
        _ => path.to_owned(),
    }
}

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
}

impl Store {
    /// Opens the hub's store in the data directory `dir`.
    pub fn open(dir: &Path, clock: Arc<dyn outpost_shared::clock::Clock>) -> Result<Store, StoreError> {
        let registry = crate::Registry::open(dir, clock.clone())?;
        let telemetry = crate::telemetry::TelemetryStore::open(dir, clock)?;
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
}
