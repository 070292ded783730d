//! [`TelemetryEvents`] on PostgreSQL: devices' event batches, each event stored once per `(device, stream, seq)`
//! however many replicas receive the batch, summed and pruned as the redb `TelemetryStore` does.
//!
//! A batch is one transaction holding a transaction-scoped advisory lock on its device, so two replicas ingesting
//! the same batch at once serialise: the second finds every event there (all duplicates) and the stream's running
//! totals count each event once. The per-device stream bound, the stream record's edit and the aggregation are the
//! redb store's own functions (`crate::telemetry`).

use std::time::Duration;

use outpost_shared::canonical;
use outpost_shared::telemetry::Batch;

use super::{PgError, PgStore, big, query};
use crate::storage::TelemetryEvents;
use crate::telemetry::{
    Aggregation, Filter, Group, GroupBy, IngestOutcome, StoredEvent, StreamRecord, TelemetryStoreError, stream_after,
    stream_allowed,
};

/// Class (first key) of the advisory locks ingestion takes, one per device (second key: a hash of its key). The
/// two-key lock space is apart from the one-key space the migrator's lock is in.
const DEVICE_LOCK_CLASS: i32 = 0x6f75_7470;

/// A device's `u64` (stream id, sequence number) as a `bigint` of the same order: the top bit flipped.
pub(crate) fn ordered(v: u64) -> i64 {
    i64::from_be_bytes((v ^ (1 << 63)).to_be_bytes())
}

/// The `u64` [`ordered`] stored.
pub(crate) fn unordered(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes()) ^ (1 << 63)
}

fn corrupt(what: String, problem: impl ToString) -> TelemetryStoreError {
    TelemetryStoreError::CorruptRow { what, problem: problem.to_string() }
}

fn decoded<T: serde::de::DeserializeOwned>(what: impl FnOnce() -> String, b: &[u8]) -> Result<T, TelemetryStoreError> {
    canonical::from_slice(b).map_err(|e| corrupt(what(), e))
}

impl TelemetryEvents for PgStore {
    fn ingest(
        &self,
        device: &str,
        site: Option<&str>,
        release: Option<&str>,
        stage: Option<u32>,
        batch: &Batch,
    ) -> Result<IngestOutcome, TelemetryStoreError> {
        let now = self.clock.wall();
        let (site, release) = (site.map(str::to_owned), release.map(str::to_owned));
        let (device, stream, max) = (device.to_owned(), batch.stream, self.max_streams_per_device);
        let mut seqs = Vec::with_capacity(batch.events.len());
        let mut records = Vec::with_capacity(batch.events.len());
        let mut stored = StoredEvent::arriving(now, &site, &release, stage);
        for event in &batch.events {
            stored.at = event.at;
            stored.kind = event.kind.clone();
            seqs.push(ordered(event.seq));
            records
                .push(canonical::to_vec(&stored).map_err(|e| corrupt(format!("{device}/{stream}/{}", event.seq), e))?);
        }
        let batch = batch.clone();
        let pool = self.pool.clone();
        self.worker.run("storing telemetry", async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await.map_err(query("starting a transaction"))?;
            tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&DEVICE_LOCK_CLASS, &device])
                .await
                .map_err(query("locking a device's telemetry"))?;
            let previous = tx
                .query_opt(
                    "SELECT record FROM telemetry_streams WHERE device = $1 AND stream = $2",
                    &[&device, &ordered(stream)],
                )
                .await
                .map_err(query("reading a telemetry stream"))?;
            let previous: Option<StreamRecord> = previous
                .map(|row| decoded(|| format!("stream {device}/{stream}"), row.get::<_, &[u8]>(0)))
                .transpose()?;
            if previous.is_none() {
                let held: i64 = tx
                    .query_one("SELECT count(*) FROM telemetry_streams WHERE device = $1", &[&device])
                    .await
                    .map_err(query("counting a device's telemetry streams"))?
                    .get(0);
                stream_allowed(&device, stream, u64::try_from(held).unwrap_or(0), max)?;
            }
            // Events already there (a resend, or another replica's copy of this batch) are left as they were.
            let inserted = tx
                .execute(
                    "INSERT INTO telemetry_events (device, stream, seq, received_at, record)
                     SELECT $1, $2, t.seq, $3, t.record FROM unnest($4::bigint[], $5::bytea[]) AS t(seq, record)
                     ON CONFLICT DO NOTHING",
                    &[&device, &ordered(stream), &big(now), &seqs, &records],
                )
                .await
                .map_err(query("storing telemetry events"))?;
            let total = seqs.len() as u64;
            let outcome = IngestOutcome { stored: inserted, duplicates: total - inserted, ack: batch.last_seq() };
            let record = stream_after(previous.as_ref(), &batch, inserted, now, site, release, stage);
            let bytes = canonical::to_vec(&record).map_err(|e| corrupt(format!("stream {device}/{stream}"), e))?;
            tx.execute(
                "INSERT INTO telemetry_streams (device, stream, record) VALUES ($1, $2, $3)
                 ON CONFLICT (device, stream) DO UPDATE SET record = EXCLUDED.record",
                &[&device, &ordered(stream), &bytes],
            )
            .await
            .map_err(query("writing a telemetry stream"))?;
            tx.commit().await.map_err(query("committing telemetry"))?;
            Ok(outcome)
        })
    }

    fn aggregate(&self, by: GroupBy, filter: &Filter) -> Result<Vec<Group>, TelemetryStoreError> {
        let (device, since) = (filter.device.clone(), filter.since.map(big));
        let pool = self.pool.clone();
        // The rows in the redb store's key order (device, stream, seq), so sums of floats come out the same.
        let (events, streams) = self.worker.run("reading telemetry", async move {
            let c = pool.get().await?;
            let events = c
                .query(
                    "SELECT device, stream, seq, record FROM telemetry_events
                     WHERE ($1::text IS NULL OR device = $1) AND ($2::bigint IS NULL OR received_at >= $2)
                     ORDER BY device, stream, seq",
                    &[&device, &since],
                )
                .await
                .map_err(query("reading telemetry events"))?;
            let streams = c
                .query(
                    "SELECT device, stream, record FROM telemetry_streams WHERE ($1::text IS NULL OR device = $1)
                     ORDER BY device, stream",
                    &[&device],
                )
                .await
                .map_err(query("reading telemetry streams"))?;
            Ok::<_, TelemetryStoreError>((events, streams))
        })?;
        let mut groups = Aggregation::new(by, filter);
        for row in &events {
            let device: &str = row.get(0);
            let what = || format!("{device}/{}/{}", unordered(row.get(1)), unordered(row.get(2)));
            groups.event(device, &decoded(what, row.get::<_, &[u8]>(3))?);
        }
        for row in &streams {
            let device: &str = row.get(0);
            let what = || format!("stream {device}/{}", unordered(row.get(1)));
            groups.stream(device, &decoded(what, row.get::<_, &[u8]>(2))?);
        }
        Ok(groups.finish())
    }

    fn apply_retention(&self, retention: Duration) -> Result<u64, TelemetryStoreError> {
        let older_than = big(self.clock.wall().saturating_sub(retention.as_secs()));
        let pool = self.pool.clone();
        self.worker
            .run("pruning telemetry", async move {
                let c = pool.get().await?;
                let removed = c
                    .execute("DELETE FROM telemetry_events WHERE received_at < $1", &[&older_than])
                    .await
                    .map_err(query("pruning telemetry"))?;
                Ok::<_, PgError>(removed)
            })
            .map_err(TelemetryStoreError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_and_sequence_numbers_keep_their_order_as_bigint() {
        let values = [0, 1, 2, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX - 1, u64::MAX];
        for w in values.windows(2) {
            assert!(ordered(w[0]) < ordered(w[1]), "{} before {}", w[0], w[1]);
        }
        for v in values {
            assert_eq!(unordered(ordered(v)), v);
        }
    }
}
