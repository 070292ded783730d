//! The agent's TUF client: one function builds sigstore-tuf's `Updater` over a [`Transport`] (the hub over QUIC,
//! or a static HTTP(S) mirror) with the device's trusted-metadata store.
//!
//! The update driver and `outpost-tuf-conformance` both go through here, so the conformance suite tests the path
//! the agent runs. The store keeps `root.json`, `timestamp.json`... as the exact verified bytes; the trusted root
//! pinned at `init` is only ever replaced by a newer root that chains from it. Every file is written only when its
//! bytes change, atomically and durably (fsync of file and directory), and the trusted root has a second copy
//! ([`LAST_GOOD_ROOT`]) read when `root.json` is unreadable, so no power cut leaves the device without an anchor.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sigstore_tuf::{FileStore, MetadataStore, Updater};

use crate::transport::{Transport, TufRepository};

/// The file in the store that holds the trusted root.
pub const TRUSTED_ROOT: &str = "root.json";

/// A second copy of the trusted root, written after `root.json` each time it changes: whichever write a power cut
/// interrupts, one of the two is whole.
pub const LAST_GOOD_ROOT: &str = "root.last-good.json";

/// Why the trusted TUF state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// The trusted root could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The root is not TUF root metadata, or does not verify against itself.
    #[error("trusted root: {0}")]
    Root(#[from] sigstore_tuf::Error),
}

impl From<TufError> for sigstore_tuf::Error {
    fn from(e: TufError) -> Self {
        match e {
            TufError::Io { path, source } => sigstore_tuf::Error::io(format!("writing {}", path.display()), source),
            TufError::Root(e) => e,
        }
    }
}

/// Writes `root_json` as the trusted root in `dir` (atomically), after checking it is root metadata. Trust on
/// first use: the caller obtained it out of band.
pub fn pin_root(dir: &Path, root_json: &[u8]) -> Result<(), TufError> {
    sigstore_tuf::Metadata::<sigstore_tuf::Root>::from_slice(root_json)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TufError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    store_root(dir, root_json)
}

/// Writes the trusted root and then its last good copy, each only if it changed.
fn store_root(dir: &Path, root_json: &[u8]) -> Result<(), TufError> {
    for name in [TRUSTED_ROOT, LAST_GOOD_ROOT] {
        let path = dir.join(name);
        write_if_changed(&path, root_json).map_err(|source| TufError::Io { path, source })?;
    }
    Ok(())
}

/// Writes `bytes` to `path` unless it holds them already: a temp file with a name of its own (a site node runs
/// several updaters on one store), fsync, rename, fsync the directory.
fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static TEMP: AtomicU64 = AtomicU64::new(0);
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), TEMP.fetch_add(1, Ordering::Relaxed)));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The trusted root's bytes: `root.json`, or its last good copy when `root.json` is missing, torn or not root
/// metadata.
fn trusted_root(dir: &Path) -> Result<Vec<u8>, TufError> {
    let path = dir.join(TRUSTED_ROOT);
    let first = std::fs::read(&path).map_err(|source| TufError::Io { path, source }).and_then(|bytes| {
        sigstore_tuf::Metadata::<sigstore_tuf::Root>::from_slice(&bytes)?;
        Ok(bytes)
    });
    match first {
        Ok(bytes) => Ok(bytes),
        Err(e) => std::fs::read(dir.join(LAST_GOOD_ROOT))
            .ok()
            .filter(|b| sigstore_tuf::Metadata::<sigstore_tuf::Root>::from_slice(b).is_ok())
            .ok_or(e),
    }
}

/// An `Updater` reading through `transport`, starting from the trusted root in `dir` (and any newer roots it
/// stored there) and writing every verified metadata file back to `dir`. Call `refresh` on it before asking for
/// targets.
pub fn updater<T: Transport + ?Sized + 'static>(transport: Arc<T>, dir: &Path) -> Result<Updater, TufError> {
    let root = trusted_root(dir)?;
    Ok(Updater::new(TufRepository::new(transport), &root)?
        .with_store(Store { files: FileStore::new(dir), dir: dir.to_owned() }))
}

/// sigstore-tuf's `FileStore`, minus the version-prefixed copies it also writes at the top level
/// (`41.snapshot.json` beside `snapshot.json`): nothing reads them back, and on a device they would pile up, one
/// per snapshot version, for ever. Root history (`root_history/N.root.json`, read back to fast-forward a restart)
/// and cached targets (`targets/...`) live in subdirectories and are kept. Writes go through
/// [`write_if_changed`]: the updater stores `root.json` at every check, and rewriting it each time would put the
/// trust anchor at risk of a power cut for nothing.
struct Store {
    files: FileStore,
    dir: PathBuf,
}

impl MetadataStore for Store {
    fn load(&self, name: &str) -> sigstore_tuf::Result<Option<Vec<u8>>> {
        self.files.load(name)
    }

    fn store(&self, name: &str, bytes: &[u8]) -> sigstore_tuf::Result<()> {
        let versioned =
            name.split_once('.').is_some_and(|(head, _)| !head.is_empty() && head.bytes().all(|b| b.is_ascii_digit()));
        if versioned && !name.contains('/') {
            return Ok(());
        }
        let rel = Path::new(name);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(sigstore_tuf::Error::Malformed(format!("unsafe cache name {name:?}")));
        }
        if name == TRUSTED_ROOT {
            return Ok(store_root(&self.dir, bytes)?);
        }
        let path = self.dir.join(rel);
        write_if_changed(&path, bytes).map_err(|e| sigstore_tuf::Error::io(format!("writing {}", path.display()), e))
    }
}

/// Key ids of the targets keys whose signatures over the delegated role listing `target_path` verify, read from
/// the store the updater just refreshed (so only metadata it verified). Site policies' `required_signers` rule
/// judges these. Only Ed25519 keys (the hub's) are checked; any other signature does not count (fail closed).
pub fn signers(store: &Path, target_path: &str) -> Vec<String> {
    use sigstore_tuf::{Metadata, Targets};
    let read = |name: &str| std::fs::read(store.join(name)).ok().and_then(|b| Metadata::<Targets>::from_slice(&b).ok());
    let Some(top) = read("targets.json") else { return Vec::new() };
    let Some(delegations) = &top.signed().delegations else { return Vec::new() };
    for role in &delegations.roles {
        if !role.matches_path(target_path).unwrap_or(false) {
            continue;
        }
        let Some(meta) = read(&format!("{}.json", role.name)) else { continue };
        if !meta.signed().targets.contains_key(target_path) {
            continue;
        }
        return meta
            .signatures()
            .iter()
            .filter(|s| role.keyids.contains(&s.keyid))
            .filter(|s| {
                delegations.keys.get(&s.keyid).is_some_and(|k| {
                    k.keytype == "ed25519" && ed25519_ok(&k.keyval.public, &s.sig, meta.signed_canonical())
                })
            })
            .map(|s| s.keyid.clone())
            .collect();
    }
    Vec::new()
}

fn ed25519_ok(public_hex: &str, sig_hex: &str, message: &[u8]) -> bool {
    let (mut public, mut sig) = ([0u8; 32], [0u8; 64]);
    if hex::decode_to_slice(public_hex, &mut public).is_err() || hex::decode_to_slice(sig_hex, &mut sig).is_err() {
        return false;
    }
    ed25519_dalek::VerifyingKey::from_bytes(&public)
        .is_ok_and(|k| k.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok())
}
