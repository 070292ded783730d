//! The hub's audit log on disk: an append-only file of hash-chained entries (`outpost_shared::audit`), one JSON
//! record per line, each append written whole and fsynced before it returns.
//!
//! Appends take an exclusive lock on the file and re-read what another process appended meanwhile, so several
//! hub commands can share one log and it stays one chain. A last line without its newline is an append that never
//! returned (a crash mid-write): [`verify`] reports it, and [`AuditLog::open`] cuts it off before appending.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use outpost_shared::audit::{self, Action, Anchor, Broken, Chain, Entry};
use outpost_shared::clock::UnixSeconds;

/// Longest record accepted, in bytes (a line without its newline). Actors, subjects and details are short.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Why the audit log could not be read, verified or extended.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A line is not an audit record (garbled, unknown field, too long): the file was edited or damaged.
    #[error("{}:{line}: not an audit record: {problem}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number (entry index + 1).
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The chain is broken: an entry was edited, removed or reordered, or the log does not reach its anchor.
    #[error("{}: {broken}", path.display())]
    Broken {
        /// The file.
        path: PathBuf,
        /// Where and how (the entry index is the line number − 1).
        broken: Broken,
    },
    /// The PostgreSQL store failed (`crate::store::postgres`).
    #[error(transparent)]
    Postgres(#[from] crate::store::postgres::PgError),
    /// A PostgreSQL row is not the entry it should be (undecodable, or its hash column disagrees): damaged or edited.
    #[error("audit log on PostgreSQL, entry {seq}: {problem}")]
    CorruptRow {
        /// The entry's sequence number.
        seq: u64,
        /// What is wrong.
        problem: String,
    },
    /// An entry to append would exceed [`MAX_RECORD_BYTES`] (the caller's detail is too long).
    #[error("audit record of {len} bytes exceeds the limit of {MAX_RECORD_BYTES}")]
    TooLong {
        /// The record's length.
        len: usize,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AuditError {
    let path = path.to_owned();
    move |source| AuditError::Io { op, path, source }
}

/// What [`verify`] found in a log that holds together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries in the log.
    pub entries: u64,
    /// Its newest entry: record it, and pass it to a later `verify` to detect truncation or a rewritten chain.
    pub head: Option<Anchor>,
    /// Whether the file ends in an incomplete record (an append interrupted before it returned; not an entry).
    pub incomplete_tail: bool,
}

/// The entries of the log at `path`, oldest first, and whether it ends in an incomplete record. A missing file is
/// an empty log. Every complete line must be a record; the chain is not checked here (see [`verify`]).
pub fn read(path: &Path) -> Result<(Vec<Entry>, bool), AuditError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes).map_err(io_err("read", path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((vec![], false)),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    parse(&bytes, path)
}

fn parse(bytes: &[u8], path: &Path) -> Result<(Vec<Entry>, bool), AuditError> {
    let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
    // After the last newline: empty for a complete file, a torn record otherwise.
    let tail = lines.pop().unwrap_or_default();
    let malformed = |line: usize, problem: String| AuditError::Malformed { path: path.to_owned(), line, problem };
    let entries = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if l.len() > MAX_RECORD_BYTES {
                return Err(malformed(i + 1, format!("{} bytes, above the limit of {MAX_RECORD_BYTES}", l.len())));
            }
            serde_json::from_slice::<Entry>(l).map_err(|e| malformed(i + 1, e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((entries, !tail.is_empty()))
}

/// Verifies the log at `path`: every line a record, every link intact, and (with `anchor`) the anchored entry
/// present and unchanged. An incomplete last record is reported in [`Verified`], not as a break.
pub fn verify(path: &Path, anchor: Option<&Anchor>) -> Result<Verified, AuditError> {
    let (entries, incomplete_tail) = read(path)?;
    let head =
        audit::verify(&entries, anchor).map_err(|broken| AuditError::Broken { path: path.to_owned(), broken })?;
    Ok(Verified { entries: entries.len() as u64, head, incomplete_tail })
}

/// Verifies the whole log behind `log` (the PostgreSQL table: `AuditEntries` on `PgStore`) as [`verify`] does the
/// file: every link intact and (with `anchor`) the anchored entry present and unchanged; a break names `place`.
pub fn verify_entries(
    log: &dyn crate::storage::AuditEntries,
    anchor: Option<&Anchor>,
    place: &Path,
) -> Result<Verified, AuditError> {
    let entries = log.audit_entries(0)?;
    let head =
        audit::verify(&entries, anchor).map_err(|broken| AuditError::Broken { path: place.to_owned(), broken })?;
    Ok(Verified { entries: entries.len() as u64, head, incomplete_tail: false })
}

/// The record of `entry` as the file stores it (one JSON line, without its newline), refused above
/// [`MAX_RECORD_BYTES`]; the PostgreSQL log holds entries to the same bound.
pub(crate) fn record_of(entry: &Entry, path: &Path) -> Result<Vec<u8>, AuditError> {
    let line = serde_json::to_vec(entry).map_err(|e| AuditError::Io {
        op: "encode an entry for",
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;
    if line.len() > MAX_RECORD_BYTES {
        return Err(AuditError::TooLong { len: line.len() });
    }
    Ok(line)
}

/// The audit log, open for appending.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    chain: Chain,
    head: Option<Anchor>,
    /// File length after our last read or write: a different length means another process appended.
    len: u64,
}

impl AuditLog {
    /// Opens the log at `path`, creating it (and fsyncing its directory) if missing. Refuses a log whose chain is
    /// broken: nothing is appended to a tampered log. An incomplete last record is cut off.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let created = !path.exists();
        let file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io_err("open", path))?;
        if created && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory of", path))?;
        }
        let mut log = AuditLog { path: path.to_owned(), file, chain: Chain::new(), head: None, len: 0 };
        log.locked(AuditLog::reload)?;
        Ok(log)
    }

    /// Reads and verifies the whole file (under the caller's lock), cuts an incomplete tail, and continues the
    /// chain after its last entry.
    fn reload(&mut self) -> Result<(), AuditError> {
        let mut bytes = Vec::new();
        (&self.file).seek(SeekFrom::Start(0)).map_err(io_err("seek", &self.path))?;
        (&self.file).read_to_end(&mut bytes).map_err(io_err("read", &self.path))?;
        let (entries, torn) = parse(&bytes, &self.path)?;
        self.head =
            audit::verify(&entries, None).map_err(|broken| AuditError::Broken { path: self.path.clone(), broken })?;
        let mut len = bytes.len() as u64;
        if torn {
            len = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i as u64 + 1);
            self.file.set_len(len).map_err(io_err("cut the incomplete record of", &self.path))?;
            self.file.sync_all().map_err(io_err("fsync", &self.path))?;
        }
        self.len = len;
        self.chain = Chain::after(entries.last());
        Ok(())
    }

    /// Runs `f` holding the exclusive lock on the file (other processes appending wait).
    fn locked<T>(&mut self, f: impl FnOnce(&mut AuditLog) -> Result<T, AuditError>) -> Result<T, AuditError> {
        self.file.lock().map_err(io_err("lock", &self.path))?;
        let out = f(self);
        let unlocked = self.file.unlock().map_err(io_err("unlock", &self.path));
        let out = out?;
        unlocked?;
        Ok(out)
    }

    /// Appends an entry for `action` by `actor` on `subject` at `at`, fsynced before it returns.
    pub fn append(
        &mut self,
        at: UnixSeconds,
        actor: &str,
        action: Action,
        subject: &str,
        detail: &str,
    ) -> Result<Entry, AuditError> {
        self.locked(|log| {
            let on_disk = log.file.metadata().map_err(io_err("stat", &log.path))?.len();
            if on_disk != log.len {
                // Another process appended (or something else changed the file): start again from what is there.
                log.reload()?;
            }
            let mut chain = log.chain;
            let entry = chain.append(at, actor, action, subject, detail);
            let mut line = record_of(&entry, &log.path)?;
            line.push(b'\n');
            // One write on an O_APPEND descriptor: the record lands whole at the end, or (crash) as a torn tail.
            log.file.write_all(&line).map_err(io_err("append to", &log.path))?;
            log.file.sync_data().map_err(io_err("fsync", &log.path))?;
            log.len += line.len() as u64;
            log.chain = chain;
            log.head = Some(entry.anchor());
            Ok(entry)
        })
    }

    /// The newest entry's anchor (`None` for an empty log).
    pub fn head(&self) -> Option<Anchor> {
        self.head
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The log as [`crate::storage::AuditEntries`]: one open handle, its appends taken in turn by the process's
/// threads (other processes still serialise on the file's lock).
#[derive(Debug)]
pub struct SharedAuditLog(std::sync::Mutex<AuditLog>);

impl SharedAuditLog {
    /// Opens the log at `path` as [`AuditLog::open`] does.
    pub fn open(path: &Path) -> Result<SharedAuditLog, AuditError> {
        Ok(SharedAuditLog(std::sync::Mutex::new(AuditLog::open(path)?)))
    }

    /// The open log; a thread that panicked mid-append left the file as a crash would (the next append reloads).
    fn log(&self) -> std::sync::MutexGuard<'_, AuditLog> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl crate::storage::AuditEntries for SharedAuditLog {
    fn audit_append(
        &self,
        at: UnixSeconds,
        actor: &str,
        action: Action,
        subject: &str,
        detail: &str,
    ) -> Result<Entry, AuditError> {
        self.log().append(at, actor, action, subject, detail)
    }

    fn audit_entries(&self, from: u64) -> Result<Vec<Entry>, AuditError> {
        let path = self.log().path.clone();
        let (entries, _) = read(&path)?;
        Ok(entries.into_iter().filter(|e| e.seq >= from).collect())
    }
}

/// The log's file in a hub data directory: `<data-dir>/audit.log`.
pub fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.log")
}
