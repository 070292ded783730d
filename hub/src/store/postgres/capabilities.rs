//! [`CapabilityStore`] on PostgreSQL: each capability's current definition and every revision of it, with the redb
//! index's rules (`crate::registry::capabilities`: a changed contract is refused, the same definition is a no-op).
//!
//! The current record and its history row change in one transaction under the capability row's lock, so two
//! replicas revising one capability at once get revisions one after the other, never two with one number.

use outpost_shared::Manifest;
use outpost_shared::capability::Capability;

use super::{PgStore, big, query, record};
use crate::RegistryError;
use crate::registry::capabilities::{publishable, revised};
use crate::registry::{CapabilityAdded, CapabilityCheck, CapabilityRecord, decode, encode};
use crate::storage::CapabilityStore;

const CAPABILITY: &str = "SELECT record FROM capabilities WHERE name = $1";

impl CapabilityStore for PgStore {
    fn capability_add(&self, cap: &Capability) -> Result<(CapabilityRecord, CapabilityAdded), RegistryError> {
        let (cap, now) = (cap.clone(), self.clock.wall());
        self.run("registering a capability", move |pool| async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await.map_err(query("starting a transaction"))?;
            // A new capability is inserted (a second writer of the same new name waits here for the first to
            // commit, then finds it); a registered one is locked before its current record is read.
            let (first, _) = revised(None, &cap, now)?;
            let created = tx
                .execute(
                    "INSERT INTO capabilities (name, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&cap.name, &encode(&first)?],
                )
                .await
                .map_err(query("registering a capability"))?;
            let (record, added) = if created == 1 {
                (first, CapabilityAdded::Created)
            } else {
                let locked = "SELECT record FROM capabilities WHERE name = $1 FOR UPDATE";
                let previous = record(&tx, "locking a capability", &cap.name, locked, &[&cap.name]).await?;
                let (record, added) = revised(previous, &cap, now)?;
                if added == CapabilityAdded::Unchanged {
                    return Ok((record, added));
                }
                tx.execute("UPDATE capabilities SET record = $2 WHERE name = $1", &[&cap.name, &encode(&record)?])
                    .await
                    .map_err(query("revising a capability"))?;
                (record, added)
            };
            tx.execute(
                "INSERT INTO capability_history (name, revision, record) VALUES ($1, $2, $3)",
                &[&cap.name, &big(record.revision), &encode(&record)?],
            )
            .await
            .map_err(query("recording a capability's revision"))?;
            tx.commit().await.map_err(query("committing a capability"))?;
            Ok((record, added))
        })
    }

    fn capability(&self, name: &str) -> Result<Option<CapabilityRecord>, RegistryError> {
        let name = name.to_owned();
        self.run("reading a capability", move |pool| async move {
            record(&*pool.get().await?, "reading a capability", &name, CAPABILITY, &[&name]).await
        })
    }

    fn capabilities(&self) -> Result<Vec<CapabilityRecord>, RegistryError> {
        let rows =
            self.rows("reading the capabilities", "SELECT name, record FROM capabilities ORDER BY name", None)?;
        rows.iter().map(|r| decode(r.get(0), r.get::<_, &[u8]>(1))).collect()
    }

    fn capability_history(&self, name: &str) -> Result<Vec<CapabilityRecord>, RegistryError> {
        let rows = self.rows(
            "reading a capability's history",
            "SELECT revision, record FROM capability_history WHERE name = $1 ORDER BY revision",
            Some(name.to_owned()),
        )?;
        rows.iter().map(|r| decode(&format!("{name}#{}", r.get::<_, i64>(0)), r.get::<_, &[u8]>(1))).collect()
    }

    fn publish_check(&self, m: &Manifest) -> Result<CapabilityCheck, RegistryError> {
        publishable(self.capability(&m.capability)?, m)
    }
}
