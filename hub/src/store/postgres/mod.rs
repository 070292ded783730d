//! The hub's storage traits on PostgreSQL (`hub.toml` `[store] postgres`), for several hub replicas sharing state:
//! the connection pool, the schema check on open, and the bridge from the synchronous traits to the async driver.
//!
//! Sync over async: the traits in `crate::storage` are synchronous (redb's calls are) and are called both from
//! plain threads (admin commands) and from tasks of the serving hub's tokio runtime. A query is therefore never run
//! on the caller's runtime: `tokio::task::block_in_place` panics on a current-thread runtime and `Handle::block_on`
//! panics inside any runtime. The store owns a small runtime of its own (`Worker`); a trait method spawns its
//! query there and waits on a channel. The caller's thread is blocked for the query's round trip, as it is for a
//! redb commit today, and every wait is bounded ([`PgLimits::query_timeout`]).
//!
//! Invariants kept as the redb index keeps them: a record is the same canonical CBOR; every read-modify-write runs
//! in one transaction holding the row's lock (`SELECT … FOR UPDATE`), so two replicas racing on a device, a
//! one-time token or the audit anchor serialise on the row instead of losing an update. The connection is plain
//! TCP or a Unix socket (no TLS to the database yet).

mod audit;
mod capabilities;
mod devices;
pub mod lease;
pub mod migrate;
pub mod notices;
mod packages;
mod records;
mod telemetry;
mod write_once;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use outpost_shared::clock::Clock;
use tokio_postgres::{Client, NoTls};

use crate::store::changes::ChangeLog;
use crate::store::decoded::Decoded;

pub use lease::{Lease, LeaseName};
pub use migrate::{MIGRATIONS, Migrated, SCHEMA_VERSION, migrate};
pub use notices::{Notice, Notices};
pub use packages::PackagePut;

/// Why the PostgreSQL store failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string does not parse (`[store] postgres` in hub.toml, or `migrate --postgres`).
    #[error("PostgreSQL connection string `{url}`: {source}")]
    BadUrl {
        /// The string, with any password replaced.
        url: String,
        /// What the driver found.
        source: tokio_postgres::Error,
    },
    /// The database could not be reached or refused the connection.
    #[error("connecting to PostgreSQL at {target}: {source}")]
    Connect {
        /// Host(s) and database, without credentials.
        target: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A statement failed.
    #[error("PostgreSQL, {op}: {source}")]
    Query {
        /// What was being done.
        op: &'static str,
        /// The driver's error (the server's message when it answered).
        source: tokio_postgres::Error,
    },
    /// A statement did not finish within [`PgLimits::query_timeout`].
    #[error("PostgreSQL, {op}: no answer within {secs} s")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The bound.
        secs: u64,
    },
    /// The database's schema is newer than this build knows: nothing is read or written.
    #[error(
        "the PostgreSQL database is at schema version {found}, newer than this outpost-hub knows ({known}); \
         nothing was changed: run the outpost-hub that migrated it, or a newer one"
    )]
    NewerSchema {
        /// The database's version.
        found: i64,
        /// The newest this build has.
        known: i64,
    },
    /// The database's schema is older than this build needs.
    #[error(
        "the PostgreSQL database is at schema version {found}, this outpost-hub needs {known}: run \
         `outpost-hub migrate` first"
    )]
    OlderSchema {
        /// The database's version (0: never migrated).
        found: i64,
        /// What this build needs.
        known: i64,
    },
    /// The store's own runtime could not start, or a query's task ended without answering.
    #[error("PostgreSQL worker: {0}")]
    Worker(String),
}

/// Bounds on the PostgreSQL store: connections held, and how long a caller may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgLimits {
    /// Connections the store keeps open (each query takes one for its transaction).
    pub connections: usize,
    /// How long connecting may take, when the connection string does not say (`connect_timeout`).
    pub connect_timeout: Duration,
    /// How long a caller waits for one operation (its transaction, retries of the connection included).
    pub query_timeout: Duration,
}

impl Default for PgLimits {
    fn default() -> Self {
        PgLimits { connections: 4, connect_timeout: Duration::from_secs(10), query_timeout: Duration::from_secs(30) }
    }
}

/// Parses a connection string (`postgres://user@host:port/db?…`, or `host=… dbname=…`), as hub.toml's
/// `[store] postgres` and `migrate --postgres` take it.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, PgError> {
    tokio_postgres::Config::from_str(url).map_err(|source| PgError::BadUrl { url: redacted(url), source })
}

/// `url` with the password of a `scheme://user:password@` form replaced, for error messages.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains("password") { "(key=value settings with a password)".into() } else { url.into() };
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.into(),
    }
}

/// Where a configuration points, without credentials: `host[,host]/dbname`.
fn target(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    format!("{}/{}", hosts.join(","), config.get_dbname().unwrap_or("(default database)"))
}

/// A small tokio runtime of the store's own, on which every query runs (see the module documentation).
#[derive(Debug)]
pub(crate) struct Worker {
    rt: Option<tokio::runtime::Runtime>,
    query_timeout: Duration,
}

impl Worker {
    /// Starts the runtime: one worker thread drives every connection.
    pub(crate) fn new(query_timeout: Duration) -> Result<Worker, PgError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("outpost-postgres")
            .enable_all()
            .build()
            .map_err(|e| PgError::Worker(format!("starting its runtime: {e}")))?;
        Ok(Worker { rt: Some(rt), query_timeout })
    }

    /// Runs `fut` on the store's runtime and waits for its answer, from any thread (a runtime's included).
    pub(crate) fn run<T, E>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<PgError> + Send + 'static,
    {
        let answer = self.start(op, fut)?;
        answer.recv().map_err(|_| PgError::Worker(format!("{op}: the query's task ended without an answer")))?
    }

    /// Starts `fut` on the store's runtime (bounded by the query timeout) without waiting: its answer comes on the
    /// channel returned, for a caller that talks to the task meanwhile.
    pub(crate) fn start<T, E>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<std::sync::mpsc::Receiver<Result<T, E>>, E>
    where
        T: Send + 'static,
        E: From<PgError> + Send + 'static,
    {
        let Some(rt) = &self.rt else { return Err(PgError::Worker("stopped".into()).into()) };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let limit = self.query_timeout;
        rt.spawn(async move {
            let answer = match tokio::time::timeout(limit, fut).await {
                Ok(answer) => answer,
                Err(_) => Err(PgError::Timeout { op, secs: limit.as_secs() }.into()),
            };
            let _ = tx.send(answer);
        });
        Ok(rx)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime (the serving hub's): let it wind down on
        // its own thread instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Connects, and drives the connection on the current runtime.
async fn connect(config: &tokio_postgres::Config) -> Result<Client, PgError> {
    let (client, connection) =
        config.connect(NoTls).await.map_err(|source| PgError::Connect { target: target(config), source })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// A fixed set of connections, each opened on first use and again after it closed.
pub(crate) struct Pool {
    config: tokio_postgres::Config,
    slots: Vec<tokio::sync::Mutex<Option<Client>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("target", &target(&self.config)).field("slots", &self.slots.len()).finish()
    }
}

/// A connection taken from the pool for one operation.
pub(crate) type Conn<'a> = tokio::sync::MappedMutexGuard<'a, Client>;

impl Pool {
    fn new(config: tokio_postgres::Config, connections: usize) -> Pool {
        let slots = (0..connections.max(1)).map(|_| tokio::sync::Mutex::new(None)).collect();
        Pool { config, slots, next: AtomicUsize::new(0) }
    }

    /// A connection: a free one if any, else the next in turn once it is free.
    pub(crate) async fn get(&self) -> Result<Conn<'_>, PgError> {
        let mut slot = match self.slots.iter().find_map(|s| s.try_lock().ok()) {
            Some(free) => free,
            None => self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()].lock().await,
        };
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(connect(&self.config).await?);
        }
        tokio::sync::MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| PgError::Worker("a pooled connection went missing".into()))
    }
}

/// Every row (a text key, then its record's bytes) the statement finds, in its order.
pub(crate) async fn keyed(
    c: &impl tokio_postgres::GenericClient,
    op: &'static str,
    sql: &str,
) -> Result<Vec<(String, Vec<u8>)>, PgError> {
    let rows = c.query(sql, &[]).await.map_err(query(op))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The record (canonical CBOR in the first column) the statement finds, if any; `key` names it in errors.
pub(crate) async fn record<T: serde::de::DeserializeOwned>(
    c: &impl tokio_postgres::GenericClient,
    op: &'static str,
    key: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Option<T>, crate::RegistryError> {
    let row = c.query_opt(sql, params).await.map_err(query(op))?;
    row.map(|r| crate::registry::decode(key, r.get::<_, &[u8]>(0))).transpose()
}

/// `op` failed in the driver.
pub(crate) fn query(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    move |source| PgError::Query { op, source }
}

/// The hub's shared state on PostgreSQL: the package index and aliases, capabilities, suites, evaluation and cycle
/// records, devices and enrolment tokens, releases, the audit log and its anchor, telemetry (the
/// [`crate::storage`] traits it implements).
pub struct PgStore {
    worker: Arc<Worker>,
    pool: Arc<Pool>,
    clock: Arc<dyn Clock>,
    device_changes: Arc<ChangeLog>,
    /// The sender of received notices, once [`PgStore::listen`] started the listening connection.
    notices: std::sync::OnceLock<tokio::sync::broadcast::Sender<notices::Notice>>,
    releases_decoded: Decoded,
    max_streams_per_device: u32,
    /// Where `suite add` puts a suite's files, and the largest file it takes (`[limits] max_model_bytes`).
    suite_blobs: Option<(crate::blobs::BlobStore, u64)>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database `url` names and checks its schema is the one this build writes (older: run
    /// `outpost-hub migrate`; newer: refused).
    pub fn open(url: &str, clock: Arc<dyn Clock>, limits: &PgLimits) -> Result<PgStore, PgError> {
        let mut config = parse_url(url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(limits.connect_timeout);
        }
        let worker = Worker::new(limits.query_timeout)?;
        let pool = Arc::new(Pool::new(config, limits.connections));
        let p = pool.clone();
        let found =
            worker.run("reading the schema version", async move { migrate::version(&*p.get().await?).await })?;
        if found > SCHEMA_VERSION {
            return Err(PgError::NewerSchema { found, known: SCHEMA_VERSION });
        }
        if found < SCHEMA_VERSION {
            return Err(PgError::OlderSchema { found, known: SCHEMA_VERSION });
        }
        Ok(PgStore {
            worker: Arc::new(worker),
            pool,
            clock,
            device_changes: Arc::new(ChangeLog::new(crate::store::files::DEVICE_CHANGES_KEPT)),
            notices: std::sync::OnceLock::new(),
            releases_decoded: Decoded::new(crate::store::decoded::DECODED_BYTES_KEPT),
            max_streams_per_device: crate::telemetry::DEFAULT_MAX_STREAMS_PER_DEVICE,
            suite_blobs: None,
        })
    }

    /// The store with the blob storage `EvaluationStore::suite_add` puts a suite's files in (files above
    /// `max_file_bytes` refused); without it, `suite_add` is refused (only [`PgStore::suite_put`] registers).
    pub fn with_suite_blobs(mut self, blobs: crate::blobs::BlobStore, max_file_bytes: u64) -> PgStore {
        self.suite_blobs = Some((blobs, max_file_bytes));
        self
    }

    /// The store with at most `max` distinct telemetry streams per device (at least 1), as
    /// `TelemetryStore::with_max_streams_per_device`.
    pub fn with_max_streams_per_device(mut self, max: u32) -> PgStore {
        self.max_streams_per_device = max.max(1);
        self
    }

    /// The rows a read-only statement with at most one (text) parameter finds.
    fn rows(
        &self,
        op: &'static str,
        sql: &'static str,
        arg: Option<String>,
    ) -> Result<Vec<tokio_postgres::Row>, crate::RegistryError> {
        self.run(op, move |pool| async move {
            let c = pool.get().await?;
            let rows = match &arg {
                Some(a) => c.query(sql, &[a]).await,
                None => c.query(sql, &[]).await,
            };
            Ok(rows.map_err(query(op))?)
        })
    }

    /// Runs the future `f` makes (given the pool) on the store's runtime, and waits for it.
    fn run<T, Fut>(&self, op: &'static str, f: impl FnOnce(Arc<Pool>) -> Fut) -> Result<T, crate::RegistryError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, crate::RegistryError>> + Send + 'static,
    {
        self.worker.run(op, f(self.pool.clone()))
    }
}

/// A count or time as a PostgreSQL `bigint`; values past `i64::MAX` (only `u64` ends, such as an expiry
/// saturated at the far end) saturate, which keeps their order.
pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_connection_string_is_refused_without_its_password() {
        let e = parse_url("postgres://hub:s3cret@db:notaport/outpost").unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PgError::BadUrl { .. }), "{e:?}");
        assert!(!text.contains("s3cret") && text.contains("hub:***@db"), "{text}");
        assert!(parse_url("postgres://hub@db.example:5432/outpost").is_ok());
        assert!(parse_url("host=/run/postgresql dbname=outpost").is_ok());
    }
}
