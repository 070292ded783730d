//! What a fleet run measured — samples of who runs what, checks, latencies, errors, the hub's CPU and memory —
//! and the judgement of the scenario's assertions on it, printed and drawn (SVG, plotters).
//!
//! Every assertion names the value it measured, passed or not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use outpost_shared::Digest;

use super::device::Board;
use super::hub::Hub;
use super::scenario::{Assert, Scenario};

/// Who ran what at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the origin.
    pub at: f64,
    /// Devices running each version (by index).
    pub running: Vec<u64>,
    /// Devices with a package on trial.
    pub trial: u64,
    /// Devices whose last check failed.
    pub failing: u64,
    /// The hub's resident set, KiB (0: not running).
    pub hub_rss_kib: u64,
}

/// A run's record.
#[derive(Debug)]
pub struct Record {
    /// The scenario.
    pub scenario: Scenario,
    /// Versions, in order.
    pub versions: Vec<String>,
    /// Their package digests.
    pub digests: Vec<Digest>,
    /// Plans by name.
    pub plans: BTreeMap<String, String>,
    /// Samples, in time order.
    pub samples: Vec<Sample>,
    /// Events carried out: (index, seconds since the origin).
    pub events: Vec<(usize, f64)>,
    /// Events that failed to be carried out.
    pub event_errors: Vec<String>,
    /// Staged releases started: (version, release id).
    pub releases: Vec<(String, String)>,
    /// Package revocations: (version, seconds since the origin).
    pub revocations: Vec<(String, f64)>,
    /// Checks per second held from the end of the ramp to the end.
    pub checks_per_sec: f64,
    /// The hub's CPU over the run, share of one core.
    pub hub_cpu: f64,
    /// UDP payload bytes between the devices and the hub, (to the hub, from it), when counted.
    pub bytes: Option<(u64, u64)>,
    /// Checks and failed checks.
    pub checks: (u64, u64),
    /// Check latency percentiles: p50, p99, max (ms).
    pub latency_ms: (f64, f64, f64),
    /// Failed checks by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Devices that could not run at all.
    pub broken: u64,
    /// Telemetry still queued on devices, dropped on devices, missing at the hub.
    pub telemetry: (u64, u64, u64),
    /// Release states at the end, by version.
    pub release_states: BTreeMap<String, String>,
    /// Revoked devices whose last successful check came after their revocation plus the bound, per bound.
    pub revoked_devices: Vec<(usize, f64, f64)>,
    /// Devices not revoked whose last check failed.
    pub failing_at_end: u64,
    /// Seconds from the `recovers` mark to each device's first successful check begun after it, sorted (devices
    /// that never had one left out).
    pub recovered: Vec<f64>,
    origin: std::time::Instant,
}

impl Record {
    /// An empty record for `scenario`.
    pub fn new(scenario: &Scenario, digests: Vec<Digest>, origin: std::time::Instant) -> Record {
        Record {
            scenario: scenario.clone(),
            versions: scenario.versions(),
            digests,
            plans: scenario.plans.clone(),
            samples: Vec::new(),
            events: Vec::new(),
            event_errors: Vec::new(),
            releases: Vec::new(),
            revocations: Vec::new(),
            checks_per_sec: 0.0,
            hub_cpu: 0.0,
            bytes: None,
            checks: (0, 0),
            latency_ms: (0.0, 0.0, 0.0),
            errors: BTreeMap::new(),
            broken: 0,
            telemetry: (0, 0, 0),
            release_states: BTreeMap::new(),
            revoked_devices: Vec::new(),
            failing_at_end: 0,
            recovered: Vec::new(),
            origin,
        }
    }

    /// Seconds since the origin.
    pub fn elapsed(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Collects the end-of-run figures from the board and the hub.
    ///
    /// # Errors
    /// The hub does not answer.
    pub fn finish(&mut self, board: &Board, hub: &Hub, revoked: &[(usize, f64)]) -> Result<()> {
        self.checks = (board.checks.load(Ordering::Relaxed), board.failed.load(Ordering::Relaxed));
        let mut l = board.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        let pct = |p: f64| l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1))).copied();
        let ms = |v: Option<u32>| f64::from(v.unwrap_or(0)) / 1000.0;
        self.latency_ms = (ms(pct(0.5)), ms(pct(0.99)), ms(l.last().copied()));
        self.errors = board.errors.lock().map(|e| e.clone()).unwrap_or_default();
        self.broken = board.broken.load(Ordering::Relaxed);
        let missing = match hub.pid() {
            Some(_) => sum_key(&serde_json::from_str(&hub.cli(&["fleet", "status", "--json"])?)?, "missing"),
            None => 0,
        };
        self.telemetry = (board.backlog.load(Ordering::Relaxed), board.dropped.load(Ordering::Relaxed), missing);
        for (version, id) in &self.releases {
            if hub.pid().is_some() {
                let status = hub.cli(&["release", "status", id])?;
                let first = status.lines().next().unwrap_or_default();
                let word = first.rsplit_once('(').and_then(|(_, w)| w.strip_suffix(')')).unwrap_or(first);
                self.release_states.insert(version.clone(), word.to_ascii_lowercase());
            }
        }
        let interval = self.scenario.poll_interval();
        for &(i, at) in revoked {
            let last_ok = board.last_ok_ms[i].load(Ordering::Relaxed) as f64 / 1000.0;
            self.revoked_devices.push((i, at, (last_ok - at).max(0.0) / interval));
        }
        let mark = board.mark_ms.load(Ordering::Relaxed);
        self.recovered = board
            .recovered_ms
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .filter(|&r| mark > 0 && r > 0)
            .map(|r| r.saturating_sub(mark) as f64 / 1000.0)
            .collect();
        self.recovered.sort_by(f64::total_cmp);
        let revoked: std::collections::BTreeSet<usize> = revoked.iter().map(|r| r.0).collect();
        self.failing_at_end = (0..board.states.len())
            .filter(|i| !revoked.contains(i))
            .filter(|&i| board.states[i].load(Ordering::Relaxed) & super::device::FAILING != 0)
            .count() as u64;
        Ok(())
    }

    /// Devices that take part (not revoked).
    fn eligible(&self) -> f64 {
        (self.scenario.devices - self.revoked_devices.len()) as f64
    }

    /// Seconds from `from` until at least `share` of the eligible devices run version `v`; `None`: never.
    pub fn time_to(&self, v: usize, share: f64, from: f64) -> Option<f64> {
        let need = share * self.eligible();
        self.samples.iter().find(|s| s.at >= from && s.running[v] as f64 >= need - 1e-9).map(|s| s.at - from)
    }

    /// Seconds from `at` until at most `1 - share` of the devices that ran version `v` at `at` still run it.
    pub fn reach(&self, v: usize, share: f64, at: f64) -> Option<f64> {
        let before = self.samples.iter().rev().find(|s| s.at <= at).map_or(0, |s| s.running[v]) as f64;
        self.samples.iter().find(|s| s.at >= at && s.running[v] as f64 <= (1.0 - share) * before).map(|s| s.at - at)
    }

    fn event_at(&self, index: usize) -> Option<f64> {
        self.events.iter().find(|e| e.0 == index).map(|e| e.1)
    }

    fn version_index(&self, v: &str) -> Option<usize> {
        self.versions.iter().position(|x| x == v)
    }
}

/// Sums every number under `key` anywhere in `v`.
fn sum_key(v: &serde_json::Value, key: &str) -> u64 {
    match v {
        serde_json::Value::Object(m) => {
            m.iter().map(|(k, v)| if k == key { v.as_u64().unwrap_or(0) } else { sum_key(v, key) }).sum()
        }
        serde_json::Value::Array(a) => a.iter().map(|v| sum_key(v, key)).sum(),
        _ => 0,
    }
}

/// One assertion's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was asserted.
    pub what: String,
    /// Whether it held.
    pub held: bool,
    /// What was measured.
    pub measured: String,
}

/// Judges every assertion of the scenario on the record.
pub fn judge(r: &Record) -> Vec<Verdict> {
    let interval = r.scenario.poll_interval();
    let secs = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{t:.1} s"));
    let mut out: Vec<Verdict> = r
        .event_errors
        .iter()
        .map(|e| Verdict { what: "every event carried out".into(), held: false, measured: e.clone() })
        .collect();
    if r.broken > 0 {
        out.push(Verdict {
            what: "every device runs".into(),
            held: false,
            measured: format!("{} devices could not open", r.broken),
        });
    }
    for a in &r.scenario.asserts {
        let v = match a {
            Assert::Converge { version, share, within_polls, after } => {
                let from = after.or_else(|| r.scenario.release_event(version)).and_then(|e| r.event_at(e));
                let t = r.version_index(version).zip(from).and_then(|(v, from)| r.time_to(v, *share, from));
                let bound = within_polls * interval;
                Verdict {
                    what: format!("{:.1}% on {version} within {within_polls} polls ({bound:.1} s)", share * 100.0),
                    held: t.is_some_and(|t| t <= bound),
                    measured: secs(t),
                }
            }
            Assert::RevocationReach { version, share, within_secs } => {
                let at = r.revocations.iter().find(|x| &x.0 == version).map(|x| x.1);
                let t = r.version_index(version).zip(at).and_then(|(v, at)| r.reach(v, *share, at));
                Verdict {
                    what: format!("revocation of {version} reaches {:.1}% within {within_secs} s", share * 100.0),
                    held: t.is_some_and(|t| t <= *within_secs),
                    measured: secs(t),
                }
            }
            Assert::ReleaseState { version, state } => {
                let got = r.release_states.get(version).cloned().unwrap_or_else(|| "no release".into());
                Verdict { what: format!("release of {version} ends {state}"), held: &got == state, measured: got }
            }
            Assert::RevokedDevicesRefused { within_polls } => {
                let late = r.revoked_devices.iter().filter(|d| d.2 > *within_polls).count();
                let worst = r.revoked_devices.iter().map(|d| d.2).fold(0.0, f64::max);
                Verdict {
                    what: format!(
                        "revoked devices refused within {within_polls} polls, every other device's last check good"
                    ),
                    held: late == 0 && r.failing_at_end == 0 && !r.revoked_devices.is_empty(),
                    measured: format!(
                        "{} revoked, {late} served later (latest {worst:.2} polls); {} others failing",
                        r.revoked_devices.len(),
                        r.failing_at_end
                    ),
                }
            }
            Assert::EndsOn { version, share } => {
                let got = r.version_index(version).and_then(|v| r.samples.last().map(|s| s.running[v])).unwrap_or(0);
                let got = got as f64 / r.eligible();
                Verdict {
                    what: format!("at the end {:.1}% run {version}", share * 100.0),
                    held: got >= *share,
                    measured: format!("{:.2}%", got * 100.0),
                }
            }
            Assert::Recovers { after, share, within_polls } => {
                // The n-th fastest device to check well again, n = share of the fleet.
                let need = ((share * r.eligible()).ceil() as usize).max(1);
                let t = r.recovered.get(need - 1).copied().filter(|_| r.event_at(*after).is_some());
                let bound = within_polls * interval;
                Verdict {
                    what: format!(
                        "{:.1}% of devices check well again within {within_polls} polls ({bound:.1} s) of event {after}",
                        share * 100.0
                    ),
                    held: t.is_some_and(|t| t <= bound),
                    measured: secs(t),
                }
            }
            Assert::MaxErrorShare { share, kinds } => {
                let failed = match kinds.is_empty() {
                    true => r.checks.1,
                    false => r.errors.iter().filter(|(k, _)| kinds.iter().any(|x| x == *k)).map(|(_, n)| n).sum(),
                };
                let got = failed as f64 / (r.checks.0.max(1)) as f64;
                let which = if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) };
                Verdict {
                    what: format!("at most {:.2}% of checks fail{which}", share * 100.0),
                    held: got <= *share,
                    measured: format!("{:.2}% ({failed} of {})", got * 100.0, r.checks.0),
                }
            }
            Assert::PollRate { share } => {
                let expected = expected_rate(&r.scenario);
                Verdict {
                    what: format!("checks/s held at {:.0}% of {expected:.1}/s", share * 100.0),
                    held: r.checks_per_sec >= share * expected,
                    measured: format!("{:.1}/s", r.checks_per_sec),
                }
            }
            Assert::NoReportLost => {
                let (queued, dropped, missing) = r.telemetry;
                Verdict {
                    what: "no report lost".into(),
                    held: queued == 0 && dropped == 0 && missing == 0,
                    measured: format!("{queued} still queued, {dropped} dropped on devices, {missing} missing at hub"),
                }
            }
            Assert::CheckLatencyP99 { ms } => Verdict {
                what: format!("p99 check latency at most {ms} ms"),
                held: r.latency_ms.1 <= *ms,
                measured: format!("{:.1} ms", r.latency_ms.1),
            },
        };
        out.push(v);
    }
    out
}

/// Checks per second the fleet's timing asks for: every device once per poll plus half the jitter.
pub fn expected_rate(s: &Scenario) -> f64 {
    s.devices as f64 / (s.timing.poll_secs as f64 + s.timing.jitter_secs as f64 / 2.0)
}

/// The report, as printed.
pub fn render(r: &Record, verdicts: &[Verdict]) -> String {
    let s = &r.scenario;
    let mut o = String::new();
    let _ = writeln!(o, "scenario     {}: {}", s.name, s.description.trim());
    let _ = writeln!(
        o,
        "devices      {} ({:?} connections, {} sockets), poll {} s + up to {} s jitter, run {} s",
        s.devices, s.fleet.connection, s.fleet.sockets, s.timing.poll_secs, s.timing.jitter_secs, s.duration_secs
    );
    let _ = writeln!(
        o,
        "checks       {} ({:.1}/s held, {:.1}/s asked), failed {} ({:.2}%)",
        r.checks.0,
        r.checks_per_sec,
        expected_rate(s),
        r.checks.1,
        100.0 * r.checks.1 as f64 / r.checks.0.max(1) as f64
    );
    let errors: Vec<String> = r.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(o, "errors       {}", if errors.is_empty() { "none".into() } else { errors.join(", ") });
    let _ = writeln!(
        o,
        "latency      check p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.latency_ms.0, r.latency_ms.1, r.latency_ms.2
    );
    let rss = r.samples.iter().map(|x| x.hub_rss_kib).max().unwrap_or(0);
    let _ = writeln!(
        o,
        "hub          CPU {:.1}% of one core over the run, RSS max {:.1} MiB",
        r.hub_cpu * 100.0,
        rss as f64 / 1024.0
    );
    if let Some((up, down)) = r.bytes {
        let per = |b: u64| b as f64 / r.checks.0.max(1) as f64;
        let _ = writeln!(
            o,
            "bytes        {up} to the hub, {down} from it: {:.0} B up and {:.0} B down per check (UDP payload)",
            per(up),
            per(down)
        );
    }
    for (i, v) in r.versions.iter().enumerate().skip(1) {
        let Some(from) = s.release_event(v).and_then(|e| r.event_at(e)) else { continue };
        let t: Vec<String> = [0.5, 0.95, 0.99, 1.0]
            .iter()
            .map(|p| {
                format!("{:.0}% {}", p * 100.0, r.time_to(i, *p, from).map_or("never".into(), |t| format!("{t:.1} s")))
            })
            .collect();
        let _ = writeln!(o, "convergence  {v} (released at t={from:.1} s): {}", t.join(", "));
    }
    for (v, at) in &r.revocations {
        let Some(i) = r.version_index(v) else { continue };
        let t: Vec<String> = [0.5, 0.99, 1.0]
            .iter()
            .map(|p| {
                format!("{:.0}% {}", p * 100.0, r.reach(i, *p, *at).map_or("never".into(), |t| format!("{t:.1} s")))
            })
            .collect();
        let _ = writeln!(o, "revocation   {v} (revoked at t={at:.1} s): reach {}", t.join(", "));
    }
    for (v, state) in &r.release_states {
        let _ = writeln!(o, "release      {v}: {state}");
    }
    let (queued, dropped, missing) = r.telemetry;
    let _ = writeln!(
        o,
        "telemetry    {queued} events still queued, {dropped} dropped on devices, {missing} missing at hub"
    );
    let _ = writeln!(o, "assertions");
    for v in verdicts {
        let _ = writeln!(o, "  {} {}: {}", if v.held { "PASS" } else { "FAIL" }, v.what, v.measured);
    }
    o
}

/// Draws devices per state over time as an SVG.
///
/// # Errors
/// The file cannot be written.
pub fn chart(r: &Record, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let end = r.samples.last().map_or(1.0, |s| s.at).max(1.0);
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).context("chart")?;
    let mut c = ChartBuilder::on(&root)
        .caption(format!("{}: devices per state", r.scenario.name), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..(r.scenario.devices as f64 * 1.05))
        .context("chart")?;
    c.configure_mesh().x_desc("seconds").y_desc("devices").draw().context("chart")?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = r
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("running {v}"), r.samples.iter().map(|s| (s.at, s.running[i] as f64)).collect()))
        .collect();
    series.push(("on trial".into(), r.samples.iter().map(|s| (s.at, s.trial as f64)).collect()));
    series.push(("last check failed".into(), r.samples.iter().map(|s| (s.at, s.failing as f64)).collect()));
    for (i, (name, points)) in series.into_iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .context("chart")?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    c.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().context("chart")?;
    root.present().context("chart")?;
    Ok(())
}
