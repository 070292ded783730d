//! The agent reading TUF metadata and packages from a static mirror of the hub's repository (`repo export` served
//! over real HTTPS or HTTP on loopback) while the hub still assigns: adoption, resumed downloads, and a mirror that
//! tampers, swaps the director key or rolls back — plus `outpost-tuf-conformance` driving the same path.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::device::Layout;
use outpost_agent::driver::{Agent, CheckError, init_device};
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use outpost_shared::{Digest, director};
use support::World;
use support::mirror::StaticMirror;

/// A device whose agent.toml points at `mirror` (and its CA, for HTTPS) for TUF, and at the served hub for the rest.
async fn device_via(w: &World, name: &str, mirror: &StaticMirror) -> Agent {
    device_via_with(w, name, mirror, |text| text).await
}

/// Like [`device_via`], with its agent.toml passed through `edit` first.
async fn device_via_with(w: &World, name: &str, mirror: &StaticMirror, edit: impl Fn(String) -> String) -> Agent {
    let (addr, hub_key) = w.serve().await;
    let dir = w.tmp.path().join(name);
    let key = init_device(&dir, &w.root(), [7; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let mut hub_lines = format!("mirror = \"{}\"\n", mirror.url);
    if let Some(ca) = &mirror.ca {
        hub_lines.push_str(&format!("mirror_ca = \"{}\"\n", ca.display()));
    }
    let text = edit(
        config::render(&addr.to_string(), &hub_key.to_hex()).replace("\n[device]", &format!("{hub_lines}\n[device]")),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let config = AgentConfig::parse(&text, &path).unwrap();
    assert!(config.mirror.is_some(), "{text}");
    Agent::open(config, w.clock.clone()).unwrap()
}

/// Exports the hub's repository into a fresh directory.
fn export(w: &World, name: &str) -> PathBuf {
    let out = w.tmp.path().join(name);
    w.repo.export(&out).unwrap();
    out
}

/// Where the export holds a package's bytes.
fn package_file(export: &Path, target_path: &str, digest: &Digest) -> PathBuf {
    export.join("targets").join(director::stored_target_path(target_path, digest))
}

fn requested(mirror: &StaticMirror, prefix: &str) -> Vec<support::mirror::Logged> {
    mirror.requests().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_adopts_a_package_with_metadata_and_bytes_from_an_https_mirror() {
    let w = World::new();
    let (v1, path) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let exported = export(&w, "export");
    let mirror = StaticMirror::https(&exported, w.tmp.path()).await;
    let mut agent = device_via(&w, "dev", &mirror).await;

    agent.check().await.unwrap();
    assert!(matches!(agent.state().phase, Phase::Health { .. }), "{:?}", agent.state().phase);
    assert_eq!(agent.active().map(|a| *a.digest()), Some(v1));
    assert!(!requested(&mirror, "/metadata/timestamp.json").is_empty(), "{:?}", mirror.requests());
    assert!(!requested(&mirror, "/targets/director/").is_empty(), "the director key came from the mirror");
    let package = format!("/targets/{}", director::stored_target_path(&path, &v1));
    assert_eq!(requested(&mirror, &package).len(), 1, "the package came from the mirror: {:?}", mirror.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_download_from_a_mirror_resumes_with_a_range_request() {
    let w = World::new();
    let (v1, path) = w.add_and_publish_sized(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable", 50_000);
    let exported = export(&w, "export");
    let mirror = StaticMirror::http(&exported).await;
    let mut agent = device_via(&w, "dev", &mirror).await;
    let bytes = std::fs::read(package_file(&exported, &path, &v1)).unwrap();
    let half = bytes.len() / 2;
    let staging = Layout::new(&w.tmp.path().join("dev")).staging(&v1);
    std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
    std::fs::write(&staging, &bytes[..half]).unwrap();

    agent.check().await.unwrap();
    assert_eq!(agent.active().map(|a| *a.digest()), Some(v1));
    let package = requested(&mirror, &format!("/targets/{}", director::stored_target_path(&path, &v1)));
    assert_eq!(package.len(), 1, "{package:?}");
    assert_eq!(package[0].range.as_deref(), Some(format!("bytes={half}-").as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serving_a_tampered_package_is_refused_and_nothing_is_installed() {
    let w = World::new();
    let (v1, path) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let exported = export(&w, "export");
    let file = package_file(&exported, &path, &v1);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    // The export keeps the blobs' read-only mode; the attacker doesn't.
    perms.set_readonly(false);
    std::fs::set_permissions(&file, perms).unwrap();
    std::fs::write(&file, &bytes).unwrap();
    let mirror = StaticMirror::https(&exported, w.tmp.path()).await;
    let mut agent = device_via(&w, "dev", &mirror).await;

    agent.check().await.unwrap();
    assert_eq!(agent.active().map(|a| *a.digest()), None);
    assert_eq!(agent.state().phase, Phase::Idle);
    let error = agent.state().last_error.clone().unwrap_or_default();
    assert!(error.contains("download of") && error.contains("TUF lists"), "{error}");
    assert!(!Layout::new(&w.tmp.path().join("dev")).staging(&v1).exists(), "tampered bytes are not kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sending_an_endless_package_is_cut_at_the_length_tuf_lists() {
    let w = World::new();
    let (v1, path) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let exported = export(&w, "export");
    let declared = std::fs::metadata(package_file(&exported, &path, &v1)).unwrap().len();
    let package = format!("/targets/{}", director::stored_target_path(&path, &v1));
    let (mirror, mut sent) = StaticMirror::http_endless(&exported, &package).await;
    let mut agent = device_via(&w, "dev", &mirror).await;

    agent.check().await.unwrap();
    assert_eq!(agent.active().map(|a| *a.digest()), None);
    // The download error reaches the state only as text: match the transport's refusal with its bound.
    let error = agent.state().last_error.clone().unwrap_or_default();
    let stored = director::stored_target_path(&path, &v1);
    assert!(error.ends_with(&format!("{stored}: more than the {declared} bytes allowed")), "{error}");
    // The sink (the staging file, kept for a resume) never held more than the declared length: the bound is checked
    // on each chunk before it is written.
    let staged = std::fs::metadata(Layout::new(&w.tmp.path().join("dev")).staging(&v1)).map_or(0, |m| m.len());
    assert!(staged <= declared, "{staged} bytes staged, {declared} declared");
    // And the client hung up: the endless body ended (its count includes what the kernel's socket buffers took).
    let accepted =
        tokio::time::timeout(std::time::Duration::from_secs(10), sent.recv()).await.expect("hung up").unwrap();
    assert!(accepted >= declared, "the mirror did send more than declared ({accepted} bytes)");
}

/// A mirror that announces the package's length and then sends one byte of it every 100 ms never trips the
/// client's per-read stall timeout (15 s) and never ends: it used to hold the update check, and with it the
/// agent's loop (health windows, signals, the next check), for as long as it liked. The check's overall
/// deadline cuts it off with its own error; the device keeps serving what it ran, drops the connection, and
/// schedules the next check, whose download resumes where this one stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_mirror_cannot_freeze_the_update_loop() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (mirror, mut sent) =
        StaticMirror::http_dripping(&export(&w, "export1"), "/nothing-yet", std::time::Duration::from_millis(100))
            .await;
    let deadline = std::time::Duration::from_secs(2);
    let mut agent =
        device_via_with(&w, "dev", &mirror, |t| t.replace("check_deadline_secs = 600", "check_deadline_secs = 2"))
            .await;
    support::adopt(&mut agent, 20).await;
    assert_eq!(agent.active().map(|a| *a.digest()), Some(v1));

    let (v2, path) = w.add_and_publish_sized(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable", 50_000);
    mirror.serve_from(&export(&w, "export2"));
    w.clock.advance(std::time::Duration::from_secs(2)); // the hub's caches move on
    mirror.misbehave_on(&format!("/targets/{}", director::stored_target_path(&path, &v2)));
    support::check_cut_at_deadline(&mut agent, deadline).await;
    assert_eq!(agent.active().map(|a| *a.digest()), Some(v1), "still serving v1");
    assert!(matches!(&agent.state().phase, Phase::Downloading { target } if target.digest == v2), "resumes next check");
    assert!(!agent.check_due(), "the next check is scheduled, not run back to back");
    // The peer was still dripping when the agent hung up on it: the stall timeout alone would not have helped.
    let dripped =
        tokio::time::timeout(std::time::Duration::from_secs(10), sent.recv()).await.expect("hung up").unwrap();
    assert!(dripped > 0 && dripped < 50_000, "{dripped} bytes dripped before the hang-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_swapping_the_director_key_is_refused() {
    let w = World::new();
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let exported = export(&w, "export");
    let director_dir = exported.join("targets/director");
    for entry in std::fs::read_dir(&director_dir).unwrap() {
        let file = entry.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let forged = text.replace(doc["public"].as_str().unwrap(), &"ab".repeat(32));
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, forged).unwrap();
    }
    let mirror = StaticMirror::http(&exported).await;
    let mut agent = device_via(&w, "dev", &mirror).await;

    let e = agent.check().await.unwrap_err();
    assert!(matches!(&e, CheckError::Tuf(sigstore_tuf::Error::IntegrityMismatch(_))), "{e}");
    assert_eq!(agent.active().map(|a| *a.digest()), None);
    assert_eq!(agent.state().assignment_version, 0, "no assignment was opened with the forged key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_rolling_back_the_timestamp_is_refused() {
    let w = World::new();
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let old = export(&w, "export-old");
    w.clock.advance(std::time::Duration::from_secs(2));
    w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let new = export(&w, "export-new");
    let mirror = StaticMirror::https(&new, w.tmp.path()).await;
    let mut agent = device_via(&w, "dev", &mirror).await;
    agent.check().await.unwrap();
    let tuf_dir = Layout::new(&w.tmp.path().join("dev")).tuf();
    let trusted = std::fs::read(tuf_dir.join("timestamp.json")).unwrap();
    assert_eq!(trusted, std::fs::read(new.join("metadata/timestamp.json")).unwrap());

    mirror.serve_from(&old);
    let e = agent.check().await.unwrap_err();
    assert!(matches!(&e, CheckError::Tuf(sigstore_tuf::Error::Rollback { role, .. }) if role == "timestamp"), "{e}");
    assert_eq!(std::fs::read(tuf_dir.join("timestamp.json")).unwrap(), trusted, "the newer timestamp stays trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_published_between_the_tuf_refresh_and_the_assignment_is_installed_in_the_same_check() {
    let w = World::new();
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let old = export(&w, "export-old");
    w.clock.advance(std::time::Duration::from_secs(2));
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let new = export(&w, "export-new");
    // The agent verifies metadata that does not list 1.1.0 yet; the hub's assignment, fetched next, names it.
    let mirror = StaticMirror::http(&old).await;
    mirror.switch_after("/targets/director/", &new);
    let mut agent = device_via(&w, "dev", &mirror).await;

    agent.check().await.unwrap();
    assert_eq!(agent.active().map(|a| *a.digest()), Some(v2));
    assert_eq!(requested(&mirror, "/metadata/timestamp.json").len(), 2, "{:?}", mirror.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_metadata_does_not_pile_up_one_file_per_snapshot_version() {
    let w = World::new();
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mirror = StaticMirror::http(&export(&w, "export-1")).await;
    let mut agent = device_via(&w, "dev", &mirror).await;
    agent.check().await.unwrap();
    w.clock.advance(std::time::Duration::from_secs(2));
    w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    mirror.serve_from(&export(&w, "export-2"));
    agent.check().await.unwrap();

    let tuf_dir = Layout::new(&w.tmp.path().join("dev")).tuf();
    let mut names: Vec<String> = std::fs::read_dir(&tuf_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["root.json", "root.last-good.json", "snapshot.json", "standard.json", "targets.json", "timestamp.json"],
        "only the unversioned trusted copies and the trusted root's second copy (the high-risk role was never needed)"
    );
}

/// Runs `outpost-tuf-conformance` with `args`; true if it exits 0.
fn conformance(args: &[&str]) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_outpost-tuf-conformance")).args(args).output().unwrap();
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "exit codes are 0 or 1, got {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    code == Some(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_cli_verifies_an_export_and_refuses_a_tampered_target() {
    let w = World::on_wall_clock();
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let exported = export(&w, "export");
    let mirror = StaticMirror::http(&exported).await;
    let (meta, targets) = (w.tmp.path().join("meta"), w.tmp.path().join("artifacts"));
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::create_dir_all(&targets).unwrap();
    let root = exported.join("metadata/1.root.json");
    let (meta_s, targets_s) = (meta.to_str().unwrap(), targets.to_str().unwrap());
    let (meta_url, targets_url) = (format!("{}/metadata", mirror.url), format!("{}/targets", mirror.url));
    let download = |name: &str| {
        let args = ["--metadata-dir", meta_s, "--metadata-url", &meta_url, "--target-name", name];
        let tail = ["--target-base-url", &targets_url, "--target-dir", targets_s, "download"];
        conformance(&[&args[..], &tail[..]].concat())
    };

    assert!(conformance(&["--metadata-dir", meta_s, "init", root.to_str().unwrap()]));
    assert!(mirror.requests().is_empty(), "init makes no request");
    assert!(conformance(&["--metadata-dir", meta_s, "--metadata-url", &meta_url, "refresh"]));
    for role in ["timestamp", "snapshot", "targets"] {
        let trusted = std::fs::read(meta.join(format!("{role}.json"))).unwrap();
        let version = serde_json::from_slice::<serde_json::Value>(&trusted).unwrap()["signed"]["version"].clone();
        let served = std::fs::read(exported.join(format!("metadata/{role}.json")))
            .or_else(|_| std::fs::read(exported.join(format!("metadata/{version}.{role}.json"))))
            .unwrap();
        assert_eq!(trusted, served, "{role}.json is kept as the exact bytes served");
    }
    assert!(download(outpost_shared::director::DIRECTOR_TARGET));
    let written = std::fs::read(targets.join("director%2Fdirector.json")).unwrap();
    let dir = std::fs::read_dir(exported.join("targets/director")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(written, std::fs::read(&dir).unwrap());

    // A mirror serving other bytes under the listed name: exit 1, nothing new written.
    std::fs::remove_file(&dir).unwrap();
    std::fs::write(&dir, b"{\"public\":\"forged\"}").unwrap();
    // Drop the verified copy the TUF store keeps, so the client has to fetch again.
    std::fs::remove_dir_all(meta.join("targets")).unwrap();
    std::fs::remove_file(targets.join("director%2Fdirector.json")).unwrap();
    assert!(!download(outpost_shared::director::DIRECTOR_TARGET));
    assert!(!targets.join("director%2Fdirector.json").exists());
}
