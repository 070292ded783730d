//! The device's directory: identity, trusted TUF metadata, the persisted update state, the staging area and the
//! two model slots — and the atomic writes that keep each of them whole across power cuts and `kill -9`.
//!
//! Layout: `identity.key`, `tuf/` (sigstore-tuf's file store; `tuf/root.json` is the trusted root),
//! `state.json` (one update lane per capability, `shared::update::lanes::DeviceState`),
//! `staging/<digest>.opkg.part`, and each capability's two slots `slots/<capability>/a/` and `/b/` (`model.onnx`,
//! `manifest.cbor`, `digest`) — `slots/a/` and `slots/b/` for the lane migrated from a single-model agent.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_shared::Digest;
use outpost_shared::update::lanes::DeviceState;
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

    /// A model slot's directory, as a single-model agent laid it out (the migrated lane's).
    pub fn slot(&self, s: Slot) -> PathBuf {
        self.root.join("slots").join(slot_name(s))
    }

    /// One capability's model slot: `slots/<capability>/a` or `/b`, or [`slot`](Layout::slot) for the lane
    /// migrated from a single-model agent (`legacy`). The capability must be [`lane_name_ok`].
    pub fn lane_slot(&self, capability: &str, legacy: bool, s: Slot) -> PathBuf {
        if legacy { self.slot(s) } else { self.root.join("slots").join(capability).join(slot_name(s)) }
    }
}

fn slot_name(s: Slot) -> &'static str {
    match s {
        Slot::A => "a",
        Slot::B => "b",
    }
}

/// Longest capability name that gets a slots directory of its own.
pub const MAX_LANE_NAME: usize = 128;

/// Whether `capability` can name a slots directory: ASCII letters, digits, `.`, `_` and `-`, not starting with
/// `.`, at most [`MAX_LANE_NAME`] bytes, and neither `a` nor `b` (the migrated lane's own slots).
pub fn lane_name_ok(capability: &str) -> bool {
    !capability.is_empty()
        && capability.len() <= MAX_LANE_NAME
        && !capability.starts_with('.')
        && !matches!(capability, "a" | "b")
        && capability.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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

/// Loads the persisted state of the primary lane (an agent's whole state before it ran several capabilities; a
/// site node's own), or `None` on a fresh device.
pub fn load_state(layout: &Layout) -> std::io::Result<Option<AgentState>> {
    let Some(bytes) = read_state(layout)? else { return Ok(None) };
    let device = DeviceState::from_json(&bytes, "").map_err(invalid_state)?;
    Ok(device.primary_state().cloned())
}

/// Loads the persisted lanes, or `None` on a fresh device. A single-model agent's `state.json` becomes the lane
/// of the capability `legacy_capability` names for it (read from its slots), its slots staying where they are.
pub fn load_device_state(
    layout: &Layout,
    legacy_capability: impl FnOnce(&AgentState) -> String,
) -> std::io::Result<Option<DeviceState>> {
    let Some(bytes) = read_state(layout)? else { return Ok(None) };
    let mut device = DeviceState::from_json(&bytes, "").map_err(invalid_state)?;
    if let Some(lane) = device.lanes.remove("").filter(|l| l.legacy_slots) {
        let capability = legacy_capability(&lane.state);
        device.primary = Some(capability.clone());
        device.lanes.insert(capability, lane);
    }
    Ok(Some(device))
}

/// The directory of the primary lane's `slot` (what [`load_state`] speaks of), as persisted; a fresh device's
/// [`Layout::slot`].
pub fn primary_slot(layout: &Layout, slot: Slot) -> std::io::Result<PathBuf> {
    let device = load_device_state(layout, |_| String::new())?.unwrap_or_default();
    let primary = device.primary.clone().or_else(|| device.lanes.keys().next().cloned());
    Ok(match primary.and_then(|p| device.lanes.get(&p).map(|l| (p.clone(), l.legacy_slots))) {
        Some((capability, legacy)) => layout.lane_slot(&capability, legacy, slot),
        None => layout.slot(slot),
    })
}

/// Persists the lanes atomically.
pub fn save_device_state(layout: &Layout, state: &DeviceState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    write_atomic(&layout.state(), &bytes)
}

fn read_state(layout: &Layout) -> std::io::Result<Option<Vec<u8>>> {
    match fs::read(layout.state()) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(named_io(&layout.state(), e)),
    }
}

fn invalid_state(e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("state.json: {e}"))
}

fn named_io(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Persists the state atomically.
pub fn save_state(layout: &Layout, state: &AgentState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    write_atomic(&layout.state(), &bytes)
}
