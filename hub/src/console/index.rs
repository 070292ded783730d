//! The console's in-memory device index: each device's few filterable fields and the per-site and per-package
//! counts, built once from every record and then kept current by re-reading only the devices written since.
//!
//! Invariants: built at the console's start and then patched, never rebuilt while the store's change log
//! ([`crate::store::changes`]) still holds every write since (it is rebuilt after one it lost); a patch removes a
//! device's old contribution to every count before adding its new one, so the counts equal a fresh build's; one
//! catch-up runs at a time, and pages read the index between catch-ups, never during one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use outpost_shared::Digest;
use outpost_shared::clock::UnixSeconds;

use super::http::{PageError, hub_err};
use super::render::short;
use crate::registry::{DeviceRecord, DeviceStatus};
use crate::service::Hub;
use crate::store::changes::Since;

/// One device's filterable fields, and what it adds to the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Public key, hex.
    pub key: String,
    /// Its site.
    pub site: Option<String>,
    /// Its channel.
    pub channel: String,
    /// Enrolled with a TPM.
    pub hardware: bool,
    /// Revoked.
    pub revoked: bool,
    /// Its site's node.
    pub site_node: bool,
    /// The package it serves.
    pub active: Option<Digest>,
    /// When it last reported.
    pub last_report: Option<u64>,
    /// Its last appraisal's status.
    pub attestation: Option<String>,
    /// The policy it last reported enforcing.
    policy: Option<Digest>,
    /// The rules of the refusals it last reported.
    pub refusals: Vec<String>,
}

impl Row {
    fn of(d: DeviceRecord) -> Row {
        Row {
            hardware: d.tpm.is_some(),
            revoked: d.status == DeviceStatus::Revoked,
            site_node: d.site_node,
            active: d.active,
            last_report: d.last_report,
            attestation: d.attestation.map(|a| a.status),
            policy: d.policy,
            refusals: d.refusals.into_iter().map(|r| r.rule).collect(),
            site: d.site,
            channel: d.channel,
            key: d.key,
        }
    }
}

/// What the Sites page shows of one site, gathered with the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteSummary {
    /// Keys of its site nodes.
    pub nodes: BTreeSet<String>,
    /// Policy digests its devices last reported enforcing, with how many devices each.
    pub policies: BTreeMap<Digest, u64>,
    /// Its devices.
    pub devices: u64,
    /// Of them, revoked.
    pub revoked: u64,
    /// Packages refused now, per rule (devices' last reports).
    pub refusals: BTreeMap<String, u64>,
}

/// Every device's row, sorted by key, and the values the filters offer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// Rows sorted by key.
    pub rows: Vec<Row>,
    /// Channels with how many devices each.
    pub channels: BTreeMap<String, u64>,
    /// Per site.
    pub sites: BTreeMap<String, SiteSummary>,
    /// Packages served, with their label and how many devices serve each.
    pub packages: BTreeMap<Digest, (String, u64)>,
}

/// Adds `n` (±1) to a count, dropping the entry at zero.
fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, n: i64) {
    let e = map.entry(key);
    match e {
        std::collections::btree_map::Entry::Occupied(mut o) => {
            let v = o.get().saturating_add_signed(n);
            if v == 0 {
                o.remove();
            } else {
                *o.get_mut() = v;
            }
        }
        std::collections::btree_map::Entry::Vacant(v) if n > 0 => {
            v.insert(n.unsigned_abs());
        }
        std::collections::btree_map::Entry::Vacant(_) => {}
    }
}

impl Index {
    /// Adds (`n` = 1) or removes (`n` = -1) a row's part of the counts; `label` names a package seen first.
    fn count(&mut self, r: &Row, n: i64, label: &dyn Fn(&Digest) -> String) {
        bump(&mut self.channels, r.channel.clone(), n);
        if let Some(site) = &r.site {
            let s = self.sites.entry(site.clone()).or_default();
            s.devices = s.devices.saturating_add_signed(n);
            s.revoked = s.revoked.saturating_add_signed(if r.revoked { n } else { 0 });
            if r.site_node {
                if n > 0 {
                    s.nodes.insert(r.key.clone())
                } else {
                    s.nodes.remove(&r.key)
                };
            }
            if let Some(p) = r.policy {
                bump(&mut s.policies, p, n);
            }
            for rule in &r.refusals {
                bump(&mut s.refusals, rule.clone(), n);
            }
            if s.devices == 0 {
                self.sites.remove(site);
            }
        }
        if let Some(a) = r.active {
            let e = self.packages.entry(a).or_insert_with(|| (label(&a), 0));
            e.1 = e.1.saturating_add_signed(n);
            if e.1 == 0 {
                self.packages.remove(&a);
            }
        }
    }

    /// Puts `record` in place of its key's row (or adds it).
    fn put(&mut self, record: DeviceRecord, label: &dyn Fn(&Digest) -> String) {
        let row = Row::of(record);
        match self.rows.binary_search_by(|r| r.key.cmp(&row.key)) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.rows[i], row.clone());
                self.count(&old, -1, label);
            }
            Err(i) => self.rows.insert(i, row.clone()),
        }
        self.count(&row, 1, label);
    }

    /// The index of `records`.
    pub fn of(records: Vec<DeviceRecord>, label: &dyn Fn(&Digest) -> String) -> Index {
        let mut ix = Index::default();
        for d in records {
            let row = Row::of(d);
            ix.count(&row, 1, label);
            ix.rows.push(row);
        }
        ix.rows.sort_by(|a, b| a.key.cmp(&b.key));
        ix
    }
}

/// A package's label: `name@version`, or its short digest when not registered.
fn label(hub: &Hub) -> impl Fn(&Digest) -> String + '_ {
    move |d: &Digest| match hub.store().ok().and_then(|s| s.packages().record(d).ok().flatten()) {
        Some(r) => format!("{}@{}", r.name, r.version),
        None => short(&d.to_hex()).to_owned(),
    }
}

/// The index as of a moment.
#[derive(Debug)]
pub struct Current {
    /// The index.
    pub index: Index,
    /// When it was last brought up to date (wall clock, shown on pages).
    pub wall: UnixSeconds,
    /// The change log's sequence number it is current up to.
    seq: u64,
}

/// The index kept current (see the module's note).
#[derive(Debug, Default)]
pub struct LiveIndex {
    current: RwLock<Option<Current>>,
    /// Held while catching up, so one catch-up runs at a time.
    catching_up: Mutex<()>,
}

impl LiveIndex {
    /// Brings the index up to date: builds it if there is none (or the change log lost writes it needed), else
    /// re-reads the devices written since. Returns how many devices it read. Call from the blocking pool.
    pub fn catch_up(&self, hub: &Hub) -> Result<usize, PageError> {
        let _one = self.catching_up.lock().unwrap_or_else(|p| p.into_inner());
        let store = hub.store().map_err(hub_err)?;
        let devices = store.devices();
        let seq = self.current.read().unwrap_or_else(|p| p.into_inner()).as_ref().map(|c| c.seq);
        let changed = seq.map(|s| devices.devices_changed_since(s));
        let (keys, next) = match changed {
            Some(Since::Keys { keys, next }) => (keys, next),
            None | Some(Since::Lost { .. }) => {
                let seq = devices.device_change_head();
                let records = devices.devices().map_err(hub_err)?;
                let n = records.len();
                let index = Index::of(records, &label(hub));
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    Some(Current { index, wall: hub.clock().wall(), seq });
                return Ok(n);
            }
        };
        // Read before taking the write lock, so pages wait only for the patch.
        let mut records = Vec::with_capacity(keys.len());
        for k in &keys {
            if let Some(r) = devices.device(k).map_err(hub_err)? {
                records.push(r);
            }
        }
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_mut() {
            let label = label(hub);
            for r in records {
                c.index.put(r, &label);
            }
            c.seq = next;
            c.wall = hub.clock().wall();
        }
        Ok(keys.len())
    }

    /// The index, brought up to date first. Call from the blocking pool.
    pub fn read(&self, hub: &Hub) -> Result<RwLockReadGuard<'_, Option<Current>>, PageError> {
        self.catch_up(hub)?;
        Ok(self.current.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The current index out of [`LiveIndex::read`]'s guard.
pub fn current<'a>(guard: &'a RwLockReadGuard<'_, Option<Current>>) -> Result<&'a Current, PageError> {
    guard.as_ref().ok_or_else(|| PageError::Hub("the device index is not built yet".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::update::Refusal;

    fn record(i: u8, site: &str, active: Option<Digest>, rules: &[&str]) -> DeviceRecord {
        let refusal = |rule: &&str| Refusal {
            digest: Digest::of(b"refused"),
            package: "p@1".into(),
            rule: (*rule).into(),
            reason: "because".into(),
            until: None,
            policy: Digest::of(b"policy"),
            at: 1,
            by_site: false,
        };
        DeviceRecord {
            key: hex::encode([i; 32]),
            channel: "stable".into(),
            status: DeviceStatus::Approved,
            approved_at: 1,
            assignment_version: 0,
            active,
            rolled_back: vec![],
            last_report: None,
            secondaries: vec![],
            site: Some(site.into()),
            site_node: false,
            policy: Some(Digest::of(b"policy")),
            policy_site: None,
            refusals: rules.iter().map(refusal).collect(),
            hardware: None,
            enrolled_by: None,
            tpm: None,
            attestation: None,
        }
    }

    #[test]
    fn a_patched_index_counts_as_a_fresh_build_of_the_same_records() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let label = |d: &Digest| d.short().to_string();
        let before = vec![record(1, "s1", Some(a), &["r1"]), record(2, "s1", Some(a), &[]), record(3, "s2", None, &[])];
        let mut ix = Index::of(before, &label);
        let mut moved = record(1, "s2", Some(b), &["r2"]);
        moved.status = DeviceStatus::Revoked;
        moved.site_node = true;
        ix.put(moved.clone(), &label);
        ix.put(record(4, "s3", Some(a), &["r1"]), &label);
        let after =
            vec![moved, record(2, "s1", Some(a), &[]), record(3, "s2", None, &[]), record(4, "s3", Some(a), &["r1"])];
        assert_eq!(ix, Index::of(after, &label));
        assert!(!ix.sites["s1"].refusals.contains_key("r1"), "the moved device's old refusal is no longer counted");
    }
}
