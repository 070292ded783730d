//! The director: which device runs which target, and which packages are revoked, signed with the online
//! director key (authorised as a TUF target) in the envelope format of `outpost_shared::director`.
//!
//! Revocation only narrows what may run, so it is published with the online key and a short expiry; taking a
//! package out of TUF targets as well needs the offline targets key (`TufRepo::unpublish`).
//!
//! A device's own target is always a model package. For a gateway, the assignment also names, per secondary, the
//! newest firmware package for its hardware id, with a compact manifest and a time token (`outpost_firmware`'s
//! format) signed by the same director key: the key the secondary was provisioned to trust.

use std::fs;
use std::path::PathBuf;

use ed25519_dalek::Signer;

use outpost_shared::Digest;
use outpost_shared::canonical;
use outpost_shared::clock::UnixSeconds;
use outpost_shared::director::{
    self, ASSIGNMENT_DOMAIN, AssignedTarget, Assignment, REVOCATIONS_DOMAIN, RevocationList, Revoked,
    SecondaryAssignment,
};

use outpost_firmware::manifest as fwm;

use crate::blobs;
use crate::registry::{DeviceRecord, DeviceStatus, RegistryError, SecondaryRecord};
use crate::storage::RolloutStore;
use crate::tuf::metadata::{FirmwareFacts, Targets};
use crate::tuf::{HIGH_RISK_ROLE, STANDARD_ROLE, Signed, TufError, TufRepo};

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
    /// A compact firmware manifest or time token could not be encoded (an id or image out of its limits).
    #[error("compact manifest for secondary {device_id}: {source}")]
    Compact {
        /// The secondary.
        device_id: String,
        /// Why.
        source: outpost_firmware::manifest::EncodeError,
    },
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
    /// What a firmware package states about its image; `None` for a model package.
    pub firmware: Option<PublishedFirmware>,
    /// A router package: rules, never a device's model.
    pub router: bool,
    /// The capability it serves, as its signed facts state it.
    pub capability: String,
}

impl Published {
    /// A model package (neither firmware nor a router).
    pub fn is_model(&self) -> bool {
        self.firmware.is_none() && !self.router
    }
}

/// The firmware fields of a published target (`custom.outpost.firmware`, signed by the targets role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFirmware {
    /// Hardware id the image is built for.
    pub hardware_id: String,
    /// Anti-rollback release counter.
    pub release_counter: u64,
    /// Image length (the package's payload, not the package).
    pub image_length: u32,
    /// SHA-256 of the image.
    pub image_sha256: Digest,
}

impl PublishedFirmware {
    fn from_facts(fw: &FirmwareFacts) -> Option<PublishedFirmware> {
        Some(PublishedFirmware {
            hardware_id: fw.hardware_id.clone(),
            release_counter: fw.release_counter,
            image_length: u32::try_from(fw.image_length).ok()?,
            image_sha256: fw.image_sha256.parse().ok()?,
        })
    }
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

    /// The current revocation list (empty, version 0, if none was published yet). Any other read error is an
    /// error: never "no revocations".
    pub fn revocations(&self) -> Result<RevocationList, DirectorOpError> {
        match self.published_revocations()? {
            Some(bytes) => {
                let env: director::Envelope =
                    canonical::from_slice(&bytes).map_err(|e| DirectorOpError::Encode(e.to_string()))?;
                canonical::from_slice(&env.body).map_err(|e| DirectorOpError::Encode(e.to_string()))
            }
            None => Ok(RevocationList { version: 0, expires: 0, revoked: vec![] }),
        }
    }

    /// The signed revocation list file, `None` if none was published yet.
    fn published_revocations(&self) -> Result<Option<Vec<u8>>, DirectorOpError> {
        let p = self.path("revocations.cbor");
        match fs::read(&p) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TufError::Io { op: "read", path: p, source }.into()),
        }
    }

    /// The signed revocation list as served to devices (every bundle carries one): the published list, or before
    /// the first revocation an empty version-0 list signed now (not written: the first revocation is version 1).
    pub fn signed_revocations(&self, now: UnixSeconds) -> Result<Vec<u8>, DirectorOpError> {
        match self.published_revocations()? {
            Some(bytes) => Ok(bytes),
            None => {
                let empty =
                    RevocationList { version: 0, expires: now + self.repo.expiries().timestamp_secs, revoked: vec![] };
                self.seal(&empty, REVOCATIONS_DOMAIN)
            }
        }
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
            let meta: Signed<Targets> = self.repo.read_meta(&format!("{v}.{role}.json"))?;
            for (path, t) in meta.signed.targets {
                let Some(o) = t.package() else { continue };
                let Ok(digest) = o.digest.parse() else { continue };
                out.push(Published {
                    path,
                    digest,
                    length: t.length,
                    channels: o.channels.clone(),
                    published_at: o.published_at,
                    firmware: o.firmware.as_ref().and_then(PublishedFirmware::from_facts),
                    router: o.kind.as_deref() == Some("router"),
                    capability: o.capability.clone(),
                });
            }
        }
        out.sort_by_key(|p| p.published_at);
        Ok(out)
    }

    /// Signs a fresh assignment for `device`: the newest non-revoked model package published to its channel (or
    /// the one a staged release steers it to) first, then for each other capability with a model package on the
    /// channel the newest of those (one package per capability: an agent with several capabilities runs each in
    /// its own update lane; one that runs a single model takes the first), and
    /// for each of its secondaries the newest non-revoked firmware package for that secondary's hardware id.
    /// Returns `None` for unknown or revoked devices and for channels with nothing published.
    pub fn assignment(
        &self,
        reg: &dyn RolloutStore,
        device: &str,
        now: UnixSeconds,
    ) -> Result<Option<Vec<u8>>, DirectorOpError> {
        let Some(record) = reg.device(device)? else { return Ok(None) };
        if record.status != DeviceStatus::Approved {
            return Ok(None);
        }
        let Choice { current, eligible, shadow, router, steer } = self.choose(reg, &record, now)?;
        let others = other_capabilities(current.as_ref(), &eligible);
        // The router a router release steers the device to, else the channel's newest eligible router: a revoked
        // one gives way to the one before, models untouched.
        let router = match router {
            Some(p) => Some(AssignedTarget {
                rollout: steer.router_release.clone().unwrap_or_default(),
                ..assigned(p, &record.channel)
            }),
            None => eligible.iter().rfind(|p| p.router).cloned().map(|p| assigned(p, &record.channel)),
        };
        let record = reg.device_next_assignment(device)?;
        let expires = now + self.repo.expiries().timestamp_secs;
        let secondaries = self.secondary_assignments(&record, &eligible, expires, now)?;
        let assignment = Assignment {
            device: device.into(),
            version: record.assignment_version,
            expires,
            targets: current
                .into_iter()
                .chain(others)
                .map(|p| match steer.assign == Some(p.digest) {
                    // Steered by a staged release: the device learns which (its logs follow it), and its retries.
                    true => AssignedTarget {
                        retry: steer.retry,
                        rollout: steer.release.clone().unwrap_or_default(),
                        ..assigned(p, &record.channel)
                    },
                    false => assigned(p, &record.channel),
                })
                .collect(),
            secondaries,
            shadow: shadow.map(|p| AssignedTarget {
                rollout: steer.shadow_release.clone().unwrap_or_default(),
                ..assigned(p, &record.channel)
            }),
            router,
        };
        Ok(Some(self.seal(&assignment, ASSIGNMENT_DOMAIN)?))
    }

    /// The model package `record` should run now, and the packages eligible for it (its channel's, neither
    /// revoked nor rolled back from). Staged rollouts decide who runs their release; everyone else keeps to what
    /// the channel ran before. A device a rollout has not seen yet joins it here.
    fn choose(
        &self,
        reg: &dyn RolloutStore,
        record: &DeviceRecord,
        now: UnixSeconds,
    ) -> Result<Choice, DirectorOpError> {
        let revoked = self.revocations()?;
        let steer = crate::rollouts::steering(reg, &record.key, &record.channel, now)
            .map_err(|e| DirectorOpError::Encode(e.to_string()))?;
        let published = self.published()?;
        let usable = |p: &Published| {
            p.channels.contains(&record.channel) && !revoked.revoked.iter().any(|r| r.digest == p.digest)
        };
        let forced = steer
            .assign
            .filter(|a| steer.retry > 0 || !record.rolled_back.contains(a))
            .and_then(|a| published.iter().rfind(|p| p.digest == a && usable(p) && p.is_model()).cloned());
        let shadow = steer.shadow.and_then(|a| published.iter().rfind(|p| p.digest == a && usable(p)).cloned());
        let router = steer
            .router
            .filter(|a| !record.rolled_back.contains(a))
            .and_then(|a| published.iter().rfind(|p| p.digest == a && usable(p) && p.router).cloned());
        let eligible: Vec<Published> = published
            .into_iter()
            .filter(|p| usable(p) && !record.rolled_back.contains(&p.digest) && !steer.withhold.contains(&p.digest))
            .collect();
        let current = forced.or_else(|| eligible.iter().rfind(|p| p.is_model()).cloned());
        Ok(Choice { current, eligible, shadow, router, steer })
    }

    /// What attestation expects of `record`: the model package an assignment names now, and every model package
    /// it may run (its channel's, neither revoked nor rolled back from nor withheld by a rollout), oldest first.
    pub fn expected_models(
        &self,
        reg: &dyn RolloutStore,
        record: &DeviceRecord,
        now: UnixSeconds,
    ) -> Result<(Option<Digest>, Vec<Digest>), DirectorOpError> {
        let Choice { current, eligible, .. } = self.choose(reg, record, now)?;
        let models = eligible.iter().filter(|p| p.is_model()).map(|p| p.digest).collect();
        Ok((current.map(|p| p.digest), models))
    }

    /// Per secondary of the gateway `record`, the newest eligible firmware for its hardware id, with a compact
    /// manifest (valid until the assignment expires, on the time-token clock) and a time token for `now`.
    fn secondary_assignments(
        &self,
        record: &DeviceRecord,
        eligible: &[Published],
        expires: UnixSeconds,
        now: UnixSeconds,
    ) -> Result<Vec<SecondaryAssignment>, DirectorOpError> {
        if record.secondaries.is_empty() {
            return Ok(vec![]);
        }
        let key = self.repo.online_key("director")?;
        let public = key.public_bytes();
        let sign = |m: &[u8]| key.signing.sign(m).to_bytes();
        let mut out = Vec::new();
        for s in &record.secondaries {
            let newest = eligible.iter().rfind(|p| p.firmware.as_ref().is_some_and(|f| f.hardware_id == s.hardware_id));
            let (Some(p), Some(fw)) = (newest, newest.and_then(|p| p.firmware.as_ref())) else { continue };
            let compact = |source| DirectorOpError::Compact { device_id: s.device_id.clone(), source };
            let manifest = compact_manifest(s, fw, expires, &public, &sign).map_err(compact)?;
            let time_token = time_token(&s.device_id, now, &public, &sign).map_err(compact)?;
            out.push(SecondaryAssignment {
                device_id: s.device_id.clone(),
                hardware_id: s.hardware_id.clone(),
                target: assigned(p.clone(), &record.channel),
                manifest,
                time_token,
            });
        }
        Ok(out)
    }
}

/// For each capability other than `current`'s, the newest eligible model package of it, by capability name.
fn other_capabilities(current: Option<&Published>, eligible: &[Published]) -> Vec<Published> {
    let mut newest: std::collections::BTreeMap<&str, &Published> = std::collections::BTreeMap::new();
    for p in eligible
        .iter()
        .filter(|p| p.is_model() && Some(p.capability.as_str()) != current.map(|c| c.capability.as_str()))
    {
        newest.insert(&p.capability, p); // oldest first: the last one wins
    }
    newest.into_values().cloned().collect()
}

/// What a device should run: its model package, the packages eligible for it, and a shadow package.
struct Choice {
    current: Option<Published>,
    eligible: Vec<Published>,
    shadow: Option<Published>,
    /// The router a router release steers the device to, if any.
    router: Option<Published>,
    /// What the staged releases want of this device (the package one assigns, which release, the retries).
    steer: crate::rollouts::Steering,
}

fn assigned(p: Published, channel: &str) -> AssignedTarget {
    AssignedTarget {
        release: p.digest.short(),
        path: p.path,
        length: p.length,
        sha256: p.digest,
        channel: channel.to_owned(),
        rollout: String::new(),
        retry: 0,
    }
}

type Sign<'a> = &'a dyn Fn(&[u8]) -> [u8; 64];

/// The compact manifest a secondary verifies (`outpost_firmware::manifest`, version 1), signed with the director
/// key: its ids, the image's length and hash, the release counter, and an expiry on the time-token clock.
pub fn compact_manifest(
    secondary: &SecondaryRecord,
    fw: &PublishedFirmware,
    expires: UnixSeconds,
    public: &[u8; 32],
    sign: Sign<'_>,
) -> Result<Vec<u8>, fwm::EncodeError> {
    let body = fwm::Manifest {
        hardware_id: secondary.hardware_id.as_bytes(),
        device_id: secondary.device_id.as_bytes(),
        image_len: fw.image_length,
        image_sha256: fw.image_sha256.0,
        release_counter: fw.release_counter,
        expiry: fwm::Expiry::UnixSeconds(expires),
    };
    let mut buf = [0u8; fwm::MAX_BODY_LEN];
    let n = body.encode(&mut buf)?;
    seal_compact(&buf[..n], fwm::manifest_signing_input, public, sign)
}

/// A time token telling secondary `device_id` that it is `now` (unix seconds), signed with the director key.
pub fn time_token(
    device_id: &str,
    now: UnixSeconds,
    public: &[u8; 32],
    sign: Sign<'_>,
) -> Result<Vec<u8>, fwm::EncodeError> {
    let mut buf = [0u8; fwm::MAX_BODY_LEN];
    let n = fwm::TimeToken { device_id: device_id.as_bytes(), unix_seconds: now }.encode(&mut buf)?;
    seal_compact(&buf[..n], fwm::time_token_signing_input, public, sign)
}

fn seal_compact(
    body: &[u8],
    input: fwm::SigningInputFn,
    public: &[u8; 32],
    sign: Sign<'_>,
) -> Result<Vec<u8>, fwm::EncodeError> {
    let mut out = [0u8; fwm::MAX_ENVELOPE_LEN];
    let n = fwm::seal(public, body, input, sign, &mut out)?;
    Ok(out[..n].to_vec())
}

/// The director's public key as listed in TUF (`director/director.json`), if the document is one
/// ([`director::DirectorKeyDoc::parse`] says why not).
pub fn director_key_from_target(doc: &[u8]) -> Option<[u8; 32]> {
    director::DirectorKeyDoc::parse(doc).ok().map(|d| d.public)
}
