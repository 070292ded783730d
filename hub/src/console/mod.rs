//! The hub's web console (`serve --console ADDR`): server-rendered pages over the serving hub's open store, and the
//! few actions an operator may take from a browser, run by the same admin handler the CLI's commands run through.
//!
//! Invariants: it runs inside the one process that owns the store and never opens it again; every page needs a
//! session (viewer or operator) and reads the same without JavaScript (one small script only refreshes them in place);
//! every state-changing request needs an operator's session, that session's CSRF token, and lands in the audit log
//! under the operator's name; a login needs its form's token and is throttled per user name after a few failures; a non-loopback bind without TLS is refused; all text is escaped by the templates
//! (maud).

mod actions;
mod cache;
mod devices;
mod http;
mod index;
mod packages;
mod pages;
mod render;
mod throttle;
pub mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::admin::Handler;
use crate::service::Hub;

pub use render::Sample;
pub use throttle::ThrottleLimits;
pub use users::{Role, SessionLimits, User};

/// An action an operator takes from the console; the admin handler runs it as the matching CLI command would, with
/// the operator as the audit log's actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// `release pause ID`.
    Pause {
        /// Release id.
        release: String,
    },
    /// `release resume ID`.
    Resume {
        /// Release id.
        release: String,
    },
    /// `release abort ID --reason R`.
    Abort {
        /// Release id.
        release: String,
        /// Why, for the record.
        reason: String,
    },
    /// `release retry-failed ID`.
    RetryFailed {
        /// Release id.
        release: String,
    },
    /// `device revoke KEY`.
    RevokeDevice {
        /// The device's public key, hex.
        key: String,
    },
}

/// The audit log's actor for a console operator: their login name, marked as coming from the console.
pub fn actor(user: &str) -> String {
    format!("console:{user}")
}

/// The certificate chain and private key (PEM files) the console serves TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How the console serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// TCP address; loopback unless `tls` is set.
    pub bind: SocketAddr,
    /// Serve HTTPS with these files (required for a non-loopback `bind`).
    pub tls: Option<TlsFiles>,
    /// Session lifetime and count.
    pub sessions: SessionLimits,
    /// Rows per page of the device and audit lists.
    pub page_size: usize,
    /// How old the releases with their status, as pages read them from memory, may get before a page has them
    /// rebuilt (in the background; pages are served from the previous copy meanwhile, and an action here drops it at
    /// once). The device index is not aged: it follows the store's writes.
    pub cache_max_age: Duration,
    /// Older than this (nobody opened a page for a while), a page waits for a fresh copy instead of being served the
    /// old one.
    pub cache_stale_age: Duration,
    /// How often the releases' device counts are sampled for the chart of devices per state over time (which also
    /// keeps the releases warm and the device index current).
    pub sample_period: Duration,
    /// Samples kept per release for that chart.
    pub max_samples: usize,
    /// How often a page refreshes itself in a browser with JavaScript (`live.js`).
    pub live_refresh: Duration,
    /// Password checks run at once; further logins wait their turn.
    pub max_concurrent_logins: usize,
    /// How failed logins for one user name slow further attempts.
    pub login_throttle: ThrottleLimits,
    /// Longest abort reason accepted, in bytes.
    pub max_reason_len: usize,
    /// How long a TLS handshake may take before the connection is dropped.
    pub tls_handshake_timeout: Duration,
}

impl ConsoleConfig {
    /// A console on `bind` with every other setting at its default.
    pub fn new(bind: SocketAddr) -> ConsoleConfig {
        ConsoleConfig {
            bind,
            tls: None,
            sessions: SessionLimits::default(),
            page_size: 50,
            cache_max_age: Duration::from_secs(5),
            cache_stale_age: Duration::from_secs(60),
            sample_period: Duration::from_secs(15),
            max_samples: 960,
            live_refresh: Duration::from_secs(10),
            max_concurrent_logins: 2,
            login_throttle: ThrottleLimits::default(),
            max_reason_len: 500,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A non-loopback address was asked for without TLS.
    #[error(
        "the console would serve {addr} in clear text: bind a loopback address (127.0.0.1:PORT) or give \
         --console-tls CERT KEY"
    )]
    NotLoopbackWithoutTls {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("binding the console on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// A TLS file could not be read or used.
    #[error("console TLS {}: {problem}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
}

/// A bound console, not yet serving.
pub struct Console {
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<http::State>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("addr", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

impl Console {
    /// Binds the console for `hub`; `handler` runs its actions (none: a read-only console) and `after` runs after
    /// each (the service drops its caches, as after an admin command). Refuses a non-loopback address without TLS.
    pub async fn bind(
        config: ConsoleConfig,
        hub: Arc<Hub>,
        handler: Option<Arc<dyn Handler<Hub>>>,
        after: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Console, ConsoleError> {
        let addr = config.bind;
        if !addr.ip().is_loopback() && config.tls.is_none() {
            return Err(ConsoleError::NotLoopbackWithoutTls { addr });
        }
        let tls = config.tls.as_ref().map(http::tls_acceptor).transpose()?;
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| ConsoleError::Bind { addr, source })?;
        let state = Arc::new(http::State::new(config, hub, handler, after, tls.is_some()));
        Ok(Console { listener, tls, state })
    }

    /// The address it listens on (with the port chosen when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The URL a browser opens.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.local_addr() {
            Ok(a) => format!("{scheme}://{a}/"),
            Err(_) => format!("{scheme}://(unknown address)/"),
        }
    }

    /// Serves until the task is dropped; samples the releases' counts for the chart meanwhile.
    pub async fn run(self) {
        let Console { listener, tls, state } = self;
        let sampler = tokio::spawn(render::sample_releases(state.clone()));
        http::serve(listener, tls, state).await;
        sampler.abort();
    }
}
