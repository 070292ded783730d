//! Section `api`: inference through the agent's HTTP API (JSON and binary tensors, over TCP and over its Unix
//! socket, by model name and through a route) and through `infer_once`, each against `LoadedModel::run` in process
//! in the same loop, with the HTTP round trip alone (each transport's) as the floor.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use outpost_agent::inference::{ModelHandle, Routes, ServeLimits, infer_once, serve_with_routes};
use outpost_shared::route::{Candidate, Route, Router};

use crate::fixtures::Loaded;
use crate::report::{Latency, latency, micros};
use crate::{OVERHEAD_BUDGET, now};
use outpost_sim::http::{Http, first_binary_output, oip_binary_request, oip_request};

/// The route the bench addresses: one candidate, the model's capability, answering everything its contract takes.
pub(crate) const ROUTE: &str = "bench-route";

/// Starts the agent's inference API on loopback and on a Unix socket at `socket`, on its own runtime, configured
/// as `outpost-agent run` configures it (a default multi-thread runtime, default limits, `routes` serving
/// `handle`).
pub(crate) fn start_api(handle: Arc<ModelHandle>, routes: Arc<Routes>, socket: &Path) -> Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let bound = async {
                let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding loopback")?;
                let unix = outpost_agent::inference::bind_unix(&socket)
                    .with_context(|| format!("binding {}", socket.display()))?;
                anyhow::Ok((tcp, unix))
            };
            let (tcp, unix) = match bound.await {
                Ok(l) => l,
                Err(e) => return tx.send(Err(e)).expect("send"),
            };
            tx.send(tcp.local_addr().context("address")).expect("send");
            let limits = ServeLimits::default();
            let pending = std::future::pending;
            tokio::spawn(serve_with_routes(unix, handle.clone(), routes.clone(), limits, None, pending()));
            let _ = serve_with_routes(tcp, handle, routes, limits, None, pending()).await;
        });
    });
    rx.recv()?
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
pub(crate) fn per_run(l: &Loaded) -> Result<Duration> {
    let mut v = Vec::new();
    for _ in 0..21 {
        v.push(micros(run_in_process(l)?));
    }
    Ok(Duration::from_secs_f64(latency(v).median / 1e6))
}

/// Latencies of one model seven ways: over HTTP with JSON tensors and with binary ones (the binary tensor data
/// extension, both ways), binary through [`ROUTE`], binary over the Unix socket, through `infer_once` (the JSON
/// request path without HTTP) and `LoadedModel::run` in process; and the bare round trip on each transport.
pub(crate) struct Overhead {
    /// `GET /v2/health/live` on the same connection: the HTTP round trip alone, the floor of any request.
    pub(crate) floor: Latency,
    /// The same over the Unix socket.
    pub(crate) floor_unix: Latency,
    pub(crate) http: Latency,
    pub(crate) http_binary: Latency,
    /// Binary over TCP to `/v2/models/{ROUTE}/infer`.
    pub(crate) routed_binary: Latency,
    /// Per request pair, the routed request's time minus the direct one's (binary, TCP).
    pub(crate) routing_added: Latency,
    pub(crate) unix_binary: Latency,
    pub(crate) json: Latency,
    pub(crate) direct: Latency,
    pub(crate) requests: usize,
}

pub(crate) fn bench_overhead(
    addr: SocketAddr,
    socket: &Path,
    handle: &ModelHandle,
    routes: &Routes,
    l: &Loaded,
) -> Result<Overhead> {
    handle.swap(l.served.clone());
    let candidate =
        Candidate { capability: l.manifest.capability.clone(), niche: Default::default(), latency_budget_ms: None };
    let route = Route { name: ROUTE.into(), contract: l.manifest.contract.clone(), candidates: vec![candidate] };
    routes.set_router(Some(Router { name: "bench-router".into(), version: "1.0.0".into(), routes: vec![route] }));
    let mut http = Http::connect(addr)?;
    let mut unix = Http::connect_unix(socket)?;
    let path = format!("/v2/models/{}/infer", l.name());
    let request_body = oip_request(&l.inputs);
    let request = Http::post_request(&path, &request_body, None);
    let (binary_body, json_len) = oip_binary_request(&l.inputs);
    let binary = Http::post_request(&path, &binary_body, Some(json_len));
    let routed = Http::post_request(&format!("/v2/models/{ROUTE}/infer"), &binary_body, Some(json_len));
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
    let (status, response_json_len, body) = unix.exchange_binary(&binary)?;
    ensure!(status == 200, "HTTP {status}: {}", String::from_utf8_lossy(&body));
    let first = first_binary_output(&body, response_json_len.context("no Inference-Header-Content-Length")?)?;
    ensure!((first - direct).abs() < 1e-6, "HTTP (binary, Unix socket) and in-process outputs differ");
    let (status, response_json_len, body) = http.exchange_binary(&routed)?;
    ensure!(status == 200, "HTTP {status} through {ROUTE}: {}", String::from_utf8_lossy(&body));
    let first = first_binary_output(&body, response_json_len.context("no Inference-Header-Content-Length")?)?;
    ensure!((first - direct).abs() < 1e-6, "routed and in-process outputs differ");

    // One of each in turn (JSON over HTTP, in process, binary over HTTP, infer_once): all see the same machine.
    let n = (OVERHEAD_BUDGET.as_secs_f64() / per_run(l)?.as_secs_f64()).clamp(100.0, 10_000.0) as usize;
    let live = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut samples: [Vec<f64>; 9] = std::array::from_fn(|_| Vec::with_capacity(n));
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
        let start = now();
        let (status, _, body) = unix.exchange_binary(&binary)?;
        let u = micros(start.elapsed());
        ensure!(status == 200, "HTTP {status}");
        std::hint::black_box(body);
        let start = now();
        let (status, _) = unix.exchange(live)?;
        let fu = micros(start.elapsed());
        ensure!(status == 200, "HTTP {status}");
        let start = now();
        let (status, _, body) = http.exchange_binary(&routed)?;
        let r = micros(start.elapsed());
        ensure!(status == 200, "HTTP {status} through {ROUTE}");
        std::hint::black_box(body);
        if i >= n / 10 {
            // the first tenth warms up
            for (v, x) in samples.iter_mut().zip([h, p, b, j, f, u, fu, r, r - b]) {
                v.push(x);
            }
        }
    }
    let [h, p, b, j, f, u, fu, r, added] = samples.map(latency);
    Ok(Overhead {
        floor: f,
        floor_unix: fu,
        http: h,
        http_binary: b,
        routed_binary: r,
        routing_added: added,
        unix_binary: u,
        json: j,
        direct: p,
        requests: n,
    })
}
