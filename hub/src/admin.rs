//! The serving hub's admin socket: a Unix socket in the data directory (owner-only) over which admin commands run
//! inside the process that owns the store, so they take effect at once and nothing else opens the store.
//!
//! One request per connection: a 4-byte big-endian length, then the request (opaque here: the CLI's serialised
//! command, run by a [`Handler`]); one [`Response`] back, framed the same way as JSON. Requests are bounded in size
//! and in time ([`Limits`]); a bad request is answered with a typed [`RequestError`] and never stops the service.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The admin socket's file name in the data directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// The admin socket of the hub in `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// Bounds on admin requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request accepted, in bytes.
    pub max_request: u32,
    /// Largest response a client accepts, in bytes.
    pub max_response: u32,
    /// How long a client may take to send its whole request.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request: 1 << 20, max_response: 64 << 20, request_timeout: Duration::from_secs(10) }
    }
}

/// What a command printed and how it ended, as the CLI would have.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Standard output text.
    pub stdout: String,
    /// Standard error text.
    pub stderr: String,
    /// The process exit code.
    pub code: u8,
}

/// Why the service refused a request (the client misbehaved; the service keeps serving).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RequestError {
    /// The request declared more bytes than [`Limits::max_request`].
    #[error("admin request of {len} bytes refused: the limit is {max}")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The client did not send its whole request within [`Limits::request_timeout`].
    #[error("admin request not received within {millis} ms")]
    Stalled {
        /// The timeout, in milliseconds.
        millis: u64,
    },
    /// The request was not a command this service understands.
    #[error("malformed admin request: {reason}")]
    Malformed {
        /// What was wrong with it.
        reason: String,
    },
}

/// The service's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The command ran (successfully or not: see [`Reply::code`]).
    Done(Reply),
    /// The request was refused before any command ran.
    Refused(RequestError),
}

/// Runs admin requests against the open hub (`C`: the service's `crate::service::Hub`). The binary implements it
/// with its command dispatcher.
pub trait Handler<C>: Send + Sync + 'static {
    /// Decodes `request` and runs it against `hub`; a request that does not decode is [`RequestError::Malformed`].
    fn handle(&self, hub: &C, request: &[u8]) -> Result<Reply, RequestError>;

    /// Runs an action a web console operator took, as the matching command would run, with `actor` (the operator,
    /// `crate::console::actor`) in the audit log. A handler that does not implement it refuses every action.
    fn act(&self, hub: &C, actor: &str, action: &crate::console::Action) -> Result<Reply, RequestError> {
        let _ = (hub, actor);
        Err(RequestError::Malformed { reason: format!("this hub does not take console actions ({action:?})") })
    }
}

/// Why talking to a serving hub's admin socket failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Reading or writing the socket failed.
    #[error("admin socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The service's answer was not a response (or too large).
    #[error("admin socket {}: bad response: {reason}", path.display())]
    BadResponse {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The service refused the request.
    #[error("the serving hub refused the request: {0}")]
    Refused(RequestError),
}

/// Whether a live service answers on the admin socket of the hub in `dir`.
pub fn serving(dir: &Path) -> bool {
    UnixStream::connect(socket_path(dir)).is_ok()
}

/// Sends `request` to the hub serving from `dir` and returns its reply; `Ok(None)` if no service is running there
/// (no socket, or a stale one nobody answers), so the caller runs the command itself.
pub fn call(dir: &Path, request: &[u8], limits: &Limits) -> Result<Option<Reply>, AdminError> {
    let path = socket_path(dir);
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(source) => return Err(AdminError::Io { path, source }),
    };
    let io = |source| AdminError::Io { path: path.clone(), source };
    let len = u32::try_from(request.len())
        .map_err(|_| AdminError::Refused(RequestError::TooLarge { len: u32::MAX, max: limits.max_request }))?;
    stream.write_all(&len.to_be_bytes()).map_err(io)?;
    stream.write_all(request).map_err(io)?;
    match read_response(&mut stream, limits).map_err(|reason| AdminError::BadResponse { path: path.clone(), reason })? {
        Response::Done(reply) => Ok(Some(reply)),
        Response::Refused(e) => Err(AdminError::Refused(e)),
    }
}

/// Reads one framed [`Response`] (for clients, including tests that speak the protocol by hand).
pub fn read_response(stream: &mut impl Read, limits: &Limits) -> Result<Response, String> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).map_err(|e| format!("reading the length: {e}"))?;
    let len = u32::from_be_bytes(len);
    if len > limits.max_response {
        return Err(format!("{len} bytes, over the limit of {}", limits.max_response));
    }
    let mut body = vec![0; len as usize];
    stream.read_exact(&mut body).map_err(|e| format!("reading {len} bytes: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// Why the admin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A live service already answers on the socket.
    #[error("a hub is already serving from {} (its admin socket {} answers); stop it first", dir.display(), path.display())]
    AlreadyServing {
        /// The data directory.
        dir: PathBuf,
        /// The socket.
        path: PathBuf,
    },
    /// Creating, securing or removing the socket failed.
    #[error("{op} admin socket {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// The bound admin socket; removes its file when dropped.
#[derive(Debug)]
pub struct Listener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Listener {
    /// Binds the admin socket of the hub in `dir`, mode 0600: refuses if a live service answers on it, removes a
    /// stale one.
    pub fn bind(dir: &Path) -> Result<Listener, ListenError> {
        let path = socket_path(dir);
        if path.exists() {
            if serving(dir) {
                return Err(ListenError::AlreadyServing { dir: dir.to_owned(), path });
            }
            std::fs::remove_file(&path).map_err(|source| ListenError::Io {
                op: "removing stale",
                path: path.clone(),
                source,
            })?;
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(|source| ListenError::Io {
            op: "binding",
            path: path.clone(),
            source,
        })?;
        let listener = Listener { listener, path };
        std::fs::set_permissions(&listener.path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| ListenError::Io { op: "securing", path: listener.path.clone(), source })?;
        Ok(listener)
    }

    /// Serves requests until the task is dropped; `after` runs after every command (the service drops its caches).
    pub async fn run<C: Send + Sync + 'static>(
        self,
        hub: Arc<C>,
        handler: Arc<dyn Handler<C>>,
        limits: Limits,
        after: Arc<dyn Fn() + Send + Sync>,
    ) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::error!(error = %e, "admin socket: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (hub, handler, after) = (hub.clone(), handler.clone(), after.clone());
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, hub, handler, limits, after).await {
                    tracing::warn!(error = %e, "admin socket");
                }
            });
        }
    }
}

/// Answers one connection's request.
async fn serve_one<C: Send + Sync + 'static>(
    mut stream: tokio::net::UnixStream,
    hub: Arc<C>,
    handler: Arc<dyn Handler<C>>,
    limits: Limits,
    after: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    let response = match tokio::time::timeout(limits.request_timeout, read_request(&mut stream, &limits)).await {
        Err(_) => Response::Refused(RequestError::Stalled {
            millis: u64::try_from(limits.request_timeout.as_millis()).unwrap_or(u64::MAX),
        }),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Err(refused))) => Response::Refused(refused),
        Ok(Ok(Ok(request))) => {
            let run = tokio::task::spawn_blocking(move || {
                let reply = handler.handle(&hub, &request);
                after();
                reply
            });
            match run.await {
                Ok(Ok(reply)) => Response::Done(reply),
                Ok(Err(refused)) => Response::Refused(refused),
                Err(e) => Response::Done(Reply {
                    stderr: format!("error: the command failed: {e}\n"),
                    code: 1,
                    ..Default::default()
                }),
            }
        }
    };
    if let Response::Refused(e) = &response {
        tracing::warn!(refused = %e, "admin socket: {e}");
    }
    let body = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// Reads a framed request within the size bound.
async fn read_request(
    stream: &mut tokio::net::UnixStream,
    limits: &Limits,
) -> std::io::Result<Result<Vec<u8>, RequestError>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > limits.max_request {
        return Ok(Err(RequestError::TooLarge { len, max: limits.max_request }));
    }
    let mut body = vec![0; len as usize];
    stream.read_exact(&mut body).await?;
    Ok(Ok(body))
}
