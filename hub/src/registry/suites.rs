//! Evaluation suites and evaluation records in the registry, both write-once: a suite's data files go to the blob
//! store and its canonical manifest (naming each file by digest) to the index under its digest; a record is stored
//! under its own digest and never replaced.
//!
//! Invariants: blobs before index entries (a crash leaves at most unreferenced blobs); one suite name names one
//! digest for ever (a changed suite needs a new name); inserting a record or suite that exists changes nothing.

use std::path::Path;

use redb::ReadableTable;

use outpost_shared::Digest;
use outpost_shared::capability::Side;
use outpost_shared::evaluation::{
    EvaluationRecord, FileEntry, MAX_SUITE_TOML_BYTES, SUITE_FILE, SuiteManifest, SuiteToml,
};

use super::packages::read_limited;
use super::{
    EVALUATIONS, PACKAGE_EVALUATIONS, Registry, RegistryError, SUITE_NAMES, SUITES, db_err, decode, parse_digest,
    read_table,
};
use crate::blobs::BlobStatus;

/// What `suite add` did.
#[derive(Debug, Clone)]
pub struct SuiteAdded {
    /// The suite's digest.
    pub digest: Digest,
    /// Its manifest.
    pub manifest: SuiteManifest,
    /// False when the same suite was already registered (nothing changed).
    pub added: bool,
}

impl Registry {
    /// Registers the suite in directory `dir` (`suite.toml` and the arrays it names). Its capability must be
    /// registered, and it must give an array for each contract input and reference outputs only for contract
    /// outputs.
    pub fn suite_add(&self, dir: &Path) -> Result<SuiteAdded, RegistryError> {
        let manifest =
            suite_from_dir(dir, |name| self.capability(name), &self.blobs, self.config.limits.max_model_bytes)?;
        let digest = manifest.digest();
        let key = digest.to_hex();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut names = tx.open_table(SUITE_NAMES).map_err(db_err)?;
            if let Some(existing) = names.get(manifest.suite.name.as_str()).map_err(db_err)? {
                let existing = parse_digest(existing.value())?;
                if existing == digest {
                    return Ok(SuiteAdded { digest, manifest, added: false });
                }
                return Err(RegistryError::SuiteNameTaken { name: manifest.suite.name.clone(), existing });
            }
            names.insert(manifest.suite.name.as_str(), key.as_str()).map_err(db_err)?;
            let mut suites = tx.open_table(SUITES).map_err(db_err)?;
            suites.insert(key.as_str(), manifest.to_cbor().as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(SuiteAdded { digest, manifest, added: true })
    }

    /// The suite a reference names: its name, its digest or a unique digest prefix (8+ hex).
    pub fn suite(&self, reference: &str) -> Result<(Digest, SuiteManifest), RegistryError> {
        named(reference, self.suites()?)
    }

    /// Every registered suite, by name.
    pub fn suites(&self) -> Result<Vec<(Digest, SuiteManifest)>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, SUITES)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(suite_of(k.value(), v.value())?);
        }
        out.sort_by(|a, b| a.1.suite.name.cmp(&b.1.suite.name));
        Ok(out)
    }

    /// The bytes of one data file of a suite, rehashed.
    pub fn suite_file(&self, m: &SuiteManifest, file: &str) -> Result<Vec<u8>, RegistryError> {
        let entry = m.files.get(file).ok_or_else(|| RegistryError::Corrupt {
            key: m.suite.name.clone(),
            problem: format!("the suite names `{file}` but lists no such file"),
        })?;
        self.blobs.read_verified(&entry.digest)?.map_err(|status| RegistryError::BadBlob {
            role: "suite file",
            digest: entry.digest,
            missing: status == BlobStatus::Missing,
        })
    }

    /// Stores an evaluation record under its id; a record with that id is never replaced.
    pub fn evaluation_put(&self, record: &EvaluationRecord) -> Result<Digest, RegistryError> {
        let id = record.id();
        let key = id.to_hex();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut records = tx.open_table(EVALUATIONS).map_err(db_err)?;
            if records.get(key.as_str()).map_err(db_err)?.is_some() {
                return Err(RegistryError::RecordExists(id));
            }
            records.insert(key.as_str(), record.to_cbor().as_slice()).map_err(db_err)?;
            let mut by_package = tx.open_table(PACKAGE_EVALUATIONS).map_err(db_err)?;
            by_package.insert((record.package.to_hex().as_str(), key.as_str()), record.at).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// A package's evaluation records with their ids, oldest first.
    pub fn evaluations(&self, package: &Digest) -> Result<Vec<(Digest, EvaluationRecord)>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let (Some(index), Some(records)) = (read_table(&tx, PACKAGE_EVALUATIONS)?, read_table(&tx, EVALUATIONS)?)
        else {
            return Ok(Vec::new());
        };
        let p = package.to_hex();
        let mut out = Vec::new();
        for row in index.range((p.as_str(), "")..).map_err(db_err)? {
            let (k, _) = row.map_err(db_err)?;
            let (pk, id) = k.value();
            if pk != p {
                break;
            }
            let bytes = records.get(id).map_err(db_err)?.ok_or_else(|| RegistryError::Corrupt {
                key: id.to_owned(),
                problem: "indexed evaluation record is missing".into(),
            })?;
            let record: EvaluationRecord = decode(id, bytes.value())?;
            out.push((parse_digest(id)?, record));
        }
        out.sort_by_key(|(_, r)| r.at);
        Ok(out)
    }
}

/// The suite of `all` a reference names: its name, its digest or a unique digest prefix (both backends).
pub(crate) fn named(
    reference: &str,
    all: Vec<(Digest, SuiteManifest)>,
) -> Result<(Digest, SuiteManifest), RegistryError> {
    let unknown = || RegistryError::UnknownSuite(reference.to_owned());
    if let Some(found) = all.iter().find(|(_, m)| m.suite.name == reference) {
        return Ok(found.clone());
    }
    super::by_prefix(reference, all, |(d, _)| d, unknown)
}

/// A stored suite manifest; `key` (its digest) names it when it does not parse.
pub(crate) fn suite_of(key: &str, cbor: &[u8]) -> Result<(Digest, SuiteManifest), RegistryError> {
    let m =
        SuiteManifest::from_cbor(cbor).map_err(|problem| RegistryError::Corrupt { key: key.to_owned(), problem })?;
    Ok((parse_digest(key)?, m))
}

/// The manifest of the suite in directory `dir` (`suite.toml` and the arrays it names), its files put in `blobs`
/// (both backends). Its capability (looked up by `capability`) must be registered, and the suite must give an array
/// for each contract input and reference outputs only for contract outputs.
pub(crate) fn suite_from_dir(
    dir: &Path,
    capability: impl FnOnce(&str) -> Result<Option<super::CapabilityRecord>, RegistryError>,
    blobs: &crate::blobs::BlobStore,
    max_file_bytes: u64,
) -> Result<SuiteManifest, RegistryError> {
    let toml_path = dir.join(SUITE_FILE);
    let bad = |problem: String| RegistryError::BadSuite { suite: toml_path.display().to_string(), problem };
    let io = |source| RegistryError::Io { op: "read", path: toml_path.clone(), source };
    let mut text = String::new();
    // One byte over the limit is enough for `from_toml` to refuse it, naming the limit.
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::open(&toml_path).map_err(io)?, MAX_SUITE_TOML_BYTES as u64 + 1),
        &mut text,
    )
    .map_err(io)?;
    let suite = SuiteToml::from_toml(&text, &toml_path)?;
    let cap = capability(&suite.capability)?
        .ok_or_else(|| RegistryError::UnknownCapability(suite.capability.clone()))?
        .capability;
    for spec in &cap.contract.inputs {
        if !suite.inputs.contains_key(&spec.name) {
            return Err(bad(format!("inputs: no array for the capability's input `{}`", spec.name)));
        }
    }
    let known = |side: Side, name: &str| match side {
        Side::Inputs => cap.contract.inputs.iter().any(|s| s.name == name),
        Side::Outputs => cap.contract.outputs.iter().any(|s| s.name == name),
    };
    let named = suite.inputs.keys().map(|k| (Side::Inputs, k));
    if let Some((side, name)) =
        named.chain(suite.reference.outputs.keys().map(|k| (Side::Outputs, k))).find(|(s, n)| !known(*s, n))
    {
        return Err(bad(format!("`{name}` is not among the capability's contract {side}")));
    }
    let mut files = std::collections::BTreeMap::new();
    for file in suite.files() {
        let bytes = read_limited(&dir.join(file), max_file_bytes, "max_model_bytes")?;
        let (digest, _) = blobs.put(&bytes)?;
        files.insert(file.to_owned(), FileEntry { digest, len: bytes.len() as u64 });
    }
    Ok(SuiteManifest { suite, files })
}
