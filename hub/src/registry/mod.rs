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

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use outpost_shared::clock::{Clock, UnixSeconds};
use outpost_shared::manifest::{MAX_HARDWARE_ID_LEN, is_secondary_id};
use outpost_shared::model::ModelError;
use outpost_shared::{Digest, ManifestError, canonical};

use crate::blobs::{self, BlobError, BlobStore};
use crate::config::{CONFIG_FILE, ConfigError, DEFAULT_CONFIG, HubConfig};

pub(crate) mod capabilities;
mod console_users;
mod controller;
pub(crate) mod cycles;
pub(crate) mod devices;
pub(crate) mod packages;
pub mod releases;
pub(crate) mod suites;

pub use capabilities::{CapabilityAdded, CapabilityCheck, CapabilityRecord};
pub use controller::{DecisionRecord, PolicyRecord, Reconciled};
pub use suites::SuiteAdded;

pub use devices::{
    AttestationRecord, DEVICE_STATUS_STAMP, DeviceRecord, DeviceStatus, EnrolError, EnrolmentToken, SecondaryRecord,
    TOKEN_PREFIX, TpmRecord,
};
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
/// Capability name → its current definition ([`CapabilityRecord`], canonical CBOR).
const CAPABILITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("capabilities");
/// (capability name, revision) → [`CapabilityRecord`] (canonical CBOR): every definition it ever had.
const CAPABILITY_HISTORY: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("capability_history");
/// Suite digest (hex) → its canonical manifest (`shared::evaluation::SuiteManifest`, CBOR). Write-once.
const SUITES: TableDefinition<&str, &[u8]> = TableDefinition::new("suites");
/// Suite name → suite digest (hex). One name, one digest, for ever.
const SUITE_NAMES: TableDefinition<&str, &str> = TableDefinition::new("suite_names");
/// Evaluation record id (hex) → the record (`shared::evaluation::EvaluationRecord`, canonical CBOR). Write-once.
const EVALUATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("evaluations");
/// (package digest hex, record id hex) → when it was recorded: a package's records.
const PACKAGE_EVALUATIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("package_evaluations");
/// Challenger cycle id (hex) → the record (`shared::challenger::CycleRecord`, canonical CBOR). Write-once.
const CYCLES: TableDefinition<&str, &[u8]> = TableDefinition::new("challenger_cycles");
/// Controller policy version → its record (`controller::PolicyRecord`, canonical CBOR). Versions only rise.
const CONTROLLER_POLICIES: TableDefinition<u64, &[u8]> = TableDefinition::new("controller_policies");
/// Proposal id (hex) → the proposal (`shared::controller::Proposal`, canonical CBOR). Write-once.
const PROPOSALS: TableDefinition<&str, &[u8]> = TableDefinition::new("controller_proposals");
/// Proposal id (hex) → the decision on it (`controller::DecisionRecord`, canonical CBOR). Write-once.
const DECISIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("controller_decisions");
/// Proposal id (hex) → its latest reconciliation with telemetry (`controller::Reconciled`, canonical CBOR).
const RECONCILIATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("controller_reconciliations");
/// SHA-256 of an enrolment token (hex) → [`EnrolmentToken`] (canonical CBOR). The token itself is never stored.
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("enrolment_tokens");
/// Web console operators by login name: role and password hash (`crate::console::users::User`).
const CONSOLE_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("console_users");
/// The console's chart samples: release id → its samples (canonical CBOR), so the chart survives a restart.
const CONSOLE_CHARTS: TableDefinition<&str, &[u8]> = TableDefinition::new("console_charts");

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
    /// The index file is not a database redb can open any more (damaged, or not a redb file): nothing runs on it
    /// until the operator recovers it (docs/OPERATING.md, "A damaged store").
    #[error(
        "the hub's index {} is damaged ({problem}); nothing was changed. Recover it as docs/OPERATING.md \
         \"A damaged store\" says",
        path.display()
    )]
    DamagedStore {
        /// The index file.
        path: PathBuf,
        /// What redb found.
        problem: String,
    },
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
    /// Router rules that do not parse or break a rule a router must keep (see `outpost_shared::route`).
    #[error("{}: {problem}", file.display())]
    Router {
        /// The rules file.
        file: PathBuf,
        /// Why.
        problem: String,
    },
    /// A router whose routes the published channels cannot serve: refused at publish.
    #[error("router {router} not published: {source}")]
    RouterUnserved {
        /// `name@version`.
        router: String,
        /// The route at fault and why.
        source: Box<outpost_shared::route::RouterError>,
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
    /// The manifest declares a lower risk tier than its changes against its parent imply.
    #[error(
        "{file}: field `risk_tier`: declared {declared}, but the changes against the parent make it {derived}: \
         {reasons}; declare `risk_tier = \"{derived}\"` (two signatures and an approval)"
    )]
    RiskBelowDerived {
        /// The manifest.
        file: String,
        /// What it declares.
        declared: outpost_shared::manifest::RiskTier,
        /// What its changes imply.
        derived: outpost_shared::manifest::RiskTier,
        /// What changed.
        reasons: String,
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
    /// The package does not fit its registered capability.
    #[error("{file}: refused by capability `{capability}` (revision {revision}): {source}")]
    OutsideCapability {
        /// The manifest (or `name@version` at publish).
        file: String,
        /// The capability.
        capability: String,
        /// The revision checked against.
        revision: u64,
        /// The first reason it does not fit (boxed: it names tensors and dimensions).
        source: Box<outpost_shared::capability::Unfit>,
    },
    /// A new revision of a capability would change its contract.
    #[error(
        "capability `{name}`: the contract of a registered capability cannot change (its packages were checked \
         against it); register the new contract under a new name"
    )]
    CapabilityContractChanged {
        /// The capability.
        name: String,
    },
    /// The capability is not registered.
    #[error("no capability `{0}`; register it with `outpost-hub capability add CAP.toml`")]
    UnknownCapability(String),
    /// A suite directory that cannot be registered.
    #[error("suite {suite}: {problem}")]
    BadSuite {
        /// The suite's TOML.
        suite: String,
        /// What is wrong.
        problem: String,
    },
    /// Another suite already has this name (suites are write-once: a changed suite needs a new name).
    #[error(
        "suite name `{name}` is already registered as {existing}; suites are write-once, give the changed suite a new name"
    )]
    SuiteNameTaken {
        /// The name.
        name: String,
        /// The registered suite's digest.
        existing: Digest,
    },
    /// No suite matches the reference.
    #[error("no suite matches `{0}` (`outpost-hub suite list`)")]
    UnknownSuite(String),
    /// An evaluation record with this id is already stored; records are write-once.
    #[error("evaluation record {0} is already stored; records are write-once")]
    RecordExists(Digest),
    /// A cycle record with this id is already stored; cycle records are write-once.
    #[error("cycle record {0} is already stored; cycle records are write-once")]
    CycleExists(Digest),
    /// No cycle matches the reference.
    #[error("no challenger cycle matches `{0}` (`outpost-hub challenger list`)")]
    UnknownCycle(String),
    /// A controller policy must have a higher version than the newest registered.
    #[error("controller policy version {version} is not above the newest registered, {newest}")]
    PolicyVersion {
        /// The version offered.
        version: u64,
        /// The newest registered.
        newest: u64,
    },
    /// No proposal matches the reference.
    #[error("no controller proposal matches `{0}` (`outpost-hub controller list`)")]
    UnknownProposal(String),
    /// The proposal was decided already; a decision is final.
    #[error("proposal {0} is already decided; decisions are final (run the controller again for a new proposal)")]
    AlreadyDecided(Digest),
    /// The capability cannot publish: owners are missing.
    #[error(transparent)]
    MissingOwners(#[from] outpost_shared::capability::MissingOwners),
    /// An audit anchor that would move the recorded head back, or put another entry at its place: the log this
    /// writer appended to is behind the one recorded, or forked from it.
    #[error(
        "audit anchor: the store records entry {} ({}) as the log's head; refusing entry {} ({}): this log is behind \
         the recorded one or forked from it (`outpost-hub audit verify`)",
        stored.seq, stored.hash, offered.seq, offered.hash
    )]
    AuditAnchorBehind {
        /// The anchor recorded.
        stored: outpost_shared::audit::Anchor,
        /// The anchor refused.
        offered: outpost_shared::audit::Anchor,
    },
    /// The PostgreSQL store failed (`crate::store::postgres`).
    #[error(transparent)]
    Postgres(#[from] crate::store::postgres::PgError),
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
    RegistryError::Db(crate::store::files::note(e.into()))
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
    db: Arc<crate::store::files::SharedDb>,
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
        let db = match crate::store::files::open_shared(&dir.join(INDEX_FILE), false) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(RegistryError::Busy { dir: dir.to_owned() }),
            Err(other) => match crate::store::files::damage(&other) {
                Some(problem) => return Err(RegistryError::DamagedStore { path: dir.join(INDEX_FILE), problem }),
                None => return Err(db_err(other)),
            },
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
        // Blobs live where the replicas share them (`[store] shared_dir`; the data directory by default).
        let blobs = BlobStore::new(config.store.shared(dir).join("blobs"));
        Ok(Registry { dir: dir.to_owned(), config, db, blobs, clock })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hub's configuration (`hub.toml`).
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RegistryError> {
    canonical::to_vec(v).map_err(|e| RegistryError::Corrupt { key: "(new record)".into(), problem: e.to_string() })
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    canonical::from_slice(bytes).map_err(|e| RegistryError::Corrupt { key: key.into(), problem: e.to_string() })
}

/// Encodes a record of mutable state that nothing signs or addresses by its bytes (a release's rollout): plain
/// CBOR, straight from the value. The canonical form ([`encode`]) builds and sorts a value tree first, which for
/// a rollout over every device of a channel costs several times the encoding itself, at every write.
pub(crate) fn encode_state<T: Serialize>(v: &T) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out)
        .map_err(|e| RegistryError::Corrupt { key: "(new record)".into(), problem: e.to_string() })?;
    Ok(out)
}

/// Decodes what [`encode_state`] wrote (and the canonical CBOR earlier hubs wrote, which is CBOR too).
pub(crate) fn decode_state<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    ciborium::de::from_reader(bytes).map_err(|e| RegistryError::Corrupt { key: key.into(), problem: e.to_string() })
}

/// Opens a table for reading; `None` if a hub made before the table existed has not written to it yet.
fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, RegistryError> {
    match tx.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

/// The one item of `items` whose digest starts with `reference` (a hex prefix of at least [`MIN_PREFIX_LEN`],
/// `sha256:` allowed); `unknown` when none (or the prefix is too short), `AmbiguousPrefix` when several.
pub(crate) fn by_prefix<T>(
    reference: &str,
    items: impl IntoIterator<Item = T>,
    digest: impl Fn(&T) -> &Digest,
    unknown: impl FnOnce() -> RegistryError,
) -> Result<T, RegistryError> {
    let prefix = reference.strip_prefix("sha256:").unwrap_or(reference).to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX_LEN {
        return Err(unknown());
    }
    let mut matching = items.into_iter().filter(|i| digest(i).to_hex().starts_with(&prefix));
    match (matching.next(), matching.next()) {
        (Some(one), None) => Ok(one),
        (Some(_), Some(_)) => Err(RegistryError::AmbiguousPrefix { prefix, count: 2 }),
        (None, _) => Err(unknown()),
    }
}

pub(crate) fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse()
        .map_err(|e: outpost_shared::DigestParseError| RegistryError::Corrupt { key: s.into(), problem: e.to_string() })
}
