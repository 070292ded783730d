//! The QUIC client to a hub (or a site node): a thin tokio + quinn driver around `outpost_shared::wire`.
//!
//! It pins the hub's Ed25519 key, opens one stream per request, bounds every answer before buffering it (by the
//! frame limits, the caller's `max_len` and the target length the caller trusts) and times out a stalled hub. It
//! is also one of the agent's TUF transports, so the TUF client fetches metadata and targets through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_attestation::Challenge;
use outpost_attestation::evidence::{EXPORTER_CONTEXT, EXPORTER_LABEL, EXPORTER_LEN};
use outpost_attestation::identity::{Identity, PublicKey};
use outpost_shared::wire::{
    self, AttestedStatus, AttestedTier, ErrorCode, Limits, Relay, Request, Response, ResponseReader, WireError, codes,
};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{RecvStream, VarInt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::tls::TlsError;
use crate::transport::{Sink, TargetRange, Transport, TransportError, TransportFuture};

/// Where the hub is and how long to wait for it. [`ClientConfig::new`] sets conservative defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The hub's UDP address.
    pub hub_addr: SocketAddr,
    /// The hub's Ed25519 public key; a hub presenting another key is refused during the handshake.
    pub hub_key: PublicKey,
    /// Frame size limits.
    pub limits: Limits,
    /// Longest wait for the handshake.
    pub connect_timeout: Duration,
    /// A connection silent for this long is closed (QUIC idle timeout); keep-alives go at a third of it.
    pub idle_timeout: Duration,
    /// Longest wait for any single step of a request (opening a stream, sending, each read of the answer).
    pub stall_timeout: Duration,
    /// A client endpoint (one UDP socket) to open the connection on, shared with other connections; `None`, the
    /// default, opens one for this connection alone. Simulations run many devices over a few sockets with it.
    pub endpoint: Option<quinn::Endpoint>,
}

impl ClientConfig {
    /// Default handshake timeout.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default idle timeout.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
    /// Default stall timeout.
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(15);

    /// Defaults for everything but where the hub is and who it is.
    pub fn new(hub_addr: SocketAddr, hub_key: PublicKey) -> Self {
        ClientConfig {
            hub_addr,
            hub_key,
            limits: Limits::default(),
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            stall_timeout: Self::DEFAULT_STALL_TIMEOUT,
            endpoint: None,
        }
    }
}

/// Why a request to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local TLS configuration could not be built (an API misuse, not a hub fault).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A setting is out of range, or the local socket could not be opened.
    #[error("client setup: {0}")]
    Setup(String),
    /// The connection could not be set up or was lost: includes a hub key that is not the pinned one (a TLS
    /// error during the handshake) and the hub refusing this device (closed with
    /// [`codes::CLOSE_UNKNOWN_DEVICE`]).
    #[error("connection to the hub: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream was reset or stopped by the hub, or failed with the connection.
    #[error("stream: {0}")]
    Stream(String),
    /// The hub broke the protocol.
    #[error("hub sent a bad answer: {0}")]
    Wire(#[from] WireError),
    /// The hub answered with a typed error (`NotAttested`: the message is `not attested: <reason>`).
    #[error("hub refused the request ({code:?}): {message}")]
    Hub {
        /// The error code.
        code: ErrorCode,
        /// The hub's explanation.
        message: String,
    },
    /// The target is larger than the caller allows.
    #[error("target is {total_len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Length the hub declared.
        total_len: u64,
        /// The caller's bound.
        max: u64,
    },
    /// The hub did not make progress within the stall timeout.
    #[error("hub stalled: no progress within {0:?}")]
    Timeout(Duration),
    /// Writing downloaded bytes to the caller's writer failed.
    #[error("writing the download: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The application close code and reason if the hub closed the connection (e.g.
    /// [`codes::CLOSE_UNKNOWN_DEVICE`]).
    pub fn close_reason(&self) -> Option<(u32, String)> {
        match self {
            ClientError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => Some((
                u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX),
                String::from_utf8_lossy(&close.reason).into_owned(),
            )),
            _ => None,
        }
    }
}

/// The hub's positive attestation verdict on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attested {
    /// Affirming or warning.
    pub status: AttestedStatus,
    /// Wall-clock expiry (Unix seconds): attest again on a new connection before then.
    pub expires: u64,
    /// Software or hardware tier.
    pub tier: AttestedTier,
}

/// A connection to the hub. Requests may run concurrently (up to the hub's per-connection stream limit).
#[derive(Debug)]
pub struct HubClient {
    /// The latest revocation-list version the hub pushed on this connection (0: none yet).
    notices: tokio::sync::watch::Receiver<u64>,
    endpoint: quinn::Endpoint,
    /// Whether `endpoint` serves other connections too ([`ClientConfig::endpoint`]): closing this one then does
    /// not wait for the endpoint to go idle.
    shared_endpoint: bool,
    conn: quinn::Connection,
    limits: Limits,
    stall: Duration,
    /// The hub's last `NotAttested` refusal on this connection, whatever asked (the TUF client's errors bury it).
    not_attested: std::sync::Mutex<Option<String>>,
}

/// Reads the hub's pushed notices (one small frame per unidirectional stream) until the connection ends.
async fn receive_notices(
    conn: quinn::Connection,
    tx: tokio::sync::watch::Sender<u64>,
    limits: Limits,
    stall: Duration,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let Ok(Ok(bytes)) = timeout(stall, recv.read_to_end(256)).await else { continue };
        let mut decoder = wire::FrameDecoder::<Response>::new(limits);
        if decoder.push(&bytes).is_ok()
            && let Some(Response::Notice { revocations }) = decoder.pop()
        {
            tx.send_if_modified(|v| {
                let newer = revocations > *v;
                *v = (*v).max(revocations);
                newer
            });
        }
    }
}

/// Bytes asked of quinn per read.
const READ_CHUNK: usize = 64 * 1024;

impl HubClient {
    /// Connects and authenticates both ways: this device with `identity`, the hub by its pinned key.
    pub async fn connect(identity: &Identity, config: &ClientConfig) -> Result<HubClient, ClientError> {
        let setup = |e: &dyn std::fmt::Display| ClientError::Setup(e.to_string());
        let tls = crate::tls::client_config(identity, config.hub_key)?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| setup(&e))?;
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(outpost_shared::wire::MTU_DISCOVERY_UPPER_BOUND);
        let mut transport = quinn::TransportConfig::default();
        transport
            .mtu_discovery_config(Some(mtu))
            // Large windows so a download is never throttled waiting for window updates on fast paths.
            .stream_receive_window(VarInt::from_u32(16 * 1024 * 1024))
            .receive_window(VarInt::from_u32(32 * 1024 * 1024))
            .max_idle_timeout(Some(quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| setup(&e))?))
            .keep_alive_interval(Some(config.idle_timeout / 3))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            // The hub pushes notices (a revocation) on unidirectional streams it opens.
            .max_concurrent_uni_streams(VarInt::from_u32(4));
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport));
        let endpoint = match &config.endpoint {
            Some(shared) => shared.clone(),
            None => {
                let local: SocketAddr = match config.hub_addr {
                    SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                quinn::Endpoint::client(local).map_err(|e| setup(&e))?
            }
        };
        // The name is not checked (the key is pinned) but TLS wants one.
        let connecting = endpoint.connect_with(client, config.hub_addr, "outpost-hub").map_err(|e| setup(&e))?;
        let conn = match timeout(config.connect_timeout, connecting).await {
            Ok(conn) => conn?,
            Err(_) => return Err(ClientError::Timeout(config.connect_timeout)),
        };
        let (notice_tx, notices) = tokio::sync::watch::channel(0u64);
        tokio::spawn(receive_notices(conn.clone(), notice_tx, config.limits, config.stall_timeout));
        Ok(HubClient {
            notices,
            endpoint,
            shared_endpoint: config.endpoint.is_some(),
            conn,
            limits: config.limits,
            stall: config.stall_timeout,
            not_attested: std::sync::Mutex::new(None),
        })
    }

    /// The underlying connection, for tests and diagnostics.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// This connection's TLS exporter output for attestation: the hub computes the same bytes on its side, so
    /// evidence whose nonce mixes them in is good on this connection only.
    pub fn exporter(&self) -> Result<[u8; EXPORTER_LEN], ClientError> {
        let mut out = [0u8; EXPORTER_LEN];
        self.conn
            .export_keying_material(&mut out, EXPORTER_LABEL, EXPORTER_CONTEXT)
            .map_err(|_| ClientError::Setup("the TLS session cannot export keying material".into()))?;
        Ok(out)
    }

    /// A fresh attestation challenge for this connection; `None` if the server does not appraise evidence.
    pub async fn challenge(&self) -> Result<Option<Challenge>, ClientError> {
        self.challenge_for(None).await
    }

    /// A site node's request for a challenge on behalf of `device` (`None`: for this connection itself).
    pub async fn challenge_for(&self, device: Option<[u8; 32]>) -> Result<Option<Challenge>, ClientError> {
        match self.simple(&Request::GetChallenge { device }).await? {
            Response::Challenge { nonce_challenge } => Ok(Some(Challenge(nonce_challenge))),
            _ => Ok(None),
        }
    }

    /// Presents signed evidence; returns the hub's verdict (a refusal is [`ClientError::Hub`] with
    /// [`ErrorCode::NotAttested`]).
    pub async fn post_evidence(&self, evidence: &[u8]) -> Result<Attested, ClientError> {
        self.post_evidence_for(None, evidence).await
    }

    /// Presents evidence: this connection's (`relay` `None`), or, from a site node, a device's made on the
    /// device's own connection to it.
    pub async fn post_evidence_for(&self, relay: Option<Relay>, evidence: &[u8]) -> Result<Attested, ClientError> {
        match self.simple(&Request::PostEvidence { evidence: evidence.to_vec(), relay }).await? {
            Response::Attested { status, expires, tier } => Ok(Attested { status, expires, tier }),
            other => Err(WireError::UnexpectedResponse { reason: format!("{other:?} answers evidence") }.into()),
        }
    }

    /// Enrols this device's key with a one-time token (and its TPM's enrolment facts, if it has one); returns once
    /// the hub has approved it.
    pub async fn enroll(&self, token: &str, hardware: &str, tpm: Option<Vec<u8>>) -> Result<(), ClientError> {
        self.simple(&Request::Enroll { token: token.to_owned(), hardware: hardware.to_owned(), tpm }).await.map(drop)
    }

    /// Revocation notices the hub pushes on this connection: the value is the newest revocation-list version
    /// announced; `changed()` wakes on each newer one.
    pub fn notices(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notices.clone()
    }

    /// A TUF metadata file (`timestamp.json`, `3.root.json`...), at most `max_len` bytes; `None` if the hub has
    /// none by that name.
    pub async fn metadata(&self, name: &str, max_len: u64) -> Result<Option<Vec<u8>>, ClientError> {
        let request = Request::GetMetadata { name: name.to_owned(), max_len };
        match self.simple(&request).await? {
            Response::Metadata { bytes } => Ok(Some(bytes)),
            _ => Ok(None),
        }
    }

    /// The director's assignment for this device; `None` if it has none.
    pub async fn assignment(&self) -> Result<Option<Vec<u8>>, ClientError> {
        self.assignment_for(None).await
    }

    /// The director's assignment for `device` (a site node asking for a device of its site), or for this
    /// device with `None`; `None` if there is none.
    pub async fn assignment_for(&self, device: Option<[u8; 32]>) -> Result<Option<Vec<u8>>, ClientError> {
        match self.simple(&Request::GetAssignment { device }).await? {
            Response::Assignment { bytes } => Ok(Some(bytes)),
            _ => Ok(None),
        }
    }

    /// Sends a report; returns once the hub has stored it.
    pub async fn report(&self, body: &[u8]) -> Result<(), ClientError> {
        self.report_for(None, body).await
    }

    /// Sends a telemetry batch (encoded); returns the sequence number the hub stored it up to.
    pub async fn telemetry(&self, batch: &[u8]) -> Result<u64, ClientError> {
        self.telemetry_for(None, batch).await
    }

    /// Sends a telemetry batch for `device` (a site node forwarding), or for this device with `None`.
    pub async fn telemetry_for(&self, device: Option<[u8; 32]>, batch: &[u8]) -> Result<u64, ClientError> {
        match self.simple(&Request::PostTelemetry { body: batch.to_vec(), device }).await? {
            Response::TelemetryAck { up_to } => Ok(up_to),
            _ => Err(ClientError::Stream("expected a telemetry ack".into())),
        }
    }

    /// Sends a report for `device` (a site node forwarding), or for this device with `None`.
    pub async fn report_for(&self, device: Option<[u8; 32]>, body: &[u8]) -> Result<(), ClientError> {
        self.simple(&Request::PostReport { body: body.to_vec(), device }).await.map(drop)
    }

    /// Downloads a target from `offset` to its end into `out` (resume: pass the length already on disk).
    /// Refused before any body byte is read if the hub declares more than `max_total` bytes (the length the
    /// caller trusts from TUF targets metadata). `None` if the hub has no such target.
    pub async fn download_target<W: AsyncWrite + Unpin + Send>(
        &self,
        path: &str,
        offset: u64,
        max_total: u64,
        out: &mut W,
    ) -> Result<Option<TargetRange>, ClientError> {
        self.download_range(path, offset, None, max_total, out).await
    }

    /// Downloads `len` bytes of a target from `offset` (or to the end if `len` is `None`) into `out`, bounded as
    /// [`HubClient::download_target`] is.
    pub async fn download_range<W: AsyncWrite + Unpin + Send>(
        &self,
        path: &str,
        offset: u64,
        len: Option<u64>,
        max_total: u64,
        out: &mut W,
    ) -> Result<Option<TargetRange>, ClientError> {
        let request = Request::GetTarget { path: path.to_owned(), offset, len };
        let (response, first, mut recv, mut reader) = self.start(&request).await?;
        let range = match response {
            Response::TargetHeader { total_len, offset, len } => TargetRange { total_len, offset, len },
            other => return self.note(finish_simple(other, recv, reader, self.stall).await).map(|_| None),
        };
        if range.total_len > max_total {
            let _ = recv.stop(VarInt::from_u32(codes::STREAM_PROTOCOL));
            return Err(ClientError::TooLarge { total_len: range.total_len, max: max_total });
        }
        out.write_all(&first).await?;
        loop {
            match read_chunk(&mut recv, self.stall).await? {
                Some(chunk) => out.write_all(reader.push(&chunk.bytes)?.body).await?,
                None => {
                    reader.finish()?;
                    break;
                }
            }
        }
        out.flush().await?;
        Ok(Some(range))
    }

    /// Closes the connection politely and waits for the hub to hear it.
    pub async fn close(self) {
        self.conn.close(VarInt::from_u32(codes::CLOSE_NORMAL), b"done");
        if !self.shared_endpoint {
            let _ = timeout(self.stall, self.endpoint.wait_idle()).await;
        }
    }

    /// The hub's last `NotAttested` refusal on this connection (`not attested: <reason>`), if any.
    pub fn not_attested(&self) -> Option<String> {
        self.not_attested.lock().ok().and_then(|r| r.clone())
    }

    /// Runs a request whose answer is one frame; typed hub errors become [`ClientError::Hub`].
    async fn simple(&self, request: &Request) -> Result<Response, ClientError> {
        let (response, _, recv, reader) = self.start(request).await?;
        self.note(finish_simple(response, recv, reader, self.stall).await)
    }

    /// Remembers a `NotAttested` refusal.
    fn note<T>(&self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(ClientError::Hub { code: ErrorCode::NotAttested, message }) = &result
            && let Ok(mut slot) = self.not_attested.lock()
        {
            *slot = Some(message.clone());
        }
        result
    }

    /// Opens a stream, sends the request, and reads until the response frame is complete. Returns it with any
    /// raw body bytes that came in the same read.
    async fn start(&self, request: &Request) -> Result<(Response, Vec<u8>, RecvStream, ResponseReader), ClientError> {
        let frame = wire::encode_frame(request, &self.limits)?;
        let (mut send, mut recv) = match timeout(self.stall, self.conn.open_bi()).await {
            Ok(streams) => streams?,
            Err(_) => return Err(ClientError::Timeout(self.stall)),
        };
        match timeout(self.stall, send.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(stream_error(e)),
            Err(_) => return Err(ClientError::Timeout(self.stall)),
        }
        let _ = send.finish();
        let mut reader = ResponseReader::new(request, self.limits);
        loop {
            let Some(chunk) = read_chunk(&mut recv, self.stall).await? else {
                reader.finish()?;
                return Err(WireError::Truncated { received: 0 }.into());
            };
            let progress = reader.push(&chunk.bytes)?;
            if let Some(response) = progress.response {
                return Ok((response, progress.body.to_vec(), recv, reader));
            }
        }
    }
}

async fn read_chunk(recv: &mut RecvStream, stall: Duration) -> Result<Option<quinn::Chunk>, ClientError> {
    match timeout(stall, recv.read_chunk(READ_CHUNK, true)).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(e)) => Err(stream_error(e)),
        Err(_) => Err(ClientError::Timeout(stall)),
    }
}

/// A stream failure, keeping the connection error when that is the cause.
fn stream_error(e: impl Into<StreamFailure>) -> ClientError {
    match e.into() {
        StreamFailure::Connection(c) => ClientError::Connection(c),
        StreamFailure::Other(s) => ClientError::Stream(s),
    }
}

enum StreamFailure {
    Connection(quinn::ConnectionError),
    Other(String),
}

impl From<quinn::ReadError> for StreamFailure {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => StreamFailure::Connection(c),
            e => StreamFailure::Other(e.to_string()),
        }
    }
}

impl From<quinn::WriteError> for StreamFailure {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => StreamFailure::Connection(c),
            e => StreamFailure::Other(e.to_string()),
        }
    }
}

/// Checks a one-frame answer ends the stream, and turns a hub `Error` into [`ClientError::Hub`].
async fn finish_simple(
    response: Response,
    mut recv: RecvStream,
    mut reader: ResponseReader,
    stall: Duration,
) -> Result<Response, ClientError> {
    if let Response::Error { code, message } = response {
        return Err(ClientError::Hub { code, message });
    }
    while let Some(chunk) = read_chunk(&mut recv, stall).await? {
        reader.push(&chunk.bytes)?;
    }
    reader.finish()?;
    Ok(response)
}

/// The hub as a TUF transport: `Ok(None)` when the hub says not found, an error for anything else.
impl Transport for HubClient {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_len: u64) -> TransportFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { self.metadata(name, max_len).await.map_err(|e| transport_error(name, e)) })
    }

    fn fetch_target<'a>(
        &'a self,
        path: &'a str,
        offset: u64,
        max_total: u64,
        mut sink: Sink<'a>,
    ) -> TransportFuture<'a, Option<TargetRange>> {
        Box::pin(async move {
            self.download_target(path, offset, max_total, &mut sink).await.map_err(|e| transport_error(path, e))
        })
    }
}

fn transport_error(path: &str, e: ClientError) -> TransportError {
    match e {
        ClientError::TooLarge { max, .. } => TransportError::TooLarge { path: path.to_owned(), max },
        e => TransportError::failed(path, e),
    }
}
