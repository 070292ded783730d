//! The package registry: content-addressed blobs on disk plus an index, lineage and aliases in redb.
//!
//! Invariants: a package's blobs are written before its index entry commits (a crash leaves at most an
//! unreferenced blob, never an entry without bytes); an alias and its history change in one redb transaction.
//!
//! Here: the store (the index's tables, `init` and `open`, the `Registry` handle, errors, the record codec);
//! `packages`: packages, lineage, aliases, verify and reconstruct; `devices`: the fleet's records.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use outpost_shared::clock::{Clock, UnixSeconds};
use outpost_shared::manifest::{MAX_HARDWARE_ID_LEN, is_secondary_id};
use outpost_shared::model::ModelError;
use outpost_shared::{Digest, ManifestError, canonical};

use crate::blobs::{self, BlobError, BlobStore};
use crate::config::{CONFIG_FILE, ConfigError, DEFAULT_CONFIG, HubConfig};

mod devices;
mod packages;

pub use packages::{
    AddOutcome, AliasEvent, BlobCheck, LineageEntry, MIN_PREFIX_LEN, PackageDetails, PackageRecord, VerifyReport,
};

/// File name of the redb index inside the data directory.
pub const INDEX_FILE: &str = "index.redb";

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
