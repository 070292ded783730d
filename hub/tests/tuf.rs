//! The hub's TUF output, read by a client not written here (sigstore-tuf's `Updater`), and the attacks TUF exists
//! to stop: each is mounted against the hub's real metadata and must be rejected by the verifying side.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use outpost_hub::tuf::{GenerateOptions, Key, PublishOutcome, TufError, TufRepo};
use outpost_shared::Digest;
use outpost_shared::director::{self, AssignedTarget, Assignment, ListedTarget};
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::AffineManifest;
use sigstore_tuf::transport::FetchFuture;
use sigstore_tuf::{Repository, Updater};
use support::TestHub;

const NOW: u64 = 1_795_881_600;

fn ts(secs: u64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs as i64).unwrap()
}

/// One fetch the verifier made: what it asked for, the bound it gave, and how many bytes it was handed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fetch {
    name: String,
    max_length: u64,
    handed: usize,
}

/// A static mirror of an exported repository, with an attacker's hand on what it serves; it logs every fetch.
#[derive(Clone, Default)]
struct Mirror {
    dir: Arc<Mutex<PathBuf>>,
    metadata: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    targets: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    fetches: Arc<Mutex<Vec<Fetch>>>,
}

impl Mirror {
    fn serve_metadata(&self, name: &str, bytes: Vec<u8>) {
        self.metadata.lock().unwrap().insert(name.into(), bytes);
    }
    fn serve_target(&self, path: &str, bytes: Vec<u8>) {
        self.targets.lock().unwrap().insert(path.into(), bytes);
    }
    fn file(&self, sub: &str, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.lock().unwrap().join(sub).join(name)).ok()
    }
    /// The fetches of `name` so far.
    fn fetches_of(&self, name: &str) -> Vec<Fetch> {
        self.fetches.lock().unwrap().iter().filter(|f| f.name == name).cloned().collect()
    }
    fn log(&self, name: &str, max_length: u64, handed: &sigstore_tuf::Result<Option<Vec<u8>>>) {
        let handed = handed.as_ref().ok().and_then(Option::as_ref).map_or(0, Vec::len);
        self.fetches.lock().unwrap().push(Fetch { name: name.into(), max_length, handed });
    }
    /// Serves another export from now on, with no attacker overrides.
    fn repoint(&self, other: &Mirror) {
        *self.dir.lock().unwrap() = other.dir.lock().unwrap().clone();
        self.metadata.lock().unwrap().clear();
        self.targets.lock().unwrap().clear();
    }
}

impl Repository for Mirror {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_length: u64) -> FetchFuture<'a> {
        let bytes = self.metadata.lock().unwrap().get(name).cloned().or_else(|| self.file("metadata", name));
        // A bounded transport, as the agent's is: it never hands over more than asked for.
        let answer = match bytes {
            Some(b) if b.len() as u64 > max_length => Err(sigstore_tuf::Error::transport(too_long(name, max_length))),
            other => Ok(other),
        };
        self.log(name, max_length, &answer);
        Box::pin(async move { answer })
    }

    fn fetch_target<'a>(&'a self, path: &'a str, max_length: u64) -> FetchFuture<'a> {
        // Deliberately unbounded: the verifier itself must catch endless data on targets.
        let answer = Ok(self.targets.lock().unwrap().get(path).cloned().or_else(|| self.file("targets", path)));
        self.log(path, max_length, &answer);
        Box::pin(async move { answer })
    }
}

struct Fixture {
    hub: TestHub,
    repo: TufRepo,
    offline: PathBuf,
    rng: SeededRng,
}

impl Fixture {
    fn new() -> Fixture {
        let hub = TestHub::new();
        let repo = TufRepo::new(&hub.dir(), Default::default());
        let offline = hub.tmp.path().join("offline");
        let mut rng = SeededRng::new(7);
        repo.generate(&offline, GenerateOptions::default(), &mut rng, NOW).unwrap();
        Fixture { hub, repo, offline, rng }
    }

    fn key(&self, name: &str) -> (Key, PathBuf) {
        let p = self.offline.join(name);
        (Key::load(&p).unwrap(), p)
    }

    /// Adds and publishes an affine package; returns its digest and target path.
    fn publish(&self, m: &AffineManifest, channel: &str) -> (Digest, String, PublishOutcome) {
        let reg = self.hub.open();
        let (model, manifest) = self.hub.write_affine(m);
        let added = reg.add(&model, &manifest).unwrap();
        let record = reg.record(&added.digest).unwrap().unwrap();
        let (_, parsed) = reg.manifest(&added.digest).unwrap();
        let (key, path) = self.key("targets-1.key");
        let out = self.repo.publish(&record, &parsed, channel, &key, &path, NOW).unwrap();
        let target = outpost_hub::tuf::target_path(&parsed);
        (added.digest, target, out)
    }

    fn mirror(&self) -> Mirror {
        let dir = self.hub.tmp.path().join(format!("export-{}", rand_suffix()));
        self.repo.export(&dir).unwrap();
        Mirror { dir: Arc::new(Mutex::new(dir)), ..Default::default() }
    }

    fn root(&self) -> Vec<u8> {
        std::fs::read(self.repo.metadata_dir().join("1.root.json")).unwrap()
    }

    fn updater(&self, mirror: &Mirror) -> Updater {
        Updater::new(mirror.clone(), &self.root()).unwrap()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The test mirror's refusal of metadata longer than the verifier's bound.
fn too_long(name: &str, max_length: u64) -> String {
    format!("{name}: more than {max_length} bytes")
}

/// The verifier's refusal; panics if it accepted.
fn refused<T>(r: Result<T, sigstore_tuf::Error>) -> sigstore_tuf::Error {
    match r {
        Ok(_) => panic!("expected the verifier to refuse"),
        Err(e) => e,
    }
}

/// The `signed.version` of a metadata file.
fn version_of(bytes: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["signed"]["version"].as_u64().unwrap()
}

#[tokio::test]
async fn hub_output_is_read_by_sigstore_tuf_updater() {
    let f = Fixture::new();
    let (digest, path, out) = f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    assert!(matches!(out, PublishOutcome::Published { .. }), "{out:?}");
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    let info = u.get_target_info(&path, ts(NOW + 60)).await.unwrap().expect("listed");
    assert_eq!(info.length, f.hub.open().record(&digest).unwrap().unwrap().package_len);
    let custom = serde_json::to_value(&info).unwrap();
    assert_eq!(custom["custom"]["outpost"]["capability"], "test.affine");
    assert_eq!(custom["custom"]["outpost"]["risk_tier"], "low");
    assert_eq!(custom["custom"]["outpost"]["channels"], serde_json::json!(["stable"]));
    let bytes = u.get_target(&path, ts(NOW + 60)).await.unwrap();
    assert_eq!(Digest::of(&bytes), digest);
    // The director's key is itself a TUF target.
    assert!(u.get_target_info(outpost_hub::tuf::DIRECTOR_TARGET, ts(NOW + 60)).await.unwrap().is_some());
}

#[tokio::test]
async fn rollback_attack_stale_timestamp_is_rejected() {
    let f = Fixture::new();
    f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let stale = std::fs::read(f.repo.metadata_dir().join("timestamp.json")).unwrap();
    f.publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let mirror = f.mirror();
    let trusted = version_of(&mirror.file("metadata", "timestamp.json").unwrap());
    let old = version_of(&stale);
    assert!(old < trusted);
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    mirror.serve_metadata("timestamp.json", stale);
    let e = refused(u.refresh(ts(NOW + 120)).await);
    assert!(
        matches!(&e, sigstore_tuf::Error::Rollback { role, trusted: t, new } if role == "timestamp" && *t == trusted && *new == old),
        "{e:?}"
    );
}

#[tokio::test]
async fn freeze_attack_expired_timestamp_is_rejected() {
    let f = Fixture::new();
    f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    // The mirror keeps serving the same (validly signed) metadata; a day and a bit later it has expired. Root
    // (a year), targets (90 days) and snapshot (7 days) are all still fresh: only the timestamp can be refused.
    let e = refused(u.refresh(ts(NOW + f.repo.expiries().timestamp_secs + 1)).await);
    let expired_at = ts(NOW + f.repo.expiries().timestamp_secs);
    assert!(
        matches!(&e, sigstore_tuf::Error::Expired { role, expires } if role == "timestamp" && *expires == expired_at),
        "{e:?}"
    );
}

#[tokio::test]
async fn expired_root_is_rejected() {
    let f = Fixture::new();
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    let root_secs = f.repo.expiries().root_secs;
    let e = refused(u.refresh(ts(NOW + root_secs + 86_400)).await);
    let expired_at = ts(NOW + root_secs);
    assert!(
        matches!(&e, sigstore_tuf::Error::Expired { role, expires } if role == "root" && *expires == expired_at),
        "{e:?}"
    );
}

#[tokio::test]
async fn mix_and_match_snapshot_from_another_version_is_rejected() {
    let f = Fixture::new();
    f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let old_snapshot_version = f.repo.latest_version("snapshot").unwrap();
    f.publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let new_snapshot_version = f.repo.latest_version("snapshot").unwrap();
    let mirror = f.mirror();
    let old = mirror.file("metadata", &format!("{old_snapshot_version}.snapshot.json")).unwrap();
    let new = mirror.file("metadata", &format!("{new_snapshot_version}.snapshot.json")).unwrap();
    // The timestamp pins the snapshot's length and hash: whichever differs first is what gives the swap away.
    let expected = if old.len() == new.len() {
        "snapshot.json: sha256 mismatch".to_owned()
    } else {
        format!("snapshot.json: length {} != pinned {}", old.len(), new.len())
    };
    mirror.serve_metadata(&format!("{new_snapshot_version}.snapshot.json"), old);
    let e = refused(f.updater(&mirror).refresh(ts(NOW + 60)).await);
    assert!(matches!(&e, sigstore_tuf::Error::IntegrityMismatch(m) if *m == expected), "{e:?}");
}

#[tokio::test]
async fn mix_and_match_targets_from_another_version_is_rejected() {
    let f = Fixture::new();
    f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let old = f.repo.latest_version("standard").unwrap();
    let (_, path, _) = f.publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let new = f.repo.latest_version("standard").unwrap();
    let mirror = f.mirror();
    let old_bytes = mirror.file("metadata", &format!("{old}.standard.json")).unwrap();
    mirror.serve_metadata(&format!("{new}.standard.json"), old_bytes);
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    // The snapshot pins delegated roles by version only (no length or hash), so the version is what refuses it.
    let e = refused(u.get_target_info(&path, ts(NOW + 60)).await);
    let expected = format!("standard.json version {old} does not match snapshot pin {new}");
    assert!(matches!(&e, sigstore_tuf::Error::IntegrityMismatch(m) if *m == expected), "{e:?}");
}

#[tokio::test]
async fn endless_data_target_larger_than_declared_is_rejected() {
    let f = Fixture::new();
    let (digest, path, _) = f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mirror = f.mirror();
    let stored = director::stored_target_path(&path, &digest);
    let mut bytes = mirror.file("targets", &stored).unwrap();
    let declared = bytes.len() as u64;
    bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
    mirror.serve_target(&stored, bytes);
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    let e = refused(u.get_target(&path, ts(NOW + 60)).await);
    let expected = format!("{path}: length {} != pinned {declared}", declared + (1 << 20));
    assert!(matches!(&e, sigstore_tuf::Error::IntegrityMismatch(m) if *m == expected), "{e:?}");
    // The bound a transport must hold is the length TUF lists (the agent's transports cut there, see the agent's
    // quic and mirror tests); this mirror ignored it and the verifier still refused.
    let fetched = mirror.fetches_of(&stored);
    assert_eq!(fetched.len(), 1, "{fetched:?}");
    assert_eq!(fetched[0].max_length, declared);
}

#[tokio::test]
async fn endless_data_metadata_larger_than_limit_is_refused() {
    let f = Fixture::new();
    let mirror = f.mirror();
    let mut ts_bytes = mirror.file("metadata", "timestamp.json").unwrap();
    ts_bytes.extend(std::iter::repeat_n(b' ', 64 * 1024));
    mirror.serve_metadata("timestamp.json", ts_bytes);
    // Trailing whitespace is still valid JSON with a valid signature: only the length bound the verifier passes
    // to the transport (sigstore-tuf's default for timestamp.json) stops it, and nothing reaches the parser.
    let bound = sigstore_tuf::UpdaterConfig::default().timestamp_max_length;
    let e = refused(f.updater(&mirror).refresh(ts(NOW + 60)).await);
    let expected = too_long("timestamp.json", bound);
    assert!(matches!(&e, sigstore_tuf::Error::Transport { message, .. } if *message == expected), "{e:?}");
    assert_eq!(
        mirror.fetches_of("timestamp.json"),
        [Fetch { name: "timestamp.json".into(), max_length: bound, handed: 0 }]
    );
}

#[tokio::test]
async fn arbitrary_software_swapped_target_bytes_are_rejected() {
    let f = Fixture::new();
    let (digest, path, _) = f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mirror = f.mirror();
    let stored = director::stored_target_path(&path, &digest);
    let mut bytes = mirror.file("targets", &stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    mirror.serve_target(&stored, bytes);
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    let e = refused(u.get_target(&path, ts(NOW + 60)).await);
    let expected = format!("{path}: sha256 mismatch");
    assert!(matches!(&e, sigstore_tuf::Error::IntegrityMismatch(m) if *m == expected), "{e:?}");
}

#[tokio::test]
async fn high_risk_package_with_one_signature_is_not_installable() {
    let f = Fixture::new();
    let mut m = AffineManifest::new("risky", "1.0.0", 2.0, 1.0);
    m.risk_tier = "high".into();
    let (digest, path, out) = f.publish(&m, "stable");
    assert!(matches!(out, PublishOutcome::AwaitingSignatures { have: 1, need: 2, .. }), "{out:?}");

    // Not listed for devices while one signature short.
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    assert!(u.get_target_info(&path, ts(NOW + 60)).await.unwrap().is_none());

    // Even an attacker holding the hub's online snapshot and timestamp keys, serving the one-signature role
    // metadata as current, gets it refused: the threshold is checked on the role itself.
    let pending = std::fs::read(f.hub.dir().join("repository/pending/high-risk.json")).unwrap();
    let pending_version =
        serde_json::from_slice::<serde_json::Value>(&pending).unwrap()["signed"]["version"].as_u64().unwrap();
    mirror.serve_metadata(&format!("{pending_version}.high-risk.json"), pending);
    let snap_v = f.repo.latest_version("snapshot").unwrap();
    let mut snap: serde_json::Value =
        serde_json::from_slice(&mirror.file("metadata", &format!("{snap_v}.snapshot.json")).unwrap()).unwrap();
    snap["signed"]["version"] = serde_json::json!(snap_v + 1);
    snap["signed"]["meta"]["high-risk.json"]["version"] = serde_json::json!(pending_version);
    let snap = serde_json::to_vec(
        &outpost_hub::tuf::sign(&snap["signed"], &[&f.repo.online_key("snapshot").unwrap()]).unwrap(),
    )
    .unwrap();
    mirror.serve_metadata(&format!("{}.snapshot.json", snap_v + 1), snap.clone());
    let mut tsj: serde_json::Value =
        serde_json::from_slice(&mirror.file("metadata", "timestamp.json").unwrap()).unwrap();
    tsj["signed"]["version"] = serde_json::json!(tsj["signed"]["version"].as_u64().unwrap() + 1);
    tsj["signed"]["meta"]["snapshot.json"] = serde_json::json!({
        "version": snap_v + 1, "length": snap.len(), "hashes": {"sha256": Digest::of(&snap).to_hex()}});
    let tsj = outpost_hub::tuf::sign(&tsj["signed"], &[&f.repo.online_key("timestamp").unwrap()]).unwrap();
    mirror.serve_metadata("timestamp.json", serde_json::to_vec(&tsj).unwrap());
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    let e = refused(u.get_target_info(&path, ts(NOW + 60)).await);
    assert!(
        matches!(&e, sigstore_tuf::Error::ThresholdNotMet { role, found: 1, threshold: 2 } if role == "high-risk"),
        "{e:?}"
    );

    // The same key signing twice does not make two signatures.
    let (k1, p1) = f.key("targets-1.key");
    let again = f.repo.sign_pending(&digest, &k1, &p1, NOW).unwrap();
    assert!(matches!(again, PublishOutcome::AwaitingSignatures { have: 1, .. }), "{again:?}");

    // A second, distinct key makes it installable.
    let (k2, p2) = f.key("targets-2.key");
    let done = f.repo.sign_pending(&digest, &k2, &p2, NOW).unwrap();
    assert!(matches!(done, PublishOutcome::Published { .. }), "{done:?}");
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    assert_eq!(Digest::of(&u.get_target(&path, ts(NOW + 60)).await.unwrap()), digest);
}

#[tokio::test]
async fn key_not_authorised_for_the_role_is_refused() {
    let f = Fixture::new();
    let reg = f.hub.open();
    let m = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    let (model, manifest) = f.hub.write_affine(&m);
    let d = reg.add(&model, &manifest).unwrap().digest;
    let (root_key, root_path) = f.key("root-1.key");
    let e = f
        .repo
        .publish(&reg.record(&d).unwrap().unwrap(), &reg.manifest(&d).unwrap().1, "stable", &root_key, &root_path, NOW)
        .unwrap_err();
    assert!(
        matches!(&e, TufError::NotAuthorised { role, keyid, path, .. }
            if role == "standard" && *keyid == root_key.keyid && *path == root_path),
        "{e:?}"
    );
}

#[tokio::test]
async fn key_rotation_recovers_from_fast_forward_attack() {
    let mut f = Fixture::new();
    f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();

    // An attacker with the stolen timestamp key fast-forwards the timestamp to a huge version.
    let stolen = f.repo.online_key("timestamp").unwrap();
    let mut forged: serde_json::Value =
        serde_json::from_slice(&mirror.file("metadata", "timestamp.json").unwrap()).unwrap();
    forged["signed"]["version"] = serde_json::json!(1_000_000);
    let forged = outpost_hub::tuf::sign(&forged["signed"], &[&stolen]).unwrap();
    mirror.serve_metadata("timestamp.json", serde_json::to_vec(&forged).unwrap());
    u.refresh(ts(NOW + 120)).await.unwrap();

    // The hub rotates the timestamp key (root v2, signed by the root key) and signs a normal timestamp.
    let root = f.key("root-1.key");
    f.repo.rotate("timestamp", &f.offline, &[root], &mut f.rng, NOW).unwrap();
    let recovered = f.mirror();
    // The same client, still trusting timestamp v1000, now fetches from the recovered repository: it walks to
    // root v2, drops the fast-forwarded timestamp, and accepts the lower version under the new key.
    mirror.repoint(&recovered);
    u.refresh(ts(NOW + 180)).await.unwrap();
    assert_eq!(u.trusted().root().version, 2);
    assert!(u.trusted().timestamp().unwrap().version < 1_000_000);
}

#[tokio::test]
async fn root_rotation_is_walked_and_signed_by_old_and_new_keys() {
    let mut f = Fixture::new();
    let old_root = f.key("root-1.key");
    let written = f.repo.rotate("root", &f.offline, std::slice::from_ref(&old_root), &mut f.rng, NOW).unwrap();
    let new_root = Key::load(&written[0]).unwrap();
    let two: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.repo.metadata_dir().join("2.root.json")).unwrap()).unwrap();
    let signers: Vec<&str> =
        two["signatures"].as_array().unwrap().iter().map(|s| s["keyid"].as_str().unwrap()).collect();
    assert!(signers.contains(&old_root.0.keyid.as_str()) && signers.contains(&new_root.keyid.as_str()));
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    assert_eq!(u.trusted().root().version, 2);
}

#[tokio::test]
async fn stolen_online_key_assignment_to_unlisted_target_is_rejected() {
    let f = Fixture::new();
    let (digest, path, _) = f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    let device = [9u8; 32];
    let director = f.repo.online_key("director").unwrap();
    let seal = |a: &Assignment| {
        director::seal(a, director::ASSIGNMENT_DOMAIN, &director.public_bytes(), |m| {
            use ed25519_dalek::Signer;
            director.signing.sign(m).to_bytes()
        })
        .unwrap()
    };
    let assignment = |path: &str, sha: Digest| Assignment {
        device: hex::encode(device),
        version: 1,
        expires: NOW + 3600,
        targets: vec![AssignedTarget {
            path: path.into(),
            length: f.hub.open().record(&digest).unwrap().unwrap().package_len,
            sha256: sha,
            release: "r1".into(),
            channel: "stable".into(),
            rollout: String::new(),
            retry: 0,
        }],
        secondaries: vec![],
        shadow: None,
        router: None,
    };
    let mut listed = HashMap::new();
    for p in [path.as_str(), "packages/low/evil-6.6.6.opkg"] {
        if let Some(t) = u.get_target_info(p, ts(NOW + 60)).await.unwrap() {
            let sha: Digest = t.hashes["sha256"].parse().unwrap();
            listed.insert(p.to_owned(), ListedTarget { length: t.length, sha256: sha });
        }
    }
    let lookup = |p: &str| listed.get(p).cloned();
    // The honest assignment passes; one naming a target TUF does not list, or other bytes, does not.
    let ok: Assignment =
        director::open(&seal(&assignment(&path, digest)), director::ASSIGNMENT_DOMAIN, &director.public_bytes())
            .unwrap();
    director::check_assignment(&ok, &device, 0, NOW + 60, lookup).unwrap();
    for evil in [assignment("packages/low/evil-6.6.6.opkg", digest), assignment(&path, Digest::of(b"evil"))] {
        let opened: Assignment =
            director::open(&seal(&evil), director::ASSIGNMENT_DOMAIN, &director.public_bytes()).unwrap();
        let e = director::check_assignment(&opened, &device, 0, NOW + 60, lookup).unwrap_err();
        assert!(matches!(e, director::DirectorError::NotInTargets { .. }), "{e}");
    }
}

#[tokio::test]
async fn timestamp_and_snapshot_are_resigned_before_they_expire() {
    let f = Fixture::new();
    let e = f.repo.expiries();
    let before_margin = NOW + e.timestamp_secs - e.resign_margin_secs - 10;
    assert!(!f.repo.refresh_online(before_margin).unwrap(), "nothing to do while fresh");
    let in_margin = NOW + e.timestamp_secs - e.resign_margin_secs + 1;
    assert!(f.repo.refresh_online(in_margin).unwrap());
    // After the first timestamp's expiry, a client still refreshes: the re-signed one is valid.
    let mirror = f.mirror();
    f.updater(&mirror).refresh(ts(NOW + e.timestamp_secs + 60)).await.unwrap();
}

#[tokio::test]
async fn director_key_rotation_goes_through_tuf() {
    let mut f = Fixture::new();
    let old = f.repo.online_key("director").unwrap().public_bytes();
    let (tk, tp) = f.key("targets-1.key");
    f.repo.rotate_director(&tk, &tp, &mut f.rng, NOW).unwrap();
    let new = f.repo.online_key("director").unwrap().public_bytes();
    assert_ne!(old, new);
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    let doc = u.get_target(outpost_hub::tuf::DIRECTOR_TARGET, ts(NOW + 60)).await.unwrap();
    assert_eq!(outpost_hub::director::director_key_from_target(&doc), Some(new), "TUF now vouches for the new key");
    // A targets-role key is required: a delegated-only key cannot list a new director.
    let (k2, p2) = f.key("targets-2.key");
    let e = f.repo.rotate_director(&k2, &p2, &mut f.rng, NOW).unwrap_err();
    assert!(
        matches!(&e, TufError::NotAuthorised { role, keyid, .. } if role == "targets" && *keyid == k2.keyid),
        "{e:?}"
    );
    assert_eq!(f.repo.online_key("director").unwrap().public_bytes(), new, "the refused rotation changed nothing");
}

/// Every file the committed timestamp pins is on disk and matches it: the snapshot by length and hash, the targets
/// roles it pins by name. Returns the timestamp's version.
fn assert_consistent(repo: &TufRepo) -> u64 {
    let dir = repo.metadata_dir();
    let ts: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("timestamp.json")).unwrap()).unwrap();
    let pin = &ts["signed"]["meta"]["snapshot.json"];
    let v = pin["version"].as_u64().unwrap();
    let snap = std::fs::read(dir.join(format!("{v}.snapshot.json"))).unwrap_or_else(|e| {
        panic!("timestamp v{} pins snapshot v{v}, not on disk: {e}", version_of(&ts.to_string().into_bytes()))
    });
    assert_eq!(pin["length"].as_u64(), Some(snap.len() as u64), "snapshot v{v} is not the one the timestamp pins");
    assert_eq!(pin["hashes"]["sha256"].as_str(), Some(Digest::of(&snap).to_hex().as_str()), "snapshot v{v} hash");
    let snap: serde_json::Value = serde_json::from_slice(&snap).unwrap();
    for (name, m) in snap["signed"]["meta"].as_object().unwrap() {
        let file = format!("{}.{name}", m["version"].as_u64().unwrap());
        assert!(dir.join(&file).exists(), "snapshot v{v} pins {file}, not on disk");
    }
    ts["signed"]["version"].as_u64().unwrap()
}

/// Re-signs from `threads` threads at once, each with its own `TufRepo` (as the serving hub's job and an admin
/// command have), every call at a later time than the last so each one re-signs. Returns how many did.
fn resign_concurrently(dir: &std::path::Path, threads: usize, each: usize) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (clock, resigned) = (AtomicU64::new(1), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let repo = TufRepo::new(dir, Default::default());
                for _ in 0..each {
                    let now = NOW + clock.fetch_add(1, Ordering::SeqCst) * 10 * 86_400;
                    if repo.refresh_online(now).expect("re-signing") {
                        resigned.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    resigned.into_inner()
}

#[test]
fn concurrent_resigning_is_serialised() {
    let f = Fixture::new();
    let resigned = resign_concurrently(&f.hub.dir(), 4, 10);
    assert!(resigned > 0);
    // Each re-signing wrote the next version: none was lost to another writing the same one.
    assert_eq!(assert_consistent(&f.repo), 1 + resigned);
    assert_eq!(f.repo.latest_version("snapshot").unwrap(), 1 + resigned);
}

#[test]
fn a_reader_never_sees_a_timestamp_for_an_unwritten_snapshot() {
    let f = Fixture::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut reads = 0;
    std::thread::scope(|s| {
        s.spawn(|| {
            resign_concurrently(&f.hub.dir(), 3, 15);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            assert_consistent(&f.repo);
            reads += 1;
        }
    });
    assert!(reads > 0);
}

#[tokio::test]
async fn a_publish_interrupted_before_its_commit_is_never_published() {
    let f = Fixture::new();
    let (_, path, _) = f.publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    // A publish wrote its next role version and died before committing it: the file is there, unpinned.
    let v = f.repo.latest_version("standard").unwrap();
    let dir = f.repo.metadata_dir();
    let mut orphan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{v}.standard.json"))).unwrap()).unwrap();
    orphan["signed"]["version"] = serde_json::json!(v + 1);
    let entry = orphan["signed"]["targets"][&path].clone();
    orphan["signed"]["targets"]["packages/low/never-committed"] = entry;
    std::fs::write(dir.join(format!("{}.standard.json", v + 1)), serde_json::to_vec(&orphan).unwrap()).unwrap();
    // The serving hub's next re-signing does not pick it up, and the next publish is built on what was committed.
    assert!(f.repo.refresh_online(NOW + 30 * 86_400).unwrap());
    assert_eq!(f.repo.latest_version("standard").unwrap(), v);
    let (_, second, _) = f.publish(&AffineManifest::new("affine", "1.1.0", 2.0, 1.0), "stable");
    assert_eq!(f.repo.latest_version("standard").unwrap(), v + 1);
    let mirror = f.mirror();
    let mut u = f.updater(&mirror);
    u.refresh(ts(NOW + 60)).await.unwrap();
    assert!(u.get_target_info(&second, ts(NOW + 60)).await.unwrap().is_some());
    assert!(u.get_target_info("packages/low/never-committed", ts(NOW + 60)).await.unwrap().is_none());
}

/// A hub whose keys were made by the real CLI (at the real time, as the CLI's clock has it).
fn cli_repository() -> (TestHub, PathBuf) {
    let hub = TestHub::new();
    let offline = hub.tmp.path().join("offline");
    let out = hub.cli(&["keys", "generate", "--offline-dir", offline.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (hub, offline)
}

/// The time the CLI last signed at: the timestamp's expiry less its period.
fn signed_at(repo: &TufRepo) -> u64 {
    let ts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.metadata_dir().join("timestamp.json")).unwrap()).unwrap();
    let expires: jiff::Timestamp = ts["signed"]["expires"].as_str().unwrap().parse().unwrap();
    expires.as_second() as u64 - repo.expiries().timestamp_secs
}

/// A client that trusts root v1 refreshes from an export of the repository as it is on disk now.
async fn client_refreshes(hub: &TestHub, repo: &TufRepo) -> Result<Updater, sigstore_tuf::Error> {
    let export = hub.tmp.path().join(format!("export-{}", rand_suffix()));
    repo.export(&export).unwrap();
    let mirror = Mirror { dir: Arc::new(Mutex::new(export)), ..Default::default() };
    let root = std::fs::read(repo.metadata_dir().join("1.root.json")).unwrap();
    let mut u = Updater::new(mirror, &root).unwrap();
    u.refresh(ts(signed_at(repo) + 60)).await.map(|()| u)
}

/// `keys rotate timestamp` with the offline keys in `offline`.
fn rotate_timestamp_args(offline: &std::path::Path) -> Vec<String> {
    let root_key = offline.join("root-1.key");
    [
        "keys",
        "rotate",
        "timestamp",
        "--offline-dir",
        offline.to_str().unwrap(),
        "--root-key",
        root_key.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn a_rotation_interrupted_after_the_root_write_leaves_a_working_repository() {
    use support::faultfs::{Fault, Op};
    let (hub, offline) = cli_repository();
    let repo = TufRepo::new(&hub.dir(), Default::default());
    let old = repo.online_key("timestamp").unwrap();
    // The process dies (here: fails) right after root v2 is written, before the new key replaces the old one.
    let fault = Fault::disk_full(&hub.dir().join("keys/timestamp.key.next"), hub.tmp.path()).ops(&[Op::Rename]).eio();
    let rotate = rotate_timestamp_args(&offline);
    let out = hub.cli_faulty(&fault, &args(&rotate));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timestamp.key.next") && stderr.contains("Input/output error"), "{stderr}");
    assert_eq!(fault.injected().len(), 1, "{:?}", fault.injected());
    assert_eq!(repo.latest_version("root").unwrap(), 2, "the fault hit after the root write");
    // Clients work as it is: they walk to root v2 and accept the timestamp, signed by the old and the new key.
    let u = client_refreshes(&hub, &repo).await.expect("a working repository after the interruption");
    assert_eq!(u.trusted().root().version, 2);
    // The next re-signing (the serving hub's, or `repo refresh`) finishes the rotation.
    fault.lift();
    let out = hub.cli(&["repo", "refresh"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(repo.online_key("timestamp").unwrap().keyid, old.keyid);
    assert!(!hub.dir().join("keys/timestamp.key.next").exists());
    let ts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.metadata_dir().join("timestamp.json")).unwrap()).unwrap();
    let signers: Vec<&str> =
        ts["signatures"].as_array().unwrap().iter().map(|s| s["keyid"].as_str().unwrap()).collect();
    assert_eq!(signers, vec![repo.online_key("timestamp").unwrap().keyid.as_str()]);
    client_refreshes(&hub, &repo).await.expect("a working repository after the rotation finished");
}

#[tokio::test]
async fn a_rotation_that_cannot_write_its_root_keeps_the_old_key_working() {
    use support::faultfs::Fault;
    let (hub, offline) = cli_repository();
    let repo = TufRepo::new(&hub.dir(), Default::default());
    let old = repo.online_key("timestamp").unwrap();
    // The disk holding the metadata is full: no root v2 (nor anything else) can be written there.
    let fault = Fault::disk_full(&repo.metadata_dir(), hub.tmp.path());
    let rotate = rotate_timestamp_args(&offline);
    let out = hub.cli_faulty(&fault, &args(&rotate));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device") && stderr.contains("metadata"), "{stderr}");
    assert!(!fault.injected().is_empty());
    fault.lift();
    // Nothing changed for clients, and the hub goes on signing with the key root v1 names.
    assert_eq!(repo.latest_version("root").unwrap(), 1);
    assert_eq!(repo.online_key("timestamp").unwrap().keyid, old.keyid);
    let out = hub.cli(&["repo", "refresh"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    client_refreshes(&hub, &repo).await.expect("still a working repository");
    // And the same rotation succeeds once there is space.
    let out = hub.cli(&args(&rotate));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(client_refreshes(&hub, &repo).await.unwrap().trusted().root().version, 2);
}
