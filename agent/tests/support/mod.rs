//! Test support for the agent: a real hub data directory (registry, TUF repository, director, devices) served
//! over real QUIC on loopback, on a manual clock, with attestation required: the central team's key is trusted
//! and its reference values list this test binary (what an in-process agent reports as its own executable).

#![allow(dead_code)]

pub mod mirror;
pub mod relay;

#[path = "../../../fixtures/faultfs/mod.rs"]
pub mod faultfs;

use std::sync::Arc;

use outpost_attestation::identity::Identity;
use outpost_attestation::{ReferenceValues, SoftwareRef};
use outpost_hub::Registry;
use outpost_hub::backend::HubBackend;
use outpost_hub::tuf::{GenerateOptions, Key, TufRepo};
use outpost_net::server::{ServeConfig, Server};
use outpost_shared::Digest;
use outpost_shared::Manifest;
use outpost_shared::clock::ManualClock;
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::{AffineManifest, FirmwareManifest};

/// The fixed instant of tests whose hub and agents all run on a `ManualClock` (nothing compares it with the real
/// date). Tests that talk to a process reading the system clock use `World::on_wall_clock` instead.
pub const NOW: u64 = 1_795_881_600;

/// The system clock, as an `outpost-agent` process (and any binary that checks expiry) reads it.
pub struct Wall;

impl outpost_shared::clock::Clock for Wall {
    #[allow(clippy::disallowed_methods)] // tests that run real processes must sign with the time those read
    fn wall(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }
    #[allow(clippy::disallowed_methods)]
    fn monotonic(&self) -> std::time::Duration {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN.get_or_init(std::time::Instant::now).elapsed()
    }
}

pub fn ts(secs: u64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs as i64).unwrap()
}

pub struct World {
    pub tmp: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub repo: TufRepo,
    pub clock: Arc<ManualClock>,
    /// The serial of the reference values installed last.
    serial: std::cell::Cell<u64>,
}

/// The central team's key in tests.
pub fn team() -> Identity {
    Identity::from_seed([0x7e; 32])
}

/// An agent build as the reference values list it.
pub fn software(sha256: Digest) -> SoftwareRef {
    SoftwareRef {
        name: outpost_agent::attest::SWNAME.into(),
        version: outpost_agent::attest::SWVERSION.into(),
        sha256,
        revoked: false,
    }
}

/// What an agent running in this test process reports as its binary.
pub fn this_binary() -> Digest {
    outpost_agent::attest::software_digest().unwrap()
}

/// The hub's reason for a `NotAttested` refusal (`not attested: <reason>`); panics on any other outcome.
pub fn refusal(e: outpost_net::client::ClientError) -> String {
    match outpost_agent::attest::not_attested_reason(&e) {
        Some(reason) => reason.to_owned(),
        None => panic!("expected NotAttested, got {e}"),
    }
}

/// What this test binary, as the agent of `identity`, states in hand-made evidence for `nonce`, running `model`
/// (no policy, no quote).
pub fn claims(identity: &Identity, nonce: [u8; 32], model: Option<Digest>) -> outpost_attestation::Claims {
    outpost_attestation::Claims {
        nonce,
        ueid: identity.public_key(),
        oemid: None,
        hwmodel: None,
        bootcount: 1,
        swname: outpost_agent::attest::SWNAME.into(),
        swversion: outpost_agent::attest::SWVERSION.into(),
        software_digest: this_binary(),
        model_digest: model,
        policy_digest: None,
        tpm_quote: None,
    }
}

impl World {
    pub fn new() -> World {
        Self::at(NOW)
    }

    /// A hub whose clock (and every time it signs: TUF expiries, reference values, assignments) starts at the
    /// system clock's now, for tests that talk to processes reading the real clock: they pass on any date.
    pub fn on_wall_clock() -> World {
        use outpost_shared::clock::Clock;
        Self::at(Wall.wall())
    }

    /// A hub whose clock (and metadata) start at `now`.
    pub fn at(now: u64) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hub");
        Registry::init(&dir).unwrap();
        let repo = TufRepo::new(&dir, Default::default());
        repo.generate(&tmp.path().join("offline"), GenerateOptions::default(), &mut SeededRng::new(5), now).unwrap();
        let team_pub = dir.join(outpost_hub::attest::TEAM_KEY_FILE);
        std::fs::create_dir_all(team_pub.parent().unwrap()).unwrap();
        std::fs::write(&team_pub, team().public_key().to_hex()).unwrap();
        let w = World { tmp, dir, repo, clock: Arc::new(ManualClock::new(now)), serial: std::cell::Cell::new(0) };
        w.install_reference_values(vec![software(this_binary())]);
        w
    }

    /// Signs reference values listing `software` (valid for a year from the hub's clock) with the team key and
    /// installs them: a serving hub uses them from its next challenge.
    pub fn install_reference_values(&self, software: Vec<SoftwareRef>) {
        use outpost_shared::clock::Clock;
        let serial = self.serial.get() + 1;
        self.serial.set(serial);
        let now = self.clock.wall();
        let doc = ReferenceValues { serial, issued_at: now, expires: now + 365 * 24 * 3600, software };
        let config = outpost_hub::config::Attestation::default();
        outpost_hub::attest::install_reference_values(&self.dir, &config, &doc.sign(&team()), self.clock.clone())
            .unwrap();
    }

    /// Also allows the `outpost-agent` binary, for tests that run it as a process.
    pub fn allow_agent_binary(&self) {
        let (_, agent) =
            outpost_agent::device::hash_file(std::path::Path::new(env!("CARGO_BIN_EXE_outpost-agent"))).unwrap();
        let mut allowed = vec![software(this_binary())];
        if agent != this_binary() {
            allowed.push(software(agent));
        }
        self.install_reference_values(allowed);
    }

    pub fn registry(&self) -> Registry {
        Registry::open(&self.dir, self.clock.clone()).unwrap()
    }

    pub fn add_and_publish(&self, m: &AffineManifest, channel: &str) -> (Digest, String) {
        self.add_and_publish_sized(m, channel, 0)
    }

    /// Like `add_and_publish`, with `padding_floats` of extra weights to make the package larger.
    pub fn add_and_publish_sized(&self, m: &AffineManifest, channel: &str, padding_floats: usize) -> (Digest, String) {
        let model = outpost_shared::testkit::affine_model_sized(m.scale, m.bias, padding_floats);
        self.add_file_and_publish(&format!("{}-{}.onnx", m.name, m.version), &model, &m.toml(), channel)
    }

    /// Like `add_and_publish`, for `capability` with a memory budget of `memory_bytes`.
    pub fn add_and_publish_capability(
        &self,
        m: &AffineManifest,
        capability: &str,
        memory_bytes: u64,
        channel: &str,
    ) -> (Digest, String) {
        let model = outpost_shared::testkit::affine_model(m.scale, m.bias);
        let toml = m
            .toml()
            .replace("capability = \"test.affine\"", &format!("capability = \"{capability}\""))
            .replace("memory_budget_bytes = 1048576", &format!("memory_budget_bytes = {memory_bytes}"));
        self.add_file_and_publish(&format!("{}-{}.onnx", m.name, m.version), &model, &toml, channel)
    }

    /// Adds a firmware package (image + manifest) through the registry and publishes it to `channel`.
    pub fn add_and_publish_firmware(&self, m: &FirmwareManifest, image: &[u8], channel: &str) -> (Digest, String) {
        self.add_file_and_publish(&format!("{}-{}.bin", m.name, m.version), image, &m.toml(), channel)
    }

    /// Writes `payload` as `file` and its manifest beside it, adds them through the registry and publishes.
    fn add_file_and_publish(&self, file: &str, payload: &[u8], toml: &str, channel: &str) -> (Digest, String) {
        let path = self.tmp.path().join(file);
        let manifest = path.with_extension("toml");
        std::fs::write(&path, payload).unwrap();
        std::fs::write(&manifest, toml).unwrap();
        let reg = self.registry();
        let d = reg.add(&path, &manifest).unwrap().digest;
        let (record, parsed) = (reg.record(&d).unwrap().unwrap(), reg.manifest(&d).unwrap().1);
        self.publish_as(&record, &parsed, channel);
        (d, outpost_hub::tuf::target_path(&parsed))
    }

    /// Publishes `record` under `manifest`'s name and custom fields with the first targets key, as given, signed
    /// at the hub's clock: tests use it to publish what the hub's own checks would refuse.
    pub fn publish_as(&self, record: &outpost_hub::registry::PackageRecord, manifest: &Manifest, channel: &str) {
        use outpost_shared::clock::Clock;
        let key_path = self.tmp.path().join("offline/targets-1.key");
        let now = self.clock.wall();
        self.repo.publish(record, manifest, channel, &Key::load(&key_path).unwrap(), &key_path, now).unwrap();
    }

    pub async fn serve(&self) -> (std::net::SocketAddr, outpost_attestation::identity::PublicKey) {
        let (addrs, key) = self.serve_replicas(1).await;
        (addrs[0], key)
    }

    /// The hub served by `n` replicas on loopback, as `outpost-hub serve` on `n` machines over the same hub data
    /// and identity: `n` servers with their own ports over one backend (one store, as redb allows one opener).
    /// Returns their addresses and the one hub key they all present.
    pub async fn serve_replicas(
        &self,
        n: usize,
    ) -> (Vec<std::net::SocketAddr>, outpost_attestation::identity::PublicKey) {
        let backend =
            Arc::new(HubBackend::new(&self.dir, TufRepo::new(&self.dir, Default::default()), self.clock.clone()));
        let addrs = (0..n).map(|_| serve_on_loopback(backend.clone(), Identity::from_seed([1; 32]))).collect();
        (addrs, Identity::from_seed([1; 32]).public_key())
    }

    pub fn root(&self) -> Vec<u8> {
        std::fs::read(self.repo.metadata_dir().join("1.root.json")).unwrap()
    }
}

/// Serves `backend` (a hub's, or a site node) as `identity` on a free loopback port until the test ends.
pub fn serve_on_loopback<B: outpost_net::server::Backend>(backend: Arc<B>, identity: Identity) -> std::net::SocketAddr {
    let mut config = ServeConfig::new(identity);
    config.bind = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(config, backend).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// A connection of `device` to the hub at `addr`, attested as a device with no model and no policy.
pub async fn connect_attested(
    device: &Identity,
    addr: std::net::SocketAddr,
    hub: outpost_attestation::identity::PublicKey,
) -> outpost_net::client::HubClient {
    let config = outpost_net::client::ClientConfig::new(addr, hub);
    let client = outpost_net::client::HubClient::connect(device, &config).await.unwrap();
    let facts = outpost_agent::attest::Facts { bootcount: 1, model: None, policy: None };
    let verdict = outpost_agent::attest::attest(&client, device, &facts, None).await.unwrap();
    assert!(matches!(verdict, outpost_agent::attest::Outcome::Attested(_)), "{verdict:?}");
    client
}

/// The package the agent serves now.
pub fn active(agent: &outpost_agent::driver::Agent) -> Option<Digest> {
    agent.active().map(|a| *a.digest())
}

/// One check that installs the assigned package, then `health` good inferences that confirm it.
pub async fn adopt(agent: &mut outpost_agent::driver::Agent, health: u32) {
    use outpost_shared::update::Phase;
    agent.check().await.unwrap();
    assert!(matches!(agent.state().phase, Phase::Health { .. }), "{:?}", agent.state().phase);
    for _ in 0..health {
        agent.record_inference(true).unwrap();
    }
    assert_eq!(agent.state().phase, Phase::Idle);
}

/// One update check against a dripping peer: it must end in `CheckError::Deadline(deadline)` (not a stall
/// timeout), in real time between the deadline and three times it; still running at five times it is a frozen loop.
#[allow(clippy::disallowed_methods)] // The deadline runs in real time, and so does the wait it bounds.
pub async fn check_cut_at_deadline(agent: &mut outpost_agent::driver::Agent, deadline: std::time::Duration) {
    let started = std::time::Instant::now();
    let e = tokio::time::timeout(deadline * 5, agent.check())
        .await
        .expect("the check returns: the dripping peer does not hold the loop")
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, outpost_agent::driver::CheckError::Deadline(d) if d == deadline), "{e}");
    assert!(took >= deadline && took < deadline * 3, "the check ended after {took:?}");
}

/// The `agent.toml` of an `outpost-agent run` process under test, talking to the hub at `addr`: a check every
/// second, no jitter, a health window of `health_secs` seconds (no inference count ends it), the inference API on
/// any free port.
pub fn process_config(
    addr: std::net::SocketAddr,
    hub: &outpost_attestation::identity::PublicKey,
    health_secs: u64,
) -> String {
    outpost_agent::config::render(&addr.to_string(), &hub.to_hex())
        .replace("poll_secs = 60", "poll_secs = 1")
        .replace("jitter_secs = 10", "jitter_secs = 0")
        .replace("health_inferences = 20", "health_inferences = 1000000")
        .replace("health_secs = 300", &format!("health_secs = {health_secs}"))
        .replace("127.0.0.1:8080", "127.0.0.1:0")
}
