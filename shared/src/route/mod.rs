//! The router, a package kind of its own: static rules an author writes in TOML and the hub signs as canonical
//! CBOR — per route name, an ordered list of candidate capabilities (specialist first, fallback last), each with a
//! niche (input shapes, a cost tier the client asks for, named request parameters) its contract must cover.
//!
//! [`Router::check`] is what the hub runs before publishing one: every candidate's capability is served by some
//! channel and its contract covers its niche, and every route ends in a fallback with no niche whose contract
//! covers the whole route contract, so whatever request the route accepts, some candidate is meant to answer it.
//! [`select`] (sans-IO) orders the candidates for one request; [`breaker`] trips a failing or slow candidate;
//! [`quality`] counts what each route served.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::capability::{ContractMismatch, contract_fits};
use crate::config::{self, ConfigError};
use crate::manifest::{Contract, Dim};

pub mod breaker;
pub mod quality;
pub mod select;

/// Largest router TOML read.
pub const MAX_ROUTER_TOML_BYTES: usize = 256 * 1024;
/// Most routes in one router.
pub const MAX_ROUTES: usize = 64;
/// Most candidates on one route.
pub const MAX_CANDIDATES: usize = 16;
/// The request parameter a client names its cost tier with.
pub const COST_TIER_PARAMETER: &str = "cost_tier";

/// A router: its package identity and its routes. Versioned on its own line (`version`), apart from models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// Package name (`name@version` like any package).
    pub name: String,
    /// Semantic version of the rules.
    pub version: String,
    /// The routes, by the name clients address (`/v2/models/{route}/infer`).
    #[serde(rename = "route")]
    pub routes: Vec<Route>,
}

/// One route: what a client may send to it, and who answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The name clients address; never a model's name on the same device.
    pub name: String,
    /// What requests to the route may be: the fallback's contract must cover it whole.
    pub contract: Contract,
    /// Candidates in order: specialists first, the fallback last.
    #[serde(rename = "candidate")]
    pub candidates: Vec<Candidate>,
}

/// One candidate of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// The capability whose installed package answers.
    pub capability: String,
    /// The requests it is for; none for the fallback.
    #[serde(default, skip_serializing_if = "Niche::is_empty")]
    pub niche: Niche,
    /// Answers slower than this count as failures for its circuit breaker (`None`: only errors trip it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms: Option<u64>,
}

/// Conditions on a request, all of which must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Niche {
    /// Per input, the shape a request's tensor must have (fixed sizes; a symbol matches any size).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shapes: BTreeMap<String, Vec<Dim>>,
    /// The cost tier the client must ask for (request parameter [`COST_TIER_PARAMETER`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_tier: Option<String>,
    /// Request parameters that must have these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
}

impl Niche {
    /// No condition: every request the route accepts.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty() && self.cost_tier.is_none() && self.parameters.is_empty()
    }
}

/// Why the hub refuses a router.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The rules name no route.
    #[error("the router has no route")]
    NoRoutes,
    /// More routes or candidates than the bounds.
    #[error("{what}: {count}, more than the limit of {limit}")]
    TooMany {
        /// Routes, or a route's candidates.
        what: String,
        /// How many.
        count: usize,
        /// The bound.
        limit: usize,
    },
    /// Two routes share a name.
    #[error("route `{0}` is defined twice")]
    DuplicateRoute(String),
    /// A route's last candidate has a niche, or there is no candidate at all.
    #[error("route `{route}` has no fallback: its last candidate must have no niche{}", last.as_ref().map(|c| format!(" (`{c}` has one)")).unwrap_or_default())]
    NoFallback {
        /// The route.
        route: String,
        /// Its last candidate, if any.
        last: Option<String>,
    },
    /// The fallback's contract does not cover the route's.
    #[error("route `{route}`: the fallback `{capability}` does not cover the route contract: {mismatch}")]
    FallbackDoesNotCover {
        /// The route.
        route: String,
        /// The fallback's capability.
        capability: String,
        /// How its contract falls short.
        mismatch: Box<ContractMismatch>,
    },
    /// A candidate's contract does not cover its niche.
    #[error("route `{route}`: `{capability}` does not cover its niche: {mismatch}")]
    NicheNotCovered {
        /// The route.
        route: String,
        /// The candidate's capability.
        capability: String,
        /// How its contract falls short.
        mismatch: Box<ContractMismatch>,
    },
    /// A niche names an input the route contract does not have, or gives it another rank.
    #[error("route `{route}`: `{capability}`'s niche shape for `{input}` is not one of the route contract's inputs")]
    NicheShape {
        /// The route.
        route: String,
        /// The candidate's capability.
        capability: String,
        /// The input.
        input: String,
    },
    /// A candidate names a capability no channel serves (unregistered, or nothing of it published).
    #[error("route `{route}` names capability `{capability}`, which no channel serves")]
    UnservedCapability {
        /// The route.
        route: String,
        /// The capability.
        capability: String,
    },
}

impl Router {
    /// Parses a router TOML (`path` names the file in errors) and checks what needs no hub.
    pub fn from_toml(text: &str, path: &Path) -> Result<Router, ConfigError> {
        let router: Router = config::parse_validated(text, path, MAX_ROUTER_TOML_BYTES, |r: &Router| {
            r.check_shape().map_err(|e| ("route".to_owned(), e.to_string()))
        })?;
        Ok(router)
    }

    /// The signed form: canonical CBOR.
    pub fn to_cbor(&self) -> Result<Vec<u8>, canonical::CanonicalError> {
        canonical::to_vec(self)
    }

    /// Decodes the signed form and checks its shape.
    pub fn from_cbor(bytes: &[u8]) -> Result<Router, String> {
        let router: Router = canonical::from_slice_exact(bytes).map_err(|e| e.to_string())?;
        router.check_shape().map_err(|e| e.to_string())?;
        Ok(router)
    }

    /// The route named `name`.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// Bounds, unique names, a fallback with no niche last on every route, niches on the route's inputs.
    pub fn check_shape(&self) -> Result<(), RouterError> {
        if self.routes.is_empty() {
            return Err(RouterError::NoRoutes);
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(RouterError::TooMany { what: "routes".into(), count: self.routes.len(), limit: MAX_ROUTES });
        }
        for (i, route) in self.routes.iter().enumerate() {
            if self.routes[..i].iter().any(|r| r.name == route.name) {
                return Err(RouterError::DuplicateRoute(route.name.clone()));
            }
            if route.candidates.len() > MAX_CANDIDATES {
                return Err(RouterError::TooMany {
                    what: format!("route `{}`'s candidates", route.name),
                    count: route.candidates.len(),
                    limit: MAX_CANDIDATES,
                });
            }
            match route.candidates.last() {
                Some(last) if last.niche.is_empty() => {}
                last => {
                    return Err(RouterError::NoFallback {
                        route: route.name.clone(),
                        last: last.map(|c| c.capability.clone()),
                    });
                }
            }
            for c in &route.candidates {
                route.niche_contract(c)?;
            }
        }
        Ok(())
    }

    /// Everything the hub checks before it publishes the router: [`check_shape`](Router::check_shape), and for
    /// each candidate that `served(capability)` returns the contract of a capability some channel serves, which
    /// covers the candidate's niche (the fallback's: the whole route contract).
    pub fn check(&self, served: impl Fn(&str) -> Option<Contract>) -> Result<(), RouterError> {
        self.check_shape()?;
        for route in &self.routes {
            for (i, c) in route.candidates.iter().enumerate() {
                let Some(contract) = served(&c.capability) else {
                    return Err(RouterError::UnservedCapability {
                        route: route.name.clone(),
                        capability: c.capability.clone(),
                    });
                };
                let required = route.niche_contract(c)?;
                if let Err(mismatch) = contract_fits(&required, &contract) {
                    let mismatch = Box::new(mismatch);
                    let fallback = i + 1 == route.candidates.len();
                    let (route, capability) = (route.name.clone(), c.capability.clone());
                    return Err(match fallback {
                        true => RouterError::FallbackDoesNotCover { route, capability, mismatch },
                        false => RouterError::NicheNotCovered { route, capability, mismatch },
                    });
                }
            }
        }
        Ok(())
    }

    /// Every capability the router names, once.
    pub fn capabilities(&self) -> Vec<&str> {
        let mut out: Vec<&str> =
            self.routes.iter().flat_map(|r| r.candidates.iter().map(|c| c.capability.as_str())).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Route {
    /// The contract the candidate must cover: the route's, with its niche's shapes in place of the inputs'.
    pub fn niche_contract(&self, c: &Candidate) -> Result<Contract, RouterError> {
        let mut contract = self.contract.clone();
        for (input, shape) in &c.niche.shapes {
            let spec = contract.inputs.iter_mut().find(|s| s.name == *input && s.shape.len() == shape.len());
            let Some(spec) = spec else {
                return Err(RouterError::NicheShape {
                    route: self.name.clone(),
                    capability: c.capability.clone(),
                    input: input.clone(),
                });
            };
            spec.shape = shape.clone();
        }
        Ok(contract)
    }
}
