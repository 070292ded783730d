//! The Open Inference Protocol v2 REST routes over a [`ModelHandle`]: admission (running and queued bounds),
//! body limits, and where tract runs (in place or on the blocking pool). The codec is `outpost_shared::oip`.
//!
//! A slow client holds only what it cannot avoid holding: its connection (capped), and the body bytes it declared
//! (a budget shared by all requests) for at most the body timeout; a running slot is taken only once the whole
//! body is in memory, and a request head must arrive within the header timeout. A body's tensors are bounded by
//! the model's contract before they are decoded ([`ServeLimits::max_dynamic_elements`]).
//!
//! With a [`BearerToken`] (`[inference] token_file`), every route but the two health probes answers 401 to a
//! request without `Authorization: Bearer <token>`; the token is compared in constant time (as SHA-256 digests).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_shared::Digest;
use outpost_shared::manifest::{Dim, TensorSpec};
use outpost_shared::oip::{
    DEFAULT_MAX_DYNAMIC_ELEMENTS, Encoded, INFERENCE_HEADER_CONTENT_LENGTH, RequestLimits, oip_name,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;
use tokio::time::Duration;

use super::InferenceError;
use super::handle::{ModelHandle, Served};
use super::routes::Routes;

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
/// Connections the API serves at once by default; further ones wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How long a client has by default to send a request's head (and an idle keep-alive connection stays open).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has by default to send a request's body, from the end of its head.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Body bytes all requests may hold in memory at once by default, while they are read and until their inference
/// ends: the memory the running inferences held when the body was read only once a slot was free.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: usize = DEFAULT_MAX_BODY_BYTES * DEFAULT_MAX_CONCURRENT_INFERENCES;
/// `platform` in model metadata.
pub const PLATFORM: &str = "onnx-tract";
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
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Longest wait for a request's head (and longest an idle keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Longest wait for a request's body, once its head is in; beyond it, 408.
    pub body_timeout: Duration,
    /// Body bytes all requests hold at once (each reserves its declared length, or `max_body_bytes` when it
    /// declares none, before reading it); a request waits for room.
    pub max_buffered_body_bytes: usize,
    /// Most elements of one input tensor whose contract shape has a symbolic dimension (a fixed shape bounds its
    /// tensor exactly); a request declaring more, or sending more data than its shape, is a 400 before its data is
    /// decoded (`outpost_shared::oip::RequestLimits`).
    pub max_dynamic_elements: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_concurrent_inferences: DEFAULT_MAX_CONCURRENT_INFERENCES,
            max_queued_inferences: DEFAULT_MAX_QUEUED_INFERENCES,
            in_place_below: DEFAULT_IN_PLACE_BELOW,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
            max_dynamic_elements: DEFAULT_MAX_DYNAMIC_ELEMENTS,
        }
    }
}

/// The credential the API requires when other local processes are not trusted (`[inference] token_file`): a
/// caller sends `Authorization: Bearer <token>`. Held as its SHA-256 and compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Digest);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Why a bearer token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error("reading the inference token file {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The token is empty, or holds characters a bearer token cannot (RFC 6750 `b64token`: letters, digits and
    /// `-._~+/`, then `=` padding), so no client could send it.
    #[error("{what}: a bearer token is 16 or more of A-Z, a-z, 0-9, `-._~+/` (then `=` padding)")]
    Invalid {
        /// Where the token came from.
        what: String,
    },
}

/// Shortest token accepted: guessing it must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

impl BearerToken {
    /// The token `text` (surrounding whitespace, such as a file's final newline, is not part of it); `what` names
    /// its source in errors.
    pub fn new(text: &str, what: &str) -> Result<BearerToken, TokenError> {
        let token = text.trim();
        let body = token.trim_end_matches('=');
        let b64 = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
        if body.len() < MIN_TOKEN_LEN || !body.chars().all(b64) {
            return Err(TokenError::Invalid { what: what.to_owned() });
        }
        Ok(BearerToken(Digest::of(token.as_bytes())))
    }

    /// The token in `path`.
    pub fn load(path: &std::path::Path) -> Result<BearerToken, TokenError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.to_owned(), source })?;
        BearerToken::new(&text, &path.display().to_string())
    }

    /// Whether `presented` is the token: every byte of the two digests is compared, whatever differs first.
    fn admits(&self, presented: &str) -> bool {
        let presented = Digest::of(presented.as_bytes());
        let (a, b) = (&self.0.0, &presented.0);
        std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
    }
}

/// Refuses a request without the bearer token: 401 with `WWW-Authenticate: Bearer` (RFC 6750), naming the error
/// when a token was sent but is not this one.
async fn require_token(State(token): State<Arc<BearerToken>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let (challenge, message) = match presented {
        Some(t) if token.admits(t) => return next.run(request).await,
        Some(_) => (
            r#"Bearer realm="outpost-agent", error="invalid_token""#,
            "the bearer token is not this agent's (`[inference] token_file`)",
        ),
        None => {
            (r#"Bearer realm="outpost-agent""#, "this agent's inference API requires `Authorization: Bearer <token>`")
        }
    };
    let mut response = error_response(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    response
}
/// The OIP v2 routes over `handle`, bounded by `limits`; with a `token`, every route but the health probes
/// requires it (the probes say only whether a model is active, and supervisors poll them without secrets).
pub fn router(handle: Arc<ModelHandle>, limits: ServeLimits, token: Option<BearerToken>) -> Router {
    router_with_routes(handle, None, limits, token)
}

/// [`router`], also serving the models and routes of `routes`: `/v2/models/{route}/infer` answers through a
/// route of its installed router, and a model name of any of its capabilities addresses that model directly.
pub fn router_with_routes(
    handle: Arc<ModelHandle>,
    routes: Option<Arc<Routes>>,
    limits: ServeLimits,
    token: Option<BearerToken>,
) -> Router {
    let running = limits.max_concurrent_inferences.max(1);
    let app = Arc::new(App {
        handle,
        routes,
        limits,
        running: Arc::new(Semaphore::new(running)),
        admitted: Arc::new(Semaphore::new(running.saturating_add(limits.max_queued_inferences))),
        buffered: Arc::new(Semaphore::new(buffer_budget(&limits))),
    });
    let api = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata_version))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready_version))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .route("/metrics", get(metrics));
    let api = match token {
        Some(token) => api.route_layer(axum::middleware::from_fn_with_state(Arc::new(token), require_token)),
        None => api,
    };
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .merge(api)
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(app)
}

/// Where the API listens: a TCP address, or a Unix socket for clients on the device (no TCP stack in the way).
#[derive(Debug)]
pub enum Listener {
    /// TCP (the config's `inference.bind`).
    Tcp(TcpListener),
    /// A Unix socket (the config's `inference.socket`).
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

/// Binds the API's Unix socket at `path`, readable and writable by the agent's user and group (mode 0660): a
/// socket left by an earlier run is replaced; anything else at `path` is an error, not deleted.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// An accepted connection of either kind.
enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, _) = l.accept().await?;
                // Requests and answers are small writes a client waits for: Nagle's algorithm would only delay them.
                let _ = tcp.set_nodelay(true);
                Ok(Accepted::Tcp(tcp))
            }
            Listener::Unix(l) => Ok(Accepted::Unix(l.accept().await?.0)),
        }
    }
}

/// Serves the API on `listener` (TCP or a Unix socket) until `shutdown` resolves, then lets running requests
/// finish. The caller binds the listener (the agent uses its config's `inference.bind`, by default
/// [`DEFAULT_LISTEN`], and `inference.socket` if set). At most [`ServeLimits::max_connections`] connections are
/// served at once, each with hyper's header read timeout. With a `token`, requests must present it ([`router`]).
pub async fn serve(
    listener: impl Into<Listener>,
    handle: Arc<ModelHandle>,
    limits: ServeLimits,
    token: Option<BearerToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app(listener.into(), router(handle, limits, token), limits, shutdown).await
}

/// [`serve`], with the models and routes of `routes` too ([`router_with_routes`]).
pub async fn serve_with_routes(
    listener: impl Into<Listener>,
    handle: Arc<ModelHandle>,
    routes: Arc<Routes>,
    limits: ServeLimits,
    token: Option<BearerToken>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app(listener.into(), router_with_routes(handle, Some(routes), limits, token), limits, shutdown).await
}

async fn serve_app(
    listener: Listener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A connection slot first: past the cap, connections wait in the kernel's listen backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: pause rather than spin.
                Err(_) => {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let (app, closed, header_timeout) = (app.clone(), closed.clone(), limits.header_timeout);
        tasks.spawn(async move {
            let _permit = permit;
            match accepted {
                Accepted::Tcp(io) => connection(io, app, header_timeout, closed).await,
                Accepted::Unix(io) => connection(io, app, header_timeout, closed).await,
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    let _ = closing.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Serves one connection (HTTP/1.1, keep-alive) until it closes, or gracefully once `closed` changes.
async fn connection<I>(io: I, app: Router, header_timeout: Duration, mut closed: tokio::sync::watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closed.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The body bytes budget as semaphore permits (a request reserves at most all of them, in one `u32`).
fn buffer_budget(limits: &ServeLimits) -> usize {
    limits.max_buffered_body_bytes.clamp(1, u32::MAX as usize)
}

/// How long the accept loop pauses after a failed accept.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

struct App {
    handle: Arc<ModelHandle>,
    /// Further capabilities' models and the router's routes, if any.
    routes: Option<Arc<Routes>>,
    limits: ServeLimits,
    /// One permit per running inference.
    running: Arc<Semaphore>,
    /// One permit per running or waiting inference.
    admitted: Arc<Semaphore>,
    /// One permit per body byte held in memory.
    buffered: Arc<Semaphore>,
}

type AppState = State<Arc<App>>;

pub(super) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The active model if it is `name` (and `version`, when given).
fn select(app: &App, name: &str, version: Option<&str>) -> Result<Arc<Served>, InferenceError> {
    select_handle(app, name, version).map(|(_, served)| served)
}

/// The model `name` (and `version`, when given) with the handle it serves from: the primary handle's, else the
/// active model of another capability of the same name.
fn select_handle(
    app: &App,
    name: &str,
    version: Option<&str>,
) -> Result<(Arc<ModelHandle>, Arc<Served>), InferenceError> {
    let other = app.routes.as_ref().and_then(|r| r.model_named(name));
    let (handle, served) = match (app.handle.current(), other) {
        (Some(s), _) if s.name() == name => (app.handle.clone(), s),
        (_, Some(found)) => found,
        (current, None) => (app.handle.clone(), current.ok_or(InferenceError::NotReady)?),
    };
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
    Ok((handle, served))
}

async fn metrics(State(app): AppState, headers: axum::http::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = outpost_shared::metrics::Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        crate::metrics::exposition(&app.handle, app.routes.as_deref(), format),
    )
        .into_response()
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
    // The model (or the route's rules) is fixed here, on arrival: a swap from now on does not concern this request.
    let route = match (version, &app.routes) {
        (None, Some(routes)) => routes.route(name).map(|r| (routes.clone(), r)),
        _ => None,
    };
    let target = match route {
        Some(route) => Err(route),
        None => Ok(select_handle(app, name, version)?),
    };
    let limit = app.limits.max_body_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(InferenceError::TooLarge(limit));
    }
    let json_len = json_header_len(headers)?;
    let _admitted =
        app.admitted.clone().try_acquire_owned().map_err(|_| InferenceError::Busy(app.limits.max_queued_inferences))?;
    // The body is read before a running slot is taken, so a slow client never holds one; the bytes it may send
    // are reserved from the shared budget first, which bounds memory.
    let reserve =
        declared.map_or(limit, |n| usize::try_from(n).unwrap_or(usize::MAX)).clamp(1, buffer_budget(&app.limits));
    let reserve = u32::try_from(reserve).map_err(|e| InferenceError::Internal(e.to_string()))?;
    let buffered =
        app.buffered.clone().acquire_many_owned(reserve).await.map_err(|e| InferenceError::Internal(e.to_string()))?;
    let bytes = tokio::time::timeout(app.limits.body_timeout, read_body(body, limit, declared))
        .await
        .map_err(|_| InferenceError::BodyTimeout(app.limits.body_timeout))??;
    let running = app.running.clone().acquire_owned().await.map_err(|e| InferenceError::Internal(e.to_string()))?;
    let limits = RequestLimits { max_dynamic_elements: app.limits.max_dynamic_elements };
    let request = super::handle::Request { body: bytes, json_len, limits };
    match target {
        Ok((handle, served)) => {
            let in_place = served.last_inference() < app.limits.in_place_below;
            run_blocking(in_place, move || {
                let (_running, _buffered) = (running, buffered);
                handle.answer(&served, request)
            })
            .await?
        }
        // Routed: the candidate is chosen once the body is in; on the blocking pool, as which model answers
        // (and how fast) is not known yet.
        Err((routes, (router, index))) => {
            run_blocking(false, move || {
                let (_running, _buffered) = (running, buffered);
                routes.answer(&router, index, &request)
            })
            .await?
        }
    }
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
