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
//! Status codes: 400 for a malformed request or tensors that do not fit the contract (more elements than it
//! allows included, refused before they are decoded), 401 without the bearer token when one is configured (every
//! route but `/v2/health/live` and `/v2/health/ready`), 404 for another model or
//! version than the active one, 408 for a body not received within [`ServeLimits::body_timeout`], 413 for a body
//! over [`ServeLimits::max_body_bytes`], 500 when the model fails on a request that fits its contract, 503 when no
//! model is active or [`ServeLimits::max_queued_inferences`] requests are already waiting. Non-finite inputs (NaN,
//! infinities, JSON numbers beyond FP32's range) are a 400: they are the caller's fault, never the model's; unless
//! the contract allows them on that input (`allow_non_finite`): then the request is served, and an answer whose
//! non-finite values they caused counts neither for nor against the model (health window, rollout errors).

//!
//! Four parts: [`handle`] (the served models: load, swap, shadow, counters), [`http`] (the routes, limits,
//! admission and the optional bearer token), [`outcomes`] (the bounded queue of outcomes to the update loop) and
//! the wire format, `outpost_shared::oip` (the codec, fuzzed on its own).

pub mod handle;
pub mod http;
pub mod outcomes;
pub mod routes;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outpost_shared::model::ModelError;
pub use outpost_shared::oip::{
    BadRequest, INFERENCE_HEADER_CONTENT_LENGTH, ParsedRequest, from_oip_name, oip_name, parse_request,
};

pub use handle::{InferenceObserver, InferenceStats, LoadError, ModelHandle, Served, ShadowStats, infer_once};
pub use http::{
    BearerToken, DEFAULT_BODY_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IN_PLACE_BELOW, DEFAULT_LISTEN,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_BUFFERED_BODY_BYTES, DEFAULT_MAX_CONCURRENT_INFERENCES,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_QUEUED_INFERENCES, Listener, MIN_TOKEN_LEN, PLATFORM, ServeLimits, TokenError,
    bind_unix, router, router_with_routes, serve, serve_with_routes,
};
pub use outcomes::{DEFAULT_OUTCOME_CAPACITY, Outcome, OutcomeReceiver, OutcomeSender};
pub use routes::Routes;

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
    /// No candidate of the route could answer the request: each candidate's reason.
    #[error("route `{route}`: no candidate can answer ({reasons})")]
    NoCandidate {
        /// The route.
        route: String,
        /// `capability: reason`, per candidate.
        reasons: String,
    },
    /// Too many requests are already waiting.
    #[error("busy: {0} inference requests are already waiting")]
    Busy(usize),
    /// The request body is over the limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The request body did not arrive within the body timeout.
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
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
            InferenceError::NotReady | InferenceError::Busy(_) | InferenceError::NoCandidate { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            InferenceError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            InferenceError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// Whether this is the model's failure (counts against it in the health window), not the caller's.
    pub fn is_model_failure(&self) -> bool {
        matches!(self, InferenceError::Model(e) if !matches!(e, ModelError::BadInput { .. }))
    }
}

impl IntoResponse for InferenceError {
    fn into_response(self) -> Response {
        http::error_response(self.status(), &self.to_string())
    }
}

impl From<BadRequest> for InferenceError {
    fn from(e: BadRequest) -> Self {
        InferenceError::BadRequest(e.0)
    }
}
