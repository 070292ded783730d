//! Agent benchmarks (issue 4), each measured in one run next to its baseline and printed as a ratio: package
//! verification, inference over the HTTP API (JSON tensors, and binary ones as tritonclient sends them), where
//! an inference's time goes per operator, tract as served vs a plan for the request's shapes alone and vs
//! onnxruntime, failover, idle RSS and binary size.
//!
//! Run through `scripts/bench-agent`, which builds this and `outpost-agent` in release mode and installs
//! onnxruntime and numpy from PyPI when missing. Baselines: `openssl dgst -sha256` on the same package file;
//! `LoadedModel::run` in this process on the plan the API serves; onnxruntime on one thread
//! (`scripts/bench-agent-ort.py`); a cold load of the previous model in this process; the same agent process
//! with no model; onnxruntime's native library from its PyPI wheel. Models: the fixtures in `fixtures/models`,
//! fed their manifests' smoke-test inputs, and for the profile and runtime sections the PP-OCRv4 detector and
//! recogniser the script fetches, at several input sizes.
//!
//! One module a section (`verify`, `api`, `profile`, `runtime`, `failover`, `rss`, `size`), beside the fixtures, the HTTP
//! client, the benchmarks' hub and the report; the run's bounds stay here, in one place.

mod api;
mod failover;
mod fixtures;
mod hub;
mod profile;
mod report;
mod rss;
mod runtime;
mod size;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use outpost_agent::inference::ModelHandle;
use outpost_shared::clock::Clock;

use crate::api::{bench_overhead, start_api};
use crate::failover::bench_failover;
use crate::fixtures::{FIXTURES, Loaded, extra_models_dir, open_extras};
use crate::profile::{Profile, bench_profile, print_profile};
use crate::report::{Latency, Row, latency, loadavg, print_table};
use crate::rss::rss_row;
use crate::runtime::bench_runtimes;
use crate::size::size_row;
use crate::verify::bench_verify;

/// 64 Mi floats of padding: a 256 MiB model, so a package of 256 MiB and a few hundred bytes.
const VERIFY_PADDING_FLOATS: usize = 64 * 1024 * 1024;
/// Verification runs per side (best of, alternating), after one warm-up each.
const VERIFY_RUNS: usize = 5;
/// Time each side of the overhead comparison should take, roughly.
const OVERHEAD_BUDGET: Duration = Duration::from_secs(3);
/// Alternating rounds (onnxruntime, then tract) of the runtime comparison; the median round counts.
const RUNTIME_ROUNDS: usize = 3;
/// Time each side of one runtime round should take, roughly.
const RUNTIME_BUDGET: Duration = Duration::from_secs(1);
/// Failed health checks timed per model, each on a new package.
const FAILOVER_RUNS: usize = 5;
/// Successful inferences that confirm a package in the benchmark's agents.
const HEALTH: u32 = 3;
/// How long an agent process is left alone before its RSS is read.
const SETTLE: Duration = Duration::from_secs(3);

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn now() -> Instant {
    Instant::now()
}

#[allow(clippy::disallowed_methods)] // The agent processes read the real clock; the hub's metadata must agree.
fn real_wall() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Real time, as `outpost-agent run` gives its model handle.
struct RealClock(Instant);

impl Clock for RealClock {
    fn wall(&self) -> u64 {
        real_wall()
    }
    fn monotonic(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The repository root (fixtures, scripts).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> Result<()> {
    outpost_sim::log_warnings();
    // `bench-agent [SECTION...]` runs only those sections (verify, api, profile, runtime, failover, rss, size); none: all.
    let only: Vec<String> = std::env::args().skip(1).collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    let load_before = loadavg();
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();

    if run("verify") {
        rows.extend(bench_verify(tmp.path())?);
    }

    let loaded: Vec<Loaded> = FIXTURES.iter().map(Loaded::open).collect::<Result<_>>()?;
    // As `outpost-agent run` builds it: timed on a real clock, each inference reported to an observer.
    let handle = Arc::new(ModelHandle::with_observer(Arc::new(RealClock(now())), |_, ok, took| {
        std::hint::black_box((ok, took));
    }));
    let socket = tmp.path().join("inference.sock");
    let routes = Arc::new(outpost_agent::inference::Routes::new(Arc::new(RealClock(now())), Default::default()));
    routes.serve_handle(handle.clone());
    let addr = start_api(handle.clone(), routes.clone(), &socket)?;
    for l in loaded.iter().filter(|_| run("api")) {
        eprintln!("inference overhead, {}: HTTP/1.1 keep-alive on loopback vs LoadedModel::run...", l.name());
        let o = bench_overhead(addr, &socket, &handle, &routes, l)?;
        eprintln!(
            "  {} requests each way; HTTP JSON median {:.1} us p99 {:.1} us; HTTP binary median {:.1} us p99 {:.1} \
             us; infer_once (JSON, no HTTP) median {:.1} us p99 {:.1} us; in process median {:.1} us p99 {:.1} us \
             (plan: {:?})",
            o.requests,
            o.http.median,
            o.http.p99,
            o.http_binary.median,
            o.http_binary.p99,
            o.json.median,
            o.json.p99,
            o.direct.median,
            o.direct.p99,
            l.served.model().planning()
        );
        // Each way against `LoadedModel::run` in the same loop.
        let vs_in_process = |figure: &str, t: Latency, goal: &str| {
            Row::new(
                &format!("{figure}, {} (median; p99)", l.name()),
                format!("{:.0} us; {:.0} us", t.median, t.p99),
                format!("{:.0} us; {:.0} us in process", o.direct.median, o.direct.p99),
                t.median / o.direct.median,
                goal,
            )
        };
        rows.push(vs_in_process("inference via API, JSON tensors", o.http, "<= 1.05"));
        rows.push(vs_in_process(
            "inference via API, binary tensors (tritonclient's default)",
            o.http_binary,
            "<= 1.05",
        ));
        rows.push(vs_in_process("inference via API, binary tensors, Unix socket", o.unix_binary, "-"));
        rows.push(vs_in_process("  (info) infer_once: JSON in and out, no HTTP", o.json, "-"));
        // Issue 17's figure: what a request costs beyond the model and one bare round trip, as a share of the model.
        for (transport, t, floor) in [
            ("TCP", o.http_binary, o.floor),
            ("TCP, through a route", o.routed_binary, o.floor),
            ("Unix socket", o.unix_binary, o.floor_unix),
        ] {
            let beyond = t.median - o.direct.median - floor.median;
            rows.push(Row::new(
                &format!("API cost beyond in-process and one round trip, binary, {transport}, {} (median)", l.name()),
                format!("{beyond:.1} us"),
                format!("{:.0} us in process", o.direct.median),
                beyond / o.direct.median,
                "<= 0.05",
            ));
        }
        // Issue 17's other figure: what going through a route adds (per request pair, routed minus by model name).
        rows.push(Row::new(
            &format!("routing's added cost, binary, TCP, {} (median of pairs; p99)", l.name()),
            format!("{:.1} us; {:.1} us", o.routing_added.median, o.routing_added.p99),
            format!("{:.0} us by model name", o.http_binary.median),
            o.routed_binary.median / o.http_binary.median,
            "+ <= 10 us",
        ));
        rows.push(Row::new(
            &format!("  (info) HTTP round trip alone, GET /v2/health/live, {} run (median; p99)", l.name()),
            format!("{:.0} us; {:.0} us", o.floor.median, o.floor.p99),
            format!("{:.0} us in process", o.direct.median),
            o.floor.median / o.direct.median,
            "-",
        ));
        rows.push(Row::new(
            &format!("  (info) the same round trip over the Unix socket, {} run (median; p99)", l.name()),
            format!("{:.0} us; {:.0} us", o.floor_unix.median, o.floor_unix.p99),
            format!("{:.0} us over TCP", o.floor.median),
            o.floor_unix.median / o.floor.median,
            "-",
        ));
    }

    // The PP-OCRv4 detector and recogniser (fetched by scripts/bench-agent), for the runtime section only.
    let extras = match extra_models_dir() {
        Some(dir) if run("runtime") || run("profile") => open_extras(&dir)?,
        _ => {
            if run("runtime") || run("profile") {
                eprintln!("OUTPOST_BENCH_MODELS unset: the PP-OCRv4 rows are skipped (scripts/bench-agent sets it)");
            }
            Vec::new()
        }
    };
    let mut profiles: Vec<(String, Profile, Profile)> = Vec::new();
    for l in loaded.iter().chain(&extras).filter(|_| run("profile")) {
        eprintln!("per-operator profile, {}: tract as served and onnxruntime...", l.name());
        let (tract, ort) = bench_profile(l, tmp.path())?;
        profiles.push((l.name().to_owned(), tract, ort));
    }
    for l in loaded.iter().chain(&extras).filter(|_| run("runtime")) {
        eprintln!("tract vs onnxruntime, {}, one thread each...", l.name());
        for c in bench_runtimes(l, tmp.path())? {
            eprintln!(
                "  {} {}: median of {RUNTIME_ROUNDS} rounds of {} runs each; tract (serving plan, {:?}) median \
                 {:.1} us p99 {:.1} us; tract (plan for these shapes alone) median {:.1} us p99 {:.1} us; \
                 onnxruntime {} median {:.1} us p99 {:.1} us (session load {:.0} ms)",
                l.name(),
                c.shapes,
                c.iterations,
                l.served.model().planning(),
                c.tract.median,
                c.tract.p99,
                c.tract_fixed.median,
                c.tract_fixed.p99,
                c.ort.onnxruntime,
                c.ort.median_us,
                c.ort.p99_us,
                c.ort.load_ms
            );
            let case = format!("{} {}", l.name(), c.shapes);
            rows.push(Row::new(
                &format!("tract as served vs a plan for these shapes alone, {case} (median)"),
                format!("{:.0} us", c.tract.median),
                format!("{:.0} us fixed-shape plan", c.tract_fixed.median),
                c.tract.median / c.tract_fixed.median,
                "<= 1.03",
            ));
            rows.push(Row::new(
                &format!("  (info) the same, timed in blocks, served first (the method before), {case}"),
                format!("{:.0} us", c.blocks.0.median),
                format!("{:.0} us fixed-shape plan", c.blocks.1.median),
                c.blocks.0.median / c.blocks.1.median,
                "-",
            ));
            rows.push(Row::new(
                &format!("tract as served vs onnxruntime, {case} (median)"),
                format!("{:.0} us", c.tract.median),
                format!("{:.0} us onnxruntime {}", c.ort.median_us, c.ort.onnxruntime),
                c.tract.median / c.ort.median_us,
                "<= 1.2",
            ));
            rows.push(Row::new(
                &format!("  (info) tract, fixed-shape plan, vs onnxruntime, {case}"),
                format!("{:.0} us", c.tract_fixed.median),
                format!("{:.0} us onnxruntime", c.ort.median_us),
                c.tract_fixed.median / c.ort.median_us,
                "-",
            ));
        }
    }

    for l in loaded.iter().filter(|_| run("failover")) {
        eprintln!("failover, {}: {FAILOVER_RUNS} failed health checks on new packages...", l.name());
        let f = bench_failover(l)?;
        let ms = |v: &[f64]| v.iter().map(|s| format!("{:.0}", s * 1e3)).collect::<Vec<_>>().join(", ");
        eprintln!(
            "  failover {} ms; cold load of the previous model {} ms; swap of a model kept in memory {:.2} us",
            ms(&f.ours),
            ms(&f.cold_load),
            latency(f.swap_in_memory.iter().map(|s| s * 1e6).collect()).median
        );
        let median = |v: &[f64]| latency(v.to_vec()).median;
        rows.push(Row::new(
            &format!("failover to the previous model, {} (median)", l.name()),
            format!("{:.0} ms", median(&f.ours) * 1e3),
            format!("{:.0} ms cold load in process", median(&f.cold_load) * 1e3),
            median(&f.ours) / median(&f.cold_load),
            "none set",
        ));
    }

    if run("rss") {
        rows.push(rss_row(&loaded[0])?);
    }
    if run("size") {
        rows.push(size_row(tmp.path())?);
    }

    println!();
    println!(
        "agent benchmarks ({} cores; same machine, same run; load average {load_before} before, {} after)",
        std::thread::available_parallelism()?.get(),
        loadavg()
    );
    print_table(&rows);
    for (name, tract, ort) in &profiles {
        print_profile(name, tract, ort);
    }
    Ok(())
}
