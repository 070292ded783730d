//! Repository operations on `<data-dir>/repository`: generating keys and first metadata, publishing, signing
//! pending high-risk releases, unpublishing, re-signing snapshot and timestamp, rotation and static export.
//!
//! Readers see a publish whole or not at all: `timestamp.json` is the commit point. A change writes its role files
//! and a snapshot under new version names first (all fsynced), then swaps the timestamp in with one rename; what
//! the committed timestamp and snapshot pin is the repository, and files of higher versions left by an
//! interrupted write are never built on (the next write replaces them). Writers take `repository/.lock`, so the
//! serving hub's re-signing and an admin command (in or out of that process) never interleave. Rotating an online
//! key keeps a working repository at every step: the metadata is signed by the old and the new key before the new
//! root is written, and the new key replaces the old one only after.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use outpost_shared::clock::{UnixSeconds, format_rfc3339};
use outpost_shared::rng::Rng;
use outpost_shared::{Digest, Manifest};

use super::metadata::{
    DelegatedRole, Delegations, Extra, MetaFile, Pins, RoleKeys, Root, RootKeys, SPEC_VERSION, Signed, TargetEntry,
    Targets, director_document, expires, from_json, root_body, to_json,
};
use super::{
    DIRECTOR_TARGET, HIGH_RISK_ROLE, Key, STANDARD_ROLE, TufError, add_signature, io, role_for, sign, target_entry,
    target_path,
};
use crate::blobs;
use crate::registry::PackageRecord;

/// Expiry periods for each role, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expiries {
    /// Root metadata.
    pub root_secs: u64,
    /// Top-level and delegated targets metadata.
    pub targets_secs: u64,
    /// Snapshot metadata.
    pub snapshot_secs: u64,
    /// Timestamp metadata.
    pub timestamp_secs: u64,
    /// The serving hub re-signs snapshot and timestamp when less than this remains.
    pub resign_margin_secs: u64,
}

impl Default for Expiries {
    fn default() -> Self {
        Expiries {
            root_secs: 365 * 86_400,
            targets_secs: 90 * 86_400,
            snapshot_secs: 7 * 86_400,
            timestamp_secs: 86_400,
            resign_margin_secs: 6 * 3600,
        }
    }
}

/// Options for `keys generate`.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Number of root keys.
    pub root_keys: usize,
    /// Root signature threshold.
    pub root_threshold: usize,
    /// Number of targets keys (at least 2: high-risk releases need two distinct signers).
    pub targets_keys: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { root_keys: 1, root_threshold: 1, targets_keys: 2 }
    }
}

/// What a release publish or sign did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Listed and signed to threshold: installable now.
    Published {
        /// TUF target path.
        path: String,
        /// The role that lists it.
        role: String,
    },
    /// Listed, but the role needs more signatures before devices will see it.
    AwaitingSignatures {
        /// TUF target path.
        path: String,
        /// Signatures so far.
        have: usize,
        /// Threshold.
        need: usize,
    },
}

/// The TUF repository in `<data-dir>/repository` with online keys in `<data-dir>/keys`.
#[derive(Debug)]
pub struct TufRepo {
    dir: PathBuf,
    expiries: Expiries,
    lock_wait: Duration,
}

/// How long a repository write waits for another one to finish before it gives up with [`TufError::Busy`].
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting write looks at the lock again.
const LOCK_POLL: Duration = Duration::from_millis(20);
/// The lock file, under the data directory.
const LOCK_FILE: &str = "repository/.lock";

/// Held while one operation writes the repository; dropping it lets the next one in (the OS drops it with the
/// process, so a crashed writer never leaves the repository locked).
#[derive(Debug)]
#[must_use]
pub struct RepoLock {
    _file: fs::File,
}

/// What readers see: the timestamp's version, the snapshot it pins, and the targets role versions that pins.
#[derive(Debug, Default)]
struct Committed {
    timestamp: u64,
    snapshot: u64,
    roles: std::collections::BTreeMap<String, u64>,
}

impl TufRepo {
    /// The repository of the hub in `data_dir`.
    pub fn new(data_dir: &Path, expiries: Expiries) -> TufRepo {
        TufRepo { dir: data_dir.to_owned(), expiries, lock_wait: DEFAULT_LOCK_WAIT }
    }

    /// The same repository, whose writes wait at most `wait` for another writer.
    pub fn with_lock_wait(mut self, wait: Duration) -> TufRepo {
        self.lock_wait = wait;
        self
    }

    /// Takes the repository's write lock, waiting up to the lock wait for the writer holding it (the serving hub
    /// re-signing, or another command).
    ///
    /// # Errors
    /// [`TufError::Busy`] when it stays held; [`TufError::Io`] when the lock file cannot be opened.
    pub fn lock(&self) -> Result<RepoLock, TufError> {
        let path = self.dir.join(LOCK_FILE);
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        let file =
            fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io("open", &path))?;
        let mut waited = Duration::ZERO;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(RepoLock { _file: file }),
                Err(fs::TryLockError::WouldBlock) if waited < self.lock_wait => {
                    std::thread::sleep(LOCK_POLL);
                    waited += LOCK_POLL;
                }
                Err(fs::TryLockError::WouldBlock) => return Err(TufError::Busy { path, waited: self.lock_wait }),
                Err(fs::TryLockError::Error(e)) => return Err(io("lock", &path)(e)),
            }
        }
    }

    /// Directory of signed metadata.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("repository/metadata")
    }

    /// Directory of target files (hash-prefixed, as consistent snapshots require).
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("repository/targets")
    }

    fn pending_dir(&self) -> PathBuf {
        self.dir.join("repository/pending")
    }

    fn online_key_path(&self, role: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{role}.key"))
    }

    /// The configured expiry periods.
    pub fn expiries(&self) -> Expiries {
        self.expiries
    }

    /// Whether keys have been generated.
    pub fn exists(&self) -> bool {
        self.metadata_dir().join("1.root.json").exists()
    }

    fn require(&self) -> Result<(), TufError> {
        if self.exists() { Ok(()) } else { Err(TufError::NoRepository { dir: self.dir.clone() }) }
    }

    /// Loads an online key (snapshot, timestamp, director).
    pub fn online_key(&self, role: &str) -> Result<Key, TufError> {
        Key::load(&self.online_key_path(role))
    }

    /// Generates the keys and the first version of every role. Offline keys go to `offline_dir`.
    pub fn generate(
        &self,
        offline_dir: &Path,
        opts: GenerateOptions,
        rng: &mut dyn Rng,
        now: UnixSeconds,
    ) -> Result<Vec<PathBuf>, TufError> {
        let _lock = self.lock()?;
        if self.exists() {
            return Err(TufError::AlreadyExists { dir: self.dir.clone() });
        }
        if opts.root_threshold == 0 || opts.root_threshold > opts.root_keys {
            return Err(TufError::Invalid(format!(
                "root threshold {} must be between 1 and the number of root keys ({})",
                opts.root_threshold, opts.root_keys
            )));
        }
        if opts.targets_keys < 2 {
            return Err(TufError::Invalid("at least 2 targets keys: high-risk releases need two signers".into()));
        }
        let roots: Vec<Key> = (0..opts.root_keys).map(|_| Key::generate(rng)).collect();
        let targets: Vec<Key> = (0..opts.targets_keys).map(|_| Key::generate(rng)).collect();
        let [snapshot, timestamp, director] = [(); 3].map(|_| Key::generate(rng));

        let mut written = Vec::new();
        for (i, k) in roots.iter().enumerate() {
            let p = offline_dir.join(format!("root-{}.key", i + 1));
            k.save(&p, "root")?;
            written.push(p);
        }
        for (i, k) in targets.iter().enumerate() {
            let p = offline_dir.join(format!("targets-{}.key", i + 1));
            k.save(&p, "targets")?;
            written.push(p);
        }
        for (role, k) in [("snapshot", &snapshot), ("timestamp", &timestamp), ("director", &director)] {
            let p = self.online_key_path(role);
            k.save(&p, role)?;
            written.push(p);
        }

        let keys = RootKeys {
            roots: &roots,
            threshold: opts.root_threshold,
            targets: &targets,
            snapshot: &snapshot,
            timestamp: &timestamp,
        };
        let root = root_body(1, now, self.expiries.root_secs, keys);
        let root_refs: Vec<&Key> = roots.iter().take(opts.root_threshold.max(roots.len())).collect();
        fs::create_dir_all(self.metadata_dir()).map_err(io("create directory", &self.metadata_dir()))?;
        self.write_meta("1.root.json", &sign(&root, &root_refs)?)?;
        self.write_meta("root.json", &sign(&root, &root_refs)?)?;

        // The director's key is a target of the top-level role, so rotating it goes through TUF.
        let director_target = self.store_target(DIRECTOR_TARGET, &director_document(&director))?;
        let targets_keys: Vec<String> = targets.iter().map(|k| k.keyid.clone()).collect();
        let delegate = |name: &str, threshold, paths: &[&str]| DelegatedRole {
            name: name.into(),
            keyids: targets_keys.clone(),
            threshold,
            terminating: true,
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            extra: Extra::new(),
        };
        let mut top = Targets::empty(now, self.expiries.targets_secs);
        top.targets.insert(DIRECTOR_TARGET.into(), director_target);
        top.delegations = Some(Delegations {
            keys: targets.iter().map(|k| (k.keyid.clone(), k.tuf_public())).collect(),
            roles: vec![
                delegate(STANDARD_ROLE, 1, &["packages/low/*", "packages/medium/*"]),
                delegate(HIGH_RISK_ROLE, 2, &["packages/high/*"]),
            ],
            extra: Extra::new(),
        });
        let all_targets: Vec<&Key> = targets.iter().collect();
        self.write_meta("1.targets.json", &sign(&top, &all_targets[..1])?)?;
        for role in [STANDARD_ROLE, HIGH_RISK_ROLE] {
            let body = Targets::empty(now, self.expiries.targets_secs);
            let signers = if role == HIGH_RISK_ROLE { &all_targets[..2] } else { &all_targets[..1] };
            self.write_meta(&format!("1.{role}.json"), &sign(&body, signers)?)?;
        }
        self.commit(now, &[("targets", 1), (STANDARD_ROLE, 1), (HIGH_RISK_ROLE, 1)], None)?;
        Ok(written)
    }

    /// Lists a registered package as a target of its risk tier's role, signed with `key`.
    /// High-risk packages wait for a second, distinct key (`sign`).
    pub fn publish(
        &self,
        record: &PackageRecord,
        manifest: &Manifest,
        channel: &str,
        key: &Key,
        key_path: &Path,
        now: UnixSeconds,
    ) -> Result<PublishOutcome, TufError> {
        self.require()?;
        let _lock = self.lock()?;
        if channel.is_empty() || !channel.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(TufError::Invalid(format!("channel `{channel}` must be letters, digits, `-`, `_`, `.`")));
        }
        let role = role_for(manifest.risk_tier);
        let path = target_path(manifest);
        let package_path = crate::blobs::BlobStore::new(self.dir.join("blobs")).path_of(&record.digest);
        self.link_target(&path, &package_path, &record.digest)?;

        let envelope = self.role_envelope(role)?;
        let mut signed = envelope.signed;
        let mut entry = target_entry(record, manifest);
        let existing = signed.targets.get(&path).and_then(TargetEntry::package);
        let mut channels = existing.map(|p| p.channels.clone()).unwrap_or_default();
        if !channels.iter().any(|c| c == channel) {
            channels.push(channel.into());
        }
        channels.sort();
        // When devices could first see it, in seconds (site policies' minimum soak time counts from here).
        let released_at = existing.map(|p| p.released_at).filter(|&at| at > 0).unwrap_or(now);
        signed.bump(now, self.expiries.targets_secs);
        if let Some(custom) = entry.custom.as_mut() {
            custom.outpost.channels = channels;
            // Publish order: later publishes sort later even within one second.
            custom.outpost.published_at = now * 1_000_000 + signed.version;
            custom.outpost.released_at = released_at;
        }
        signed.targets.insert(path.clone(), entry);
        let mut envelope = Signed { signed, signatures: Vec::new() };
        self.authorise(role, key, key_path)?;
        add_signature(&mut envelope, key)?;
        self.stage_or_commit(role, envelope, &path, now)
    }

    /// Adds a second signature to a pending high-risk release.
    pub fn sign_pending(
        &self,
        digest: &Digest,
        key: &Key,
        key_path: &Path,
        now: UnixSeconds,
    ) -> Result<PublishOutcome, TufError> {
        self.require()?;
        let _lock = self.lock()?;
        let pending = self.pending_dir().join(format!("{HIGH_RISK_ROLE}.json"));
        let mut envelope: Signed<Targets> = match fs::read(&pending) {
            Ok(b) => from_json(&b).map_err(|e| damaged(&pending, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(TufError::NothingPending(*digest)),
            Err(e) => return Err(io("read", &pending)(e)),
        };
        let path = envelope.signed.path_of(digest).ok_or(TufError::NothingPending(*digest))?;
        self.authorise(HIGH_RISK_ROLE, key, key_path)?;
        add_signature(&mut envelope, key)?;
        self.stage_or_commit(HIGH_RISK_ROLE, envelope, &path, now)
    }

    /// Key ids of the signatures on the committed role metadata that lists `digest`, in signing order (the first
    /// is the publisher). Empty if no committed role lists it.
    pub fn signers_of(&self, digest: &Digest) -> Result<Vec<String>, TufError> {
        for role in [STANDARD_ROLE, HIGH_RISK_ROLE] {
            let v = self.latest_version(role)?;
            let meta: Signed<Targets> = self.read_meta(&format!("{v}.{role}.json"))?;
            if meta.signed.path_of(digest).is_some() {
                return Ok(meta.signatures.into_iter().map(|s| s.keyid).collect());
            }
        }
        Ok(Vec::new())
    }

    /// Removes a package from its role's targets, signed with `key`. Devices stop seeing it at their next refresh.
    pub fn unpublish(&self, digest: &Digest, key: &Key, key_path: &Path, now: UnixSeconds) -> Result<String, TufError> {
        self.require()?;
        let _lock = self.lock()?;
        for role in [STANDARD_ROLE, HIGH_RISK_ROLE] {
            let envelope = self.role_envelope(role)?;
            let mut signed = envelope.signed;
            if let Some(path) = signed.path_of(digest) {
                self.authorise(role, key, key_path)?;
                signed.targets.remove(&path);
                signed.bump(now, self.expiries.targets_secs);
                let mut env = Signed { signed, signatures: Vec::new() };
                add_signature(&mut env, key)?;
                self.stage_or_commit(role, env, &path, now)?;
                return Ok(path);
            }
        }
        Err(TufError::NotPublished(*digest))
    }

    fn stage_or_commit(
        &self,
        role: &str,
        envelope: Signed<Targets>,
        path: &str,
        now: UnixSeconds,
    ) -> Result<PublishOutcome, TufError> {
        let need = self.threshold(role)?;
        let have = envelope.signatures.len();
        let pending = self.pending_dir().join(format!("{role}.json"));
        if have < need {
            fs::create_dir_all(self.pending_dir()).map_err(io("create directory", &self.pending_dir()))?;
            blobs::write_atomic(&pending, &to_json(&envelope)?)?;
            return Ok(PublishOutcome::AwaitingSignatures { path: path.into(), have, need });
        }
        let version = envelope.signed.version;
        self.write_meta(&format!("{version}.{role}.json"), &envelope)?;
        self.commit(now, &[(role, version)], None)?;
        // Only once the release is committed: a failed commit keeps the pending signatures for the retry.
        let _ = fs::remove_file(&pending);
        Ok(PublishOutcome::Published { path: path.into(), role: role.into() })
    }

    /// The envelope to build on for `role`: a pending one if present, else the latest published.
    fn role_envelope(&self, role: &str) -> Result<Signed<Targets>, TufError> {
        let pending = self.pending_dir().join(format!("{role}.json"));
        if let Ok(b) = fs::read(&pending) {
            return from_json(&b).map_err(|e| damaged(&pending, e));
        }
        self.read_meta(&format!("{}.{role}.json", self.latest_version(role)?))
    }

    fn threshold(&self, role: &str) -> Result<usize, TufError> {
        let top = self.top_targets()?;
        top.signed.delegation(role).map(|r| r.threshold).ok_or_else(|| TufError::Damaged {
            name: "targets.json".into(),
            problem: format!("no delegation `{role}`"),
        })
    }

    /// Whether `key` is one of `role`'s keys (a targets key holder for the delegated risk-tier roles); the error
    /// names the authorised key ids.
    pub fn authorise(&self, role: &str, key: &Key, key_path: &Path) -> Result<(), TufError> {
        let authorised: Vec<String> = if role == STANDARD_ROLE || role == HIGH_RISK_ROLE {
            self.top_targets()?.signed.delegation(role).map(|r| r.keyids.clone()).unwrap_or_default()
        } else {
            let root: Signed<Root> = self.read_meta("root.json")?;
            root.signed.roles.get(role).map(|r| r.keyids.clone()).unwrap_or_default()
        };
        if authorised.contains(&key.keyid) {
            Ok(())
        } else {
            Err(TufError::NotAuthorised {
                path: key_path.into(),
                keyid: key.keyid.clone(),
                role: role.into(),
                authorised,
            })
        }
    }

    /// Re-signs snapshot and timestamp if either expires within the margin, or is not signed by the key the
    /// current root names for it (after an interrupted rotation, which this also completes). Returns whether it
    /// did.
    pub fn refresh_online(&self, now: UnixSeconds) -> Result<bool, TufError> {
        self.require()?;
        let _lock = self.lock()?;
        let finished_rotation = self.recover()?;
        let committed = self.committed()?;
        let ts: Signed<Pins> = self.read_meta("timestamp.json")?;
        let snap: Signed<Pins> = self.read_meta(&format!("{}.snapshot.json", committed.snapshot))?;
        let soon = format_rfc3339(now.saturating_add(self.expiries.resign_margin_secs));
        let expiring = |v: &Signed<Pins>| v.signed.expires.as_str() <= soon.as_str();
        if finished_rotation || expiring(&ts) || expiring(&snap) {
            self.commit(now, &[], None)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The versions readers see now (all zero before the first timestamp).
    fn committed(&self) -> Result<Committed, TufError> {
        let ts: Signed<Pins> = match self.read_meta("timestamp.json") {
            Err(TufError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Committed::default());
            }
            other => other?,
        };
        let pinned = |p: &Signed<Pins>, name: &str, file: &str| {
            p.signed
                .meta
                .get(name)
                .map(|m| m.version)
                .ok_or_else(|| TufError::Damaged { name: file.into(), problem: format!("it pins no {name}") })
        };
        let snapshot = pinned(&ts, "snapshot.json", "timestamp.json")?;
        let file = format!("{snapshot}.snapshot.json");
        let snap: Signed<Pins> = self.read_meta(&file)?;
        let mut roles = std::collections::BTreeMap::new();
        for role in ["targets", STANDARD_ROLE, HIGH_RISK_ROLE] {
            roles.insert(role.to_owned(), pinned(&snap, &format!("{role}.json"), &file)?);
        }
        Ok(Committed { timestamp: ts.signed.version, snapshot, roles })
    }

    /// Commits: a new snapshot pinning the committed targets roles with `changed` ones at their new versions
    /// (already written), then the timestamp pinning it, which is what makes them visible. `also` signs one online
    /// role's metadata with a second key too (a rotation's new key, before the root naming it is written).
    fn commit(&self, now: UnixSeconds, changed: &[(&str, u64)], also: Option<(&str, &Key)>) -> Result<(), TufError> {
        let committed = self.committed()?;
        let snapshot_key = self.online_key("snapshot")?;
        let timestamp_key = self.online_key("timestamp")?;
        let signers = |role: &str, key: &Key| -> Vec<Key> {
            match also {
                Some((r, extra)) if r == role && extra.keyid != key.keyid => vec![key.clone(), extra.clone()],
                _ => vec![key.clone()],
            }
        };
        let pin = |version| MetaFile { version, length: None, hashes: None };
        let mut meta = std::collections::BTreeMap::new();
        for role in ["targets", STANDARD_ROLE, HIGH_RISK_ROLE] {
            let version = changed.iter().find(|(r, _)| *r == role).map(|(_, v)| *v);
            let version = version.or_else(|| committed.roles.get(role).copied()).ok_or_else(|| TufError::Damaged {
                name: "snapshot".into(),
                problem: format!("no version of {role} to pin"),
            })?;
            meta.insert(format!("{role}.json"), pin(version));
        }
        let snap_version = committed.snapshot + 1;
        let snapshot = Pins {
            kind: "snapshot".into(),
            spec_version: SPEC_VERSION.into(),
            version: snap_version,
            expires: expires(now, self.expiries.snapshot_secs),
            meta,
            extra: Extra::new(),
        };
        let snap_bytes = to_json(&sign(&snapshot, &signers("snapshot", &snapshot_key).iter().collect::<Vec<_>>())?)?;
        self.write_meta_bytes(&format!("{snap_version}.snapshot.json"), &snap_bytes)?;
        let ts_version = committed.timestamp + 1;
        let snapshot_pin = MetaFile {
            version: snap_version,
            length: Some(snap_bytes.len() as u64),
            hashes: Some([("sha256".to_owned(), Digest::of(&snap_bytes).to_hex())].into()),
        };
        let timestamp = Pins {
            kind: "timestamp".into(),
            spec_version: SPEC_VERSION.into(),
            version: ts_version,
            expires: expires(now, self.expiries.timestamp_secs),
            meta: [("snapshot.json".to_owned(), snapshot_pin)].into(),
            extra: Extra::new(),
        };
        let timestamp_signers = signers("timestamp", &timestamp_key);
        self.write_meta("timestamp.json", &sign(&timestamp, &timestamp_signers.iter().collect::<Vec<_>>())?)
    }

    fn next_key_path(&self, role: &str) -> PathBuf {
        self.dir.join("keys").join(format!("{role}.key.next"))
    }

    /// Finishes or undoes an online-key rotation that was interrupted, and puts `root.json` back in step with the
    /// newest `N.root.json` (what clients walk). A `ROLE.key.next` the current root names replaces the live key
    /// (the rotation got past its root write); one it does not name is removed (it did not). Returns whether a
    /// rotation was finished, so the caller re-signs with the new key.
    fn recover(&self) -> Result<bool, TufError> {
        let newest = self.metadata_dir().join(format!("{}.root.json", self.latest_version("root")?));
        let bytes = fs::read(&newest).map_err(io("read", &newest))?;
        let current = self.metadata_dir().join("root.json");
        if fs::read(&current).ok().as_deref() != Some(bytes.as_slice()) {
            blobs::write_atomic(&current, &bytes)?;
        }
        let root: Signed<Root> = from_json(&bytes).map_err(|e| damaged(&newest, e))?;
        let mut finished = false;
        for role in ["snapshot", "timestamp"] {
            let next = self.next_key_path(role);
            if !next.exists() {
                continue;
            }
            let waiting = Key::load(&next)?.keyid;
            let named = root.signed.roles.get(role).is_some_and(|r| r.keyids.contains(&waiting));
            if named {
                self.install_next_key(role, root.signed.version.saturating_sub(1))?;
                finished = true;
            } else {
                fs::remove_file(&next).map_err(io("remove", &next))?;
            }
        }
        Ok(finished)
    }

    /// The rotated key `ROLE.key.next` becomes `ROLE.key`; the old one is kept as `ROLE.key.retired-vN` (root
    /// version `N` named it).
    fn install_next_key(&self, role: &str, old_root_version: u64) -> Result<(), TufError> {
        let (live, next) = (self.online_key_path(role), self.next_key_path(role));
        let retired = self.dir.join("keys").join(format!("{role}.key.retired-v{old_root_version}"));
        if live.exists() && !retired.exists() {
            fs::hard_link(&live, &retired).map_err(io("link", &retired))?;
        }
        fs::rename(&next, &live).map_err(io("rename", &next))?;
        let keys = self.dir.join("keys");
        Ok(blobs::sync_dir(&keys)?)
    }

    /// Replaces the director key: a new online key, listed as the `director/director.json` target by a new
    /// top-level targets version signed with `targets_key` (an offline key authorised for the targets role).
    /// Devices trust the new key once they have refreshed TUF; the old key's documents stop verifying.
    pub fn rotate_director(
        &self,
        targets_key: &Key,
        targets_key_path: &Path,
        rng: &mut dyn Rng,
        now: UnixSeconds,
    ) -> Result<PathBuf, TufError> {
        self.require()?;
        let _lock = self.lock()?;
        self.authorise("targets", targets_key, targets_key_path)?;
        let path = self.online_key_path("director");
        let version = self.latest_version("targets")?;
        let retired = self.dir.join("keys").join(format!("director.key.retired-t{version}"));
        fs::rename(&path, &retired).map_err(io("rename", &path))?;
        let director = Key::generate(rng);
        director.save(&path, "director")?;
        let entry = self.store_target(DIRECTOR_TARGET, &director_document(&director))?;
        let top: Signed<Targets> = self.read_meta(&format!("{version}.targets.json"))?;
        let mut body = top.signed;
        body.targets.insert(DIRECTOR_TARGET.into(), entry);
        body.bump(now, self.expiries.targets_secs);
        self.write_meta(&format!("{}.targets.json", version + 1), &sign(&body, &[targets_key])?)?;
        self.commit(now, &[("targets", version + 1)], None)?;
        Ok(path)
    }

    /// Rotates `role`'s keys: generates new keys (offline roles into `offline_dir`, online ones into the data
    /// directory), writes root N+1 signed by the old root threshold and the new one, and re-signs what the new
    /// keys now sign. `old_roots` are the current root key files (to the old threshold).
    pub fn rotate(
        &self,
        role: &str,
        offline_dir: &Path,
        old_roots: &[(Key, PathBuf)],
        rng: &mut dyn Rng,
        now: UnixSeconds,
    ) -> Result<Vec<PathBuf>, TufError> {
        self.require()?;
        let _lock = self.lock()?;
        self.recover()?;
        let old: Signed<Root> = self.read_meta("root.json")?;
        let old_signed = &old.signed;
        let old_version = old_signed.version;
        for (k, p) in old_roots {
            self.authorise("root", k, p)?;
        }
        let old_threshold = old_signed.roles.get("root").map_or(1, |r| r.threshold);
        if old_roots.len() < old_threshold {
            return Err(TufError::Invalid(format!(
                "rotation needs {old_threshold} current root key(s) (--root-key), got {}",
                old_roots.len()
            )));
        }
        let mut new_signed = old_signed.clone();
        new_signed.version = old_version + 1;
        new_signed.expires = expires(now, self.expiries.root_secs);
        let mut written = Vec::new();
        let mut new_root_keys: Vec<Key> = old_roots.iter().map(|(k, _)| k.clone()).collect();
        let generated = Key::generate(rng);
        match role {
            "root" => {
                let p = offline_dir.join(format!("root-v{}.key", old_version + 1));
                generated.save(&p, "root")?;
                written.push(p);
                new_root_keys = vec![generated.clone()];
                new_signed.roles.insert("root".into(), RoleKeys::single(&generated));
            }
            "timestamp" | "snapshot" => {
                // The new key waits beside the live one until the root naming it is written (`recover`).
                let next = self.next_key_path(role);
                generated.save(&next, role)?;
                written.push(self.online_key_path(role));
                new_signed.roles.insert(role.into(), RoleKeys::single(&generated));
            }
            "targets" => {
                let p = offline_dir.join(format!("targets-v{}.key", old_version + 1));
                generated.save(&p, "targets")?;
                written.push(p);
                new_signed.roles.insert("targets".into(), RoleKeys::single(&generated));
            }
            other => {
                return Err(TufError::Invalid(format!(
                    "rotating `{other}` is not supported: root, targets, snapshot or timestamp"
                )));
            }
        }
        new_signed.keys.insert(generated.keyid.clone(), generated.tuf_public());
        // Drop keys no role uses any more.
        let used: std::collections::BTreeSet<&String> = new_signed.roles.values().flat_map(|r| &r.keyids).collect();
        let unused: Vec<String> = new_signed.keys.keys().filter(|id| !used.contains(id)).cloned().collect();
        for id in unused {
            new_signed.keys.remove(&id);
        }
        let mut signers: Vec<&Key> = old_roots.iter().map(|(k, _)| k).collect();
        for k in &new_root_keys {
            if !signers.iter().any(|s| s.keyid == k.keyid) {
                signers.push(k);
            }
        }
        let envelope = sign(&new_signed, &signers)?;
        let online = matches!(role, "timestamp" | "snapshot");
        if online {
            // Signed by the old and the new key: valid under root N and N+1, so clients see a working repository
            // whichever root they hold, and at every step from here on.
            self.commit(now, &[], Some((role, &generated)))?;
        }
        // The commit point of the rotation: clients walk to N+1 from here.
        self.write_meta(&format!("{}.root.json", old_version + 1), &envelope)?;
        self.write_meta("root.json", &envelope)?;
        let mut changed = Vec::new();
        if role == "targets" {
            // The top-level targets role must be re-signed by the new key.
            let mut body = self.top_targets()?.signed;
            body.bump(now, self.expiries.targets_secs);
            self.write_meta(&format!("{}.targets.json", body.version), &sign(&body, &[&generated])?)?;
            changed.push(("targets", body.version));
        }
        if online {
            self.install_next_key(role, old_version)?;
        }
        self.commit(now, &changed, None)?;
        Ok(written)
    }

    /// Copies metadata and targets into `out` as static files for any HTTP server or CDN:
    /// `out/metadata/*.json` and `out/targets/**`.
    pub fn export(&self, out: &Path) -> Result<usize, TufError> {
        self.require()?;
        let mut n = 0;
        n += copy_tree(&self.metadata_dir(), &out.join("metadata"))?;
        n += copy_tree(&self.targets_dir(), &out.join("targets"))?;
        Ok(n)
    }

    /// The version of `role` readers see: for a targets role, the one the committed snapshot pins; for snapshot,
    /// the one the timestamp pins; for timestamp, its own; for root, the newest `N.root.json` (clients walk them).
    /// Files of higher versions left by an interrupted write do not count.
    pub fn latest_version(&self, role: &str) -> Result<u64, TufError> {
        if role != "root" {
            let committed = self.committed()?;
            let version = match role {
                "timestamp" => Some(committed.timestamp),
                "snapshot" => Some(committed.snapshot),
                other => committed.roles.get(other).copied(),
            };
            return version.filter(|&v| v > 0).ok_or_else(|| TufError::Damaged {
                name: format!("*.{role}.json"),
                problem: "no committed version".into(),
            });
        }
        let dir = self.metadata_dir();
        let suffix = format!(".{role}.json");
        let mut best = None;
        for e in fs::read_dir(&dir).map_err(io("read directory", &dir))? {
            let name = e.map_err(io("read directory", &dir))?.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_suffix(&suffix).and_then(|v| v.parse::<u64>().ok()) {
                best = best.max(Some(v));
            }
        }
        best.ok_or_else(|| TufError::Damaged { name: format!("*.{role}.json"), problem: "no version on disk".into() })
    }

    /// Reads a metadata file: typed (`Signed<Targets>`, `Signed<Root>`…) or as a JSON `Value`.
    pub fn read_meta<T: DeserializeOwned>(&self, name: &str) -> Result<T, TufError> {
        let p = self.metadata_dir().join(name);
        let bytes = fs::read(&p).map_err(io("read", &p))?;
        from_json(&bytes).map_err(|e| damaged(&p, e))
    }

    /// The latest top-level targets metadata.
    fn top_targets(&self) -> Result<Signed<Targets>, TufError> {
        self.read_meta(&format!("{}.targets.json", self.latest_version("targets")?))
    }

    fn write_meta<T: Serialize>(&self, name: &str, v: &Signed<T>) -> Result<(), TufError> {
        self.write_meta_bytes(name, &to_json(v)?)
    }

    fn write_meta_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), TufError> {
        Ok(blobs::write_atomic(&self.metadata_dir().join(name), bytes)?)
    }

    /// Stores a small target's bytes under its hash-prefixed name and returns its targets entry.
    fn store_target(&self, path: &str, bytes: &[u8]) -> Result<TargetEntry, TufError> {
        let d = Digest::of(bytes);
        let dest = self.consistent_path(path, &d);
        fs::create_dir_all(dest.parent().unwrap_or(&self.targets_dir())).map_err(io("create directory", &dest))?;
        blobs::write_atomic(&dest, bytes)?;
        Ok(TargetEntry::of(bytes))
    }

    fn link_target(&self, path: &str, source: &Path, digest: &Digest) -> Result<(), TufError> {
        let dest = self.consistent_path(path, digest);
        if dest.exists() {
            return Ok(());
        }
        let parent = dest.parent().unwrap_or(&self.targets_dir()).to_owned();
        fs::create_dir_all(&parent).map_err(io("create directory", &parent))?;
        // The blob store is write-once, so a hard link is as good as a copy and costs nothing.
        if fs::hard_link(source, &dest).is_err() {
            fs::copy(source, &dest).map_err(io("copy", &dest))?;
        }
        blobs::sync_dir(&parent)?;
        Ok(())
    }

    /// `targets/<dir>/<sha256>.<name>` for a target path.
    pub fn consistent_path(&self, path: &str, d: &Digest) -> PathBuf {
        self.targets_dir().join(outpost_shared::director::stored_target_path(path, d))
    }
}

fn damaged(p: &Path, e: impl std::fmt::Display) -> TufError {
    TufError::Damaged { name: p.display().to_string(), problem: e.to_string() }
}

fn copy_tree(from: &Path, to: &Path) -> Result<usize, TufError> {
    fs::create_dir_all(to).map_err(io("create directory", to))?;
    let mut n = 0;
    for e in fs::read_dir(from).map_err(io("read directory", from))? {
        let e = e.map_err(io("read directory", from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            n += copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(io("copy", &dst))?;
            n += 1;
        }
    }
    Ok(n)
}
