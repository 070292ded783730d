//! One suite for the storage traits, run against each backend: the embedded redb index and PostgreSQL (a real
//! server the test support starts, `support::postgres`). Each suite function takes the backend's trait objects;
//! [`both!`] makes a `redb` and a `postgres` test of it. The schema's own tests (migrations) follow.

mod support;

use std::sync::{Arc, Barrier};

use outpost_hub::audit::{SharedAuditLog, default_path};
use outpost_hub::blobs::BlobStore;
use outpost_hub::registry::releases::Changed;
use outpost_hub::registry::{AttestationRecord, DeviceStatus, EnrolError, Registry, RegistryError, TpmRecord};
use outpost_hub::rollouts::ReleaseRecord;
use outpost_hub::storage::{
    AuditEntries, AuditStore, CapabilityStore, CycleStore, DeviceStore, EvaluationStore, PackageStore, ReleaseStore,
    TelemetryEvents,
};
use outpost_hub::store::changes::Since;
use outpost_hub::store::postgres::{self, PackagePut, PgError, PgLimits, PgStore};
use outpost_hub::telemetry::TelemetryStore;
use outpost_shared::Digest;
use outpost_shared::audit::Anchor;
use outpost_shared::clock::ManualClock;
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::StateReport;

use support::TestHub;

const START: u64 = 1_795_881_600;
/// The largest suite file the PostgreSQL store's `suite add` takes (the default `[limits] max_model_bytes`).
const SUITE_FILE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// One backend, with a second writer on the same state: another `PgStore` on the same database (a second hub
/// replica), or the same redb index again (one process owns it; its writers are threads).
struct Backend {
    clock: Arc<ManualClock>,
    first: Box<dyn Stores>,
    second: Option<Box<dyn Stores>>,
    /// Where packages are made (`package add` writes blobs, which stay on the data directory's blob store): the
    /// backend's own data directory for redb.
    hub: TestHub,
    source: Registry,
    /// The PostgreSQL database, for a test that opens another store on it.
    url: Option<String>,
    /// Telemetry: two handles on one store (two replicas on PostgreSQL; redb's `telemetry.redb` opened twice).
    telemetry: [Box<dyn TelemetryEvents>; 2],
    /// The audit log: two writers on one log (two replicas; the data directory's file opened twice).
    audit_log: [Box<dyn AuditEntries>; 2],
}

/// The traits under test, as one backend's store offers them.
trait Stores: Send + Sync {
    fn package_store(&self) -> &dyn PackageStore;
    fn device_store(&self) -> &dyn DeviceStore;
    fn release_store(&self) -> &dyn ReleaseStore;
    fn audit_store(&self) -> &dyn AuditStore;
    fn capability_store(&self) -> &dyn CapabilityStore;
    fn evaluation_store(&self) -> &dyn EvaluationStore;
    fn cycle_store(&self) -> &dyn CycleStore;
    /// Makes package `d`, just added to `source`, known to this store's index.
    fn register(&self, source: &Registry, d: &Digest);
}

macro_rules! stores {
    ($t:ty, $register:expr) => {
        impl Stores for $t {
            fn package_store(&self) -> &dyn PackageStore {
                self
            }
            fn device_store(&self) -> &dyn DeviceStore {
                self
            }
            fn release_store(&self) -> &dyn ReleaseStore {
                self
            }
            fn audit_store(&self) -> &dyn AuditStore {
                self
            }
            fn capability_store(&self) -> &dyn CapabilityStore {
                self
            }
            fn evaluation_store(&self) -> &dyn EvaluationStore {
                self
            }
            fn cycle_store(&self) -> &dyn CycleStore {
                self
            }
            fn register(&self, source: &Registry, d: &Digest) {
                let register: fn(&$t, &Registry, &Digest) = $register;
                register(self, source, d)
            }
        }
    };
}

// redb: `source` is this very index. PostgreSQL: the index half of `package add`, after the blobs.
stores!(Registry, |_, _, _| {});
stores!(PgStore, |pg, source, d| {
    let record = source.record(d).unwrap().unwrap();
    let (manifest, _) = source.manifest(d).unwrap();
    assert_eq!(pg.package_put(&record, &manifest).unwrap(), PackagePut::Added);
});

impl Backend {
    fn redb() -> Backend {
        let hub = TestHub::new();
        let clock = Arc::new(ManualClock::new(START));
        let reg = Registry::open(&hub.dir(), clock.clone()).unwrap();
        // A second handle on the same index (the process shares one database handle).
        let source = Registry::open(&hub.dir(), clock.clone()).unwrap();
        let telemetry =
            || -> Box<dyn TelemetryEvents> { Box::new(TelemetryStore::open(&hub.dir(), clock.clone()).unwrap()) };
        let telemetry = [telemetry(), telemetry()];
        let log = || -> Box<dyn AuditEntries> { Box::new(SharedAuditLog::open(&default_path(&hub.dir())).unwrap()) };
        let audit_log = [log(), log()];
        Backend { clock, first: Box::new(reg), second: None, hub, source, url: None, telemetry, audit_log }
    }

    fn postgres() -> Backend {
        let (_, url) = support::postgres::database();
        postgres::migrate(&url, &PgLimits::default()).unwrap();
        let clock = Arc::new(ManualClock::new(START));
        let hub = TestHub::new();
        // `suite add` puts a suite's files in the data directory's blobs, as the redb backend's does.
        let blobs = BlobStore::new(hub.dir().join("blobs"));
        let pg = || {
            let store = PgStore::open(&url, clock.clone(), &PgLimits::default()).unwrap();
            store.with_suite_blobs(blobs.clone(), SUITE_FILE_BYTES)
        };
        let source = Registry::open(&hub.dir(), clock.clone()).unwrap();
        let telemetry: [Box<dyn TelemetryEvents>; 2] = [Box::new(pg()), Box::new(pg())];
        let audit_log: [Box<dyn AuditEntries>; 2] = [Box::new(pg()), Box::new(pg())];
        Backend {
            clock: clock.clone(),
            first: Box::new(pg()),
            second: Some(Box::new(pg())),
            hub,
            source,
            url: Some(url),
            telemetry,
            audit_log,
        }
    }

    /// Adds a generated package (`scale` makes it distinct) and registers it with the store under test.
    fn add_package(&self, name: &str, version: &str, scale: f32) -> Digest {
        let (model, manifest) = self.hub.write_affine(&AffineManifest::new(name, version, scale, 1.0));
        let d = self.source.add(&model, &manifest).unwrap().digest;
        self.first.register(&self.source, &d);
        d
    }

    fn one(&self) -> &dyn Stores {
        &*self.first
    }

    /// The second writer (another replica where there is one).
    fn other(&self) -> &dyn Stores {
        self.second.as_deref().unwrap_or(&*self.first)
    }
}

/// A `redb` and a `postgres` test of each suite function.
macro_rules! both {
    ($($suite:ident),* $(,)?) => {$(
        mod $suite {
            #[test]
            fn redb() {
                super::$suite(&super::Backend::redb());
            }
            #[test]
            fn postgres() {
                super::$suite(&super::Backend::postgres());
            }
        }
    )*};
}

both!(
    package_index_resolves_by_digest_prefix_name_and_alias,
    alias_moves_atomically_with_its_history,
    alias_moved_by_two_replicas_at_once_keeps_one_chain,
    device_records_roundtrip_through_every_edit,
    enrolment_token_is_spent_once_and_refuses_expired_unknown_and_revoked,
    enrolment_token_raced_by_two_replicas_is_spent_once,
    assignment_versions_bumped_by_two_replicas_at_once_are_each_new,
    release_record_roundtrips_and_is_replaced_whole,
    release_changed_by_two_replicas_at_once_keeps_every_change,
    audit_anchor_only_moves_forward_and_a_fork_is_refused,
    audit_anchor_raced_by_two_replicas_at_one_place_keeps_one,
);

#[path = "store_suite/audit.rs"]
mod audit;
#[path = "store_suite/records.rs"]
mod records;
#[path = "store_suite/telemetry.rs"]
mod telemetry;

fn package_index_resolves_by_digest_prefix_name_and_alias(b: &Backend) {
    let s = b.one().package_store();
    let a2 = b.add_package("affine", "1.10.0", 3.0);
    let a1 = b.add_package("affine", "1.2.0", 2.0);
    let other = b.add_package("other", "0.1.0", 4.0);
    let listed: Vec<String> = s.list().unwrap().iter().map(|r| format!("{}@{}", r.name, r.version)).collect();
    assert_eq!(listed, ["affine@1.2.0", "affine@1.10.0", "other@0.1.0"], "by name, then semver");
    let record = s.record(&a1).unwrap().unwrap();
    assert_eq!((record.digest, record.name.as_str(), record.version.as_str()), (a1, "affine", "1.2.0"));
    assert_eq!(s.record(&Digest::of(b"nothing")).unwrap(), None);
    let (cbor, manifest) = s.manifest(&a2).unwrap();
    assert_eq!((manifest.name.as_str(), manifest.version.to_string()), ("affine", "1.10.0".to_owned()));
    assert_eq!(cbor, b.other().package_store().manifest(&a2).unwrap().0, "the manifest's bytes as stored");
    assert!(matches!(s.manifest(&Digest::of(b"nothing")), Err(RegistryError::UnknownPackage(_))));

    assert_eq!(s.resolve("affine@1.2.0").unwrap(), a1);
    assert_eq!(s.resolve(&a2.to_hex()[..12]).unwrap(), a2);
    assert_eq!(s.resolve(&format!("sha256:{}", other.to_hex().to_uppercase())).unwrap(), other);
    assert!(matches!(s.resolve("affine@9.9.9"), Err(RegistryError::UnknownPackage(_))));
    assert!(matches!(s.resolve(&a1.to_hex()[..7]), Err(RegistryError::UnknownPackage(_))), "too short a prefix");
    s.alias_set("stable", &a1).unwrap();
    assert_eq!(b.other().package_store().resolve("stable").unwrap(), a1);
}

fn alias_moves_atomically_with_its_history(b: &Backend) {
    let s = b.one().package_store();
    let (a1, a2) = (b.add_package("affine", "1.0.0", 2.0), b.add_package("affine", "1.1.0", 3.0));
    let first = s.alias_set("stable", &a1).unwrap();
    assert_eq!((first.seq, first.digest, first.previous, first.at), (1, a1, None, START));
    b.clock.set_wall(START + 5);
    let second = s.alias_set("stable", &a2).unwrap();
    assert_eq!((second.seq, second.digest, second.previous, second.at), (2, a2, Some(a1), START + 5));
    s.alias_set("canary", &a2).unwrap();
    assert_eq!(s.aliases().unwrap(), vec![("canary".to_owned(), a2), ("stable".to_owned(), a2)]);
    assert_eq!(s.alias_history("stable").unwrap(), vec![first, second.clone()]);
    assert!(matches!(s.alias_set("Stable!", &a1), Err(RegistryError::BadAliasName(_))));
    assert!(matches!(s.alias_set("deadbeef", &a1), Err(RegistryError::BadAliasName(_))), "it would shadow prefixes");
    assert!(matches!(s.alias_set("stable", &Digest::of(b"nothing")), Err(RegistryError::UnknownPackage(_))));
    assert_eq!(s.alias_history("stable").unwrap().last(), Some(&second), "a refused move records nothing");
    assert!(matches!(s.alias_history("nope"), Err(RegistryError::UnknownAlias(_))));
}

fn alias_moved_by_two_replicas_at_once_keeps_one_chain(b: &Backend) {
    const ROUNDS: usize = 40;
    let (a1, a2) = (b.add_package("affine", "1.0.0", 2.0), b.add_package("affine", "1.1.0", 3.0));
    for _ in 0..ROUNDS {
        let barrier = Barrier::new(2);
        std::thread::scope(|scope| {
            let x = scope.spawn(|| {
                barrier.wait();
                b.one().package_store().alias_set("canary", &a1).unwrap()
            });
            let y = scope.spawn(|| {
                barrier.wait();
                b.other().package_store().alias_set("canary", &a2).unwrap()
            });
            (x.join().unwrap(), y.join().unwrap())
        });
    }
    let history = b.one().package_store().alias_history("canary").unwrap();
    assert_eq!(history.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=2 * ROUNDS as u64).collect::<Vec<_>>());
    assert_eq!(history[0].previous, None);
    for pair in history.windows(2) {
        assert_eq!(pair[1].previous, Some(pair[0].digest), "each move names the one before it: {history:?}");
    }
    let now = b.other().package_store().resolve("canary").unwrap();
    assert_eq!(Some(now), history.last().map(|e| e.digest));
}

fn key(n: u8) -> String {
    hex::encode([n; 32])
}

fn device_records_roundtrip_through_every_edit(b: &Backend) {
    let s = b.one().device_store();
    let head = s.device_change_head();
    assert_eq!(s.device(&key(1)).unwrap(), None);
    let approved = s.device_approve(&key(1).to_uppercase(), "stable").unwrap();
    assert_eq!((approved.key.as_str(), approved.channel.as_str()), (key(1).as_str(), "stable"));
    assert_eq!(
        (approved.status, approved.approved_at, approved.enrolled_by.as_deref()),
        (DeviceStatus::Approved, START, Some("operator"))
    );
    assert_eq!(s.device(&key(1)).unwrap().as_ref(), Some(&approved));
    assert!(matches!(s.device_approve("not-a-key", "stable"), Err(RegistryError::BadDeviceKey(_))));
    assert!(matches!(s.device_revoke(&key(9)), Err(RegistryError::UnknownDevice(_))));

    s.device_approve(&key(2), "beta").unwrap();
    let site = s.device_set_site(&key(2), Some("plant-7"), true).unwrap();
    assert_eq!((site.site.as_deref(), site.site_node), (Some("plant-7"), true));
    assert!(matches!(s.device_set_site(&key(2), None, true), Err(RegistryError::BadSite(_))));
    assert!(matches!(s.device_set_site(&key(2), Some("bad site!"), false), Err(RegistryError::BadSite(_))));
    s.device_set_site(&key(1), Some("plant-7"), false).unwrap();
    assert!(s.site_node_serves(&key(2), &key(1)).unwrap());
    assert!(!s.site_node_serves(&key(1), &key(2)).unwrap(), "a device that is not a site node serves nobody");

    let tpm = TpmRecord { ak: "04ab".into(), pcrs: 0b1001, values: vec![Digest::of(b"pcr0"), Digest::of(b"pcr3")] };
    assert_eq!(s.device_set_tpm(&key(1), Some(tpm.clone())).unwrap().tpm, Some(tpm));
    let outcome = AttestationRecord {
        at: START,
        status: "affirming".into(),
        tier: Some("hardware".into()),
        expires: Some(START + 3600),
        software: Some("outpost-agent 0.1.0".into()),
        bootcount: Some(7),
        model: None,
        policy: None,
        detail: None,
    };
    assert_eq!(s.device_attested(&key(1), outcome.clone()).unwrap().attestation, Some(outcome));

    let (a, bad) = (Digest::of(b"a"), Digest::of(b"bad"));
    let report = StateReport {
        active: Some(a),
        last_good: Some(a),
        rolled_back: vec![bad],
        phase: "idle".into(),
        message: String::new(),
        refusals: Vec::new(),
        policy: None,
        site: Some("plant-7".into()),
        shadow: None,
    };
    b.clock.set_wall(START + 60);
    s.device_reported(&key(1), &report).unwrap();
    let r = s.device_reported(&key(1), &report).unwrap();
    assert_eq!(
        (r.active, r.rolled_back.clone(), r.last_report),
        (Some(a), vec![bad], Some(START + 60)),
        "rolled back once"
    );
    assert_eq!(s.device_retry(&key(1), &bad).unwrap().rolled_back, Vec::<Digest>::new());

    s.device_secondary_add(&key(1), "mcu-1", "stm32-a").unwrap();
    let r = s.device_secondary_add(&key(1), "mcu-1", "stm32-b").unwrap();
    assert_eq!(r.secondaries.len(), 1);
    assert_eq!(r.secondaries[0].hardware_id, "stm32-b");
    assert!(matches!(s.device_secondary_add(&key(1), "mcu 1", "x"), Err(RegistryError::BadSecondaryId { .. })));
    assert!(s.device_secondary_remove(&key(1), "mcu-1").unwrap().secondaries.is_empty());

    let revoked = s.device_revoke(&key(1)).unwrap();
    assert_eq!(revoked.status, DeviceStatus::Revoked);
    assert!(!s.site_node_serves(&key(2), &key(1)).unwrap(), "a revoked device is served by no site node");
    let again = s.device_approve(&key(1), "stable").unwrap();
    assert_eq!(
        (again.status, again.site.as_deref(), again.attestation.is_some()),
        (DeviceStatus::Approved, Some("plant-7"), true),
        "re-approval keeps what was known"
    );

    let all = s.devices().unwrap();
    assert_eq!(all.iter().map(|d| d.key.clone()).collect::<Vec<_>>(), vec![key(1), key(2)]);
    match s.devices_changed_since(head) {
        Since::Keys { keys, .. } => assert_eq!(keys.into_iter().collect::<Vec<_>>(), vec![key(1), key(2)]),
        lost => panic!("{lost:?}"),
    }
}

fn enrolment_token_is_spent_once_and_refuses_expired_unknown_and_revoked(b: &Backend) {
    let s = b.one().device_store();
    let mut rng = SeededRng::new(7);
    assert!(!s.tokens_open().unwrap());
    let token = s.token_create("stable", Some("plant-7"), 600, &mut rng).unwrap();
    assert!(token.starts_with(outpost_hub::registry::TOKEN_PREFIX));
    assert!(s.tokens_open().unwrap());
    let d = s.enroll(&key(1), &token, "rpi4", None).unwrap().unwrap();
    assert_eq!(
        (d.channel.as_str(), d.site.as_deref(), d.hardware.as_deref()),
        ("stable", Some("plant-7"), Some("rpi4"))
    );
    assert_eq!(d.enrolled_by.as_deref(), Some("token"));
    assert!(!s.tokens_open().unwrap(), "the one token is spent");
    assert_eq!(s.enroll(&key(2), &token, "rpi4", None).unwrap(), Err(EnrolError::TokenUsed));
    assert_eq!(s.device(&key(2)).unwrap(), None);
    assert_eq!(s.enroll(&key(1), &token, "rpi4", None).unwrap(), Ok(d), "a retried enrolment is answered, not refused");
    assert_eq!(
        s.enroll(&key(3), "ot1-00000000000000000000000000000000", "", None).unwrap(),
        Err(EnrolError::UnknownToken)
    );

    let short = s.token_create("stable", None, 10, &mut rng).unwrap();
    b.clock.set_wall(START + 10);
    assert!(!s.tokens_open().unwrap());
    assert_eq!(s.enroll(&key(3), &short, "", None).unwrap(), Err(EnrolError::TokenExpired));

    let fresh = s.token_create("stable", None, 600, &mut rng).unwrap();
    s.device_revoke(&key(1)).unwrap();
    assert_eq!(
        s.enroll(&key(1), &fresh, "", None).unwrap(),
        Err(EnrolError::Revoked),
        "a token does not lift a revocation"
    );
    assert!(s.tokens_open().unwrap(), "a refused enrolment leaves the token unspent");
    assert!(matches!(s.token_create("stable", Some("no such site!"), 600, &mut rng), Err(RegistryError::BadSite(_))));
}

fn enrolment_token_raced_by_two_replicas_is_spent_once(b: &Backend) {
    const TOKENS: u8 = 12;
    let mut rng = SeededRng::new(11);
    let tokens: Vec<String> =
        (0..TOKENS).map(|_| b.one().device_store().token_create("stable", None, 600, &mut rng).unwrap()).collect();
    for (i, token) in tokens.iter().enumerate() {
        let (ka, kb) = (key(2 * i as u8 + 1), key(2 * i as u8 + 2));
        let barrier = Barrier::new(2);
        let (ra, rb) = std::thread::scope(|scope| {
            let a = scope.spawn(|| {
                barrier.wait();
                b.one().device_store().enroll(&ka, token, "", None).unwrap()
            });
            let c = scope.spawn(|| {
                barrier.wait();
                b.other().device_store().enroll(&kb, token, "", None).unwrap()
            });
            (a.join().unwrap(), c.join().unwrap())
        });
        let (winner, loser) = match (&ra, &rb) {
            (Ok(_), Err(EnrolError::TokenUsed)) => (&ka, &kb),
            (Err(EnrolError::TokenUsed), Ok(_)) => (&kb, &ka),
            other => panic!("token {i}: exactly one enrolment must succeed, got {other:?}"),
        };
        assert!(b.one().device_store().device(winner).unwrap().is_some());
        assert_eq!(b.other().device_store().device(loser).unwrap(), None, "the loser was not enrolled");
    }
    assert_eq!(b.one().device_store().devices().unwrap().len(), usize::from(TOKENS));
    assert!(!b.other().device_store().tokens_open().unwrap());
}

fn assignment_versions_bumped_by_two_replicas_at_once_are_each_new(b: &Backend) {
    const BUMPS: u64 = 25;
    b.one().device_store().device_approve(&key(1), "stable").unwrap();
    let barrier = Barrier::new(2);
    let bump = |s: &dyn Stores| -> Vec<u64> {
        barrier.wait();
        (0..BUMPS).map(|_| s.device_store().device_next_assignment(&key(1)).unwrap().assignment_version).collect()
    };
    let (x, y) = std::thread::scope(|scope| {
        let x = scope.spawn(|| bump(b.one()));
        let y = scope.spawn(|| bump(b.other()));
        (x.join().unwrap(), y.join().unwrap())
    });
    for seen in [&x, &y] {
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "one writer's versions only rise: {seen:?}");
    }
    let mut all: Vec<u64> = x.iter().chain(&y).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=2 * BUMPS).collect::<Vec<_>>(), "every bump got its own version, none was lost");
    let device = b.other().device_store().device(&key(1)).unwrap().unwrap();
    assert_eq!(device.assignment_version, 2 * BUMPS);
    assert!(matches!(b.one().device_store().device_next_assignment(&key(9)), Err(RegistryError::UnknownDevice(_))));
}

fn release(id: &str, devices: &[String]) -> ReleaseRecord {
    let plan = outpost_shared::rollout::Plan::from_toml(
        include_str!("../../fixtures/plans/canary.toml"),
        std::path::Path::new("canary.toml"),
    )
    .unwrap();
    let release = outpost_shared::rollout::Release {
        id: id.into(),
        package: Digest::of(id.as_bytes()),
        last_good: Some(Digest::of(b"last good")),
        risk: outpost_shared::manifest::RiskTier::Low,
        signers: vec!["publisher".into()],
    };
    let (rollout, _) = outpost_shared::rollout::Rollout::start(release, plan, devices.iter().cloned(), START).unwrap();
    ReleaseRecord {
        channel: "stable".into(),
        package: format!("{id}@1.0.0"),
        started_at: START,
        rollout,
        capability: None,
        router: false,
    }
}

fn release_record_roundtrips_and_is_replaced_whole(b: &Backend) {
    let (one, other) = (b.one().release_store(), b.other().release_store());
    assert!(one.releases().unwrap().is_empty());
    let devices: Vec<String> = (1..=40).map(key).collect();
    let (r2, r1) = (release("r2", &devices), release("r1", &devices[..3]));
    one.release_put("r2", &r2).unwrap();
    one.release_put("r1", &r1).unwrap();
    assert_eq!(other.releases().unwrap(), vec![("r1".to_owned(), r1.clone()), ("r2".to_owned(), r2.clone())]);
    let mut paused = r2.clone();
    paused.rollout.paused = true;
    paused.rollout.devices.clear();
    other.release_put("r2", &paused).unwrap();
    assert_eq!(
        one.releases().unwrap(),
        vec![("r1".to_owned(), r1), ("r2".to_owned(), paused)],
        "a write by another writer is read, not a stale copy"
    );
}

fn release_changed_by_two_replicas_at_once_keeps_every_change(b: &Backend) {
    const EACH: u64 = 20;
    b.one().release_store().release_put("r1", &release("r1", &[key(1)])).unwrap();
    let stores = [b.one().release_store(), b.other().release_store()];
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        for s in stores {
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for _ in 0..EACH {
                    let found = s
                        .release_change("r1", &mut |r| {
                            r.started_at += 1;
                            Changed::Whole
                        })
                        .unwrap();
                    assert!(found);
                }
            });
        }
    });
    let held = b.other().release_store().release("r1").unwrap().unwrap();
    assert_eq!(held.started_at, START + 2 * EACH, "no change lost between the two writers");
    let read = b.one().release_store().releases_shared().unwrap();
    assert_eq!(read[0].1.started_at, START + 2 * EACH);
    // Nothing changed: nothing written; an unknown release: said so.
    assert!(b.one().release_store().release_change("r1", &mut |_| Changed::Nothing).unwrap());
    assert!(!b.one().release_store().release_change("nope", &mut |_| Changed::Whole).unwrap());
}

fn anchor(seq: u64, what: &[u8]) -> Anchor {
    Anchor { seq, hash: Digest::of(what) }
}

fn audit_anchor_only_moves_forward_and_a_fork_is_refused(b: &Backend) {
    let (one, other) = (b.one().audit_store(), b.other().audit_store());
    assert_eq!(one.audit_anchor().unwrap(), None);
    one.audit_anchor_put(&anchor(1, b"e1")).unwrap();
    one.audit_anchor_put(&anchor(1, b"e1")).unwrap();
    assert_eq!(other.audit_anchor().unwrap(), Some(anchor(1, b"e1")));
    other.audit_anchor_put(&anchor(3, b"e3")).unwrap();
    match one.audit_anchor_put(&anchor(3, b"fork")) {
        Err(RegistryError::AuditAnchorBehind { stored, offered }) => {
            assert_eq!((stored, offered), (anchor(3, b"e3"), anchor(3, b"fork")));
        }
        other => panic!("a second entry at the head's place must be refused: {other:?}"),
    }
    assert!(matches!(one.audit_anchor_put(&anchor(2, b"e2")), Err(RegistryError::AuditAnchorBehind { .. })));
    assert_eq!(one.audit_anchor().unwrap(), Some(anchor(3, b"e3")), "refusals change nothing");
    one.audit_anchor_put(&anchor(4, b"e4")).unwrap();
    assert_eq!(other.audit_anchor().unwrap(), Some(anchor(4, b"e4")));
}

fn audit_anchor_raced_by_two_replicas_at_one_place_keeps_one(b: &Backend) {
    for seq in 1..=10u64 {
        let barrier = Barrier::new(2);
        let (x, y) = (anchor(seq, b"replica one"), anchor(seq, b"replica two"));
        let (rx, ry) = std::thread::scope(|scope| {
            let a = scope.spawn(|| {
                barrier.wait();
                b.one().audit_store().audit_anchor_put(&x)
            });
            let c = scope.spawn(|| {
                barrier.wait();
                b.other().audit_store().audit_anchor_put(&y)
            });
            (a.join().unwrap(), c.join().unwrap())
        });
        let kept = match (&rx, &ry) {
            (Ok(()), Err(RegistryError::AuditAnchorBehind { .. })) => x,
            (Err(RegistryError::AuditAnchorBehind { .. }), Ok(())) => y,
            other => panic!("anchor {seq}: exactly one of two forks must be recorded, got {other:?}"),
        };
        assert_eq!(b.one().audit_store().audit_anchor().unwrap(), Some(kept));
    }
}

// The schema: versioned migrations, and what an open refuses.

fn open(url: &str) -> Result<PgStore, PgError> {
    PgStore::open(url, Arc::new(ManualClock::new(START)), &PgLimits::default())
}

#[test]
fn package_row_is_written_once_and_a_taken_version_is_refused() {
    let b = Backend::postgres();
    let d = b.add_package("affine", "1.0.0", 2.0);
    let record = b.source.record(&d).unwrap().unwrap();
    let (manifest, _) = b.source.manifest(&d).unwrap();
    let pg = b.other().package_store();
    assert_eq!(pg.record(&d).unwrap().as_ref(), Some(&record));
    // Same package again (a retried `package add`): nothing changes.
    let again = PgStore::open(b.url.as_deref().unwrap(), b.clock.clone(), &PgLimits::default()).unwrap();
    assert_eq!(again.package_put(&record, &manifest).unwrap(), PackagePut::AlreadyThere);
    // Another package under the same name and version: refused, naming the one registered.
    let impostor = outpost_hub::registry::PackageRecord { digest: Digest::of(b"impostor"), ..record.clone() };
    match again.package_put(&impostor, &manifest) {
        Err(RegistryError::VersionTaken { existing, .. }) => assert_eq!(existing, d),
        other => panic!("{other:?}"),
    }
    assert_eq!(pg.list().unwrap(), vec![record]);
}

#[test]
fn migrate_twice_is_a_no_op() {
    let (db, url) = support::postgres::database();
    let first = postgres::migrate(&url, &PgLimits::default()).unwrap();
    assert_eq!((first.from, first.to), (0, postgres::SCHEMA_VERSION));
    let second = postgres::migrate(&url, &PgLimits::default()).unwrap();
    assert_eq!((second.from, second.to), (postgres::SCHEMA_VERSION, postgres::SCHEMA_VERSION));
    let rows = support::postgres::cluster().sql(&db, "SELECT count(*) FROM schema_migrations");
    assert_eq!(rows.trim(), postgres::MIGRATIONS.len().to_string());
    open(&url).unwrap();
}

#[test]
fn database_at_schema_version_2_upgrades_to_the_newest_keeping_its_rows() {
    // A database as the first PostgreSQL release left it: migrations 1 and 2 only, a row in it.
    let (db, url) = support::postgres::database();
    let cluster = support::postgres::cluster();
    cluster.sql(
        &db,
        "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now())",
    );
    for m in &postgres::MIGRATIONS[..2] {
        cluster.sql(&db, m.sql);
        cluster.sql(&db, &format!("INSERT INTO schema_migrations (version, name) VALUES ({}, 'then')", m.version));
    }
    cluster.sql(&db, "INSERT INTO releases (id, record) VALUES ('r1', '\\x00')");
    assert!(matches!(open(&url), Err(PgError::OlderSchema { found: 2, .. })));
    let migrated = postgres::migrate(&url, &PgLimits::default()).unwrap();
    assert_eq!((migrated.from, migrated.to), (2, postgres::SCHEMA_VERSION));
    let pg = open(&url).unwrap();
    assert!(pg.devices().unwrap().is_empty());
    pg.device_approve(&key(1), "stable").unwrap();
    assert_eq!(cluster.sql(&db, "SELECT id FROM releases").trim(), "r1", "the row written at version 2 is there");
    let versions = cluster.sql(&db, "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations");
    let all: Vec<String> = postgres::MIGRATIONS.iter().map(|m| m.version.to_string()).collect();
    assert_eq!(versions.trim(), all.join(","), "each later migration applied once, the earlier ones left alone");
}

#[test]
fn two_migrators_at_once_apply_each_migration_once() {
    let (db, url) = support::postgres::database();
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| postgres::migrate(&url, &PgLimits::default()));
        let b = scope.spawn(|| postgres::migrate(&url, &PgLimits::default()));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_eq!((a.to, b.to), (postgres::SCHEMA_VERSION, postgres::SCHEMA_VERSION));
    assert_eq!(a.from.min(b.from), 0, "one of them migrated");
    let rows = support::postgres::cluster().sql(&db, "SELECT count(*) FROM schema_migrations");
    assert_eq!(rows.trim(), postgres::MIGRATIONS.len().to_string());
}

/// A database a future outpost-hub migrated to version 999.
fn newer_database() -> (String, String) {
    let (db, url) = support::postgres::database();
    postgres::migrate(&url, &PgLimits::default()).unwrap();
    support::postgres::cluster()
        .sql(&db, "INSERT INTO schema_migrations (version, name) VALUES (999, 'from the future')");
    (db, url)
}

#[test]
fn database_from_a_newer_schema_is_refused() {
    let (db, url) = newer_database();
    let e = postgres::migrate(&url, &PgLimits::default()).unwrap_err();
    assert!(matches!(e, PgError::NewerSchema { found: 999, known: postgres::SCHEMA_VERSION }), "{e:?}");
    let versions = support::postgres::cluster()
        .sql(&db, "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations");
    let expected: Vec<String> =
        postgres::MIGRATIONS.iter().map(|m| m.version.to_string()).chain(["999".into()]).collect();
    assert_eq!(versions.trim(), expected.join(","), "nothing was applied or removed");
    assert!(e.to_string().contains("newer than this outpost-hub knows"), "{e}");
    let e = open(&url).unwrap_err();
    assert!(matches!(e, PgError::NewerSchema { found: 999, .. }), "{e:?}");
}

#[test]
fn database_never_migrated_is_refused_until_migrate_runs() {
    let (_, url) = support::postgres::database();
    let e = open(&url).unwrap_err();
    assert!(matches!(e, PgError::OlderSchema { found: 0, known: postgres::SCHEMA_VERSION }), "{e:?}");
    assert!(e.to_string().contains("outpost-hub migrate"), "{e}");
}

#[test]
fn unreachable_database_is_a_connect_error_naming_where() {
    let e = open("host=/nonexistent/outpost-socket-dir port=5432 user=outpost dbname=nowhere").unwrap_err();
    assert!(matches!(e, PgError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/outpost-socket-dir/nowhere"), "{e}");
}

#[test]
fn migrate_command_creates_the_schema_then_changes_nothing() {
    let (_, url) = support::postgres::database();
    let hub = TestHub::new();
    let out = hub.cli(&["migrate", "--postgres", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), postgres::SCHEMA_VERSION.to_string());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from version 0 to"));
    // Again, from hub.toml's `[store] postgres` this time.
    let config = hub.dir().join("hub.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("# postgres = \"\""), "hub.toml as `init` writes it has the key commented out");
    std::fs::write(&config, text.replace("# postgres = \"\"", &format!("postgres = \"{url}\""))).unwrap();
    let out = hub.cli(&["migrate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing changed"));
    // The hub now keeps its devices there: none yet.
    let out = hub.cli(&["device", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A hub whose hub.toml sets `[store] postgres` on a freshly migrated database.
fn hub_on_postgres() -> (TestHub, String) {
    let (db, url) = support::postgres::database();
    postgres::migrate(&url, &PgLimits::default()).unwrap();
    let hub = TestHub::new();
    let config = hub.dir().join("hub.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("# postgres = \"\"", &format!("postgres = \"{url}\""))).unwrap();
    (hub, db)
}

#[test]
fn hub_on_postgres_keeps_its_devices_and_audit_log_in_the_database_and_verifies_them_there() {
    let (hub, db) = hub_on_postgres();
    let cluster = support::postgres::cluster();
    let ok = |args: &[&str]| {
        let out = hub.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for n in [1, 2] {
        ok(&["device", "approve", &key(n), "--channel", "stable"]);
        ok(&["device", "revoke", &key(n)]);
    }
    assert_eq!(cluster.sql(&db, "SELECT count(*) FROM devices").trim(), "2");
    assert!(!default_path(&hub.dir()).exists(), "nothing is appended to the data directory's log");
    let entries = cluster.sql(&db, "SELECT count(*) FROM audit_log");
    assert_eq!(entries.trim(), "2", "each revocation audited in the database");
    let verified = ok(&["audit", "verify"]);
    assert!(verified.contains("audit_log (PostgreSQL)") && verified.contains("chain intact"), "{verified}");
    assert!(verified.contains("2 entries"), "{verified}");
    let shown = ok(&["audit", "show"]);
    assert!(shown.contains(&key(1)) && shown.contains(&key(2)) && shown.contains("revoke"), "{shown}");
    // The newest entry removed from the table: the anchor no longer reaches, and verify says so.
    cluster.sql(&db, "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)");
    let out = hub.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit_log (PostgreSQL)"), "{err}");
}

#[test]
fn hub_on_postgres_at_an_older_schema_is_refused_until_migrate_runs() {
    let (_, url) = support::postgres::database();
    let hub = TestHub::new();
    let config = hub.dir().join("hub.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("# postgres = \"\"", &format!("postgres = \"{url}\""))).unwrap();
    let out = hub.cli(&["device", "list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outpost-hub migrate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(hub.cli(&["migrate"]).status.success());
    assert!(hub.cli(&["device", "list"]).status.success());
}

#[test]
fn migrate_command_refuses_a_newer_database_untouched() {
    let (_, url) = newer_database();
    let hub = TestHub::new();
    let out = hub.cli(&["migrate", "--postgres", &url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema version 999, newer than this outpost-hub knows"), "{err}");
}
