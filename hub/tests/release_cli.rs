//! The signing ceremony as operators run it: the `outpost-hub` binary from key generation to a static export
//! that a TUF client not written here (sigstore-tuf's `Updater`) reads.

mod support;

use outpost_shared::Digest;
use outpost_shared::testkit::AffineManifest;
use support::{TestHub, stderr, stdout};

#[tokio::test]
async fn operator_ceremony_produces_a_repository_sigstore_tuf_reads() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    let generated = hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(offline.join("root-1.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "private keys are owner-only");
    // The serving side's key directory holds no offline key.
    let online: Vec<String> = std::fs::read_dir(hub.dir().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(online.iter().all(|n| !n.starts_with("root") && !n.starts_with("targets")), "{online:?}");

    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    let add = hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    let digest: Digest = stdout(&add).trim().parse().unwrap();
    let key = offline.join("targets-1.key");
    let publish =
        hub.cli(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key.to_str().unwrap()]);
    assert!(publish.status.success(), "{}", stderr(&publish));
    assert!(stderr(&publish).contains("installable now"), "{}", stderr(&publish));

    let out = hub.tmp.path().join("static");
    assert!(hub.cli(&["repo", "export", out.to_str().unwrap()]).status.success());
    let root = std::fs::read(out.join("metadata/1.root.json")).unwrap();
    let mirror = sigstore_tuf::StoreRepository::new(sigstore_tuf::FileStore::new(out.join("metadata")));
    let mut u = sigstore_tuf::Updater::new(mirror, &root).unwrap();
    let now = jiff::Timestamp::from_second({
        use outpost_shared::clock::Clock;
        outpost_hub::clock::SystemClock.wall() as i64
    })
    .unwrap();
    u.refresh(now).await.unwrap();
    let info = u.get_target_info("packages/low/affine-1.0.0.opkg", now).await.unwrap().expect("published target");
    assert_eq!(info.hashes["sha256"], digest.to_hex());
}

/// A hub with its keys generated (the offline ones in the returned directory) and affine 1.0.0 added.
fn hub_with_affine() -> (TestHub, std::path::PathBuf) {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    assert!(hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]).status.success());
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    assert!(
        hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()])
            .status
            .success()
    );
    (hub, offline)
}

#[test]
fn publishing_with_a_root_key_is_refused_with_the_authorised_keys_named() {
    let (hub, offline) = hub_with_affine();
    let key = offline.join("root-1.key");
    let out = hub.cli(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", key.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not authorised to sign `standard`"), "{}", stderr(&out));
}

#[test]
fn bad_device_key_is_refused_clearly() {
    let hub = TestHub::new();
    let out = hub.cli(&["device", "approve", "not-a-key"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("64 hex characters"), "{}", stderr(&out));
}

/// Runs the CLI and insists it succeeds; returns stdout.
fn ok(hub: &TestHub, args: &[&str]) -> String {
    let o = hub.cli(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn high_risk_release_is_approved_only_by_another_targets_key_holder_and_every_action_is_audited() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    let key = |n: &str| offline.join(n).to_str().unwrap().to_owned();
    ok(&hub, &["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    let mut m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    m.risk_tier = "high".into();
    let (model, manifest) = hub.write_affine(&m);
    ok(&hub, &["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()]);
    ok(&hub, &["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", &key("targets-1.key")]);
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/plans/high-risk.toml");

    // One signature is not enough to start a high-risk release.
    let refused = hub.cli(&["release", "start", "affine@1.0.0", "--plan", plan]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("not published") || stderr(&refused).contains("sign"), "{}", stderr(&refused));
    ok(&hub, &["release", "sign", "affine@1.0.0", "--key", &key("targets-2.key")]);
    let id = ok(&hub, &["release", "start", "affine@1.0.0", "--plan", plan]).trim().to_owned();
    assert_eq!(id, "r1");

    // The shadow stage needs no approval; approving is refused to the publisher and to a key outside the role.
    let status = ok(&hub, &["release", "status", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["package"], "affine@1.0.0");
    let root = hub.cli(&["release", "approve", &id, "--key", &key("root-1.key")]);
    assert!(!root.status.success(), "a root key is no targets key holder");
    assert!(stderr(&root).contains("not authorised"), "{}", stderr(&root));

    ok(&hub, &["release", "abort", &id, "--reason", "test abort"]);
    let table = ok(&hub, &["release", "status", &id]);
    assert!(table.contains("ABORTED") && table.contains("test abort"), "{table}");
    assert!(ok(&hub, &["release", "list"]).contains("ABORTED"));

    // Publish, sign, start and abort are each in the audit log, and the chain holds until an entry is edited.
    let audit = ok(&hub, &["audit", "show"]);
    for action in ["publish", "sign", "start", "abort"] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
    assert!(ok(&hub, &["audit", "verify"]).contains("4 entries, chain intact"));
    let log = hub.dir().join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replace("test abort", "nothing to see")).unwrap();
    let broken = hub.cli(&["audit", "verify"]);
    assert!(!broken.status.success(), "an edited newest entry is detected: {}", stdout(&broken));
    // So is the newest entry removed (the index keeps the head apart from the log).
    let kept: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();
    let cut = hub.cli(&["audit", "verify"]);
    assert!(!cut.status.success(), "a removed newest entry is detected: {}", stdout(&cut));
}

#[test]
fn missing_key_file_names_its_cause_once() {
    let (hub, _) = hub_with_affine();
    let missing = hub.tmp.path().join("x.key");
    let publish =
        hub.cli(&["release", "publish", "affine@1.0.0", "--channel", "stable", "--key", missing.to_str().unwrap()]);
    assert!(!publish.status.success());
    let err = stderr(&publish);
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.matches("(os error 2)").count(), 1, "the cause is printed once: {err}");
}
