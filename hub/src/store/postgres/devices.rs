//! [`DeviceStore`] on PostgreSQL: devices and one-time enrolment tokens, each change one transaction holding the
//! row's lock, with the same record edits as the redb index (`crate::registry::devices`).
//!
//! A token is spent once however many replicas race for it: the enrolment locks the token's row, and a second
//! transaction waiting on that lock reads the row as the first one committed it (used).

use outpost_shared::Digest;
use outpost_shared::rng::Rng;
use outpost_shared::update::StateReport;

use super::notices::{Notice, send};
use super::{PgStore, big, keyed, query, record};
use crate::RegistryError;
use crate::registry::devices as edit;
use crate::registry::{
    AttestationRecord, DeviceRecord, DeviceStatus, EnrolError, EnrolmentToken, TpmRecord, decode, encode,
};
use crate::storage::DeviceStore;
use crate::store::changes::Since;

const DEVICE: &str = "SELECT record FROM devices WHERE key = $1";
const DEVICE_LOCKED: &str = "SELECT record FROM devices WHERE key = $1 FOR UPDATE";
const DEVICE_PUT: &str =
    "INSERT INTO devices (key, record) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record";

impl PgStore {
    /// Writes what `f` makes of the device's record (`None`: unknown), under the row's lock, and notes the change
    /// (in this store's change log, and to every replica: [`Notice::DeviceStatus`] when its status moved).
    fn edit(
        &self,
        key: &str,
        f: impl FnOnce(Option<DeviceRecord>) -> Result<DeviceRecord, RegistryError> + Send + 'static,
    ) -> Result<DeviceRecord, RegistryError> {
        let k = key.to_owned();
        let written = self.run("writing a device", move |pool| async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await.map_err(query("starting a transaction"))?;
            let found: Option<DeviceRecord> = record(&tx, "locking a device", &k, DEVICE_LOCKED, &[&k]).await?;
            let before = found.as_ref().map(|d| d.status);
            let record = f(found)?;
            tx.execute(DEVICE_PUT, &[&k, &encode(&record)?]).await.map_err(query("writing a device"))?;
            let notice =
                if before == Some(record.status) { Notice::Device(k.clone()) } else { Notice::DeviceStatus(k.clone()) };
            send(&tx, &notice).await?;
            tx.commit().await.map_err(query("committing a device"))?;
            Ok(record)
        })?;
        self.device_changes.record(key);
        Ok(written)
    }

    /// Applies `f` to the record of a known device.
    fn update(
        &self,
        key: &str,
        f: impl FnOnce(&mut DeviceRecord) + Send + 'static,
    ) -> Result<DeviceRecord, RegistryError> {
        let unknown = key.to_owned();
        self.edit(key, move |found| {
            let mut r = found.ok_or(RegistryError::UnknownDevice(unknown))?;
            f(&mut r);
            Ok(r)
        })
    }
}

impl DeviceStore for PgStore {
    fn device(&self, key: &str) -> Result<Option<DeviceRecord>, RegistryError> {
        let key = key.to_owned();
        self.run("reading a device", move |pool| async move {
            record(&*pool.get().await?, "reading a device", &key, DEVICE, &[&key]).await
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, RegistryError> {
        const OP: &str = "reading the devices";
        let rows = self.run(OP, move |pool| async move {
            Ok(keyed(&*pool.get().await?, OP, "SELECT key, record FROM devices ORDER BY key").await?)
        })?;
        rows.iter().map(|(key, bytes)| decode(key, bytes)).collect()
    }

    fn device_change_head(&self) -> u64 {
        self.device_changes.head()
    }

    fn devices_changed_since(&self, seq: u64) -> Since {
        self.device_changes.since(seq)
    }

    fn device_approve(&self, key: &str, channel: &str) -> Result<DeviceRecord, RegistryError> {
        let key = edit::parse_device_key(key)?;
        let (k, channel, now) = (key.clone(), channel.to_owned(), self.clock.wall());
        self.edit(&key, move |existing| Ok(edit::approved(&k, &channel, now, existing)))
    }

    fn device_revoke(&self, key: &str) -> Result<DeviceRecord, RegistryError> {
        let key = edit::parse_device_key(key)?;
        self.update(&key, |r| r.status = DeviceStatus::Revoked)
    }

    fn device_set_site(&self, key: &str, site: Option<&str>, node: bool) -> Result<DeviceRecord, RegistryError> {
        let key = edit::parse_device_key(key)?;
        edit::check_placement(site, node)?;
        let site = site.map(str::to_owned);
        self.update(&key, move |r| {
            r.site = site;
            r.site_node = node;
        })
    }

    fn device_set_tpm(&self, key: &str, tpm: Option<TpmRecord>) -> Result<DeviceRecord, RegistryError> {
        let key = edit::parse_device_key(key)?;
        self.update(&key, |r| r.tpm = tpm)
    }

    fn device_attested(&self, key: &str, outcome: AttestationRecord) -> Result<DeviceRecord, RegistryError> {
        self.update(key, |r| r.attestation = Some(outcome))
    }

    fn device_reported(&self, key: &str, report: &StateReport) -> Result<DeviceRecord, RegistryError> {
        let (report, now) = (report.clone(), self.clock.wall());
        self.update(key, move |r| edit::reported(r, &report, now))
    }

    fn token_create(
        &self,
        channel: &str,
        site: Option<&str>,
        valid_secs: u64,
        rng: &mut dyn Rng,
    ) -> Result<String, RegistryError> {
        let (token, record) = edit::new_token(channel, site, valid_secs, self.clock.wall(), rng)?;
        let (hash, bytes, expires) = (edit::token_key(&token), encode(&record)?, big(record.expires));
        self.run("creating an enrolment token", move |pool| async move {
            pool.get()
                .await?
                .execute(
                    "INSERT INTO enrolment_tokens (hash, record, used_by, expires) VALUES ($1, $2, NULL, $3)",
                    &[&hash, &bytes, &expires],
                )
                .await
                .map_err(query("creating an enrolment token"))?;
            Ok(())
        })?;
        Ok(token)
    }

    fn tokens_open(&self) -> Result<bool, RegistryError> {
        let now = big(self.clock.wall());
        self.run("looking for open enrolment tokens", move |pool| async move {
            let row = pool
                .get()
                .await?
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM enrolment_tokens WHERE used_by IS NULL AND expires > $1)",
                    &[&now],
                )
                .await
                .map_err(query("looking for open enrolment tokens"))?;
            Ok(row.get(0))
        })
    }

    fn enroll(
        &self,
        key: &str,
        token: &str,
        hardware: &str,
        tpm: Option<TpmRecord>,
    ) -> Result<Result<DeviceRecord, EnrolError>, RegistryError> {
        let key = edit::parse_device_key(key)?;
        let (k, hash, hardware, now) = (key.clone(), edit::token_key(token), hardware.to_owned(), self.clock.wall());
        let outcome = self.run("enrolling a device", move |pool| async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await.map_err(query("starting a transaction"))?;
            if let Some(d) = record(&tx, "locking a device", &k, DEVICE_LOCKED, &[&k]).await? {
                return Ok(edit::known(d));
            }
            // The token's row lock is what two racing enrolments queue on.
            let found: Option<EnrolmentToken> = record(
                &tx,
                "locking an enrolment token",
                &hash,
                "SELECT record FROM enrolment_tokens WHERE hash = $1 FOR UPDATE",
                &[&hash],
            )
            .await?;
            let spent_by_this_key = found.as_ref().is_some_and(|t| t.used_by.as_deref() == Some(k.as_str()));
            let spent = match edit::spend(found, &k, now) {
                Ok(t) => t,
                Err(refused) => {
                    drop(tx);
                    // This key won the same token in a transaction that committed while this one waited (a
                    // retried enrolment): answer as the redb index does, with the device as enrolled.
                    let d = if spent_by_this_key {
                        record(&*c, "reading a device", &k, DEVICE, &[&k]).await?
                    } else {
                        None
                    };
                    return Ok(d.map_or(Err(refused), edit::known));
                }
            };
            tx.execute(
                "UPDATE enrolment_tokens SET record = $2, used_by = $3 WHERE hash = $1",
                &[&hash, &encode(&spent)?, &k],
            )
            .await
            .map_err(query("spending an enrolment token"))?;
            let enrolled = edit::enrolled(&k, spent, now, &hardware, tpm);
            let inserted = tx
                .execute(
                    "INSERT INTO devices (key, record) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    &[&k, &encode(&enrolled)?],
                )
                .await
                .map_err(query("writing a device"))?;
            if inserted == 0 {
                // Approved by another writer since this transaction looked: keep the token, answer with that record.
                drop(tx);
                let d = record(&*c, "reading a device", &k, DEVICE, &[&k]).await?;
                return Ok(d.map_or(Err(EnrolError::Revoked), edit::known));
            }
            send(&tx, &Notice::DeviceStatus(k.clone())).await?;
            tx.commit().await.map_err(query("committing an enrolment"))?;
            Ok(Ok(enrolled))
        })?;
        if outcome.is_ok() {
            self.device_changes.record(&key);
        }
        Ok(outcome)
    }

    fn site_node_serves(&self, node: &str, device: &str) -> Result<bool, RegistryError> {
        Ok(edit::serves(self.device(node)?.as_ref(), self.device(device)?.as_ref()))
    }

    fn device_retry(&self, key: &str, digest: &Digest) -> Result<DeviceRecord, RegistryError> {
        let (key, digest) = (edit::parse_device_key(key)?, *digest);
        self.update(&key, move |r| r.rolled_back.retain(|d| *d != digest))
    }

    fn device_secondary_add(
        &self,
        key: &str,
        device_id: &str,
        hardware_id: &str,
    ) -> Result<DeviceRecord, RegistryError> {
        let key = edit::parse_device_key(key)?;
        edit::check_secondary(device_id, hardware_id)?;
        let (device_id, hardware_id) = (device_id.to_owned(), hardware_id.to_owned());
        self.update(&key, move |r| edit::secondary_added(r, &device_id, &hardware_id))
    }

    fn device_secondary_remove(&self, key: &str, device_id: &str) -> Result<DeviceRecord, RegistryError> {
        let key = edit::parse_device_key(key)?;
        let device_id = device_id.to_owned();
        self.update(&key, move |r| r.secondaries.retain(|s| s.device_id != device_id))
    }

    fn device_next_assignment(&self, key: &str) -> Result<DeviceRecord, RegistryError> {
        self.update(key, |r| r.assignment_version += 1)
    }
}
