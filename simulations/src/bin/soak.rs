//! Soak: a real `outpost-hub serve`, a site node and N agents as processes on loopback, under churn for a fixed
//! time — a release every minute, a revocation every third minute, an agent restarted and another killed with
//! SIGKILL every minute — sampling the RSS and open file descriptors of every process and the model each agent
//! answers with. At the end: the curve, the first-vs-last-window ratios, every warning and error line of every log
//! classified (explained by the churn or not), and whether every agent answered from a signed, non-revoked model.
//!
//! It drives the product's own binaries (as `scripts/demo` does) and holds no product logic. Exit status 1 when an
//! agent answered from a model it must not serve, or a log line is unexplained.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use outpost_sim::http::Http;
use outpost_sim::procfs::{open_fds, status_kib};

/// Soak a hub, a site node and a fleet of agents under churn, and report resources, models and log lines.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// How long the churn runs, after setup.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Agents to run (every fifth behind the site node).
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Directory holding outpost-hub and outpost-agent (built with the `site` feature); default: this binary's.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Working directory for the hub, the devices and the logs (emptied first).
    #[arg(long, value_name = "DIR", default_value = "soak-data")]
    dir: PathBuf,
    /// UDP port of the hub; the site node takes the next one.
    #[arg(long, default_value_t = 17643)]
    hub_port: u16,
    /// First TCP port of the agents' inference APIs (one each, consecutive).
    #[arg(long, default_value_t = 18300)]
    api_port: u16,
    /// Seed of the churn's choices (which agents are killed and restarted).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The fixture model every release carries; each release is a new version of it (a new package, same weights).
const MODEL: &str = "fixtures/models/ch_ppocr_mobile_v2.0_cls_infer.onnx";
const MANIFEST: &str = "fixtures/models/ppocr-direction.toml";
const NAME: &str = "ppocr-direction";
/// Agents check every POLL_SECS plus up to JITTER_SECS, and confirm a new model after HEALTH good inferences.
const POLL_SECS: u64 = 5;
const JITTER_SECS: u64 = 2;
const HEALTH: u32 = 2;
/// How long after a revocation an agent may still answer from the revoked model: two checks, then download,
/// verification, smoke test and switch of the fallback.
const REVOCATION_GRACE: Duration = Duration::from_secs(2 * (POLL_SECS + JITTER_SECS) + 20);
/// How long a killed agent stays down before it is started again.
const DOWN_TIME: Duration = Duration::from_secs(3);
/// How long a (re)started agent may take to answer: its first check, download and smoke test, or loading the
/// model from its slot.
const START_GRACE: Duration = Duration::from_secs(90);
/// Bound on one inference request during sampling.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A process gets this long to exit after SIGINT before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    outpost_sim::log_warnings();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A process the soak started; SIGKILLed when dropped if still running.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: &Path) -> Result<Proc> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().with_context(|| format!("starting {cmd:?}"))?;
        Ok(Proc { child, log: log.to_owned() })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then SIGKILL if it has not exited within [`STOP_TIMEOUT`]. A process that had already exited, or
    /// exits with a failure, is an error: nothing but the soak should stop it.
    fn stop(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("pid {} had exited on its own ({status})", self.pid());
        }
        let _ = Command::new("kill").arg("-INT").arg(self.pid().to_string()).status();
        let start = now();
        while start.elapsed() < STOP_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "pid {} exited with {status} after SIGINT", self.pid());
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("pid {} did not exit within {STOP_TIMEOUT:?} of SIGINT", self.pid())
    }

    fn kill9(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("pid {} had exited on its own ({status})", self.pid());
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    fn note(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(f, "--- soak: {line} by the soak");
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One agent: its config, its API, and its process (None while the churn holds it down).
struct Agent {
    config: PathBuf,
    api: SocketAddr,
    proc: Option<Proc>,
    /// When its process last started.
    started: Instant,
    /// Whether it has answered since then.
    answered: bool,
}

/// Releases as the samplers judge them: version -> when revoked (if it was).
#[derive(Default)]
struct Releases {
    published: BTreeSet<String>,
    revoked: BTreeMap<String, Instant>,
}

/// How an agent answered at one sample.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    /// From a published, non-revoked version.
    Valid(String),
    /// From a version revoked less than [`REVOCATION_GRACE`] ago.
    RevokedInGrace(String),
    /// From a version never published, or revoked longer ago than the grace.
    Invalid(String),
    /// Not answering yet: (re)started less than [`START_GRACE`] ago and no answer since.
    Starting,
    /// Held down by the churn (killed or being restarted).
    Down,
    /// Running and answered before, but not answering now (the error).
    NotServing(String),
}

struct Sample {
    at: Duration,
    hub: (u64, usize),
    site: (u64, usize),
    /// Mean over running agents.
    agents: (f64, f64),
    answers: Vec<Answer>,
}

struct Fleet {
    root: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    hub_addr: String,
    hub: Option<Proc>,
    site: Option<Proc>,
    agents: Vec<Arc<Mutex<Agent>>>,
    releases: Arc<Mutex<Releases>>,
    request: Vec<u8>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_default()
}

fn run(cli: Cli) -> Result<bool> {
    let bin = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("binary directory")?.to_owned(),
    };
    for b in ["outpost-hub", "outpost-agent"] {
        ensure!(bin.join(b).exists(), "{} is missing (build it, or pass --bin-dir)", bin.join(b).display());
    }
    if cli.dir.exists() {
        std::fs::remove_dir_all(&cli.dir).with_context(|| format!("emptying {}", cli.dir.display()))?;
    }
    std::fs::create_dir_all(&cli.dir)?;
    let dir = std::fs::canonicalize(&cli.dir)?;
    let mut fleet = Fleet {
        root: repo_root(),
        bin,
        dir,
        hub_addr: format!("127.0.0.1:{}", cli.hub_port),
        hub: None,
        site: None,
        agents: Vec::new(),
        releases: Arc::default(),
        request: ppocr_request(),
    };
    let started = now();
    eprintln!("soak: setting up a hub, a site node and {} agents in {}", cli.agents, fleet.dir.display());
    fleet.setup(&cli)?;
    eprintln!(
        "soak: setup took {:.0} s; churn for {} min, a sample every {} s",
        started.elapsed().as_secs_f64(),
        cli.minutes,
        cli.sample_secs
    );

    let disk_before = fleet.disk();
    let t0 = now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (agents, releases, request) = (fleet.agents.clone(), fleet.releases.clone(), fleet.request.clone());
        let (stop, samples) = (stop.clone(), samples.clone());
        let hub_pid = fleet.hub.as_ref().map(Proc::pid).context("hub")?;
        let site_pid = fleet.site.as_ref().map(Proc::pid).context("site")?;
        let every = Duration::from_secs(cli.sample_secs);
        std::thread::spawn(move || {
            let mut next = now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if now() >= next {
                    let s = sample(t0, hub_pid, site_pid, &agents, &releases, &request);
                    eprintln!("{}", row(&s));
                    samples.lock().expect("samples").push(s);
                    next = (next + every).max(now());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let mut churn_errors = Vec::new();
    let mut rng = cli.seed.max(1);
    for minute in 0..cli.minutes {
        let start = t0 + Duration::from_secs(minute * 60);
        let at = |secs: u64| start + Duration::from_secs(secs);
        let version = format!("2.1.{}", minute + 1);
        for (secs, step) in MINUTE {
            if *step == Step::Revoke && minute % 3 != 1 {
                continue;
            }
            sleep_until(at(*secs));
            let (what, done) = match step {
                Step::Release => (format!("release {version}"), fleet.release(&version)),
                Step::Revoke => (format!("revoke {version}"), fleet.revoke(&version)),
                Step::Kill9 => {
                    let victim = next_agent(&mut rng, fleet.agents.len());
                    (format!("kill -9 agent {victim}"), fleet.bounce(victim, true))
                }
                Step::Restart => {
                    let victim = next_agent(&mut rng, fleet.agents.len());
                    (format!("restart agent {victim}"), fleet.bounce(victim, false))
                }
            };
            if let Err(e) = done {
                churn_errors.push(format!("minute {minute}: {what}: {e:#}"));
            }
        }
        sleep_until(at(60));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.join();
    let shutdown = fleet.shutdown();
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    let logs = fleet.logs()?;
    let disk = [disk_before, fleet.disk()];
    Ok(report(&cli, &samples, &churn_errors, shutdown, &logs, disk, &fleet.dir))
}

/// One churn step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A new version of the fixture model, published to both channels.
    Release,
    /// The minute's release revoked (every third minute).
    Revoke,
    /// An agent killed with SIGKILL, started again after [`DOWN_TIME`].
    Kill9,
    /// An agent stopped with SIGINT and started again.
    Restart,
}

/// What each minute of churn does, at which second.
const MINUTE: &[(u64, Step)] = &[(0, Step::Release), (20, Step::Kill9), (30, Step::Revoke), (40, Step::Restart)];

#[allow(clippy::disallowed_methods)] // The soak runs real processes on real time.
fn now() -> Instant {
    Instant::now()
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(now()) {
        std::thread::sleep(d);
    }
}

/// xorshift64: which agent the churn picks next.
fn next_agent(state: &mut u64, n: usize) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % n as u64) as usize
}

/// The demo's OIP request: one 48x192 text-line crop, a left-to-right ramp in [-1, 1].
fn ppocr_request() -> Vec<u8> {
    let data: Vec<f32> = (0..3 * 48 * 192).map(|i| -1.0 + 2.0 * (i % 192) as f32 / 191.0).collect();
    let body =
        serde_json::json!({ "inputs": [{ "name": "x", "shape": [1, 3, 48, 192], "datatype": "FP32", "data": data }] });
    Http::post_request(&format!("/v2/models/{NAME}/infer"), &serde_json::to_vec(&body).unwrap_or_default(), None)
}

impl Fleet {
    fn hub_dir(&self) -> PathBuf {
        self.dir.join("hub")
    }

    /// Runs `outpost-hub --data-dir HUB ARGS` to completion; its stdout, trimmed.
    fn hub(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(self.bin.join("outpost-hub"));
        cmd.arg("--data-dir").arg(self.hub_dir());
        self.output(cmd, args)
    }

    /// Runs `outpost-agent ARGS` to completion; its stdout, trimmed.
    fn agent_cmd(&self, args: &[&str]) -> Result<String> {
        self.output(Command::new(self.bin.join("outpost-agent")), args)
    }

    fn output(&self, mut cmd: Command, args: &[&str]) -> Result<String> {
        let out = cmd.args(args).current_dir(&self.root).output().with_context(|| format!("running {cmd:?}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "{:?} {}: {}", cmd.get_program(), args.join(" "), stderr.trim());
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn path(&self, p: &Path) -> String {
        p.display().to_string()
    }

    fn setup(&mut self, cli: &Cli) -> Result<()> {
        let hub = self.hub_dir();
        let offline = self.dir.join("offline");
        let key = self.path(&offline.join("targets-1.key"));
        self.hub(&["init"])?;
        self.hub(&["package", "add", MODEL, "--manifest", MANIFEST])?;
        self.hub(&["keys", "generate", "--offline-dir", &self.path(&offline)])?;
        // Attestation: the team key signs the agent build the hub may serve (the one this soak runs).
        let team = self.hub(&["attestation", "team-key", "--out", &self.path(&offline.join("team.key"))])?;
        outpost_sim::fleet::hub::set_team_key(&hub.join("hub.toml"), &team)?;
        let agent = self.bin.join("outpost-agent");
        let sha = sha256_hex(&agent)?;
        let version = self.agent_cmd(&["--version"])?;
        let version = version.split_whitespace().nth(1).context("outpost-agent --version")?.to_owned();
        let refs = self.path(&self.dir.join("reference-values.cbor"));
        let team_key = self.path(&offline.join("team.key"));
        self.hub(&[
            "attestation",
            "reference",
            "sign",
            "--team-key",
            &team_key,
            "--version",
            &version,
            "--sha256",
            &sha,
            "--out",
            &refs,
        ])?;
        self.hub(&["attestation", "reference", "install", &refs])?;
        for channel in ["stable", "plant"] {
            self.hub(&["release", "publish", &format!("{NAME}@2.0.0"), "--channel", channel, "--key", &key])?;
        }
        self.releases.lock().expect("releases").published.insert("2.0.0".into());
        let hub_key = self.hub(&["identity"])?;
        let serve_log = self.dir.join("hub.log");
        let mut serve = Command::new(self.bin.join("outpost-hub"));
        serve.arg("--data-dir").arg(&hub).args(["serve", "--bind", &self.hub_addr]);
        self.hub = Some(Proc::spawn(&mut serve, &serve_log)?);
        std::thread::sleep(Duration::from_secs(1));

        // The site node: plant-7, on channel plant, with a policy that admits OCR models.
        let root = self.path(&hub.join("repository/metadata/1.root.json"));
        let site_dir = self.dir.join("site");
        let node = self.agent_cmd(&[
            "init",
            "--hub",
            &self.hub_addr,
            "--hub-key",
            &hub_key,
            "--root",
            &root,
            "--dir",
            &self.path(&site_dir),
        ])?;
        self.hub(&["device", "approve", &node, "--channel", "plant", "--site", "plant-7", "--site-node"])?;
        std::fs::write(
            self.dir.join("plant-7.toml"),
            "site = \"plant-7\"\nallowed_capabilities = [\"ocr.*\"]\nallowed_data_classes = [\"public\", \"internal\"]\n",
        )?;
        let site_addr = format!("127.0.0.1:{}", cli.hub_port + 1);
        let site_config = site_dir.join("agent.toml");
        let text = std::fs::read_to_string(&site_config)?
            .replace("bind = \"0.0.0.0:7443\"", &format!("bind = \"{site_addr}\""));
        std::fs::write(&site_config, format!("{text}\n[policy]\nfile = \"../plant-7.toml\"\n"))?;
        let mut site = Command::new(&agent);
        site.args(["run", "--mode", "site", "--config"]).arg(&site_config);
        self.site = Some(Proc::spawn(&mut site, &self.dir.join("site.log"))?);
        std::thread::sleep(Duration::from_secs(1));

        for i in 0..cli.agents {
            let behind_site = i % 5 == 4;
            let dir = self.dir.join(format!("agent{i:02}"));
            let (upstream, upstream_key, channel) = if behind_site {
                (site_addr.as_str(), node.as_str(), "plant")
            } else {
                (self.hub_addr.as_str(), hub_key.as_str(), "stable")
            };
            let key = self.agent_cmd(&[
                "init",
                "--hub",
                upstream,
                "--hub-key",
                upstream_key,
                "--root",
                &root,
                "--dir",
                &self.path(&dir),
            ])?;
            let mut approve = vec!["device", "approve", key.as_str(), "--channel", channel];
            if behind_site {
                approve.extend(["--site", "plant-7"]);
            }
            self.hub(&approve)?;
            let api: SocketAddr = format!("127.0.0.1:{}", cli.api_port + i as u16).parse()?;
            let config = dir.join("agent.toml");
            let text = std::fs::read_to_string(&config)?
                .replace("poll_secs = 60", &format!("poll_secs = {POLL_SECS}"))
                .replace("jitter_secs = 10", &format!("jitter_secs = {JITTER_SECS}"))
                .replace("health_inferences = 20", &format!("health_inferences = {HEALTH}"))
                .replace("127.0.0.1:8080", &api.to_string());
            std::fs::write(&config, text)?;
            let agent = Agent { config, api, proc: None, started: now(), answered: false };
            self.agents.push(Arc::new(Mutex::new(agent)));
            self.start_agent(i)?;
        }
        Ok(())
    }

    fn agent_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent{i:02}.log"))
    }

    fn start_agent(&self, i: usize) -> Result<()> {
        let mut a = self.agents[i].lock().expect("agent");
        let mut cmd = Command::new(self.bin.join("outpost-agent"));
        cmd.args(["run", "--config"]).arg(&a.config);
        a.proc = Some(Proc::spawn(&mut cmd, &self.agent_log(i))?);
        a.started = now();
        a.answered = false;
        Ok(())
    }

    /// Adds the fixture model as `version` and publishes it to both channels.
    fn release(&self, version: &str) -> Result<()> {
        let manifest = std::fs::read_to_string(self.root.join(MANIFEST))?
            .replace("version = \"2.0.0\"", &format!("version = \"{version}\""));
        let path = self.dir.join(format!("manifest-{version}.toml"));
        std::fs::write(&path, manifest)?;
        self.hub(&["package", "add", MODEL, "--manifest", &self.path(&path)])?;
        let key = self.path(&self.dir.join("offline/targets-1.key"));
        for channel in ["stable", "plant"] {
            self.hub(&["release", "publish", &format!("{NAME}@{version}"), "--channel", channel, "--key", &key])?;
        }
        self.releases.lock().expect("releases").published.insert(version.to_owned());
        eprintln!("soak: released {version}");
        Ok(())
    }

    fn revoke(&self, version: &str) -> Result<()> {
        // Judged revoked from the moment the command starts: the grace counts from here.
        self.releases.lock().expect("releases").revoked.insert(version.to_owned(), now());
        self.hub(&["release", "revoke", &format!("{NAME}@{version}"), "--reason", "soak: revoked under churn"])?;
        eprintln!("soak: revoked {version}");
        Ok(())
    }

    /// Takes agent `i` down and starts it again: SIGKILL and [`DOWN_TIME`] down when `hard`, else SIGINT and a
    /// clean exit. An agent that had to be killed after SIGINT is started again too, and reported.
    fn bounce(&self, i: usize, hard: bool) -> Result<()> {
        let proc = self.agents[i].lock().expect("agent").proc.take();
        let mut stopped = Ok(());
        if let Some(mut p) = proc {
            stopped = if hard { p.kill9() } else { p.stop() };
            p.note(if hard { "killed with SIGKILL" } else { "stopped with SIGINT, restarting" });
        }
        eprintln!("soak: agent {i} {}", if hard { "killed with SIGKILL" } else { "restarted" });
        if hard {
            std::thread::sleep(DOWN_TIME);
        }
        self.start_agent(i)?;
        stopped
    }

    /// Stops every process (agents, site node, hub) with SIGINT; what did not stop cleanly.
    fn shutdown(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(mut p) = a.lock().expect("agent").proc.take()
                && let Err(e) = p.stop()
            {
                failed.push(format!("agent {i}: {e:#}"));
            }
        }
        for (name, p) in [("site node", self.site.take()), ("hub", self.hub.take())] {
            if let Some(mut p) = p
                && let Err(e) = p.stop()
            {
                failed.push(format!("{name}: {e:#}"));
            }
        }
        failed
    }

    /// The size of the hub's, the site node's and (the mean of) the agents' data directories.
    fn disk(&self) -> Disk {
        let mib = |p: &Path| du(p) as f64 / (1024.0 * 1024.0);
        let n = self.agents.len().max(1) as f64;
        let agents = (0..self.agents.len()).map(|i| mib(&self.dir.join(format!("agent{i:02}")))).sum::<f64>();
        Disk { hub: mib(&self.hub_dir()), site: mib(&self.dir.join("site")), agents: agents / n }
    }

    /// Every log: (name, text).
    fn logs(&self) -> Result<Vec<(String, String)>> {
        let mut names = vec!["hub.log".to_owned(), "site.log".to_owned()];
        names.extend((0..self.agents.len()).map(|i| format!("agent{i:02}.log")));
        names
            .into_iter()
            .map(|n| Ok((n.clone(), std::fs::read_to_string(self.dir.join(&n)).with_context(|| n.clone())?)))
            .collect()
    }
}

/// Data directory sizes, MiB.
#[derive(Debug, Clone, Copy)]
struct Disk {
    hub: f64,
    site: f64,
    agents: f64,
}

/// Bytes of the regular files under `path`.
fn du(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn sha256_hex(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(outpost_shared::Digest::of(&bytes).to_hex())
}

fn rss_fds(pid: u32) -> (u64, usize) {
    (status_kib(pid, "VmRSS:").unwrap_or(0), open_fds(pid).unwrap_or(0))
}

fn sample(
    t0: Instant,
    hub: u32,
    site: u32,
    agents: &[Arc<Mutex<Agent>>],
    releases: &Mutex<Releases>,
    request: &[u8],
) -> Sample {
    let at = t0.elapsed();
    let (mut rss, mut fds, mut running) = (0u64, 0usize, 0usize);
    let mut answers = Vec::new();
    for a in agents {
        // The agent stays locked while it is asked, so the churn cannot take it down mid-question.
        let mut a = a.lock().expect("agent");
        let Some(pid) = a.proc.as_ref().map(Proc::pid) else {
            answers.push(Answer::Down);
            continue;
        };
        let (r, f) = rss_fds(pid);
        (rss, fds, running) = (rss + r, fds + f, running + 1);
        let answer = match ask(a.api, request) {
            Ok(version) => {
                a.answered = true;
                let releases = releases.lock().expect("releases");
                match releases.revoked.get(&version) {
                    _ if !releases.published.contains(&version) => Answer::Invalid(version),
                    Some(when) if when.elapsed() > REVOCATION_GRACE => Answer::Invalid(version),
                    Some(_) => Answer::RevokedInGrace(version),
                    None => Answer::Valid(version),
                }
            }
            Err(_) if !a.answered && a.started.elapsed() < START_GRACE => Answer::Starting,
            Err(e) => Answer::NotServing(format!("{e:#}")),
        };
        answers.push(answer);
    }
    let mean = |x: f64| if running == 0 { 0.0 } else { x / running as f64 };
    Sample { at, hub: rss_fds(hub), site: rss_fds(site), agents: (mean(rss as f64), mean(fds as f64)), answers }
}

/// One inference; the model version that answered.
fn ask(api: SocketAddr, request: &[u8]) -> Result<String> {
    let mut http = Http::connect_timeout(api, REQUEST_TIMEOUT)?;
    let (status, body) = http.exchange(request)?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(status == 200, "HTTP {status}: {v}");
    Ok(v["model_version"].as_str().context("model_version")?.to_owned())
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

fn versions(s: &Sample) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &s.answers {
        let v = match a {
            Answer::Valid(v) => v.as_str(),
            Answer::RevokedInGrace(_) => "revoked(grace)",
            Answer::Invalid(_) => "INVALID",
            Answer::Starting => "starting",
            Answer::Down => "down",
            Answer::NotServing(_) => "NOT-SERVING",
        };
        *by.entry(v).or_default() += 1;
    }
    by.iter().map(|(v, n)| format!("{v}:{n}")).collect::<Vec<_>>().join(" ")
}

/// A sample as a row of the report's table (also the progress line).
fn row(s: &Sample) -> String {
    format!(
        "| {:.0} | {:.1} | {} | {:.1} | {} | {:.1} | {:.1} | {} |",
        s.at.as_secs_f64(),
        mib(s.hub.0 as f64),
        s.hub.1,
        mib(s.site.0 as f64),
        s.site.1,
        mib(s.agents.0),
        s.agents.1,
        versions(s)
    )
}

/// A figure of a sample, by name.
type Measure = (&'static str, fn(&Sample) -> f64);

/// What the first-vs-last window comparison compares.
const MEASURES: [Measure; 6] = [
    ("hub RSS MiB", |s| mib(s.hub.0 as f64)),
    ("hub fds", |s| s.hub.1 as f64),
    ("site RSS MiB", |s| mib(s.site.0 as f64)),
    ("site fds", |s| s.site.1 as f64),
    ("agent RSS MiB (mean)", |s| mib(s.agents.0)),
    ("agent fds (mean)", |s| s.agents.1),
];

/// Log lines the churn explains: (what the line says, why the soak causes it).
/// None today: a release published between an agent's TUF refresh and its assignment fetch, once explained
/// here, is now settled within the check (the agent refreshes TUF again).
const EXPLAINED: &[(&str, &str)] = &[];

/// A line's message with what varies per occurrence (numbers, digests, keys, addresses) masked.
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in line.chars() {
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// (level, message) of a tracing text line at WARN or ERROR; None for other lines.
fn warning(line: &str) -> Option<(&str, &str)> {
    let rest = line.split_once(' ')?.1.trim_start();
    let (level, message) = rest.split_once(' ')?;
    (level == "WARN" || level == "ERROR").then_some((level, message.trim_start()))
}

fn report(
    cli: &Cli,
    samples: &[Sample],
    churn: &[String],
    shutdown: Vec<String>,
    logs: &[(String, String)],
    disk: [Disk; 2],
    dir: &Path,
) -> bool {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Soak: {} agents ({} behind the site node), {} min, a sample every {} s\n",
        cli.agents,
        cli.agents / 5,
        cli.minutes,
        cli.sample_secs
    );
    // The curve: at most ~31 rows.
    let step = samples.len().div_ceil(30).max(1);
    let _ = writeln!(
        out,
        "| t (s) | hub RSS MiB | hub fds | site RSS MiB | site fds | agent RSS MiB (mean) | agent fds (mean) | answers |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let mut rows: Vec<usize> = (0..samples.len()).step_by(step).collect();
    if samples.len() > 1 && rows.last() != Some(&(samples.len() - 1)) {
        rows.push(samples.len() - 1);
    }
    for s in rows.iter().map(|&i| &samples[i]) {
        let _ = writeln!(out, "{}", row(s));
    }

    // First vs last window: a sixth of the run each, after the first minute (setup's first activations).
    let settled: Vec<&Sample> = samples.iter().filter(|s| s.at >= Duration::from_secs(60)).collect();
    let w = (settled.len() / 6).max(1);
    let mut flat = true;
    if settled.len() >= 2 {
        let (first, last) = (&settled[..w.min(settled.len())], &settled[settled.len().saturating_sub(w)..]);
        let mean = |xs: &[&Sample], f: fn(&Sample) -> f64| xs.iter().map(|s| f(s)).sum::<f64>() / xs.len() as f64;
        let _ = writeln!(out, "\nFirst vs last window ({} samples each, from t = 60 s):\n", w);
        let _ = writeln!(out, "| measure | first window | last window | last/first |");
        let _ = writeln!(out, "|---|---|---|---|");
        for (name, f) in MEASURES {
            let (a, b) = (mean(first, f), mean(last, f));
            let ratio = if a > 0.0 { b / a } else { f64::NAN };
            flat &= ratio.is_finite() && ratio <= FLAT_RATIO;
            let _ = writeln!(out, "| {name} | {a:.1} | {b:.1} | **{ratio:.2}** |");
        }
    }

    let [before, after] = disk;
    let _ = writeln!(out, "\nData on disk (logs excluded), when the churn began and at the end:\n");
    let _ = writeln!(out, "| | hub | site node | agent (mean) |");
    let _ = writeln!(out, "|---|---|---|---|");
    for (when, d) in [("start", before), ("end", after)] {
        let _ = writeln!(out, "| {when} | {:.1} MiB | {:.1} MiB | {:.1} MiB |", d.hub, d.site, d.agents);
    }

    // Models.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for s in samples {
        for (i, a) in s.answers.iter().enumerate() {
            let k = match a {
                Answer::Valid(_) => "valid (signed, not revoked)",
                Answer::RevokedInGrace(_) => "revoked, within the grace",
                Answer::Invalid(_) => "INVALID",
                Answer::Starting => "starting (no model served yet)",
                Answer::Down => "down (held down by the churn)",
                Answer::NotServing(_) => "NOT SERVING",
            };
            *counts.entry(k).or_default() += 1;
            if matches!(a, Answer::Invalid(_) | Answer::NotServing(_)) {
                bad.push(format!("t = {:.0} s, agent {i}: {a:?}", s.at.as_secs_f64()));
            }
        }
    }
    let _ = writeln!(
        out,
        "\nAnswers over {} samples (grace after a revocation: {} s):\n",
        samples.len(),
        REVOCATION_GRACE.as_secs()
    );
    for (k, n) in &counts {
        let _ = writeln!(out, "- {k}: {n}");
    }
    for b in bad.iter().take(20) {
        let _ = writeln!(out, "  - {b}");
    }

    // Log lines.
    let mut seen: BTreeMap<(String, &str), (usize, BTreeSet<&str>)> = BTreeMap::new();
    for (name, text) in logs {
        for line in text.lines() {
            if let Some((level, message)) = warning(line) {
                let e = seen.entry((shape(message), level)).or_default();
                e.0 += 1;
                e.1.insert(name.split('.').next().unwrap_or(name).trim_end_matches(char::is_numeric));
            }
        }
    }
    let mut unexplained = 0;
    let _ = writeln!(out, "\nWarning and error lines in the logs, by shape (numbers and digests masked as #):\n");
    for ((message, level), (n, whom)) in &seen {
        let why = EXPLAINED.iter().find(|(p, _)| message.contains(p)).map(|(_, why)| *why);
        if why.is_none() {
            unexplained += n;
        }
        let whom: Vec<&str> = whom.iter().copied().collect();
        let _ =
            writeln!(out, "- {n} × {level} ({}) `{message}` — {}", whom.join(", "), why.unwrap_or("**UNEXPLAINED**"));
    }
    if seen.is_empty() {
        let _ = writeln!(out, "- none");
    }
    for c in churn.iter().chain(&shutdown) {
        let _ = writeln!(out, "- churn/shutdown: {c} — **UNEXPLAINED**");
    }
    // A line one process repeats faster than its checks could explain is a loop, whatever its level.
    let minutes = samples.last().map_or(1.0, |s| s.at.as_secs_f64() / 60.0).max(1.0);
    let mut loud = Vec::new();
    for (name, text) in logs {
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for line in text.lines() {
            let message = line.split_once("Z ").map_or(line, |(_, m)| m);
            *by.entry(shape(message)).or_default() += 1;
        }
        if let Some((message, n)) = by.into_iter().max_by_key(|(_, n)| *n) {
            loud.push((n as f64 / minutes, name.as_str(), message));
        }
    }
    loud.sort_by(|a, b| b.0.total_cmp(&a.0));
    let _ = writeln!(out, "\nMost repeated line per log, per minute (the top 5; a loop shows here):\n");
    for (rate, name, message) in loud.iter().take(5) {
        let message: String = message.chars().take(160).collect();
        let _ = writeln!(out, "- {name}: {rate:.1}/min `{message}`");
    }
    let quiet = loud.iter().all(|(rate, ..)| *rate <= MAX_REPEATS_PER_MINUTE);
    let valid = bad.is_empty();
    let clean = unexplained == 0 && churn.is_empty() && shutdown.is_empty();
    let _ = writeln!(out, "\nVerdicts:");
    let _ = writeln!(out, "- every running agent answered from a valid model at every sample: {}", yes(valid));
    let _ = writeln!(out, "- RSS and fds flat (last/first window ≤ {FLAT_RATIO}): {}", yes(flat));
    let _ = writeln!(
        out,
        "- no log line repeated more than {MAX_REPEATS_PER_MINUTE} times a minute by one process: {}",
        yes(quiet)
    );
    let _ =
        writeln!(out, "- every log warning and error explained, every churn step and shutdown clean: {}", yes(clean));
    let _ = writeln!(out, "\nLogs and data: {}", dir.display());
    println!("{out}");
    valid && clean && quiet
}

/// A process saying the same thing more often than this is looping: an agent checks every [`POLL_SECS`] and
/// logs a handful of lines per change.
const MAX_REPEATS_PER_MINUTE: f64 = 30.0;

/// Above this last/first ratio a resource is called growing.
const FLAT_RATIO: f64 = 1.2;

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "**NO**" }
}
