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
