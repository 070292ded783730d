//! [`ReleaseStore`] and [`AuditStore`] on PostgreSQL: release records replaced whole under their id, and the audit
//! log's newest anchor, which only moves forward.
//!
//! The anchor's rule is one statement (an upsert that changes the row only for a higher sequence number), so two
//! replicas that appended different entries at the same place cannot both record theirs: the second is refused.

use std::sync::Arc;

use outpost_shared::audit::Anchor;

use super::{PgStore, big, keyed, query, record};
use crate::RegistryError;
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
