//! A static mirror for tests: serves a directory (an `outpost-hub repo export`) over real HTTP or HTTPS on
//! loopback, answers `Range: bytes=N-`, logs every request, and can be pointed at another directory mid-test (a
//! mirror that rolls back or tampers).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// One request the mirror saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The URL path (`/metadata/timestamp.json`).
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

#[derive(Clone)]
struct Shared {
    root: Arc<Mutex<PathBuf>>,
    log: Arc<Mutex<Vec<Logged>>>,
    /// The URL path the hand-written server misbehaves on (unused by the well-behaved ones).
    bad: Arc<Mutex<String>>,
    /// Once a request under this prefix is served, the root becomes this (see [`StaticMirror::switch_after`]).
    switch: Arc<Mutex<Option<(String, PathBuf)>>>,
}

/// How the hand-written server misbehaves on its one bad path.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// A chunked body with no length that never ends, as fast as the client takes it.
    Endless,
    /// The file's real length announced, then one byte of it every `Duration`, for ever: never a stall long
    /// enough for a per-read timeout, never an end.
    Drip(std::time::Duration),
}

pub struct StaticMirror {
    /// The base URL (what `hub.mirror` takes).
    pub url: String,
    /// For HTTPS: the PEM file of the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    shared: Shared,
}

impl StaticMirror {
    /// Plain HTTP.
    pub async fn http(root: &Path) -> StaticMirror {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            root: Arc::new(Mutex::new(root.into())),
            log: Arc::default(),
            bad: Arc::default(),
            switch: Arc::default(),
        };
        tokio::spawn(axum::serve(listener, router(shared.clone())).into_future());
        StaticMirror { url: format!("http://{addr}"), ca: None, shared }
    }

    /// HTTPS with a certificate for 127.0.0.1 from a fresh test CA, whose PEM is written into `ca_dir`.
    pub async fn https(root: &Path, ca_dir: &Path) -> StaticMirror {
        let (ca_pem, chain, key) = test_pki();
        let ca = ca_dir.join("mirror-ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = TlsListener { tcp: listener, acceptor: TlsAcceptor::from(Arc::new(config)) };
        let shared = Shared {
            root: Arc::new(Mutex::new(root.into())),
            log: Arc::default(),
            bad: Arc::default(),
            switch: Arc::default(),
        };
        tokio::spawn(axum::serve(tls, router(shared.clone())).into_future());
        StaticMirror { url: format!("https://{addr}"), ca: Some(ca), shared }
    }

    /// Plain HTTP from a hand-written HTTP/1.1 server that serves `root` as [`StaticMirror::http`] does (no
    /// ranges), except the URL path `endless`, whose body is chunked, with no length, and never ends. The returned
    /// receiver yields, once the client hangs up on it, how many body bytes the socket accepted.
    pub async fn http_endless(root: &Path, endless: &str) -> (StaticMirror, tokio::sync::mpsc::UnboundedReceiver<u64>) {
        Self::http_misbehaving(root, endless, Misbehaviour::Endless).await
    }

    /// Like [`StaticMirror::http_endless`], but the URL path `dripping` announces its file's length and then
    /// sends one byte of it every `every`, for ever. The receiver yields, once the client hangs up, how many body
    /// bytes were sent.
    pub async fn http_dripping(
        root: &Path,
        dripping: &str,
        every: std::time::Duration,
    ) -> (StaticMirror, tokio::sync::mpsc::UnboundedReceiver<u64>) {
        Self::http_misbehaving(root, dripping, Misbehaviour::Drip(every)).await
    }

    async fn http_misbehaving(
        root: &Path,
        bad: &str,
        how: Misbehaviour,
    ) -> (StaticMirror, tokio::sync::mpsc::UnboundedReceiver<u64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            root: Arc::new(Mutex::new(root.into())),
            log: Arc::default(),
            bad: Arc::default(),
            switch: Arc::default(),
        };
        let (tx, sent) = tokio::sync::mpsc::unbounded_channel();
        *shared.bad.lock().unwrap() = bad.to_owned();
        let state = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_raw(tcp, state.clone(), how, tx.clone()));
            }
        });
        (StaticMirror { url: format!("http://{addr}"), ca: None, shared }, sent)
    }

    /// From now on, a server from [`StaticMirror::http_endless`] or [`StaticMirror::http_dripping`] misbehaves
    /// on the URL path `path` instead.
    pub fn misbehave_on(&self, path: &str) {
        *self.shared.bad.lock().unwrap() = path.to_owned();
    }

    /// Serves `root` from now on.
    pub fn serve_from(&self, root: &Path) {
        *self.shared.root.lock().unwrap() = root.into();
    }

    /// Serves `root` from the request after the first one whose URL path starts with `prefix`: a repository
    /// that changes at a chosen point of an agent's check.
    pub fn switch_after(&self, prefix: &str, root: &Path) {
        *self.shared.switch.lock().unwrap() = Some((prefix.to_owned(), root.into()));
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }
}

fn router(shared: Shared) -> axum::Router {
    axum::Router::new().fallback(serve_file).with_state(shared)
}

async fn serve_file(State(shared): State<Shared>, uri: Uri, headers: HeaderMap) -> Response {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    shared.log.lock().unwrap().push(Logged { path: uri.path().to_owned(), range: range.clone() });
    let relative = uri.path().trim_start_matches('/');
    if relative.split('/').any(|s| s.is_empty() || s == "..") || relative.contains('%') {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = shared.root.lock().unwrap().join(relative);
    let mut switch = shared.switch.lock().unwrap();
    if let Some((_, root)) = switch.take_if(|(prefix, _)| uri.path().starts_with(prefix.as_str())) {
        *shared.root.lock().unwrap() = root;
    }
    drop(switch);
    let Ok(bytes) = std::fs::read(&path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let total = bytes.len();
    match range.as_deref().and_then(|r| r.strip_prefix("bytes=")?.strip_suffix('-')?.parse::<usize>().ok()) {
        Some(start) if start < total => Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{total}", total - 1))
            .body(Body::from(bytes[start..].to_vec()))
            .unwrap(),
        Some(_) => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        None => bytes.into_response(),
    }
}

/// One keep-alive connection of the hand-written server (see [`StaticMirror::http_endless`]).
async fn serve_raw(
    mut tcp: TcpStream,
    shared: Shared,
    how: Misbehaviour,
    sent: tokio::sync::mpsc::UnboundedSender<u64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut more = [0u8; 4096];
            match tcp.read(&mut more).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&more[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let range = head.lines().find_map(|l| Some(l.to_ascii_lowercase().strip_prefix("range:")?.trim().to_owned()));
        shared.log.lock().unwrap().push(Logged { path: path.clone(), range });
        let file = shared.root.lock().unwrap().join(path.trim_start_matches('/'));
        let bad = path == *shared.bad.lock().unwrap();
        if let (true, Misbehaviour::Drip(every)) = (bad, how) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let mut total = 0u64;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", bytes.len());
            if tcp.write_all(head.as_bytes()).await.is_ok() {
                // Until the client hangs up (a write fails) or the file is out: it is never out in time.
                for b in bytes.iter().cycle().take(bytes.len().saturating_sub(1)) {
                    tokio::time::sleep(every).await;
                    if tcp.write_all(&[*b]).await.is_err() || tcp.flush().await.is_err() {
                        break;
                    }
                    total += 1;
                }
            }
            let _ = sent.send(total);
            return;
        }
        if bad {
            let mut total = 0u64;
            let chunk = [b"4000\r\n".as_slice(), &[b'x'; 0x4000], b"\r\n"].concat();
            if tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.is_ok() {
                while tcp.write_all(&chunk).await.is_ok() {
                    total += 0x4000;
                }
            }
            let _ = sent.send(total);
            return;
        }
        let answer = match std::fs::read(&file) {
            Ok(bytes) => {
                [format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", bytes.len()).into_bytes(), bytes].concat()
            }
            Err(_) => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec(),
        };
        if tcp.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// A CA certificate (PEM), and a server chain and key for 127.0.0.1 signed by it.
fn test_pki() -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "outpost test mirror CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca.pem(), vec![leaf.der().clone(), ca.der().clone()], key)
}

/// TCP with a TLS handshake per connection; a failed handshake is dropped and the next connection accepted.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
