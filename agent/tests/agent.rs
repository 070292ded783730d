//! The agent as a device runs it, against a real hub over real QUIC: adoption, a package that fails its smoke
//! test on the device, a health-window failure that is rolled back and not retried, revocation, a tampered blob
//! on the hub, and a restart in the middle of a download.

mod support;

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::device::Layout;
use outpost_agent::driver::{Agent, init_device};
use outpost_hub::blobs::BlobStore;
use outpost_hub::director::Director;
use outpost_hub::registry::PackageRecord;
use outpost_shared::clock::Clock;
use outpost_shared::testkit::{AffineManifest, affine_model};
use outpost_shared::update::Phase;
use outpost_shared::{Digest, package};
use support::{NOW, World, active};

const HEALTH: u32 = 3;

async fn device(w: &World, name: &str, seed: u8) -> Agent {
    let (addr, hub_key) = w.serve().await;
    let dir = w.tmp.path().join(name);
    let key = init_device(&dir, &w.root(), [seed; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = config::render(&addr.to_string(), &hub_key.to_hex())
        .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"));
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Agent::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap()
}

/// Lets the hub's metadata cache and the clocks move on between publishes.
fn later(w: &World) {
    w.clock.advance(Duration::from_secs(2));
}

async fn adopt(agent: &mut Agent) {
    support::adopt(agent, HEALTH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_then_v2_adopted_and_revoked_v2_replaced_by_last_good() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "dev1", 1).await;
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v1));
    let slot1 = agent.state().active.as_ref().unwrap().slot;

    later(&w);
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v2));
    assert_eq!(agent.state().active.as_ref().unwrap().slot, slot1.other(), "v2 went into the other slot");

    later(&w);
    Director::new(&w.repo).revoke(v2, "field regression", w.clock.wall()).unwrap();
    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(v1), "the revoked package is replaced by the last good one");
    assert!(agent.state().revoked.contains(&v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_failing_its_smoke_test_on_the_device_is_never_activated() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "dev1", 1).await;
    adopt(&mut agent).await;

    // A package the hub's own checks would refuse, published around them (as a compromised build could):
    // its manifest expects bias 1.0, its model adds 9.0.
    later(&w);
    let manifest = AffineManifest::new("affine", "1.2.0", 2.0, 1.0).manifest();
    let bytes = package::encode(&manifest, &affine_model(2.0, 9.0));
    let (digest, _) = BlobStore::new(w.dir.join("blobs")).put(&bytes).unwrap();
    let record = PackageRecord {
        digest,
        name: manifest.name.clone(),
        version: manifest.version.to_string(),
        package_len: bytes.len() as u64,
        model_digest: Digest::of(b"unused"),
        model_len: 0,
        added_at: NOW,
    };
    w.publish_as(&record, &manifest, "stable");

    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(v1), "the broken package never served");
    assert!(agent.state().rolled_back.contains(&digest));
    assert!(
        agent.state().last_error.as_deref().unwrap_or_default().contains("smoke"),
        "{:?}",
        agent.state().last_error
    );
    // The hub still assigns it; the device does not try again.
    later(&w);
    agent.check().await.unwrap();
    assert_eq!(agent.state().phase, Phase::Idle);
    assert_eq!(active(&agent), Some(v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_window_failure_rolls_back_and_is_not_reinstalled() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "dev1", 1).await;
    adopt(&mut agent).await;
    let serving_v1 = agent.active().unwrap();
    later(&w);
    let (v4, _) = w.add_and_publish(&AffineManifest::new("affine", "1.3.0", 4.0, 1.0), "stable");
    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(v4));
    agent.record_inference(false).unwrap();
    assert_eq!(active(&agent), Some(v1), "rolled back to the last good package");
    assert!(Arc::ptr_eq(&serving_v1, &agent.active().unwrap()), "the model kept loaded is swapped back, not reloaded");
    later(&w);
    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(v1), "no reinstall loop");
    // The device reported its real state; the hub records the rollback and stops offering v4 to it.
    let key = outpost_attestation::identity::Identity::load(&w.tmp.path().join("dev1/identity.key")).unwrap();
    let record = w.registry().device(&key.public_key().to_hex()).unwrap().unwrap();
    assert!(record.rolled_back.contains(&v4), "{record:?}");
    assert_eq!(record.active, Some(v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_on_the_hub_is_rejected() {
    let w = World::new();
    let (digest, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    // The target file is a hard link to the write-once blob; an attacker on the hub's disk flips a byte.
    let blob = BlobStore::new(w.dir.join("blobs")).path_of(&digest);
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();

    let mut agent = device(&w, "dev1", 1).await;
    agent.check().await.unwrap();
    assert_eq!(active(&agent), None, "nothing unverified is ever activated");
    assert!(
        agent.state().last_error.as_deref().unwrap_or_default().contains("download"),
        "{:?}",
        agent.state().last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarted_mid_download_resumes() {
    let w = World::new();
    let (digest, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let full = std::fs::read(BlobStore::new(w.dir.join("blobs")).path_of(&digest)).unwrap();
    let agent = device(&w, "dev1", 1).await;
    // The agent had fetched half the package when it was killed.
    let layout = Layout::new(&w.tmp.path().join("dev1"));
    std::fs::create_dir_all(layout.staging(&digest).parent().unwrap()).unwrap();
    std::fs::write(layout.staging(&digest), &full[..full.len() / 2]).unwrap();
    drop(agent);
    let text = std::fs::read_to_string(w.tmp.path().join("dev1/agent.toml")).unwrap();
    let config = AgentConfig::parse(&text, &w.tmp.path().join("dev1/agent.toml")).unwrap();
    let mut agent = Agent::open(config, w.clock.clone()).unwrap();
    agent.check().await.unwrap();
    assert_eq!(active(&agent), Some(digest));
    assert!(!layout.staging(&digest).exists(), "the staging file is consumed once installed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_during_the_health_window_rolls_back_to_the_last_good_package() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "dev1", 1).await;
    adopt(&mut agent).await;
    later(&w);
    w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    agent.check().await.unwrap();
    drop(agent); // killed before the new package confirmed
    let path = w.tmp.path().join("dev1/agent.toml");
    let config = AgentConfig::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let agent = Agent::open(config, Arc::clone(&w.clock) as Arc<dyn Clock>).unwrap();
    assert_eq!(active(&agent), Some(v1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_trust_anchor_is_never_rewritten_by_a_check() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new();
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "dev1", 1).await;
    adopt(&mut agent).await;
    let root = w.tmp.path().join("dev1/tuf/root.json");
    let before = std::fs::metadata(&root).unwrap().ino();
    for _ in 0..3 {
        later(&w);
        agent.check().await.unwrap();
    }
    // A rewrite is a window in which a power cut can tear the only trust anchor the device has.
    assert_eq!(std::fs::metadata(&root).unwrap().ino(), before, "root.json was replaced though it did not change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_that_emptied_the_trusted_root_does_not_strand_the_device() {
    let w = World::new();
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut agent = device(&w, "dev1", 1).await;
    adopt(&mut agent).await;
    // What a power cut in the middle of an unsynced rewrite leaves behind.
    let root = w.tmp.path().join("dev1/tuf/root.json");
    std::fs::write(&root, b"").unwrap();

    later(&w);
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v2), "the device still updates, from its last good root");
    assert!(!std::fs::read(&root).unwrap().is_empty(), "root.json is whole again");
}

/// A UDP relay between one agent and the hub that can turn into a dripping peer: from `drip` on, it forwards one
/// datagram from the hub every 100 ms. QUIC stays alive (packets keep coming, so neither the idle timeout nor the
/// client's per-read stall timeout trips), and data crawls: what a slow or hostile site node looks like.
struct Relay {
    addr: std::net::SocketAddr,
    drip: Arc<std::sync::atomic::AtomicBool>,
}

async fn relay(hub: std::net::SocketAddr) -> Relay {
    use std::sync::atomic::Ordering;
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(hub).await.unwrap();
    let addr = front.local_addr().unwrap();
    let drip = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let agent = Arc::new(std::sync::Mutex::new(None));
    let (f, b, a) = (front.clone(), back.clone(), agent.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *a.lock().unwrap() = Some(from);
            let _ = b.send(&buf[..n]).await;
        }
    });
    let slow = drip.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = back.recv(&mut buf).await {
            if slow.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let to = *agent.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    Relay { addr, drip }
}

/// The same attack as `a_dripping_mirror_cannot_freeze_the_update_loop` (tests/mirror.rs) on the QUIC path: a hub
/// (or site node) whose answers come one datagram every 100 ms held the update check for as long as the package
/// took to crawl through. The check's overall deadline ends it; the device keeps serving v1, and once the peer
/// behaves the next check adopts v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_hub_over_quic_cannot_freeze_the_update_loop() {
    use std::sync::atomic::Ordering;
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (hub, hub_key) = w.serve().await;
    let relay = relay(hub).await;
    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [9; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = config::render(&relay.addr.to_string(), &hub_key.to_hex())
        .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"))
        .replace("check_deadline_secs = 600", "check_deadline_secs = 2");
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let mut agent = Agent::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap();
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v1));

    later(&w);
    let (v2, _) = w.add_and_publish_sized(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable", 100_000);
    relay.drip.store(true, Ordering::Relaxed);
    let deadline = Duration::from_secs(2);
    support::check_cut_at_deadline(&mut agent, deadline).await;
    assert_eq!(active(&agent), Some(v1), "still serving v1");
    assert!(!agent.check_due(), "the next check is scheduled, not run back to back");

    relay.drip.store(false, Ordering::Relaxed);
    adopt(&mut agent).await;
    assert_eq!(active(&agent), Some(v2), "the next check, on a peer that behaves, adopts v2");
}
