//! Versioned schema migrations (`outpost-hub migrate`): SQL files embedded in the binary, each applied in one
//! transaction together with its row in `schema_migrations`, so a schema is always at exactly one version.
//!
//! Invariants: migrations only ever add a version at the end; several migrators serialise on an advisory lock;
//! a database at a version this build does not know is refused before anything is written.

use tokio_postgres::Client;

use super::{PgError, PgLimits, Worker, connect, parse_url, query};

/// One schema version: what it adds, as SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version: 1, 2, … in order.
    pub version: i64,
    /// What it is, in a few words (recorded beside the version).
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "devices, enrolment tokens, releases, audit anchor",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration { version: 2, name: "packages and aliases", sql: include_str!("migrations/0002_packages.sql") },
    Migration { version: 3, name: "telemetry events and streams", sql: include_str!("migrations/0003_telemetry.sql") },
    Migration { version: 4, name: "audit log entries", sql: include_str!("migrations/0004_audit_log.sql") },
    Migration {
        version: 5,
        name: "capabilities, suites, evaluation and cycle records",
        sql: include_str!("migrations/0005_capabilities_evaluations_cycles.sql"),
    },
];

/// The schema version this build reads and writes: the last migration's.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Key of the advisory lock migrators take (any fixed number no other application on the database uses: "outpost"
/// in ASCII).
const LOCK_KEY: i64 = 0x006f_7574_706f_7374;

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version found.
    pub from: i64,
    /// The version now.
    pub to: i64,
}

/// The database's schema version: the highest applied migration, 0 when it has never been migrated.
pub(crate) async fn version(client: &Client) -> Result<i64, PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(query("looking for schema_migrations"))?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[])
        .await
        .map_err(query("reading schema_migrations"))?;
    Ok(row.get(0))
}

/// Creates or upgrades the schema of the database `url` names; at the newest version already, changes nothing.
///
/// # Errors
/// [`PgError::NewerSchema`] when the database is ahead of this build; connection and statement failures (a
/// migration that fails leaves the database at the version before it).
pub fn migrate(url: &str, limits: &PgLimits) -> Result<Migrated, PgError> {
    let mut config = parse_url(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(limits.connect_timeout);
    }
    let worker = Worker::new(limits.query_timeout)?;
    worker.run("migrating", async move {
        let mut client = connect(&config).await?;
        // Session-level: held until released below or the connection ends, so a failed run never leaves it taken.
        client
            .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(query("taking the migration lock"))?;
        let outcome = apply(&mut client).await;
        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY]).await;
        outcome
    })
}

async fn apply(client: &mut Client) -> Result<Migrated, PgError> {
    let from = version(client).await?;
    if from > SCHEMA_VERSION {
        return Err(PgError::NewerSchema { found: from, known: SCHEMA_VERSION });
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version bigint PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(query("creating schema_migrations"))?;
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        let tx = client.transaction().await.map_err(query("starting a migration"))?;
        tx.batch_execute(m.sql).await.map_err(query("applying a migration"))?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await
            .map_err(query("recording a migration"))?;
        tx.commit().await.map_err(query("committing a migration"))?;
        tracing::info!(version = m.version, name = m.name, "applied schema migration");
    }
    Ok(Migrated { from, to: SCHEMA_VERSION.max(from) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "{}", m.name);
            assert!(!m.sql.trim().is_empty(), "{}", m.name);
        }
    }
}
