//! The capability, evaluation and cycle suite on each backend: a capability's contract never changes and its
//! revisions are numbered one after another; suites, evaluation and cycle records are stored once, never replaced.

use std::collections::BTreeMap;
use std::sync::Barrier;

use outpost_hub::registry::{CapabilityAdded, CapabilityCheck, RegistryError};
use outpost_shared::Digest;
use outpost_shared::capability::Capability;
use outpost_shared::challenger::{CycleRecord, OperatorRun, Thresholds};
use outpost_shared::evaluation::{EvaluationRecord, FileEntry, Machine, SuiteManifest, SuiteToml};
use outpost_shared::npy::encode_f32;

use super::support::{ALL_OWNERS, affine_capability};
use super::{Backend, START};

fn capability(width: u64, owners: &[&str]) -> Capability {
    Capability::from_toml(&affine_capability(width, owners), std::path::Path::new("cap.toml")).unwrap()
}

fn evaluation(package: Digest, at: u64) -> EvaluationRecord {
    EvaluationRecord {
        package,
        suite: Digest::of(b"suite"),
        suite_name: "s".into(),
        metrics: BTreeMap::from([("size_bytes".to_owned(), at as f64)]),
        samples: 1,
        machine: Machine { cpu: "test".into(), cpus: 1, threads: 1 },
        versions: BTreeMap::new(),
        at,
    }
}

fn cycle(at: u64) -> CycleRecord {
    CycleRecord {
        capability: "test.affine".into(),
        champion: Digest::of(b"champion"),
        suite: Digest::of(b"suite"),
        suite_name: "s".into(),
        operator: OperatorRun::Builtin { name: "int8".into() },
        rounds: 3,
        thresholds: Thresholds::default(),
        runs: vec![],
        champion_metrics: BTreeMap::new(),
        noop_metrics: BTreeMap::new(),
        noise: BTreeMap::new(),
        candidates: vec![],
        promoted: None,
        follow_up: None,
        at,
    }
}

both!(
    capability_contract_never_changes_and_revisions_are_numbered,
    capability_revised_by_two_replicas_at_once_gets_each_revision_once,
    publish_check_needs_every_owner_and_a_fitting_package,
    evaluation_record_is_stored_once_and_listed_oldest_first,
    evaluation_record_stored_by_two_replicas_at_once_is_stored_once,
    cycle_record_is_stored_once_and_found_by_id_prefix,
    suite_from_a_directory_is_registered_once_and_a_changed_one_refused_under_its_name,
);

fn capability_contract_never_changes_and_revisions_are_numbered(b: &Backend) {
    let (s, other) = (b.one().capability_store(), b.other().capability_store());
    assert_eq!(s.capability("test.affine").unwrap(), None);
    let (first, added) = s.capability_add(&capability(4, &ALL_OWNERS)).unwrap();
    assert_eq!((added, first.revision, first.updated_at), (CapabilityAdded::Created, 1, START));
    let (same, again) = other.capability_add(&capability(4, &ALL_OWNERS)).unwrap();
    assert_eq!((again, same), (CapabilityAdded::Unchanged, first.clone()));
    let mut described = capability(4, &ALL_OWNERS);
    described.description = Some("revised".into());
    let (second, revised) = other.capability_add(&described).unwrap();
    assert_eq!((revised, second.revision), (CapabilityAdded::Revised, 2));
    let e = s.capability_add(&capability(8, &ALL_OWNERS)).unwrap_err();
    assert!(matches!(&e, RegistryError::CapabilityContractChanged { name } if name == "test.affine"), "{e}");
    assert_eq!(s.capability("test.affine").unwrap(), Some(second.clone()), "the refused change left it as it was");
    assert_eq!(s.capability_history("test.affine").unwrap(), vec![first, second.clone()]);
    assert_eq!(s.capabilities().unwrap(), vec![second]);
    assert!(s.capability_history("no.such").unwrap().is_empty());
}

fn capability_revised_by_two_replicas_at_once_gets_each_revision_once(b: &Backend) {
    const REVISIONS: usize = 10;
    b.one().capability_store().capability_add(&capability(4, &ALL_OWNERS)).unwrap();
    let barrier = Barrier::new(2);
    let revise = |s: &dyn super::Stores, who: &str| -> Vec<u64> {
        barrier.wait();
        (0..REVISIONS)
            .map(|n| {
                let mut cap = capability(4, &ALL_OWNERS);
                cap.description = Some(format!("{who} {n}"));
                let (record, added) = s.capability_store().capability_add(&cap).unwrap();
                assert_eq!(added, CapabilityAdded::Revised);
                record.revision
            })
            .collect()
    };
    let (x, y) = std::thread::scope(|scope| {
        let x = scope.spawn(|| revise(b.one(), "one"));
        let y = scope.spawn(|| revise(b.other(), "two"));
        (x.join().unwrap(), y.join().unwrap())
    });
    let mut all: Vec<u64> = x.iter().chain(&y).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (2..=2 * REVISIONS as u64 + 1).collect::<Vec<_>>(), "every revision got its own number");
    let history = b.other().capability_store().capability_history("test.affine").unwrap();
    let numbers: Vec<u64> = history.iter().map(|r| r.revision).collect();
    assert_eq!(numbers, (1..=2 * REVISIONS as u64 + 1).collect::<Vec<_>>());
    let current = b.one().capability_store().capability("test.affine").unwrap().unwrap();
    assert_eq!(Some(&current), history.last(), "the current record is the newest revision");
}

fn publish_check_needs_every_owner_and_a_fitting_package(b: &Backend) {
    let d = b.add_package("affine", "1.0.0", 2.0);
    let (_, manifest) = b.source.manifest(&d).unwrap();
    let s = b.one().capability_store();
    assert_eq!(s.publish_check(&manifest).unwrap(), CapabilityCheck::NotRegistered);
    s.capability_add(&capability(4, &ALL_OWNERS[..3])).unwrap();
    let e = s.publish_check(&manifest).unwrap_err();
    assert!(matches!(e, RegistryError::MissingOwners(_)), "{e}");
    b.other().capability_store().capability_add(&capability(4, &ALL_OWNERS)).unwrap();
    assert_eq!(s.publish_check(&manifest).unwrap(), CapabilityCheck::Fits { revision: 2 });
}

fn evaluation_record_is_stored_once_and_listed_oldest_first(b: &Backend) {
    let (s, other) = (b.one().evaluation_store(), b.other().evaluation_store());
    let (p, q) = (Digest::of(b"p"), Digest::of(b"q"));
    let ids: Vec<Digest> = [5, 1, 3].iter().map(|&at| s.evaluation_put(&evaluation(p, at)).unwrap()).collect();
    let q_id = other.evaluation_put(&evaluation(q, 2)).unwrap();
    assert_eq!(q_id, evaluation(q, 2).id());
    let e = other.evaluation_put(&evaluation(p, 3)).unwrap_err();
    assert!(matches!(e, RegistryError::RecordExists(d) if d == ids[2]), "{e}");
    let listed = other.evaluations(&p).unwrap();
    let ats: Vec<u64> = listed.iter().map(|(_, r)| r.at).collect();
    assert_eq!(ats, [1, 3, 5], "oldest first");
    assert!(listed.iter().all(|(id, r)| *id == r.id() && r.package == p));
    assert_eq!(s.evaluations(&q).unwrap(), vec![(q_id, evaluation(q, 2))]);
    assert!(s.evaluations(&Digest::of(b"none")).unwrap().is_empty());
}

fn evaluation_record_stored_by_two_replicas_at_once_is_stored_once(b: &Backend) {
    for at in 0..10 {
        let r = evaluation(Digest::of(b"p"), at);
        let barrier = Barrier::new(2);
        let put = |s: &dyn super::Stores| {
            barrier.wait();
            s.evaluation_store().evaluation_put(&r)
        };
        let (x, y) = std::thread::scope(|scope| {
            let x = scope.spawn(|| put(b.one()));
            let y = scope.spawn(|| put(b.other()));
            (x.join().unwrap(), y.join().unwrap())
        });
        match (&x, &y) {
            (Ok(id), Err(RegistryError::RecordExists(d))) | (Err(RegistryError::RecordExists(d)), Ok(id)) => {
                assert_eq!((id, d), (&r.id(), &r.id()))
            }
            other => panic!("record {at}: exactly one store must succeed, got {other:?}"),
        }
    }
    assert_eq!(b.one().evaluation_store().evaluations(&Digest::of(b"p")).unwrap().len(), 10);
}

fn cycle_record_is_stored_once_and_found_by_id_prefix(b: &Backend) {
    let (s, other) = (b.one().cycle_store(), b.other().cycle_store());
    let late = s.cycle_put(&cycle(START + 10)).unwrap();
    let early = other.cycle_put(&cycle(START)).unwrap();
    let e = s.cycle_put(&cycle(START)).unwrap_err();
    assert!(matches!(e, RegistryError::CycleExists(d) if d == early), "{e}");
    let all = other.cycles().unwrap();
    assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [early, late], "oldest first");
    assert_eq!(all[1].1, cycle(START + 10), "stored as it was");
    assert_eq!(s.cycle(&late.to_hex()[..12]).unwrap(), (late, cycle(START + 10)));
    assert!(matches!(s.cycle("0123"), Err(RegistryError::UnknownCycle(_))), "too short a prefix");
    assert!(matches!(
        s.cycle("ffffffffffff"),
        Err(RegistryError::UnknownCycle(_)) | Err(RegistryError::AmbiguousPrefix { .. })
    ));
}

/// A suite directory for `test.affine` (x[N, 4] -> y[N, 4]) with `rows` rows of input.
fn suite_dir(b: &Backend, name: &str, rows: usize) -> std::path::PathBuf {
    let dir = b.hub.dir().join(format!("suite-{name}-{rows}"));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "name = \"{name}\"\ncapability = \"test.affine\"\nmetrics = [\"max_abs_diff\"]\n[inputs]\nx = \"x.npy\"\n\
         [reference]\noutputs = {{ y = \"y.npy\" }}\n[budget]\nthreads = 1\nwarmup = 1\nruns = 5\n"
    );
    std::fs::write(dir.join("suite.toml"), toml).unwrap();
    let array = encode_f32(&[rows, 4], &vec![0.5; rows * 4]);
    std::fs::write(dir.join("x.npy"), &array).unwrap();
    std::fs::write(dir.join("y.npy"), &array).unwrap();
    dir
}

fn suite_from_a_directory_is_registered_once_and_a_changed_one_refused_under_its_name(b: &Backend) {
    let (s, other) = (b.one().evaluation_store(), b.other().evaluation_store());
    let e = s.suite_add(&suite_dir(b, "golden", 2)).unwrap_err();
    assert!(matches!(&e, RegistryError::UnknownCapability(c) if c == "test.affine"), "{e}");
    b.one().capability_store().capability_add(&capability(4, &ALL_OWNERS)).unwrap();
    let first = s.suite_add(&suite_dir(b, "golden", 2)).unwrap();
    assert!(first.added);
    assert!(first.manifest.files.values().all(|f| b.source.blobs().path_of(&f.digest).exists()), "files are blobs");
    let again = other.suite_add(&suite_dir(b, "golden", 2)).unwrap();
    assert!(!again.added && again.digest == first.digest, "the same suite again changes nothing");
    match other.suite_add(&suite_dir(b, "golden", 3)) {
        Err(RegistryError::SuiteNameTaken { name, existing }) => {
            assert_eq!((name.as_str(), existing), ("golden", first.digest))
        }
        other => panic!("expected SuiteNameTaken, got {other:?}"),
    }
    assert_eq!(s.suite("golden").unwrap(), (first.digest, first.manifest.clone()));
    assert_eq!(s.suites().unwrap().len(), 1);
}

fn suite(name: &str, inputs: &str) -> SuiteManifest {
    let toml = format!(
        "name = \"{name}\"\ncapability = \"test.affine\"\nmetrics = [\"max_abs_diff\"]\n[inputs]\nx = \"{inputs}\"\n\
         [reference]\noutputs = {{ y = \"y.npy\" }}\n[budget]\nthreads = 1\nwarmup = 1\nruns = 5\n"
    );
    let suite = SuiteToml::from_toml(&toml, std::path::Path::new("suite.toml")).unwrap();
    let files = suite
        .files()
        .into_iter()
        .map(|f| (f.to_owned(), FileEntry { digest: Digest::of(f.as_bytes()), len: 1 }))
        .collect();
    SuiteManifest { suite, files }
}

#[test]
fn suite_manifest_is_registered_once_and_a_taken_name_is_refused() {
    let b = Backend::postgres();
    let pg = super::open(b.url.as_deref().unwrap()).unwrap();
    let first = pg.suite_put(&suite("golden", "x.npy")).unwrap();
    assert!(first.added);
    let again = pg.suite_put(&suite("golden", "x.npy")).unwrap();
    assert!(!again.added && again.digest == first.digest, "the same suite again changes nothing");
    match pg.suite_put(&suite("golden", "other.npy")) {
        Err(RegistryError::SuiteNameTaken { name, existing }) => {
            assert_eq!((name.as_str(), existing), ("golden", first.digest))
        }
        other => panic!("expected SuiteNameTaken, got {other:?}"),
    }
    pg.suite_put(&suite("another", "x.npy")).unwrap();
    let s = b.one().evaluation_store();
    let names: Vec<String> = s.suites().unwrap().into_iter().map(|(_, m)| m.suite.name).collect();
    assert_eq!(names, ["another", "golden"], "by name");
    assert_eq!(s.suite("golden").unwrap(), (first.digest, first.manifest.clone()));
    assert_eq!(s.suite(&first.digest.to_hex()[..10]).unwrap().0, first.digest);
    assert!(matches!(s.suite("nope"), Err(RegistryError::UnknownSuite(_))));
}

#[test]
fn write_once_rows_refuse_updates_and_deletes_in_the_database() {
    let (db, url) = super::support::postgres::database();
    outpost_hub::store::postgres::migrate(&url, &outpost_hub::store::postgres::PgLimits::default()).unwrap();
    let pg = super::open(&url).unwrap();
    use outpost_hub::storage::{CycleStore, EvaluationStore};
    pg.evaluation_put(&evaluation(Digest::of(b"p"), 1)).unwrap();
    pg.cycle_put(&cycle(START)).unwrap();
    pg.suite_put(&suite("golden", "x.npy")).unwrap();
    let cluster = super::support::postgres::cluster();
    for statement in [
        "UPDATE evaluations SET at = 2",
        "DELETE FROM evaluations",
        "UPDATE cycles SET record = record",
        "DELETE FROM cycles",
        "UPDATE suites SET name = 'other'",
        "DELETE FROM suites",
    ] {
        let refused = std::panic::catch_unwind(|| cluster.sql(&db, statement));
        assert!(refused.is_err(), "`{statement}` went through");
    }
    assert_eq!(pg.evaluations(&Digest::of(b"p")).unwrap().len(), 1);
    assert_eq!(pg.cycles().unwrap().len(), 1);
    assert_eq!(pg.suites().unwrap().len(), 1);
}
