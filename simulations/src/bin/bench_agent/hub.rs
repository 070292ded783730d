//! A hub for the failover and RSS sections: a registry and TUF repository in a temporary directory, publishing
//! fixture packages, serving QUIC on loopback, and approved devices with their `agent.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use outpost_agent::config;
use outpost_agent::driver::init_device;
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_hub::Registry;
use outpost_hub::backend::HubBackend;
use outpost_hub::tuf::{GenerateOptions, Key, TufRepo};
use outpost_net::server::{ServeConfig, Server};
use outpost_shared::Digest;
use outpost_shared::clock::{Clock, ManualClock};
use outpost_shared::rng::SeededRng;

use crate::HEALTH;

pub(crate) struct Hub {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    repo: TufRepo,
    pub(crate) clock: Arc<ManualClock>,
}

impl Hub {
    pub(crate) fn new(now: u64) -> Result<Hub> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("hub");
        Registry::init(&dir)?;
        // This measures the update path alone; attestation's cost is `cargo bench -p outpost-attestation`.
        outpost_hub::config::set_attestation_required(&dir, false)?;
        let repo = TufRepo::new(&dir, Default::default());
        repo.generate(&tmp.path().join("offline"), GenerateOptions::default(), &mut SeededRng::new(7), now)?;
        Ok(Hub { tmp, dir, repo, clock: Arc::new(ManualClock::new(now)) })
    }

    fn registry(&self) -> Result<Registry> {
        Ok(Registry::open(&self.dir, self.clock.clone())?)
    }

    /// Adds `model` with `manifest_text` (its version replaced by `version` when given) and publishes it.
    pub(crate) fn publish(
        &self,
        model: &Path,
        manifest_text: &str,
        version: Option<&str>,
        channel: &str,
    ) -> Result<Digest> {
        let text: String = match version {
            None => manifest_text.to_owned(),
            Some(v) => manifest_text
                .lines()
                .map(|l| if l.starts_with("version = ") { format!("version = \"{v}\"\n") } else { format!("{l}\n") })
                .collect(),
        };
        let manifest_path = self.tmp.path().join("manifest.toml");
        std::fs::write(&manifest_path, text)?;
        let reg = self.registry()?;
        let d = reg.add(model, &manifest_path)?.digest;
        let (record, parsed) = (reg.record(&d)?.context("record")?, reg.manifest(&d)?.1);
        let key_path = self.tmp.path().join("offline/targets-1.key");
        self.repo.publish(&record, &parsed, channel, &Key::load(&key_path)?, &key_path, self.clock.wall())?;
        Ok(d)
    }

    /// Serves the hub's QUIC service on `rt`.
    pub(crate) fn serve(&self, rt: &tokio::runtime::Runtime) -> Result<(SocketAddr, PublicKey)> {
        let hub = Identity::from_seed([1; 32]);
        let key = hub.public_key();
        let backend =
            Arc::new(HubBackend::new(&self.dir, TufRepo::new(&self.dir, Default::default()), self.clock.clone()));
        let mut config = ServeConfig::new(hub);
        config.bind = "127.0.0.1:0".parse()?;
        let server = rt.block_on(async { Server::bind(config, backend) })?;
        let addr = server.local_addr()?;
        rt.spawn(server.run(std::future::pending()));
        Ok((addr, key))
    }

    /// Sets up and approves a device on `channel`, its API on `bind`; returns its config file.
    pub(crate) fn device(
        &self,
        name: &str,
        seed: u8,
        hub: (SocketAddr, PublicKey),
        channel: &str,
        bind: &str,
    ) -> Result<PathBuf> {
        let dir = self.tmp.path().join(name);
        let root = std::fs::read(self.repo.metadata_dir().join("1.root.json"))?;
        let key = init_device(&dir, &root, [seed; 32])?;
        self.registry()?.device_approve(&key, channel)?;
        let text = config::render(&hub.0.to_string(), &hub.1.to_hex())
            .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"))
            .replace("127.0.0.1:8080", bind);
        let path = dir.join("agent.toml");
        std::fs::write(&path, text)?;
        Ok(path)
    }
}
