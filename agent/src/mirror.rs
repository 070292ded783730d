//! The agent's client for a static HTTP(S) mirror of the hub's TUF repository (what `outpost-hub repo export`
//! writes, served by any web server or CDN). The mirror is untrusted — TUF verifies every byte it returns — so
//! this module only bounds what it reads: every answer is capped before it is buffered, a stalled server times
//! out, and package downloads resume with HTTP range requests. It is one of the agent's TUF transports. TLS is rustls with the aws-lc-rs provider passed
//! explicitly, the same single provider quinn uses; nothing installs a process-wide default.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::transport::{Sink, TargetRange, Transport, TransportError, TransportFuture};

/// Where the mirror is and how long to wait for it. [`MirrorConfig::export`] and [`MirrorConfig::new`] set
/// conservative defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The directory URL holding metadata files (`1.root.json`, `timestamp.json`...).
    pub metadata_url: Url,
    /// The directory URL holding target files (consistent-snapshot names, as TUF computes them).
    pub targets_url: Url,
    /// A PEM file of CA certificates: when set, an `https` mirror must chain to one of them and the system's
    /// roots are not used.
    pub ca: Option<PathBuf>,
    /// Longest wait for any single step: connecting and receiving the response head, and each read of the body.
    pub stall_timeout: Duration,
}

impl MirrorConfig {
    /// Default stall timeout.
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(15);

    /// A mirror laid out as `outpost-hub repo export` writes it: `BASE/metadata/` and `BASE/targets/`.
    pub fn export(base: &str) -> Result<MirrorConfig, MirrorError> {
        let base = directory_url(base)?;
        let join =
            |dir: &str| base.join(dir).map_err(|e| MirrorError::Url { url: base.to_string(), problem: e.to_string() });
        Ok(MirrorConfig {
            metadata_url: join("metadata/")?,
            targets_url: join("targets/")?,
            ca: None,
            stall_timeout: Self::DEFAULT_STALL_TIMEOUT,
        })
    }

    /// Metadata and targets at separate URLs (the TUF conformance CLI gives them this way).
    pub fn new(metadata_url: &str, targets_url: &str) -> Result<MirrorConfig, MirrorError> {
        Ok(MirrorConfig {
            metadata_url: directory_url(metadata_url)?,
            targets_url: directory_url(targets_url)?,
            ca: None,
            stall_timeout: Self::DEFAULT_STALL_TIMEOUT,
        })
    }
}

/// Parses an `http` or `https` URL naming a directory (a missing final `/` is added, so joins stay inside it).
fn directory_url(url: &str) -> Result<Url, MirrorError> {
    let bad = |problem: &str| MirrorError::Url { url: url.to_owned(), problem: problem.to_owned() };
    let with_slash = if url.ends_with('/') { url.to_owned() } else { format!("{url}/") };
    let parsed = Url::parse(&with_slash).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// mirrors are supported"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a mirror URL takes no query or fragment"));
    }
    Ok(parsed)
}

/// Why a request to the mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A configured URL, or a path asked of the mirror, is not usable (a caller or configuration mistake).
    #[error("mirror URL {url}: {problem}")]
    Url {
        /// The URL or path.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The configured CA file could not be read or holds no certificate.
    #[error("mirror CA {}: {problem}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// The TLS or HTTP client could not be built.
    #[error("mirror client setup: {0}")]
    Setup(String),
    /// The request failed on the network (connection refused, TLS failure, reset...).
    #[error("GET {url}: {source}")]
    Request {
        /// The URL.
        url: Url,
        /// The cause.
        source: reqwest::Error,
    },
    /// The mirror answered with a status other than success or not found.
    #[error("GET {url}: HTTP status {status}")]
    Status {
        /// The URL.
        url: Url,
        /// The status code.
        status: u16,
    },
    /// The mirror sent, or announced, more bytes than allowed (an endless-data attack or a wrong file).
    #[error("GET {url}: more than the {max} bytes allowed")]
    TooLarge {
        /// The URL.
        url: Url,
        /// The bound.
        max: u64,
    },
    /// A range answer does not match the range asked for.
    #[error("GET {url}: bad range answer: {problem}")]
    BadRange {
        /// The URL.
        url: Url,
        /// What does not match.
        problem: String,
    },
    /// The mirror made no progress within the stall timeout (the slow-retrieval attack, or a dead server).
    #[error("GET {url}: no progress within {after:?}")]
    Timeout {
        /// The URL.
        url: Url,
        /// The stall timeout.
        after: Duration,
    },
    /// Writing the download failed.
    #[error("writing the download: {0}")]
    Io(#[from] std::io::Error),
}

/// A client for one mirror. Cheap to share; requests may run concurrently.
#[derive(Debug, Clone)]
pub struct Mirror {
    http: reqwest::Client,
    metadata_url: Url,
    targets_url: Url,
    stall: Duration,
}

impl Mirror {
    /// Builds the client (TLS roots: the configured CA file, else the system's).
    pub fn new(config: &MirrorConfig) -> Result<Mirror, MirrorError> {
        let tls = tls_config(config.ca.as_deref())?;
        let https_only = config.metadata_url.scheme() == "https" && config.targets_url.scheme() == "https";
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // An https mirror is never followed to plain http by a redirect.
            .https_only(https_only)
            .user_agent(concat!("outpost-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| MirrorError::Setup(e.to_string()))?;
        Ok(Mirror {
            http,
            metadata_url: config.metadata_url.clone(),
            targets_url: config.targets_url.clone(),
            stall: config.stall_timeout,
        })
    }

    /// A metadata file by the name TUF asks for (`3.root.json`, `timestamp.json`, `2.role%2Fname.json`), at most
    /// `max_len` bytes; `None` if the mirror has none (404, or 403 as object stores answer for a missing key).
    pub async fn metadata(&self, name: &str, max_len: u64) -> Result<Option<Vec<u8>>, MirrorError> {
        // sigstore-tuf percent-encodes delegated role names itself; anything else here would be a new path.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b)) {
            return Err(MirrorError::Url { url: name.to_owned(), problem: "not a metadata file name".into() });
        }
        let url =
            self.metadata_url.join(name).map_err(|e| MirrorError::Url { url: name.into(), problem: e.to_string() })?;
        let mut bytes = Vec::new();
        match self.get(url, 0, max_len, &mut bytes).await? {
            Some(_) => Ok(Some(bytes)),
            None => Ok(None),
        }
    }

    /// Downloads a target (by its stored path, hash prefix included) from `offset` to its end into `out`: pass
    /// the length already on disk to resume. Refused as soon as the mirror announces or sends more than
    /// `max_total` bytes in all (the length TUF lists). `None` if the mirror has no such file.
    pub async fn download_target<W: AsyncWrite + Unpin + Send>(
        &self,
        path: &str,
        offset: u64,
        max_total: u64,
        out: &mut W,
    ) -> Result<Option<TargetRange>, MirrorError> {
        let url = target_url(&self.targets_url, path)?;
        self.get(url, offset, max_total, out).await
    }

    /// One bounded GET from `offset`; the body goes to `out`.
    async fn get<W: AsyncWrite + Unpin + Send>(
        &self,
        url: Url,
        offset: u64,
        max_total: u64,
        out: &mut W,
    ) -> Result<Option<TargetRange>, MirrorError> {
        let mut request = self.http.get(url.clone());
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        let stalled = || MirrorError::Timeout { url: url.clone(), after: self.stall };
        let mut response = timeout(self.stall, request.send())
            .await
            .map_err(|_| stalled())?
            .map_err(|source| MirrorError::Request { url: url.clone(), source })?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN {
            return Ok(None);
        }
        let too_large = || MirrorError::TooLarge { url: url.clone(), max: max_total };
        // Bytes of the body to drop before writing: a server that ignores the range sends the whole file.
        let (mut skip, total) = match status {
            StatusCode::OK => (offset, response.content_length()),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let range = response.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
                let (start, total) = parse_content_range(range.unwrap_or_default())
                    .ok_or_else(|| MirrorError::BadRange { url: url.clone(), problem: format!("{range:?}") })?;
                if start != offset {
                    return Err(MirrorError::BadRange {
                        url: url.clone(),
                        problem: format!("asked from byte {offset}, got from {start}"),
                    });
                }
                (0, total)
            }
            _ => return Err(MirrorError::Status { url: url.clone(), status: status.as_u16() }),
        };
        if total.is_some_and(|t| t > max_total) {
            return Err(too_large());
        }
        let mut written = 0u64;
        while let Some(chunk) = timeout(self.stall, response.chunk())
            .await
            .map_err(|_| stalled())?
            .map_err(|source| MirrorError::Request { url: url.clone(), source })?
        {
            let mut chunk = &chunk[..];
            let dropped = skip.min(chunk.len() as u64);
            skip -= dropped;
            chunk = &chunk[usize::try_from(dropped).unwrap_or(chunk.len())..];
            if offset + written + chunk.len() as u64 > max_total {
                return Err(too_large());
            }
            out.write_all(chunk).await?;
            written += chunk.len() as u64;
        }
        if skip > 0 {
            return Err(MirrorError::BadRange { url, problem: format!("the file ends before byte {offset}") });
        }
        out.flush().await?;
        Ok(Some(TargetRange { total_len: total.unwrap_or(offset + written), offset, len: written }))
    }
}

/// The URL of a target path: each segment percent-encoded, and no segment that would leave the targets directory.
fn target_url(base: &Url, path: &str) -> Result<Url, MirrorError> {
    let bad = |problem: &str| MirrorError::Url { url: path.to_owned(), problem: problem.to_owned() };
    if path.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(bad("a target path has no empty, `.` or `..` segments"));
    }
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| bad("the targets URL cannot take a path"))?
        .pop_if_empty()
        .extend(path.split('/'));
    Ok(url)
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → `(START, TOTAL)`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|&t| t > end)?),
    };
    Some((start, total))
}

/// rustls over aws-lc-rs, TLS 1.2 and 1.3 as rustls allows by default (CDNs still speak 1.2), with either the
/// configured CA file or the platform's roots.
fn tls_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, MirrorError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let setup = |e: rustls::Error| MirrorError::Setup(e.to_string());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(setup)?;
    let builder = match ca {
        Some(path) => {
            let ca_error = |problem: String| MirrorError::Ca { path: path.to_owned(), problem };
            let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.map_err(|e| ca_error(e.to_string()))?).map_err(|e| ca_error(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_error("no certificate in the file".into()));
            }
            builder.with_root_certificates(roots)
        }
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(setup)?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    Ok(builder.with_no_client_auth())
}

/// The mirror as a TUF transport: `Ok(None)` for a missing file, an error for anything else.
impl Transport for Mirror {
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

fn transport_error(path: &str, e: MirrorError) -> TransportError {
    match e {
        MirrorError::TooLarge { max, .. } => TransportError::TooLarge { path: path.to_owned(), max },
        e => TransportError::failed(path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// What the fake mirror does with every request.
    #[derive(Clone)]
    enum Answer {
        /// Writes these bytes and closes.
        Raw(Vec<u8>),
        /// A chunked body that never ends.
        Endless,
        /// Reads the request and never answers.
        Silent,
    }

    fn http(status: &str, headers: &str, body: &[u8]) -> Answer {
        let mut raw = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n{headers}\r\n", body.len()).into_bytes();
        raw.extend_from_slice(body);
        Answer::Raw(raw)
    }

    /// A raw HTTP/1.1 server on loopback; returns a client for it (with a short stall timeout) and the request
    /// heads it received.
    async fn fake_mirror(answer: Answer) -> (Mirror, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (answer, seen) = (answer.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                    match answer {
                        Answer::Raw(raw) => drop(tcp.write_all(&raw).await),
                        Answer::Endless => {
                            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                            let chunk = [b"1000\r\n".as_slice(), &[b'x'; 0x1000], b"\r\n"].concat();
                            while tcp.write_all(&chunk).await.is_ok() {}
                        }
                        Answer::Silent => std::future::pending::<()>().await,
                    }
                });
            }
        });
        let base = format!("http://{addr}/repo");
        let mut config = MirrorConfig::export(&base).unwrap();
        config.stall_timeout = Duration::from_millis(300);
        (Mirror::new(&config).unwrap(), heads)
    }

    #[tokio::test]
    async fn metadata_announced_larger_than_the_bound_is_refused_unread() {
        let (mirror, _) = fake_mirror(http("200 OK", "", &[b'{'; 2000])).await;
        let e = mirror.metadata("timestamp.json", 1000).await.unwrap_err();
        assert!(matches!(e, MirrorError::TooLarge { max: 1000, .. }), "{e}");
    }

    #[tokio::test]
    async fn endless_metadata_without_a_length_is_cut_at_the_bound() {
        let (mirror, _) = fake_mirror(Answer::Endless).await;
        let e = mirror.metadata("timestamp.json", 100_000).await.unwrap_err();
        assert!(matches!(e, MirrorError::TooLarge { max: 100_000, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_stalled_mirror_times_out() {
        let (mirror, _) = fake_mirror(Answer::Silent).await;
        let e = mirror.metadata("timestamp.json", 1000).await.unwrap_err();
        assert!(matches!(e, MirrorError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn missing_files_read_as_not_found_and_server_errors_do_not() {
        for status in ["404 Not Found", "403 Forbidden"] {
            let (mirror, heads) = fake_mirror(http(status, "", b"")).await;
            assert_eq!(mirror.metadata("2.root.json", 1000).await.unwrap(), None, "{status}");
            assert!(heads.lock().unwrap()[0].starts_with("GET /repo/metadata/2.root.json "));
        }
        let (mirror, _) = fake_mirror(http("500 Internal Server Error", "", b"")).await;
        let e = mirror.metadata("2.root.json", 1000).await.unwrap_err();
        assert!(matches!(e, MirrorError::Status { status: 500, .. }), "{e}");
    }

    #[tokio::test]
    async fn a_mirror_ignoring_the_range_still_yields_only_the_missing_tail() {
        let (mirror, heads) = fake_mirror(http("200 OK", "", b"0123456789")).await;
        let mut out = Vec::new();
        let range = mirror.download_target("p/abc.m.opkg", 4, 10, &mut out).await.unwrap().unwrap();
        assert_eq!(out, b"456789");
        assert_eq!(range, TargetRange { total_len: 10, offset: 4, len: 6 });
        assert!(heads.lock().unwrap()[0].to_ascii_lowercase().contains("range: bytes=4-"));
    }

    #[tokio::test]
    async fn a_range_answer_from_another_offset_is_refused() {
        let (mirror, _) =
            fake_mirror(http("206 Partial Content", "content-range: bytes 0-9/10\r\n", b"0123456789")).await;
        let e = mirror.download_target("p/abc.m.opkg", 4, 10, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(e, MirrorError::BadRange { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_target_longer_than_tuf_lists_is_refused() {
        let (mirror, _) =
            fake_mirror(http("206 Partial Content", "content-range: bytes 4-19/20\r\n", &[b'x'; 16])).await;
        let e = mirror.download_target("p/abc.m.opkg", 4, 10, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(e, MirrorError::TooLarge { max: 10, .. }), "{e}");
    }

    #[test]
    fn target_paths_are_encoded_per_segment_and_cannot_climb() {
        let base = MirrorConfig::export("https://cdn.example/outpost").unwrap().targets_url;
        let url = target_url(&base, "packages/low/ab.a b?#%.opkg").unwrap();
        assert_eq!(url.as_str(), "https://cdn.example/outpost/targets/packages/low/ab.a%20b%3F%23%25.opkg");
        for bad in ["../metadata/root.json", "a//b", "/etc/passwd", "a/./b", ""] {
            assert!(matches!(target_url(&base, bad), Err(MirrorError::Url { .. })), "{bad}");
        }
    }

    #[test]
    fn content_range_parsing_refuses_inconsistent_answers() {
        assert_eq!(parse_content_range("bytes 4-9/10"), Some((4, Some(10))));
        assert_eq!(parse_content_range("bytes 4-9/*"), Some((4, None)));
        for bad in ["bytes 9-4/10", "bytes 4-9/9", "items 4-9/10", "bytes 4/10", "bytes a-9/10"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }
}
