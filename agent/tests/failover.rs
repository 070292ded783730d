//! Agents and site nodes fail over between the replicas of one hub (`[hub] addresses`, one pinned hub key): a
//! dead first address costs one connection attempt and later checks start from the replica that answered; a
//! replica killed mid-download leaves the agent updating through the next, resuming the download there instead of
//! fetching again what it had; a site node reaches the hub for its devices past a dead replica, and resumes a
//! package fetch cut by a replica's death from the next; `outpost-agent run` logs each switch with both
//! addresses, and refuses a file setting both `address` and `addresses` by name.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, init_device};
use outpost_agent::site::SiteNode;
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use support::relay::{Relay, dead_address};
use support::{World, active};

const HEALTH: u32 = 2;

/// `agent.toml` for a device talking to the hub at `addresses` (its replicas, tried in this order).
fn replicas_config(addresses: &[SocketAddr], key: &PublicKey) -> String {
    let list = addresses.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
    config::render("127.0.0.1:1", &key.to_hex())
        .replace("address = \"127.0.0.1:1\"\n", &format!("addresses = [{list}]\n"))
        .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"))
}

/// A device approved on stable, configured with `text`.
fn device(w: &World, name: &str, seed: u8, text: &str) -> Agent {
    let dir = w.tmp.path().join(name);
    let key = init_device(&dir, &w.root(), [seed; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    Agent::open(AgentConfig::parse(text, &path).unwrap(), w.clock.clone()).unwrap()
}

#[allow(clippy::disallowed_methods)] // Connection timeouts run in real time.
fn instant_now() -> std::time::Instant {
    std::time::Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_whose_first_hub_address_is_dead_updates_through_the_next() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (replicas, key) = w.serve_replicas(1).await;
    let (dead, live) = (dead_address(), replicas[0]);
    let mut agent = device(&w, "dev", 1, &replicas_config(&[dead, live], &key));
    assert_eq!(agent.hub_address(), dead, "the first configured address comes first");

    support::adopt(&mut agent, HEALTH).await;
    assert_eq!(active(&agent), Some(v1), "installed through the second address");
    assert_eq!(agent.hub_address(), live, "the agent stays with the replica that answered");

    // The next check starts at the replica that answered: no attempt at the dead one first (which costs the
    // connect timeout, 10 s).
    w.clock.advance(Duration::from_secs(2));
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    agent.disconnect();
    let started = instant_now();
    support::adopt(&mut agent, HEALTH).await;
    let took = started.elapsed();
    assert_eq!(active(&agent), Some(v2));
    assert!(took < Duration::from_secs(5), "the second check went to the dead address first: {took:?}");
    assert_eq!(agent.hub_address(), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_fails_over_when_its_replica_is_killed_mid_download_and_resumes_without_refetching() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (replicas, key) = w.serve_replicas(2).await;
    let (a, b) = (Relay::start(replicas[0]).await, Relay::start(replicas[1]).await);
    let mut agent = device(&w, "dev", 1, &replicas_config(&[a.addr, b.addr], &key));
    support::adopt(&mut agent, HEALTH).await;
    assert_eq!((active(&agent), agent.hub_address()), (Some(v1), a.addr), "v1 came through replica A");

    w.clock.advance(Duration::from_secs(2));
    let (v2, _) = w.add_and_publish_sized(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable", 4 << 20);
    let full = w.registry().record(&v2).unwrap().unwrap().package_len;
    // Replica A's process dies once it has sent 6 MiB more: in the middle of the 16 MiB package.
    const CUT: u64 = 6 << 20;
    assert!(full > 2 * CUT, "the package ({full} bytes) outlasts the replica");
    let (a_before, b_before) = (a.to_agent(), b.to_agent());
    a.die_after(CUT);

    // One check: A dies under the download (the agent notices at its stall timeout); the check goes on through
    // B and installs the package.
    agent.check().await.unwrap();
    assert!(a.is_dead(), "replica A was killed during the check");
    assert_eq!(agent.on_trial(), Some(v2), "the package came through replica B: {:?}", agent.state().phase);
    assert_eq!(agent.hub_address(), b.addr, "the agent moved to replica B");

    // Resumed, not fetched again: what came through A and through B together are the package once, plus the
    // handshakes, TUF metadata and reports of two connections.
    let (through_a, through_b) = (a.to_agent() - a_before, b.to_agent() - b_before);
    let overhead = 1 << 20;
    assert!(through_a >= CUT, "A sent {through_a} bytes before it died");
    assert!(
        through_a + through_b < full + overhead,
        "the download was fetched again: {through_a} bytes through A and {through_b} through B for a {full}-byte package"
    );
    assert!(through_b < full - CUT + overhead, "B sent {through_b} bytes: more than what A had not delivered");
    for _ in 0..HEALTH {
        agent.record_inference(true).unwrap();
    }
    assert_eq!((active(&agent), agent.state().phase.clone()), (Some(v2), Phase::Idle));
}

const SITE: &str = "plant-7";

/// A site node of `SITE` whose upstream is the hub at `addresses` (its replicas), served on loopback: the node
/// and where its devices connect.
async fn site_node(w: &World, addresses: &[SocketAddr], hub_key: &PublicKey) -> (Arc<SiteNode>, SocketAddr) {
    let dir = w.tmp.path().join("site");
    let node_key = init_device(&dir, &w.root(), [90; 32]).unwrap();
    w.registry().device_approve(&node_key, "stable").unwrap();
    w.registry().device_set_site(&node_key, Some(SITE), true).unwrap();
    let text = replicas_config(addresses, hub_key);
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let node = Arc::new(SiteNode::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap());
    let addr = support::serve_on_loopback(node.clone(), Identity::from_seed([90; 32]));
    (node, addr)
}

/// A device of `SITE`, pinning the site node at `node`.
fn site_device(w: &World, node: SocketAddr) -> Agent {
    let dir = w.tmp.path().join("dev");
    let key = init_device(&dir, &w.root(), [7; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    w.registry().device_set_site(&key, Some(SITE), false).unwrap();
    let text = config::render(&node.to_string(), &Identity::from_seed([90; 32]).public_key().to_hex())
        .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"));
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Agent::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_node_whose_first_hub_replica_is_dead_serves_its_devices_through_the_next() {
    let w = World::new();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (replicas, hub_key) = w.serve_replicas(1).await;
    let (node, node_addr) = site_node(&w, &[dead_address(), replicas[0]], &hub_key).await;
    let mut agent = site_device(&w, node_addr);
    support::adopt(&mut agent, HEALTH).await;
    assert_eq!(active(&agent), Some(v1), "the device installed what the site node fetched past the dead replica");
    assert!(node.upstream_target_bytes() > 0, "the site node fetched the package from the hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_node_whose_replica_is_killed_mid_fetch_resumes_the_package_from_the_next() {
    let w = World::new();
    let (v1, _) = w.add_and_publish_sized(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable", 4 << 20);
    let full = w.registry().record(&v1).unwrap().unwrap().package_len;
    let (replicas, hub_key) = w.serve_replicas(2).await;
    let (a, b) = (Relay::start(replicas[0]).await, Relay::start(replicas[1]).await);
    // Replica A's process dies once it has sent the site node 6 MiB: in the middle of the 16 MiB package.
    const CUT: u64 = 6 << 20;
    assert!(full > 2 * CUT, "the package ({full} bytes) outlasts the replica");
    a.die_after(CUT);
    let (node, node_addr) = site_node(&w, &[a.addr, b.addr], &hub_key).await;
    let mut agent = site_device(&w, node_addr);

    // The device's check that finds the site node's replica dying may fail (its own stall timeout can pass
    // first); the next ones go through the site node's next replica.
    for _ in 0..3 {
        if agent.check().await.is_ok() && agent.on_trial() == Some(v1) {
            break;
        }
    }
    assert_eq!(agent.on_trial(), Some(v1), "the device got the package: {:?}", agent.state().phase);
    assert!(a.is_dead(), "replica A was killed during the fetch");

    // The site node resumed its fetch: A and B together sent the package once, plus the handshakes, TUF metadata
    // and relayed attestation of a few connections; and it counts only what came from B as fetched again.
    let (through_a, through_b) = (a.to_agent(), b.to_agent());
    assert!(through_a >= CUT, "A sent {through_a} bytes before it died");
    assert!(
        through_a + through_b < full + (1 << 20),
        "the package was fetched again: {through_a} bytes through A and {through_b} through B for {full} bytes"
    );
    assert!(node.upstream_target_bytes() < full, "{} of {full} bytes fetched again", node.upstream_target_bytes());
}

#[test]
fn agent_run_logs_its_switch_to_the_next_replica_at_info_with_both_addresses() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let w = World::on_wall_clock();
    w.allow_agent_binary();
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let (replicas, key) = rt.block_on(w.serve_replicas(1));
    let (dead, live) = (dead_address(), replicas[0]);
    let dir = w.tmp.path().join("dev");
    let device_key = init_device(&dir, &w.root(), [3; 32]).unwrap();
    w.registry().device_approve(&device_key, "stable").unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, replicas_config(&[dead, live], &key)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["run", "--once", "--log-level", "info", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let switch = stderr.lines().find(|l| l.contains("switching to")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(switch.contains("INFO"), "{switch}");
    assert!(switch.contains(&format!("hub replica {dead} unreachable")), "{switch}");
    assert!(switch.contains(&format!("switching to {live}")), "{switch}");
    let state = outpost_agent::device::load_state(&outpost_agent::device::Layout::new(&dir)).unwrap().unwrap();
    assert_eq!(state.active.map(|a| a.target.digest), Some(v1), "{stderr}");
}

#[test]
fn agent_run_with_both_address_and_addresses_refuses_to_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = Identity::from_seed([1; 32]).public_key();
    let text = config::render("127.0.0.1:7443", &key.to_hex()).replace("# addresses = ", "addresses = ");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["run", "--once", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("key `hub.addresses`") && stderr.contains("not both"), "{stderr}");
}
