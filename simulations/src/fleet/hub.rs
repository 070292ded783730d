//! The real `outpost-hub` for a fleet run: its data directory set up with the product's own commands (init, the
//! model's versions, keys, the team key and reference values for this build, devices approved), and its `serve`
//! process, which a scenario may kill with SIGKILL and start again.
//!
//! Admin commands go through the `outpost-hub` binary, which hands them to the serving process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use outpost_shared::Digest;
use outpost_shared::testkit::{AffineManifest, affine_model};

/// The model every version of the scenario ships (a new package per version: its bias is the patch number).
pub const MODEL: &str = "fleet-model";
/// How long `serve` may take to open its admin socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The hub: its directory, binary and serving process.
#[derive(Debug)]
pub struct Hub {
    dir: PathBuf,
    bin: PathBuf,
    offline: PathBuf,
    /// Where devices connect.
    pub addr: std::net::SocketAddr,
    /// The hub's public key (hex), which devices pin.
    pub key: String,
    /// `serve` flags beyond `--bind`.
    serve_args: Vec<String>,
    process: Option<Child>,
    /// Every version's package digest.
    pub digests: Vec<(String, Digest)>,
    log: PathBuf,
}

/// `outpost-hub`: `$OUTPOST_HUB_BIN`, else beside this executable (or its parent, for test binaries in `deps/`).
///
/// # Errors
/// It is nowhere to be found.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("OUTPOST_HUB_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("outpost-hub");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("outpost-hub not found beside {} (cargo build -p outpost-hub, or set OUTPOST_HUB_BIN)", exe.display())
}

impl Hub {
    /// Sets up a hub in `dir` (created empty) serving on `addr`: the versions' packages added, 1.0.0 published to
    /// channel `stable`, attestation required with reference values for this very executable.
    ///
    /// # Errors
    /// A command fails.
    pub fn setup(dir: &Path, addr: std::net::SocketAddr, versions: &[String], serve_args: Vec<String>) -> Result<Hub> {
        let bin = find_binary()?;
        std::fs::create_dir_all(dir)?;
        let mut hub = Hub {
            dir: dir.join("hub"),
            bin,
            offline: dir.join("offline"),
            addr,
            key: String::new(),
            serve_args,
            process: None,
            digests: Vec::new(),
            log: dir.join("hub.log"),
        };
        hub.cli(&["init"])?;
        for (i, version) in versions.iter().enumerate() {
            let m = AffineManifest::new(MODEL, version, 2.0, i as f32);
            let model = dir.join(format!("{MODEL}-{version}.onnx"));
            let manifest = dir.join(format!("{MODEL}-{version}.toml"));
            std::fs::write(&model, affine_model(m.scale, m.bias))?;
            std::fs::write(&manifest, m.toml())?;
            let digest = hub.cli(&["package", "add", &path(&model), "--manifest", &path(&manifest)])?;
            hub.digests.push((version.clone(), digest.parse().context("package add printed no digest")?));
        }
        hub.cli(&["keys", "generate", "--offline-dir", &path(&hub.offline)])?;
        // Attestation: the team key signs this executable as the agent build the hub may serve (the simulated
        // devices run the agent's code inside it).
        let team_key = path(&hub.offline.join("team.key"));
        let team = hub.cli(&["attestation", "team-key", "--out", &team_key])?;
        set_team_key(&hub.dir.join("hub.toml"), &team)?;
        let sha = outpost_agent::attest::software_digest()?.to_string();
        let refs = path(&dir.join("reference-values.cbor"));
        let version = outpost_agent::attest::SWVERSION;
        let sign = ["attestation", "reference", "sign", "--team-key", &team_key, "--version", version];
        hub.cli(&[&sign[..], &["--sha256", &sha, "--out", &refs]].concat())?;
        hub.cli(&["attestation", "reference", "install", &refs])?;
        hub.publish("1.0.0")?;
        hub.key = hub.cli(&["identity"])?;
        Ok(hub)
    }

    /// The hub's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trusted root devices are initialised with.
    ///
    /// # Errors
    /// It cannot be read.
    pub fn root(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.join("repository/metadata/1.root.json"))?)
    }

    /// Approves devices (keys, hex) on channel `stable`, each in its site, before the hub serves: one registry
    /// handle for them all, through the hub library (the CLI would start a process per device).
    ///
    /// # Errors
    /// The hub is serving, or the registry refuses.
    pub fn approve(&self, devices: &[(String, Option<String>, bool)]) -> Result<()> {
        ensure!(self.process.is_none(), "devices are approved before the hub serves");
        let clock: Arc<dyn outpost_shared::clock::Clock> = Arc::new(outpost_hub::clock::SystemClock);
        let reg = outpost_hub::registry::Registry::open(&self.dir, clock)?;
        for (key, site, node) in devices {
            reg.device_approve(key, "stable")?;
            if site.is_some() {
                reg.device_set_site(key, site.as_deref(), *node)?;
            }
        }
        Ok(())
    }

    /// The package digest of `version`.
    pub fn digest(&self, version: &str) -> Option<Digest> {
        self.digests.iter().find(|(v, _)| v == version).map(|(_, d)| *d)
    }

    /// Publishes `version` to channel `stable`.
    ///
    /// # Errors
    /// The command fails.
    pub fn publish(&self, version: &str) -> Result<String> {
        let key = path(&self.offline.join("targets-1.key"));
        self.cli(&["release", "publish", &format!("{MODEL}@{version}"), "--channel", "stable", "--key", &key])
    }

    /// Revokes `version`'s package (the director stops assigning it and TUF drops it).
    ///
    /// # Errors
    /// The command fails.
    pub fn revoke(&self, version: &str) -> Result<String> {
        let key = path(&self.offline.join("targets-1.key"));
        let package = format!("{MODEL}@{version}");
        self.cli(&["release", "revoke", &package, "--reason", "simulated revocation", "--key", &key])
    }

    /// Runs `outpost-hub --data-dir DIR ARGS` (through the serving hub's admin socket when it serves); its
    /// stdout, trimmed.
    ///
    /// # Errors
    /// The command fails.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "outpost-hub {}: {}", args.join(" "), stderr.trim());
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Starts `serve` and waits for its admin socket.
    ///
    /// # Errors
    /// It cannot start, or does not open its socket in time.
    pub fn start(&mut self) -> Result<()> {
        ensure!(self.process.is_none(), "the hub is already serving");
        let socket = self.dir.join("admin.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--bind", &self.addr.to_string(), "--log-level", "warn"])
            .args(&self.serve_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} serve", self.bin.display()))?;
        self.process = Some(child);
        let started = crate::fleet::now();
        while !socket.exists() {
            if let Some(status) = self.process.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("outpost-hub serve exited with {status} (log: {})", self.log.display());
            }
            ensure!(started.elapsed() < START_TIMEOUT, "outpost-hub serve did not open its admin socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The serving process's id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// Kills `serve` with SIGKILL (nothing is flushed or closed).
    ///
    /// # Errors
    /// It is not running.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.process.take().context("the hub is not serving")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops `serve` with SIGINT, as an operator would, waiting for it to exit (SIGKILL after 15 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.process.take() else { return };
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
        let started = crate::fleet::now();
        while started.elapsed() < Duration::from_secs(15) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sets `[attestation] team_key` in a fresh `hub.toml` (where `init` left it commented out).
///
/// # Errors
/// The file cannot be read or written, or has no such line.
pub fn set_team_key(config: &Path, team: &str) -> Result<()> {
    let text = std::fs::read_to_string(config)?;
    ensure!(text.contains("# team_key = "), "{}: no team_key line to set", config.display());
    let text: String = text
        .lines()
        .map(|l| if l.starts_with("# team_key = ") { format!("team_key = \"{team}\"\n") } else { format!("{l}\n") })
        .collect();
    std::fs::write(config, text)?;
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
