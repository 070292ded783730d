//! [`EvaluationStore`] and [`CycleStore`] on PostgreSQL: evaluation suites, evaluation records and challenger cycle
//! records, each stored once under its digest and never replaced (the tables refuse updates and deletes too).
//!
//! A suite's data files live on the hub's blob storage (not shared between replicas yet): the trait's `suite_add`
//! puts them in the blob store the store was given ([`PgStore::with_suite_blobs`]) with the redb index's own
//! checks (`crate::registry::suites::suite_from_dir`), then registers the manifest ([`PgStore::suite_put`]).

use outpost_shared::Digest;
use outpost_shared::challenger::CycleRecord;
use outpost_shared::evaluation::{EvaluationRecord, SuiteManifest};

use super::{PgStore, big, query};
use crate::RegistryError;
use crate::registry::{SuiteAdded, cycles, decode, parse_digest, suites};
use crate::storage::{CapabilityStore, CycleStore, EvaluationStore};

impl PgStore {
    /// Registers a suite's manifest, once; its files' blobs are stored first by the caller. The same suite again
    /// changes nothing; another suite under a taken name is refused (a changed suite needs a new name).
    pub fn suite_put(&self, manifest: &SuiteManifest) -> Result<SuiteAdded, RegistryError> {
        let (m, digest) = (manifest.clone(), manifest.digest());
        self.run("registering a suite", move |pool| async move {
            let c = pool.get().await?;
            let (key, name) = (digest.to_hex(), m.suite.name.clone());
            let added = c
                .execute(
                    "INSERT INTO suites (digest, name, manifest) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&key, &name, &m.to_cbor()],
                )
                .await
                .map_err(query("registering a suite"))?;
            if added == 1 {
                return Ok(SuiteAdded { digest, manifest: m, added: true });
            }
            let row = c
                .query_opt("SELECT digest FROM suites WHERE name = $1", &[&name])
                .await
                .map_err(query("reading a suite's name"))?;
            match row.map(|row| parse_digest(row.get(0))).transpose()? {
                Some(existing) if existing == digest => Ok(SuiteAdded { digest, manifest: m, added: false }),
                Some(existing) => Err(RegistryError::SuiteNameTaken { name, existing }),
                // The digest is taken under another name: the same manifest, so the same name; only a damaged
                // row can get here.
                None => Err(RegistryError::Corrupt { key, problem: "registered under another name".into() }),
            }
        })
    }

    /// Inserts a write-once row; an existing id is `exists`.
    fn put_once(
        &self,
        op: &'static str,
        sql: &'static str,
        params: Vec<Box<dyn tokio_postgres::types::ToSql + Send + Sync>>,
        exists: RegistryError,
    ) -> Result<(), RegistryError> {
        let added = self.run(op, move |pool| async move {
            let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                params.iter().map(|p| &**p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
            Ok(pool.get().await?.execute(sql, &refs).await.map_err(query(op))?)
        })?;
        if added == 1 { Ok(()) } else { Err(exists) }
    }
}

/// The records of `(id, record)` rows, ordered as the redb index orders them: by id, then (stably) oldest first.
fn oldest_first<T: serde::de::DeserializeOwned>(
    rows: &[tokio_postgres::Row],
    at: impl Fn(&T) -> u64,
) -> Result<Vec<(Digest, T)>, RegistryError> {
    let mut out = rows
        .iter()
        .map(|r| Ok((parse_digest(r.get(0))?, decode::<T>(r.get(0), r.get(1))?)))
        .collect::<Result<Vec<_>, RegistryError>>()?;
    out.sort_by_key(|(_, r)| at(r));
    Ok(out)
}

impl EvaluationStore for PgStore {
    fn suite_add(&self, dir: &std::path::Path) -> Result<SuiteAdded, RegistryError> {
        let Some((blobs, max_file_bytes)) = &self.suite_blobs else {
            return Err(RegistryError::BadSuite {
                suite: dir.display().to_string(),
                problem: "this PostgreSQL store has no blob storage for a suite's files (`PgStore::with_suite_blobs`)"
                    .into(),
            });
        };
        let manifest = suites::suite_from_dir(dir, |name| self.capability(name), blobs, *max_file_bytes)?;
        self.suite_put(&manifest)
    }

    fn suite(&self, reference: &str) -> Result<(Digest, SuiteManifest), RegistryError> {
        suites::named(reference, self.suites()?)
    }

    fn suites(&self) -> Result<Vec<(Digest, SuiteManifest)>, RegistryError> {
        let rows = self.rows("reading the suites", "SELECT digest, manifest FROM suites ORDER BY name", None)?;
        rows.iter().map(|r| suites::suite_of(r.get(0), r.get(1))).collect()
    }

    fn evaluation_put(&self, record: &EvaluationRecord) -> Result<Digest, RegistryError> {
        let id = record.id();
        self.put_once(
            "storing an evaluation record",
            "INSERT INTO evaluations (id, package, at, record) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            vec![
                Box::new(id.to_hex()),
                Box::new(record.package.to_hex()),
                Box::new(big(record.at)),
                Box::new(record.to_cbor()),
            ],
            RegistryError::RecordExists(id),
        )?;
        Ok(id)
    }

    fn evaluations(&self, package: &Digest) -> Result<Vec<(Digest, EvaluationRecord)>, RegistryError> {
        let rows = self.rows(
            "reading a package's evaluations",
            "SELECT id, record FROM evaluations WHERE package = $1 ORDER BY id",
            Some(package.to_hex()),
        )?;
        oldest_first(&rows, |r: &EvaluationRecord| r.at)
    }
}

impl CycleStore for PgStore {
    fn cycle_put(&self, record: &CycleRecord) -> Result<Digest, RegistryError> {
        let id = record.id();
        self.put_once(
            "storing a cycle record",
            "INSERT INTO cycles (id, record) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            vec![Box::new(id.to_hex()), Box::new(record.to_cbor())],
            RegistryError::CycleExists(id),
        )?;
        Ok(id)
    }

    fn cycle(&self, reference: &str) -> Result<(Digest, CycleRecord), RegistryError> {
        cycles::named(reference, self.cycles()?)
    }

    fn cycles(&self) -> Result<Vec<(Digest, CycleRecord)>, RegistryError> {
        let rows = self.rows("reading the cycles", "SELECT id, record FROM cycles ORDER BY id", None)?;
        oldest_first(&rows, |r: &CycleRecord| r.at)
    }
}
