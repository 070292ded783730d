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

#[test]
fn publishing_with_a_root_key_is_refused_with_the_authorised_keys_named() {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    assert!(hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]).status.success());
    let (model, manifest) = hub.write_affine(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0));
    assert!(
        hub.cli(&["package", "add", model.to_str().unwrap(), "--manifest", manifest.to_str().unwrap()])
            .status
            .success()
    );
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
