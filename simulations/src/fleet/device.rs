//! One simulated device: the agent's own driver (`outpost_agent::driver::Agent`: enrolment state, attestation,
//! TUF, director, downloads, slots, reports, telemetry) run as `outpost-agent run` runs it, and a simulated body —
//! the inference outcomes and latencies the scenario gives it — instead of an inference API.
//!
//! Every decision is the agent's; this module only waits for the deadlines the agent names and publishes what the
//! device runs on the [`Board`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_agent::driver::{Agent, CheckError};
use outpost_net::client::ClientError;
use outpost_shared::Digest;
use outpost_shared::clock::Clock;

/// No version active (encoded in a device's state word).
pub const NONE: u32 = 0xff;
/// State flag: a package is on trial.
pub const TRIAL: u32 = 1 << 8;
/// State flag: the device's last check failed.
pub const FAILING: u32 = 1 << 9;

/// What every device publishes and the run reads: states, checks, latencies, errors.
#[derive(Debug)]
pub struct Board {
    /// Per device: the active version's index (or [`NONE`]) and the flags.
    pub states: Vec<AtomicU32>,
    /// Per device: milliseconds since the start at its last successful check (0: none).
    pub last_ok_ms: Vec<AtomicU64>,
    /// Checks done and failed.
    pub checks: AtomicU64,
    /// Checks that failed.
    pub failed: AtomicU64,
    /// Check latencies, microseconds.
    pub latencies: Mutex<Vec<u32>>,
    /// Failed checks by kind.
    pub errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Devices whose agent could not open or stopped on an error outside a check.
    pub broken: AtomicU64,
    /// Telemetry at the end, summed over the devices: events still queued, events dropped at the bound.
    pub backlog: AtomicU64,
    /// Events dropped at the device queues' bound.
    pub dropped: AtomicU64,
    /// Milliseconds since the start at which a `recovers` assertion's event happened (0: none yet).
    pub mark_ms: AtomicU64,
    /// Per device: milliseconds since the start at its first successful check after the mark (0: none).
    pub recovered_ms: Vec<AtomicU64>,
    /// The run's origin.
    pub origin: std::time::Instant,
}

impl Board {
    /// A board for `n` devices.
    pub fn new(n: usize) -> Board {
        Board {
            states: (0..n).map(|_| AtomicU32::new(NONE)).collect(),
            last_ok_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            checks: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latencies: Mutex::new(Vec::new()),
            errors: Mutex::new(BTreeMap::new()),
            broken: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            mark_ms: AtomicU64::new(0),
            recovered_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            origin: crate::fleet::now(),
        }
    }

    fn error(&self, kind: &'static str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }
}

/// A clock off by a fixed number of seconds (the device's own, badly set).
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    /// Seconds ahead (negative: behind).
    pub offset: i64,
}

impl Clock for SkewedClock {
    #[allow(clippy::disallowed_methods)] // the simulated devices run on real time against a real hub
    fn wall(&self) -> u64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        now.saturating_add_signed(self.offset)
    }

    fn monotonic(&self) -> Duration {
        crate::fleet::now().duration_since(*origin())
    }
}

fn origin() -> &'static std::time::Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(crate::fleet::now)
}

/// The simulated body: which versions fail on this device and how long its inferences take.
#[derive(Debug, Clone)]
pub struct Body {
    /// Packages whose health window this device fails.
    pub fails: Vec<Digest>,
    /// Log-normal inference latency: mu and sigma of ln(milliseconds).
    pub latency: (f64, f64),
    /// Good inferences it serves per check interval (enough to confirm a package on trial).
    pub inferences: u32,
    /// Draws latencies.
    pub seed: u64,
}

impl Body {
    /// One latency draw (Box-Muller on two SplitMix64 draws).
    fn latency(&mut self) -> Duration {
        let mut next = || {
            self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (u1, u2) = (next().max(f64::MIN_POSITIVE), next());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        Duration::from_secs_f64((self.latency.0 + self.latency.1 * normal).exp() / 1000.0)
    }

    /// Serves what the device serves between checks: inferences on the active model (counted in telemetry) and,
    /// on a package on trial, the outcomes that confirm it or roll it back.
    fn serve(&mut self, agent: &mut Agent) -> Result<(), CheckError> {
        if let Some(trial) = agent.on_trial() {
            let ok = !self.fails.contains(&trial);
            for _ in 0..self.inferences {
                agent.record_inference(ok)?;
                if agent.on_trial() != Some(trial) {
                    break;
                }
            }
        }
        if let Some(active) = agent.active() {
            let digest = *active.digest();
            let latency = self.latency();
            agent.record_inference_stats(digest, true, latency);
        }
        Ok(())
    }
}

/// What the device loop needs besides its agent.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// This device's index on the board.
    pub index: usize,
    /// Versions by package digest (index into the scenario's versions).
    pub versions: Arc<Vec<Digest>>,
    /// Close the connection after each check (a new handshake and attestation per check).
    pub per_check: bool,
    /// Bumped to make every device check at once.
    pub check_all: tokio::sync::watch::Receiver<u64>,
    /// Set to stop every device.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// When to start (first check), after the origin.
    pub start_after: Duration,
}

/// Runs one device until told to stop: checks when the agent says one is due (or the hub pushes a notice, or the
/// scenario makes every device check), serves between checks, and publishes its state. It sleeps until the
/// agent's next deadline: a device costs nothing between its checks.
pub async fn run(mut agent: Agent, mut body: Body, mut wiring: Wiring, board: Arc<Board>) {
    tokio::time::sleep(wiring.start_after).await;
    let mut notices = None;
    let mut state_flags = 0;
    loop {
        let checked = agent.check_due();
        if checked {
            let started = crate::fleet::now();
            let result = agent.check().await;
            let took = started.elapsed();
            board.checks.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut l) = board.latencies.lock() {
                l.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            }
            match result {
                Ok(()) => {
                    state_flags = 0;
                    let ms = u64::try_from(board.origin.elapsed().as_millis().max(1)).unwrap_or(u64::MAX);
                    board.last_ok_ms[wiring.index].store(ms, Ordering::Relaxed);
                    let mark = board.mark_ms.load(Ordering::Relaxed);
                    if mark > 0 && u64::try_from(started.duration_since(board.origin).as_millis()).unwrap_or(0) >= mark
                    {
                        let _ = board.recovered_ms[wiring.index].compare_exchange(
                            0,
                            ms,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                }
                Err(e) => {
                    state_flags = FAILING;
                    board.failed.fetch_add(1, Ordering::Relaxed);
                    board.error(kind(&e));
                }
            }
            if wiring.per_check {
                agent.disconnect();
            }
            notices = agent.notices();
        }
        let mut served = agent.tick();
        if served.is_ok() && (checked || agent.on_trial().is_some()) {
            served = body.serve(&mut agent);
        }
        if served.is_err() {
            board.error("device body");
        }
        board.states[wiring.index].store(state_word(&agent, &wiring.versions) | state_flags, Ordering::Relaxed);
        let pushed = async {
            match notices.as_mut() {
                Some(n) => n.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wiring.stop.changed() => break,
            true = pushed => agent.check_now(),
            Ok(()) = wiring.check_all.changed() => agent.check_now(),
            () = tokio::time::sleep(agent.until_next_deadline()) => {}
        }
    }
    if let Some((queued, dropped)) = agent.telemetry_backlog() {
        board.backlog.fetch_add(queued, Ordering::Relaxed);
        board.dropped.fetch_add(dropped, Ordering::Relaxed);
    }
    let _ = agent.shutdown();
}

/// The active version's index, and the trial flag.
fn state_word(agent: &Agent, versions: &[Digest]) -> u32 {
    let index = |d: Digest| versions.iter().position(|v| *v == d).map_or(NONE, |i| i as u32);
    let active = agent.state().active.as_ref().map_or(NONE, |a| index(a.target.digest));
    if agent.on_trial().is_some() { active | TRIAL } else { active }
}

/// A failed check's kind, for the report.
pub fn kind(e: &CheckError) -> &'static str {
    match e {
        CheckError::Hub(ClientError::Connection(_)) => "connection",
        CheckError::Hub(ClientError::Timeout(_)) => "hub timeout",
        CheckError::Hub(ClientError::Hub { .. }) => "hub error",
        CheckError::Hub(_) => "hub",
        CheckError::NotAttested(_) => "not attested",
        CheckError::Tuf(_) | CheckError::TrustedRoot(_) => "tuf",
        CheckError::Transport(_) => "download",
        CheckError::DirectorKey(_) | CheckError::Director(_) => "director",
        CheckError::Io(_) => "device storage",
        CheckError::Deadline(_) => "deadline",
        _ => "other",
    }
}
