//! The fleet side of the registry: devices (approval, revocation, sites, TPM facts, secondaries, reports),
//! one-time enrolment tokens, and the release and audit-anchor records the rollouts and the audit log keep here.

use super::*;

/// File (under the data directory) rewritten, by atomic rename, whenever a device's status changes: the serving
/// hub compares its inode and mtime before every request to notice a revocation without opening the index.
pub const DEVICE_STATUS_STAMP: &str = "attestation/devices.stamp";
/// Prefix of enrolment tokens (`outpost-hub device token`), so one is recognisable in a config file or a log.
pub const TOKEN_PREFIX: &str = "ot1-";

/// A device the hub knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Ed25519 public key, hex: the device's identity.
    pub key: String,
    /// The release channel it follows.
    pub channel: String,
    /// Approved, or revoked (refused at connection).
    pub status: DeviceStatus,
    /// When it was approved (Unix seconds).
    pub approved_at: UnixSeconds,
    /// Version of the last assignment signed for it (assignments only ever go up).
    pub assignment_version: u64,
    /// The package the device last reported serving.
    #[serde(default)]
    pub active: Option<Digest>,
    /// Packages the device rolled back from: the director does not offer them to it again.
    #[serde(default)]
    pub rolled_back: Vec<Digest>,
    /// When the device last reported (Unix seconds).
    #[serde(default)]
    pub last_report: Option<UnixSeconds>,
    /// Microcontrollers behind this device (a gateway) that get firmware through it.
    #[serde(default)]
    pub secondaries: Vec<SecondaryRecord>,
    /// The site the operator placed it in (a site node may fetch assignments and forward reports only for the
    /// devices of its own site).
    #[serde(default)]
    pub site: Option<String>,
    /// This key is a site node's: it serves the devices of `site` and fetches from the hub on their behalf.
    #[serde(default)]
    pub site_node: bool,
    /// Digest of the site policy the device last reported enforcing.
    #[serde(default)]
    pub policy: Option<Digest>,
    /// The site its policy names (reported by the device).
    #[serde(default)]
    pub policy_site: Option<String>,
    /// Packages the device's policy (or its site node's) rejected or deferred, as last reported.
    #[serde(default)]
    pub refusals: Vec<outpost_shared::update::Refusal>,
    /// Hardware facts the device stated when it enrolled with a token.
    #[serde(default)]
    pub hardware: Option<String>,
    /// How it was enrolled: `token` or `operator` (absent for devices approved before tokens existed).
    #[serde(default)]
    pub enrolled_by: Option<String>,
    /// Its TPM attestation key and known-good boot PCRs, if enrolled with a TPM (hardware tier): sent with a
    /// one-time token at enrolment, or recorded by an operator (`device tpm`).
    #[serde(default)]
    pub tpm: Option<TpmRecord>,
    /// The last appraisal of its evidence, successful or not.
    #[serde(default)]
    pub attestation: Option<AttestationRecord>,
}

/// A device's enrolled TPM (`outpost_attestation::TpmEnrolment`, readable in `device show --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmRecord {
    /// The attestation key's public point (uncompressed P-256), hex.
    pub ak: String,
    /// The measured-boot PCRs quotes must cover besides the measurement PCR: bit `i` is PCR `i`.
    pub pcrs: u32,
    /// Their known-good SHA-256 values, in ascending PCR order.
    pub values: Vec<Digest>,
}

impl TpmRecord {
    /// The record of enrolment facts a device or an operator presented (already checked in profile).
    pub fn of(e: &outpost_attestation::TpmEnrolment) -> TpmRecord {
        TpmRecord { ak: hex::encode(e.ak), pcrs: e.pcrs, values: e.values.iter().map(|v| Digest(*v)).collect() }
    }

    /// The facts back, checked again: a record that does not decode must make its device unknown (fail closed),
    /// never software tier.
    pub fn enrolment(&self) -> Option<outpost_attestation::TpmEnrolment> {
        let ak = hex::decode(&self.ak).ok()?.try_into().ok()?;
        outpost_attestation::TpmEnrolment::new(ak, self.pcrs, self.values.iter().map(|v| v.0).collect()).ok()
    }
}

/// The outcome of one appraisal, as `device show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationRecord {
    /// When it was appraised (Unix seconds).
    pub at: UnixSeconds,
    /// `affirming`, `warning` or `contraindicated`.
    pub status: String,
    /// `software` or `hardware` (for a positive result).
    #[serde(default)]
    pub tier: Option<String>,
    /// When the result expires (for a positive result).
    #[serde(default)]
    pub expires: Option<UnixSeconds>,
    /// `name version` of the agent (for a positive result).
    #[serde(default)]
    pub software: Option<String>,
    /// The device's boot count (for a positive result).
    #[serde(default)]
    pub bootcount: Option<u64>,
    /// The reported model digest (for a positive result).
    #[serde(default)]
    pub model: Option<Digest>,
    /// The reported site-policy digest (for a positive result).
    #[serde(default)]
    pub policy: Option<Digest>,
    /// Why it was not attested, or the concerns of a warning.
    #[serde(default)]
    pub detail: Option<String>,
}

/// A one-time enrolment token, stored under the SHA-256 of its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentToken {
    /// When it was created (Unix seconds).
    pub created: UnixSeconds,
    /// When it stops working (Unix seconds).
    pub expires: UnixSeconds,
    /// The channel the enrolled device follows.
    pub channel: String,
    /// The site the enrolled device belongs to.
    #[serde(default)]
    pub site: Option<String>,
    /// The device key that used it; a used token never works again.
    #[serde(default)]
    pub used_by: Option<String>,
}

/// Why an enrolment was refused. The device is told only "enrolment refused" and this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolError {
    /// No token hashes to this one.
    #[error("unknown enrolment token")]
    UnknownToken,
    /// The token was already used (by another key, or by this one before it was revoked).
    #[error("enrolment token already used")]
    TokenUsed,
    /// The token expired.
    #[error("enrolment token expired")]
    TokenExpired,
    /// The key is known and revoked: a token does not lift a revocation.
    #[error("device is revoked")]
    Revoked,
}

impl DeviceRecord {
    /// The site to show: the operator's, else the one the device's policy names.
    pub fn shown_site(&self) -> Option<&str> {
        self.site.as_deref().or(self.policy_site.as_deref())
    }
}

/// A secondary behind a gateway: what its compact manifests are addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondaryRecord {
    /// Its device id (provisioned into its firmware).
    pub device_id: String,
    /// Its hardware id; the director assigns it firmware packages with this `firmware.hardware_id`.
    pub hardware_id: String,
}

/// Whether a device may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// May connect and fetch.
    Approved,
    /// Refused.
    Revoked,
}

impl Registry {
    /// Approves a device (by its Ed25519 public key, hex) to follow `channel`. Re-approving updates the channel
    /// and lifts a revocation.
    pub fn device_approve(&self, key: &str, channel: &str) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut t = tx.open_table(DEVICES).map_err(db_err)?;
            let existing: Option<DeviceRecord> =
                t.get(key.as_str()).map_err(db_err)?.map(|v| decode(&key, v.value())).transpose()?;
            let record = approved(&key, channel, self.clock.wall(), existing);
            t.insert(key.as_str(), encode(&record)?.as_slice()).map_err(db_err)?;
            record
        };
        tx.commit().map_err(db_err)?;
        self.db.device_changes().record(&key);
        self.touch_status_stamp()?;
        Ok(record)
    }

    /// Revokes a device: the hub refuses its connections from now on, and a serving hub cuts off its attested
    /// connections at their next request (through [`DEVICE_STATUS_STAMP`]).
    pub fn device_revoke(&self, key: &str) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        let record = self.device_update(&key, |r| r.status = DeviceStatus::Revoked)?;
        self.touch_status_stamp()?;
        Ok(record)
    }

    /// Rewrites [`DEVICE_STATUS_STAMP`] (a new inode each time), after the status change has committed.
    fn touch_status_stamp(&self) -> Result<(), RegistryError> {
        let path = self.dir.join(DEVICE_STATUS_STAMP);
        let parent = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent).map_err(|source| RegistryError::Io {
            op: "create directory",
            path: parent.into(),
            source,
        })?;
        blobs::write_atomic(&path, self.clock.wall().to_string().as_bytes())?;
        Ok(())
    }

    /// Creates a one-time enrolment token for a device on `channel` (and `site`), valid for `valid_secs`.
    /// Returns the token text; only its SHA-256 is stored.
    pub fn token_create(
        &self,
        channel: &str,
        site: Option<&str>,
        valid_secs: u64,
        rng: &mut dyn outpost_shared::rng::Rng,
    ) -> Result<String, RegistryError> {
        let (token, record) = new_token(channel, site, valid_secs, self.clock.wall(), rng)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(TOKENS).map_err(db_err)?;
            t.insert(token_key(&token).as_str(), encode(&record)?.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(token)
    }

    /// Whether any unused, unexpired enrolment token exists (the serving hub then lets unknown keys connect long
    /// enough to present one).
    pub fn tokens_open(&self) -> Result<bool, RegistryError> {
        let now = self.clock.wall();
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(TOKENS).map_err(db_err)?;
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let token: EnrolmentToken = decode(k.value(), v.value())?;
            if token.used_by.is_none() && now < token.expires {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Enrols `key` with a one-time token: in one transaction the token is marked used and the device approved
    /// on the token's channel and site, with its stated hardware facts and, if it sent them, its TPM's enrolment
    /// facts (trusted on this first use, as the token is: no endorsement-key check). A key that is already approved is left
    /// as it is (an enrolment retried after a lost answer succeeds without a token being spent twice).
    ///
    /// # Errors
    /// `Ok(Err(EnrolError))` when the token or the key is refused; `Err` when the registry fails.
    pub fn enroll(
        &self,
        key: &str,
        token: &str,
        hardware: &str,
        tpm: Option<TpmRecord>,
    ) -> Result<Result<DeviceRecord, EnrolError>, RegistryError> {
        let key = parse_device_key(key)?;
        let now = self.clock.wall();
        let tx = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut devices = tx.open_table(DEVICES).map_err(db_err)?;
            let existing: Option<DeviceRecord> =
                devices.get(key.as_str()).map_err(db_err)?.map(|v| decode(&key, v.value())).transpose()?;
            if let Some(d) = existing {
                return Ok(known(d));
            }
            let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
            let hash = token_key(token);
            let found: Option<EnrolmentToken> =
                tokens.get(hash.as_str()).map_err(db_err)?.map(|v| decode(&hash, v.value())).transpose()?;
            let found = match spend(found, &key, now) {
                Ok(t) => t,
                Err(refused) => return Ok(Err(refused)),
            };
            tokens.insert(hash.as_str(), encode(&found)?.as_slice()).map_err(db_err)?;
            let record = enrolled(&key, found, now, hardware, tpm);
            devices.insert(key.as_str(), encode(&record)?.as_slice()).map_err(db_err)?;
            record
        };
        tx.commit().map_err(db_err)?;
        self.db.device_changes().record(&key);
        self.touch_status_stamp()?;
        Ok(Ok(record))
    }

    /// Records the outcome of an appraisal on the device's record.
    pub fn device_attested(&self, key: &str, outcome: AttestationRecord) -> Result<DeviceRecord, RegistryError> {
        self.device_update(key, |r| r.attestation = Some(outcome))
    }

    /// Records what a device reported about itself: what it serves and what it rolled back from.
    pub fn device_reported(
        &self,
        key: &str,
        report: &outpost_shared::update::StateReport,
    ) -> Result<DeviceRecord, RegistryError> {
        let now = self.clock.wall();
        self.device_update(key, |r| reported(r, report, now))
    }

    /// Places a device in `site` (or in none); `node` marks the key as that site's node.
    pub fn device_set_site(&self, key: &str, site: Option<&str>, node: bool) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        check_placement(site, node)?;
        self.device_update(&key, |r| {
            r.site = site.map(str::to_owned);
            r.site_node = node;
        })
    }

    /// Records (or clears) the TPM a device attests with: its attestation key and known-good boot PCRs. A device
    /// with a TPM record attests at the hardware tier (and must then send quotes).
    pub fn device_set_tpm(&self, key: &str, tpm: Option<TpmRecord>) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        self.device_update(&key, |r| r.tpm = tpm)
    }

    /// Whether site node `node` may act for `device`: both approved, `node` a site node, `device` in its site.
    pub fn site_node_serves(&self, node: &str, device: &str) -> Result<bool, RegistryError> {
        Ok(serves(self.device(node)?.as_ref(), self.device(device)?.as_ref()))
    }

    /// Lets the director offer `digest` to this device again (an operator's decision after a rollback).
    pub fn device_retry(&self, key: &str, digest: &Digest) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        self.device_update(&key, |r| r.rolled_back.retain(|d| d != digest))
    }

    /// Records (or updates the hardware id of) secondary `device_id` behind gateway `key`.
    pub fn device_secondary_add(
        &self,
        key: &str,
        device_id: &str,
        hardware_id: &str,
    ) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        check_secondary(device_id, hardware_id)?;
        self.device_update(&key, |r| secondary_added(r, device_id, hardware_id))
    }

    /// Forgets secondary `device_id` behind gateway `key`.
    pub fn device_secondary_remove(&self, key: &str, device_id: &str) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        self.device_update(&key, |r| r.secondaries.retain(|s| s.device_id != device_id))
    }

    /// Bumps and returns the device's assignment version.
    pub fn device_next_assignment(&self, key: &str) -> Result<DeviceRecord, RegistryError> {
        self.device_update(key, |r| r.assignment_version += 1)
    }

    fn device_update(&self, key: &str, f: impl FnOnce(&mut DeviceRecord)) -> Result<DeviceRecord, RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let record = {
            let mut t = tx.open_table(DEVICES).map_err(db_err)?;
            let mut record: DeviceRecord = match t.get(key).map_err(db_err)? {
                Some(v) => decode(key, v.value())?,
                None => return Err(RegistryError::UnknownDevice(key.into())),
            };
            f(&mut record);
            t.insert(key, encode(&record)?.as_slice()).map_err(db_err)?;
            record
        };
        tx.commit().map_err(db_err)?;
        self.db.device_changes().record(key);
        Ok(record)
    }

    /// The device with this key, if known.
    pub fn device(&self, key: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(DEVICES).map_err(db_err)?;
        t.get(key).map_err(db_err)?.map(|v| decode(key, v.value())).transpose()
    }

    /// Records the audit log's newest anchor (after each append). The anchor only moves forward: one at or below
    /// the stored sequence number is refused unless it is the same anchor (a retried put), so two logs that forked,
    /// or a writer behind another, cannot pass each other's entries off as the head.
    pub fn audit_anchor_put(&self, anchor: &outpost_shared::audit::Anchor) -> Result<(), RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(AUDIT).map_err(db_err)?;
            let stored: Option<outpost_shared::audit::Anchor> =
                t.get("head").map_err(db_err)?.map(|v| decode("audit head", v.value())).transpose()?;
            if let Some(stored) = stored {
                anchor_advances(&stored, anchor)?;
            }
            t.insert("head", encode(anchor)?.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// The audit log's newest anchor as last recorded, if any.
    pub fn audit_anchor(&self) -> Result<Option<outpost_shared::audit::Anchor>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(AUDIT) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        t.get("head").map_err(db_err)?.map(|v| decode("audit head", v.value())).transpose()
    }

    /// The sequence number of the next device write in this process: take it before reading the devices, then ask
    /// [`Registry::devices_changed_since`] what changed.
    pub fn device_change_head(&self) -> u64 {
        self.db.device_changes().head()
    }

    /// The keys of the devices written (approved, enrolled, updated) since sequence number `seq`.
    pub fn devices_changed_since(&self, seq: u64) -> crate::store::changes::Since {
        self.db.device_changes().since(seq)
    }

    /// Every device record.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(DEVICES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

// What both backends (this redb index and `crate::store::postgres`) do to a record, so they cannot drift apart.

/// The record of `key` approved on `channel` at `now`: what an earlier record knew is kept, a revocation lifted.
pub(crate) fn approved(key: &str, channel: &str, now: UnixSeconds, existing: Option<DeviceRecord>) -> DeviceRecord {
    let e = existing.as_ref();
    DeviceRecord {
        key: key.to_owned(),
        channel: channel.into(),
        status: DeviceStatus::Approved,
        approved_at: now,
        assignment_version: e.map_or(0, |e| e.assignment_version),
        active: e.and_then(|e| e.active),
        rolled_back: e.map(|e| e.rolled_back.clone()).unwrap_or_default(),
        last_report: None,
        site: e.and_then(|e| e.site.clone()),
        site_node: e.is_some_and(|e| e.site_node),
        policy: e.and_then(|e| e.policy),
        policy_site: e.and_then(|e| e.policy_site.clone()),
        refusals: e.map(|e| e.refusals.clone()).unwrap_or_default(),
        hardware: e.and_then(|e| e.hardware.clone()),
        enrolled_by: e.and_then(|e| e.enrolled_by.clone()).or(Some("operator".into())),
        tpm: e.and_then(|e| e.tpm.clone()),
        attestation: e.and_then(|e| e.attestation.clone()),
        secondaries: existing.map(|e| e.secondaries).unwrap_or_default(),
    }
}

/// A new token's text and the record stored under its hash.
pub(crate) fn new_token(
    channel: &str,
    site: Option<&str>,
    valid_secs: u64,
    now: UnixSeconds,
    rng: &mut dyn outpost_shared::rng::Rng,
) -> Result<(String, EnrolmentToken), RegistryError> {
    if let Some(s) = site {
        check_site(s)?;
    }
    let mut raw = [0u8; 16];
    rng.fill(&mut raw);
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
    let record = EnrolmentToken {
        created: now,
        expires: now.saturating_add(valid_secs),
        channel: channel.into(),
        site: site.map(str::to_owned),
        used_by: None,
    };
    Ok((token, record))
}

/// The token as spent by `key` at `now`, or why it cannot be.
pub(crate) fn spend(found: Option<EnrolmentToken>, key: &str, now: UnixSeconds) -> Result<EnrolmentToken, EnrolError> {
    match found {
        None => Err(EnrolError::UnknownToken),
        Some(t) if t.used_by.is_some() => Err(EnrolError::TokenUsed),
        Some(t) if now >= t.expires => Err(EnrolError::TokenExpired),
        Some(mut t) => {
            t.used_by = Some(key.to_owned());
            Ok(t)
        }
    }
}

/// What an enrolment answers for a key already known: the device as it is when approved (a retried enrolment),
/// a refusal when revoked (a token does not lift a revocation).
pub(crate) fn known(d: DeviceRecord) -> Result<DeviceRecord, EnrolError> {
    if d.status == DeviceStatus::Approved { Ok(d) } else { Err(EnrolError::Revoked) }
}

/// The record of a device enrolled with (spent) `token`.
pub(crate) fn enrolled(
    key: &str,
    token: EnrolmentToken,
    now: UnixSeconds,
    hardware: &str,
    tpm: Option<TpmRecord>,
) -> DeviceRecord {
    DeviceRecord {
        key: key.to_owned(),
        channel: token.channel,
        status: DeviceStatus::Approved,
        approved_at: now,
        assignment_version: 0,
        active: None,
        rolled_back: Vec::new(),
        last_report: None,
        secondaries: Vec::new(),
        site: token.site,
        site_node: false,
        policy: None,
        policy_site: None,
        refusals: Vec::new(),
        hardware: Some(hardware.to_owned()).filter(|h| !h.is_empty()),
        enrolled_by: Some("token".into()),
        tpm,
        attestation: None,
    }
}

/// What a device's report changes on its record.
pub(crate) fn reported(r: &mut DeviceRecord, report: &outpost_shared::update::StateReport, now: UnixSeconds) {
    r.active = report.active;
    for d in &report.rolled_back {
        if !r.rolled_back.contains(d) {
            r.rolled_back.push(*d);
        }
    }
    r.last_report = Some(now);
    r.policy = report.policy;
    r.policy_site.clone_from(&report.site);
    r.refusals.clone_from(&report.refusals);
}

/// Whether site node `n` may act for device `d`: both approved, `n` a site node, `d` in its site.
pub(crate) fn serves(n: Option<&DeviceRecord>, d: Option<&DeviceRecord>) -> bool {
    let (Some(n), Some(d)) = (n, d) else { return false };
    n.site_node
        && n.status == DeviceStatus::Approved
        && d.status == DeviceStatus::Approved
        && n.site.is_some()
        && n.site == d.site
}

/// A site placement an operator may make: a usable site name, and a site node only with a site.
pub(crate) fn check_placement(site: Option<&str>, node: bool) -> Result<(), RegistryError> {
    if let Some(s) = site {
        check_site(s)?;
    }
    if node && site.is_none() {
        return Err(RegistryError::BadSite("a site node needs the site it serves (--site NAME)".into()));
    }
    Ok(())
}

/// A secondary's ids, checked to fit a compact manifest.
pub(crate) fn check_secondary(device_id: &str, hardware_id: &str) -> Result<(), RegistryError> {
    for (field, value) in [("device id", device_id), ("hardware id", hardware_id)] {
        if !is_secondary_id(value) {
            return Err(RegistryError::BadSecondaryId { field, value: value.into() });
        }
    }
    Ok(())
}

/// Adds secondary `device_id` to a gateway's record, or changes its hardware id.
pub(crate) fn secondary_added(r: &mut DeviceRecord, device_id: &str, hardware_id: &str) {
    r.secondaries.retain(|s| s.device_id != device_id);
    r.secondaries.push(SecondaryRecord { device_id: device_id.into(), hardware_id: hardware_id.into() });
}

/// Whether `offered` may replace `stored` as the audit log's newest anchor: a later entry, or the same one again.
pub(crate) fn anchor_advances(
    stored: &outpost_shared::audit::Anchor,
    offered: &outpost_shared::audit::Anchor,
) -> Result<(), RegistryError> {
    if offered.seq > stored.seq || offered == stored {
        Ok(())
    } else {
        Err(RegistryError::AuditAnchorBehind { stored: *stored, offered: *offered })
    }
}

pub(crate) fn check_site(s: &str) -> Result<(), RegistryError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(RegistryError::BadSite(format!("`{s}` must be 1–64 of a-z, A-Z, 0-9, `-`, `_`, `.`")));
    }
    Ok(())
}

/// The index key of an enrolment token: the hex SHA-256 of its text (trimmed).
pub(crate) fn token_key(token: &str) -> String {
    Digest::of(token.trim().as_bytes()).to_hex()
}

pub(crate) fn parse_device_key(key: &str) -> Result<String, RegistryError> {
    let lower = key.trim().to_ascii_lowercase();
    let mut raw = [0u8; 32];
    match hex::decode_to_slice(&lower, &mut raw) {
        Ok(()) => Ok(lower),
        Err(_) => Err(RegistryError::BadDeviceKey(key.into())),
    }
}
