//! Serving through routes: `/v2/models/{route}/infer` goes to the first candidate of the installed router's route
//! whose niche the request falls in and that can answer now (`outpost_shared::route::select`); a candidate that
//! is not installed, not ready, marked out of service (revoked, refused by policy, failed health window), behind
//! an open circuit breaker, or that fails on the request hands it to the next one, so a specialist going away
//! never fails a request its fallback can serve.
//!
//! The answer names the package that answered (`model_name`, `model_version`) and carries `route` and, when a
//! fallback answered, `fallback_reason` in its `parameters`. A request no candidate can serve is a 503 naming
//! every candidate's reason; a request the route's contract refuses is the fallback's 400. Route quality
//! (`outpost_shared::route::quality`) is counted per route here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use outpost_shared::clock::Clock;
use outpost_shared::oip::Encoded;
use outpost_shared::route::breaker::{Admission, Breaker, BreakerPolicy};
use outpost_shared::route::quality::RouteQuality;
use outpost_shared::route::select::{self, RequestFacts, Skip};
use outpost_shared::route::{Route, Router};

use super::InferenceError;
use super::handle::{ModelHandle, Request};

/// The routes a device serves: the installed router, a model handle per capability, what is out of service and
/// why, a circuit breaker per route and candidate, and each route's quality.
pub struct Routes {
    clock: Arc<dyn Clock>,
    router: RwLock<Option<Arc<Router>>>,
    models: RwLock<BTreeMap<String, Arc<ModelHandle>>>,
    /// Handles that serve whatever capability their active model has (the agent's own handle).
    handles: RwLock<Vec<Arc<ModelHandle>>>,
    out_of_service: RwLock<BTreeMap<String, Skip>>,
    breaker_policy: BreakerPolicy,
    breakers: Mutex<BTreeMap<(String, String), Breaker>>,
    quality: Mutex<BTreeMap<String, RouteQuality>>,
    /// What the routes served since telemetry last took it ([`Routes::take_quality`]).
    pending: Mutex<BTreeMap<String, RouteQuality>>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("router", &self.router()).finish_non_exhaustive()
    }
}

/// What routing read from a request's JSON header: each input's shape, and the parameters given as strings.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    inputs: Vec<HeadInput>,
    #[serde(default)]
    parameters: BTreeMap<String, serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct HeadInput {
    name: String,
    shape: Vec<u64>,
}

impl Routes {
    /// No router, no models; breakers on `breaker_policy` (a candidate's `latency_budget_ms` replaces its
    /// latency budget), timed on `clock`'s monotonic time.
    pub fn new(clock: Arc<dyn Clock>, breaker_policy: BreakerPolicy) -> Self {
        Routes {
            clock,
            router: RwLock::new(None),
            models: RwLock::new(BTreeMap::new()),
            handles: RwLock::new(Vec::new()),
            out_of_service: RwLock::new(BTreeMap::new()),
            breaker_policy,
            breakers: Mutex::new(BTreeMap::new()),
            quality: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// Installs router rules (`None`: none); requests in flight finish on the rules they started with. Breakers
    /// start closed for the new rules.
    pub fn set_router(&self, router: Option<Router>) {
        *self.router.write().unwrap_or_else(PoisonError::into_inner) = router.map(Arc::new);
        self.breakers.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// The installed router.
    pub fn router(&self) -> Option<Arc<Router>> {
        self.router.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The handle serving `capability`'s active model.
    pub fn set_model(&self, capability: &str, handle: Arc<ModelHandle>) {
        self.models.write().unwrap_or_else(PoisonError::into_inner).insert(capability.to_owned(), handle);
    }

    /// Routes to `handle` for whatever capability its active model serves (the agent's own handle, whose model
    /// changes with its updates).
    pub fn serve_handle(&self, handle: Arc<ModelHandle>) {
        self.handles.write().unwrap_or_else(PoisonError::into_inner).push(handle);
    }

    /// The handle serving `capability`: one set for it, else one whose active model serves it.
    fn handle_for(&self, capability: &str) -> Option<Arc<ModelHandle>> {
        if let Some(h) = self.models.read().unwrap_or_else(PoisonError::into_inner).get(capability) {
            return Some(h.clone());
        }
        let handles = self.handles.read().unwrap_or_else(PoisonError::into_inner);
        handles.iter().find(|h| h.current().is_some_and(|s| s.manifest().capability == capability)).cloned()
    }

    /// Marks `capability` out of service for routing, with why (`None`: back in service). Its model handle may
    /// still serve requests that name the model directly.
    pub fn mark(&self, capability: &str, reason: Option<Skip>) {
        let mut map = self.out_of_service.write().unwrap_or_else(PoisonError::into_inner);
        match reason {
            Some(r) => map.insert(capability.to_owned(), r),
            None => map.remove(capability),
        };
    }

    /// The active model named `name` among the capabilities' handles, with its handle.
    pub(super) fn model_named(&self, name: &str) -> Option<(Arc<ModelHandle>, Arc<super::Served>)> {
        let models = self.models.read().unwrap_or_else(PoisonError::into_inner);
        let handles = self.handles.read().unwrap_or_else(PoisonError::into_inner);
        models
            .values()
            .chain(handles.iter())
            .find_map(|h| h.current().filter(|s| s.name() == name).map(|s| (h.clone(), s)))
    }

    /// What each route served since the last call (for telemetry; `/metrics` keeps the totals).
    pub fn take_quality(&self) -> BTreeMap<String, RouteQuality> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Each route's quality so far.
    pub fn quality(&self) -> BTreeMap<String, RouteQuality> {
        self.quality.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The route `name` of the installed router, if it is one.
    pub fn route(&self, name: &str) -> Option<(Arc<Router>, usize)> {
        let router = self.router()?;
        let index = router.routes.iter().position(|r| r.name == name)?;
        Some((router, index))
    }

    /// Why `capability` cannot answer now, if it cannot.
    fn unusable(&self, capability: &str) -> Option<Skip> {
        if let Some(reason) = self.out_of_service.read().unwrap_or_else(PoisonError::into_inner).get(capability) {
            return Some(*reason);
        }
        match self.handle_for(capability) {
            None => Some(Skip::NotInstalled),
            Some(h) if h.current().is_none() => Some(Skip::NotReady),
            Some(_) => None,
        }
    }

    fn admit(&self, route: &Route, capability: &str) -> Admission {
        let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        self.breaker(&mut breakers, route, capability).admit(self.clock.monotonic())
    }

    fn breaker<'a>(
        &self,
        breakers: &'a mut BTreeMap<(String, String), Breaker>,
        route: &Route,
        capability: &str,
    ) -> &'a mut Breaker {
        let budget = route
            .candidates
            .iter()
            .find(|c| c.capability == capability)
            .and_then(|c| c.latency_budget_ms)
            .map(Duration::from_millis);
        let policy =
            BreakerPolicy { latency_budget: budget.or(self.breaker_policy.latency_budget), ..self.breaker_policy };
        breakers.entry((route.name.clone(), capability.to_owned())).or_insert_with(|| Breaker::new(policy))
    }

    fn record(&self, route: &Route, capability: &str, ok: bool, took: Duration) {
        let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = self.breaker(&mut breakers, route, capability).record(self.clock.monotonic(), ok, took) {
            tracing::info!(route = %route.name, capability, ?state, "circuit breaker changed");
        }
    }

    /// Answers one request (already read, within its limits) through route `index` of `router`: runs on the
    /// blocking pool or in place as the caller decides.
    pub(super) fn answer(&self, router: &Router, index: usize, request: &Request) -> Result<Encoded, InferenceError> {
        let route = &router.routes[index];
        let facts = facts(request)?;
        let mut plan = select::plan(route, &facts, |c| self.unusable(&c.capability).map_or(Ok(()), Err));
        let mut erred: Vec<&str> = Vec::new();
        let mut result = None;
        for i in plan.order.clone() {
            let capability = route.candidates[i].capability.as_str();
            if self.admit(route, capability) == Admission::Refused {
                plan.skipped.push((i, Skip::CircuitOpen));
                plan.skipped.sort_by_key(|(i, _)| *i);
                continue;
            }
            let handle = self.handle_for(capability);
            // Fixed here: a swap or a revocation from now on does not concern this request.
            let Some((handle, served)) = handle.and_then(|h| Some((h.clone(), h.current()?))) else {
                plan.skipped.push((i, Skip::NotReady));
                plan.skipped.sort_by_key(|(i, _)| *i);
                continue;
            };
            let mut parameters = BTreeMap::from([("route", route.name.clone())]);
            if let Some(reason) = plan.fallback_reason(i) {
                parameters.insert("fallback_reason", reason.name().to_owned());
            }
            let started = self.clock.monotonic();
            let (answer, _) = handle.answer_routed(&served, request, parameters);
            let took = self.clock.monotonic().saturating_sub(started);
            match answer {
                Err(e) if e.is_model_failure() => {
                    self.record(route, capability, false, took);
                    erred.push(capability);
                    plan.erred(i);
                }
                // The caller's fault (a request outside the contract): the next candidate would say the same.
                Err(e) => return Err(e),
                Ok(encoded) => {
                    self.record(route, capability, true, took);
                    result = Some((encoded, capability, took, plan.fallback_reason(i)));
                    break;
                }
            }
        }
        let answered = result.as_ref().map(|(_, capability, took, _)| (*capability, *took));
        let fallback = result.as_ref().and_then(|(.., fallback)| *fallback);
        for record in [&self.quality, &self.pending] {
            let mut quality = record.lock().unwrap_or_else(PoisonError::into_inner);
            quality.entry(route.name.clone()).or_default().record(answered, &erred, fallback);
        }
        match result {
            Some((encoded, ..)) => Ok(encoded),
            None => {
                let reasons: Vec<String> = plan
                    .skipped
                    .iter()
                    .map(|(i, s)| format!("{}: {}", route.candidates[*i].capability, s.name()))
                    .collect();
                Err(InferenceError::NoCandidate { route: route.name.clone(), reasons: reasons.join(", ") })
            }
        }
    }
}

/// The shapes and string parameters of a request, from its JSON (header).
fn facts(request: &Request) -> Result<RequestFacts, InferenceError> {
    let json = &request.body[..request.json_len.unwrap_or(request.body.len()).min(request.body.len())];
    let head: Head = serde_json::from_slice(json).map_err(|e| InferenceError::BadRequest(e.to_string()))?;
    let shapes = head.inputs.into_iter().map(|i| (i.name, i.shape)).collect();
    let parameters = head
        .parameters
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect();
    Ok(RequestFacts { shapes, parameters })
}
