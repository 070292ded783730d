//! TUF metadata as the hub writes it, typed: the signed envelope, the bodies of root, targets (with delegations),
//! snapshot and timestamp, and the targets entries that carry a package's custom fields; canonical JSON and signing.
//!
//! Every type keeps fields it does not know (`extra`), so metadata written by a newer hub survives a re-sign.

use std::collections::BTreeMap;

use ed25519_dalek::Signer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use outpost_shared::clock::{UnixSeconds, format_rfc3339};
use outpost_shared::director::DirectorKeyDoc;
use outpost_shared::manifest::RiskTier;
use outpost_shared::{Digest, Manifest};

use super::{Key, TufError};
use crate::registry::PackageRecord;

/// Delegated role for low- and medium-risk packages (threshold 1).
pub const STANDARD_ROLE: &str = "standard";
/// Delegated role for high-risk packages (threshold 2 distinct keys).
pub const HIGH_RISK_ROLE: &str = "high-risk";
pub use outpost_shared::director::DIRECTOR_TARGET;

/// The TUF specification version the hub's metadata declares.
pub const SPEC_VERSION: &str = "1.0.31";

/// Fields a metadata type does not know, kept as they were.
pub type Extra = BTreeMap<String, Value>;

/// A metadata file: the role's body and the signatures over its canonical JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// The role's body.
    pub signed: T,
    /// Signatures over `canonical_json(signed)`.
    pub signatures: Vec<Signature>,
}

/// One signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The key's id (SHA-256 of its canonical public form).
    pub keyid: String,
    /// Ed25519 signature, hex.
    pub sig: String,
}

/// A role's keys and threshold (in root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Key ids.
    pub keyids: Vec<String>,
    /// Signatures needed.
    pub threshold: usize,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl RoleKeys {
    /// One key, threshold 1.
    pub fn single(key: &Key) -> RoleKeys {
        RoleKeys { keyids: vec![key.keyid.clone()], threshold: 1, extra: Extra::new() }
    }
}

/// The root role's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Root {
    /// `root`.
    #[serde(rename = "_type")]
    pub kind: String,
    /// [`SPEC_VERSION`].
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry, RFC 3339.
    pub expires: String,
    /// Always true: metadata and targets are version- and hash-prefixed.
    pub consistent_snapshot: bool,
    /// Public keys by id.
    pub keys: BTreeMap<String, Value>,
    /// Keys and thresholds of root, targets, snapshot and timestamp.
    pub roles: BTreeMap<String, RoleKeys>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A delegation from the top-level targets role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// Role name ([`STANDARD_ROLE`], [`HIGH_RISK_ROLE`]).
    pub name: String,
    /// Key ids.
    pub keyids: Vec<String>,
    /// Signatures needed.
    pub threshold: usize,
    /// Whether the search stops here.
    pub terminating: bool,
    /// Target path patterns it may list.
    pub paths: Vec<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The delegations of the top-level targets role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delegations {
    /// Public keys by id.
    pub keys: BTreeMap<String, Value>,
    /// The delegated roles.
    pub roles: Vec<DelegatedRole>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A targets role's body (top-level or delegated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Targets {
    /// `targets`.
    #[serde(rename = "_type")]
    pub kind: String,
    /// [`SPEC_VERSION`].
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry, RFC 3339.
    pub expires: String,
    /// Entries by target path.
    pub targets: BTreeMap<String, TargetEntry>,
    /// Delegations (top-level role only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Targets {
    /// An empty role, version 1.
    pub fn empty(now: UnixSeconds, expiry: u64) -> Targets {
        Targets {
            kind: "targets".into(),
            spec_version: SPEC_VERSION.into(),
            version: 1,
            expires: expires(now, expiry),
            targets: BTreeMap::new(),
            delegations: None,
            extra: Extra::new(),
        }
    }

    /// The next version, expiring `expiry` seconds from `now`.
    pub fn bump(&mut self, now: UnixSeconds, expiry: u64) {
        self.version += 1;
        self.expires = expires(now, expiry);
    }

    /// The path of the package entry whose digest is `digest`.
    pub fn path_of(&self, digest: &Digest) -> Option<String> {
        let hex = digest.to_hex();
        self.targets.iter().find(|(_, e)| e.package().is_some_and(|p| p.digest == hex)).map(|(path, _)| path.clone())
    }

    /// The delegated role `name`.
    pub fn delegation(&self, name: &str) -> Option<&DelegatedRole> {
        self.delegations.as_ref()?.roles.iter().find(|r| r.name == name)
    }
}

/// A targets entry: length, hashes and, for a package, its facts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetEntry {
    /// Length in bytes.
    pub length: u64,
    /// `sha256` → hex.
    pub hashes: BTreeMap<String, String>,
    /// A package's facts (`custom.outpost`); other targets (the director's key) have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Custom>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl TargetEntry {
    /// An entry for `bytes` with no custom fields.
    pub fn of(bytes: &[u8]) -> TargetEntry {
        TargetEntry {
            length: bytes.len() as u64,
            hashes: [("sha256".to_owned(), Digest::of(bytes).to_hex())].into(),
            custom: None,
            extra: Extra::new(),
        }
    }

    /// The package facts, if this entry is a package.
    pub fn package(&self) -> Option<&PackageFacts> {
        self.custom.as_ref().map(|c| &c.outpost)
    }
}

/// A targets entry's `custom` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Custom {
    /// Outpost's facts about the package.
    pub outpost: PackageFacts,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// What an agent needs to apply site policy before download, and what the hub needs to direct releases. TUF's
/// canonical JSON has no floats, so metric values travel as strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageFacts {
    /// Package digest, hex.
    pub digest: String,
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Capability it serves.
    pub capability: String,
    /// Risk tier.
    pub risk_tier: String,
    /// Data classification.
    pub data_classification: String,
    /// License.
    pub license: String,
    /// Oldest agent that may run it.
    pub min_agent_version: String,
    /// Memory budget.
    pub memory_budget_bytes: u64,
    /// Model (or firmware image) length.
    pub model_length: u64,
    /// Lineage.
    pub lineage: LineageFacts,
    /// Evaluation card summary.
    pub evaluation: EvaluationFacts,
    /// Channels it is published to.
    #[serde(default)]
    pub channels: Vec<String>,
    /// Publish order: seconds × 10⁶ + the role's version, so later publishes sort later within a second.
    #[serde(default)]
    pub published_at: u64,
    /// When devices could first see it, in seconds (site policies' minimum soak time counts from here).
    #[serde(default)]
    pub released_at: u64,
    /// `firmware` or `router`; absent for models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A firmware image's facts, as the director's compact manifests state them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareFacts>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Lineage in a targets entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageFacts {
    /// How it was derived.
    pub operator: String,
    /// Parent package digests, hex.
    pub parents: Vec<String>,
}

/// Evaluation summary in a targets entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluationFacts {
    /// Suite name.
    pub suite: String,
    /// Suite digest, hex.
    pub suite_digest: String,
    /// Metric values as strings.
    pub metrics: BTreeMap<String, String>,
    /// The evaluation's decision.
    pub decision: String,
}

/// A firmware image in a targets entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFacts {
    /// Hardware it is for.
    pub hardware_id: String,
    /// Anti-rollback counter.
    pub release_counter: u64,
    /// Image length.
    pub image_length: u64,
    /// Image SHA-256, hex.
    pub image_sha256: String,
}

/// A snapshot or timestamp body: versions (and for timestamp, length and hash) of the files it pins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pins {
    /// `snapshot` or `timestamp`.
    #[serde(rename = "_type")]
    pub kind: String,
    /// [`SPEC_VERSION`].
    pub spec_version: String,
    /// Version.
    pub version: u64,
    /// Expiry, RFC 3339.
    pub expires: String,
    /// Pinned files by name.
    pub meta: BTreeMap<String, MetaFile>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A pinned metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Its version.
    pub version: u64,
    /// Its length (timestamp pins snapshot's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes (timestamp pins snapshot's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<BTreeMap<String, String>>,
}

/// Canonical JSON as TUF (securesystemslib) defines it, via sigstore-tuf's encoder.
pub fn canonical_json<T: Serialize>(v: &T) -> Result<Vec<u8>, TufError> {
    let v = serde_json::to_value(v).map_err(|e| TufError::Invalid(format!("metadata: {e}")))?;
    sigstore_tuf::canonical_json::to_canonical_bytes(&v).map_err(|e| TufError::Invalid(format!("canonical JSON: {e}")))
}

fn signature(bytes: &[u8], key: &Key) -> Signature {
    Signature { keyid: key.keyid.clone(), sig: hex::encode(key.signing.sign(bytes).to_bytes()) }
}

/// Wraps `signed` in a metadata envelope signed by each of `keys`.
pub fn sign<T: Serialize + Clone>(signed: &T, keys: &[&Key]) -> Result<Signed<T>, TufError> {
    let bytes = canonical_json(signed)?;
    Ok(Signed { signed: signed.clone(), signatures: keys.iter().map(|k| signature(&bytes, k)).collect() })
}

/// Adds `key`'s signature to an envelope (replacing an earlier one by the same key).
pub fn add_signature<T: Serialize>(envelope: &mut Signed<T>, key: &Key) -> Result<(), TufError> {
    let bytes = canonical_json(&envelope.signed)?;
    envelope.signatures.retain(|s| s.keyid != key.keyid);
    envelope.signatures.push(signature(&bytes, key));
    Ok(())
}

pub(super) fn expires(now: UnixSeconds, secs: u64) -> String {
    format_rfc3339(now.saturating_add(secs))
}

/// The keys of a first root.
pub(super) struct RootKeys<'a> {
    pub(super) roots: &'a [Key],
    pub(super) threshold: usize,
    pub(super) targets: &'a [Key],
    pub(super) snapshot: &'a Key,
    pub(super) timestamp: &'a Key,
}

pub(super) fn root_body(version: u64, now: UnixSeconds, expiry: u64, keys: RootKeys<'_>) -> Root {
    let RootKeys { roots, threshold, targets, snapshot, timestamp } = keys;
    let keys = roots.iter().chain(targets).chain([snapshot, timestamp]).map(|k| (k.keyid.clone(), k.tuf_public()));
    let ids = |ks: &[Key]| ks.iter().map(|k| k.keyid.clone()).collect::<Vec<_>>();
    let roles = [
        ("root", RoleKeys { keyids: ids(roots), threshold, extra: Extra::new() }),
        ("targets", RoleKeys::single(&targets[0])),
        ("snapshot", RoleKeys::single(snapshot)),
        ("timestamp", RoleKeys::single(timestamp)),
    ];
    Root {
        kind: "root".into(),
        spec_version: SPEC_VERSION.into(),
        version,
        expires: expires(now, expiry),
        consistent_snapshot: true,
        keys: keys.collect(),
        roles: roles.into_iter().map(|(r, k)| (r.to_owned(), k)).collect(),
        extra: Extra::new(),
    }
}

/// The `director/director.json` target: the director's public key.
pub(super) fn director_document(director: &Key) -> Vec<u8> {
    DirectorKeyDoc { public: director.public_bytes() }.to_json()
}

/// The delegated role that lists packages of `tier`.
pub fn role_for(tier: RiskTier) -> &'static str {
    match tier {
        RiskTier::Low | RiskTier::Medium => STANDARD_ROLE,
        RiskTier::High => HIGH_RISK_ROLE,
    }
}

/// The TUF target path of a package: `packages/<tier>/<name>-<version>.opkg`.
pub fn target_path(m: &Manifest) -> String {
    format!("packages/{}/{}-{}.opkg", m.risk_tier, m.name, m.version)
}

/// The targets entry for a package, with the custom fields an agent needs to apply site policy before download
/// (channels, publish order and release time are the publisher's to fill in). A router package carries `kind`; a
/// firmware package `kind` and `firmware` (hardware id, release counter, image length and SHA-256: what the director's compact
/// manifests state); model entries have neither.
pub fn target_entry(record: &PackageRecord, m: &Manifest) -> TargetEntry {
    let metrics = m.evaluation.metrics.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let facts = PackageFacts {
        digest: record.digest.to_hex(),
        name: m.name.clone(),
        version: m.version.to_string(),
        capability: m.capability.clone(),
        risk_tier: m.risk_tier.to_string(),
        data_classification: m.data_classification.to_string(),
        license: m.license.clone(),
        min_agent_version: m.runtime.min_agent_version.to_string(),
        memory_budget_bytes: m.runtime.memory_budget_bytes,
        model_length: record.model_len,
        lineage: LineageFacts {
            operator: m.lineage.operator.to_string(),
            parents: m.lineage.parents.iter().map(Digest::to_hex).collect(),
        },
        evaluation: EvaluationFacts {
            suite: m.evaluation.suite.name.clone(),
            suite_digest: m.evaluation.suite.digest.to_hex(),
            metrics,
            decision: m.evaluation.decision.outcome.to_string(),
        },
        channels: Vec::new(),
        published_at: 0,
        released_at: 0,
        kind: (!m.kind.is_model()).then(|| m.kind.to_string()),
        firmware: m.firmware.as_ref().map(|fw| FirmwareFacts {
            hardware_id: fw.hardware_id.clone(),
            release_counter: fw.release_counter,
            image_length: record.model_len,
            image_sha256: record.model_digest.to_hex(),
        }),
        extra: Extra::new(),
    };
    TargetEntry {
        length: record.package_len,
        hashes: [("sha256".to_owned(), record.digest.to_hex())].into(),
        custom: Some(Custom { outpost: facts, extra: Extra::new() }),
        extra: Extra::new(),
    }
}

/// Pretty JSON of a metadata file, as written to disk.
pub(super) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, TufError> {
    serde_json::to_vec_pretty(v).map_err(|e| TufError::Invalid(e.to_string()))
}

/// Parses a metadata file.
pub(super) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}
