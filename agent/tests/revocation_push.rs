//! Revocation reaches connected agents at once: the serving hub pushes a notice on each open connection when the
//! revocation list moves, the agent checks straight away (re-verifying through TUF and the signed list as always)
//! and falls back to its last good package, without waiting for its next poll.

mod support;

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, init_device};
use outpost_attestation::identity::Identity;
use outpost_hub::backend::HubBackend;
use outpost_hub::director::Director;
use outpost_hub::tuf::TufRepo;
use outpost_net::server::{ServeConfig, Server, push_revocations};
use outpost_shared::clock::Clock;
use outpost_shared::testkit::AffineManifest;
use support::World;

/// A serving hub that pushes revocation notices (checking its list every 50 ms), and an approved device's agent
/// on channel `stable` that confirms a package after one good inference.
fn serving_hub_and_agent(w: &World) -> Agent {
    let backend = Arc::new(HubBackend::new(&w.dir, TufRepo::new(&w.dir, Default::default()), w.clock.clone()));
    let mut serve = ServeConfig::new(Identity::from_seed([1; 32]));
    serve.bind = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(serve, backend).unwrap();
    let addr = server.local_addr().unwrap();
    let dir = w.dir.clone();
    tokio::spawn(push_revocations(server.notifier(), Duration::from_millis(50), move || {
        Director::new(&TufRepo::new(&dir, Default::default())).revocations().ok().map(|l| l.version)
    }));
    tokio::spawn(server.run(std::future::pending()));

    let dev = w.tmp.path().join("dev");
    let key = init_device(&dev, &w.root(), [7; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = config::render(&addr.to_string(), &Identity::from_seed([1; 32]).public_key().to_hex())
        .replace("health_inferences = 20", "health_inferences = 1");
    std::fs::write(dev.join("agent.toml"), &text).unwrap();
    Agent::open(AgentConfig::parse(&text, &dev.join("agent.toml")).unwrap(), w.clock.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_package_is_pushed_to_a_connected_agent_which_falls_back_at_once() {
    let w = World::new();
    let mut agent = serving_hub_and_agent(&w);

    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    agent.check().await.unwrap();
    agent.record_inference(true).unwrap();
    w.clock.advance(Duration::from_secs(2));
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    agent.check().await.unwrap();
    agent.record_inference(true).unwrap();
    assert_eq!(agent.active().map(|m| *m.digest()), Some(v2));

    let mut notices = agent.notices().expect("connected");
    tokio::time::sleep(Duration::from_millis(200)).await; // the watcher has seen the current list
    Director::new(&w.repo).revoke(v2, "field regression", w.clock.wall()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), notices.changed())
        .await
        .expect("the notice arrives on the open connection, long before any poll")
        .unwrap();
    assert_eq!(*notices.borrow(), 1, "revocation list v1 announced");
    agent.check().await.unwrap();
    assert_eq!(agent.active().map(|m| *m.digest()), Some(v1), "back on the last good package");
}

/// An update loop asks for the notices receiver after every check. The notice that woke it was acted on by that
/// check: the receiver it gets next must not report it again, or the loop checks again at once, for ever (the
/// soak found every agent on the hub checking ~140 times a second after one revocation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_notice_the_agent_has_checked_does_not_wake_it_again() {
    let w = World::new();
    let mut agent = serving_hub_and_agent(&w);
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    agent.check().await.unwrap();

    let mut notices = agent.notices().expect("connected");
    tokio::time::sleep(Duration::from_millis(200)).await; // the watcher has seen the current list
    Director::new(&w.repo).revoke(v1, "field regression", w.clock.wall()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), notices.changed()).await.expect("the notice arrives").unwrap();
    agent.check().await.unwrap(); // the only package is revoked: nothing to run, nothing wrong

    let again = agent.notices().expect("still connected");
    assert_eq!(*again.borrow(), 1, "the same connection, revocation list v1 announced");
    assert!(!again.has_changed().unwrap(), "the notice the last check acted on is not news");
}
