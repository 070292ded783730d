//! Content-addressed, write-once blob store: `blobs/sha256/<2 hex>/<64 hex>`.
//!
//! A blob is written to a temporary file, fsynced, hard-linked into place (which fails rather than replace an
//! existing file), and its directory fsynced. A digest already present is never written again, so a blob file,
//! once visible, never changes through this code.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_shared::Digest;

/// A filesystem operation on a blob failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct BlobError {
    /// What was being done.
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError {
    let path = path.to_owned();
    move |source| BlobError { op, path, source }
}

/// Whether `put` wrote the blob or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Newly written.
    Stored,
    /// The digest was present; nothing was written.
    AlreadyPresent,
}

/// What rehashing a blob found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobStatus {
    /// Present with the recorded length and digest.
    Intact,
    /// Present, but its bytes hash to something else (or its length differs).
    Tampered {
        /// The digest of the bytes found.
        actual: Digest,
        /// The length found.
        len: u64,
    },
    /// No file at the blob's path.
    Missing,
}

/// The blob store rooted at `<data-dir>/blobs`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BlobStore { root: root.into() }
    }

    /// Where the blob with digest `d` lives.
    pub fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.to_hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Stores `bytes` under their digest unless already present. Never overwrites.
    pub fn put(&self, bytes: &[u8]) -> Result<(Digest, PutOutcome), BlobError> {
        let digest = Digest::of(bytes);
        let dest = self.path_of(&digest);
        if dest.exists() {
            return Ok((digest, PutOutcome::AlreadyPresent));
        }
        let shard = dest.parent().unwrap_or(&self.root).to_owned();
        let tmp_dir = self.root.join("tmp");
        for dir in [&shard, &tmp_dir] {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        let tmp = tmp_dir.join(format!(
            "{}.{}.{}",
            digest.to_hex(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(bytes).map_err(io_err("write", &tmp))?;
            set_read_only(&f, &tmp)?;
            f.sync_all().map_err(io_err("fsync", &tmp))?;
            // `hard_link` refuses to replace an existing file, unlike `rename`: a racing writer of the same digest
            // leaves the first copy in place.
            match fs::hard_link(&tmp, &dest) {
                Ok(()) => {
                    sync_dir(&shard)?;
                    Ok(PutOutcome::Stored)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(PutOutcome::AlreadyPresent),
                Err(e) => Err(io_err("link", &dest)(e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        result.map(|outcome| (digest, outcome))
    }

    /// Reads a whole blob and checks it against its digest.
    pub fn read_verified(&self, d: &Digest) -> Result<Result<Vec<u8>, BlobStatus>, BlobError> {
        let path = self.path_of(d);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(BlobStatus::Missing)),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let actual = Digest::of(&bytes);
        if actual == *d { Ok(Ok(bytes)) } else { Ok(Err(BlobStatus::Tampered { actual, len: bytes.len() as u64 })) }
    }

    /// Rehashes the blob `d`, streaming, and compares digest and length. Returns the status and bytes read.
    pub fn check(&self, d: &Digest, expected_len: u64) -> Result<(BlobStatus, u64), BlobError> {
        let path = self.path_of(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((BlobStatus::Missing, 0)),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let (actual, len) = Digest::of_reader(file).map_err(io_err("read", &path))?;
        let status =
            if actual == *d && len == expected_len { BlobStatus::Intact } else { BlobStatus::Tampered { actual, len } };
        Ok((status, len))
    }
}

fn set_read_only(f: &File, path: &Path) -> Result<(), BlobError> {
    let mut perms = f.metadata().map_err(io_err("stat", path))?.permissions();
    perms.set_readonly(true);
    f.set_permissions(perms).map_err(io_err("chmod", path))
}

/// Fsyncs a directory so a rename or link into it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync directory", dir))
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
