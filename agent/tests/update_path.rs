//! The trust half of the update path end to end: a real hub data directory (registry, TUF repository, director,
//! device registry) served over real QUIC, and the agent's client driving sigstore-tuf's `Updater` through it,
//! then checking its director bundle against the verified targets.

mod support;

use outpost_agent::transport::TufRepository;
use outpost_attestation::identity::Identity;
use outpost_hub::director::Director;
use outpost_net::client::{ClientConfig, HubClient};
use outpost_shared::director::{
    self, Assignment, Bundle, DIRECTOR_TARGET, DirectorKeyDoc, ListedTarget, RevocationList,
};
use outpost_shared::testkit::AffineManifest;
use outpost_shared::wire::codes;
use outpost_shared::{Digest, canonical};
use support::{NOW, World, connect_attested, ts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_verifies_hub_metadata_targets_and_assignment_over_quic() {
    let w = World::new();
    let (digest, path) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let device = Identity::from_seed([2; 32]);
    w.registry().device_approve(&device.public_key().to_hex(), "stable").unwrap();
    let (addr, hub_key) = w.serve().await;

    // TUF over QUIC, verified by sigstore-tuf.
    let hub = TufRepository::new(std::sync::Arc::new(connect_attested(&device, addr, hub_key).await));
    let mut updater = sigstore_tuf::Updater::new(hub, &w.root()).unwrap();
    updater.refresh(ts(NOW + 60)).await.unwrap();
    let info = updater.get_target_info(&path, ts(NOW + 60)).await.unwrap().expect("listed");
    let bytes = updater.get_target(&path, ts(NOW + 60)).await.unwrap();
    assert_eq!(Digest::of(&bytes), digest);
    let director_key =
        DirectorKeyDoc::parse(&updater.get_target(DIRECTOR_TARGET, ts(NOW + 60)).await.unwrap()).unwrap().public;

    // The director bundle, opened with the key TUF vouches for and checked against TUF's targets.
    let client = connect_attested(&device, addr, hub_key).await;
    let bundle: Bundle = canonical::from_slice(&client.assignment().await.unwrap().expect("assignment")).unwrap();
    let a: Assignment = director::open(&bundle.assignment, director::ASSIGNMENT_DOMAIN, &director_key).unwrap();
    assert_eq!(a.targets.len(), 1);
    assert_eq!(a.targets[0].sha256, digest);
    let listed = ListedTarget { length: info.length, sha256: info.hashes["sha256"].parse().unwrap() };
    director::check_assignment(&a, &device.public_key().0, 0, NOW + 60, |p| (p == path).then(|| listed.clone()))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_package_is_listed_and_no_longer_assigned() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let device = Identity::from_seed([2; 32]);
    w.registry().device_approve(&device.public_key().to_hex(), "stable").unwrap();
    let (addr, hub_key) = w.serve().await;
    let client = connect_attested(&device, addr, hub_key).await;
    let director_key = w.repo.online_key("director").unwrap().public_bytes();
    let fetch = || async {
        let bundle: Bundle = canonical::from_slice(&client.assignment().await.unwrap().unwrap()).unwrap();
        let a: Assignment = director::open(&bundle.assignment, director::ASSIGNMENT_DOMAIN, &director_key).unwrap();
        let r: RevocationList =
            director::open(&bundle.revocations, director::REVOCATIONS_DOMAIN, &director_key).unwrap();
        (a, r)
    };
    let (before, none) = fetch().await;
    assert_eq!(before.targets[0].sha256, v2, "the newest release on the channel is assigned");
    assert_eq!((none.version, none.revoked.len()), (0, 0), "before any revocation: an empty version-0 list");

    Director::new(&w.repo).revoke(v2, "regression in the field", NOW).unwrap();
    let (after, revocations) = fetch().await;
    assert_eq!(after.targets[0].sha256, v1, "the revoked package is replaced by the last good one");
    assert!(after.version > before.version, "a changed assignment gets a higher version");
    assert!(revocations.revoked.iter().any(|r| r.digest == v2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_refused_at_connection() {
    let w = World::new();
    let device = Identity::from_seed([2; 32]);
    w.registry().device_approve(&device.public_key().to_hex(), "stable").unwrap();
    w.registry().device_revoke(&device.public_key().to_hex()).unwrap();
    let (addr, hub_key) = w.serve().await;
    // The handshake may complete, but the hub closes before serving anything, with the reason it gives a
    // device it does not know (a revoked device learns nothing more).
    let err = match HubClient::connect(&device, &ClientConfig::new(addr, hub_key)).await {
        Err(e) => e,
        Ok(c) => c.metadata("timestamp.json", 16_384).await.unwrap_err(),
    };
    assert_eq!(err.close_reason(), Some((codes::CLOSE_UNKNOWN_DEVICE, "unknown device".to_owned())), "{err:?}");
}
