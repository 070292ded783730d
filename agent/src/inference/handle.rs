//! The served models: a package loaded and smoke-tested for serving ([`Served`]), the active one swapped
//! atomically under running requests ([`ModelHandle`]), its shadow, and the per-model counters and latencies.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use outpost_shared::model::{self, LoadedModel, ModelError};
use outpost_shared::oip::{
    Encoded, InferResponse, ParsedRequest, RequestLimits, ResponseTensor, oip_name, parse_request,
};
use outpost_shared::telemetry::Histogram;
use outpost_shared::{Digest, Manifest, Package, PackageError, PackageLimits};

use super::InferenceError;

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
/// Successful and failed inferences on one served model, counted since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InferenceStats {
    /// Inferences that returned the model's own outputs (an answer whose non-finite values come from a non-finite
    /// input the contract allows is neither a success nor a failure).
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

    /// How long its last inference took (zero when not known: no clock, or none yet).
    pub(super) fn last_inference(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.last_micros.load(Ordering::Relaxed))
    }

    /// Inferences counted on this model so far (HTTP and [`infer_once`] alike).
    pub fn stats(&self) -> InferenceStats {
        InferenceStats { ok: self.ok.load(Ordering::Relaxed), failed: self.failed.load(Ordering::Relaxed) }
    }
}

/// Called after each inference that reached a model: the model it ran on, whether it succeeded, and how long
/// the model took (on the handle's clock). Requests refused before running (bad JSON, bad tensors, unknown
/// model, no model) are not reported, and neither is an answer whose non-finite values come from a non-finite
/// input the contract allows (the caller's doing: it says nothing for or against the model).
pub type InferenceObserver = dyn Fn(&Served, bool, std::time::Duration) + Send + Sync;

/// What `GET /metrics` reports of one served model.
#[derive(Default, Clone)]
pub(crate) struct Counts {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) inferences: u64,
    pub(crate) failures: u64,
    pub(crate) latency: Histogram,
}

/// The active model, swapped atomically. Each request takes its own `Arc` of the model current on arrival.
#[derive(Default)]
pub struct ModelHandle {
    current: RwLock<Option<Arc<Served>>>,
    observer: Option<Arc<InferenceObserver>>,
    clock: Option<Arc<dyn outpost_shared::clock::Clock>>,
    /// Per model (by digest): inferences, failures, latency; for `GET /metrics`.
    counters: std::sync::Mutex<BTreeMap<Digest, Counts>>,
    /// A package running in shadow: fed a share of answered requests, never serving.
    shadow: RwLock<Option<Arc<Shadow>>>,
    /// The update loop's timings (check latency, download time) and the outcomes it dropped, for `GET /metrics`.
    metrics: crate::metrics::AgentMetrics,
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
            observer: Some(Arc::new(observer)),
            clock: Some(clock),
            counters: Default::default(),
            shadow: RwLock::new(None),
            metrics: Default::default(),
        }
    }

    /// A handle whose HTTP inferences are reported, as [`Outcome`](super::outcomes::Outcome)s timed on `clock`,
    /// into a queue of `capacity` the update loop drains from the returned receiver. Inference never waits on it:
    /// an outcome that finds it full is dropped and counted (`outpost_agent_inference_outcomes_dropped_total`), a
    /// dropped failure kept aside for the health window (see [`super::outcomes`]).
    pub fn with_outcomes(
        clock: Arc<dyn outpost_shared::clock::Clock>,
        capacity: usize,
    ) -> (ModelHandle, super::outcomes::OutcomeReceiver) {
        let metrics = crate::metrics::AgentMetrics::default();
        let (tx, rx) = super::outcomes::channel(capacity, metrics.outcomes_dropped());
        let mut handle = ModelHandle::with_observer(clock, move |served, ok, took| {
            tx.send(super::outcomes::Outcome { model: *served.digest(), ok, took: Some(took) });
        });
        handle.metrics = metrics;
        (handle, rx)
    }

    /// A handle for another capability's model that reports its inferences as this one does (the same observer,
    /// clock and update-loop metrics), with its own active model, shadow and counters.
    pub fn sibling(&self) -> ModelHandle {
        ModelHandle {
            current: RwLock::new(None),
            observer: self.observer.clone(),
            clock: self.clock.clone(),
            counters: Default::default(),
            shadow: RwLock::new(None),
            metrics: self.metrics.clone(),
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
    fn run_shadow(self: &Arc<Self>, request: Request, answer: &InferResponse, took: std::time::Duration) {
        let Some(shadow) = self.shadow.read().unwrap_or_else(PoisonError::into_inner).clone() else { return };
        if shadow.seen.fetch_add(1, Ordering::Relaxed) % shadow.every != 0 || shadow.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let active: Vec<(String, Vec<f64>)> =
            answer.outputs.iter().map(|t| (t.name.clone(), t.data.to_f64())).collect();
        let clock = self.clock.clone();
        tokio::task::spawn_blocking(move || {
            let started = clock.as_ref().map(|c| c.monotonic());
            let result = handle_infer(&shadow.served, &request, Outputs::Json);
            let shadow_took = match (&clock, started) {
                (Some(c), Some(t)) => c.monotonic().saturating_sub(t),
                _ => std::time::Duration::ZERO,
            };
            if let Ok(Answered { response: answer, .. }) = result {
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
    /// the observer and the metrics when it says something about the model, feeds the shadow, and encodes the
    /// response.
    pub(super) fn answer(self: &Arc<Self>, served: &Served, request: Request) -> Result<Encoded, InferenceError> {
        let (response, took) = self.answer_observed(served, &request)?;
        let Answered { response, by_model } = response;
        let encoded = Encoded::of(&response).map_err(|e| InferenceError::Internal(e.to_string()))?;
        if by_model {
            self.run_shadow(request, &response, took);
        }
        Ok(encoded)
    }

    /// Answers one request through a route on `served`, with the route's response `parameters`; the request
    /// stays the caller's, to hand to the next candidate if this one fails. Also returns how long it took. No
    /// shadow runs on routed requests.
    pub(super) fn answer_routed(
        self: &Arc<Self>,
        served: &Served,
        request: &Request,
        parameters: std::collections::BTreeMap<&'static str, String>,
    ) -> (Result<Encoded, InferenceError>, std::time::Duration) {
        match self.answer_observed(served, request) {
            Ok((Answered { mut response, .. }, took)) => {
                response.parameters = parameters;
                (Encoded::of(&response).map_err(|e| InferenceError::Internal(e.to_string())), took)
            }
            Err(e) => (Err(e), std::time::Duration::ZERO),
        }
    }

    /// Runs one request on `served` and reports the outcome to the observer and the metrics when it says
    /// something about the model.
    fn answer_observed(
        self: &Arc<Self>,
        served: &Served,
        request: &Request,
    ) -> Result<(Answered, std::time::Duration), InferenceError> {
        let started = self.clock.as_ref().map(|c| c.monotonic());
        let result = handle_infer(served, request, Outputs::AsRequested);
        let took = match (&self.clock, started) {
            (Some(c), Some(t)) => c.monotonic().saturating_sub(t),
            _ => std::time::Duration::ZERO,
        };
        let reached_model = match &result {
            Ok(Answered { by_model, .. }) => by_model.then_some(true),
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
        Ok((result?, took))
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

    /// The OpenMetrics exposition of what this handle served (inferences, failures and latency per model, latency
    /// only when the handle has a clock; the active model) and of the update loop's timings: `crate::metrics`.
    pub fn prometheus(&self, format: outpost_shared::metrics::Format) -> String {
        crate::metrics::exposition(self, None, format)
    }

    /// Per model served so far: name, version, inferences, failures, latency.
    pub(crate) fn counts(&self) -> Vec<Counts> {
        let counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        counters.values().cloned().collect()
    }

    /// The update loop's timings, exposed with the inference counters.
    pub fn metrics(&self) -> &crate::metrics::AgentMetrics {
        &self.metrics
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Arc<Served>>> {
        self.current.write().unwrap_or_else(PoisonError::into_inner)
    }
}
/// Runs one OIP v2 JSON inference request on `served`, through the same code as `POST .../infer`, and returns
/// the response body. For `outpost-agent infer --input FILE`.
pub fn infer_once(served: &Served, request_json: &[u8]) -> Result<serde_json::Value, InferenceError> {
    let request = Request { body: request_json.to_vec(), json_len: None, limits: RequestLimits::default() };
    let response = handle_infer(served, &request, Outputs::Json)?.response;
    // Through text, as over HTTP: `to_value` would widen f32 outputs to f64 digits the endpoint never prints.
    let bytes = serde_json::to_vec(&response).map_err(|e| InferenceError::Internal(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| InferenceError::Internal(e.to_string()))
}
/// Where a request asks its outputs to go: each may come back as binary data (the binary tensor data
/// extension) or as JSON. `infer_once` prints JSON, so it ignores the request's choice.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outputs {
    AsRequested,
    Json,
}
/// One inference request as it arrived: the body, where its JSON header ends (the binary tensor data
/// extension), and the bounds its tensors are parsed under.
pub(super) struct Request {
    pub(super) body: Vec<u8>,
    pub(super) json_len: Option<usize>,
    pub(super) limits: RequestLimits,
}

/// A request the model answered.
struct Answered {
    response: InferResponse,
    /// Whether the answer is the model's own: false when its non-finite values come from a non-finite input the
    /// contract allows, which says nothing for or against the model.
    by_model: bool,
}

/// The shared request path: parse ([`parse_request`]), run, shape the response. Counts the outcome on `served`
/// when it is the model's.
fn handle_infer(served: &Served, request: &Request, outputs_as: Outputs) -> Result<Answered, InferenceError> {
    let model = served.model();
    let ParsedRequest { id, tensors, all_binary, wanted } =
        parse_request(model.inputs(), model.outputs(), &request.body, request.json_len, &request.limits)?;
    let caller_non_finite = model.non_finite_by_contract(&tensors);
    let result = model.run(tensors);
    let by_model = !matches!(&result, Ok(outputs)
        if caller_non_finite && outputs.iter().any(|t| t.data.first_non_finite().is_some()));
    match &result {
        Ok(_) if !by_model => 0,
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
    let response = InferResponse {
        model_name: served.name().to_owned(),
        model_version: served.version(),
        id,
        outputs,
        parameters: Default::default(),
    };
    Ok(Answered { response, by_model })
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
