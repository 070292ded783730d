//! The viability controller's records in the registry: controller policies by version, proposals and the decision
//! on each, all write-once, so what was proposed, on which policy, and who decided stay as they were.
//!
//! Invariants: a policy version is registered once and never below the newest; a proposal is stored once under its
//! digest; a proposal is decided once (approved or rejected), never re-decided.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use outpost_shared::Digest;
use outpost_shared::canonical;
use outpost_shared::clock::UnixSeconds;
use outpost_shared::controller::{Actuals, ControllerPolicy, Proposal, Reconciliation};

use super::{
    CONTROLLER_POLICIES, DECISIONS, PROPOSALS, RECONCILIATIONS, Registry, RegistryError, db_err, decode, parse_digest,
    read_table,
};

/// A registered controller policy and who registered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// The policy.
    pub policy: ControllerPolicy,
    /// Key id of the targets key holder who registered it (its author, for the four-eyes rule).
    pub registered_by: String,
    /// When.
    pub at: UnixSeconds,
}

/// The decision on a proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Approved (and carried out), or rejected.
    pub approved: bool,
    /// Key id of the approver, or `operator` for a rejection.
    pub by: String,
    /// Why (a rejection's reason; for an approval, what was carried out).
    pub detail: String,
    /// The release an approval started, if any (its telemetry is what the projection is reconciled with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// When.
    pub at: UnixSeconds,
}

/// A carried-out proposal's projection against telemetry, as the controller last compared them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconciled {
    /// What telemetry showed.
    pub actuals: Actuals,
    /// Projection against actuals, with the fields beyond the policy's bound.
    pub reconciliation: Reconciliation,
    /// When it was compared.
    pub at: UnixSeconds,
}

impl Registry {
    /// Records the latest reconciliation of proposal `id` (each run compares again as telemetry arrives).
    pub fn reconciliation_put(&self, id: &Digest, r: &Reconciled) -> Result<(), RegistryError> {
        let bytes = canonical::to_vec(r)
            .map_err(|e| RegistryError::Corrupt { key: format!("reconciliation of {id}"), problem: e.to_string() })?;
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(RECONCILIATIONS)
            .map_err(db_err)?
            .insert(id.to_hex().as_str(), bytes.as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// The latest recorded reconciliation of proposal `id`.
    pub fn reconciliation(&self, id: &Digest) -> Result<Option<Reconciled>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, RECONCILIATIONS)? else { return Ok(None) };
        let key = id.to_hex();
        match t.get(key.as_str()).map_err(db_err)? {
            Some(v) => Ok(Some(decode(&key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Registers a controller policy; refuses a version not above the newest.
    pub fn controller_policy_put(&self, record: &PolicyRecord) -> Result<Digest, RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CONTROLLER_POLICIES).map_err(db_err)?;
            let newest = t.last().map_err(db_err)?.map(|(k, _)| k.value());
            if let Some(newest) = newest.filter(|n| *n >= record.policy.version) {
                return Err(RegistryError::PolicyVersion { version: record.policy.version, newest });
            }
            let bytes = canonical::to_vec(record).map_err(|e| RegistryError::Corrupt {
                key: format!("controller policy v{}", record.policy.version),
                problem: e.to_string(),
            })?;
            t.insert(record.policy.version, bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(record.policy.digest())
    }

    /// The newest controller policy, if one is registered.
    pub fn controller_policy(&self) -> Result<Option<PolicyRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CONTROLLER_POLICIES)? else { return Ok(None) };
        match t.last().map_err(db_err)? {
            Some((k, v)) => Ok(Some(decode(&format!("controller policy v{}", k.value()), v.value())?)),
            None => Ok(None),
        }
    }

    /// Stores a proposal under its digest (the same proposal twice is one record).
    pub fn proposal_put(&self, p: &Proposal) -> Result<Digest, RegistryError> {
        let bytes = canonical::to_vec(p)
            .map_err(|e| RegistryError::Corrupt { key: format!("proposal for {}", p.label), problem: e.to_string() })?;
        let id = Digest::of(&bytes);
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(PROPOSALS).map_err(db_err)?;
            if t.get(id.to_hex().as_str()).map_err(db_err)?.is_none() {
                t.insert(id.to_hex().as_str(), bytes.as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// Every proposal with its decision, oldest first.
    pub fn proposals(&self) -> Result<Vec<(Digest, Proposal, Option<DecisionRecord>)>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, PROPOSALS)? else { return Ok(Vec::new()) };
        let decisions = read_table(&tx, DECISIONS)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let decision = match &decisions {
                Some(d) => match d.get(k.value()).map_err(db_err)? {
                    Some(v) => Some(decode::<DecisionRecord>(k.value(), v.value())?),
                    None => None,
                },
                None => None,
            };
            out.push((parse_digest(k.value())?, decode::<Proposal>(k.value(), v.value())?, decision));
        }
        out.sort_by_key(|(_, p, _)| p.at);
        Ok(out)
    }

    /// The proposal an id or a unique id prefix (8+ hex) names.
    pub fn proposal(&self, reference: &str) -> Result<(Digest, Proposal, Option<DecisionRecord>), RegistryError> {
        let unknown = || RegistryError::UnknownProposal(reference.to_owned());
        super::by_prefix(reference, self.proposals()?, |(d, _, _)| d, unknown)
    }

    /// Records the decision on proposal `id`; refuses a second one.
    pub fn decision_put(&self, id: &Digest, d: &DecisionRecord) -> Result<(), RegistryError> {
        let bytes = canonical::to_vec(d)
            .map_err(|e| RegistryError::Corrupt { key: format!("decision on {id}"), problem: e.to_string() })?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(DECISIONS).map_err(db_err)?;
            if t.get(id.to_hex().as_str()).map_err(db_err)?.is_some() {
                return Err(RegistryError::AlreadyDecided(*id));
            }
            t.insert(id.to_hex().as_str(), bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }
}
