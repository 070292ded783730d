//! Test support for the agent: a real hub data directory (registry, TUF repository, director, devices) served
//! over real QUIC on loopback, on a manual clock.

#![allow(dead_code)]

pub mod mirror;

use std::sync::Arc;

use outpost_attestation::identity::Identity;
use outpost_hub::Registry;
use outpost_hub::backend::HubBackend;
use outpost_hub::serve::{ServeConfig, Server};
use outpost_hub::tuf::{GenerateOptions, Key, TufRepo};
use outpost_shared::Digest;
use outpost_shared::Manifest;
use outpost_shared::clock::ManualClock;
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::{AffineManifest, FirmwareManifest};

pub const NOW: u64 = 1_795_881_600;

pub fn ts(secs: u64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs as i64).unwrap()
}

pub struct World {
    pub tmp: tempfile::TempDir,
    pub dir: std::path::PathBuf,
    pub repo: TufRepo,
    pub clock: Arc<ManualClock>,
}

impl World {
    pub fn new() -> World {
        Self::at(NOW)
    }

    /// A hub whose clock (and metadata) start at `now`: real time for tests that run agent processes, which
    /// read the system clock.
    pub fn at(now: u64) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("hub");
        Registry::init(&dir).unwrap();
        let repo = TufRepo::new(&dir, Default::default());
        repo.generate(&tmp.path().join("offline"), GenerateOptions::default(), &mut SeededRng::new(5), now).unwrap();
        World { tmp, dir, repo, clock: Arc::new(ManualClock::new(now)) }
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

    /// Publishes `record` under `manifest`'s name and custom fields with the first targets key, as given: tests
    /// use it to publish what the hub's own checks would refuse.
    pub fn publish_as(&self, record: &outpost_hub::registry::PackageRecord, manifest: &Manifest, channel: &str) {
        let key_path = self.tmp.path().join("offline/targets-1.key");
        self.repo.publish(record, manifest, channel, &Key::load(&key_path).unwrap(), &key_path, NOW).unwrap();
    }

    pub async fn serve(&self) -> (std::net::SocketAddr, outpost_attestation::identity::PublicKey) {
        let hub = Identity::from_seed([1; 32]);
        let key = hub.public_key();
        let backend =
            Arc::new(HubBackend::new(&self.dir, TufRepo::new(&self.dir, Default::default()), self.clock.clone()));
        let mut config = ServeConfig::new(hub);
        config.bind = "127.0.0.1:0".parse().unwrap();
        let server = Server::bind(config, backend).unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        (addr, key)
    }

    pub fn root(&self) -> Vec<u8> {
        std::fs::read(self.repo.metadata_dir().join("1.root.json")).unwrap()
    }
}
