//! Release records in the index: each release's header (its rollout without the devices) in one row and each
//! device's part of it in a row of its own, so a device's report rewrites that device's row, not every device's.
//!
//! The records are held decoded in memory once per process (beside the file's one handle, `crate::store::files`),
//! loaded at the first read and changed in place by every write through [`Registry::release_modify`] before the
//! rows it changed are written; a failed write forgets them, and the next read loads them again from the file.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use outpost_shared::rollout::DeviceEntry;

use super::*;
use crate::rollouts::ReleaseRecord;

/// Release id → its header: the [`ReleaseRecord`] without its devices (plain CBOR). A hub before per-device rows
/// kept every device in here; such a record is split into rows when it is first loaded.
pub(super) const RELEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("releases");
/// (release id, device key hex) → that device's part of the release (`shared::rollout::DeviceEntry`, plain CBOR).
const RELEASE_DEVICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("release_devices");

/// What a change to a release record touched: what must be written back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Nothing: nothing is written.
    Nothing,
    /// The header only (the newest time seen, recovery counts).
    Header,
    /// The header and this device's part (a report, an enrolment).
    Device(String),
    /// Anything, devices included (a new stage, an abort, an operator command): every row is written again.
    Whole,
}

/// Every release record by id, `None` until loaded (and again after a failed write).
type Held = Option<BTreeMap<String, Arc<ReleaseRecord>>>;

/// The release records as decoded, shared by every user of one index file in the process.
#[derive(Debug, Default)]
pub struct Cache {
    /// `None` until first loaded, and again after a failed write.
    records: Mutex<Held>,
    /// Held from a change in memory until its rows are committed, so the file sees changes in the order memory did.
    writer: Mutex<()>,
}

impl Cache {
    fn records(&self) -> MutexGuard<'_, Held> {
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The rows one change writes: the header, and the devices' parts to put (`Some`) or remove (`None`).
struct Rows {
    header: Vec<u8>,
    devices: Vec<(String, Option<Vec<u8>>)>,
    whole: bool,
}

impl Rows {
    fn of(record: &ReleaseRecord, changed: &Changed) -> Result<Option<Rows>, RegistryError> {
        let devices = match changed {
            Changed::Nothing => return Ok(None),
            Changed::Header => Vec::new(),
            Changed::Device(d) => {
                let row = record.rollout.devices.get(d).map(encode_state).transpose()?;
                vec![(d.clone(), row)]
            }
            Changed::Whole => record
                .rollout
                .devices
                .iter()
                .map(|(d, e)| Ok((d.clone(), Some(encode_state(e)?))))
                .collect::<Result<_, RegistryError>>()?,
        };
        Ok(Some(Rows { header: encode_state(&header(record))?, devices, whole: *changed == Changed::Whole }))
    }
}

/// A record without its devices.
fn header(r: &ReleaseRecord) -> ReleaseRecord {
    ReleaseRecord {
        channel: r.channel.clone(),
        package: r.package.clone(),
        started_at: r.started_at,
        rollout: crate::rollouts::header(&r.rollout),
        capability: r.capability.clone(),
        router: r.router,
    }
}

impl Registry {
    /// Stores a release's record under `id`, replacing what was there (every device's row included).
    pub fn release_put(&self, id: &str, record: &ReleaseRecord) -> Result<(), RegistryError> {
        let cache = self.db.releases();
        let _writer = cache.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows = Rows::of(record, &Changed::Whole)?.expect("a whole record has rows");
        {
            let mut held = self.loaded(cache)?;
            held.as_mut().expect("loaded").insert(id.to_owned(), Arc::new(record.clone()));
        }
        self.write_rows(cache, id, rows)
    }

    /// Changes release `id` in place: `change` edits the record and says what it touched, which is then written
    /// back. `None` when there is no such release. The record is copied only if a reader still holds it.
    pub fn release_modify<R>(
        &self,
        id: &str,
        change: impl FnOnce(&mut ReleaseRecord) -> (R, Changed),
    ) -> Result<Option<R>, RegistryError> {
        let cache = self.db.releases();
        let _writer = cache.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (out, rows) = {
            let mut held = self.loaded(cache)?;
            let Some(record) = held.as_mut().expect("loaded").get_mut(id) else { return Ok(None) };
            let (out, changed) = change(Arc::make_mut(record));
            (out, Rows::of(record, &changed))
        };
        match rows {
            Ok(Some(rows)) => self.write_rows(cache, id, rows)?,
            Ok(None) => {}
            Err(e) => {
                *cache.records() = None;
                return Err(e);
            }
        }
        Ok(Some(out))
    }

    /// Every release record, by id, as held (shared: nothing is copied).
    pub fn releases_shared(&self) -> Result<Vec<(String, Arc<ReleaseRecord>)>, RegistryError> {
        let held = self.loaded(self.db.releases())?;
        Ok(held.as_ref().expect("loaded").iter().map(|(id, r)| (id.clone(), r.clone())).collect())
    }

    /// Every release record, by id, copied.
    pub fn releases(&self) -> Result<Vec<(String, ReleaseRecord)>, RegistryError> {
        Ok(self.releases_shared()?.into_iter().map(|(id, r)| (id, ReleaseRecord::clone(&r))).collect())
    }

    /// One release record, as held.
    pub fn release(&self, id: &str) -> Result<Option<Arc<ReleaseRecord>>, RegistryError> {
        Ok(self.loaded(self.db.releases())?.as_ref().expect("loaded").get(id).cloned())
    }

    /// The held records, loaded from the file first if need be.
    fn loaded<'c>(&self, cache: &'c Cache) -> Result<MutexGuard<'c, Held>, RegistryError> {
        let mut held = cache.records();
        if held.is_none() {
            let (records, legacy) = self.load_releases()?;
            for id in legacy {
                // Split a record an earlier hub wrote whole, so later writes of single rows keep its devices.
                let rows = Rows::of(&records[&id], &Changed::Whole)?.expect("a whole record has rows");
                self.commit_rows(&id, rows)?;
            }
            *held = Some(records.into_iter().map(|(id, r)| (id, Arc::new(r))).collect());
        }
        Ok(held)
    }

    /// Reads every release from the file; also says which were written whole by an earlier hub.
    fn load_releases(&self) -> Result<(BTreeMap<String, ReleaseRecord>, Vec<String>), RegistryError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let mut records = BTreeMap::new();
        let mut legacy = Vec::new();
        let Some(t) = read_table(&tx, RELEASES)? else { return Ok((records, legacy)) };
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let record: ReleaseRecord = decode_state(k.value(), v.value())?;
            if !record.rollout.devices.is_empty() {
                legacy.push(k.value().to_owned());
            }
            records.insert(k.value().to_owned(), record);
        }
        if let Some(t) = read_table(&tx, RELEASE_DEVICES)? {
            for row in t.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (id, device) = k.value();
                let entry: DeviceEntry = decode_state(&format!("{id}/{device}"), v.value())?;
                if let Some(r) = records.get_mut(id) {
                    r.rollout.devices.insert(device.to_owned(), entry);
                }
            }
        }
        Ok((records, legacy))
    }

    /// Commits `rows`; on failure forgets the held records (memory is ahead of the file), to be loaded again.
    fn write_rows(&self, cache: &Cache, id: &str, rows: Rows) -> Result<(), RegistryError> {
        self.commit_rows(id, rows).inspect_err(|_| *cache.records() = None)
    }

    fn commit_rows(&self, id: &str, rows: Rows) -> Result<(), RegistryError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(RELEASES).map_err(db_err)?;
            t.insert(id, rows.header.as_slice()).map_err(db_err)?;
            let mut d = tx.open_table(RELEASE_DEVICES).map_err(db_err)?;
            if rows.whole {
                d.retain_in((id, "")..(id, "\u{10ffff}"), |_, _| false).map_err(db_err)?;
            }
            for (device, row) in &rows.devices {
                match row {
                    Some(bytes) => d.insert((id, device.as_str()), bytes.as_slice()).map_err(db_err)?,
                    None => d.remove((id, device.as_str())).map_err(db_err)?,
                };
            }
        }
        tx.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::clock::ManualClock;
    use outpost_shared::rollout::{Outcome, Plan, Release};

    const NOW: u64 = 1_800_000_000;

    fn open(dir: &Path) -> Registry {
        Registry::open(dir, Arc::new(ManualClock::new(NOW))).unwrap()
    }

    fn record(devices: usize) -> ReleaseRecord {
        let plan = "name = \"two\"\n[[stage]]\nname = \"canary\"\ncohort_percent = 50\nmin_devices = 1\n\
                    soak_secs = 0\nsuccess_percent = 100\nerror_percent = 50\n[[stage]]\nname = \"all\"\n\
                    cohort_percent = 100\nmin_devices = 1\nsoak_secs = 0\nsuccess_percent = 100\nerror_percent = 50\n";
        let plan = Plan::from_toml(plan, Path::new("plan.toml")).unwrap();
        let risk = outpost_shared::manifest::RiskTier::Low;
        let package = Digest::of(b"package");
        let release = Release { id: "r1".into(), package, last_good: None, risk, signers: vec!["k".into()] };
        let keys = (0..devices).map(|i| hex::encode([i as u8; 32]));
        let (rollout, _) = outpost_shared::rollout::Rollout::start(release, plan, keys, NOW).unwrap();
        ReleaseRecord {
            channel: "stable".into(),
            package: "p@1.0.0".into(),
            started_at: NOW,
            rollout,
            capability: None,
            router: false,
        }
    }

    #[test]
    fn a_release_reads_back_after_a_restart_as_its_single_row_writes_left_it() {
        let dir = tempfile::tempdir().unwrap();
        Registry::init(dir.path()).unwrap();
        let reg = open(dir.path());
        reg.release_put("r1", &record(8)).unwrap();
        // The canary starts: half the devices are assigned (every row written again).
        reg.release_modify("r1", |r| {
            r.rollout.tick(NOW);
            ((), Changed::Whole)
        })
        .unwrap();
        let keys: Vec<String> = (0..8).map(|i| hex::encode([i as u8; 32])).collect();
        for (i, k) in keys.iter().enumerate() {
            let outcome = if i % 3 == 0 { Outcome::Failed { reason: "smoke test".into() } } else { Outcome::Installed };
            reg.release_modify("r1", |r| {
                r.rollout.report(k, outcome.clone(), NOW + 1 + i as u64);
                ((), Changed::Device(k.clone()))
            })
            .unwrap()
            .unwrap();
        }
        reg.release_modify("r1", |r| {
            r.rollout.leave(&keys[7], NOW + 20);
            ((), Changed::Device(keys[7].clone()))
        })
        .unwrap();
        let in_memory = reg.releases().unwrap();
        drop(reg);
        let again = open(dir.path()).releases().unwrap();
        assert_eq!(again, in_memory, "what a restart reads is what the hub held");
        assert_eq!(again[0].1.rollout.devices.len(), 7, "the device that left stays gone");
    }

    #[test]
    fn a_release_an_earlier_hub_wrote_whole_keeps_every_device_through_single_row_writes() {
        let dir = tempfile::tempdir().unwrap();
        Registry::init(dir.path()).unwrap();
        let whole = record(4);
        {
            // As an earlier hub wrote it: the whole record, devices inside, in the releases table.
            let db = redb::Database::open(dir.path().join(INDEX_FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(RELEASES).unwrap().insert("r1", encode_state(&whole).unwrap().as_slice()).unwrap();
            tx.commit().unwrap();
        }
        let reg = open(dir.path());
        let key = whole.rollout.devices.keys().next().unwrap().clone();
        reg.release_modify("r1", |r| {
            r.rollout.report(&key, Outcome::Installed, NOW + 5);
            ((), Changed::Device(key.clone()))
        })
        .unwrap();
        drop(reg);
        let again = open(dir.path()).releases().unwrap();
        assert_eq!(again[0].1.rollout.devices.len(), 4, "no device lost: {:?}", again[0].1.rollout.devices.keys());
        assert_eq!(again[0].1.rollout.last_known_time, NOW + 5);
    }
}
