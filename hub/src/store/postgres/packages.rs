//! [`PackageStore`] on PostgreSQL: the package index (written once per package, after its blobs) and aliases with
//! their history, resolved as the redb index resolves them (`crate::registry::packages`).
//!
//! An alias and its history change in one transaction under the alias row's lock, so two replicas moving one
//! alias at once leave one chain of events (each `previous` the one before it), never two events with one number.

use outpost_shared::{Digest, Manifest};

use super::{PgStore, big, keyed, query, record};
use crate::RegistryError;
use crate::registry::packages::{digest_prefix, one_match, parsed_manifest, sort_listing, valid_alias};
use crate::registry::{AliasEvent, PackageRecord, decode, encode, parse_digest};
use crate::storage::PackageStore;

/// Whether [`PgStore::package_put`] wrote the package's row or found it there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackagePut {
    /// The row was written.
    Added,
    /// The same package was already registered; nothing changed.
    AlreadyThere,
}

impl PgStore {
    /// Registers a package in the index: its record and its manifest's canonical CBOR, once. The caller has put
    /// its blobs first (the index never names bytes that are not stored). The same package again changes nothing;
    /// another package under the same `name@version` is refused (versions are immutable).
    pub fn package_put(&self, record: &PackageRecord, manifest_cbor: &[u8]) -> Result<PackagePut, RegistryError> {
        let (r, bytes, manifest) = (record.clone(), encode(record)?, manifest_cbor.to_vec());
        self.run("registering a package", move |pool| async move {
            let c = pool.get().await?;
            let (digest, name_version) = (r.digest.to_hex(), format!("{}@{}", r.name, r.version));
            let added = c
                .execute(
                    "INSERT INTO packages (digest, name_version, record, manifest) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&digest, &name_version, &bytes, &manifest],
                )
                .await
                .map_err(query("registering a package"))?;
            if added == 1 {
                return Ok(PackagePut::Added);
            }
            let row = c
                .query_opt("SELECT digest FROM packages WHERE name_version = $1", &[&name_version])
                .await
                .map_err(query("reading a package's name"))?;
            match row.map(|row| parse_digest(row.get(0))).transpose()? {
                Some(existing) if existing == r.digest => Ok(PackagePut::AlreadyThere),
                Some(existing) => Err(RegistryError::VersionTaken { name: r.name, version: r.version, existing }),
                // The digest is taken under another name: the same bytes, so the same manifest and name; only a
                // damaged row can get here.
                None => Err(RegistryError::Corrupt { key: digest, problem: "registered under another name".into() }),
            }
        })
    }
}

impl PackageStore for PgStore {
    fn record(&self, d: &Digest) -> Result<Option<PackageRecord>, RegistryError> {
        let key = d.to_hex();
        self.run("reading a package", move |pool| async move {
            record(
                &*pool.get().await?,
                "reading a package",
                &key,
                "SELECT record FROM packages WHERE digest = $1",
                &[&key],
            )
            .await
        })
    }

    fn list(&self) -> Result<Vec<PackageRecord>, RegistryError> {
        const OP: &str = "reading the packages";
        let rows = self.run(OP, move |pool| async move {
            Ok(keyed(&*pool.get().await?, OP, "SELECT digest, record FROM packages").await?)
        })?;
        let mut out = rows.iter().map(|(key, bytes)| decode(key, bytes)).collect::<Result<Vec<_>, _>>()?;
        sort_listing(&mut out);
        Ok(out)
    }

    fn resolve(&self, reference: &str) -> Result<Digest, RegistryError> {
        let reference = reference.to_owned();
        let found = self.run("resolving a package", move |pool| async move {
            let c = pool.get().await?;
            let by_name = if reference.contains('@') {
                "SELECT digest FROM packages WHERE name_version = $1"
            } else {
                "SELECT digest FROM aliases WHERE alias = $1"
            };
            let row = c.query_opt(by_name, &[&reference]).await.map_err(query("resolving a package"))?;
            if let Some(row) = row {
                return parse_digest(row.get(0));
            }
            if reference.contains('@') {
                return Err(RegistryError::UnknownPackage(reference));
            }
            let prefix = digest_prefix(&reference)?;
            // Hex only (checked above), so the pattern has no wildcard of its own; COLLATE "C" lets the primary key
            // answer it.
            let rows = c
                .query("SELECT digest FROM packages WHERE digest LIKE $1 || '%' ORDER BY digest", &[&prefix])
                .await
                .map_err(query("resolving a digest prefix"))?;
            let matches = rows.iter().map(|r| parse_digest(r.get(0))).collect::<Result<Vec<_>, _>>()?;
            one_match(&reference, prefix, &matches)
        })?;
        Ok(found)
    }

    fn manifest(&self, d: &Digest) -> Result<(Vec<u8>, Manifest), RegistryError> {
        let key = d.to_hex();
        let rows =
            self.rows("reading a manifest", "SELECT manifest FROM packages WHERE digest = $1", Some(key.clone()))?;
        let Some(row) = rows.first() else { return Err(RegistryError::UnknownPackage(key)) };
        parsed_manifest(key, row.get(0))
    }

    fn alias_set(&self, alias: &str, d: &Digest) -> Result<AliasEvent, RegistryError> {
        if !valid_alias(alias) {
            return Err(RegistryError::BadAliasName(alias.into()));
        }
        let (alias, digest, now) = (alias.to_owned(), *d, self.clock.wall());
        self.run("moving an alias", move |pool| async move {
            let mut c = pool.get().await?;
            let tx = c.transaction().await.map_err(query("starting a transaction"))?;
            let hex = digest.to_hex();
            let known = tx
                .query_opt("SELECT 1 FROM packages WHERE digest = $1", &[&hex])
                .await
                .map_err(query("reading a package"))?;
            if known.is_none() {
                return Err(RegistryError::UnknownPackage(hex));
            }
            // A new alias is inserted (a second writer of the same new alias waits here for the first to commit,
            // then finds it); an existing one is locked before its previous target and last number are read.
            let created = tx
                .execute("INSERT INTO aliases (alias, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&alias, &hex])
                .await
                .map_err(query("creating an alias"))?;
            let (previous, last_seq) = if created == 1 {
                (None, 0)
            } else {
                let row = tx
                    .query_one("SELECT digest FROM aliases WHERE alias = $1 FOR UPDATE", &[&alias])
                    .await
                    .map_err(query("locking an alias"))?;
                let previous = parse_digest(row.get(0))?;
                let last = tx
                    .query_one("SELECT coalesce(max(seq), 0) FROM alias_history WHERE alias = $1", &[&alias])
                    .await
                    .map_err(query("reading an alias's history"))?;
                tx.execute("UPDATE aliases SET digest = $2 WHERE alias = $1", &[&alias, &hex])
                    .await
                    .map_err(query("moving an alias"))?;
                (Some(previous), u64::try_from(last.get::<_, i64>(0)).unwrap_or(0))
            };
            let event = AliasEvent { seq: last_seq + 1, digest, previous, at: now };
            tx.execute(
                "INSERT INTO alias_history (alias, seq, record) VALUES ($1, $2, $3)",
                &[&alias, &big(event.seq), &encode(&event)?],
            )
            .await
            .map_err(query("recording an alias's history"))?;
            tx.commit().await.map_err(query("committing an alias"))?;
            Ok(event)
        })
    }

    fn aliases(&self) -> Result<Vec<(String, Digest)>, RegistryError> {
        let rows = self.rows("reading the aliases", "SELECT alias, digest FROM aliases ORDER BY alias", None)?;
        rows.iter().map(|r| Ok((r.get(0), parse_digest(r.get(1))?))).collect()
    }

    fn alias_history(&self, alias: &str) -> Result<Vec<AliasEvent>, RegistryError> {
        let rows = self.rows(
            "reading an alias's history",
            "SELECT seq, record FROM alias_history WHERE alias = $1 ORDER BY seq",
            Some(alias.to_owned()),
        )?;
        if rows.is_empty() {
            return Err(RegistryError::UnknownAlias(alias.into()));
        }
        rows.iter().map(|r| decode(&format!("{alias}#{}", r.get::<_, i64>(0)), r.get::<_, &[u8]>(1))).collect()
    }
}
