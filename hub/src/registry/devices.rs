//! The fleet side of the registry: devices (approval, revocation, sites, TPM facts, secondaries, reports),
//! one-time enrolment tokens, and the release and audit-anchor records the rollouts and the audit log keep here.

use super::*;

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
            let record = DeviceRecord {
                key: key.clone(),
                channel: channel.into(),
                status: DeviceStatus::Approved,
                approved_at: self.clock.wall(),
                assignment_version: existing.as_ref().map_or(0, |e| e.assignment_version),
                active: existing.as_ref().and_then(|e| e.active),
                rolled_back: existing.as_ref().map(|e| e.rolled_back.clone()).unwrap_or_default(),
                last_report: None,
                site: existing.as_ref().and_then(|e| e.site.clone()),
                site_node: existing.as_ref().is_some_and(|e| e.site_node),
                policy: existing.as_ref().and_then(|e| e.policy),
                policy_site: existing.as_ref().and_then(|e| e.policy_site.clone()),
                refusals: existing.as_ref().map(|e| e.refusals.clone()).unwrap_or_default(),
                hardware: existing.as_ref().and_then(|e| e.hardware.clone()),
                enrolled_by: existing.as_ref().and_then(|e| e.enrolled_by.clone()).or(Some("operator".into())),
                tpm: existing.as_ref().and_then(|e| e.tpm.clone()),
                attestation: existing.as_ref().and_then(|e| e.attestation.clone()),
                secondaries: existing.map(|e| e.secondaries).unwrap_or_default(),
            };
            t.insert(key.as_str(), encode(&record)?.as_slice()).map_err(db_err)?;
            record
        };
        tx.commit().map_err(db_err)?;
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
        if let Some(s) = site {
            check_site(s)?;
        }
        let mut raw = [0u8; 16];
        rng.fill(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(raw));
        let now = self.clock.wall();
        let record = EnrolmentToken {
            created: now,
            expires: now.saturating_add(valid_secs),
            channel: channel.into(),
            site: site.map(str::to_owned),
            used_by: None,
        };
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
            match existing {
                Some(d) if d.status == DeviceStatus::Approved => return Ok(Ok(d)),
                Some(_) => return Ok(Err(EnrolError::Revoked)),
                None => {}
            }
            let mut tokens = tx.open_table(TOKENS).map_err(db_err)?;
            let hash = token_key(token);
            let found: Option<EnrolmentToken> =
                tokens.get(hash.as_str()).map_err(db_err)?.map(|v| decode(&hash, v.value())).transpose()?;
            let mut found = match found {
                None => return Ok(Err(EnrolError::UnknownToken)),
                Some(t) if t.used_by.is_some() => return Ok(Err(EnrolError::TokenUsed)),
                Some(t) if now >= t.expires => return Ok(Err(EnrolError::TokenExpired)),
                Some(t) => t,
            };
            found.used_by = Some(key.clone());
            tokens.insert(hash.as_str(), encode(&found)?.as_slice()).map_err(db_err)?;
            let record = DeviceRecord {
                key: key.clone(),
                channel: found.channel,
                status: DeviceStatus::Approved,
                approved_at: now,
                assignment_version: 0,
                active: None,
                rolled_back: Vec::new(),
                last_report: None,
                secondaries: Vec::new(),
                site: found.site,
                site_node: false,
                policy: None,
                policy_site: None,
                refusals: Vec::new(),
                hardware: Some(hardware.to_owned()).filter(|h| !h.is_empty()),
                enrolled_by: Some("token".into()),
                tpm,
                attestation: None,
            };
            devices.insert(key.as_str(), encode(&record)?.as_slice()).map_err(db_err)?;
            record
        };
        tx.commit().map_err(db_err)?;
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
        self.device_update(key, |r| {
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
        })
    }

    /// Places a device in `site` (or in none); `node` marks the key as that site's node.
    pub fn device_set_site(&self, key: &str, site: Option<&str>, node: bool) -> Result<DeviceRecord, RegistryError> {
        let key = parse_device_key(key)?;
        if let Some(s) = site {
            check_site(s)?;
        }
        if node && site.is_none() {
            return Err(RegistryError::BadSite("a site node needs the site it serves (--site NAME)".into()));
        }
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
        let (Some(n), Some(d)) = (self.device(node)?, self.device(device)?) else { return Ok(false) };
        Ok(n.site_node
            && n.status == DeviceStatus::Approved
            && d.status == DeviceStatus::Approved
            && n.site.is_some()
            && n.site == d.site)
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
        for (field, value) in [("device id", device_id), ("hardware id", hardware_id)] {
            if !is_secondary_id(value) {
                return Err(RegistryError::BadSecondaryId { field, value: value.into() });
            }
        }
        self.device_update(&key, |r| {
            r.secondaries.retain(|s| s.device_id != device_id);
            r.secondaries.push(SecondaryRecord { device_id: device_id.into(), hardware_id: hardware_id.into() });
        })
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
        Ok(record)
    }

    /// The device with this key, if known.
    pub fn device(&self, key: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(DEVICES).map_err(db_err)?;
        t.get(key).map_err(db_err)?.map(|v| decode(key, v.value())).transpose()
    }

    /// Every known device.
    /// Stores a release's record (its rollout) under `id`, replacing what was there.
    pub fn release_put<T: Serialize>(&self, id: &str, record: &T) -> Result<(), RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RELEASES).map_err(db_err)?;
            t.insert(id, encode(record)?.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Records the audit log's newest anchor (after each append).
    pub fn audit_anchor_put(&self, anchor: &outpost_shared::audit::Anchor) -> Result<(), RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(AUDIT).map_err(db_err)?;
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

    /// Every release record, by id.
    pub fn releases<T: for<'de> Deserialize<'de>>(&self) -> Result<Vec<(String, T)>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(RELEASES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_owned(), decode(k.value(), v.value())?));
        }
        Ok(out)
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

fn check_site(s: &str) -> Result<(), RegistryError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(RegistryError::BadSite(format!("`{s}` must be 1–64 of a-z, A-Z, 0-9, `-`, `_`, `.`")));
    }
    Ok(())
}

/// The index key of an enrolment token: the hex SHA-256 of its text (trimmed).
fn token_key(token: &str) -> String {
    Digest::of(token.trim().as_bytes()).to_hex()
}

fn parse_device_key(key: &str) -> Result<String, RegistryError> {
    let lower = key.trim().to_ascii_lowercase();
    let mut raw = [0u8; 32];
    match hex::decode_to_slice(&lower, &mut raw) {
        Ok(()) => Ok(lower),
        Err(_) => Err(RegistryError::BadDeviceKey(key.into())),
    }
}
