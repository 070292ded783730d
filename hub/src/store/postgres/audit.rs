//! [`AuditEntries`] on PostgreSQL: the audit log's entries in one table keyed by sequence number, one hash chain
//! whichever replica appends.
//!
//! An append is one transaction under a transaction-scoped advisory lock: it reads the newest entry, links the new
//! one to it (`outpost_shared::audit::Chain`, as the file's writer does) and inserts it. Two replicas appending at
//! once take turns, and the primary key on the sequence number refuses a second entry at one place even if a writer
//! skipped the lock, so the chain never forks. Each row's hash column is checked against its record when read.

use std::path::Path;

use outpost_shared::audit::{Action, Chain, Entry};
use outpost_shared::canonical;
use outpost_shared::clock::UnixSeconds;

use super::{PgStore, big, query};
use crate::audit::{AuditError, record_of};
use crate::storage::AuditEntries;

/// Class (first key) of the advisory lock appends take; the second key is 0. Apart from telemetry's class.
const APPEND_LOCK_CLASS: i32 = 0x6f75_7471;

/// What errors name as the log's place.
const WHERE: &str = "audit_log (PostgreSQL)";

/// The entry a row holds, checked against the row's sequence number and hash columns.
fn entry_of(seq: i64, hash: &[u8], record: &[u8]) -> Result<Entry, AuditError> {
    let at = u64::try_from(seq).unwrap_or(0);
    let corrupt = |problem: String| AuditError::CorruptRow { seq: at, problem };
    let entry: Entry = canonical::from_slice(record).map_err(|e| corrupt(format!("not an entry: {e}")))?;
    if entry.seq != at {
        return Err(corrupt(format!("the row holds entry {}", entry.seq)));
    }
    if entry.hash().0.as_slice() != hash {
        return Err(corrupt("the entry does not hash to its row's hash".into()));
    }
    Ok(entry)
}

impl AuditEntries for PgStore {
    fn audit_append(
        &self,
        at: UnixSeconds,
        actor: &str,
        action: Action,
        subject: &str,
        detail: &str,
    ) -> Result<Entry, AuditError> {
        let (actor, subject, detail) = (actor.to_owned(), subject.to_owned(), detail.to_owned());
        let pool = self.pool.clone();
        self.worker.run("appending to the audit log", async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await.map_err(query("starting a transaction"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&APPEND_LOCK_CLASS])
                .await
                .map_err(query("locking the audit log"))?;
            let newest = tx
                .query_opt("SELECT seq, hash, record FROM audit_log ORDER BY seq DESC LIMIT 1", &[])
                .await
                .map_err(query("reading the newest audit entry"))?;
            let newest = newest.map(|r| entry_of(r.get(0), r.get(1), r.get(2))).transpose()?;
            let entry = Chain::after(newest.as_ref()).append(at, &actor, action, &subject, &detail);
            record_of(&entry, Path::new(WHERE))?;
            let record = canonical::to_vec(&entry)
                .map_err(|e| AuditError::CorruptRow { seq: entry.seq, problem: format!("encoding it: {e}") })?;
            tx.execute(
                "INSERT INTO audit_log (seq, hash, record) VALUES ($1, $2, $3)",
                &[&big(entry.seq), &entry.hash().0.as_slice(), &record],
            )
            .await
            .map_err(query("appending to the audit log"))?;
            tx.commit().await.map_err(query("committing an audit entry"))?;
            Ok(entry)
        })
    }

    fn audit_entries(&self, from: u64) -> Result<Vec<Entry>, AuditError> {
        let pool = self.pool.clone();
        let from = big(from);
        let rows = self.worker.run("reading the audit log", async move {
            let c = pool.get().await?;
            let rows = c
                .query("SELECT seq, hash, record FROM audit_log WHERE seq >= $1 ORDER BY seq", &[&from])
                .await
                .map_err(query("reading the audit log"))?;
            Ok::<_, AuditError>(rows)
        })?;
        rows.iter().map(|r| entry_of(r.get(0), r.get(1), r.get(2))).collect()
    }
}
