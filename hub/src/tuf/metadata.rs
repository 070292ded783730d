//! TUF metadata as the hub writes it: role names, canonical JSON, signed envelopes, the bodies of root and
//! targets, version and expiry bumps, and the targets entries that carry a package's custom fields.

use std::collections::BTreeMap;

use ed25519_dalek::Signer;
use serde_json::{Value, json};

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

/// Canonical JSON as TUF (securesystemslib) defines it, via sigstore-tuf's encoder.
pub fn canonical_json(v: &Value) -> Result<Vec<u8>, TufError> {
    sigstore_tuf::canonical_json::to_canonical_bytes(v).map_err(|e| TufError::Invalid(format!("canonical JSON: {e}")))
}

/// Wraps `signed` in a metadata envelope signed by each of `keys`.
pub fn sign(signed: &Value, keys: &[&Key]) -> Result<Value, TufError> {
    let bytes = canonical_json(signed)?;
    let signatures: Vec<Value> =
        keys.iter().map(|k| json!({"keyid": k.keyid, "sig": hex::encode(k.signing.sign(&bytes).to_bytes())})).collect();
    Ok(json!({"signed": signed, "signatures": signatures}))
}

/// Adds `key`'s signature to an envelope (replacing an earlier one by the same key).
pub fn add_signature(envelope: &mut Value, key: &Key) -> Result<(), TufError> {
    let bytes = canonical_json(&envelope["signed"])?;
    let sig = json!({"keyid": key.keyid, "sig": hex::encode(key.signing.sign(&bytes).to_bytes())});
    let sigs = envelope["signatures"].as_array_mut().ok_or_else(|| TufError::Invalid("no signatures array".into()))?;
    sigs.retain(|s| s["keyid"] != key.keyid.as_str());
    sigs.push(sig);
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

pub(super) fn root_body(version: u64, now: UnixSeconds, expiry: u64, keys: RootKeys<'_>) -> Value {
    let RootKeys { roots, threshold, targets, snapshot, timestamp } = keys;
    let mut keys = serde_json::Map::new();
    for k in roots.iter().chain(targets).chain([snapshot, timestamp]) {
        keys.insert(k.keyid.clone(), k.tuf_public());
    }
    let ids = |ks: &[Key]| ks.iter().map(|k| Value::String(k.keyid.clone())).collect::<Vec<_>>();
    json!({
        "_type": "root",
        "spec_version": "1.0.31",
        "version": version,
        "expires": expires(now, expiry),
        "consistent_snapshot": true,
        "keys": keys,
        "roles": {
            "root": {"keyids": ids(roots), "threshold": threshold},
            "targets": {"keyids": ids(&targets[..1]), "threshold": 1},
            "snapshot": {"keyids": [snapshot.keyid], "threshold": 1},
            "timestamp": {"keyids": [timestamp.keyid], "threshold": 1},
        },
    })
}

pub(super) fn empty_targets(now: UnixSeconds, expiry: u64) -> Value {
    json!({"_type": "targets", "spec_version": "1.0.31", "version": 1, "expires": expires(now, expiry), "targets": {}})
}

pub(super) fn bump(signed: &mut Value, now: UnixSeconds, expiry: u64) {
    let v = signed["version"].as_u64().unwrap_or(0);
    signed["version"] = json!(v + 1);
    signed["expires"] = json!(expires(now, expiry));
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

/// The targets entry for a package, with the custom fields an agent needs to apply site policy before download.
/// TUF's canonical JSON has no floats, so metric values travel as strings. A firmware package also carries
/// `kind` and `firmware` (hardware id, release counter, image length and SHA-256: what the director's compact
/// manifests state); model entries are unchanged.
pub fn target_entry(record: &PackageRecord, m: &Manifest) -> Value {
    let mut entry = model_target_entry(record, m);
    if let Some(fw) = &m.firmware {
        entry["custom"]["outpost"]["kind"] = json!(m.kind.to_string());
        entry["custom"]["outpost"]["firmware"] = json!({
            "hardware_id": fw.hardware_id,
            "release_counter": fw.release_counter,
            "image_length": record.model_len,
            "image_sha256": record.model_digest.to_hex(),
        });
    }
    entry
}

fn model_target_entry(record: &PackageRecord, m: &Manifest) -> Value {
    let metrics: BTreeMap<&String, String> = m.evaluation.metrics.iter().map(|(k, v)| (k, v.to_string())).collect();
    json!({
        "length": record.package_len,
        "hashes": {"sha256": record.digest.to_hex()},
        "custom": {"outpost": {
            "digest": record.digest.to_hex(),
            "name": m.name,
            "version": m.version.to_string(),
            "capability": m.capability,
            "risk_tier": m.risk_tier.to_string(),
            "data_classification": m.data_classification.to_string(),
            "license": m.license,
            "min_agent_version": m.runtime.min_agent_version.to_string(),
            "memory_budget_bytes": m.runtime.memory_budget_bytes,
            "model_length": record.model_len,
            "lineage": {
                "operator": m.lineage.operator.to_string(),
                "parents": m.lineage.parents.iter().map(Digest::to_hex).collect::<Vec<_>>(),
            },
            "evaluation": {
                "suite": m.evaluation.suite.name,
                "suite_digest": m.evaluation.suite.digest.to_hex(),
                "metrics": metrics,
                "decision": m.evaluation.decision.outcome.to_string(),
            },
        }},
    })
}

pub(super) fn to_json(v: &Value) -> Result<Vec<u8>, TufError> {
    serde_json::to_vec_pretty(v).map_err(|e| TufError::Invalid(e.to_string()))
}
