//! The package registry: content-addressed blobs on disk plus an index, lineage and aliases in redb.
//!
//! Invariants: a package's blobs are written before its index entry commits (a crash leaves at most an
//! unreferenced blob, never an entry without bytes); an alias and its history change in one redb transaction.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use outpost_shared::clock::{Clock, UnixSeconds};
use outpost_shared::manifest::{LineageOperator, MAX_HARDWARE_ID_LEN, PackageKind, is_secondary_id};
use outpost_shared::model::{self, ModelError, SmokeReport};
use outpost_shared::{Digest, Manifest, ManifestError, canonical, package};

use crate::blobs::{self, BlobError, BlobStatus, BlobStore, PutOutcome};
use crate::config::{CONFIG_FILE, ConfigError, DEFAULT_CONFIG, HubConfig};

mod devices;

/// File name of the redb index inside the data directory.
pub const INDEX_FILE: &str = "index.redb";
/// Shortest digest prefix accepted where a package is named.
pub const MIN_PREFIX_LEN: usize = 8;

/// Package digest (hex) → [`PackageRecord`] (canonical CBOR).
const PACKAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("packages");
/// Package digest (hex) → the manifest's canonical CBOR, exactly as in the package.
const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
/// `name@version` → package digest (hex). Versions are immutable.
const NAMES: TableDefinition<&str, &str> = TableDefinition::new("names");
/// Alias → package digest (hex).
const ALIASES: TableDefinition<&str, &str> = TableDefinition::new("aliases");
/// (alias, sequence number) → [`AliasEvent`] (canonical CBOR).
const ALIAS_HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("alias_history");
/// Device public key (hex) → [`DeviceRecord`] (canonical CBOR).
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// `"head"` → the audit log's newest anchor (`shared::audit::Anchor`, canonical CBOR), kept apart from the log so
/// an edit of its newest entries, or their removal, is detected.
const AUDIT: TableDefinition<&str, &[u8]> = TableDefinition::new("audit");
/// Release id → its rollout (`rollouts::ReleaseRecord`, canonical CBOR).
const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
/// SHA-256 of an enrolment token (hex) → [`EnrolmentToken`] (canonical CBOR). The token itself is never stored.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrolment_tokens");

/// File (under the data directory) rewritten, by atomic rename, whenever a device's status changes: the serving
/// hub compares its inode and mtime before every request to notice a revocation without opening the index.
pub const DEVICE_STATUS_STAMP: &str = "attestation/devices.stamp";
/// Prefix of enrolment tokens (`outpost-hub device token`), so one is recognisable in a config file or a log.
pub const TOKEN_PREFIX: &str = "ot1-";

/// A device the hub knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Ed25519 public key, hex: the device's identity.
    pub key: String,
    /// The release channel it follows.
    pub channel: String,
    /// Approved, or revoked (refused at connection).
    pub status: DeviceStatus,
    /// When it was approved (Unix seconds).
    pub approved_at: UnixSeconds,
    /// Version of the last assignment signed for it (assignments only ever go up).
    pub assignment_version: u64,
    /// The package the device last reported serving.
    #[serde(default)]
    pub active: Option<Digest>,
    /// Packages the device rolled back from: the director does not offer them to it again.
    #[serde(default)]
    pub rolled_back: Vec<Digest>,
    /// When the device last reported (Unix seconds).
    #[serde(default)]
    pub last_report: Option<UnixSeconds>,
    /// Microcontrollers behind this device (a gateway) that get firmware through it.
    #[serde(default)]
    pub secondaries: Vec<SecondaryRecord>,
    /// The site the operator placed it in (a site node may fetch assignments and forward reports only for the
    /// devices of its own site).
    #[serde(default)]
    pub site: Option<String>,
    /// This key is a site node's: it serves the devices of `site` and fetches from the hub on their behalf.
    #[serde(default)]
    pub site_node: bool,
    /// Digest of the site policy the device last reported enforcing.
    #[serde(default)]
    pub policy: Option<Digest>,
    /// The site its policy names (reported by the device).
    #[serde(default)]
    pub policy_site: Option<String>,
    /// Packages the device's policy (or its site node's) rejected or deferred, as last reported.
    #[serde(default)]
    pub refusals: Vec<outpost_shared::update::Refusal>,
    /// Hardware facts the device stated when it enrolled with a token.
    #[serde(default)]
    pub hardware: Option<String>,
    /// How it was enrolled: `token` or `operator` (absent for devices approved before tokens existed).
    #[serde(default)]
    pub enrolled_by: Option<String>,
    /// Its TPM attestation key and known-good boot PCRs, if enrolled with a TPM (hardware tier): sent with a
    /// one-time token at enrolment, or recorded by an operator (`device tpm`).
    #[serde(default)]
    pub tpm: Option<TpmRecord>,
    /// The last appraisal of its evidence, successful or not.
    #[serde(default)]
    pub attestation: Option<AttestationRecord>,
}

/// A device's enrolled TPM (`outpost_attestation::TpmEnrolment`, readable in `device show --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmRecord {
    /// The attestation key's public point (uncompressed P-256), hex.
    pub ak: String,
    /// The measured-boot PCRs quotes must cover besides the measurement PCR: bit `i` is PCR `i`.
    pub pcrs: u32,
    /// Their known-good SHA-256 values, in ascending PCR order.
    pub values: Vec<Digest>,
}

impl TpmRecord {
    /// The record of enrolment facts a device or an operator presented (already checked in profile).
    pub fn of(e: &outpost_attestation::TpmEnrolment) -> TpmRecord {
        TpmRecord { ak: hex::encode(e.ak), pcrs: e.pcrs, values: e.values.iter().map(|v| Digest(*v)).collect() }
    }

    /// The facts back, checked again: a record that does not decode must make its device unknown (fail closed),
    /// never software tier.
    pub fn enrolment(&self) -> Option<outpost_attestation::TpmEnrolment> {
        let ak = hex::decode(&self.ak).ok()?.try_into().ok()?;
        outpost_attestation::TpmEnrolment::new(ak, self.pcrs, self.values.iter().map(|v| v.0).collect()).ok()
    }
}

/// The outcome of one appraisal, as `device show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationRecord {
    /// When it was appraised (Unix seconds).
    pub at: UnixSeconds,
    /// `affirming`, `warning` or `contraindicated`.
    pub status: String,
    /// `software` or `hardware` (for a positive result).
    #[serde(default)]
    pub tier: Option<String>,
    /// When the result expires (for a positive result).
    #[serde(default)]
    pub expires: Option<UnixSeconds>,
    /// `name version` of the agent (for a positive result).
    #[serde(default)]
    pub software: Option<String>,
    /// The device's boot count (for a positive result).
    #[serde(default)]
    pub bootcount: Option<u64>,
    /// The reported model digest (for a positive result).
    #[serde(default)]
    pub model: Option<Digest>,
    /// The reported site-policy digest (for a positive result).
    #[serde(default)]
    pub policy: Option<Digest>,
    /// Why it was not attested, or the concerns of a warning.
    #[serde(default)]
    pub detail: Option<String>,
}

/// A one-time enrolment token, stored under the SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentToken {
    /// When it was created (Unix seconds).
    pub created: UnixSeconds,
    /// When it stops working (Unix seconds).
    pub expires: UnixSeconds,
    /// The channel the enrolled device follows.
    pub channel: String,
    /// The site the enrolled device belongs to.
    #[serde(default)]
    pub site: Option<String>,
    /// The device key that used it; a used token never works again.
    #[serde(default)]
    pub used_by: Option<String>,
}

/// Why an enrolment was refused. The device is told only "enrolment refused" and this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    /// No token hashes to this one.
    #[error("unknown enrolment token")]
    UnknownToken,
    /// The token was already used (by another key, or by this one before it was revoked).
    #[error("enrolment token already used")]
    TokenUsed,
    /// The token expired.
    #[error("enrolment token expired")]
    TokenExpired,
    /// The key is known and revoked: a token does not lift a revocation.
    #[error("device is revoked")]
    Revoked,
}

impl DeviceRecord {
    /// The site to show: the operator's, else the one the device's policy names.
    pub fn shown_site(&self) -> Option<&str> {
        self.site.as_deref().or(self.policy_site.as_deref())
    }
}

/// A secondary behind a gateway: what its compact manifests are addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondaryRecord {
    /// Its device id (provisioned into its firmware).
    pub device_id: String,
    /// Its hardware id; the director assigns it firmware packages with this `firmware.hardware_id`.
    pub hardware_id: String,
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// May connect and fetch.
    Approved,
    /// Refused.
    Revoked,
}

/// What the index keeps about a package (the manifest itself is stored beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// Package digest.
    pub digest: Digest,
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// Package file length.
    pub package_len: u64,
    /// Digest of the ONNX model inside.
    pub model_digest: Digest,
    /// Model length.
    pub model_len: u64,
    /// When it was added (Unix seconds).
    pub added_at: UnixSeconds,
}

/// One change of an alias.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasEvent {
    /// Position in the alias's history, from 1.
    pub seq: u64,
    /// The package the alias now names.
    pub digest: Digest,
    /// The package it named before, if any.
    pub previous: Option<Digest>,
    /// When (Unix seconds).
    pub at: UnixSeconds,
}

/// A package with everything `package show` prints.
#[derive(Debug, Clone)]
pub struct PackageDetails {
    /// The index record.
    pub record: PackageRecord,
    /// The manifest.
    pub manifest: Manifest,
    /// Ancestors, breadth-first from the package itself back to the roots.
    pub lineage: Vec<LineageEntry>,
}

/// One package in a lineage walk.
#[derive(Debug, Clone, PartialEq)]
pub struct LineageEntry {
    /// Distance from the package shown (0 = itself).
    pub depth: usize,
    /// This ancestor's digest.
    pub digest: Digest,
    /// `name@version` and the operator that made it, when the registry holds it.
    pub known: Option<(String, LineageOperator)>,
}

/// What `add` did.
#[derive(Debug, Clone)]
pub struct AddOutcome {
    /// The package digest.
    pub digest: Digest,
    /// `name@version`.
    pub name_version: String,
    /// False if the package was already registered and nothing changed.
    pub added: bool,
    /// The smoke test's measurements; `None` when the package was already registered (it passed then).
    pub smoke: Option<SmokeReport>,
}

/// The result of rehashing one blob.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobCheck {
    /// The package the blob belongs to.
    pub package: Digest,
    /// `package` or `model`.
    pub role: &'static str,
    /// The blob's digest.
    pub digest: Digest,
    /// Where it lives.
    pub path: PathBuf,
    /// What rehashing found.
    pub status: BlobStatus,
    /// Bytes read.
    pub bytes: u64,
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// One entry per blob checked.
    pub checks: Vec<BlobCheck>,
    /// Total bytes hashed.
    pub bytes: u64,
    /// Wall time spent (monotonic clock).
    pub elapsed: Duration,
}

impl VerifyReport {
    /// Blobs that are missing or do not match.
    pub fn problems(&self) -> impl Iterator<Item = &BlobCheck> {
        self.checks.iter().filter(|c| c.status != BlobStatus::Intact)
    }
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The data directory has no hub in it.
    #[error("no hub at {}: run `outpost-hub --data-dir {} init` first", dir.display(), dir.display())]
    NotInitialised {
        /// The data directory.
        dir: PathBuf,
    },
    /// Another process (a serving hub, or another admin command) has the hub's index open.
    #[error(
        "the hub at {} is in use by another outpost-hub process (a serving hub without its admin socket, or another \
         admin command); try again when it finishes",
        dir.display()
    )]
    Busy {
        /// The data directory.
        dir: PathBuf,
    },
    /// A file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A blob operation failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The index database failed.
    #[error("index database: {0}")]
    Db(#[from] redb::Error),
    /// An index record could not be decoded: the index is damaged.
    #[error("index record for {key} is damaged: {problem}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What could not be decoded.
        problem: String,
    },
    /// `hub.toml` is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An input file exceeds a configured limit.
    #[error("{} is {len} bytes, over the limit of {limit} (limits.{key} in hub.toml)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The limit.
        limit: u64,
        /// The configuration key that sets it.
        key: &'static str,
    },
    /// The model was refused by the contract check or smoke test.
    #[error("{}: {source}", model.display())]
    Model {
        /// The model file.
        model: PathBuf,
        /// Why.
        source: ModelError,
    },
    /// A firmware image a secondary could not take (its compact manifest carries a non-zero `u32` length).
    #[error("{}: {problem}", image.display())]
    FirmwareImage {
        /// The image file.
        image: PathBuf,
        /// Why.
        problem: String,
    },
    /// A site name that cannot be used, or a site node without a site.
    #[error("site: {0}")]
    BadSite(String),
    /// A secondary's device id or hardware id does not fit a compact manifest.
    #[error("secondary {field} `{value}` must be 1–{MAX_HARDWARE_ID_LEN} bytes of a-z, A-Z, 0-9, `-`, `_`, `.`")]
    BadSecondaryId {
        /// `device id` or `hardware id`.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// Another package already has this name and version.
    #[error("{name}@{version} is already registered as {existing}; versions are immutable, bump the version")]
    VersionTaken {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// The registered package.
        existing: Digest,
    },
    /// A lineage parent is not in the registry.
    #[error("{file}: field `lineage.parents`: parent {parent} is not in this registry; add it first")]
    UnknownParent {
        /// The manifest file.
        file: String,
        /// The missing parent.
        parent: Digest,
    },
    /// No package matches the reference.
    #[error("no package matches `{0}`")]
    UnknownPackage(String),
    /// A digest prefix matches several packages.
    #[error("`{prefix}` matches {count} packages; give more of the digest")]
    AmbiguousPrefix {
        /// The prefix.
        prefix: String,
        /// How many matched.
        count: usize,
    },
    /// No device with this key.
    #[error("no device with key {0}; approve it with `outpost-hub device approve KEY --channel NAME`")]
    UnknownDevice(String),
    /// Not an Ed25519 public key in hex.
    #[error("`{0}` is not a device key (64 hex characters, the Ed25519 public key)")]
    BadDeviceKey(String),
    /// The alias is not set.
    #[error("alias `{0}` is not set")]
    UnknownAlias(String),
    /// The alias name is not acceptable.
    #[error("alias `{0}` must be 1–64 of a-z, 0-9, `-`, `_`, `.`")]
    BadAliasName(String),
    /// A stored blob needed for the operation is missing or damaged.
    #[error("{role} blob {digest} is {}; run `outpost-hub package verify`", if *.missing { "missing" } else { "damaged" })]
    BadBlob {
        /// `package` or `model`.
        role: &'static str,
        /// Its digest.
        digest: Digest,
        /// Missing rather than damaged.
        missing: bool,
    },
    /// Rebuilding a package gave a different digest than recorded.
    #[error("reconstructed package hashes to {actual}, but {expected} was recorded")]
    ReconstructMismatch {
        /// Recorded digest.
        expected: Digest,
        /// Digest of the rebuilt bytes.
        actual: Digest,
    },
}

fn db_err(e: impl Into<redb::Error>) -> RegistryError {
    RegistryError::Db(e.into())
}

/// Whether `init` created a hub or found one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// A new hub was created.
    Created,
    /// A hub was already there; nothing was changed.
    AlreadyInitialised,
}

/// An open registry.
pub struct Registry {
    dir: PathBuf,
    config: HubConfig,
    db: Arc<Database>,
    blobs: BlobStore,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Registry {
    /// Creates a hub in `dir`: the directory, a commented `hub.toml`, the blob store and the index.
    /// An existing hub is left untouched.
    pub fn init(dir: &Path) -> Result<InitOutcome, RegistryError> {
        let config = dir.join(CONFIG_FILE);
        if config.exists() {
            return Ok(InitOutcome::AlreadyInitialised);
        }
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| RegistryError::Io { op, path, source }
        };
        fs::create_dir_all(dir.join("blobs/sha256")).map_err(io("create directory", dir))?;
        let db = Database::create(dir.join(INDEX_FILE)).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(PACKAGES).map_err(db_err)?;
        tx.open_table(MANIFESTS).map_err(db_err)?;
        tx.open_table(NAMES).map_err(db_err)?;
        tx.open_table(ALIASES).map_err(db_err)?;
        tx.open_table(ALIAS_HISTORY).map_err(db_err)?;
        tx.open_table(DEVICES).map_err(db_err)?;
        tx.open_table(TOKENS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        // hub.toml last: its presence marks a complete hub.
        blobs::write_atomic(&config, DEFAULT_CONFIG.as_bytes())?;
        Ok(InitOutcome::Created)
    }

    /// Opens the hub in `dir` (sharing the index handle this process already holds, see `crate::store`).
    pub fn open(dir: &Path, clock: Arc<dyn Clock>) -> Result<Registry, RegistryError> {
        let config_path = dir.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(RegistryError::NotInitialised { dir: dir.to_owned() });
        }
        let config = HubConfig::load(&config_path)?;
        // One handle per process (`crate::store`); another process holding the index is an error at once: a serving
        // hub takes admin commands over its socket instead.
        let db = match crate::store::open_shared(&dir.join(INDEX_FILE), false) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(RegistryError::Busy { dir: dir.to_owned() }),
            Err(other) => return Err(db_err(other)),
        };
        // Tables added by later versions are created on first open, so older hubs keep working.
        let has_tables = {
            let read = db.begin_read().map_err(db_err)?;
            read.open_table(DEVICES).is_ok() && read.open_table(TOKENS).is_ok()
        };
        if !has_tables {
            let tx = db.begin_write().map_err(db_err)?;
            tx.open_table(DEVICES).map_err(db_err)?;
            tx.open_table(TOKENS).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        Ok(Registry { dir: dir.to_owned(), config, db, blobs: BlobStore::new(dir.join("blobs")), clock })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Checks a model against its manifest (contract and smoke test) — or, for a firmware package, that the image
    /// fits a secondary (never loaded with tract) — builds the package and registers it.
    /// Adding a package that is already registered changes nothing.
    pub fn add(&self, model_path: &Path, manifest_path: &Path) -> Result<AddOutcome, RegistryError> {
        let limits = &self.config.limits;
        let manifest_text = read_limited(manifest_path, limits.max_manifest_bytes, "max_manifest_bytes")?;
        let manifest_text = String::from_utf8(manifest_text).map_err(|_| ManifestError {
            file: manifest_path.display().to_string(),
            field: "(document)".into(),
            line: None,
            problem: "not UTF-8 text".into(),
        })?;
        let file = manifest_path.display().to_string();
        let manifest = Manifest::from_toml(&manifest_text, &file)?;
        let model_bytes = read_limited(model_path, limits.max_model_bytes, "max_model_bytes")?;
        let manifest_cbor = manifest.to_cbor();
        let digest = package::digest_of_parts(&manifest_cbor, &model_bytes);
        let name_version = format!("{}@{}", manifest.name, manifest.version);
        if self.record(&digest)?.is_some() {
            // Same bytes, same digest: it passed every check when it was first added.
            return Ok(AddOutcome { digest, name_version, added: false, smoke: None });
        }
        let smoke = match manifest.kind {
            PackageKind::Model => Some(
                model::check(&model_bytes, &manifest)
                    .map_err(|source| RegistryError::Model { model: model_path.to_owned(), source })?,
            ),
            // Never loaded as a model: the secondary checks length and hash, then trial-boots and confirms.
            PackageKind::Firmware => {
                check_firmware_image(&model_bytes)
                    .map_err(|problem| RegistryError::FirmwareImage { image: model_path.to_owned(), problem })?;
                None
            }
        };
        {
            let tx = self.db.begin_read().map_err(db_err)?;
            let names = tx.open_table(NAMES).map_err(db_err)?;
            if let Some(existing) = names.get(name_version.as_str()).map_err(db_err)? {
                return Err(RegistryError::VersionTaken {
                    name: manifest.name.clone(),
                    version: manifest.version.to_string(),
                    existing: parse_digest(existing.value())?,
                });
            }
            let packages = tx.open_table(PACKAGES).map_err(db_err)?;
            for parent in &manifest.lineage.parents {
                if packages.get(parent.to_hex().as_str()).map_err(db_err)?.is_none() {
                    return Err(RegistryError::UnknownParent { file, parent: *parent });
                }
            }
        }

        // Bytes first, index second: the index never points at a blob that is not on disk.
        let package_bytes = package::encode_parts(&manifest_cbor, &model_bytes);
        let (model_digest, _) = self.blobs.put(&model_bytes)?;
        let (stored, _): (Digest, PutOutcome) = self.blobs.put(&package_bytes)?;
        debug_assert_eq!(stored, digest);

        let record = PackageRecord {
            digest,
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            package_len: package_bytes.len() as u64,
            model_digest,
            model_len: model_bytes.len() as u64,
            added_at: self.clock.wall(),
        };
        let key = digest.to_hex();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut names = tx.open_table(NAMES).map_err(db_err)?;
            // Re-check inside the write transaction: another process may have added it meanwhile.
            if let Some(existing) = names.get(name_version.as_str()).map_err(db_err)? {
                let existing = parse_digest(existing.value())?;
                if existing == digest {
                    return Ok(AddOutcome { digest, name_version, added: false, smoke });
                }
                return Err(RegistryError::VersionTaken { name: record.name, version: record.version, existing });
            }
            names.insert(name_version.as_str(), key.as_str()).map_err(db_err)?;
            tx.open_table(PACKAGES)
                .map_err(db_err)?
                .insert(key.as_str(), encode(&record)?.as_slice())
                .map_err(db_err)?;
            tx.open_table(MANIFESTS).map_err(db_err)?.insert(key.as_str(), manifest_cbor.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(AddOutcome { digest, name_version, added: true, smoke })
    }

    /// The record of package `d`, if registered.
    pub fn record(&self, d: &Digest) -> Result<Option<PackageRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PACKAGES).map_err(db_err)?;
        let key = d.to_hex();
        match t.get(key.as_str()).map_err(db_err)? {
            Some(v) => Ok(Some(decode(&key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every registered package, by name then version.
    pub fn list(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PACKAGES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode::<PackageRecord>(k.value(), v.value())?);
        }
        out.sort_by(|a, b| {
            let va = semver::Version::parse(&a.version).ok();
            let vb = semver::Version::parse(&b.version).ok();
            a.name.cmp(&b.name).then(va.cmp(&vb))
        });
        Ok(out)
    }

    /// Resolves a reference: a full digest, a unique digest prefix (at least 8 hex characters), `name@version`,
    /// or an alias.
    pub fn resolve(&self, reference: &str) -> Result<Digest, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        if reference.contains('@') {
            let names = tx.open_table(NAMES).map_err(db_err)?;
            return match names.get(reference).map_err(db_err)? {
                Some(d) => parse_digest(d.value()),
                None => Err(RegistryError::UnknownPackage(reference.into())),
            };
        }
        let aliases = tx.open_table(ALIASES).map_err(db_err)?;
        if let Some(d) = aliases.get(reference).map_err(db_err)? {
            return parse_digest(d.value());
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference).to_ascii_lowercase();
        if prefix.len() < MIN_PREFIX_LEN || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegistryError::UnknownPackage(reference.into()));
        }
        let packages = tx.open_table(PACKAGES).map_err(db_err)?;
        let mut matches = Vec::new();
        for row in packages.range(prefix.as_str()..).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            matches.push(parse_digest(k.value())?);
        }
        match matches.len() {
            0 => Err(RegistryError::UnknownPackage(reference.into())),
            1 => Ok(matches[0]),
            count => Err(RegistryError::AmbiguousPrefix { prefix, count }),
        }
    }

    /// The stored manifest of package `d`.
    pub fn manifest(&self, d: &Digest) -> Result<(Vec<u8>, Manifest), RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(MANIFESTS).map_err(db_err)?;
        let key = d.to_hex();
        let cbor = t.get(key.as_str()).map_err(db_err)?.ok_or_else(|| RegistryError::UnknownPackage(key.clone()))?;
        let cbor = cbor.value().to_vec();
        let manifest =
            Manifest::from_cbor(&cbor).map_err(|e| RegistryError::Corrupt { key, problem: e.to_string() })?;
        Ok((cbor, manifest))
    }

    /// Record, manifest and lineage of a package.
    pub fn show(&self, d: &Digest) -> Result<PackageDetails, RegistryError> {
        let record = self.record(d)?.ok_or_else(|| RegistryError::UnknownPackage(d.to_hex()))?;
        let (_, manifest) = self.manifest(d)?;
        Ok(PackageDetails { lineage: self.lineage(d)?, record, manifest })
    }

    /// Ancestors of `d`, breadth-first, each listed once, back to the roots.
    pub fn lineage(&self, d: &Digest) -> Result<Vec<LineageEntry>, RegistryError> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([(*d, 0usize)]);
        while let Some((digest, depth)) = queue.pop_front() {
            if !seen.insert(digest) {
                continue;
            }
            let known = match self.record(&digest)? {
                Some(r) => {
                    let (_, m) = self.manifest(&digest)?;
                    queue.extend(m.lineage.parents.iter().map(|p| (*p, depth + 1)));
                    Some((format!("{}@{}", r.name, r.version), m.lineage.operator))
                }
                None => None,
            };
            out.push(LineageEntry { depth, digest, known });
        }
        Ok(out)
    }

    /// Rehashes the blobs of one package, or of every package, and reports each.
    pub fn verify(&self, only: Option<&Digest>) -> Result<VerifyReport, RegistryError> {
        self.verify_with_progress(only, |_| {})
    }

    /// Like [`Registry::verify`], calling `progress` after each blob.
    pub fn verify_with_progress(
        &self,
        only: Option<&Digest>,
        mut progress: impl FnMut(&BlobCheck),
    ) -> Result<VerifyReport, RegistryError> {
        let records = match only {
            Some(d) => vec![self.record(d)?.ok_or_else(|| RegistryError::UnknownPackage(d.to_hex()))?],
            None => self.list()?,
        };
        let start = self.clock.monotonic();
        let mut checks = Vec::new();
        let mut total = 0;
        for r in records {
            for (role, digest, len) in [("package", r.digest, r.package_len), ("model", r.model_digest, r.model_len)] {
                let (status, bytes) = self.blobs.check(&digest, len)?;
                total += bytes;
                let check =
                    BlobCheck { package: r.digest, role, digest, path: self.blobs.path_of(&digest), status, bytes };
                progress(&check);
                checks.push(check);
            }
        }
        Ok(VerifyReport { checks, bytes: total, elapsed: self.clock.monotonic().saturating_sub(start) })
    }

    /// Points `alias` at package `d`, recording the change in the alias's history, in one transaction.
    pub fn alias_set(&self, alias: &str, d: &Digest) -> Result<AliasEvent, RegistryError> {
        if !valid_alias(alias) {
            return Err(RegistryError::BadAliasName(alias.into()));
        }
        let tx = self.db.begin_write().map_err(db_err)?;
        let event = {
            if tx.open_table(PACKAGES).map_err(db_err)?.get(d.to_hex().as_str()).map_err(db_err)?.is_none() {
                return Err(RegistryError::UnknownPackage(d.to_hex()));
            }
            let mut aliases = tx.open_table(ALIASES).map_err(db_err)?;
            let mut history = tx.open_table(ALIAS_HISTORY).map_err(db_err)?;
            let previous = aliases.get(alias).map_err(db_err)?.map(|v| parse_digest(v.value())).transpose()?;
            let last_seq = history
                .range((alias, 0)..=(alias, u64::MAX))
                .map_err(db_err)?
                .next_back()
                .transpose()
                .map_err(db_err)?
                .map(|(k, _)| k.value().1)
                .unwrap_or(0);
            let event = AliasEvent { seq: last_seq + 1, digest: *d, previous, at: self.clock.wall() };
            aliases.insert(alias, d.to_hex().as_str()).map_err(db_err)?;
            history.insert((alias, event.seq), encode(&event)?.as_slice()).map_err(db_err)?;
            event
        };
        tx.commit().map_err(db_err)?;
        Ok(event)
    }

    /// The package `alias` names now.
    pub fn alias_get(&self, alias: &str) -> Result<Digest, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(ALIASES).map_err(db_err)?;
        let v = t.get(alias).map_err(db_err)?.ok_or_else(|| RegistryError::UnknownAlias(alias.into()))?;
        parse_digest(v.value())
    }

    /// Every alias and the package it names.
    pub fn aliases(&self) -> Result<Vec<(String, Digest)>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(ALIASES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), parse_digest(v.value())?));
        }
        Ok(out)
    }

    /// The history of `alias`, oldest first.
    pub fn alias_history(&self, alias: &str) -> Result<Vec<AliasEvent>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(ALIAS_HISTORY).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.range((alias, 0)..=(alias, u64::MAX)).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(&format!("{alias}#{}", k.value().1), v.value())?);
        }
        if out.is_empty() {
            return Err(RegistryError::UnknownAlias(alias.into()));
        }
        Ok(out)
    }

    /// Rebuilds the package `alias` names from the stored model blob and manifest, checks that its digest is
    /// the recorded one, and writes it to `out_dir/<name>-<version>.opkg`. Returns the file written.
    pub fn reconstruct(&self, alias: &str, out_dir: &Path) -> Result<(PathBuf, Digest), RegistryError> {
        let digest = self.alias_get(alias)?;
        let record = self.record(&digest)?.ok_or_else(|| RegistryError::UnknownPackage(digest.to_hex()))?;
        let (manifest_cbor, manifest) = self.manifest(&digest)?;
        let model = self.blobs.read_verified(&record.model_digest)?.map_err(|status| RegistryError::BadBlob {
            role: "model",
            digest: record.model_digest,
            missing: status == BlobStatus::Missing,
        })?;
        let rebuilt = package::encode_parts(&manifest_cbor, &model);
        let actual = Digest::of(&rebuilt);
        if actual != digest {
            return Err(RegistryError::ReconstructMismatch { expected: digest, actual });
        }
        fs::create_dir_all(out_dir).map_err(|source| RegistryError::Io {
            op: "create directory",
            path: out_dir.into(),
            source,
        })?;
        let path = out_dir.join(format!("{}-{}.opkg", manifest.name, manifest.version));
        blobs::write_atomic(&path, &rebuilt)?;
        Ok((path, actual))
    }
}

/// A firmware image must be non-empty and its length fit the secondary's `u32`.
fn check_firmware_image(image: &[u8]) -> Result<(), String> {
    match u32::try_from(image.len()) {
        Ok(0) => Err("a firmware image cannot be empty".into()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{} bytes is more than a secondary's 4 GiB limit", image.len())),
    }
}

fn valid_alias(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 64
        && !a.contains('@')
        && a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        // An alias that looks like a digest prefix would shadow packages in `resolve`.
        && !a.chars().all(|c| c.is_ascii_hexdigit())
}

fn read_limited(path: &Path, limit: u64, key: &'static str) -> Result<Vec<u8>, RegistryError> {
    let io = |op| move |source| RegistryError::Io { op, path: path.into(), source };
    let len = fs::metadata(path).map_err(io("read"))?.len();
    if len > limit {
        return Err(RegistryError::TooLarge { path: path.into(), len, limit, key });
    }
    fs::read(path).map_err(io("read"))
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RegistryError> {
    canonical::to_vec(v).map_err(|e| RegistryError::Corrupt { key: "(new record)".into(), problem: e.to_string() })
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    canonical::from_slice(bytes).map_err(|e| RegistryError::Corrupt { key: key.into(), problem: e.to_string() })
}

fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse()
        .map_err(|e: outpost_shared::DigestParseError| RegistryError::Corrupt { key: s.into(), problem: e.to_string() })
}
