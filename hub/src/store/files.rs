//! The one open handle per database file: a process opens each redb file at most once and shares the handle, so
//! the serving hub holds its index and telemetry store for its whole life and nothing reopens them per request.
//!
//! In-process callers that open the same data directory again (tests, simulations) get the handle already open;
//! another process meets redb's file lock and gets a typed "busy" error at once (no sleep-and-retry; only a file this
//! process is still closing is waited for, briefly): while a hub
//! serves, admin commands reach it over its socket (`crate::admin`) instead of opening the store themselves.
//!
//! redb refuses every transaction on a handle that met an I/O error (a full or failing disk) until it is reopened.
//! A [`SharedDb`] does that itself: the next transaction after such an error reopens the file (redb recovers it to
//! its last commit), so a serving hub works again once the disk does, without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, StorageError, TransactionError, WriteTransaction,
};

/// Database files open in this process by canonical path, with how many times each was really opened. Locked only
/// while opening, never per request.
static OPEN: LazyLock<Mutex<HashMap<PathBuf, Opened>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// How many device writes [`SharedDb::device_changes`] keeps: at a thousand writes a second, 100 s of them (about
/// 10 MB); a reader further behind reads the whole table again.
pub const DEVICE_CHANGES_KEPT: usize = 100_000;

/// A file's shared handle (gone once its last user drops it) and how many times it was really opened.
type Opened = (Weak<SharedDb>, u64);

/// One database file's handle, shared by everything in the process that uses the file, reopened after an I/O
/// error (see the module's note).
pub struct SharedDb {
    path: PathBuf,
    /// Set when an I/O error was seen on some store of this process: the next transaction reopens the file.
    suspect: std::sync::atomic::AtomicBool,
    /// `None` between dropping a handle that met an I/O error and opening the file again.
    db: RwLock<Option<Arc<Database>>>,
    /// The keys written to the index's devices table by this process (see [`super::changes`]).
    device_changes: super::changes::ChangeLog,
    /// The index's release records as decoded (see `crate::registry::releases`).
    releases: crate::registry::releases::Cache,
}

impl std::fmt::Debug for SharedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDb").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SharedDb {
    /// The keys written to the devices table (of the index file) by this process, newest [`DEVICE_CHANGES_KEPT`].
    pub fn device_changes(&self) -> &super::changes::ChangeLog {
        &self.device_changes
    }

    /// The release records (of the index file) as held decoded in this process.
    pub fn releases(&self) -> &crate::registry::releases::Cache {
        &self.releases
    }

    /// Begins a write transaction, reopening the file first if an I/O error closed the handle.
    pub fn begin_write(&self) -> Result<WriteTransaction, TransactionError> {
        self.with_handle(|db| db.begin_write())
    }

    /// Begins a read transaction, reopening the file first if an I/O error closed the handle.
    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        self.with_handle(|db| db.begin_read())
    }

    fn with_handle<T>(&self, f: impl Fn(&Database) -> Result<T, TransactionError>) -> Result<T, TransactionError> {
        let mut current = self.db.read().unwrap_or_else(|p| p.into_inner()).clone();
        // redb does not say reliably whether a handle met the error (reads may still begin), so after one every
        // handle is reopened once; this path is only taken after an I/O error.
        if self.suspect.swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Some(db) = current.take()
        {
            current = Some(self.reopen(Some(db))?);
        }
        if let Some(db) = &current {
            match f(db) {
                Err(TransactionError::Storage(StorageError::PreviousIo)) => {}
                other => return other,
            }
        }
        let db = self.reopen(current)?;
        f(db.as_ref())
    }

    /// Drops the handle that met an I/O error (`failed`, given up here) and opens the file again. Until every
    /// transaction still using the old handle has ended, redb's lock makes the open fail; the caller's next
    /// transaction tries again.
    fn reopen(&self, failed: Option<Arc<Database>>) -> Result<Arc<Database>, TransactionError> {
        let failed = failed.map(|f| Arc::as_ptr(&f));
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref()
            && failed.is_none_or(|f| !std::ptr::eq(f, Arc::as_ptr(db)))
        {
            return Ok(db.clone()); // another caller reopened it meanwhile
        }
        *slot = None;
        match Database::open(&self.path) {
            Ok(db) => {
                tracing::warn!(path = %self.path.display(), "reopened {} after an I/O error", self.path.display());
                let db = Arc::new(db);
                *slot = Some(db.clone());
                Ok(db)
            }
            Err(DatabaseError::Storage(e)) => Err(TransactionError::Storage(e)),
            Err(_) => Err(TransactionError::Storage(StorageError::PreviousIo)),
        }
    }
}

/// How many times this process has really opened (not shared) a database file in the directory `dir`; tests use it
/// to prove that nothing reopens the store per request.
pub fn opens(dir: &Path) -> u64 {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    open.iter().filter(|(path, _)| path.parent() == Some(dir.as_path())).map(|(_, (_, n))| n).sum()
}

/// Opens the redb file at `path` (creating it if `create`), or shares the handle this process already holds.
pub fn open_shared(path: &Path, create: bool) -> Result<Arc<SharedDb>, DatabaseError> {
    let key = canonical(path);
    let mut open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = open.entry(key).or_insert_with(|| (Weak::new(), 0));
    if let Some(db) = entry.0.upgrade() {
        return Ok(db);
    }
    let closing_here = entry.1 > 0;
    let db = Arc::new(open_file(path, create, closing_here)?);
    let db = Arc::new(SharedDb {
        path: path.to_owned(),
        suspect: std::sync::atomic::AtomicBool::new(false),
        db: RwLock::new(Some(db)),
        device_changes: super::changes::ChangeLog::new(DEVICE_CHANGES_KEPT),
        releases: crate::registry::releases::Cache::default(),
    });
    *entry = (Arc::downgrade(&db), entry.1 + 1);
    Ok(db)
}

/// How long, at most, an open waits for this process's previous handle on the same file to finish closing.
const CLOSING_POLLS: u32 = 500;
const CLOSING_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Opens (or creates) the file. When this process had it open before (`closing_here`) and redb says it is open
/// still, the last handle is closing — its last transactions ending, its drop running on another thread (a service
/// winding down while the same process starts another on the directory) — and the open waits for that, at most
/// [`CLOSING_POLLS`] × [`CLOSING_POLL`]; a file this process never opened is busy at once (another process's).
fn open_file(path: &Path, create: bool, closing_here: bool) -> Result<Database, DatabaseError> {
    let mut polls = 0;
    loop {
        match if create { Database::create(path) } else { Database::open(path) } {
            Err(DatabaseError::DatabaseAlreadyOpen) if closing_here && polls < CLOSING_POLLS => {
                polls += 1;
                std::thread::sleep(CLOSING_POLL);
            }
            other => return other,
        }
    }
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

/// What is wrong with a database file that redb refused to open because of its contents (not its lock, not the
/// disk): not a redb file, or damaged. `None` for any other error.
pub fn damage(e: &DatabaseError) -> Option<String> {
    match e {
        DatabaseError::Storage(redb::StorageError::Corrupted(problem)) => Some(problem.clone()),
        DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() == std::io::ErrorKind::InvalidData => {
            Some(io.to_string())
        }
        DatabaseError::RepairAborted => Some("it needs a repair that could not run".into()),
        DatabaseError::UpgradeRequired(v) => Some(format!("it is in the old redb file format {v}")),
        _ => None,
    }
}

/// Notes a store error: after an I/O error, every open file of this process is reopened at its next transaction
/// (see [`SharedDb`]). Returns the error.
pub fn note(e: redb::Error) -> redb::Error {
    if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
        let open = OPEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for db in open.values().filter_map(|(weak, _)| weak.upgrade()) {
            db.suspect.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_a_file_this_process_is_still_closing_waits_for_it_instead_of_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let first = open_shared(&path, true).unwrap();
        // The database outliving the shared handle, as while a winding-down service's last task runs a transaction
        // on it, or its drop closes the file on another thread: no handle to share, the file still open.
        let last = first.db.read().unwrap().clone().unwrap();
        drop(first);
        let closing = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(last);
        });
        let again = open_shared(&path, false);
        closing.join().unwrap();
        let again = again.expect("opened once the previous handle closed, not busy");
        assert!(again.begin_read().is_ok());
    }
}
