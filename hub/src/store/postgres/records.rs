//! [`ReleaseStore`] and [`AuditStore`] on PostgreSQL: release records replaced whole under their id (changed under
//! the row's lock), and the audit log's newest anchor, which only moves forward.
//!
//! The anchor's rule is one statement (an upsert that changes the row only for a higher sequence number), so two
//! replicas that appended different entries at the same place cannot both record theirs: the second is refused.

use std::sync::Arc;

use outpost_shared::audit::Anchor;

use super::{PgStore, big, keyed, query, record};
use crate::RegistryError;
use crate::registry::releases::Changed;
use crate::registry::{decode_state, encode, encode_state};
use crate::rollouts::ReleaseRecord;
use crate::storage::{AuditStore, ReleaseStore};

/// The audit anchor's one row.
const ANCHOR: &str = "SELECT record FROM audit_anchor WHERE id = 1";

impl ReleaseStore for PgStore {
    fn release_put(&self, id: &str, record: &ReleaseRecord) -> Result<(), RegistryError> {
        let (id, bytes) = (id.to_owned(), encode_state(record)?);
        let (i, b) = (id.clone(), bytes.clone());
        self.run("writing a release", move |pool| async move {
            pool.get()
                .await?
                .execute(
                    "INSERT INTO releases (id, record) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET record = $2",
                    &[&i, &b],
                )
                .await
                .map_err(query("writing a release"))?;
            Ok(())
        })?;
        self.releases_decoded.put(&id, &bytes, Arc::new(record.clone()));
        Ok(())
    }

    fn releases(&self) -> Result<Vec<(String, ReleaseRecord)>, RegistryError> {
        const OP: &str = "reading the releases";
        let rows = self.run(OP, move |pool| async move {
            Ok(keyed(&*pool.get().await?, OP, "SELECT id, record FROM releases ORDER BY id").await?)
        })?;
        // Decoded once per distinct record, whichever replica wrote it (the cache is keyed by the bytes' digest).
        rows.into_iter()
            .map(|(id, bytes)| {
                let record = self.releases_decoded.get(&id, &bytes, |b| decode_state(&id, b))?;
                Ok((id, record))
            })
            .collect()
    }

    fn releases_shared(&self) -> Result<Vec<(String, Arc<ReleaseRecord>)>, RegistryError> {
        const OP: &str = "reading the releases";
        let rows = self.run(OP, move |pool| async move {
            Ok(keyed(&*pool.get().await?, OP, "SELECT id, record FROM releases ORDER BY id").await?)
        })?;
        rows.into_iter()
            .map(|(id, bytes)| {
                let record = self.releases_decoded.get_shared(&id, &bytes, |b| decode_state(&id, b))?;
                Ok((id, record))
            })
            .collect()
    }

    fn release(&self, id: &str) -> Result<Option<Arc<ReleaseRecord>>, RegistryError> {
        const OP: &str = "reading a release";
        let i = id.to_owned();
        let bytes: Option<Vec<u8>> = self.run(OP, move |pool| async move {
            let row = pool
                .get()
                .await?
                .query_opt("SELECT record FROM releases WHERE id = $1", &[&i])
                .await
                .map_err(query(OP))?;
            Ok(row.map(|r| r.get(0)))
        })?;
        bytes.map(|b| self.releases_decoded.get_shared(id, &b, |b| decode_state(id, b))).transpose()
    }

    /// One transaction holding the release's row (`FOR UPDATE`) from the read until the changed record is written:
    /// the record goes to the calling thread, `change` runs there, and the record comes back to be written (or the
    /// transaction is rolled back when nothing changed). Written whole: the database has no per-device rows.
    fn release_change(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut ReleaseRecord) -> Changed,
    ) -> Result<bool, RegistryError> {
        const OP: &str = "changing a release";
        let (to_caller, from_task) = std::sync::mpsc::sync_channel::<Option<ReleaseRecord>>(1);
        let (to_task, from_caller) = tokio::sync::oneshot::channel::<Option<ReleaseRecord>>();
        let (pool, i) = (self.pool.clone(), id.to_owned());
        let answer = self.worker.start(OP, async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await.map_err(query("starting a transaction"))?;
            let row = tx
                .query_opt("SELECT record FROM releases WHERE id = $1 FOR UPDATE", &[&i])
                .await
                .map_err(query("locking a release"))?;
            let found = row.map(|r| decode_state::<ReleaseRecord>(&i, r.get::<_, &[u8]>(0))).transpose()?;
            let known = found.is_some();
            let _ = to_caller.send(found);
            if !known {
                return Ok::<_, RegistryError>(None);
            }
            // Nothing changed, or the caller gave up: rolled back.
            let Ok(Some(changed)) = from_caller.await else { return Ok(None) };
            let bytes = encode_state(&changed)?;
            tx.execute("UPDATE releases SET record = $2 WHERE id = $1", &[&i, &bytes])
                .await
                .map_err(query("writing a release"))?;
            tx.commit().await.map_err(query("committing a release"))?;
            Ok(Some((bytes, changed)))
        })?;
        let known = match from_task.recv() {
            Ok(Some(mut record)) => {
                let changed = change(&mut record);
                let _ = to_task.send((changed != Changed::Nothing).then_some(record));
                true
            }
            Ok(None) => false,
            // The task failed before reading the row: its error is the answer.
            Err(_) => false,
        };
        let written = answer
            .recv()
            .map_err(|_| super::PgError::Worker(format!("{OP}: the query's task ended without an answer")))??;
        if let Some((bytes, record)) = written {
            self.releases_decoded.put(id, &bytes, Arc::new(record));
        }
        Ok(known)
    }
}

impl AuditStore for PgStore {
    fn audit_anchor_put(&self, anchor: &Anchor) -> Result<(), RegistryError> {
        let (offered, bytes, seq) = (*anchor, encode(anchor)?, big(anchor.seq));
        self.run("recording the audit anchor", move |pool| async move {
            let c = pool.get().await?;
            let moved = c
                .execute(
                    "INSERT INTO audit_anchor (id, seq, record) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, record = EXCLUDED.record
                     WHERE audit_anchor.seq < EXCLUDED.seq",
                    &[&seq, &bytes],
                )
                .await
                .map_err(query("recording the audit anchor"))?;
            if moved == 1 {
                return Ok(());
            }
            // Not moved: the same anchor again is a retried put; anything else is behind or forked.
            let stored: Option<Anchor> = record(&*c, "reading the audit anchor", "audit head", ANCHOR, &[]).await?;
            match stored {
                Some(stored) => crate::registry::devices::anchor_advances(&stored, &offered),
                None => Err(RegistryError::Corrupt { key: "audit head".into(), problem: "vanished".into() }),
            }
        })
    }

    fn audit_anchor(&self) -> Result<Option<Anchor>, RegistryError> {
        self.run("reading the audit anchor", move |pool| async move {
            record(&*pool.get().await?, "reading the audit anchor", "audit head", ANCHOR, &[]).await
        })
    }
}
