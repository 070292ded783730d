//! The replicas' lease: which one hub replica does the online TUF re-signing and the rollout controller's ticks,
//! held as a session-level advisory lock on a connection of its own.
//!
//! The database holds the lease for as long as the holder's session lives: the server releases a session's advisory
//! locks when its connection ends, whether the replica released it, crashed or had its backend terminated, so the
//! next contender's [`Lease::try_acquire`] succeeds at once. The holder learns it lost the lease by asking
//! ([`Lease::is_held`]: a round trip on that connection, bounded); a holder whose connection died holds nothing.
//! Between the holder losing its connection and noticing, the database may already have given the lease to another
//! replica: the work done under the lease is itself safe to repeat (re-signing takes `repository/.lock`; rollout
//! writes are transactions on their rows), so the lease decides who does it, not whether it is correct.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_postgres::Client;

use super::{PgError, PgStore, Worker, connect, query};

/// Class (first key) of the advisory locks leases are (the second key is the [`LeaseName`]); apart from the audit
/// log's and telemetry's classes.
pub const LEASE_CLASS: i32 = 0x6f75_746c;

/// Keepalive settings of the lease's session, so the server also notices a holder that vanished without closing
/// its connection (a machine lost, a partition) and frees the lease: idle seconds, then probes this far apart, this
/// many of them.
const KEEPALIVE: (u32, u32, u32) = (10, 5, 3);

/// What a lease is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseName {
    /// The replica that re-signs online TUF metadata and the revocation list, and ticks the rollout controller.
    Leader,
}

impl LeaseName {
    /// The advisory lock's second key (the first is [`LEASE_CLASS`]).
    pub fn key(self) -> i32 {
        match self {
            LeaseName::Leader => 1,
        }
    }
}

/// A lease on the database, held by at most one session at a time (see the module documentation). Dropping it
/// releases it: the session ends.
pub struct Lease {
    worker: Arc<Worker>,
    config: tokio_postgres::Config,
    name: LeaseName,
    /// The session holding the lease, when this replica holds it.
    session: Mutex<Option<Client>>,
    /// How long one round trip may take before the lease is taken as lost.
    timeout: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("name", &self.name).field("held", &self.holding()).finish_non_exhaustive()
    }
}

impl PgStore {
    /// The lease `name` on this store's database, not held yet: [`Lease::try_acquire`] takes it.
    pub fn lease(&self, name: LeaseName) -> Lease {
        Lease {
            worker: self.worker.clone(),
            config: self.pool.config.clone(),
            name,
            session: Mutex::new(None),
            timeout: self.worker.query_timeout.min(Duration::from_secs(5)),
        }
    }
}

impl Lease {
    fn session(&self) -> MutexGuard<'_, Option<Client>> {
        self.session.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether this replica has a session it believes holds the lease (no round trip).
    fn holding(&self) -> bool {
        self.session().as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Takes the lease if nobody holds it; `true` if this replica holds it now (it already did, or took it). A
    /// connection that failed is dropped, with whatever it held.
    pub fn try_acquire(&self) -> Result<bool, PgError> {
        if self.is_held() {
            return Ok(true);
        }
        let config = self.config.clone();
        let key = self.name.key();
        let client = self.worker.run("taking the lease", async move {
            let client = connect(&config).await?;
            let (idle, interval, count) = KEEPALIVE;
            client
                .batch_execute(&format!(
                    "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; \
                     SET tcp_keepalives_count = {count}"
                ))
                .await
                .map_err(query("setting the lease session's keepalives"))?;
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LEASE_CLASS, &key])
                .await
                .map_err(query("taking the lease"))?;
            Ok::<_, PgError>(row.get::<_, bool>(0).then_some(client))
        })?;
        let held = client.is_some();
        *self.session() = client;
        Ok(held)
    }

    /// Whether this replica still holds the lease: its session answers a round trip within the bound and still
    /// holds the lock. A session that does not is dropped (the lease is this replica's no more).
    pub fn is_held(&self) -> bool {
        let Some(client) = self.session().take() else { return false };
        if client.is_closed() {
            return false;
        }
        let key = self.name.key();
        let limit = self.timeout;
        let checked = self.worker.run("checking the lease", async move {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&LEASE_CLASS, &key];
            let ask = client.query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
                 AND classid = $1::int::oid AND objid = $2::int::oid AND objsubid = 2 AND granted",
                &params,
            );
            let held = match tokio::time::timeout(limit, ask).await {
                Ok(Ok(row)) => row.get::<_, i64>(0) == 1,
                _ => false,
            };
            Ok::<_, PgError>((client, held))
        });
        match checked {
            Ok((client, true)) => {
                *self.session() = Some(client);
                true
            }
            _ => false,
        }
    }

    /// Gives the lease up: the session ends and the server releases the lock.
    pub fn release(&self) {
        self.session().take();
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}
