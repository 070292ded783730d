//! Agent benchmarks (issue 4), each measured in one run next to its baseline and printed as a ratio: package
//! verification, inference over the HTTP API (JSON tensors, and binary ones as tritonclient sends them), tract vs
//! onnxruntime, failover, idle RSS and binary size.
//!
//! Run through `scripts/bench-agent`, which builds this and `outpost-agent` in release mode and installs
//! onnxruntime and numpy from PyPI when missing. Baselines: `openssl dgst -sha256` on the same package file;
//! `LoadedModel::run` in this process on the plan the API serves; onnxruntime on one thread
//! (`scripts/bench-agent-ort.py`); a cold load of the previous model in this process; the same agent process
//! with no model; onnxruntime's native library from its PyPI wheel. Models: the fixtures in `fixtures/models`,
//! fed their manifests' smoke-test inputs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use outpost_agent::config::{self, AgentConfig};
use outpost_agent::device::{self, Layout};
use outpost_agent::driver::{Agent, init_device};
use outpost_agent::inference::{ModelHandle, ServeLimits, Served, infer_once, oip_name, serve};
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_hub::Registry;
use outpost_hub::backend::HubBackend;
use outpost_hub::serve::{ServeConfig, Server};
use outpost_hub::tuf::{GenerateOptions, Key, TufRepo};
use outpost_shared::clock::{Clock, ManualClock};
use outpost_shared::manifest::ElementType;
use outpost_shared::model::{self, NamedTensor, TensorData};
use outpost_shared::rng::SeededRng;
use outpost_shared::testkit::{AffineManifest, affine_model_sized};
use outpost_shared::update::Phase;
use outpost_shared::{Digest, Manifest, package};

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

/// Median and 99th percentile, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Latency {
    median: f64,
    p99: f64,
}

fn latency(mut samples_us: Vec<f64>) -> Latency {
    samples_us.sort_by(|a, b| a.total_cmp(b));
    let n = samples_us.len();
    Latency { median: samples_us[n / 2], p99: samples_us[(n * 99 / 100).min(n - 1)] }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One line of the final table.
struct Row {
    figure: String,
    ours: String,
    baseline: String,
    ratio: String,
    goal: String,
}

impl Row {
    fn new(figure: &str, ours: String, baseline: String, ratio: f64, goal: &str) -> Row {
        Row { figure: figure.into(), ours, baseline, ratio: format!("{ratio:.2}"), goal: goal.into() }
    }
}

fn print_table(rows: &[Row]) {
    let head = ["figure", "ours", "baseline", "ratio", "goal"];
    let cell = |r: &Row, i: usize| match i {
        0 => r.figure.clone(),
        1 => r.ours.clone(),
        2 => r.baseline.clone(),
        3 => r.ratio.clone(),
        _ => r.goal.clone(),
    };
    let widths: Vec<usize> =
        (0..5).map(|i| rows.iter().map(|r| cell(r, i).chars().count()).max().unwrap_or(0).max(head[i].len())).collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("| {} |", padded.join(" | "));
    };
    line(head.iter().map(|s| s.to_string()).collect());
    line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for r in rows {
        line((0..5).map(|i| cell(r, i)).collect());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fixture models

struct Fixture {
    model_file: &'static str,
    manifest_file: &'static str,
}

const FIXTURES: [Fixture; 2] = [
    Fixture { model_file: "ch_ppocr_mobile_v2.0_cls_infer.onnx", manifest_file: "ppocr-direction.toml" },
    Fixture { model_file: "silero_vad_16k_sequence.onnx", manifest_file: "silero-vad.toml" },
];

/// A fixture loaded for serving, with its smoke-test inputs in every form the benchmarks send them.
struct Loaded {
    model_path: PathBuf,
    manifest_text: String,
    manifest: Manifest,
    model_bytes: Vec<u8>,
    served: Arc<Served>,
    inputs: Vec<NamedTensor>,
}

impl Loaded {
    fn open(f: &Fixture) -> Result<Loaded> {
        let dir = repo_root().join("fixtures/models");
        let model_path = dir.join(f.model_file);
        let manifest_text = std::fs::read_to_string(dir.join(f.manifest_file))?;
        let manifest = Manifest::from_toml(&manifest_text, f.manifest_file)?;
        let model_bytes = std::fs::read(&model_path).with_context(|| format!("reading {}", model_path.display()))?;
        let served = Arc::new(Served::from_parts(manifest.clone(), &model_bytes)?);
        let inputs = smoke_inputs(&manifest)?;
        Ok(Loaded { model_path, manifest_text, manifest, model_bytes, served, inputs })
    }

    fn name(&self) -> &str {
        &self.manifest.name
    }
}

/// The smoke test's inputs as run-time tensors, with the contract's element types.
fn smoke_inputs(m: &Manifest) -> Result<Vec<NamedTensor>> {
    m.contract
        .inputs
        .iter()
        .map(|spec| {
            let t = m.smoke_test.inputs.iter().find(|t| t.name == spec.name).context("smoke-test input")?;
            let v = t.materialize();
            let data = match spec.dtype {
                ElementType::F32 => TensorData::F32(v.iter().map(|&x| x as f32).collect()),
                ElementType::F64 => TensorData::F64(v),
                ElementType::I8 => TensorData::I8(v.iter().map(|&x| x as i8).collect()),
                ElementType::U8 => TensorData::U8(v.iter().map(|&x| x as u8).collect()),
                ElementType::I32 => TensorData::I32(v.iter().map(|&x| x as i32).collect()),
                ElementType::I64 => TensorData::I64(v.iter().map(|&x| x as i64).collect()),
                ElementType::Bool => TensorData::Bool(v.iter().map(|&x| x != 0.0).collect()),
            };
            Ok(NamedTensor::new(spec.name.clone(), t.shape.iter().map(|&d| d as usize).collect(), data))
        })
        .collect()
}

fn data_json(d: &TensorData) -> serde_json::Value {
    match d {
        TensorData::F32(v) => serde_json::json!(v),
        TensorData::F64(v) => serde_json::json!(v),
        TensorData::I8(v) => serde_json::json!(v),
        TensorData::U8(v) => serde_json::json!(v),
        TensorData::I32(v) => serde_json::json!(v),
        TensorData::I64(v) => serde_json::json!(v),
        TensorData::Bool(v) => serde_json::json!(v),
    }
}

/// The OIP v2 request body a client would send for these tensors.
fn oip_request(inputs: &[NamedTensor]) -> Vec<u8> {
    let inputs: Vec<serde_json::Value> = inputs
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "shape": t.shape, "datatype": oip_name(t.dtype()), "data": data_json(&t.data),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "inputs": inputs })).expect("JSON of plain values")
}

/// Little-endian bytes of tensor data, as the binary tensor data extension carries them.
fn le_bytes(d: &TensorData) -> Vec<u8> {
    match d {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I8(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U8(v) => v.clone(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
    }
}

/// What `tritonclient.http` sends by default: the OIP request as a JSON header whose inputs carry
/// `binary_data_size`, every output asked back binary (`binary_data_output`), then the tensors' bytes. Returns
/// the body and the header's length (`Inference-Header-Content-Length`).
fn oip_binary_request(inputs: &[NamedTensor]) -> (Vec<u8>, usize) {
    let tensors: Vec<Vec<u8>> = inputs.iter().map(|t| le_bytes(&t.data)).collect();
    let header: Vec<serde_json::Value> = inputs
        .iter()
        .zip(&tensors)
        .map(|(t, bytes)| {
            serde_json::json!({
                "name": t.name, "shape": t.shape, "datatype": oip_name(t.dtype()),
                "parameters": { "binary_data_size": bytes.len() },
            })
        })
        .collect();
    let request = serde_json::json!({ "inputs": header, "parameters": { "binary_data_output": true } });
    let mut body = serde_json::to_vec(&request).expect("JSON of plain values");
    let json_len = body.len();
    body.extend(tensors.concat());
    (body, json_len)
}

/// The first value of the first output of a binary-extension response (FP32), with the response's JSON header.
fn first_binary_output(body: &[u8], json_len: usize) -> Result<f64> {
    let header: serde_json::Value = serde_json::from_slice(body.get(..json_len).context("short response")?)?;
    let size = header["outputs"][0]["parameters"]["binary_data_size"].as_u64().context("binary output")?;
    ensure!(header["outputs"][0]["datatype"] == "FP32" && size >= 4, "an FP32 output: {header}");
    let bytes: [u8; 4] = body.get(json_len..json_len + 4).context("binary data")?.try_into()?;
    Ok(f64::from(f32::from_le_bytes(bytes)))
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Package verification vs openssl

/// The agent's check of a downloaded package: `device::hash_file` (what `Agent::try_download` calls; `Digest::of_reader` underneath, as the hub verifies blobs), then the
/// length and SHA-256 compared with what TUF lists.
fn agent_verify(path: &Path, length: u64, digest: &Digest) -> Result<()> {
    let (n, d) = outpost_agent::device::hash_file(path)?;
    ensure!(n == length && d == *digest, "package does not verify");
    Ok(())
}

fn openssl_sha256(path: &Path) -> Result<Digest> {
    let out = Command::new("openssl").args(["dgst", "-sha256", "-r"]).arg(path).output().context("openssl")?;
    ensure!(out.status.success(), "openssl dgst failed");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().next().context("openssl output")?.parse().context("openssl digest")
}

fn bench_verify(tmp: &Path) -> Result<Vec<Row>> {
    let m = AffineManifest::new("big", "1.0.0", 2.0, 1.0);
    let bytes = package::encode(&m.manifest(), &affine_model_sized(m.scale, m.bias, VERIFY_PADDING_FLOATS));
    let (len, digest) = (bytes.len() as u64, Digest::of(&bytes));
    let path = tmp.join("big.opkg");
    std::fs::write(&path, &bytes)?;
    drop(bytes);
    eprintln!("package verification: {len} bytes, best of {VERIFY_RUNS} after a warm-up, alternating...");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..=VERIFY_RUNS {
        let start = now();
        agent_verify(&path, len, &digest)?;
        let a = start.elapsed();
        let start = now();
        let d = openssl_sha256(&path)?;
        let b = start.elapsed();
        ensure!(d == digest, "openssl computed {d}, the agent {digest}");
        if run > 0 {
            ours.push(a.as_secs_f64());
            theirs.push(b.as_secs_f64());
        }
    }
    std::fs::remove_file(&path)?;
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (a, b) = (best(&ours), best(&theirs));
    let gbps = |s: f64| len as f64 / s / 1e9;
    eprintln!("  agent: {ours:.3?} s; openssl: {theirs:.3?} s");
    Ok(vec![Row::new(
        "package verify, 256 MiB (GB/s)",
        format!("{:.2} ({a:.3} s)", gbps(a)),
        format!("{:.2} ({b:.3} s) openssl dgst -sha256", gbps(b)),
        gbps(a) / gbps(b),
        ">= 0.90 (hub's)",
    )])
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Inference through the HTTP API vs in process

/// Starts the agent's inference API on loopback on its own runtime, configured as `outpost-agent run` configures
/// it (a default multi-thread runtime, default limits).
fn start_api(handle: Arc<ModelHandle>) -> Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            let _ = serve(listener, handle, ServeLimits::default(), std::future::pending()).await;
        });
    });
    Ok(rx.recv()?)
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct Http {
    conn: BufReader<TcpStream>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Result<Http> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Http { conn: BufReader::new(stream) })
    }

    /// A complete request (head and body) to send as is; `json_len` for a body in the binary tensor data
    /// extension (the length of its JSON header).
    fn post_request(path: &str, body: &[u8], json_len: Option<usize>) -> Vec<u8> {
        let kind = match json_len {
            None => "Content-Type: application/json\r\n".to_owned(),
            Some(n) => format!("Content-Type: application/octet-stream\r\nInference-Header-Content-Length: {n}\r\n"),
        };
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{kind}Content-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        req.extend_from_slice(body);
        req
    }

    /// Sends `request` and reads the response; returns the status and the body.
    fn exchange(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>)> {
        let (status, _, body) = self.exchange_binary(request)?;
        Ok((status, body))
    }

    /// Like [`Http::exchange`], with the response's `Inference-Header-Content-Length` when it has one.
    fn exchange_binary(&mut self, request: &[u8]) -> Result<(u16, Option<usize>, Vec<u8>)> {
        self.conn.get_mut().write_all(request)?;
        let mut line = String::new();
        self.conn.read_line(&mut line)?;
        let status: u16 = line.split_whitespace().nth(1).context("status line")?.parse()?;
        let (mut length, mut json_len) = (None, None);
        loop {
            line.clear();
            self.conn.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = Some(v.trim().parse::<usize>()?);
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("inference-header-content-length")
            {
                json_len = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("response without Content-Length")?];
        self.conn.read_exact(&mut body)?;
        Ok((status, json_len, body))
    }
}

/// Runs the model in process on a copy of its inputs; returns the time of `LoadedModel::run` alone.
fn run_in_process(l: &Loaded) -> Result<Duration> {
    let inputs = l.inputs.clone();
    let start = now();
    let out = l.served.model().run(inputs)?;
    let t = start.elapsed();
    std::hint::black_box(out);
    Ok(t)
}

/// Median time of `LoadedModel::run` over a few runs, to size the timed loops.
fn per_run(l: &Loaded) -> Result<Duration> {
    let mut v = Vec::new();
    for _ in 0..21 {
        v.push(micros(run_in_process(l)?));
    }
    Ok(Duration::from_secs_f64(latency(v).median / 1e6))
}

/// Latencies of one model four ways: over HTTP with JSON tensors and with binary ones (the binary tensor data
/// extension, both ways), through `infer_once` (the JSON request path without HTTP) and `LoadedModel::run` in
/// process.
struct Overhead {
    /// `GET /v2/health/live` on the same connection: the HTTP round trip alone, the floor of any request.
    floor: Latency,
    http: Latency,
    http_binary: Latency,
    json: Latency,
    direct: Latency,
    requests: usize,
}

fn bench_overhead(addr: SocketAddr, handle: &ModelHandle, l: &Loaded) -> Result<Overhead> {
    handle.swap(l.served.clone());
    let mut http = Http::connect(addr)?;
    let path = format!("/v2/models/{}/infer", l.name());
    let request_body = oip_request(&l.inputs);
    let request = Http::post_request(&path, &request_body, None);
    let (binary_body, json_len) = oip_binary_request(&l.inputs);
    let binary = Http::post_request(&path, &binary_body, Some(json_len));
    // The API answers what the model answers in process, both ways.
    let direct = l.served.model().run(l.inputs.clone())?.remove(0).data.to_f64()[0];
    let (status, body) = http.exchange(&request)?;
    ensure!(status == 200, "HTTP {status}: {}", String::from_utf8_lossy(&body));
    let response: serde_json::Value = serde_json::from_slice(&body)?;
    let first = response["outputs"][0]["data"][0].as_f64().context("response data")?;
    ensure!((first - direct).abs() < 1e-6, "HTTP (JSON) and in-process outputs differ");
    let (status, response_json_len, body) = http.exchange_binary(&binary)?;
    ensure!(status == 200, "HTTP {status}: {}", String::from_utf8_lossy(&body));
    let first = first_binary_output(&body, response_json_len.context("no Inference-Header-Content-Length")?)?;
    ensure!((first - direct).abs() < 1e-6, "HTTP (binary) and in-process outputs differ");

    // One of each in turn (JSON over HTTP, in process, binary over HTTP, infer_once): all see the same machine.
    let n = (OVERHEAD_BUDGET.as_secs_f64() / per_run(l)?.as_secs_f64()).clamp(100.0, 10_000.0) as usize;
    let live = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut samples: [Vec<f64>; 5] = std::array::from_fn(|_| Vec::with_capacity(n));
    for i in 0..n + n / 10 {
        let start = now();
        let (status, body) = http.exchange(&request)?;
        let h = micros(start.elapsed());
        ensure!(status == 200, "HTTP {status}");
        std::hint::black_box(body);
        let p = micros(run_in_process(l)?);
        let start = now();
        let (status, _, body) = http.exchange_binary(&binary)?;
        let b = micros(start.elapsed());
        ensure!(status == 200, "HTTP {status}");
        std::hint::black_box(body);
        let start = now();
        std::hint::black_box(infer_once(&l.served, &request_body)?);
        let j = micros(start.elapsed());
        let start = now();
        let (status, _) = http.exchange(live)?;
        let f = micros(start.elapsed());
        ensure!(status == 200, "HTTP {status}");
        if i >= n / 10 {
            // the first tenth warms up
            for (v, x) in samples.iter_mut().zip([h, p, b, j, f]) {
                v.push(x);
            }
        }
    }
    let [h, p, b, j, f] = samples.map(latency);
    Ok(Overhead { floor: f, http: h, http_binary: b, json: j, direct: p, requests: n })
}

// ---------------------------------------------------------------------------------------------------------------
// 3. tract as the agent runs it vs onnxruntime

/// What `scripts/bench-agent-ort.py` printed.
struct OrtResult {
    onnxruntime: String,
    median_us: f64,
    p99_us: f64,
    runs: u64,
    load_ms: f64,
    /// The first values of each output, by name.
    outputs: serde_json::Value,
}

impl OrtResult {
    fn parse(json: &[u8]) -> Result<OrtResult> {
        let v: serde_json::Value = serde_json::from_slice(json)?;
        let num = |k: &str| v[k].as_f64().with_context(|| format!("onnxruntime result has no {k}"));
        Ok(OrtResult {
            onnxruntime: v["onnxruntime"].as_str().unwrap_or("?").to_owned(),
            median_us: num("median_us")?,
            p99_us: num("p99_us")?,
            runs: num("runs")? as u64,
            load_ms: num("load_ms")?,
            outputs: v["outputs"].clone(),
        })
    }
}

fn dtype_name(t: ElementType) -> &'static str {
    match t {
        ElementType::F32 => "f32",
        ElementType::F64 => "f64",
        ElementType::I8 => "i8",
        ElementType::U8 => "u8",
        ElementType::I32 => "i32",
        ElementType::I64 => "i64",
        ElementType::Bool => "bool",
    }
}

fn onnxruntime(l: &Loaded, tmp: &Path, iterations: usize) -> Result<OrtResult> {
    let inputs: Vec<serde_json::Value> = l
        .inputs
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "shape": t.shape, "dtype": dtype_name(t.dtype()), "data": data_json(&t.data),
            })
        })
        .collect();
    let request = tmp.join(format!("{}-ort.json", l.name()));
    std::fs::write(
        &request,
        serde_json::to_vec(&serde_json::json!({"iterations": iterations, "warmup": 50, "inputs": inputs}))?,
    )?;
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/bench-agent-ort.py"))
        .arg(&l.model_path)
        .arg(&request)
        .stderr(Stdio::inherit())
        .output()
        .context("python3 not found: run scripts/bench-agent, which installs onnxruntime")?;
    ensure!(
        out.status.success(),
        "scripts/bench-agent-ort.py failed (is onnxruntime installed? scripts/bench-agent installs it)"
    );
    OrtResult::parse(&out.stdout)
}

/// Times `LoadedModel::run` `iterations` times after a warm-up.
fn tract_latency(l: &Loaded, model: &model::LoadedModel, iterations: usize) -> Result<Latency> {
    for _ in 0..50 {
        model.run(l.inputs.clone())?;
    }
    let mut v = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let inputs = l.inputs.clone();
        let start = now();
        let out = model.run(inputs)?;
        v.push(micros(start.elapsed()));
        std::hint::black_box(out);
    }
    Ok(latency(v))
}

/// The median round of each side (by median latency), and the runs per round.
struct RuntimeComparison {
    tract: Latency,
    tract_fixed: Latency,
    ort: OrtResult,
    iterations: usize,
}

fn median_round<T>(mut rounds: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    rounds.swap_remove(rounds.len() / 2)
}

fn bench_runtimes(l: &Loaded, tmp: &Path) -> Result<RuntimeComparison> {
    let iterations = (RUNTIME_BUDGET.as_secs_f64() / per_run(l)?.as_secs_f64()).clamp(100.0, 10_000.0) as usize;
    // For reference: a plan for the smoke test's shapes only, every dimension fixed before optimising.
    let fixed = model::load(&l.model_bytes, &l.manifest)?;
    let outputs = l.served.model().run(l.inputs.clone())?;
    let (mut ort, mut tract, mut tract_fixed) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNTIME_ROUNDS {
        let o = onnxruntime(l, tmp, iterations)?;
        ensure!(o.runs as usize == iterations, "onnxruntime ran {} times, not {iterations}", o.runs);
        // Same inputs, same answers (first values of each output).
        for t in &outputs {
            let ours = t.data.to_f64();
            let theirs =
                o.outputs[&t.name].as_array().with_context(|| format!("onnxruntime has no output {}", t.name))?;
            for (a, b) in ours.iter().zip(theirs.iter().filter_map(serde_json::Value::as_f64)) {
                ensure!((a - b).abs() < 1e-3, "output {}: tract {a}, onnxruntime {b}", t.name);
            }
        }
        ort.push(o);
        tract.push(tract_latency(l, l.served.model(), iterations)?);
        tract_fixed.push(tract_latency(l, &fixed, iterations)?);
    }
    Ok(RuntimeComparison {
        tract: median_round(tract, |t| t.median),
        tract_fixed: median_round(tract_fixed, |t| t.median),
        ort: median_round(ort, |o| o.median_us),
        iterations,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// A hub for the failover and RSS benchmarks

struct Hub {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    repo: TufRepo,
    clock: Arc<ManualClock>,
}

impl Hub {
    fn new(now: u64) -> Result<Hub> {
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
    fn publish(&self, model: &Path, manifest_text: &str, version: Option<&str>, channel: &str) -> Result<Digest> {
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
    fn serve(&self, rt: &tokio::runtime::Runtime) -> Result<(SocketAddr, PublicKey)> {
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
    fn device(&self, name: &str, seed: u8, hub: (SocketAddr, PublicKey), channel: &str, bind: &str) -> Result<PathBuf> {
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

// ---------------------------------------------------------------------------------------------------------------
// 4. Failover: a failed health check until the previous model serves again

struct Failover {
    ours: Vec<f64>,
    cold_load: Vec<f64>,
    swap_in_memory: Vec<f64>,
}

fn bench_failover(l: &Loaded) -> Result<Failover> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let hub = Hub::new(real_wall())?;
    let addr = hub.serve(&rt)?;
    let v1 = hub.publish(&l.model_path, &l.manifest_text, None, "stable")?;
    let config_path = hub.device("dev", 1, addr, "stable", "127.0.0.1:0")?;
    let config = AgentConfig::load(&config_path)?;
    let models = Arc::new(ModelHandle::new());
    let mut agent = Agent::open_with(config, hub.clock.clone(), models.clone())?;
    rt.block_on(agent.check())?;
    for _ in 0..HEALTH {
        agent.record_inference(true)?;
    }
    ensure!(agent.state().phase == Phase::Idle, "v1 not confirmed: {:?}", agent.state().phase);
    let current = || models.current().map(|s| *s.digest());
    ensure!(current() == Some(v1), "v1 is not serving");

    let mut f = Failover { ours: vec![], cold_load: vec![], swap_in_memory: vec![] };
    for i in 1..=FAILOVER_RUNS {
        hub.clock.advance(Duration::from_secs(2));
        let vi = hub.publish(&l.model_path, &l.manifest_text, Some(&format!("9.0.{i}")), "stable")?;
        rt.block_on(agent.check())?;
        ensure!(agent.on_trial() == Some(vi) && current() == Some(vi), "new package {i} is not on trial");
        let previous_in_memory = models.current().context("serving")?;

        let start = now();
        agent.record_inference(false)?; // the failed health check
        let back = current() == Some(v1);
        f.ours.push(start.elapsed().as_secs_f64());
        ensure!(back, "not serving the previous model after the failure");

        // Baseline: loading the previous model for serving from bytes already in memory (what activation does
        // after reading the slot's files).
        let start = now();
        let served = Served::load(l.manifest.clone(), &l.model_bytes, v1)?;
        f.cold_load.push(start.elapsed().as_secs_f64());
        // Reference: swapping in a model kept in memory.
        let start = now();
        let old = models.swap(previous_in_memory);
        f.swap_in_memory.push(start.elapsed().as_secs_f64());
        models.swap(old.context("a model was active")?);
        drop(served);
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Idle RSS of the real agent process

fn agent_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("outpost-agent");
    ensure!(exe.exists(), "{} is missing: run scripts/bench-agent (it builds it)", exe.display());
    Ok(exe)
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context(field.to_owned())?.parse()?)
}

fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    for _ in 0..600 {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

struct Rss {
    with_model_kib: u64,
    with_model_peak_kib: u64,
    without_model_kib: u64,
}

fn bench_rss(l: &Loaded) -> Result<Rss> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let hub = Hub::new(real_wall())?;
    let addr = hub.serve(&rt)?;
    hub.publish(&l.model_path, &l.manifest_text, None, "stable")?;
    let exe = agent_exe()?;
    let spawn = |config: &Path| -> Result<Process> {
        let log = std::fs::File::create(config.with_file_name("agent.log"))?;
        Ok(Process(
            Command::new(&exe).arg("run").arg("--config").arg(config).stdout(Stdio::null()).stderr(log).spawn()?,
        ))
    };

    // Without a model: a device approved on a channel nothing is published to.
    let empty = hub.device("empty", 2, addr, "empty", "127.0.0.1:0")?;
    let p = spawn(&empty)?;
    let log = empty.with_file_name("agent.log");
    wait_for("the first check", || Ok(std::fs::read_to_string(&log)?.contains("no model assigned yet")))?;
    std::thread::sleep(SETTLE);
    let without_model_kib = status_kib(p.0.id(), "VmRSS:")?;
    drop(p);

    // With the model: installed, confirmed by real requests over the API, then left alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = hub.device("model", 3, addr, "stable", &format!("127.0.0.1:{port}"))?;
    let p = spawn(&config)?;
    let layout = Layout::new(config.parent().context("dir")?);
    wait_for("activation", || {
        Ok(device::load_state(&layout)?.is_some_and(|s| s.active.is_some() && matches!(s.phase, Phase::Health { .. })))
    })?;
    let api: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut http = None;
    wait_for("the inference API", || {
        http = Http::connect(api).ok();
        Ok(http.is_some())
    })?;
    let mut http = http.context("connected")?;
    // The state file names the package before its model has loaded; the API says when it serves.
    let ready = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    wait_for("readiness", || Ok(http.exchange(ready)?.0 == 200))?;
    let request = Http::post_request(&format!("/v2/models/{}/infer", l.name()), &oip_request(&l.inputs), None);
    for _ in 0..HEALTH {
        let (status, _) = http.exchange(&request)?;
        ensure!(status == 200, "HTTP {status}");
    }
    drop(http);
    wait_for("confirmation", || Ok(device::load_state(&layout)?.is_some_and(|s| s.phase == Phase::Idle)))?;
    std::thread::sleep(SETTLE);
    let rss = Rss {
        with_model_kib: status_kib(p.0.id(), "VmRSS:")?,
        with_model_peak_kib: status_kib(p.0.id(), "VmHWM:")?,
        without_model_kib,
    };
    drop(p);
    Ok(rss)
}

// ---------------------------------------------------------------------------------------------------------------
// 6. Stripped binary size

fn stripped_size(path: &Path, tmp: &Path) -> Result<u64> {
    let out = tmp.join(format!("{}.stripped", path.file_name().context("name")?.to_string_lossy()));
    let ok = Command::new("strip").arg("-o").arg(&out).arg(path).status().context("strip (binutils)")?;
    ensure!(ok.success(), "strip {} failed", path.display());
    let len = std::fs::metadata(&out)?.len();
    std::fs::remove_file(&out)?;
    Ok(len)
}

/// onnxruntime's native library from the installed PyPI wheel.
fn onnxruntime_library() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))"])
        .output()?;
    ensure!(out.status.success(), "onnxruntime is not installed");
    let capi = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("capi");
    std::fs::read_dir(&capi)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
        .with_context(|| format!("no libonnxruntime.so in {}", capi.display()))
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

// ---------------------------------------------------------------------------------------------------------------

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn main() -> Result<()> {
    // `bench-agent [SECTION...]` runs only those sections (verify, api, runtime, failover, rss, size); none: all.
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
    let addr = start_api(handle.clone())?;
    for l in loaded.iter().filter(|_| run("api")) {
        eprintln!("inference overhead, {}: HTTP/1.1 keep-alive on loopback vs LoadedModel::run...", l.name());
        let o = bench_overhead(addr, &handle, l)?;
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
        rows.push(vs_in_process("  (info) infer_once: JSON in and out, no HTTP", o.json, "-"));
        rows.push(Row::new(
            &format!("  (info) HTTP round trip alone, GET /v2/health/live, {} run (median; p99)", l.name()),
            format!("{:.0} us; {:.0} us", o.floor.median, o.floor.p99),
            format!("{:.0} us in process", o.direct.median),
            o.floor.median / o.direct.median,
            "-",
        ));
    }

    for l in loaded.iter().filter(|_| run("runtime")) {
        eprintln!("tract vs onnxruntime, {}, one thread each...", l.name());
        let c = bench_runtimes(l, tmp.path())?;
        eprintln!(
            "  median of {RUNTIME_ROUNDS} rounds of {} runs each; tract (serving plan, {:?}) median {:.1} us p99 {:.1} us; tract (smoke shapes fixed) \
             median {:.1} us; onnxruntime {} median {:.1} us p99 {:.1} us (session load {:.0} ms)",
            c.iterations,
            l.served.model().planning(),
            c.tract.median,
            c.tract.p99,
            c.tract_fixed.median,
            c.ort.onnxruntime,
            c.ort.median_us,
            c.ort.p99_us,
            c.ort.load_ms
        );
        rows.push(Row::new(
            &format!("tract as served vs onnxruntime, {} (median)", l.name()),
            format!("{:.0} us", c.tract.median),
            format!("{:.0} us onnxruntime {}", c.ort.median_us, c.ort.onnxruntime),
            c.tract.median / c.ort.median_us,
            "<= 1.2",
        ));
        rows.push(Row::new(
            &format!("  (info) tract, smoke-test shapes fixed, {}", l.name()),
            format!("{:.0} us", c.tract_fixed.median),
            format!("{:.0} us onnxruntime", c.ort.median_us),
            c.tract_fixed.median / c.ort.median_us,
            "-",
        ));
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
    Ok(())
}

fn rss_row(ppocr: &Loaded) -> Result<Row> {
    eprintln!("idle RSS of outpost-agent run...");
    let rss = bench_rss(ppocr)?;
    eprintln!(
        "  with {}: VmRSS {} KiB (peak VmHWM {} KiB); without a model: {} KiB",
        ppocr.name(),
        rss.with_model_kib,
        rss.with_model_peak_kib,
        rss.without_model_kib
    );
    Ok(Row::new(
        &format!("idle RSS, outpost-agent run with {}", ppocr.name()),
        format!("{:.1} MiB", rss.with_model_kib as f64 / 1024.0),
        format!("{:.1} MiB same agent, no model", rss.without_model_kib as f64 / 1024.0),
        rss.with_model_kib as f64 / rss.without_model_kib as f64,
        "<= 30 MiB",
    ))
}

fn size_row(tmp: &Path) -> Result<Row> {
    let exe = agent_exe()?;
    let ours = stripped_size(&exe, tmp)?;
    let unstripped = std::fs::metadata(&exe)?.len();
    let ort_lib = onnxruntime_library()?;
    let ort = stripped_size(&ort_lib, tmp)?;
    eprintln!(
        "binary size: outpost-agent {unstripped} bytes, {ours} stripped; {} {} bytes stripped",
        ort_lib.display(),
        ort
    );
    Ok(Row::new(
        "outpost-agent stripped (release, default features)",
        format!("{} ({ours} B)", mb(ours)),
        format!("{} ({ort} B) libonnxruntime.so, stripped", mb(ort)),
        ours as f64 / ort as f64,
        "<= 25 MB",
    ))
}
