//! Telemetry from a real agent to a real hub over QUIC: update steps, errors and inference counts are queued
//! durably on the device, survive a hub outage and an agent restart, and reach the hub's store exactly once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, init_device};
use outpost_attestation::identity::Identity;
use outpost_hub::backend::HubBackend;
use outpost_hub::telemetry::{Filter, GroupBy, TelemetryStore};
use outpost_hub::tuf::TufRepo;
use outpost_net::server::{ServeConfig, Server};
use outpost_shared::testkit::AffineManifest;
use support::World;

/// Serves the hub on `addr` until the returned sender is dropped or fired.
async fn hub(w: &World, addr: std::net::SocketAddr) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let backend = Arc::new(HubBackend::new(&w.dir, TufRepo::new(&w.dir, Default::default()), w.clock.clone()));
    let mut config = ServeConfig::new(Identity::from_seed([1; 32]));
    config.bind = addr;
    let server = Server::bind(config, backend).unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

fn open(w: &World, path: &std::path::Path) -> Agent {
    Agent::open(AgentConfig::load(path).unwrap(), w.clock.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_survives_a_hub_outage_and_an_agent_restart_with_zero_events_lost() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (addr, stop) = hub(&w, "127.0.0.1:0".parse().unwrap()).await;
    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [7; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let text = config::render(&addr.to_string(), &Identity::from_seed([1; 32]).public_key().to_hex())
        .replace("health_inferences = 20", "health_inferences = 2");
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();

    let mut agent = open(&w, &path);
    agent.check().await.unwrap();
    for _ in 0..2 {
        agent.record_inference(true).unwrap();
        agent.record_inference_stats(v1, true, Duration::from_millis(3));
    }
    agent.check().await.unwrap(); // sends the confirmation and the inference counts
    assert_eq!(agent.telemetry_backlog(), Some((0, 0)), "everything so far reached the hub");

    // The hub goes away. Checks fail and are recorded; inferences go on being counted.
    drop(stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..3 {
        agent.record_inference_stats(v1, true, Duration::from_millis(4));
        w.clock.advance(Duration::from_secs(61));
        assert!(agent.check().await.is_err(), "the hub is down");
    }
    let (queued, dropped) = agent.telemetry_backlog().unwrap();
    assert_eq!(dropped, 0);
    assert_eq!(queued, 6, "per failed check: its inference counts and the error");

    // The agent restarts while the hub is still down; then the hub comes back on the same address.
    agent.shutdown().unwrap();
    let mut agent = open(&w, &path);
    assert_eq!(agent.telemetry_backlog().unwrap().0, 6, "the queue survived the restart");
    let (_, _stop) = hub(&w, addr).await;
    agent.check().await.unwrap();
    assert_eq!(agent.telemetry_backlog(), Some((0, 0)));

    // Count them at the hub: every sequence number the device ever queued is stored, once.
    let store = TelemetryStore::open(&w.dir, w.clock.clone()).unwrap();
    let streams = store.streams().unwrap();
    assert_eq!(streams.len(), 1);
    let s = &streams[0].record;
    assert_eq!((s.missing(), s.dropped), (0, 0), "{s:?}");
    assert_eq!(s.received, s.highest_seq);
    let summary = &store.aggregate(GroupBy::Device, &Filter::default()).unwrap()[0].summary;
    assert_eq!(summary.events, s.highest_seq);
    assert_eq!(summary.errors, 3, "{summary:?}");
    for step in ["downloading", "downloaded", "staged", "activated", "confirmed"] {
        assert_eq!(summary.update_steps.get(step), Some(&1), "{step}: {summary:?}");
    }
    let inferences = summary.inference.get(&v1.to_hex()).expect("inference counts for v1");
    assert_eq!((inferences.count, inferences.errors), (5, 0), "2 before the outage, 3 during it");
}
