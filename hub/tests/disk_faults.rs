//! The hub on a disk that fills up or fails (the faultfs LD_PRELOAD shim under the real CLI): each command fails
//! with an error naming what it could not write, loses nothing already committed, and the same command succeeds
//! once the fault is lifted. A damaged store at start is a typed error naming the file.

mod support;

use std::path::Path;

use outpost_hub::tuf::TufRepo;
use outpost_shared::testkit::AffineManifest;
use support::faultfs::{Fault, Op};
use support::{TestHub, stderr, stdout};

fn add_args(model: &Path, manifest: &Path) -> Vec<String> {
    ["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()].map(str::to_owned).to_vec()
}

#[allow(clippy::disallowed_methods)] // A deadline for a real process.
fn instant_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `package list`, one line per package.
fn listed(hub: &TestHub) -> Vec<String> {
    hub.ok(&["package", "list"]).lines().map(str::to_owned).collect()
}

/// A hub holding affine 1.0.0: its `package list`, and the arguments that add affine 1.1.0.
fn one_package_added() -> (TestHub, Vec<String>, Vec<String>) {
    let hub = TestHub::new();
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    hub.ok(&args(&add_args(&model, &manifest)));
    let before = listed(&hub);
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0));
    (hub, before, add_args(&model, &manifest))
}

#[test]
fn package_add_on_a_full_disk_fails_clearly_and_succeeds_once_space_returns() {
    let (hub, before, add) = one_package_added();

    let fault = Fault::disk_full(&hub.dir().join("blobs"), hub.tmp.path());
    let out = hub.cli_faulty(&fault, &args(&add));
    assert!(!out.status.success(), "added on a full disk");
    assert!(stderr(&out).contains("No space left on device") && stderr(&out).contains("blobs"), "{}", stderr(&out));
    assert!(!fault.injected().is_empty(), "the fault fired");
    assert_eq!(listed(&hub), before, "nothing half-added, nothing lost");
    hub.ok(&["package", "verify"]);

    fault.lift();
    hub.ok(&args(&add));
    assert_eq!(listed(&hub).len(), before.len() + 1);
    hub.ok(&["package", "verify"]);
}

#[test]
fn an_index_commit_whose_fsync_fails_loses_nothing_committed() {
    let (hub, before, add) = one_package_added();

    // The disk under index.redb fails its flushes: redb's commit cannot be made durable.
    let fault =
        Fault::disk_full(&hub.dir().join(outpost_hub::registry::INDEX_FILE), hub.tmp.path()).ops(&[Op::Fsync]).eio();
    let out = hub.cli_faulty(&fault, &args(&add));
    assert!(!out.status.success(), "added without a durable index");
    assert!(stderr(&out).contains("index database") && stderr(&out).contains("Input/output error"), "{}", stderr(&out));
    assert!(!fault.injected().is_empty(), "the fault fired");
    assert_eq!(listed(&hub), before, "the committed index is intact and holds nothing of the failed add");

    fault.lift();
    hub.ok(&args(&add));
    assert_eq!(listed(&hub).len(), before.len() + 1);
}

#[test]
fn the_serving_hub_writes_its_index_again_once_the_disk_does() {
    let (hub, before, add) = one_package_added();
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    // The serving hub holds index.redb open for its whole life; admin commands run inside it.
    let fault = Fault::disk_full(&hub.dir().join(outpost_hub::registry::INDEX_FILE), hub.tmp.path())
        .ops(&[Op::Fsync])
        .eio()
        .disarmed();
    let log = hub.tmp.path().join("serve.log");
    let mut serve = hub.spawn_faulty(&fault, &["serve", "--bind", "127.0.0.1:0"], &log);
    let start = instant_now();
    while !outpost_hub::admin::serving(&hub.dir()) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "serving: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    fault.arm();
    let out = hub.cli(&args(&add));
    assert!(!out.status.success(), "added without a durable index");
    assert!(stderr(&out).contains("Input/output error"), "{}", stderr(&out));
    assert!(!fault.injected().is_empty(), "the fault fired");
    // The disk works again: the same serving process reads what was committed, and the same command succeeds.
    fault.lift();
    assert_eq!(listed(&hub), before, "nothing of the failed add, nothing lost");
    let out = hub.cli(&args(&add));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(out.status.success(), "{}\nserve's log:\n{logged}", stderr(&out));
    assert_eq!(listed(&hub).len(), before.len() + 1);
    assert!(logged.contains("reopened") && logged.contains("index.redb"), "{logged}");
    serve.kill().unwrap();
    serve.wait().unwrap();
}

#[test]
fn publish_on_a_full_disk_fails_clearly_and_readers_keep_the_last_release() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    hub.ok(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let key = offline.join("targets-1.key");
    let key = key.to_str().unwrap();
    for (v, scale) in [("1.0.0", 2.0), ("1.1.0", 3.0)] {
        let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", v, scale, 1.0));
        hub.ok(&args(&add_args(&model, &manifest)));
    }
    hub.ok(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key]);
    let repo = TufRepo::new(&hub.dir(), Default::default());
    let committed = repo.latest_version("timestamp").unwrap();
    let standard = repo.latest_version("standard").unwrap();

    // Space runs out part-way through: the role file is written, the snapshot is not.
    let fault = Fault::disk_full(&repo.metadata_dir(), hub.tmp.path()).after(3);
    let publish = ["release", "publish", "affine@1.1.0", "--channel", "stable", "--key", key];
    let out = hub.cli_faulty(&fault, &publish);
    assert!(!out.status.success(), "published on a full disk: {}", stdout(&out));
    assert!(stderr(&out).contains("No space left on device") && stderr(&out).contains("metadata"), "{}", stderr(&out));
    assert!(!fault.injected().is_empty(), "the fault fired");
    // Readers see the last release, whole; the serving hub's re-signing does not publish the half-written one.
    assert_eq!(repo.latest_version("timestamp").unwrap(), committed);
    assert_eq!(repo.latest_version("standard").unwrap(), standard);
    fault.lift();
    hub.ok(&["repo", "refresh"]);
    assert_eq!(repo.latest_version("standard").unwrap(), standard);

    hub.ok(&publish);
    assert_eq!(repo.latest_version("standard").unwrap(), standard + 1);
}

#[test]
fn a_damaged_index_at_start_is_a_typed_error_naming_the_file() {
    let hub = TestHub::new();
    let index = hub.dir().join(outpost_hub::registry::INDEX_FILE);
    std::fs::write(&index, b"this is not a redb database, it was overwritten by something else").unwrap();
    let e = outpost_hub::Registry::open(&hub.dir(), std::sync::Arc::new(outpost_shared::clock::ManualClock::new(0)))
        .unwrap_err();
    assert!(matches!(&e, outpost_hub::RegistryError::DamagedStore { path, .. } if *path == index), "{e}");
    let out = hub.cli(&["package", "list"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(index.to_str().unwrap()) && err.contains("is damaged") && err.contains("OPERATING.md"),
        "{err}"
    );
}

#[test]
fn a_damaged_telemetry_store_at_start_is_a_typed_error_naming_the_file() {
    let hub = TestHub::new();
    let path = hub.dir().join(outpost_hub::telemetry::TELEMETRY_FILE);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let clock = std::sync::Arc::new(outpost_shared::clock::ManualClock::new(0));
    let e = outpost_hub::telemetry::TelemetryStore::open(&hub.dir(), clock).unwrap_err();
    assert!(
        matches!(&e, outpost_hub::telemetry::TelemetryStoreError::DamagedStore { path: p, .. } if *p == path),
        "{e}"
    );
    // The documented recovery: move it aside; the hub starts with an empty telemetry store.
    std::fs::rename(&path, path.with_extension("redb.damaged")).unwrap();
    let clock = std::sync::Arc::new(outpost_shared::clock::ManualClock::new(0));
    assert!(outpost_hub::telemetry::TelemetryStore::open(&hub.dir(), clock).unwrap().is_empty().unwrap());
}
