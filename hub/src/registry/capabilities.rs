//! Capabilities in the registry: each name's current definition and every revision of it, and the rules packages
//! meet at `package add` and `release publish` (the pure checks are `outpost_shared::capability`'s).
//!
//! Invariant: a capability's contract never changes once registered (its packages were checked against it); a
//! revision may change anything else (owners, budget, baseline), and the current record and its history entry are
//! written in one transaction.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use outpost_shared::Manifest;
use outpost_shared::capability::Capability;
use outpost_shared::clock::UnixSeconds;

use super::{CAPABILITIES, CAPABILITY_HISTORY, Registry, RegistryError, db_err, decode, encode, read_table};

/// A capability as the index keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityRecord {
    /// The definition.
    pub capability: Capability,
    /// 1 for the first definition, one more for each change.
    pub revision: u64,
    /// When this revision was registered (Unix seconds).
    pub updated_at: UnixSeconds,
}

/// What `capability add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityAdded {
    /// A new capability.
    Created,
    /// A new revision of a registered capability (owners, budget, baseline or description changed).
    Revised,
    /// The same definition was already registered; nothing changed.
    Unchanged,
}

/// How a package stands towards its manifest's capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityCheck {
    /// The capability is registered (this revision) and the package fits it.
    Fits {
        /// The capability revision checked against.
        revision: u64,
    },
    /// The capability is not registered: nothing to check against (packages of unregistered capabilities are
    /// accepted, as before capabilities existed).
    NotRegistered,
}

impl Registry {
    /// Registers `cap`, or a new revision of it. Refuses a revision that changes the contract.
    pub fn capability_add(&self, cap: &Capability) -> Result<(CapabilityRecord, CapabilityAdded), RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let out = {
            let mut current = tx.open_table(CAPABILITIES).map_err(db_err)?;
            let previous: Option<CapabilityRecord> =
                current.get(cap.name.as_str()).map_err(db_err)?.map(|v| decode(&cap.name, v.value())).transpose()?;
            let (record, added) = revised(previous, cap, self.clock.wall())?;
            if added == CapabilityAdded::Unchanged {
                return Ok((record, added));
            }
            let bytes = encode(&record)?;
            current.insert(cap.name.as_str(), bytes.as_slice()).map_err(db_err)?;
            let mut history = tx.open_table(CAPABILITY_HISTORY).map_err(db_err)?;
            history.insert((cap.name.as_str(), record.revision), bytes.as_slice()).map_err(db_err)?;
            (record, added)
        };
        tx.commit().map_err(db_err)?;
        Ok(out)
    }

    /// The current definition of capability `name`, if registered.
    pub fn capability(&self, name: &str) -> Result<Option<CapabilityRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CAPABILITIES)? else { return Ok(None) };
        t.get(name).map_err(db_err)?.map(|v| decode(name, v.value())).transpose()
    }

    /// Every registered capability, by name.
    pub fn capabilities(&self) -> Result<Vec<CapabilityRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CAPABILITIES)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every revision of capability `name`, oldest first (empty if it was never registered).
    pub fn capability_history(&self, name: &str) -> Result<Vec<CapabilityRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CAPABILITY_HISTORY)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.range((name, 0)..=(name, u64::MAX)).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(&format!("{name}#{}", k.value().1), v.value())?);
        }
        Ok(out)
    }

    /// Whether a package with manifest `m` may join its capability: if the capability is registered, the package
    /// must fit it ([`Capability::admits`]); an unregistered capability admits anything. `file` names the manifest
    /// in errors.
    pub fn capability_check(&self, m: &Manifest, file: &str) -> Result<CapabilityCheck, RegistryError> {
        checked(self.capability(&m.capability)?, m, file)
    }

    /// Whether the package with manifest `m` may be published: its registered capability names all four owners
    /// and the package still fits it. An unregistered capability does not stop a publish.
    pub fn publish_check(&self, m: &Manifest) -> Result<CapabilityCheck, RegistryError> {
        publishable(self.capability(&m.capability)?, m)
    }
}

/// What registering `cap` over the `previous` record makes (both backends): the same definition is `Unchanged`
/// (write nothing), a changed contract is refused, anything else is the next revision.
pub(crate) fn revised(
    previous: Option<CapabilityRecord>,
    cap: &Capability,
    now: UnixSeconds,
) -> Result<(CapabilityRecord, CapabilityAdded), RegistryError> {
    match previous {
        Some(p) if p.capability == *cap => Ok((p, CapabilityAdded::Unchanged)),
        Some(p) if p.capability.contract != cap.contract => {
            Err(RegistryError::CapabilityContractChanged { name: cap.name.clone() })
        }
        previous => {
            let added = if previous.is_some() { CapabilityAdded::Revised } else { CapabilityAdded::Created };
            let revision = previous.map_or(1, |p| p.revision + 1);
            Ok((CapabilityRecord { capability: cap.clone(), revision, updated_at: now }, added))
        }
    }
}

/// Whether a package with manifest `m` fits its capability's record `rec` (both backends; `file` names the
/// manifest in errors): an unregistered capability admits anything.
pub(crate) fn checked(
    rec: Option<CapabilityRecord>,
    m: &Manifest,
    file: &str,
) -> Result<CapabilityCheck, RegistryError> {
    let Some(rec) = rec else { return Ok(CapabilityCheck::NotRegistered) };
    rec.capability.admits(m).map_err(|source| RegistryError::OutsideCapability {
        file: file.to_owned(),
        capability: m.capability.clone(),
        revision: rec.revision,
        source: Box::new(source),
    })?;
    Ok(CapabilityCheck::Fits { revision: rec.revision })
}

/// Whether the package with manifest `m` may be published under its capability's record `rec` (both backends):
/// the capability names all four owners and the package still fits it.
pub(crate) fn publishable(rec: Option<CapabilityRecord>, m: &Manifest) -> Result<CapabilityCheck, RegistryError> {
    if let Some(rec) = &rec {
        rec.capability.check_publishable()?;
    }
    checked(rec, m, &format!("{}@{}", m.name, m.version))
}
