//! The package side of the registry: adding a package (checks, blobs, then index), lookups by digest, prefix,
//! `name@version` or alias, lineage walks, aliases and their history, blob verification and reconstruction.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use outpost_shared::challenger::{self, DerivedRisk};
use outpost_shared::clock::UnixSeconds;
use outpost_shared::manifest::{LineageOperator, PackageKind, RiskTier};
use outpost_shared::model::{self, SmokeReport};
use outpost_shared::operators;
use outpost_shared::{Digest, Manifest, ManifestError, package};

use super::capabilities::CapabilityCheck;
use super::{
    ALIAS_HISTORY, ALIASES, MANIFESTS, NAMES, PACKAGES, Registry, RegistryError, db_err, decode, encode, parse_digest,
};
use crate::blobs::{self, BlobStatus, PutOutcome};
use crate::storage::CapabilityStore;

/// Shortest digest prefix accepted where a package is named.
pub const MIN_PREFIX_LEN: usize = 8;

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
    /// How the package stands towards its capability; `None` when it was already registered.
    pub capability: Option<CapabilityCheck>,
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

impl Registry {
    /// Checks a model against its manifest (contract and smoke test) — or, for a firmware package, that the image
    /// fits a secondary (never loaded with tract) — builds the package and registers it. If the manifest's
    /// capability is registered, the package must fit it first ([`Registry::capability_check`]); a package of an
    /// unregistered capability is added unchecked. Adding a package that is already registered changes nothing.
    pub fn add(&self, model_path: &Path, manifest_path: &Path) -> Result<AddOutcome, RegistryError> {
        self.add_against(model_path, manifest_path, self)
    }

    /// [`Registry::add`] with the capability looked up in `capabilities` (the store's: on PostgreSQL the
    /// database's, shared by the replicas, not this index's).
    pub fn add_against(
        &self,
        model_path: &Path,
        manifest_path: &Path,
        capabilities: &dyn CapabilityStore,
    ) -> Result<AddOutcome, RegistryError> {
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
        let mut model_bytes = read_limited(model_path, limits.max_model_bytes, "max_model_bytes")?;
        if manifest.kind == PackageKind::Router {
            // Authors write TOML; the package carries the canonical CBOR the agent reads.
            model_bytes = router_cbor(&model_bytes, model_path)?;
        }
        self.add_parsed_against(manifest, &model_bytes, &file, model_path, capabilities)
    }

    /// [`Registry::add`] for a manifest and model already in memory (the challenger's descendants): the same
    /// checks in the same order. `file` and `model_path` name them in errors.
    pub fn add_parsed(
        &self,
        manifest: Manifest,
        model_bytes: &[u8],
        file: &str,
        model_path: &Path,
    ) -> Result<AddOutcome, RegistryError> {
        self.add_parsed_against(manifest, model_bytes, file, model_path, self)
    }

    /// [`Registry::add_parsed`] with the capability looked up in `capabilities`.
    pub fn add_parsed_against(
        &self,
        manifest: Manifest,
        model_bytes: &[u8],
        file: &str,
        model_path: &Path,
        capabilities: &dyn CapabilityStore,
    ) -> Result<AddOutcome, RegistryError> {
        let (file, model_bytes) = (file.to_owned(), model_bytes);
        if let Err((field, problem)) = manifest.validate() {
            return Err(ManifestError { file, field, line: None, problem }.into());
        }
        let manifest_cbor = manifest.to_cbor();
        let digest = package::digest_of_parts(&manifest_cbor, model_bytes);
        let name_version = format!("{}@{}", manifest.name, manifest.version);
        if self.record(&digest)?.is_some() {
            // Same bytes, same digest: it passed every check when it was first added.
            return Ok(AddOutcome { digest, name_version, added: false, smoke: None, capability: None });
        }
        // A registered capability's contract, data class and risk tier before anything heavier (tract).
        let capability =
            Some(super::capabilities::checked(capabilities.capability(&manifest.capability)?, &manifest, &file)?);
        self.risk_check(&manifest, model_bytes, &file)?;
        let smoke = match manifest.kind {
            PackageKind::Model => Some(
                model::check(model_bytes, &manifest)
                    .map_err(|source| RegistryError::Model { model: model_path.to_owned(), source })?,
            ),
            // Never loaded as a model: the secondary checks length and hash, then trial-boots and confirms.
            PackageKind::Firmware => {
                check_firmware_image(model_bytes)
                    .map_err(|problem| RegistryError::FirmwareImage { image: model_path.to_owned(), problem })?;
                None
            }
            // Rules, not a model: their shape now, what the channels serve at publish.
            PackageKind::Router => {
                let refused = |problem: String| RegistryError::Router { file: model_path.to_owned(), problem };
                let router = outpost_shared::route::Router::from_cbor(model_bytes).map_err(refused)?;
                let rules = format!("{}@{}", router.name, router.version);
                if rules != name_version {
                    return Err(refused(format!(
                        "the rules are {rules}, the manifest {name_version}: one package, one name and version"
                    )));
                }
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
        let package_bytes = package::encode_parts(&manifest_cbor, model_bytes);
        let (model_digest, _) = self.blobs.put(model_bytes)?;
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
                    return Ok(AddOutcome { digest, name_version, added: false, smoke, capability });
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
        Ok(AddOutcome { digest, name_version, added: true, smoke, capability })
    }

    /// Risk derived, not only declared: against each registered parent, a change of contract, data classification,
    /// capability or kind, or operator types the lineage operator does not explain, makes the package high risk
    /// ([`challenger::derive_risk`]); a manifest declaring less is refused, naming what changed.
    pub fn risk_check(
        &self,
        manifest: &Manifest,
        model_bytes: &[u8],
        file: &str,
    ) -> Result<DerivedRisk, RegistryError> {
        let mut worst = DerivedRisk { declared: manifest.risk_tier, derived: RiskTier::Low, reasons: Vec::new() };
        for parent in &manifest.lineage.parents {
            let Some(record) = self.record(parent)? else { continue };
            let (_, parent_manifest) = self.manifest(parent)?;
            let new_ops = if manifest.kind.is_model() && parent_manifest.kind.is_model() {
                let parent_model = self.model_of(&record)?;
                match (operators::op_types(model_bytes), operators::op_types(&parent_model)) {
                    (Ok(child), Ok(parent)) => child.difference(&parent).cloned().collect(),
                    // Not ONNX: tract refuses it next, with a better message.
                    _ => BTreeSet::new(),
                }
            } else {
                BTreeSet::new()
            };
            let cap = self.capability(&manifest.capability)?.map(|r| r.capability.contract);
            let r = challenger::derive_risk(&parent_manifest, manifest, &new_ops, cap.as_ref());
            worst.derived = worst.derived.max(r.derived);
            worst.reasons.extend(r.reasons);
        }
        if worst.derived > worst.declared {
            return Err(RegistryError::RiskBelowDerived {
                file: file.to_owned(),
                declared: worst.declared,
                derived: worst.derived,
                reasons: worst.reasons.join("; "),
            });
        }
        Ok(worst)
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
        sort_listing(&mut out);
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
        let prefix = digest_prefix(reference)?;
        let packages = tx.open_table(PACKAGES).map_err(db_err)?;
        let mut matches = Vec::new();
        for row in packages.range(prefix.as_str()..).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            matches.push(parse_digest(k.value())?);
        }
        one_match(reference, prefix, &matches)
    }

    /// The stored manifest of package `d`.
    pub fn manifest(&self, d: &Digest) -> Result<(Vec<u8>, Manifest), RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(MANIFESTS).map_err(db_err)?;
        let key = d.to_hex();
        let cbor = t.get(key.as_str()).map_err(db_err)?.ok_or_else(|| RegistryError::UnknownPackage(key.clone()))?;
        parsed_manifest(key, cbor.value().to_vec())
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

    /// A package's model bytes, rehashed against the digest recorded for them.
    pub fn model_of(&self, record: &PackageRecord) -> Result<Vec<u8>, RegistryError> {
        self.blobs.read_verified(&record.model_digest)?.map_err(|status| RegistryError::BadBlob {
            role: "model",
            digest: record.model_digest,
            missing: status == BlobStatus::Missing,
        })
    }

    /// Rebuilds the package `alias` names from the stored model blob and manifest, checks that its digest is
    /// the recorded one, and writes it to `out_dir/<name>-<version>.opkg`. Returns the file written.
    pub fn reconstruct(&self, alias: &str, out_dir: &Path) -> Result<(PathBuf, Digest), RegistryError> {
        let digest = self.alias_get(alias)?;
        let record = self.record(&digest)?.ok_or_else(|| RegistryError::UnknownPackage(digest.to_hex()))?;
        let (manifest_cbor, manifest) = self.manifest(&digest)?;
        let model = self.model_of(&record)?;
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
/// A router TOML compiled to the canonical CBOR a router package carries.
fn router_cbor(toml: &[u8], path: &Path) -> Result<Vec<u8>, RegistryError> {
    let refused = |problem: String| RegistryError::Router { file: path.to_owned(), problem };
    let text = std::str::from_utf8(toml).map_err(|_| refused("not UTF-8 text".into()))?;
    let router = outpost_shared::route::Router::from_toml(text, path).map_err(|e| refused(e.to_string()))?;
    router.to_cbor().map_err(|e| refused(e.to_string()))
}

fn check_firmware_image(image: &[u8]) -> Result<(), String> {
    match u32::try_from(image.len()) {
        Ok(0) => Err("a firmware image cannot be empty".into()),
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{} bytes is more than a secondary's 4 GiB limit", image.len())),
    }
}

// What both backends (this redb index and `crate::store::postgres`) do with packages, so they cannot drift apart.

/// Packages in listing order: by name, then by version (semver order; a version that does not parse first).
pub(crate) fn sort_listing(out: &mut [PackageRecord]) {
    out.sort_by(|a, b| {
        let va = semver::Version::parse(&a.version).ok();
        let vb = semver::Version::parse(&b.version).ok();
        a.name.cmp(&b.name).then(va.cmp(&vb))
    });
}

/// The digest prefix a reference names (lower-case hex, `sha256:` allowed), if it is one that may be resolved.
pub(crate) fn digest_prefix(reference: &str) -> Result<String, RegistryError> {
    let prefix = reference.strip_prefix("sha256:").unwrap_or(reference).to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX_LEN || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RegistryError::UnknownPackage(reference.into()));
    }
    Ok(prefix)
}

/// The one package whose digest starts with `prefix`, or why there is not one.
pub(crate) fn one_match(reference: &str, prefix: String, matches: &[Digest]) -> Result<Digest, RegistryError> {
    match matches {
        [] => Err(RegistryError::UnknownPackage(reference.into())),
        [one] => Ok(*one),
        _ => Err(RegistryError::AmbiguousPrefix { prefix, count: matches.len() }),
    }
}

/// A stored manifest and what it parses to; `key` (the package digest) names it when it does not.
pub(crate) fn parsed_manifest(key: String, cbor: Vec<u8>) -> Result<(Vec<u8>, Manifest), RegistryError> {
    let manifest = Manifest::from_cbor(&cbor).map_err(|e| RegistryError::Corrupt { key, problem: e.to_string() })?;
    Ok((cbor, manifest))
}

pub(crate) fn valid_alias(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 64
        && !a.contains('@')
        && a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        // An alias that looks like a digest prefix would shadow packages in `resolve`.
        && !a.chars().all(|c| c.is_ascii_hexdigit())
}

pub(super) fn read_limited(path: &Path, limit: u64, key: &'static str) -> Result<Vec<u8>, RegistryError> {
    let io = |op| move |source| RegistryError::Io { op, path: path.into(), source };
    let len = fs::metadata(path).map_err(io("read"))?.len();
    if len > limit {
        return Err(RegistryError::TooLarge { path: path.into(), len, limit, key });
    }
    fs::read(path).map_err(io("read"))
}
