//! The director: which device runs which target, and which packages are revoked, signed with the online
//! director key (authorised as a TUF target) in the envelope format of `outpost_shared::director`.
//!
//! Revocation only narrows what may run, so it is published with the online key and a short expiry; taking a
//! package out of TUF targets as well needs the offline targets key (`TufRepo::unpublish`).

use std::fs;
use std::path::PathBuf;

use ed25519_dalek::Signer;
use serde_json::Value;

use outpost_shared::Digest;
use outpost_shared::canonical;
use outpost_shared::clock::UnixSeconds;
use outpost_shared::director::{
    self, ASSIGNMENT_DOMAIN, AssignedTarget, Assignment, REVOCATIONS_DOMAIN, RevocationList, Revoked,
};

use crate::blobs;
use crate::registry::{DeviceStatus, Registry, RegistryError};
use crate::tuf::{HIGH_RISK_ROLE, STANDARD_ROLE, TufError, TufRepo};

/// Why a director operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectorOpError {
    /// Repository trouble.
    #[error(transparent)]
    Tuf(#[from] TufError),
    /// Registry trouble.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Encoding trouble.
    #[error("director document: {0}")]
    Encode(String),
}

/// A published target as the director sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// TUF target path.
    pub path: String,
    /// Package digest.
    pub digest: Digest,
    /// Length.
    pub length: u64,
    /// Channels it was published to.
    pub channels: Vec<String>,
    /// Publish sequence (role version and order), larger is newer.
    pub published_at: u64,
}

/// Director operations over a hub's repository and registry.
#[derive(Debug)]
pub struct Director<'a> {
    repo: &'a TufRepo,
}

impl<'a> Director<'a> {
    /// The director of `repo`.
    pub fn new(repo: &'a TufRepo) -> Self {
        Director { repo }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.repo.metadata_dir().parent().map(|p| p.join("director")).unwrap_or_default().join(name)
    }

    fn seal<T: serde::Serialize>(&self, doc: &T, domain: &[u8]) -> Result<Vec<u8>, DirectorOpError> {
        let key = self.repo.online_key("director")?;
        director::seal(doc, domain, &key.public_bytes(), |m| key.signing.sign(m).to_bytes())
            .map_err(|e| DirectorOpError::Encode(e.to_string()))
    }

    /// The current revocation list (empty, version 0, if none was published yet).
    pub fn revocations(&self) -> Result<RevocationList, DirectorOpError> {
        let p = self.path("revocations.cbor");
        match fs::read(&p) {
            Ok(bytes) => {
                let env: director::Envelope =
                    canonical::from_slice(&bytes).map_err(|e| DirectorOpError::Encode(e.to_string()))?;
                canonical::from_slice(&env.body).map_err(|e| DirectorOpError::Encode(e.to_string()))
            }
            Err(_) => Ok(RevocationList { version: 0, expires: 0, revoked: vec![] }),
        }
    }

    /// The signed revocation list as served to devices.
    pub fn revocations_bytes(&self) -> Option<Vec<u8>> {
        fs::read(self.path("revocations.cbor")).ok()
    }

    /// Adds `digest` to the revocation list and re-signs it.
    pub fn revoke(&self, digest: Digest, reason: &str, now: UnixSeconds) -> Result<RevocationList, DirectorOpError> {
        let mut list = self.revocations()?;
        if !list.revoked.iter().any(|r| r.digest == digest) {
            list.revoked.push(Revoked { digest, reason: reason.into(), at: now });
        }
        self.write_revocations(list, now)
    }

    /// Re-signs the revocation list with a fresh expiry (the serving hub calls this with the timestamp).
    pub fn refresh_revocations(&self, now: UnixSeconds) -> Result<RevocationList, DirectorOpError> {
        let list = self.revocations()?;
        self.write_revocations(list, now)
    }

    fn write_revocations(&self, mut list: RevocationList, now: UnixSeconds) -> Result<RevocationList, DirectorOpError> {
        list.version += 1;
        list.expires = now + self.repo.expiries().timestamp_secs;
        let bytes = self.seal(&list, REVOCATIONS_DOMAIN)?;
        let p = self.path("revocations.cbor");
        fs::create_dir_all(p.parent().unwrap_or(&p)).map_err(|e| TufError::Io {
            op: "create directory",
            path: p.clone(),
            source: e,
        })?;
        blobs::write_atomic(&p, &bytes).map_err(TufError::from)?;
        Ok(list)
    }

    /// Every target published to devices (fully signed), newest last.
    pub fn published(&self) -> Result<Vec<Published>, DirectorOpError> {
        let mut out = Vec::new();
        for role in [STANDARD_ROLE, HIGH_RISK_ROLE] {
            let v = self.repo.latest_version(role)?;
            let meta = self.repo.read_meta(&format!("{v}.{role}.json"))?;
            if let Some(targets) = meta["signed"]["targets"].as_object() {
                for (path, t) in targets {
                    let o = &t["custom"]["outpost"];
                    let Some(digest) = o["digest"].as_str().and_then(|d| d.parse().ok()) else { continue };
                    out.push(Published {
                        path: path.clone(),
                        digest,
                        length: t["length"].as_u64().unwrap_or(0),
                        channels: serde_json::from_value(o["channels"].clone()).unwrap_or_default(),
                        published_at: o["published_at"].as_u64().unwrap_or(0),
                    });
                }
            }
        }
        out.sort_by_key(|p| p.published_at);
        Ok(out)
    }

    /// Signs a fresh assignment for `device`: the newest non-revoked package published to its channel.
    /// Returns `None` for unknown or revoked devices and for channels with nothing published.
    pub fn assignment(
        &self,
        reg: &Registry,
        device: &str,
        now: UnixSeconds,
    ) -> Result<Option<Vec<u8>>, DirectorOpError> {
        let Some(record) = reg.device(device)? else { return Ok(None) };
        if record.status != DeviceStatus::Approved {
            return Ok(None);
        }
        let revoked = self.revocations()?;
        let current = self.published()?.into_iter().rfind(|p| {
            p.channels.contains(&record.channel)
                && !revoked.revoked.iter().any(|r| r.digest == p.digest)
                && !record.rolled_back.contains(&p.digest)
        });
        let record = reg.device_next_assignment(device)?;
        let assignment = Assignment {
            device: device.into(),
            version: record.assignment_version,
            expires: now + self.repo.expiries().timestamp_secs,
            targets: current
                .into_iter()
                .map(|p| AssignedTarget {
                    release: p.digest.short(),
                    path: p.path,
                    length: p.length,
                    sha256: p.digest,
                    channel: record.channel.clone(),
                    rollout: String::new(),
                })
                .collect(),
        };
        Ok(Some(self.seal(&assignment, ASSIGNMENT_DOMAIN)?))
    }
}

/// The director's public key as listed in TUF (`director/director.json`), from the document's JSON.
pub fn director_key_from_target(doc: &[u8]) -> Option<[u8; 32]> {
    let v: Value = serde_json::from_slice(doc).ok()?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(v["public"].as_str()?, &mut out).ok()?;
    Some(out)
}
