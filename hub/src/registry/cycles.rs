//! Challenger cycle records in the registry: each stored once under its digest, never replaced, so the decision a
//! cycle took and the measurements behind it stay as they were.
//!
//! Invariant: inserting a record that exists is refused (`CycleExists`), never an overwrite.

use redb::ReadableTable;

use outpost_shared::Digest;
use outpost_shared::challenger::CycleRecord;

use super::{CYCLES, Registry, RegistryError, db_err, decode, parse_digest, read_table};

impl Registry {
    /// Stores a cycle record under its id; refuses one that is already stored.
    pub fn cycle_put(&self, record: &CycleRecord) -> Result<Digest, RegistryError> {
        let id = record.id();
        let key = id.to_hex();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CYCLES).map_err(db_err)?;
            if t.get(key.as_str()).map_err(db_err)?.is_some() {
                return Err(RegistryError::CycleExists(id));
            }
            t.insert(key.as_str(), record.to_cbor().as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(id)
    }

    /// Every cycle record, oldest first.
    pub fn cycles(&self) -> Result<Vec<(Digest, CycleRecord)>, RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let Some(t) = read_table(&tx, CYCLES)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((parse_digest(k.value())?, decode::<CycleRecord>(k.value(), v.value())?));
        }
        out.sort_by_key(|(_, r)| r.at);
        Ok(out)
    }

    /// The cycle an id or a unique id prefix (8+ hex) names.
    pub fn cycle(&self, reference: &str) -> Result<(Digest, CycleRecord), RegistryError> {
        named(reference, self.cycles()?)
    }
}

/// The cycle of `all` an id or a unique id prefix names (both backends).
pub(crate) fn named(reference: &str, all: Vec<(Digest, CycleRecord)>) -> Result<(Digest, CycleRecord), RegistryError> {
    let unknown = || RegistryError::UnknownCycle(reference.to_owned());
    super::by_prefix(reference, all, |(d, _)| d, unknown)
}
