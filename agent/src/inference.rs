//! Read-only inference: serves the active model on the Open Inference Protocol v2 REST API (KServe, Triton).
//!
//! Invariants: a request clones the active `Arc<Served>` once on arrival and runs on it to the end, so a swap
//! never touches an in-flight request (the old model is freed when its last request finishes); model bytes are
//! read through read-only opens and held in memory, nothing here ever writes a file; a request that does not fit
//! the contract is a 400 with a message, and tract runs behind `catch_unwind`, on the request's own thread
//! (`block_in_place`) when the model is fast ([`ServeLimits::in_place_below`]) and the runtime multi-thread,
//! on the blocking pool otherwise.
//!
//! Bodies are JSON, or (the binary tensor data extension, what `tritonclient` sends by default) a JSON object of
//! `Inference-Header-Content-Length` bytes followed by the raw little-endian bytes of each input that has
//! `parameters.binary_data_size` instead of `data`, in the order of `inputs`. Outputs come back binary when asked
//! (`binary_data` on a requested output, or `binary_data_output` in the request's `parameters`): the answer is
//! then `application/octet-stream` with its own `Inference-Header-Content-Length`. Health and ready answer 200
//! with an empty body, as the spec says; every error is `{"error": "..."}`.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v2/health/live` | 200 |
//! | GET | `/v2/health/ready` | 200 when a model is active, 503 otherwise |
//! | GET | `/v2` | server metadata |
//! | GET | `/v2/models/{name}[/versions/{v}]` | model metadata (datatypes in OIP form, -1 for symbolic dims) |
//! | GET | `/v2/models/{name}[/versions/{v}]/ready` | 200 when that model is the active one |
//! | POST | `/v2/models/{name}[/versions/{v}]/infer` | inference |
//!
//! Status codes: 400 for a malformed request or tensors that do not fit the contract, 404 for another model or
//! version than the active one, 413 for a body over [`ServeLimits::max_body_bytes`], 500 when the model fails on
//! a request that fits its contract, 503 when no model is active or [`ServeLimits::max_queued_inferences`]
//! requests are already waiting.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path as FsPath, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use outpost_shared::manifest::{Dim, ElementType, TensorSpec};
use outpost_shared::model::{self, LoadedModel, ModelError, NamedTensor, TensorData};
use outpost_shared::telemetry::Histogram;
use outpost_shared::{Digest, Manifest, Package, PackageError, PackageLimits};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::net::TcpListener;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

/// Where the agent serves the API unless its config says otherwise: localhost only, the port KServe uses.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Largest request body accepted by default (413 above it).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Inferences that run at once by default (tract is CPU-bound: about one per core). With the body limit this
/// bounds memory: each running request holds its body and its decoded tensors.
pub const DEFAULT_MAX_CONCURRENT_INFERENCES: usize = 4;
/// Requests that may wait for a free inference slot by default; more get a 503 at once.
pub const DEFAULT_MAX_QUEUED_INFERENCES: usize = 256;
/// Inferences whose model last took less than this run on the request's own thread by default (see
/// [`ServeLimits::in_place_below`]).
pub const DEFAULT_IN_PLACE_BELOW: std::time::Duration = std::time::Duration::from_millis(1);
/// `platform` in model metadata.
pub const PLATFORM: &str = "onnx-tract";
/// The binary tensor data extension's header (lower case, as `http` spells header names): the length of the
/// JSON object at the front of a body whose binary tensor data follows it.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Bounds of the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Inferences running at once.
    pub max_concurrent_inferences: usize,
    /// Inference requests waiting for a slot; beyond it, 503.
    pub max_queued_inferences: usize,
    /// On a multi-thread runtime, an inference runs on the request's own thread (`block_in_place`) when its
    /// model's previous inference took less than this, and on the blocking pool otherwise. The hand-off to the
    /// pool and back costs two thread wake-ups (about 100 µs on a busy 2-core machine), a large share of a short
    /// inference; a long one runs faster on the pool's thread, which keeps running tract with its caches warm,
    /// than on whichever thread `block_in_place` happens to be on (measured in BENCHMARKS.md). Needs the
    /// handle's clock ([`ModelHandle::with_observer`]); without one every inference runs in place.
    pub in_place_below: std::time::Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_concurrent_inferences: DEFAULT_MAX_CONCURRENT_INFERENCES,
            max_queued_inferences: DEFAULT_MAX_QUEUED_INFERENCES,
            in_place_below: DEFAULT_IN_PLACE_BELOW,
        }
    }
}

/// Why a package could not be loaded for serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than the package limits allow.
    #[error("{}: {len} bytes, more than the limit of {limit}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The file is not a valid package.
    #[error("{}: {source}", path.display())]
    Package {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: PackageError,
    },
    /// The package is not the one expected.
    #[error("{}: package digest is {actual}, expected {expected}", path.display())]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// What the caller expected.
        expected: Digest,
        /// What the file hashes to.
        actual: Digest,
    },
    /// The model does not load, does not match its contract, or fails its smoke test.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Why an inference request was refused or failed. [`InferenceError::status`] maps it to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The request is not a valid OIP inference request (malformed JSON, missing field, unsupported datatype,
    /// data that does not fit the datatype, unknown requested output, binary tensor data whose sizes do not
    /// add up).
    #[error("{0}")]
    BadRequest(String),
    /// Tensors that do not fit the contract ([`ModelError::BadInput`]) or a model failure ([`ModelError::Run`],
    /// [`ModelError::NonFinite`]).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The request names a model other than the active one.
    #[error("no model named `{requested}` (serving `{serving}`)")]
    UnknownModel {
        /// The name in the request.
        requested: String,
        /// The active model's name.
        serving: String,
    },
    /// The request names a version other than the active one.
    #[error("model `{model}` has no version `{requested}` (serving {serving})")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version in the request.
        requested: String,
        /// The active version.
        serving: String,
    },
    /// No model is active.
    #[error("no model is active")]
    NotReady,
    /// Too many requests are already waiting.
    #[error("busy: {0} inference requests are already waiting")]
    Busy(usize),
    /// The request body is over the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The server failed (a worker task died).
    #[error("internal error: {0}")]
    Internal(String),
}

impl InferenceError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            InferenceError::BadRequest(_) | InferenceError::Model(ModelError::BadInput { .. }) => {
                StatusCode::BAD_REQUEST
            }
            InferenceError::Model(_) | InferenceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            InferenceError::UnknownModel { .. } | InferenceError::UnknownVersion { .. } => StatusCode::NOT_FOUND,
            InferenceError::NotReady | InferenceError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            InferenceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Whether this is the model's failure (counts against it in the health window), not the caller's.
    pub fn is_model_failure(&self) -> bool {
        matches!(self, InferenceError::Model(e) if !matches!(e, ModelError::BadInput { .. }))
    }
}

impl IntoResponse for InferenceError {
    fn into_response(self) -> Response {
        error_response(self.status(), &self.to_string())
    }
}

/// Successful and failed inferences on one served model, counted since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InferenceStats {
    /// Inferences that returned outputs.
    pub ok: u64,
    /// Inferences on tensors that fit the contract where the model failed (client errors are not counted).
    pub failed: u64,
}

/// A model ready to serve: its package identity, manifest and loaded plan, plus its own counters.
pub struct Served {
    manifest: Manifest,
    digest: Digest,
    model: LoadedModel,
    ok: AtomicU64,
    failed: AtomicU64,
    /// How long the last inference took, in microseconds, when the handle has a clock (0: not known).
    last_micros: AtomicU64,
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("digest", &self.digest)
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl Served {
    /// Wraps an already loaded model. Load it with [`model::load_for_serving`] so every batch size the contract
    /// allows works; a model loaded with [`model::load`] only takes the smoke test's shapes.
    pub fn new(manifest: Manifest, digest: Digest, model: LoadedModel) -> Served {
        Served {
            manifest,
            digest,
            model,
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_micros: AtomicU64::new(0),
        }
    }

    /// Loads `model_bytes` for serving (contract shapes) and runs the smoke test on that very plan.
    /// `digest` is the package digest the caller verified.
    pub fn load(manifest: Manifest, model_bytes: &[u8], digest: Digest) -> Result<Served, LoadError> {
        let model = model::load_for_serving(model_bytes, &manifest)?;
        model.smoke_test(&manifest)?;
        Ok(Served::new(manifest, digest, model))
    }

    /// Like [`Served::load`], with the digest of the package these parts make.
    pub fn from_parts(manifest: Manifest, model_bytes: &[u8]) -> Result<Served, LoadError> {
        let digest = outpost_shared::package::digest_of_parts(&manifest.to_cbor(), model_bytes);
        Served::load(manifest, model_bytes, digest)
    }

    /// Reads a package file (opened read-only, never written), checks its digest against `expected` when
    /// given, and loads it like [`Served::load`].
    pub fn open_package(path: &FsPath, expected: Option<&Digest>, limits: &PackageLimits) -> Result<Served, LoadError> {
        let io = |source| LoadError::Io { path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let limit =
            outpost_shared::package::HEADER_LEN as u64 + u64::from(limits.max_manifest_bytes) + limits.max_model_bytes;
        let len = file.metadata().map_err(io)?.len();
        if len > limit {
            return Err(LoadError::TooLarge { path: path.to_owned(), len, limit });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        // The file may grow after the metadata call; never read past the limit.
        file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(LoadError::DigestMismatch { path: path.to_owned(), expected: *expected, actual });
        }
        let package =
            Package::decode(&bytes, limits).map_err(|source| LoadError::Package { path: path.to_owned(), source })?;
        Served::load(package.manifest, package.model, actual)
    }

    /// The package name (the OIP model name).
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The package version (the OIP model version).
    pub fn version(&self) -> String {
        self.manifest.version.to_string()
    }

    /// The package digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The package manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The loaded model.
    pub fn model(&self) -> &LoadedModel {
        &self.model
    }

    /// Inferences counted on this model so far (HTTP and [`infer_once`] alike).
    pub fn stats(&self) -> InferenceStats {
        InferenceStats { ok: self.ok.load(Ordering::Relaxed), failed: self.failed.load(Ordering::Relaxed) }
    }
}

/// Called after each inference that reached a model: the model it ran on, whether it succeeded, and how long
/// the model took (on the handle's clock). Requests refused before running (bad JSON, bad tensors, unknown
/// model, no model) are not reported.
pub type InferenceObserver = dyn Fn(&Served, bool, std::time::Duration) + Send + Sync;

/// What `GET /metrics` reports of one served model.
#[derive(Default)]
struct Counts {
    name: String,
    version: String,
    inferences: u64,
    failures: u64,
    latency: Histogram,
}

/// The active model, swapped atomically. Each request takes its own `Arc` of the model current on arrival.
#[derive(Default)]
pub struct ModelHandle {
    current: RwLock<Option<Arc<Served>>>,
    observer: Option<Box<InferenceObserver>>,
    clock: Option<Arc<dyn outpost_shared::clock::Clock>>,
    /// Per model (by digest): inferences, failures, latency; for `GET /metrics`.
    counters: std::sync::Mutex<BTreeMap<Digest, Counts>>,
    /// A package running in shadow: fed a share of answered requests, never serving.
    shadow: RwLock<Option<Arc<Shadow>>>,
}

/// A shadow model and how its answers compared with the active model's.
struct Shadow {
    served: Arc<Served>,
    /// Runs on one request in `every`.
    every: u64,
    seen: AtomicU64,
    /// At most one shadow inference at a time: a sampled request that finds it busy is skipped.
    busy: std::sync::atomic::AtomicBool,
    stats: std::sync::Mutex<ShadowStats>,
}

/// How a shadow model's answers compared with the active model's on the same requests.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShadowStats {
    /// Requests compared.
    pub samples: u64,
    /// Of those, answers whose top-1 (argmax of the first output) matched.
    pub agreed: u64,
    /// Largest absolute difference between any two corresponding output values.
    pub max_abs_diff: f64,
    /// Sum of shadow latency / active latency over the samples.
    pub latency_ratio_sum: f64,
}

impl fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelHandle").field("current", &self.current()).finish_non_exhaustive()
    }
}

impl ModelHandle {
    /// A handle with no active model and no observer.
    pub fn new() -> ModelHandle {
        ModelHandle::default()
    }

    /// A handle whose HTTP inferences are reported to `observer` (the update loop's health window: feed
    /// `Event::Inference { ok }` when the served digest is the one under watch; telemetry counts and latencies),
    /// timed on `clock`'s monotonic reading. The observer runs on the inference's thread right after it, before
    /// the answer is sent; keep it short (send on a channel).
    pub fn with_observer(
        clock: Arc<dyn outpost_shared::clock::Clock>,
        observer: impl Fn(&Served, bool, std::time::Duration) + Send + Sync + 'static,
    ) -> ModelHandle {
        ModelHandle {
            current: RwLock::new(None),
            observer: Some(Box::new(observer)),
            clock: Some(clock),
            counters: Default::default(),
            shadow: RwLock::new(None),
        }
    }

    /// Runs `served` in shadow on `percent` % of answered requests (`None`: no shadow). Its stats start afresh.
    pub fn set_shadow(&self, served: Option<Arc<Served>>, percent: u32) {
        let shadow = served.filter(|_| percent > 0).map(|served| {
            Arc::new(Shadow {
                served,
                every: u64::from(100 / percent.clamp(1, 100)),
                seen: AtomicU64::new(0),
                busy: std::sync::atomic::AtomicBool::new(false),
                stats: Default::default(),
            })
        });
        *self.shadow.write().unwrap_or_else(PoisonError::into_inner) = shadow;
    }

    /// The shadow package, if one runs.
    pub fn shadow(&self) -> Option<Digest> {
        self.shadow.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(|s| *s.served.digest())
    }

    /// The shadow's comparisons since the last call (reset), with its package.
    pub fn take_shadow_stats(&self) -> Option<(Digest, ShadowStats)> {
        let shadow = self.shadow.read().unwrap_or_else(PoisonError::into_inner).clone()?;
        let stats = std::mem::take(&mut *shadow.stats.lock().unwrap_or_else(PoisonError::into_inner));
        Some((*shadow.served.digest(), stats))
    }

    /// Runs the shadow (if sampled and idle) on a request the active model answered with `answer` in `took`;
    /// never touches the answer already given.
    fn run_shadow(
        self: &Arc<Self>,
        body: Vec<u8>,
        json_len: Option<usize>,
        answer: &InferResponse,
        took: std::time::Duration,
    ) {
        let Some(shadow) = self.shadow.read().unwrap_or_else(PoisonError::into_inner).clone() else { return };
        if shadow.seen.fetch_add(1, Ordering::Relaxed) % shadow.every != 0 || shadow.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let active: Vec<(String, Vec<f64>)> =
            answer.outputs.iter().map(|t| (t.name.clone(), t.data.to_f64())).collect();
        let clock = self.clock.clone();
        tokio::task::spawn_blocking(move || {
            let started = clock.as_ref().map(|c| c.monotonic());
            let result = handle_infer(&shadow.served, &body, json_len, Outputs::Json);
            let shadow_took = match (&clock, started) {
                (Some(c), Some(t)) => c.monotonic().saturating_sub(t),
                _ => std::time::Duration::ZERO,
            };
            if let Ok(answer) = result {
                let mut stats = shadow.stats.lock().unwrap_or_else(PoisonError::into_inner);
                stats.samples += 1;
                let mut top1 = None;
                for (i, (name, a)) in active.iter().enumerate() {
                    let Some(b) = answer.outputs.iter().find(|t| &t.name == name).map(|t| t.data.to_f64()) else {
                        stats.max_abs_diff = f64::INFINITY;
                        continue;
                    };
                    for (x, y) in a.iter().zip(&b) {
                        let d = (x - y).abs();
                        stats.max_abs_diff = stats.max_abs_diff.max(if d.is_nan() { f64::INFINITY } else { d });
                    }
                    if i == 0 {
                        top1 = Some(argmax(a) == argmax(&b));
                    }
                }
                stats.agreed += u64::from(top1 == Some(true));
                if !took.is_zero() {
                    stats.latency_ratio_sum += shadow_took.as_secs_f64() / took.as_secs_f64();
                }
            }
            shadow.busy.store(false, Ordering::Release);
        });
    }

    /// Answers one HTTP request on `served` (fixed on the request's arrival): runs it, reports the outcome to
    /// the observer and the metrics when it reached the model, feeds the shadow, and encodes the response.
    fn answer(
        self: &Arc<Self>,
        served: &Served,
        body: Vec<u8>,
        json_len: Option<usize>,
    ) -> Result<Encoded, InferenceError> {
        let started = self.clock.as_ref().map(|c| c.monotonic());
        let result = handle_infer(served, &body, json_len, Outputs::AsRequested);
        let took = match (&self.clock, started) {
            (Some(c), Some(t)) => c.monotonic().saturating_sub(t),
            _ => std::time::Duration::ZERO,
        };
        let reached_model = match &result {
            Ok(_) => Some(true),
            Err(e) if e.is_model_failure() => Some(false),
            Err(_) => None,
        };
        if let (Some(ok), Some(observer)) = (reached_model, &self.observer) {
            observer(served, ok, took);
        }
        if let Some(ok) = reached_model {
            self.count(served, ok, took);
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            served.last_micros.store(micros, Ordering::Relaxed);
        }
        let answer = result?;
        let encoded = Encoded::of(&answer)?;
        self.run_shadow(body, json_len, &answer, took);
        Ok(encoded)
    }

    /// Makes `served` the active model; returns the previous one. Requests already running keep theirs.
    pub fn swap(&self, served: Arc<Served>) -> Option<Arc<Served>> {
        self.write().replace(served)
    }

    /// Stops serving (readiness turns 503); returns the model that was active. Running requests finish.
    pub fn clear(&self) -> Option<Arc<Served>> {
        self.write().take()
    }

    /// The active model, if any.
    pub fn current(&self) -> Option<Arc<Served>> {
        // Nothing can panic while the lock is held (a clone or a replace), so poisoning carries no meaning.
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn count(&self, served: &Served, ok: bool, took: std::time::Duration) {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        // Keyed by digest: the hot path allocates only for a model's first inference.
        let entry = counters.entry(*served.digest()).or_insert_with(|| Counts {
            name: served.name().to_owned(),
            version: served.version().to_string(),
            ..Counts::default()
        });
        entry.inferences += 1;
        entry.failures += u64::from(!ok);
        entry.latency.record(took);
    }

    /// The Prometheus text exposition of what this handle served: inferences, failures and latency per model
    /// (latency only when the handle has a clock), and whether a model is active.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(out, "# HELP outpost_agent_inferences_total Inferences that reached a model.");
        let _ = writeln!(out, "# TYPE outpost_agent_inferences_total counter");
        for c in counters.values() {
            let (name, version, n) = (&c.name, &c.version, c.inferences);
            let _ = writeln!(out, "outpost_agent_inferences_total{{model=\"{name}\",version=\"{version}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP outpost_agent_inference_failures_total Inferences the model failed.");
        let _ = writeln!(out, "# TYPE outpost_agent_inference_failures_total counter");
        for c in counters.values() {
            let (name, version, e) = (&c.name, &c.version, c.failures);
            let _ =
                writeln!(out, "outpost_agent_inference_failures_total{{model=\"{name}\",version=\"{version}\"}} {e}");
        }
        let _ = writeln!(out, "# HELP outpost_agent_inference_seconds Time the model took per inference.");
        let _ = writeln!(out, "# TYPE outpost_agent_inference_seconds histogram");
        for c in counters.values() {
            let labels = [("model", c.name.as_str()), ("version", c.version.as_str())];
            c.latency.write_prometheus(&mut out, "outpost_agent_inference_seconds", &labels);
        }
        let _ = writeln!(out, "# HELP outpost_agent_model_active The model served now (1), by digest.");
        let _ = writeln!(out, "# TYPE outpost_agent_model_active gauge");
        if let Some(m) = self.current() {
            let _ = writeln!(
                out,
                "outpost_agent_model_active{{model=\"{}\",version=\"{}\",digest=\"{}\"}} 1",
                m.name(),
                m.version(),
                m.digest().to_hex()
            );
        }
        out
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<Served>>> {
        self.current.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs one OIP v2 JSON inference request on `served`, through the same code as `POST .../infer`, and returns
/// the response body. For `outpost-agent infer --input FILE`.
pub fn infer_once(served: &Served, request_json: &[u8]) -> Result<serde_json::Value, InferenceError> {
    let response = handle_infer(served, request_json, None, Outputs::Json)?;
    // Through text, as over HTTP: `to_value` would widen f32 outputs to f64 digits the endpoint never prints.
    let bytes = serde_json::to_vec(&response).map_err(|e| InferenceError::Internal(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| InferenceError::Internal(e.to_string()))
}

/// The OIP v2 routes over `handle`, bounded by `limits`.
pub fn router(handle: Arc<ModelHandle>, limits: ServeLimits) -> Router {
    let running = limits.max_concurrent_inferences.max(1);
    let app = Arc::new(App {
        handle,
        limits,
        running: Arc::new(Semaphore::new(running)),
        admitted: Arc::new(Semaphore::new(running.saturating_add(limits.max_queued_inferences))),
    });
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .route("/metrics", get(metrics))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
}

/// Serves the API on `listener` until `shutdown` resolves, then lets running requests finish. The caller binds
/// the listener (the agent uses its config's `inference.bind`, by default [`DEFAULT_LISTEN`]).
pub async fn serve(
    listener: TcpListener,
    handle: Arc<ModelHandle>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Requests and answers are small writes a client waits for: Nagle's algorithm would only delay them.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(handle, limits)).with_graceful_shutdown(shutdown).await
}

struct App {
    handle: Arc<ModelHandle>,
    limits: ServeLimits,
    /// One permit per running inference.
    running: Arc<Semaphore>,
    /// One permit per running or waiting inference.
    admitted: Arc<Semaphore>,
}

type AppState = State<Arc<App>>;

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The active model if it is `name` (and `version`, when given).
fn select(app: &App, name: &str, version: Option<&str>) -> Result<Arc<Served>, InferenceError> {
    let served = app.handle.current().ok_or(InferenceError::NotReady)?;
    if served.name() != name {
        return Err(InferenceError::UnknownModel { requested: name.to_owned(), serving: served.name().to_owned() });
    }
    if let Some(v) = version
        && v != served.version()
    {
        return Err(InferenceError::UnknownVersion {
            model: name.to_owned(),
            requested: v.to_owned(),
            serving: served.version(),
        });
    }
    Ok(served)
}

async fn metrics(State(app): AppState) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.handle.prometheus()).into_response()
}

async fn server_ready(State(app): AppState) -> Response {
    match app.handle.current() {
        Some(_) => StatusCode::OK.into_response(),
        None => InferenceError::NotReady.into_response(),
    }
}

async fn server_metadata() -> Response {
    axum::Json(serde_json::json!({
        "name": "outpost-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

async fn model_metadata(State(app): AppState, Path(name): Path<String>) -> Response {
    metadata(&app, &name, None)
}

async fn model_metadata_version(State(app): AppState, Path((name, version)): Path<(String, String)>) -> Response {
    metadata(&app, &name, Some(&version))
}

fn metadata(app: &App, name: &str, version: Option<&str>) -> Response {
    let served = match select(app, name, version) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let tensors = |specs: &[TensorSpec]| -> Vec<serde_json::Value> {
        specs
            .iter()
            .map(|s| {
                let shape: Vec<i64> = s
                    .shape
                    .iter()
                    .map(|d| match d {
                        Dim::Fixed(n) => i64::try_from(*n).unwrap_or(i64::MAX),
                        Dim::Symbol(_) => -1,
                    })
                    .collect();
                serde_json::json!({ "name": s.name, "datatype": oip_name(s.dtype), "shape": shape })
            })
            .collect()
    };
    axum::Json(serde_json::json!({
        "name": served.name(),
        "versions": [served.version()],
        "platform": PLATFORM,
        "inputs": tensors(served.model().inputs()),
        "outputs": tensors(served.model().outputs()),
    }))
    .into_response()
}

async fn model_ready(State(app): AppState, Path(name): Path<String>) -> Response {
    match select(&app, &name, None) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn model_ready_version(State(app): AppState, Path((name, version)): Path<(String, String)>) -> Response {
    match select(&app, &name, Some(&version)) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn infer(State(app): AppState, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    infer_response(&app, &name, None, &headers, body).await
}

async fn infer_version(
    State(app): AppState,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_response(&app, &name, Some(&version), &headers, body).await
}

async fn infer_response(app: &App, name: &str, version: Option<&str>, headers: &HeaderMap, body: Body) -> Response {
    match run_infer(app, name, version, headers, body).await {
        Ok(Encoded { body, json_len: None }) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Encoded { body, json_len: Some(n) }) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
                (HeaderName::from_static(INFERENCE_HEADER_CONTENT_LENGTH), HeaderValue::from(n)),
            ],
            body,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run_infer(
    app: &App,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Encoded, InferenceError> {
    // The model is fixed here, on arrival: a swap from now on does not concern this request.
    let served = select(app, name, version)?;
    let limit = app.limits.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(InferenceError::TooLarge(limit));
    }
    let json_len = json_header_len(headers)?;
    let _admitted =
        app.admitted.clone().try_acquire_owned().map_err(|_| InferenceError::Busy(app.limits.max_queued_inferences))?;
    // Wait for a slot before buffering the body, so memory stays bounded by the running inferences.
    let running = app.running.clone().acquire_owned().await.map_err(|e| InferenceError::Internal(e.to_string()))?;
    let bytes = read_body(body, limit, declared).await?;
    let handle = app.handle.clone();
    let last = std::time::Duration::from_micros(served.last_micros.load(Ordering::Relaxed));
    let in_place = last < app.limits.in_place_below;
    run_blocking(in_place, move || {
        let _running = running;
        handle.answer(&served, bytes, json_len)
    })
    .await?
}

/// Runs `f` (tract: CPU-bound) off the async scheduler. `in_place` on a multi-thread runtime: right here under
/// `block_in_place`, which hands this worker's other tasks to another thread, so the request never waits for a
/// wake-up between threads. Otherwise, and always on a current-thread runtime (no worker to hand over:
/// `block_in_place` would panic), on the blocking pool. Either way the caller's semaphore bounds the threads
/// busy with inferences.
async fn run_blocking<T: Send + 'static>(
    in_place: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, InferenceError> {
    if in_place && Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        // tract runs under its own `catch_unwind`; this one keeps a panic elsewhere (an observer) a 500, as the
        // blocking pool's `JoinError` does.
        return catch_unwind(AssertUnwindSafe(|| tokio::task::block_in_place(f)))
            .map_err(|_| InferenceError::Internal("inference task panicked".into()));
    }
    tokio::task::spawn_blocking(f).await.map_err(|e| InferenceError::Internal(format!("inference task: {e}")))
}

/// The request's `Inference-Header-Content-Length`: the length of the JSON header when binary tensor data
/// follows it (`None`: the whole body is JSON).
fn json_header_len(headers: &HeaderMap) -> Result<Option<usize>, InferenceError> {
    let Some(value) = headers.get(INFERENCE_HEADER_CONTENT_LENGTH) else { return Ok(None) };
    value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
        InferenceError::BadRequest(format!(
            "header {INFERENCE_HEADER_CONTENT_LENGTH} is {value:?}, not a length in bytes"
        ))
    })
}

async fn read_body(mut body: Body, limit: usize, declared: Option<u64>) -> Result<Vec<u8>, InferenceError> {
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| InferenceError::BadRequest(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len().saturating_add(data.len()) > limit {
                return Err(InferenceError::TooLarge(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// A response body: the JSON object, followed by the binary outputs when `json_len` is given (the
/// `Inference-Header-Content-Length` to send).
struct Encoded {
    body: Vec<u8>,
    json_len: Option<usize>,
}

impl Encoded {
    /// The JSON object, then the data of each binary output in order.
    fn of(answer: &InferResponse) -> Result<Encoded, InferenceError> {
        let binary_len: usize = answer.outputs.iter().filter(|t| t.binary).map(|t| byte_len(&t.data)).sum();
        let mut body = Vec::with_capacity(RESPONSE_HEADER_ESTIMATE + binary_len);
        serde_json::to_writer(&mut body, answer).map_err(|e| InferenceError::Internal(e.to_string()))?;
        let json_len = body.len();
        let mut any = false;
        for t in answer.outputs.iter().filter(|t| t.binary) {
            write_le(&t.data, &mut body);
            any = true;
        }
        Ok(Encoded { body, json_len: any.then_some(json_len) })
    }
}

/// Room reserved for a response's JSON text (grows as needed).
const RESPONSE_HEADER_ESTIMATE: usize = 512;

/// Where a request asks its outputs to go: each may come back as binary data (the binary tensor data
/// extension) or as JSON. `infer_once` prints JSON, so it ignores the request's choice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outputs {
    AsRequested,
    Json,
}

/// An inference request as parsed and checked against a model's contract, before anything runs.
#[derive(Debug)]
pub struct ParsedRequest {
    /// The request's `id`, echoed in the answer.
    pub id: Option<String>,
    /// One tensor per input, data decoded from JSON or from the binary tensor data.
    pub tensors: Vec<NamedTensor>,
    /// Every output as binary data unless a requested output says otherwise (`binary_data_output`).
    pub all_binary: bool,
    /// The requested outputs and whether each comes back binary; `None`: every output.
    pub wanted: Option<Vec<(String, bool)>>,
}

/// Parses a request body for a model with these `inputs` and `outputs`: the JSON header, then the binary tensor
/// data when `json_len` (the `Inference-Header-Content-Length` header) says where the header ends. Every problem
/// is a [`InferenceError::BadRequest`] naming it; nothing panics on any input (fuzz target `infer_request`).
///
/// # Errors
/// [`InferenceError::BadRequest`] with the reason.
pub fn parse_request(
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
    body: &[u8],
    json_len: Option<usize>,
) -> Result<ParsedRequest, InferenceError> {
    let (json, binary) = match json_len {
        None => (body, &[][..]),
        Some(n) => body.split_at_checked(n).ok_or_else(|| {
            InferenceError::BadRequest(format!(
                "{INFERENCE_HEADER_CONTENT_LENGTH} is {n} bytes, but the body holds only {}",
                body.len()
            ))
        })?,
    };
    let request: InferRequest = serde_json::from_slice(json)
        .map_err(|e| InferenceError::BadRequest(format!("not a valid inference request: {e}")))?;
    let declared = request
        .inputs
        .iter()
        .filter_map(|i| i.parameters.binary_data_size)
        .try_fold(0u64, u64::checked_add)
        .and_then(|n| usize::try_from(n).ok());
    if declared != Some(binary.len()) {
        let declared = declared.map_or_else(|| "more than usize::MAX".to_owned(), |n| n.to_string());
        return Err(InferenceError::BadRequest(format!(
            "the inputs' binary_data_size add up to {declared} bytes, but {} bytes of binary tensor data follow the \
             JSON header ({INFERENCE_HEADER_CONTENT_LENGTH}: {})",
            binary.len(),
            json_len.map_or_else(|| "absent, so the whole body is JSON".to_owned(), |n| n.to_string()),
        )));
    }
    let mut tensors = Vec::with_capacity(request.inputs.len());
    let mut rest = binary;
    for input in request.inputs {
        tensors.push(input.into_tensor(inputs, &mut rest)?);
    }
    let all_binary = request.parameters.binary_data_output.unwrap_or(false);
    let wanted = match request.outputs {
        None => None,
        Some(list) => {
            let mut names = Vec::with_capacity(list.len());
            for o in list {
                if !outputs.iter().any(|s| s.name == o.name) {
                    let known: Vec<&str> = outputs.iter().map(|s| s.name.as_str()).collect();
                    return Err(InferenceError::BadRequest(format!(
                        "requested output `{}` is not an output of this model (its outputs: {})",
                        o.name,
                        known.join(", ")
                    )));
                }
                names.push((o.name, o.parameters.binary_data.unwrap_or(all_binary)));
            }
            Some(names)
        }
    };
    Ok(ParsedRequest { id: request.id, tensors, all_binary, wanted })
}

/// The shared request path: parse ([`parse_request`]), run, shape the response. Counts the outcome on `served`.
fn handle_infer(
    served: &Served,
    body: &[u8],
    json_len: Option<usize>,
    outputs_as: Outputs,
) -> Result<InferResponse, InferenceError> {
    let ParsedRequest { id, tensors, all_binary, wanted } =
        parse_request(served.model().inputs(), served.model().outputs(), body, json_len)?;
    let result = served.model().run(tensors);
    match &result {
        Ok(_) => served.ok.fetch_add(1, Ordering::Relaxed),
        Err(ModelError::BadInput { .. }) => 0,
        Err(_) => served.failed.fetch_add(1, Ordering::Relaxed),
    };
    let produced = result?;
    let outputs = produced
        .into_iter()
        .filter_map(|t| {
            let binary = match &wanted {
                None => all_binary,
                Some(w) => w.iter().find(|(name, _)| *name == t.name)?.1,
            };
            Some(ResponseTensor {
                datatype: oip_name(t.dtype()),
                name: t.name,
                shape: t.shape,
                data: t.data,
                binary: binary && outputs_as == Outputs::AsRequested,
            })
        })
        .collect();
    Ok(InferResponse { model_name: served.name().to_owned(), model_version: served.version(), id, outputs })
}

/// Index of the largest value (the first among equals); `None` when empty.
fn argmax(v: &[f64]) -> Option<usize> {
    v.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &x)| match best {
            Some((_, b)) if b >= x => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}

/// The OIP datatype name of an element type.
pub fn oip_name(t: ElementType) -> &'static str {
    match t {
        ElementType::F32 => "FP32",
        ElementType::F64 => "FP64",
        ElementType::I8 => "INT8",
        ElementType::U8 => "UINT8",
        ElementType::I32 => "INT32",
        ElementType::I64 => "INT64",
        ElementType::Bool => "BOOL",
    }
}

/// The element type of an OIP datatype name, if Outpost supports it.
pub fn from_oip_name(name: &str) -> Option<ElementType> {
    use ElementType::*;
    [F32, F64, I8, U8, I32, I64, Bool].into_iter().find(|&t| oip_name(t) == name)
}

/// The OIP request body (the JSON header, with the binary tensor data extension). Unknown fields and
/// parameters are ignored.
#[derive(Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<RequestInput>,
    #[serde(default)]
    outputs: Option<Vec<RequestOutput>>,
    #[serde(default)]
    parameters: RequestParameters,
}

#[derive(Deserialize, Default)]
struct RequestParameters {
    /// Every output as binary data unless its own `binary_data` says otherwise.
    #[serde(default)]
    binary_data_output: Option<bool>,
}

#[derive(Deserialize)]
struct RequestInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    data: Option<Flat>,
    #[serde(default)]
    parameters: InputParameters,
}

#[derive(Deserialize, Default)]
struct InputParameters {
    /// The tensor's bytes follow the JSON header instead of `data`.
    #[serde(default)]
    binary_data_size: Option<u64>,
}

#[derive(Deserialize)]
struct RequestOutput {
    name: String,
    #[serde(default)]
    parameters: OutputParameters,
}

#[derive(Deserialize, Default)]
struct OutputParameters {
    #[serde(default)]
    binary_data: Option<bool>,
}

impl RequestInput {
    /// The tensor, its data from `data` or, for a binary input, from the front of `binary` (which it consumes).
    fn into_tensor(self, specs: &[TensorSpec], binary: &mut &[u8]) -> Result<NamedTensor, InferenceError> {
        let name = self.name;
        let bad = |problem: String| InferenceError::BadRequest(format!("input `{name}`: {problem}"));
        let supported = "FP32, FP64, INT8, UINT8, INT32, INT64, BOOL";
        let dtype = from_oip_name(&self.datatype).ok_or_else(|| match self.datatype.as_str() {
            // No Outpost contract has string tensors, so BYTES (in JSON or binary) has nothing to feed.
            "BYTES" => bad(format!(
                "BYTES tensors are not supported, in JSON or binary: no Outpost model takes strings (supported: \
                 {supported})"
            )),
            other => bad(format!("datatype `{other}` is not supported (supported: {supported})")),
        })?;
        // Unknown names are left to the model's own check, which lists the inputs it has.
        if let Some(spec) = specs.iter().find(|s| s.name == name)
            && spec.dtype != dtype
        {
            return Err(bad(format!("datatype {}, the model takes {}", self.datatype, oip_name(spec.dtype))));
        }
        let shape = self
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("shape {:?} has a negative dimension", self.shape))))
            .collect::<Result<Vec<usize>, _>>()?;
        let data = match (self.data, self.parameters.binary_data_size) {
            (Some(_), Some(_)) => {
                return Err(bad("has both `data` and `parameters.binary_data_size`; give one".into()));
            }
            (None, None) => return Err(bad("has no data: give `data` or `parameters.binary_data_size`".into())),
            (Some(flat), None) => flat.into_typed(dtype).map_err(bad)?,
            (None, Some(size)) => {
                let expected = shape.iter().try_fold(element_size(dtype), |a, &d| a.checked_mul(d));
                if expected.is_none_or(|e| e as u64 != size) {
                    let expected = expected.map_or_else(|| "more than usize::MAX".to_owned(), |e| e.to_string());
                    return Err(bad(format!(
                        "binary_data_size is {size} bytes, but shape {shape:?} of {} takes {expected}",
                        self.datatype
                    )));
                }
                // The caller checked that the sizes add up to the binary section.
                let (bytes, rest) = binary
                    .split_at_checked(size as usize)
                    .ok_or_else(|| bad(format!("binary_data_size {size} runs past the end of the body")))?;
                *binary = rest;
                read_le(dtype, bytes).map_err(bad)?
            }
        };
        Ok(NamedTensor::new(name.clone(), shape, data))
    }
}

/// Bytes per element in the binary tensor data extension (BOOL: one byte, 0 or 1).
fn element_size(t: ElementType) -> usize {
    match t {
        ElementType::I8 | ElementType::U8 | ElementType::Bool => 1,
        ElementType::I32 | ElementType::F32 => 4,
        ElementType::I64 | ElementType::F64 => 8,
    }
}

fn byte_len(d: &TensorData) -> usize {
    d.len() * element_size(d.dtype())
}

/// Decodes little-endian tensor bytes (their length a multiple of the element size, checked by the caller).
fn read_le(dtype: ElementType, bytes: &[u8]) -> Result<TensorData, String> {
    fn each<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
        bytes.as_chunks::<N>().0.iter().map(|&c| f(c)).collect()
    }
    Ok(match dtype {
        ElementType::F32 => TensorData::F32(each(bytes, f32::from_le_bytes)),
        ElementType::F64 => TensorData::F64(each(bytes, f64::from_le_bytes)),
        ElementType::I8 => TensorData::I8(each(bytes, i8::from_le_bytes)),
        ElementType::U8 => TensorData::U8(bytes.to_vec()),
        ElementType::I32 => TensorData::I32(each(bytes, i32::from_le_bytes)),
        ElementType::I64 => TensorData::I64(each(bytes, i64::from_le_bytes)),
        ElementType::Bool => TensorData::Bool(
            bytes
                .iter()
                .enumerate()
                .map(|(i, &b)| match b {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(format!("BOOL element {i} is the byte {b}, not 0 or 1")),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// Appends tensor data as little-endian bytes.
fn write_le(d: &TensorData, out: &mut Vec<u8>) {
    fn each<T: Copy, const N: usize>(v: &[T], out: &mut Vec<u8>, f: fn(T) -> [u8; N]) {
        out.reserve(v.len() * N);
        for &x in v {
            out.extend_from_slice(&f(x));
        }
    }
    match d {
        TensorData::F32(v) => each(v, out, f32::to_le_bytes),
        TensorData::F64(v) => each(v, out, f64::to_le_bytes),
        TensorData::I8(v) => each(v, out, i8::to_le_bytes),
        TensorData::U8(v) => out.extend_from_slice(v),
        TensorData::I32(v) => each(v, out, i32::to_le_bytes),
        TensorData::I64(v) => each(v, out, i64::to_le_bytes),
        TensorData::Bool(v) => each(v, out, |b| [u8::from(b)]),
    }
}

#[derive(Serialize)]
struct InferResponse {
    model_name: String,
    model_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    outputs: Vec<ResponseTensor>,
}

/// One output: with its values as `data`, or, when `binary`, with `parameters.binary_data_size` and its bytes
/// after the JSON object.
struct ResponseTensor {
    name: String,
    datatype: &'static str,
    shape: Vec<usize>,
    data: TensorData,
    binary: bool,
}

impl Serialize for ResponseTensor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ResponseTensor", 4)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("datatype", self.datatype)?;
        st.serialize_field("shape", &self.shape)?;
        if self.binary {
            st.serialize_field("parameters", &BinaryDataSize { binary_data_size: byte_len(&self.data) })?;
        } else {
            st.serialize_field("data", &Values(&self.data))?;
        }
        st.end()
    }
}

#[derive(Serialize)]
struct BinaryDataSize {
    binary_data_size: usize,
}

/// Serialises tensor data as a flat JSON array (non-finite floats become `null`, as JSON has no NaN).
struct Values<'a>(&'a TensorData);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            TensorData::F32(v) => v.serialize(s),
            TensorData::F64(v) => v.serialize(s),
            TensorData::I8(v) => v.serialize(s),
            TensorData::U8(v) => v.serialize(s),
            TensorData::I32(v) => v.serialize(s),
            TensorData::I64(v) => v.serialize(s),
            TensorData::Bool(v) => v.serialize(s),
        }
    }
}

/// A request's `data`, flat or nested arrays flattened row-major as they are parsed (no `serde_json::Value`
/// tree: eight bytes per element). Integers stay exact until a float shows up.
#[derive(Default)]
enum Flat {
    #[default]
    Empty,
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
}

impl Flat {
    fn push_int(&mut self, v: i64) -> Result<(), &'static str> {
        match self {
            Flat::Empty => *self = Flat::Ints(vec![v]),
            Flat::Ints(xs) => xs.push(v),
            Flat::Floats(xs) => xs.push(v as f64),
            Flat::Bools(_) => return Err("data mixes booleans and numbers"),
        }
        Ok(())
    }

    fn push_float(&mut self, v: f64) -> Result<(), &'static str> {
        match self {
            Flat::Empty => *self = Flat::Floats(vec![v]),
            Flat::Ints(xs) => {
                let mut fs: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
                fs.push(v);
                *self = Flat::Floats(fs);
            }
            Flat::Floats(xs) => xs.push(v),
            Flat::Bools(_) => return Err("data mixes booleans and numbers"),
        }
        Ok(())
    }

    fn push_bool(&mut self, v: bool) -> Result<(), &'static str> {
        match self {
            Flat::Empty => *self = Flat::Bools(vec![v]),
            Flat::Bools(xs) => xs.push(v),
            _ => return Err("data mixes booleans and numbers"),
        }
        Ok(())
    }

    fn into_typed(self, dtype: ElementType) -> Result<TensorData, String> {
        fn ints<T: TryFrom<i64>>(flat: Flat, dtype: ElementType) -> Result<Vec<T>, String> {
            match flat {
                Flat::Empty => Ok(Vec::new()),
                Flat::Ints(xs) => xs
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| {
                        T::try_from(x).map_err(|_| format!("element {i} ({x}) is out of range for {}", oip_name(dtype)))
                    })
                    .collect(),
                Flat::Floats(xs) => {
                    let (i, x) = xs.iter().enumerate().find(|(_, x)| x.fract() != 0.0 || !x.is_finite()).map_or(
                        // Every float is integral but the JSON spelled one with a point or exponent.
                        (0, xs.first().copied().unwrap_or_default()),
                        |(i, x)| (i, *x),
                    );
                    Err(format!("{} data must be integers; element {i} is {x}", oip_name(dtype)))
                }
                Flat::Bools(_) => Err(format!("{} data must be integers, not booleans", oip_name(dtype))),
            }
        }
        fn floats(flat: Flat, dtype: ElementType) -> Result<Vec<f64>, String> {
            match flat {
                Flat::Empty => Ok(Vec::new()),
                Flat::Ints(xs) => Ok(xs.into_iter().map(|x| x as f64).collect()),
                Flat::Floats(xs) => Ok(xs),
                Flat::Bools(_) => Err(format!("{} data must be numbers, not booleans", oip_name(dtype))),
            }
        }
        Ok(match dtype {
            ElementType::F32 => TensorData::F32(floats(self, dtype)?.into_iter().map(|x| x as f32).collect()),
            ElementType::F64 => TensorData::F64(floats(self, dtype)?),
            ElementType::I8 => TensorData::I8(ints(self, dtype)?),
            ElementType::U8 => TensorData::U8(ints(self, dtype)?),
            ElementType::I32 => TensorData::I32(ints(self, dtype)?),
            ElementType::I64 => TensorData::I64(ints(self, dtype)?),
            ElementType::Bool => match self {
                Flat::Empty => TensorData::Bool(Vec::new()),
                Flat::Bools(xs) => TensorData::Bool(xs),
                _ => return Err("BOOL data must be true or false".into()),
            },
        })
    }
}

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flat, D::Error> {
        let mut flat = Flat::Empty;
        d.deserialize_any(FlatVisitor(&mut flat))?;
        Ok(flat)
    }
}

/// Visits one JSON value of `data`, appending its scalars to the accumulator.
struct FlatVisitor<'a>(&'a mut Flat);

impl<'de> Visitor<'de> for FlatVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("numbers, booleans, or (nested) arrays of them")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push_bool(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push_int(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.0.push_int(v),
            Err(_) => self.0.push_float(v as f64),
        }
        .map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.0.push_float(v).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(FlatSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

struct FlatSeed<'a>(&'a mut Flat);

impl<'de> DeserializeSeed<'de> for FlatSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(FlatVisitor(self.0))
    }
}
