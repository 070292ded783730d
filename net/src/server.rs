//! The QUIC service the hub and the site node both run: a thin tokio + quinn driver around the sans-IO protocol
//! (`outpost_shared::wire`) and the per-connection admission and attestation rules ([`crate::session`]).
//!
//! One request per bidirectional stream. Devices are identified by their raw Ed25519 key (TLS 1.3, RFC 7250,
//! [`crate::tls`]) and checked against the [`Backend`]'s allow-list right after the handshake. A bad request gets a
//! typed `Error` response, then the stream's receive side is stopped (the peer's send side is reset); other
//! streams and connections carry on. Every wait on the peer is bounded by a timeout, and streams per connection
//! and connections per server are capped.
//!
//! Attestation: unless the backend says attestation is not required, every request but `GetChallenge`,
//! `PostEvidence` and `Enroll` is answered `NotAttested` until the connection holds a result that is still current
//! and whose device the backend still accepts (asked before every request, so a revocation cuts an attested
//! connection off at its next request). An unknown key may stay connected only while the backend has enrolment
//! tokens open, and only to send `Enroll`. An attested site node may relay its devices' attestation
//! (`GetChallenge`/`PostEvidence` with a device): the backend appraises the device's evidence against the exporter
//! of the device's own connection to the site node, which enforces the result.

use std::future::Future;
use std::io::SeekFrom;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_attestation::evidence::{EXPORTER_CONTEXT, EXPORTER_LABEL, EXPORTER_LEN};
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_attestation::{AttestationResult, Challenge, Status, Tier};
use outpost_shared::wire::{
    self, AttestedStatus, AttestedTier, ErrorCode, Limits, Relay, Request, RequestReader, Response, WireError, codes,
};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::Semaphore;
use tokio::time::timeout;

pub use crate::session::{MAX_RELAYED_CHALLENGES, Submitted, Unattested};
use crate::session::{Route, Session};
use crate::tls::TlsError;

/// A backend failure. Logged by the server; the device only learns "internal error".
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the service serves: the hub over its TUF repository, director and stores; a site node over its upstream
/// connection to the hub and its cache.
///
/// Every call is async and gets its own handle on the backend (`self: Arc<Self>`), so an implementation that
/// blocks on disk or a database moves that work to tokio's blocking pool itself, and one that waits on the network
/// (a site node asking its hub) just awaits. A call that panics ends only its own stream.
pub trait Backend: Send + Sync + 'static {
    /// Whether the device with this Ed25519 key may connect (enrolled and not revoked).
    fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> impl Future<Output = bool> + Send;
    /// A TUF metadata file by name (`timestamp.json`, `3.root.json`...); `None` if there is none. Update checks
    /// are the service's hottest path: serve from memory when the copy is fresh.
    fn metadata(self: Arc<Self>, name: String) -> impl Future<Output = Result<Option<Vec<u8>>, BackendError>> + Send;
    /// The director's signed assignment for a device; `None` if it has none.
    fn assignment(
        self: Arc<Self>,
        device: [u8; 32],
    ) -> impl Future<Output = Result<Option<Vec<u8>>, BackendError>> + Send;
    /// A target by repository path: the file holding its bytes and its length; `None` if unknown.
    fn target(
        self: Arc<Self>,
        path: String,
    ) -> impl Future<Output = Result<Option<(PathBuf, u64)>, BackendError>> + Send;
    /// Stores a device's report; return only once it is durable (the device drops it on `Ack`).
    fn report(
        self: Arc<Self>,
        device: [u8; 32],
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// Stores a device's telemetry batch durably; returns the sequence number stored up to (the device drops
    /// its events up to it). The default refuses: a backend that keeps no telemetry.
    fn telemetry(
        self: Arc<Self>,
        _device: [u8; 32],
        _batch: Vec<u8>,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send {
        async { Err::<u64, BackendError>(Box::new(Refused("this service keeps no telemetry".into()))) }
    }
    /// Whether the peer `node` (a site node) may fetch assignments and forward reports for `device`.
    fn acts_for(self: Arc<Self>, _node: [u8; 32], _device: [u8; 32]) -> impl Future<Output = bool> + Send {
        async { false }
    }
    /// Whether a connection must attest before it is served anything (answered from memory). Default: yes, and the
    /// default methods below attest nobody, so a backend that does not implement attestation serves nothing (fail
    /// closed).
    fn attestation_required(&self) -> bool {
        true
    }
    /// A fresh single-use challenge for a connection of `device`. `Err` when the backend cannot attest anybody
    /// now (no reference values, too many challenges held).
    fn challenge(self: Arc<Self>, _device: PublicKey) -> impl Future<Output = Result<Challenge, Unattested>> + Send {
        async { Err(Unattested("this service cannot appraise evidence".into())) }
    }
    /// A fresh challenge for `device` asked by the site node `node` on its behalf: it should count against the
    /// node's share as well as the device's, so one site node cannot fill the store. Default: as
    /// [`Backend::challenge`].
    fn relayed_challenge(
        self: Arc<Self>,
        _node: PublicKey,
        device: PublicKey,
    ) -> impl Future<Output = Result<Challenge, Unattested>> + Send {
        self.challenge(device)
    }
    /// Appraises evidence presented on a connection.
    fn appraise(
        self: Arc<Self>,
        _evidence: Submitted,
    ) -> impl Future<Output = Result<AttestationResult, Unattested>> + Send {
        async { Err(Unattested("this service cannot appraise evidence".into())) }
    }
    /// Whether a connection's result still lets it be served: current, and its device not revoked since. Called
    /// before every gated request: answer from memory when possible.
    fn still_attested(
        self: Arc<Self>,
        _result: AttestationResult,
    ) -> impl Future<Output = Result<(), Unattested>> + Send {
        async { Err(Unattested("this service cannot appraise evidence".into())) }
    }
    /// Whether an unknown key may stay connected to present an enrolment token (some token is open).
    fn enrolment_open(self: Arc<Self>) -> impl Future<Output = bool> + Send {
        async { false }
    }
    /// Enrols `device` with a one-time token; a refusal should be a [`Refused`].
    fn enroll(
        self: Arc<Self>,
        _device: [u8; 32],
        _token: String,
        _hardware: String,
        _tpm: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send {
        async { Err::<(), BackendError>(Box::new(Refused("enrolment is not available here".into()))) }
    }
}

/// A deliberate refusal a backend returns (wrapped in [`BackendError`]): the peer gets `Forbidden` with this
/// message, rather than the opaque "internal error".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The service's settings. Every bound has a conservative default; [`ServeConfig::new`] sets them.
#[derive(Debug)]
pub struct ServeConfig {
    /// UDP address to listen on. Port 0 picks a free port (see [`Server::local_addr`]).
    pub bind: SocketAddr,
    /// The hub's identity, whose public key agents pin.
    pub identity: Identity,
    /// Frame size limits.
    pub limits: Limits,
    /// Most bidirectional streams (requests) a connection may have open at once.
    pub max_streams_per_connection: u32,
    /// Most connections served at once; further ones are refused. A slot is taken only once the handshake is
    /// done, so peers that never finish one hold none.
    pub max_connections: usize,
    /// Most handshakes in progress at once, from every source together; further ones are refused.
    pub max_handshakes: usize,
    /// Most handshakes in progress at once from one IP address (devices behind one NAT share it), so one source
    /// cannot take every handshake slot.
    pub max_handshakes_per_source: usize,
    /// A handshake not done within this is dropped.
    pub handshake_timeout: Duration,
    /// A connection silent for this long is closed (QUIC idle timeout).
    pub idle_timeout: Duration,
    /// Longest the hub waits for a request to arrive whole, and for each write of a response to make progress.
    pub stall_timeout: Duration,
    /// How often a live connection's device is checked against the allow-list again, so a revoked device is
    /// cut off without waiting for it to reconnect.
    pub recheck_interval: Duration,
    /// Most attestation challenges one connection may ask for. Each is held by the verifier until it expires; the
    /// verifier also bounds those held per device key, which a device opening many connections cannot reset.
    pub max_challenges_per_connection: u32,
}

impl ServeConfig {
    /// Default UDP port, on all IPv4 interfaces.
    pub const DEFAULT_PORT: u16 = 7443;
    /// Default concurrent requests per connection.
    pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 8;
    /// Default concurrent connections.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    /// Default handshakes in progress.
    pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
    /// Default handshakes in progress per source address.
    pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 32;
    /// Default handshake timeout.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default stall timeout.
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default allow-list recheck interval.
    pub const DEFAULT_RECHECK_INTERVAL: Duration = Duration::from_secs(60);
    /// Default challenges per connection (an agent needs one, and one more per renewal it does not make on a new
    /// connection).
    pub const DEFAULT_MAX_CHALLENGES_PER_CONNECTION: u32 = 4;

    /// Defaults for everything but the identity.
    pub fn new(identity: Identity) -> Self {
        ServeConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], Self::DEFAULT_PORT)),
            identity,
            limits: Limits::default(),
            max_streams_per_connection: Self::DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_handshakes: Self::DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_source: Self::DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            stall_timeout: Self::DEFAULT_STALL_TIMEOUT,
            recheck_interval: Self::DEFAULT_RECHECK_INTERVAL,
            max_challenges_per_connection: Self::DEFAULT_MAX_CHALLENGES_PER_CONNECTION,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built from the identity.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A setting is out of range.
    #[error("serve config `{field}`: {reason}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A bound, not yet running, QUIC service.
pub struct Server<B: Backend> {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<B>>,
    connections: Arc<Semaphore>,
    handshakes: Arc<Handshakes>,
    handshake_timeout: Duration,
}

/// Handshakes in progress, in all and per source address.
struct Handshakes {
    max: usize,
    max_per_source: usize,
    by_source: Mutex<std::collections::HashMap<IpAddr, usize>>,
}

impl Handshakes {
    /// A slot for one handshake from `source`, or `None` when the server or that source has too many going.
    fn begin(self: &Arc<Self>, source: IpAddr) -> Option<Handshake> {
        let mut by_source = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = by_source.values().sum();
        let mine = by_source.get(&source).copied().unwrap_or(0);
        if total >= self.max || mine >= self.max_per_source {
            return None;
        }
        by_source.insert(source, mine + 1);
        Some(Handshake(self.clone(), source))
    }
}

/// One handshake slot, given back on drop.
struct Handshake(Arc<Handshakes>, IpAddr);

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut by_source = self.0.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_source.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.1);
            }
        }
    }
}

impl<B: Backend> std::fmt::Debug for Server<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("local_addr", &self.endpoint.local_addr().ok()).finish_non_exhaustive()
    }
}

/// What every connection and stream task needs.
struct Shared<B> {
    backend: Arc<B>,
    recheck_interval: Duration,
    max_challenges_per_connection: u32,
    live: Arc<LiveConnections>,
}

/// The frame limits and stall timeout every exchange uses, and the open connections by quinn's stable id (for pushed
/// notices).
struct LiveConnections {
    limits: Limits,
    stall_timeout: Duration,
    connections: Mutex<std::collections::HashMap<usize, Connection>>,
}

/// Pushes notices to every open connection (each on a unidirectional stream of its own).
#[derive(Clone)]
pub struct Notifier(Arc<LiveConnections>);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// Sends `notice` to every open connection without waiting for them; returns how many it went to. A device
    /// that misses it (not connected, stream lost) learns the same at its next check.
    pub fn broadcast(&self, notice: &Response) -> usize {
        let Ok(frame) = wire::encode_frame(notice, &self.0.limits) else { return 0 };
        let conns: Vec<Connection> =
            self.0.connections.lock().map(|l| l.values().cloned().collect()).unwrap_or_default();
        let stall = self.0.stall_timeout;
        for conn in &conns {
            let (conn, frame) = (conn.clone(), frame.clone());
            tokio::spawn(async move {
                let _ = timeout(stall, async {
                    let mut send = conn.open_uni().await.ok()?;
                    send.write_all(&frame).await.ok()?;
                    send.finish().ok()
                })
                .await;
            });
        }
        conns.len()
    }
}

/// Pushes a revocation [`Response::Notice`] to every open connection whenever `version` (read every `period` on
/// the blocking pool; `None` when unreadable) goes up. Runs until the task is dropped.
pub async fn push_revocations(
    notifier: Notifier,
    period: Duration,
    version: impl Fn() -> Option<u64> + Send + Sync + 'static,
) {
    let version = Arc::new(version);
    let mut last = None;
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let read = version.clone();
        let Ok(Some(now)) = tokio::task::spawn_blocking(move || read()).await else { continue };
        if last.is_some_and(|l| now > l) {
            let n = notifier.broadcast(&Response::Notice { revocations: now });
            tracing::info!(
                revocations = now,
                connections = n,
                "revocation list v{now}: notice pushed to {n} connection(s)"
            );
        }
        last = Some(last.map_or(now, |l: u64| l.max(now)));
    }
}

/// Takes a connection off the live list when its task ends.
struct Live(Arc<LiveConnections>, usize);

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.connections.lock() {
            l.remove(&self.1);
        }
    }
}

impl<B: Backend> Server<B> {
    /// Binds the UDP socket and prepares TLS and QUIC. Must be called inside a tokio runtime.
    pub fn bind(config: ServeConfig, backend: Arc<B>) -> Result<Server<B>, ServeError> {
        let bad = |field, reason: String| ServeError::Config { field, reason };
        if config.max_streams_per_connection == 0 {
            return Err(bad("max_streams_per_connection", "must be at least 1".into()));
        }
        if config.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1".into()));
        }
        if config.max_handshakes == 0 {
            return Err(bad("max_handshakes", "must be at least 1".into()));
        }
        if config.max_handshakes_per_source == 0 {
            return Err(bad("max_handshakes_per_source", "must be at least 1".into()));
        }
        if config.handshake_timeout.is_zero() {
            return Err(bad("handshake_timeout", "must be more than zero".into()));
        }
        if config.recheck_interval.is_zero() {
            return Err(bad("recheck_interval", "must be more than zero".into()));
        }
        let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
            .map_err(|_| bad("idle_timeout", format!("{:?} is too long", config.idle_timeout)))?;
        let tls = crate::tls::server_config(&config.identity)?;
        let crypto = QuicServerConfig::try_from(tls)
            .map_err(|e| bad("identity", format!("TLS config unusable for QUIC: {e}")))?;
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(outpost_shared::wire::MTU_DISCOVERY_UPPER_BOUND);
        let mut transport = quinn::TransportConfig::default();
        transport
            .mtu_discovery_config(Some(mtu))
            .send_window(32 * 1024 * 1024)
            .max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams_per_connection))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(idle));
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport));
        let socket =
            std::net::UdpSocket::bind(config.bind).map_err(|source| ServeError::Bind { addr: config.bind, source })?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::new(Arc::new(crate::tls::reset_key(&config.identity))),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| ServeError::Bind { addr: config.bind, source })?;
        let live = Arc::new(LiveConnections {
            limits: config.limits,
            stall_timeout: config.stall_timeout,
            connections: Mutex::new(std::collections::HashMap::new()),
        });
        Ok(Server {
            endpoint,
            shared: Arc::new(Shared {
                backend,
                recheck_interval: config.recheck_interval,
                max_challenges_per_connection: config.max_challenges_per_connection,
                live,
            }),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            handshakes: Arc::new(Handshakes {
                max: config.max_handshakes,
                max_per_source: config.max_handshakes_per_source,
                by_source: Mutex::new(std::collections::HashMap::new()),
            }),
            handshake_timeout: config.handshake_timeout,
        })
    }

    /// A handle that pushes notices to the connections this server has open.
    pub fn notifier(&self) -> Notifier {
        Notifier(self.shared.live.clone())
    }

    /// The address actually bound (with the port chosen when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` completes, then closes every connection and waits for them to go.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else { break };
            // Address validation first: a Retry costs the server no state, so a peer must show it receives at
            // its address before it gets a handshake slot (a spoofed or silent Initial holds nothing).
            if !incoming.remote_address_validated() {
                if incoming.may_retry() {
                    let _ = incoming.retry();
                } else {
                    incoming.refuse();
                }
                continue;
            }
            if self.connections.available_permits() == 0 {
                incoming.refuse();
                continue;
            }
            let Some(handshake) = self.handshakes.begin(incoming.remote_address().ip()) else {
                incoming.refuse();
                continue;
            };
            let (shared, connections, limit) = (self.shared.clone(), self.connections.clone(), self.handshake_timeout);
            // `conn` and `device` are filled in once the handshake names them.
            // `site` is the backend's to record once it knows the device (the hub does, from its record).
            let span = tracing::info_span!(
                "connection",
                conn = tracing::field::Empty,
                device = tracing::field::Empty,
                site = tracing::field::Empty,
                remote = %incoming.remote_address()
            );
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    // A failed handshake (wrong ALPN, no client key, a peer that goes quiet) ends here.
                    let handshake_done = timeout(limit, async { incoming.accept()?.await }).await;
                    drop(handshake);
                    let Ok(Ok(conn)) = handshake_done else { return };
                    // The connection slot is taken only now, so unfinished handshakes never hold one.
                    let Ok(permit) = connections.try_acquire_owned() else {
                        return close(&conn, codes::CLOSE_BUSY, "too many connections");
                    };
                    serve_connection(conn, shared).await;
                    drop(permit);
                },
                span,
            ));
        }
        self.endpoint.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"shutting down");
        self.endpoint.wait_idle().await;
    }
}

/// Bytes read from a target file per step of a download.
const TARGET_CHUNK: usize = 1024 * 1024;

/// Binds and serves until `shutdown` completes.
pub async fn serve<B: Backend>(
    config: ServeConfig,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::bind(config, backend)?.run(shutdown).await;
    Ok(())
}

/// The device key a connection authenticated with, if it is a raw Ed25519 key.
pub fn peer_key(conn: &Connection) -> Option<PublicKey> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    crate::tls::peer_key(&certs)
}

fn close(conn: &Connection, code: u32, reason: &str) {
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

async fn serve_connection<B: Backend>(conn: Connection, shared: Arc<Shared<B>>) {
    let Some(device) = peer_key(&conn) else {
        close(&conn, codes::CLOSE_BAD_IDENTITY, "no Ed25519 device key");
        return;
    };
    let span = tracing::Span::current();
    span.record("conn", conn.stable_id());
    span.record("device", crate::logging::short(&device.to_hex()));
    let admitted = shared.backend.clone().device_allowed(device.0).await;
    if !admitted && !shared.backend.clone().enrolment_open().await {
        tracing::info!("unknown device: connection closed");
        close(&conn, codes::CLOSE_UNKNOWN_DEVICE, "unknown device");
        return;
    }
    // Evidence is bound to this connection through its TLS exporter, which both ends compute.
    let mut exporter = [0u8; EXPORTER_LEN];
    if conn.export_keying_material(&mut exporter, EXPORTER_LABEL, EXPORTER_CONTEXT).is_err() {
        close(&conn, codes::CLOSE_BAD_IDENTITY, "no TLS exporter");
        return;
    }
    tracing::debug!(admitted, "device connected");
    let session = Session::new(device, exporter, admitted, shared.max_challenges_per_connection);
    let ctx = Arc::new(ConnState { session: Mutex::new(session), conn: conn.clone() });
    if let Ok(mut l) = shared.live.connections.lock() {
        l.insert(conn.stable_id(), conn.clone());
    }
    let _live = Live(shared.live.clone(), conn.stable_id());
    let period = shared.recheck_interval;
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            streams = conn.accept_bi() => match streams {
                // quinn's max_concurrent_bidi_streams bounds how many of these tasks a connection has at once.
                Ok((send, recv)) => drop(tokio::spawn(tracing::Instrument::in_current_span(
                    serve_stream(send, recv, ctx.clone(), shared.clone()),
                ))),
                Err(e) => {
                    tracing::debug!(reason = %e, "connection ended");
                    return;
                }
            },
            _ = recheck.tick() => {
                if !shared.backend.clone().device_allowed(device.0).await {
                    tracing::info!("device no longer allowed: connection closed");
                    close(&conn, codes::CLOSE_UNKNOWN_DEVICE, "device no longer allowed");
                    return;
                }
            }
        }
    }
}

/// One connection: its session (admission and attestation) and the connection itself.
struct ConnState {
    session: Mutex<Session>,
    conn: Connection,
}

impl ConnState {
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_attested(u: &Unattested) -> Response {
    Response::error(ErrorCode::NotAttested, u.to_string())
}

/// Whether this connection may be served a request that needs attestation; the `NotAttested` answer if not.
async fn gate<B: Backend>(ctx: &ConnState, shared: &Shared<B>) -> Result<(), Response> {
    if !shared.backend.attestation_required() {
        return Ok(());
    }
    let result = ctx.session().result().map_err(|u| not_attested(&u))?;
    shared.backend.clone().still_attested(result).await.map_err(|u| {
        // Fail closed for good: the connection must attest afresh (and a revoked device never will).
        ctx.session().drop_result();
        not_attested(&u)
    })
}

/// `GetChallenge`: a fresh challenge kept with the connection (it replaces an unanswered one).
async fn issue_challenge<B: Backend>(ctx: &ConnState, shared: &Shared<B>) -> Response {
    if !shared.backend.attestation_required() {
        return Response::NotFound;
    }
    if let Err(u) = ctx.session().begin_challenge() {
        return not_attested(&u);
    }
    let device = ctx.session().device();
    match shared.backend.clone().challenge(device).await {
        Ok(challenge) => {
            ctx.session().challenge_issued(challenge);
            Response::Challenge { nonce_challenge: challenge.0 }
        }
        Err(u) => not_attested(&u),
    }
}

/// `PostEvidence`: appraises against the connection's challenge (used up whatever the outcome) and keeps the
/// result; any earlier result is dropped first, so a failed appraisal leaves the connection unattested.
async fn appraise<B: Backend>(ctx: &ConnState, shared: &Shared<B>, evidence: Vec<u8>) -> Response {
    let submitted = match ctx.session().submit(evidence) {
        Ok(s) => s,
        Err(u) => return not_attested(&u),
    };
    match shared.backend.clone().appraise(submitted).await {
        Ok(result) => {
            let response = attested(&result);
            ctx.session().attested(result);
            response
        }
        Err(u) => not_attested(&u),
    }
}

fn attested(result: &AttestationResult) -> Response {
    Response::Attested {
        status: match result.status {
            Status::Affirming => AttestedStatus::Affirming,
            Status::Warning | Status::Contraindicated => AttestedStatus::Warning,
        },
        expires: result.expires,
        tier: match result.tier {
            Tier::Software => AttestedTier::Software,
            Tier::Hardware => AttestedTier::Hardware,
        },
    }
}

/// `GetChallenge` from an attested site node for one of its devices: a challenge kept with this connection for
/// that device (it replaces the device's unanswered one).
async fn relay_challenge<B: Backend>(ctx: &ConnState, shared: &Shared<B>, device: [u8; 32]) -> Response {
    let node = ctx.session().device();
    let device = match relaying_for(shared, node, device).await {
        Ok(d) => d,
        Err(refusal) => return refusal,
    };
    let challenge = match shared.backend.clone().relayed_challenge(node, device).await {
        Ok(c) => c,
        Err(u) => return not_attested(&u),
    };
    match ctx.session().hold_relayed(device.0, challenge) {
        Ok(()) => Response::Challenge { nonce_challenge: challenge.0 },
        Err(u) => not_attested(&u),
    }
}

/// `PostEvidence` from an attested site node: a device's evidence, appraised against the challenge relayed for
/// it (used up whatever the outcome) and the exporter of the device's own connection to the site node. The
/// result is the site node's to enforce; the hub records it on the device.
async fn appraise_relayed<B: Backend>(
    ctx: &ConnState,
    shared: &Shared<B>,
    evidence: Vec<u8>,
    relay: Relay,
) -> Response {
    let node = ctx.session().device();
    let submitted = ctx.session().submit_relayed(PublicKey(relay.device), evidence, relay);
    let submitted = match submitted {
        Ok(s) => s,
        Err(u) => return not_attested(&u),
    };
    if let Err(refusal) = relaying_for(shared, node, relay.device).await {
        return refusal;
    }
    match shared.backend.clone().appraise(submitted).await {
        Ok(result) => attested(&result),
        Err(u) => not_attested(&u),
    }
}

/// `Enroll`: an admitted key is answered `Ack` at once (a retry after a lost answer); an unknown one is approved
/// by the backend, or refused with `Forbidden`.
async fn enroll<B: Backend>(
    ctx: &ConnState,
    shared: &Shared<B>,
    token: String,
    hardware: String,
    tpm: Option<Vec<u8>>,
) -> Response {
    let (admitted, device) = {
        let session = ctx.session();
        (session.admitted(), session.device())
    };
    if admitted {
        return Response::Ack;
    }
    match shared.backend.clone().enroll(device.0, token, hardware, tpm).await {
        Ok(()) => {
            ctx.session().admit();
            Response::Ack
        }
        Err(e) => refusal(e),
    }
}

/// Why reading a request stopped.
enum ReadFailure {
    /// The peer broke the protocol: say so.
    Wire(WireError),
    /// The stream or connection went away: there is nobody to tell.
    Gone,
}

async fn read_request(recv: &mut RecvStream, limits: Limits) -> Result<Request, ReadFailure> {
    let mut reader = RequestReader::new(limits);
    loop {
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => {
                if let Some(request) = reader.push(&chunk.bytes).map_err(ReadFailure::Wire)? {
                    return Ok(request);
                }
            }
            Ok(None) => return Err(ReadFailure::Wire(reader.eof())),
            Err(_) => return Err(ReadFailure::Gone),
        }
    }
}

async fn serve_stream<B: Backend>(
    mut send: SendStream,
    mut recv: RecvStream,
    ctx: Arc<ConnState>,
    shared: Arc<Shared<B>>,
) {
    let request = match timeout(shared.live.stall_timeout, read_request(&mut recv, shared.live.limits)).await {
        Ok(Ok(request)) => request,
        Ok(Err(ReadFailure::Gone)) => return,
        Ok(Err(ReadFailure::Wire(e))) => {
            let _ = recv.stop(VarInt::from_u32(codes::STREAM_PROTOCOL));
            respond(&mut send, &e.to_response(), &shared).await;
            return;
        }
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(codes::STREAM_TIMEOUT));
            let message = format!("request not received within {:?}", shared.live.stall_timeout);
            respond(&mut send, &Response::error(ErrorCode::Timeout, message), &shared).await;
            return;
        }
    };
    // Nothing more is wanted from the peer on this stream.
    let _ = recv.stop(VarInt::from_u32(codes::STREAM_DONE));
    let route = ctx.session().route(request);
    if route.gated()
        && let Err(refusal) = gate(&ctx, &shared).await
    {
        return respond(&mut send, &refusal, &shared).await;
    }
    let response = match route {
        Route::Close => return close(&ctx.conn, codes::CLOSE_UNKNOWN_DEVICE, "unknown device"),
        Route::Enroll { token, hardware, tpm } => enroll(&ctx, &shared, token, hardware, tpm).await,
        Route::Challenge => issue_challenge(&ctx, &shared).await,
        Route::Evidence(evidence) => appraise(&ctx, &shared, evidence).await,
        Route::RelayedChallenge(device) => relay_challenge(&ctx, &shared, device).await,
        Route::RelayedEvidence(evidence, relay) => appraise_relayed(&ctx, &shared, evidence, relay).await,
        Route::Attested(request) => {
            let device = ctx.session().device();
            match serve_attested(request, &mut send, device, &shared).await {
                Some(response) => response,
                None => return,
            }
        }
    };
    respond(&mut send, &response, &shared).await;
}

/// Serves a request that needs an attested connection; `None` when the answer was streamed already (a target).
async fn serve_attested<B: Backend>(
    request: Request,
    send: &mut SendStream,
    device: PublicKey,
    shared: &Shared<B>,
) -> Option<Response> {
    let backend = shared.backend.clone();
    let response = match request {
        Request::GetMetadata { name, max_len } => match backend.metadata(name).await {
            Ok(Some(bytes)) if bytes.len() as u64 > max_len => Response::error(
                ErrorCode::TooLarge,
                format!("metadata is {} bytes, more than the {max_len} asked for", bytes.len()),
            ),
            Ok(Some(bytes)) => Response::Metadata { bytes },
            Ok(None) => Response::NotFound,
            Err(e) => refusal(e),
        },
        Request::GetAssignment { device: on_behalf } => match acting_for(shared, device, on_behalf).await {
            Ok(device) => match backend.assignment(device).await {
                Ok(Some(bytes)) => Response::Assignment { bytes },
                Ok(None) => Response::NotFound,
                Err(e) => refusal(e),
            },
            Err(refused) => refused,
        },
        Request::PostReport { body, device: on_behalf } => match acting_for(shared, device, on_behalf).await {
            Ok(device) => backend.report(device, body).await.map_or_else(refusal, |()| Response::Ack),
            Err(refused) => refused,
        },
        Request::PostTelemetry { body, device: on_behalf } => match acting_for(shared, device, on_behalf).await {
            Ok(device) => {
                backend.telemetry(device, body).await.map_or_else(refusal, |up_to| Response::TelemetryAck { up_to })
            }
            Err(refused) => refused,
        },
        Request::GetTarget { path, offset, len } => match backend.target(path).await {
            Ok(Some((file, total))) => {
                send_target(send, shared, file, total, offset, len).await;
                return None;
            }
            Ok(None) => Response::NotFound,
            Err(e) => refusal(e),
        },
        // Routed before the gate.
        Request::GetChallenge { .. } | Request::PostEvidence { .. } | Request::Enroll { .. } => {
            Response::error(ErrorCode::InvalidRequest, "not here")
        }
    };
    Some(response)
}

/// The device a request is about: the peer itself, or a device its site node may act for.
async fn acting_for<B: Backend>(
    shared: &Shared<B>,
    peer: PublicKey,
    on_behalf: Option<[u8; 32]>,
) -> Result<[u8; 32], Response> {
    match on_behalf {
        None => Ok(peer.0),
        Some(d) if d == peer.0 || shared.backend.clone().acts_for(peer.0, d).await => Ok(d),
        Some(d) => Err(not_serving(d)),
    }
}

/// The device a site node relays attestation for: one it may act for, never itself.
async fn relaying_for<B: Backend>(
    shared: &Shared<B>,
    node: PublicKey,
    device: [u8; 32],
) -> Result<PublicKey, Response> {
    if device != node.0 && shared.backend.clone().acts_for(node.0, device).await {
        Ok(PublicKey(device))
    } else {
        Err(not_serving(device))
    }
}

fn not_serving(device: [u8; 32]) -> Response {
    Response::error(ErrorCode::Forbidden, format!("not a site node serving device {}", hex::encode(device)))
}

/// A backend failure as the peer is told: a [`Refused`] becomes `Forbidden` with its message, anything else is
/// logged and becomes an opaque `Internal`.
fn refusal(e: BackendError) -> Response {
    match e.downcast::<Refused>() {
        Ok(refused) => Response::error(ErrorCode::Forbidden, refused.0),
        Err(e) => {
            tracing::error!(error = %e, "backend error");
            internal()
        }
    }
}

fn internal() -> Response {
    Response::error(ErrorCode::Internal, "internal error")
}

/// Sends one response frame and ends the stream. A response over its frame limit becomes `TooLarge`.
async fn respond<B>(send: &mut SendStream, response: &Response, shared: &Shared<B>) {
    let frame = match wire::encode_frame(response, &shared.live.limits) {
        Ok(frame) => frame,
        Err(e) => match wire::encode_frame(&Response::error(ErrorCode::TooLarge, e.to_string()), &shared.live.limits) {
            Ok(frame) => frame,
            Err(_) => {
                let _ = send.reset(VarInt::from_u32(codes::STREAM_INTERNAL));
                return;
            }
        },
    };
    if write(send, &frame, shared).await {
        let _ = send.finish();
    }
}

/// Writes with the stall timeout; on a stall, resets the stream and says false.
async fn write<B>(send: &mut SendStream, bytes: &[u8], shared: &Shared<B>) -> bool {
    match timeout(shared.live.stall_timeout, send.write_all(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(codes::STREAM_TIMEOUT));
            false
        }
    }
}

/// Streams `[offset, offset + len)` of a target file after its header; resets the stream if the file turns out
/// shorter than the backend said.
async fn send_target<B>(
    send: &mut SendStream,
    shared: &Shared<B>,
    file: PathBuf,
    total: u64,
    offset: u64,
    len: Option<u64>,
) {
    if offset > total {
        let message = format!("offset {offset} is past the end of the {total}-byte target");
        return respond(send, &Response::error(ErrorCode::RangeNotSatisfiable, message), shared).await;
    }
    let len = len.unwrap_or(u64::MAX).min(total - offset);
    let opened = async {
        let mut f = tokio::fs::File::open(&file).await?;
        f.seek(SeekFrom::Start(offset)).await?;
        Ok::<_, std::io::Error>(f)
    };
    let mut f = match opened.await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot read target {}", file.display());
            return respond(send, &internal(), shared).await;
        }
    };
    let header = Response::TargetHeader { total_len: total, offset, len };
    let Ok(frame) = wire::encode_frame(&header, &shared.live.limits) else {
        return respond(send, &internal(), shared).await;
    };
    if !write(send, &frame, shared).await {
        return;
    }
    let mut remaining = len;
    while remaining > 0 {
        // Large reads keep blocking-pool hops rare; each chunk moves into quinn without another copy.
        let want = TARGET_CHUNK.min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let mut buf = vec![0u8; want];
        let n = match f.read(&mut buf).await {
            Ok(0) | Err(_) => {
                tracing::error!(file = %file.display(), total, "target {} is shorter than its recorded {total} bytes", file.display());
                let _ = send.reset(VarInt::from_u32(codes::STREAM_INTERNAL));
                return;
            }
            Ok(n) => n,
        };
        buf.truncate(n);
        match timeout(shared.live.stall_timeout, send.write_chunk(buf.into())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                let _ = send.reset(VarInt::from_u32(codes::STREAM_TIMEOUT));
                return;
            }
        }
        remaining -= n as u64;
    }
    let _ = send.finish();
}
