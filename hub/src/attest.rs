//! The hub's attestation gate: the verifier trusting the central team's key, the signed reference values it
//! reads from `DIR/attestation/reference-values.cbor` (again whenever the file changes), and the registry seen as
//! the verifier's device directory.
//!
//! Fail closed: without a team key or valid, unexpired reference values no challenge is issued, so with
//! `[attestation] required = true` nothing is served; the reason is logged once per change and sent to devices.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_attestation::{
    DeviceDirectory, DeviceRecord, DeviceStatus as AttStatus, Expected, PublicKey, ReferenceError, Verifier,
    VerifierConfig,
};
use outpost_shared::Digest;
use outpost_shared::clock::Clock;

use crate::config::Attestation as AttestationConfig;
use crate::registry::{self, DeviceStatus};

/// Where the installed reference values live, under the data directory.
pub const REFERENCE_VALUES_FILE: &str = "attestation/reference-values.cbor";
/// The team's public key (hex), when `hub.toml` names none.
pub const TEAM_KEY_FILE: &str = "attestation/team.pub";

/// (inode, mtime, length) of a file when it was last looked at.
pub type FileStamp = (u64, std::time::SystemTime, u64);

/// A file's stamp; `None` if it does not exist (or cannot be read, which the caller finds out when reading).
pub fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((std::os::unix::fs::MetadataExt::ino(&m), m.modified().ok()?, m.len()))
}

/// The team key the hub trusts: `hub.toml`'s `attestation.team_key`, else `DIR/attestation/team.pub`.
///
/// # Errors
/// A message naming what is missing or unreadable.
pub fn team_key(dir: &Path, config: &AttestationConfig) -> Result<PublicKey, String> {
    if let Some(k) = &config.team_key {
        return k.parse().map_err(|_| "hub.toml attestation.team_key is not a 64-hex Ed25519 key".to_owned());
    }
    let path = dir.join(TEAM_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| format!("{} is not a 64-hex Ed25519 key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("no team key: set attestation.team_key in hub.toml or write it to {}", path.display()))
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

/// The verifier and what it was last fed.
pub struct Gate {
    dir: PathBuf,
    required: bool,
    verifier: Result<Verifier, String>,
    /// The reference-values file as last installed (or tried), and why the verifier attests nobody, if so.
    reference: Mutex<(Option<FileStamp>, Option<String>)>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("required", &self.required).finish_non_exhaustive()
    }
}

impl Gate {
    /// The gate of the hub in `dir`, configured by `[attestation]`.
    pub fn new(dir: &Path, config: &AttestationConfig, clock: Arc<dyn Clock>) -> Gate {
        let verifier_config = VerifierConfig {
            challenge_ttl: Duration::from_secs(config.challenge_ttl_secs),
            result_ttl: Duration::from_secs(config.result_ttl_secs),
            max_challenges_per_relay: config.max_relayed_challenges_per_site_node,
            ..VerifierConfig::default()
        };
        let verifier = team_key(dir, config).map(|key| Verifier::new(verifier_config, clock, key));
        Gate { dir: dir.to_owned(), required: config.required, verifier, reference: Mutex::new((None, None)) }
    }

    /// Whether connections must attest.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The verifier, with the reference-values file installed again if it changed since the last look.
    ///
    /// # Errors
    /// Why nobody can be attested now: no team key, no file, a file that does not verify, expired or rolled-back
    /// values (the previous values stay in use for the last two, as the verifier keeps them).
    pub fn verifier(&self) -> Result<&Verifier, String> {
        let verifier = self.verifier.as_ref().map_err(Clone::clone)?;
        let path = self.dir.join(REFERENCE_VALUES_FILE);
        let now = stamp(&path);
        let mut seen = self.reference.lock().unwrap_or_else(|p| p.into_inner());
        if seen.0 != now || seen.0.is_none() {
            let problem = match std::fs::read(&path) {
                Ok(bytes) => match verifier.install_reference_values(&bytes) {
                    Ok(serial) => {
                        tracing::info!(serial, "attestation reference values serial {serial} in use");
                        None
                    }
                    Err(e) => Some(format!("reference values in {}: {e}", path.display())),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
                    "no reference values installed ({} is missing; `outpost-hub attestation reference install`)",
                    path.display()
                )),
                Err(e) => Some(format!("reading {}: {e}", path.display())),
            };
            if problem.is_some() && problem != seen.1 {
                tracing::warn!("attestation: {}", problem.as_deref().unwrap_or_default());
            }
            *seen = (now, problem);
        }
        match (&seen.1, verifier.reference_values()) {
            // A newer file that failed to install leaves the old values in force; say why only if there are none.
            (_, Some(_)) => Ok(verifier),
            (Some(problem), None) => Err(problem.clone()),
            (None, None) => Err("no reference values installed".into()),
        }
    }

    /// Why a hub that requires attestation would serve nothing right now (for `serve` to say at start).
    pub fn readiness(&self) -> Result<u64, String> {
        let v = self.verifier()?;
        v.reference_values().map(|r| r.document().serial).ok_or_else(|| "no reference values installed".into())
    }
}

/// Checks and installs signed reference values into the hub in `dir`: they must verify under the trusted team key,
/// be unexpired, and carry a higher serial than the installed ones. Returns the serial.
///
/// # Errors
/// A message naming what failed.
pub fn install_reference_values(
    dir: &Path,
    config: &AttestationConfig,
    bytes: &[u8],
    clock: Arc<dyn Clock>,
) -> Result<u64, String> {
    let key = team_key(dir, config)?;
    let verifier = Verifier::new(VerifierConfig::default(), clock, key);
    let path = dir.join(REFERENCE_VALUES_FILE);
    if let Ok(current) = std::fs::read(&path) {
        // The installed file goes in first, so the verifier itself refuses a rollback.
        let _ = verifier.install_reference_values(&current);
    }
    let serial = verifier.install_reference_values(bytes).map_err(|e: ReferenceError| e.to_string())?;
    let parent = path.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    crate::blobs::write_atomic(&path, bytes).map_err(|e| e.to_string())?;
    Ok(serial)
}

/// The registry's record of one device as the verifier sees it, with what it should run.
#[derive(Debug)]
pub struct Directory {
    /// The device's key.
    pub key: PublicKey,
    /// Its registry record, if enrolled.
    pub record: Option<registry::DeviceRecord>,
    /// The model package the director assigns it now.
    pub assigned: Option<Digest>,
    /// The model packages it may run (published to its channel, not revoked, not rolled back from, not withheld
    /// by a rollout).
    pub eligible: Vec<Digest>,
    /// The model digest its evidence claims.
    pub claimed_model: Option<Digest>,
    /// The policy digest its evidence claims (see [`Directory::device`] on why it is not judged).
    pub claimed_policy: Option<Digest>,
}

impl Directory {
    /// What the device should run: moving to the assigned package. It may still run (a Warning) what it last
    /// reported, no model at all, or another package its channel may run — the last two cover a device whose
    /// report was lost after a rollback or fallback, which must not be locked out, since only a connection tells
    /// it of revocations. Anything else (a revoked, unpublished or other-channel package) is a mismatch.
    fn expected_model(&self, r: &registry::DeviceRecord) -> Expected {
        let to = self.assigned;
        let tolerated = match self.claimed_model {
            None => true,
            Some(d) => r.active == Some(d) || self.eligible.contains(&d),
        };
        match tolerated && self.claimed_model != to {
            true => Expected::Moving { from: self.claimed_model, to },
            false => Expected::Moving { from: r.active, to },
        }
    }
}

impl DeviceDirectory for Directory {
    /// Model: see [`Directory::expected_model`].
    /// Policy: the site's own decision, which the hub neither assigns nor can know before the device reports it;
    /// judging it against the last report would lock out every device whose site edits its policy between two
    /// reports. So the claimed digest is recorded (`device show`), not judged.
    fn device(&self, key: &PublicKey) -> Option<DeviceRecord> {
        let r = self.record.as_ref().filter(|_| *key == self.key)?;
        // A TPM record that does not decode makes the device unknown (fail closed), never software tier.
        let tpm = match &r.tpm {
            None => None,
            Some(t) => Some(t.enrolment()?),
        };
        Some(DeviceRecord {
            status: if r.status == DeviceStatus::Approved { AttStatus::Active } else { AttStatus::Revoked },
            tpm,
            model: self.expected_model(r),
            policy: Expected::Exactly(self.claimed_policy),
        })
    }
}
