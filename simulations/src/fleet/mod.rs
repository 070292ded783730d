//! `outpost-sim fleet`: many simulated devices in one process, one tokio runtime and a few UDP sockets, against a
//! real `outpost-hub serve` on loopback, following a scenario's story and judging its assertions.
//!
//! The devices run the agent's own driver ([`device`]); the hub is the real binary ([`hub`]); this module only
//! sets them up, plays the events at their times, samples who runs what, and hands the record to [`report`].

pub mod device;
pub mod hub;
pub mod relay;
pub mod report;
pub mod scenario;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use outpost_agent::config::{self, AgentConfig};
use outpost_agent::driver::{Agent, init_device};
use outpost_shared::Digest;

use device::{Board, Body, SkewedClock, Wiring};
use hub::Hub;
use report::{Record, Sample};
use scenario::{Action, Connection, Scenario};

/// The simulations read real time (monotonic), for the devices and the hub run on it.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Instant {
    Instant::now()
}

/// How a run is set up, besides its scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Working directory (emptied first): the hub, the devices, the logs.
    pub dir: PathBuf,
    /// Where the devices keep their files instead of `dir/devices` (emptied first): a tmpfs takes the devices'
    /// fsyncs off the disk the hub writes to, as each real device has a disk of its own.
    pub devices_dir: Option<PathBuf>,
    /// UDP port of the hub on 127.0.0.1 (the site node takes the next two).
    pub port: u16,
    /// Where to draw the chart (SVG), if anywhere.
    pub chart: Option<PathBuf>,
    /// A deliberate fault for the hub (hidden `serve --sim-fault`), to show the scenario catches it.
    pub sim_fault: Option<String>,
    /// Progress lines on stderr every this often (none: quiet).
    pub progress: Option<Duration>,
    /// Sampling period of who runs what.
    pub sample: Duration,
    /// Worker threads of the devices' runtime.
    pub threads: usize,
    /// Route the devices (not behind a site) through a relay that counts the bytes each way, for bytes per check
    /// (the hub then sees the relay's sockets, one per device socket, as its peers).
    pub count_bytes: bool,
}

/// What one device is, before it runs.
struct Spec {
    dir: PathBuf,
    key: String,
    behind_site: bool,
    skew: i64,
}

/// Runs `scenario` and returns its record (judged by [`report::judge`]).
///
/// # Errors
/// Setting up the hub or the devices failed (not an assertion: those are in the record).
pub fn run(scenario: &Scenario, opts: &Options) -> Result<Record> {
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir).with_context(|| format!("emptying {}", opts.dir.display()))?;
    }
    std::fs::create_dir_all(&opts.dir)?;
    let dir = std::fs::canonicalize(&opts.dir)?;
    let devices_dir = match &opts.devices_dir {
        Some(d) => {
            if d.exists() {
                std::fs::remove_dir_all(d).with_context(|| format!("emptying {}", d.display()))?;
            }
            std::fs::create_dir_all(d)?;
            std::fs::canonicalize(d)?
        }
        None => dir.join("devices"),
    };
    let n = scenario.devices;
    let versions = scenario.versions();
    let addr: std::net::SocketAddr = (std::net::Ipv4Addr::LOCALHOST, opts.port).into();
    let max_connections = scenario.fleet.max_connections.unwrap_or(n + 64);
    let mut serve_args = vec!["--max-connections".to_owned(), max_connections.to_string()];
    if let Some(f) = &opts.sim_fault {
        serve_args.extend(["--sim-fault".to_owned(), f.clone()]);
    }
    let setup_started = now();
    say(opts, &format!("setting up a hub and {n} devices in {}", dir.display()));
    let mut hub = Hub::setup(&dir, addr, &versions, serve_args)?;
    let root = hub.root()?;
    let digests: Arc<Vec<Digest>> =
        Arc::new(versions.iter().map(|v| hub.digest(v).context("a version without a package")).collect::<Result<_>>()?);

    // Devices: initialised as `outpost-agent init` does, approved in one go before the hub serves.
    let site_count = (scenario.fleet.site_share * n as f64).round() as usize;
    let skew_count = (scenario.fleet.skew_share * n as f64).round() as usize;
    let mut specs = Vec::with_capacity(n);
    let mut approvals = Vec::with_capacity(n + 1);
    for i in 0..n {
        let dir = devices_dir.join(format!("d{i:06}"));
        let key = init_device(&dir, &root, seed(i as u64))?;
        // Every k-th device is behind the site or skewed, so both spread over the fleet.
        let behind_site =
            site_count > 0 && i % (n / site_count).max(1) == 0 && i / (n / site_count).max(1) < site_count;
        let skewed = skew_count > 0 && i % (n / skew_count).max(1) == 1 % (n / skew_count).max(1);
        let sign = if i % 2 == 0 { 1 } else { -1 };
        let skew = if skewed { sign * scenario.fleet.skew_secs as i64 } else { 0 };
        approvals.push((key.clone(), behind_site.then(|| SITE.to_owned()), false));
        specs.push(Spec { dir, key, behind_site, skew });
    }
    let site_dir = dir.join("site-node");
    if site_count > 0 {
        let key = init_device(&site_dir, &root, seed(u64::MAX))?;
        approvals.push((key, Some(SITE.to_owned()), true));
    }
    hub.approve(&approvals)?;
    hub.start()?;
    say(
        opts,
        &format!("setup took {:.1} s; hub pid {}", setup_started.elapsed().as_secs_f64(), hub.pid().unwrap_or(0)),
    );

    // The devices share one runtime; this thread plays the events (hub commands are processes to wait for) and
    // samples, so neither waits behind the devices' work.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(opts.threads).enable_all().build()?;
    let record = play(scenario, opts, &runtime, &mut hub, specs, digests, &site_dir, site_count > 0);
    runtime.shutdown_timeout(Duration::from_secs(5));
    hub.stop();
    record
}

/// The site the site node serves.
const SITE: &str = "sim-site";

/// A device's identity seed.
fn seed(i: u64) -> [u8; 32] {
    let mut s = [0x5a; 32];
    s[..8].copy_from_slice(&i.to_be_bytes());
    s
}

fn say(opts: &Options, line: &str) {
    if opts.progress.is_some() {
        eprintln!("outpost-sim: {line}");
    }
}

/// The site node (in process, the agent crate's own), reached through a relay to the hub that can be cut.
struct Site {
    config: AgentConfig,
    bind: std::net::SocketAddr,
    relay: relay::Relay,
    stop: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

impl Site {
    fn start(&mut self) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (config, bind) = (self.config.clone(), self.bind);
        let task = tokio::spawn(async move {
            let clock = Arc::new(SkewedClock { offset: 0 });
            if let Err(e) = outpost_agent::site::run(config, clock, bind, async { drop(rx.await) }).await {
                eprintln!("outpost-sim: site node: {e:#}");
            }
        });
        self.stop = Some((tx, task));
    }

    async fn halt(&mut self) {
        if let Some((tx, task)) = self.stop.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}

/// Agent settings for the scenario's timing, pointing at `upstream` with `key`.
fn agent_config(scenario: &Scenario, upstream: std::net::SocketAddr, key: &str) -> Result<AgentConfig> {
    let text = config::render(&upstream.to_string(), key);
    let mut c = AgentConfig::parse(&text, std::path::Path::new("agent.toml"))?;
    c.updates.poll_secs = scenario.timing.poll_secs;
    c.updates.jitter_secs = scenario.timing.jitter_secs;
    c.updates.health_inferences = scenario.timing.health_inferences;
    c.updates.health_secs = scenario.timing.health_secs;
    Ok(c)
}

#[allow(clippy::too_many_arguments)] // one call, from `run`, with what it set up
fn play(
    scenario: &Scenario,
    opts: &Options,
    rt: &tokio::runtime::Runtime,
    hub: &mut Hub,
    specs: Vec<Spec>,
    digests: Arc<Vec<Digest>>,
    site_dir: &std::path::Path,
    with_site: bool,
) -> Result<Record> {
    let _runtime = rt.enter();
    let n = specs.len();
    let mut site = if with_site {
        let relay =
            rt.block_on(relay::Relay::start((std::net::Ipv4Addr::LOCALHOST, opts.port + 1).into(), hub.addr))?;
        let mut config = agent_config(scenario, relay.addr, &hub.key)?;
        config.data_dir = site_dir.to_owned();
        let bind = (std::net::Ipv4Addr::LOCALHOST, opts.port + 2).into();
        let mut site = Site { config, bind, relay, stop: None };
        site.start();
        Some(site)
    } else {
        None
    };

    let mut endpoints = Vec::new();
    for k in 0..scenario.fleet.sockets {
        let local: std::net::SocketAddr = (std::net::Ipv4Addr::new(127, 0, 0, 1 + k as u8), 0).into();
        endpoints.push(quinn::Endpoint::client(local).with_context(|| format!("a UDP socket on {local}"))?);
    }
    let (check_all, check_all_rx) = tokio::sync::watch::channel(0u64);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (sigma, mu) = {
        let (p50, p99) = (scenario.fleet.latency_p50_ms, scenario.fleet.latency_p99_ms);
        ((p99.ln() - p50.ln()) / 2.326, p50.ln())
    };
    let counter = match opts.count_bytes {
        true => Some(rt.block_on(relay::Relay::start((std::net::Ipv4Addr::LOCALHOST, 0).into(), hub.addr))?),
        false => None,
    };
    let base = agent_config(scenario, counter.as_ref().map_or(hub.addr, |c| c.addr), &hub.key)?;
    // Devices behind the site pin the site node's key, as `outpost-agent init --hub SITE --hub-key NODE` does.
    let site_base = match with_site {
        true => {
            let node = outpost_attestation::identity::Identity::load(&site_dir.join("identity.key"))?;
            let addr = (std::net::Ipv4Addr::LOCALHOST, opts.port + 2).into();
            Some(agent_config(scenario, addr, &node.public_key().to_hex())?)
        }
        false => None,
    };
    // Every agent opens first (reading its directory takes a while for a large fleet), then the clock starts and
    // the devices begin their checks spread over the ramp.
    let mut opened = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut broken = 0;
    for (i, spec) in specs.into_iter().enumerate() {
        let mut config = match (&site_base, spec.behind_site) {
            (Some(site), true) => site.clone(),
            _ => base.clone(),
        };
        config.data_dir = spec.dir;
        keys.push(spec.key);
        let clock = Arc::new(SkewedClock { offset: spec.skew });
        match Agent::open(config, clock) {
            Ok(mut agent) => {
                agent.share_endpoint(endpoints[i % endpoints.len()].clone());
                opened.push((i, agent));
            }
            Err(e) => {
                broken += 1;
                eprintln!("outpost-sim: device {i}: {e}");
            }
        }
    }
    let board = Arc::new(Board::new(n));
    board.broken.store(broken, Ordering::Relaxed);
    let ramp = Duration::from_secs(scenario.timing.ramp_secs);
    let mut tasks = Vec::with_capacity(n);
    for (i, agent) in opened {
        let fails = fails(scenario, &digests, i);
        let body = Body { fails, latency: (mu, sigma), inferences: scenario.timing.health_inferences, seed: i as u64 };
        let wiring = Wiring {
            index: i,
            versions: digests.clone(),
            per_check: scenario.fleet.connection == Connection::PerCheck,
            check_all: check_all_rx.clone(),
            stop: stop_rx.clone(),
            start_after: ramp.mul_f64(i as f64 / n as f64).saturating_sub(board.origin.elapsed()),
        };
        tasks.push(rt.spawn(device::run(agent, body, wiring, board.clone())));
    }
    let t0 = board.origin + ramp;
    let mut record = Record::new(scenario, digests.to_vec(), board.origin);
    let mut sampler = Sampler::new(board.clone(), hub.pid(), opts, digests.len());
    let mut revoked_devices = Vec::new();
    let mut next_event = 0;
    let end = t0 + Duration::from_secs(scenario.duration_secs);
    let mut checks_at_t0 = None;
    loop {
        let t = now();
        if checks_at_t0.is_none() && t >= t0 {
            checks_at_t0 = Some((board.checks.load(Ordering::Relaxed), t));
        }
        sampler.sample(&mut record, hub.pid());
        if t >= end {
            break;
        }
        while let Some(e) = scenario.events.get(next_event)
            && t >= t0 + Duration::from_secs(e.at_secs)
        {
            let at = board.origin.elapsed().as_secs_f64();
            let marks =
                |a: &scenario::Assert| matches!(a, scenario::Assert::Recovers { after, .. } if *after == next_event);
            if scenario.asserts.iter().any(marks) {
                // Checks that start from now on count towards recovery.
                let ms = u64::try_from(board.origin.elapsed().as_millis().max(1)).unwrap_or(u64::MAX);
                board.mark_ms.store(ms, Ordering::Relaxed);
            }
            let outcome = act(&e.action, rt, hub, &mut site, &check_all, &keys, &mut revoked_devices, &mut record);
            let line = match &outcome {
                Ok(what) => format!("t={at:.1}s event {next_event}: {what}"),
                Err(e) => format!("t={at:.1}s event {next_event} FAILED: {e:#}"),
            };
            say(opts, &line);
            if let Err(e) = outcome {
                record.event_errors.push(format!("event {next_event}: {e:#}"));
            }
            record.events.push((next_event, at));
            next_event += 1;
        }
        std::thread::sleep(opts.sample);
    }
    let (checks0, started) = checks_at_t0.unwrap_or((0, t0));
    let checks_in_run = board.checks.load(Ordering::Relaxed) - checks0;
    record.checks_per_sec = checks_in_run as f64 / now().duration_since(started).as_secs_f64().max(1e-9);
    record.hub_cpu = sampler.hub_cpu_share();
    record.bytes = counter.as_ref().map(relay::Relay::bytes);
    // Every device checks once more at its own time (not as a herd, which the hub's handshake bounds would turn
    // away), so what it queued can reach the hub before the count.
    if scenario.asserts.iter().any(|a| matches!(a, scenario::Assert::NoReportLost)) {
        std::thread::sleep(Duration::from_secs_f64(scenario.poll_interval() + 1.0));
    }
    let _ = stop.send(true);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
        if let Some(s) = site.as_mut() {
            s.halt().await;
        }
    });
    record.finish(&board, hub, &revoked_devices)?;
    Ok(record)
}

/// The package digests device `i`'s body fails: a version's `fail_share` of the fleet, picked by hash so a
/// different share fails each version.
fn fails(scenario: &Scenario, digests: &[Digest], i: usize) -> Vec<Digest> {
    let mut out = Vec::new();
    for (v, e) in scenario.events.iter().filter_map(|e| match &e.action {
        Action::Release { version, fail_share, .. } => Some((version, *fail_share)),
        _ => None,
    }) {
        let bucket = Digest::of(format!("{v}/{i}").as_bytes()).0[0] as f64 / 256.0;
        let index = scenario.versions().iter().position(|x| x == v);
        if bucket < e
            && let Some(d) = index.and_then(|k| digests.get(k))
        {
            out.push(*d);
        }
    }
    out
}

/// Carries out one event; what it did, for the progress line.
#[allow(clippy::too_many_arguments)] // one call, from `play`
fn act(
    action: &Action,
    rt: &tokio::runtime::Runtime,
    hub: &mut Hub,
    site: &mut Option<Site>,
    check_all: &tokio::sync::watch::Sender<u64>,
    keys: &[String],
    revoked: &mut Vec<(usize, f64)>,
    record: &mut Record,
) -> Result<String> {
    let at = record.elapsed();
    Ok(match action {
        Action::Release { version, plan, .. } => {
            hub.publish(version)?;
            match plan {
                Some(p) => {
                    let file = hub.dir().join(format!("plan-{p}.toml"));
                    std::fs::write(&file, &record.plans[p])?;
                    let id = hub.cli(&[
                        "release",
                        "start",
                        &format!("{}@{version}", hub::MODEL),
                        "--plan",
                        &file.display().to_string(),
                    ])?;
                    record.releases.push((version.clone(), id.clone()));
                    format!("released {version} under plan {p} as {id}")
                }
                None => format!("published {version}"),
            }
        }
        Action::RevokePackage { version } => {
            hub.revoke(version)?;
            record.revocations.push((version.clone(), at));
            format!("revoked {version}")
        }
        Action::RevokeDevices { share } => {
            let count = ((share * keys.len() as f64).round() as usize).max(1);
            let step = (keys.len() / count).max(1);
            for i in (0..keys.len()).step_by(step).take(count) {
                hub.cli(&["device", "revoke", &keys[i]])?;
                revoked.push((i, record.elapsed()));
            }
            format!("revoked {count} devices")
        }
        Action::KillHub => {
            hub.kill9()?;
            "killed the hub (SIGKILL)".into()
        }
        Action::StartHub => {
            hub.start()?;
            format!("started the hub again (pid {})", hub.pid().unwrap_or(0))
        }
        Action::SiteDown => {
            rt.block_on(site.as_mut().context("no site node")?.halt());
            "site node down".into()
        }
        Action::SiteUp => {
            site.as_mut().context("no site node")?.start();
            "site node up".into()
        }
        Action::Partition => {
            site.as_ref().context("no site node")?.relay.set_cut(true);
            "site partitioned from the hub".into()
        }
        Action::Heal => {
            site.as_ref().context("no site node")?.relay.set_cut(false);
            "site reconnected to the hub".into()
        }
        Action::CheckAll => {
            check_all.send_modify(|g| *g += 1);
            format!("every device ({}) checks at once", keys.len())
        }
    })
}

/// Samples who runs what, and the hub's CPU and memory; prints progress.
struct Sampler {
    board: Arc<Board>,
    every: Option<Duration>,
    last_progress: Instant,
    last_checks: u64,
    versions: usize,
    /// CPU ticks of hub processes that ended, and the current one's at its first sample.
    cpu: (u64, Option<(u32, u64)>, u64),
    cpu_window: (Instant, Option<Instant>),
}

impl Sampler {
    fn new(board: Arc<Board>, pid: Option<u32>, opts: &Options, versions: usize) -> Sampler {
        let first = pid.and_then(|p| crate::procfs::cpu_ticks(p).ok().map(|t| (p, t)));
        Sampler {
            board,
            every: opts.progress,
            last_progress: now(),
            last_checks: 0,
            versions,
            cpu: (0, first, first.map_or(0, |f| f.1)),
            cpu_window: (now(), None),
        }
    }

    fn sample(&mut self, record: &mut Record, pid: Option<u32>) {
        let mut s = Sample { at: self.board.origin.elapsed().as_secs_f64(), ..Sample::default() };
        s.running = vec![0; self.versions];
        for state in &self.board.states {
            let w = state.load(Ordering::Relaxed);
            if let Some(c) = s.running.get_mut((w & 0xff) as usize) {
                *c += 1;
            }
            s.trial += u64::from(w & device::TRIAL != 0);
            s.failing += u64::from(w & device::FAILING != 0);
        }
        if let Some(p) = pid {
            s.hub_rss_kib = crate::procfs::status_kib(p, "VmRSS:").unwrap_or(0);
            if let Ok(t) = crate::procfs::cpu_ticks(p) {
                match self.cpu.1 {
                    Some((q, _)) if q == p => self.cpu.2 = t,
                    _ => {
                        // A new hub process: bank what the previous one used.
                        self.cpu.0 += self.cpu.2.saturating_sub(self.cpu.1.map_or(0, |f| f.1));
                        self.cpu.1 = Some((p, 0));
                        self.cpu.2 = t;
                    }
                }
                self.cpu_window.1 = Some(now());
            }
        }
        if let Some(every) = self.every
            && self.last_progress.elapsed() >= every
        {
            let checks = self.board.checks.load(Ordering::Relaxed);
            let rate = (checks - self.last_checks) as f64 / self.last_progress.elapsed().as_secs_f64();
            let running: Vec<String> =
                s.running.iter().enumerate().map(|(i, c)| format!("{}: {c}", record.versions[i])).collect();
            eprintln!(
                "outpost-sim: t={:>6.1}s | {} | trial {} | failing {} | checks {checks} ({rate:.0}/s) | hub RSS {} MiB",
                s.at,
                running.join(" "),
                s.trial,
                s.failing,
                s.hub_rss_kib / 1024
            );
            self.last_checks = checks;
            self.last_progress = now();
        }
        record.samples.push(s);
    }

    /// The hub's CPU over the run, as a share of one core.
    fn hub_cpu_share(&self) -> f64 {
        let ticks = self.cpu.0 + self.cpu.2.saturating_sub(self.cpu.1.map_or(0, |f| f.1));
        let secs = self.cpu_window.1.map_or(0.0, |e| e.duration_since(self.cpu_window.0).as_secs_f64());
        ticks as f64 / crate::procfs::TICKS_PER_SEC / secs.max(1e-9)
    }
}
