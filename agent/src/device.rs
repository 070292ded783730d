//! The device's directory: identity, trusted TUF metadata, the persisted update state, the staging area and the
//! two model slots — and the atomic writes that keep each of them whole across power cuts and `kill -9`.
//!
//! Layout: `identity.key`, `tuf/` (sigstore-tuf's file store; `tuf/root.json` is the trusted root),
//! `state.json`, `staging/<digest>.opkg.part`, `slots/a/`, `slots/b/` (`model.onnx`, `manifest.cbor`, `digest`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_shared::Digest;
use outpost_shared::update::{AgentState, Slot};

/// Paths inside a device directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout rooted at `root`.
    pub fn new(root: &Path) -> Self {
        Layout { root: root.to_owned() }
    }

    /// The device directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The device's Ed25519 identity key file (mode 0600).
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    /// sigstore-tuf's metadata store.
    pub fn tuf(&self) -> PathBuf {
        self.root.join("tuf")
    }

    /// The persisted update state.
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// Where a package downloads to (resumable).
    pub fn staging(&self, d: &Digest) -> PathBuf {
        self.root.join("staging").join(format!("{}.opkg.part", d.to_hex()))
    }

    /// The boot counter attestation reports: bumped once per start of the agent or site node.
    pub fn bootcount(&self) -> PathBuf {
        self.root.join("bootcount")
    }

    /// The one-time enrolment token `init --token` stored; removed once the hub has enrolled this device.
    pub fn enrolment_token(&self) -> PathBuf {
        self.root.join("enrol.token")
    }

    /// The last site policy that loaded (kept so a broken policy file never leaves the device without one).
    pub fn policy(&self) -> PathBuf {
        self.root.join("policy")
    }

    /// A site node's verified blob cache.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// A model slot's directory.
    pub fn slot(&self, s: Slot) -> PathBuf {
        self.root.join("slots").join(match s {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// Length and SHA-256 of a file, streamed (a package is never held whole in memory to hash it).
pub fn hash_file(path: &Path) -> std::io::Result<(u64, Digest)> {
    let (digest, len) = Digest::of_reader(File::open(path)?)?;
    Ok((len, digest))
}

/// Writes `bytes` to `path` atomically: temp file beside it, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Loads the persisted state, or `None` on a fresh device.
pub fn load_state(layout: &Layout) -> std::io::Result<Option<AgentState>> {
    match fs::read(layout.state()) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("state.json: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Persists the state atomically.
pub fn save_state(layout: &Layout, state: &AgentState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    write_atomic(&layout.state(), &bytes)
}
