//! A site node between the hub and the devices of one site, all over real QUIC on loopback: an accepted package
//! crosses the hub→site link once for the whole site; a package the site policy rejects crosses it zero times,
//! the devices keep their model and the hub sees one site-level rejection with the rule; a site node that serves
//! tampered bytes or stale metadata is caught by the devices. Devices attest through the site node: the hub
//! appraises their evidence (bound to their own connection to the site node), the site node serves nothing before,
//! and a revoked device is cut off.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_agent::attest;
use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, CheckError, init_device};
use outpost_agent::site::SiteNode;
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_attestation::{AttestationResult, Challenge, Evidence};
use outpost_hub::backend::HubBackend;
use outpost_hub::tuf::TufRepo;
use outpost_net::client::{ClientConfig, HubClient};
use outpost_net::server::{Backend, BackendError, Submitted, Unattested};
use outpost_shared::Digest;
use outpost_shared::clock::Clock;
use outpost_shared::testkit::AffineManifest;
use outpost_shared::update::Phase;
use outpost_shared::wire::codes;
use support::{World, active, refusal};

const HEALTH: u32 = 2;
const SITE: &str = "plant-7";

/// The attestation methods of a wrapper around a backend, passed through to the wrapped one.
macro_rules! relay_attestation_to {
    ($field:tt) => {
        fn attestation_required(&self) -> bool {
            self.$field.attestation_required()
        }
        async fn challenge(self: Arc<Self>, device: PublicKey) -> Result<Challenge, Unattested> {
            self.$field.clone().challenge(device).await
        }
        async fn appraise(self: Arc<Self>, evidence: Submitted) -> Result<AttestationResult, Unattested> {
            self.$field.clone().appraise(evidence).await
        }
        async fn still_attested(self: Arc<Self>, result: AttestationResult) -> Result<(), Unattested> {
            self.$field.clone().still_attested(result).await
        }
    };
}

/// The hub's backend, counting the target bytes it hands out: what crosses the hub→site link.
struct CountingHub {
    inner: Arc<HubBackend>,
    /// Bytes of packages.
    target_bytes: AtomicU64,
    /// Bytes of every target (packages and the director's key document).
    all_target_bytes: AtomicU64,
}

impl Backend for CountingHub {
    async fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> bool {
        self.inner.clone().device_allowed(key).await
    }
    async fn metadata(self: Arc<Self>, name: String) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.clone().metadata(name).await
    }
    async fn assignment(self: Arc<Self>, device: [u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.clone().assignment(device).await
    }
    async fn target(self: Arc<Self>, path: String) -> Result<Option<(PathBuf, u64)>, BackendError> {
        let director = path.starts_with("director/");
        let found = self.inner.clone().target(path).await?;
        if let Some((_, len)) = &found {
            self.all_target_bytes.fetch_add(*len, Ordering::SeqCst);
        }
        // Packages only: the director's key document is metadata-sized and fetched by every TUF client.
        if let Some((_, len)) = found.as_ref().filter(|_| !director) {
            self.target_bytes.fetch_add(*len, Ordering::SeqCst);
        }
        Ok(found)
    }
    async fn report(self: Arc<Self>, device: [u8; 32], body: Vec<u8>) -> Result<(), BackendError> {
        self.inner.clone().report(device, body).await
    }
    async fn acts_for(self: Arc<Self>, node: [u8; 32], device: [u8; 32]) -> bool {
        self.inner.clone().acts_for(node, device).await
    }
    async fn telemetry(self: Arc<Self>, device: [u8; 32], batch: Vec<u8>) -> Result<u64, BackendError> {
        self.inner.clone().telemetry(device, batch).await
    }
    relay_attestation_to!(inner);
}

struct Site {
    hub: Arc<CountingHub>,
    node: Arc<SiteNode>,
    node_key: String,
    addr: std::net::SocketAddr,
    key: PublicKey,
}

/// A hub, and a site node for `SITE` enforcing `policy`, serving through `wrap` (to make it misbehave).
async fn site<B: Backend>(w: &World, policy: &str, wrap: impl FnOnce(Arc<SiteNode>) -> Arc<B>) -> Site {
    let hub = Arc::new(CountingHub {
        inner: Arc::new(HubBackend::new(&w.dir, TufRepo::new(&w.dir, Default::default()), w.clock.clone())),
        target_bytes: AtomicU64::new(0),
        all_target_bytes: AtomicU64::new(0),
    });
    let hub_identity = Identity::from_seed([1; 32]);
    let hub_key = hub_identity.public_key();
    let hub_addr = support::serve_on_loopback(hub.clone(), hub_identity);

    let dir = w.tmp.path().join("site");
    let node_key = init_device(&dir, &w.root(), [90; 32]).unwrap();
    w.registry().device_approve(&node_key, "stable").unwrap();
    w.registry().device_set_site(&node_key, Some(SITE), true).unwrap();
    std::fs::write(dir.join("site.toml"), policy).unwrap();
    let text =
        format!("{}\n[policy]\nfile = \"site.toml\"\n", config::render(&hub_addr.to_string(), &hub_key.to_hex()));
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let config = AgentConfig::parse(&text, &path).unwrap();
    let node = Arc::new(SiteNode::open(config, w.clock.clone()).unwrap());
    let identity = Identity::from_seed([90; 32]);
    let key = identity.public_key();
    let addr = support::serve_on_loopback(wrap(node.clone()), identity);
    Site { hub, node, node_key, addr, key }
}

/// A device of the site, whose "hub" is the site node.
async fn device(w: &World, site: &Site, name: &str, seed: u8) -> Agent {
    let dir = w.tmp.path().join(name);
    let key = init_device(&dir, &w.root(), [seed; 32]).unwrap();
    w.registry().device_approve(&key, "stable").unwrap();
    w.registry().device_set_site(&key, Some(SITE), false).unwrap();
    let text = config::render(&site.addr.to_string(), &site.key.to_hex())
        .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"));
    let path = dir.join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    Agent::open(AgentConfig::parse(&text, &path).unwrap(), w.clock.clone()).unwrap()
}

async fn adopt(agent: &mut Agent) {
    support::adopt(agent, HEALTH).await;
}

fn package_len(w: &World, d: &Digest) -> u64 {
    w.registry().record(d).unwrap().unwrap().package_len
}

fn later(w: &World) {
    w.clock.advance(Duration::from_secs(2));
}

const POLICY: &str = "site = \"plant-7\"\nmax_risk = \"low\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_rejects_a_package_for_all_its_devices_and_its_bytes_never_cross_the_hub_link() {
    let w = World::new();
    let site = site(&w, POLICY, |n| n).await;
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut devices = Vec::new();
    for (i, name) in ["d1", "d2", "d3"].iter().enumerate() {
        devices.push(device(&w, &site, name, 40 + i as u8).await);
    }
    for d in &mut devices {
        adopt(d).await;
        assert_eq!(active(d), Some(v1));
    }
    let once = package_len(&w, &v1);
    assert_eq!(site.hub.target_bytes.load(Ordering::SeqCst), once, "v1 crossed the hub→site link exactly once");
    assert_eq!(site.node.upstream_target_bytes(), site.hub.all_target_bytes.load(Ordering::SeqCst));

    later(&w);
    let mut risky = AffineManifest::new("affine", "1.1.0", 3.0, 1.0);
    risky.risk_tier = "medium".into();
    let (v2, _) = w.add_and_publish(&risky, "stable");
    for d in &mut devices {
        d.check().await.unwrap();
        assert_eq!(active(d), Some(v1), "devices keep their model");
        assert_eq!(d.state().phase, Phase::Idle);
        let error = d.state().last_error.clone().unwrap_or_default();
        assert!(error.contains("site policy") && error.contains("max_risk"), "{error}");
    }
    assert_eq!(site.hub.target_bytes.load(Ordering::SeqCst), once, "no byte of the rejected v2 crossed the link");

    // The hub sees one site-level rejection, with the rule, from the site node.
    let reg = w.registry();
    let node = reg.device(&site.node_key).unwrap().unwrap();
    assert!(node.site_node);
    assert_eq!(node.refusals.len(), 1, "{:?}", node.refusals);
    let r = &node.refusals[0];
    assert_eq!((r.digest, r.rule.as_str(), r.until, r.by_site), (v2, "max_risk", None, true));
    assert_eq!(node.policy_site.as_deref(), Some(SITE));
    let device_refusals: usize = reg.devices().unwrap().iter().filter(|d| !d.site_node).map(|d| d.refusals.len()).sum();
    assert_eq!(device_refusals, 0, "the site decided, once, for all its devices");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_node_forwards_device_reports_to_the_hub_and_refuses_devices_of_other_sites() {
    let w = World::new();
    let site = site(&w, POLICY, |n| n).await;
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut d = device(&w, &site, "d1", 41).await;
    adopt(&mut d).await;
    d.check().await.unwrap(); // sends the confirmation report
    let key = Identity::from_seed([41; 32]).public_key().to_hex();
    let record = w.registry().device(&key).unwrap().unwrap();
    assert_eq!(record.active, Some(v1), "the device's report reached the hub through the site node");
    assert!(record.last_report.is_some());
    let store = outpost_hub::telemetry::TelemetryStore::open(&w.dir, w.clock.clone()).unwrap();
    let streams = store.streams().unwrap();
    assert!(streams.iter().any(|s| s.device == key && s.record.received > 0), "its telemetry too: {streams:?}");

    // A device placed in another site is refused by the hub when the site node asks on its behalf.
    let mut stranger = device(&w, &site, "d9", 49).await;
    let stranger_key = Identity::from_seed([49; 32]).public_key().to_hex();
    w.registry().device_set_site(&stranger_key, Some("plant-8"), false).unwrap();
    w.clock.advance(outpost_agent::site::DEVICE_FRESH);
    // A device of another site gets nothing through this site node: the hub does not allow it there, so the
    // site node closes its connection as an unknown device, before any request.
    let e = stranger.check().await.unwrap_err();
    let closed = match &e {
        CheckError::Hub(c) => c.close_reason(),
        _ => None,
    };
    assert_eq!(closed, Some((codes::CLOSE_UNKNOWN_DEVICE, "unknown device".to_owned())), "{e:?}");
}

/// A site node that flips one byte of every package it serves.
struct Tampering(Arc<SiteNode>, PathBuf);

impl Backend for Tampering {
    relay_attestation_to!(0);
    async fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> bool {
        self.0.clone().device_allowed(key).await
    }
    async fn metadata(self: Arc<Self>, name: String) -> Result<Option<Vec<u8>>, BackendError> {
        self.0.clone().metadata(name).await
    }
    async fn assignment(self: Arc<Self>, device: [u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        self.0.clone().assignment(device).await
    }
    async fn target(self: Arc<Self>, path: String) -> Result<Option<(PathBuf, u64)>, BackendError> {
        let director = path.starts_with("director/");
        let Some((file, len)) = self.0.clone().target(path).await? else { return Ok(None) };
        if director {
            return Ok(Some((file, len)));
        }
        let mut bytes = std::fs::read(&file)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        let evil = self.1.join("evil.opkg");
        std::fs::write(&evil, bytes)?;
        Ok(Some((evil, len)))
    }
    async fn report(self: Arc<Self>, device: [u8; 32], body: Vec<u8>) -> Result<(), BackendError> {
        self.0.clone().report(device, body).await
    }
    async fn telemetry(self: Arc<Self>, device: [u8; 32], batch: Vec<u8>) -> Result<u64, BackendError> {
        self.0.clone().telemetry(device, batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampering_site_node_is_detected_by_the_devices() {
    let w = World::new();
    let scratch = w.tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let site = site(&w, POLICY, |n| Arc::new(Tampering(n, scratch.clone()))).await;
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut d = device(&w, &site, "d1", 41).await;
    d.check().await.unwrap();
    assert_eq!(active(&d), None, "tampered bytes are never activated");
    let error = d.state().last_error.clone().unwrap_or_default();
    assert!(error.contains("hashing to"), "{error}");
}

/// A site node that keeps serving the first timestamp it saw.
struct Stale(Arc<SiteNode>, std::sync::Mutex<Option<Vec<u8>>>);

impl Backend for Stale {
    relay_attestation_to!(0);
    async fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> bool {
        self.0.clone().device_allowed(key).await
    }
    async fn metadata(self: Arc<Self>, name: String) -> Result<Option<Vec<u8>>, BackendError> {
        let timestamp = name == "timestamp.json";
        let fresh = self.0.clone().metadata(name).await?;
        if !timestamp {
            return Ok(fresh);
        }
        let mut first = self.1.lock().unwrap();
        Ok(first.get_or_insert_with(|| fresh.clone().unwrap_or_default()).clone().into())
    }
    async fn assignment(self: Arc<Self>, device: [u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        self.0.clone().assignment(device).await
    }
    async fn target(self: Arc<Self>, path: String) -> Result<Option<(PathBuf, u64)>, BackendError> {
        self.0.clone().target(path).await
    }
    async fn report(self: Arc<Self>, device: [u8; 32], body: Vec<u8>) -> Result<(), BackendError> {
        self.0.clone().report(device, body).await
    }
    async fn telemetry(self: Arc<Self>, device: [u8; 32], batch: Vec<u8>) -> Result<u64, BackendError> {
        self.0.clone().telemetry(device, batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn site_node_serving_stale_metadata_is_detected_by_the_devices() {
    let w = World::new();
    let site = site(&w, POLICY, |n| Arc::new(Stale(n, std::sync::Mutex::new(None)))).await;
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut d = device(&w, &site, "d1", 41).await;
    adopt(&mut d).await;
    assert_eq!(active(&d), Some(v1));
    // The hub moves on (v2, new timestamp); the site node keeps the old timestamp, which lists an old
    // snapshot: the device never sees v2. Once the stale timestamp expires, the device refuses it outright.
    later(&w);
    let (v2, _) = w.add_and_publish(&AffineManifest::new("affine", "1.1.0", 3.0, 1.0), "stable");
    let result = d.check().await;
    assert_ne!(active(&d), Some(v2), "{result:?}");
    w.clock.advance(Duration::from_secs(30 * 24 * 3600));
    let err = d.check().await.expect_err("an expired timestamp is refused");
    assert!(err.to_string().contains("TUF"), "{err}");
    assert_eq!(active(&d), Some(v1), "the device keeps serving its verified model");
}

/// Evidence from device `seed` for `challenge` on `client`'s connection, claiming `model`.
fn evidence(client: &HubClient, challenge: Challenge, seed: u8, model: Option<Digest>) -> Vec<u8> {
    let identity = Identity::from_seed([seed; 32]);
    let claims = support::claims(&identity, challenge.nonce(&client.exporter().unwrap()), model);
    Evidence::sign(&identity, &claims).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_behind_a_site_node_is_attested_by_the_hub_through_the_relay() {
    let w = World::new();
    let site = site(&w, POLICY, |n| n).await;
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut d = device(&w, &site, "d1", 41).await;
    adopt(&mut d).await;
    assert_eq!(active(&d), Some(v1));
    let verdict = d.attested().expect("the site node holds the hub's verdict on this device's connection");
    assert_eq!(verdict.tier, outpost_shared::wire::AttestedTier::Software);
    // The hub appraised the device itself: its record shows the result, its software and boot count.
    let key = Identity::from_seed([41; 32]).public_key().to_hex();
    let att = w.registry().device(&key).unwrap().unwrap().attestation.unwrap();
    assert_eq!(att.software, Some(format!("outpost-agent {}", attest::SWVERSION)));
    assert!(att.status == "affirming" || att.status == "warning", "{}", att.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_behind_a_site_node_is_served_nothing_until_it_attests() {
    let w = World::new();
    let site = site(&w, POLICY, |n| n).await;
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    device(&w, &site, "d1", 41).await;
    let client =
        HubClient::connect(&Identity::from_seed([41; 32]), &ClientConfig::new(site.addr, site.key)).await.unwrap();
    let e = client.metadata("timestamp.json", 1 << 20).await.unwrap_err();
    assert_eq!(refusal(e), "not attested: this connection has not attested");
    assert!(refusal(client.assignment().await.unwrap_err()).starts_with("not attested"));
    // A model nobody published: the hub's appraisal refuses it through the relay.
    let challenge = client.challenge().await.unwrap().expect("the site node relays challenges");
    let e = client.post_evidence(&evidence(&client, challenge, 41, Some(Digest::of(b"elsewhere")))).await.unwrap_err();
    assert!(refusal(e).contains("is not what the device should run"));
    assert!(refusal(client.assignment().await.unwrap_err()).starts_with("not attested"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evidence_relayed_by_a_site_node_from_another_connection_is_refused() {
    let w = World::new();
    let site = site(&w, POLICY, |n| n).await;
    device(&w, &site, "d1", 41).await;
    let config = ClientConfig::new(site.addr, site.key);
    let identity = Identity::from_seed([41; 32]);
    let first = HubClient::connect(&identity, &config).await.unwrap();
    let second = HubClient::connect(&identity, &config).await.unwrap();
    let challenge = first.challenge().await.unwrap().unwrap();
    let made_on_first = evidence(&first, challenge, 41, None);
    // The second connection asks for its own challenge (the hub's newest for this device), then presents the
    // evidence made on the first: bound to the other connection's exporter, it does not answer.
    second.challenge().await.unwrap().unwrap();
    let e = second.post_evidence(&made_on_first).await.unwrap_err();
    assert!(refusal(e).contains("nonce does not match"));
    assert!(refusal(second.assignment().await.unwrap_err()).starts_with("not attested"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_device_behind_a_site_node_is_cut_off() {
    let w = World::new();
    let site = site(&w, POLICY, |n| n).await;
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut d = device(&w, &site, "d1", 41).await;
    adopt(&mut d).await;
    let key = Identity::from_seed([41; 32]).public_key().to_hex();
    w.registry().device_revoke(&key).unwrap();
    w.clock.advance(outpost_agent::site::DEVICE_FRESH);
    let e = d.check().await.unwrap_err();
    assert!(matches!(&e, CheckError::NotAttested(r) if r.contains("device revoked")), "{e:?}");
    assert_eq!(active(&d), Some(v1), "the device keeps serving its model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_tightened_after_a_package_was_cached_refuses_the_cached_copy() {
    let w = World::new();
    let site = site(&w, "site = \"plant-7\"\n", |n| n).await;
    let mut medium = AffineManifest::new("affine", "1.0.0", 2.0, 1.0);
    medium.risk_tier = "medium".into();
    let (v1, _) = w.add_and_publish(&medium, "stable");
    let mut first = device(&w, &site, "d1", 40).await;
    adopt(&mut first).await;
    assert_eq!(active(&first), Some(v1), "the first policy lets v1 through; the site node caches it");

    // The site admin tightens the policy; v1 stays in the site node's cache.
    std::fs::write(w.tmp.path().join("site/site.toml"), POLICY).unwrap();
    later(&w);
    let mut second = device(&w, &site, "d2", 41).await;
    second.check().await.unwrap();
    assert_eq!(active(&second), None, "the cached copy is judged by the policy in force now");
    let error = second.state().last_error.clone().unwrap_or_default();
    assert!(error.contains("site policy") && error.contains("max_risk"), "{error}");
    assert_eq!(site.hub.target_bytes.load(Ordering::SeqCst), package_len(&w, &v1), "v1 crossed the link once");
}

/// A director bundle's CBOR map, as a site node in the middle may rewrite it.
type BundleMap = Vec<(ciborium::Value, ciborium::Value)>;

/// A site node that passes every director bundle through an edit of its CBOR map before a device gets it.
struct Rewriting(Arc<SiteNode>, Box<dyn Fn(BundleMap) -> BundleMap + Send + Sync>);

impl Backend for Rewriting {
    relay_attestation_to!(0);
    async fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> bool {
        self.0.clone().device_allowed(key).await
    }
    async fn metadata(self: Arc<Self>, name: String) -> Result<Option<Vec<u8>>, BackendError> {
        self.0.clone().metadata(name).await
    }
    async fn assignment(self: Arc<Self>, device: [u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        let Some(bytes) = self.0.clone().assignment(device).await? else { return Ok(None) };
        let ciborium::Value::Map(map) = ciborium::from_reader(&bytes[..])? else { return Err("not a map".into()) };
        Ok(Some(outpost_shared::canonical::to_vec(&ciborium::Value::Map((self.1)(map)))?))
    }
    async fn target(self: Arc<Self>, path: String) -> Result<Option<(PathBuf, u64)>, BackendError> {
        self.0.clone().target(path).await
    }
    async fn report(self: Arc<Self>, device: [u8; 32], body: Vec<u8>) -> Result<(), BackendError> {
        self.0.clone().report(device, body).await
    }
    async fn telemetry(self: Arc<Self>, device: [u8; 32], batch: Vec<u8>) -> Result<u64, BackendError> {
        self.0.clone().telemetry(device, batch).await
    }
}

fn is_revocations(key: &ciborium::Value) -> bool {
    key.as_text() == Some("revocations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stripped_revocations_are_refused_by_the_device() {
    let w = World::new();
    let strip = |map: BundleMap| map.into_iter().filter(|(k, _)| !is_revocations(k)).collect();
    let site = site(&w, POLICY, |n| Arc::new(Rewriting(n, Box::new(strip)))).await;
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut d = device(&w, &site, "d1", 41).await;
    let err = d.check().await.expect_err("a bundle without its revocation list is refused");
    assert!(err.to_string().contains("missing field `revocations`"), "{err}");
    assert_eq!(active(&d), None, "nothing is installed on the word of a bundle that hides revocations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_revocation_list_is_refused_by_the_device() {
    let w = World::new();
    let first = Arc::new(std::sync::Mutex::new(None::<ciborium::Value>));
    let replay = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (kept, replaying) = (first.clone(), replay.clone());
    let edit = move |mut map: BundleMap| {
        for (_, v) in map.iter_mut().filter(|(k, _)| is_revocations(k)) {
            let mut first = kept.lock().unwrap();
            match &*first {
                Some(old) if replaying.load(Ordering::SeqCst) => *v = old.clone(),
                None => *first = Some(v.clone()),
                Some(_) => {}
            }
        }
        map
    };
    let site = site(&w, POLICY, |n| Arc::new(Rewriting(n, Box::new(edit)))).await;
    let (v1, _) = w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let director = outpost_hub::director::Director::new(&w.repo);
    director.revoke(Digest::of(b"an old package"), "field regression", w.clock.wall()).unwrap();
    let mut d = device(&w, &site, "d1", 41).await;
    adopt(&mut d).await;
    assert!(first.lock().unwrap().is_some(), "the site node kept revocation list v1");

    later(&w);
    director.revoke(Digest::of(b"another package"), "field regression", w.clock.wall()).unwrap();
    d.check().await.unwrap();
    replay.store(true, Ordering::SeqCst);
    later(&w);
    let err = d.check().await.expect_err("an older revocation list is a replay");
    assert!(err.to_string().contains("version 1 is older than accepted version 2"), "{err}");
    assert_eq!(active(&d), Some(v1), "the device keeps serving its verified model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_revocation_list_is_refused_by_the_device() {
    use ed25519_dalek::Signer;
    let w = World::new();
    let key = w.repo.online_key("director").unwrap();
    let now = w.clock.wall();
    // Properly signed, but past its expiry: what a site node could keep serving after the hub moved on.
    let stale = outpost_shared::director::RevocationList { version: 7, expires: now - 1, revoked: vec![] };
    let sealed = outpost_shared::director::seal(
        &stale,
        outpost_shared::director::REVOCATIONS_DOMAIN,
        &key.public_bytes(),
        |m| key.signing.sign(m).to_bytes(),
    )
    .unwrap();
    let edit = move |mut map: BundleMap| {
        for (_, v) in map.iter_mut().filter(|(k, _)| is_revocations(k)) {
            *v = ciborium::Value::Bytes(sealed.clone());
        }
        map
    };
    let site = site(&w, POLICY, |n| Arc::new(Rewriting(n, Box::new(edit)))).await;
    w.add_and_publish(&AffineManifest::new("affine", "1.0.0", 2.0, 1.0), "stable");
    let mut d = device(&w, &site, "d1", 41).await;
    let err = d.check().await.expect_err("an expired revocation list is refused");
    assert!(err.to_string().contains(&format!("expired at {}", now - 1)), "{err}");
    assert_eq!(active(&d), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_keys_flooding_a_site_node_do_not_grow_its_memory() {
    let w = World::new();
    let site = site(&w, POLICY, |n| n).await;
    let config = ClientConfig::new(site.addr, site.key);
    // A stranger connects and is turned away once the site node has asked the hub about its key.
    let stranger = |seed: u8| {
        let config = &config;
        async move {
            if let Ok(c) = HubClient::connect(&Identity::from_seed([seed; 32]), config).await {
                let _ = c.metadata("timestamp.json", 1024).await;
            }
        }
    };
    for seed in 200..210 {
        stranger(seed).await;
    }
    assert_eq!(site.node.known_devices(), 10);
    // Answers past their freshness are dropped as new ones come in: the map holds what is current, not every key
    // that ever connected.
    w.clock.advance(outpost_agent::site::DEVICE_FRESH + Duration::from_secs(1));
    stranger(250).await;
    assert_eq!(site.node.known_devices(), 1, "stale answers about strangers are pruned");
}
