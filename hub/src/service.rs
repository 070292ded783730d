//! The serving hub as one process that owns its state: it opens the store once, serves devices over QUIC, runs the
//! periodic jobs (re-signing, rollout ticks, telemetry retention, revocation watch, metrics) and takes admin
//! commands over its socket (`crate::admin`), all against that one open store, until `shutdown` resolves.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use outpost_attestation::identity::Identity;
use outpost_shared::clock::Clock;
use outpost_shared::rng::Rng;

use crate::admin;
use crate::backend::HubBackend;
use crate::config::{CONFIG_FILE, ConfigError, HubConfig};
use crate::director::Director;
use crate::replicas::{self, Leadership};
use crate::store::postgres::{LeaseName, Notice};
use crate::store::{Store, StoreError};
use crate::tuf::TufRepo;
use outpost_net::server::{ServeConfig, ServeError, Server};

/// The hub an admin command runs against: its data directory and configuration, the store (held open by a serving
/// hub, opened at first use by a lone command), the clock and the random generator.
pub struct Hub {
    dir: PathBuf,
    config: HubConfig,
    store: OnceLock<Arc<Store>>,
    clock: Arc<dyn Clock>,
    rng: Mutex<Box<dyn Rng>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Hub {
    /// The hub in `dir`, reading its `hub.toml`; the store is opened at first use.
    pub fn load(dir: &Path, clock: Arc<dyn Clock>, rng: Box<dyn Rng>) -> Result<Hub, ConfigError> {
        let config = HubConfig::load(&dir.join(CONFIG_FILE))?;
        Ok(Hub::new(dir, config, clock, rng, OnceLock::new()))
    }

    /// A context for commands that need no hub (offline key work): default configuration, no store unless asked.
    pub fn detached(dir: &Path, clock: Arc<dyn Clock>, rng: Box<dyn Rng>) -> Hub {
        Hub::new(dir, HubConfig::default(), clock, rng, OnceLock::new())
    }

    fn new(
        dir: &Path,
        config: HubConfig,
        clock: Arc<dyn Clock>,
        rng: Box<dyn Rng>,
        store: OnceLock<Arc<Store>>,
    ) -> Hub {
        Hub { dir: dir.to_owned(), config, store, clock, rng: Mutex::new(rng) }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration, as read at start.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The random generator (one user at a time).
    pub fn rng(&self) -> MutexGuard<'_, Box<dyn Rng>> {
        self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The TUF repository, in the directory the replicas share (`[store] shared_dir`; the data directory by default).
    pub fn repo(&self) -> TufRepo {
        TufRepo::new(&self.config.store.shared(&self.dir), self.config.repository)
    }

    /// The open store, opened now if this hub does not hold it yet.
    pub fn store(&self) -> Result<&Arc<Store>, StoreError> {
        if let Some(store) = self.store.get() {
            return Ok(store);
        }
        let store = Arc::new(Store::open_with(&self.dir, self.clock.clone(), &self.config.limits)?);
        Ok(self.store.get_or_init(|| store))
    }
}

/// How often the periodic jobs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// Re-signing snapshot, timestamp and the revocation list before they expire.
    pub resign: Duration,
    /// The longest the rollout judge sleeps: it wakes at the earliest release deadline (a soak end,
    /// `Rollout::next_deadline`) and at this bound at the latest; reports are judged as they arrive.
    pub rollouts: Duration,
    /// Pruning telemetry past its retention.
    pub retention: Duration,
    /// Looking for a new revocation list to push to connected devices.
    pub revocation_watch: Duration,
    /// Running the viability controller (when a policy is registered): it stores proposals, never acts.
    pub controller: Duration,
    /// On PostgreSQL: trying to take the leader lease, or checking this replica still holds it.
    pub lease: Duration,
}

impl Default for Periods {
    fn default() -> Self {
        Periods {
            resign: Duration::from_secs(60),
            rollouts: crate::rollouts::MAX_TICK_WAIT,
            retention: Duration::from_secs(3600),
            revocation_watch: Duration::from_secs(1),
            controller: Duration::from_secs(3600),
            lease: crate::replicas::LEASE_PERIOD,
        }
    }
}

/// What the service needs to run.
pub struct ServiceConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// `hub.toml`, read once.
    pub hub: HubConfig,
    /// The hub's QUIC identity (agents pin its key).
    pub identity: Identity,
    /// UDP address devices connect to.
    pub bind: SocketAddr,
    /// Where Prometheus metrics are served over HTTP, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The web console, if served (its actions run through `admin`).
    pub console: Option<crate::console::ConsoleConfig>,
    /// Runs admin commands arriving on the socket; `None` serves no admin socket.
    pub admin: Option<Arc<dyn admin::Handler<Hub>>>,
    /// Bounds on admin requests.
    pub admin_limits: admin::Limits,
    /// How often the periodic jobs run.
    pub periods: Periods,
    /// How long telemetry is kept.
    pub telemetry_retention: Duration,
    /// Most device connections served at once (devices keep theirs open between checks).
    pub max_connections: usize,
    /// A fault to run with on purpose, for simulations that must show they catch it; `None` in production.
    pub sim_fault: Option<SimFault>,
}

/// A deliberate fault (hidden `serve --sim-fault`): the fleet simulator's tests run a hub broken this way to show
/// its scenarios fail when the hub misbehaves. Never set outside a simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Revocation notices are never pushed: connected devices learn of a revocation only at their next poll.
    NoRevocationPush,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig").field("dir", &self.dir).field("bind", &self.bind).finish_non_exhaustive()
    }
}

impl ServiceConfig {
    /// A service for the hub in `dir` with configuration `hub`, on the default port, every other setting at its
    /// default (no metrics, no admin socket).
    pub fn new(dir: &Path, hub: HubConfig, identity: Identity) -> Self {
        ServiceConfig {
            dir: dir.to_owned(),
            hub,
            identity,
            bind: SocketAddr::from(([0, 0, 0, 0], ServeConfig::DEFAULT_PORT)),
            metrics: None,
            console: None,
            admin: None,
            admin_limits: admin::Limits::default(),
            periods: Periods::default(),
            telemetry_retention: crate::telemetry::DEFAULT_RETENTION,
            max_connections: ServeConfig::DEFAULT_MAX_CONNECTIONS,
            sim_fault: None,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The hub has no TUF repository to serve.
    #[error("no TUF repository yet in {}: run `outpost-hub keys generate --offline-dir DIR` first", dir.display())]
    NoRepository {
        /// The data directory.
        dir: PathBuf,
    },
    /// The admin socket could not be set up (another service owns it, or it could not be created).
    #[error(transparent)]
    Admin(#[from] admin::ListenError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// On PostgreSQL: the other replicas' notices could not be listened for.
    #[error("listening for the other replicas' notices: {0}")]
    Notices(#[source] crate::store::postgres::PgError),
    /// The QUIC endpoint could not be bound.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The web console could not be set up.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    /// The metrics endpoint could not be bound.
    #[error("binding the metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
}

/// A started service: its store is open and its sockets bound; [`Running::run`] serves.
pub struct Running {
    dir: PathBuf,
    key: String,
    handler: Option<Arc<dyn admin::Handler<Hub>>>,
    admin_limits: admin::Limits,
    periods: Periods,
    telemetry_retention: Duration,
    sim_fault: Option<SimFault>,
    hub: Arc<Hub>,
    backend: Arc<HubBackend>,
    server: Server<HubBackend>,
    admin: Option<admin::Listener>,
    metrics: Option<tokio::net::TcpListener>,
    console: Option<crate::console::Console>,
    /// On PostgreSQL: every replica's notices, from before the sockets were bound.
    notices: Option<crate::store::postgres::Notices>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Opens the store and binds the sockets (admin first: a second service on the same directory is refused before
/// it touches anything). Must run inside a tokio runtime.
pub async fn start(config: ServiceConfig, clock: Arc<dyn Clock>, rng: Box<dyn Rng>) -> Result<Running, ServiceError> {
    let repo = TufRepo::new(&config.hub.store.shared(&config.dir), config.hub.repository);
    if !repo.exists() {
        return Err(ServiceError::NoRepository { dir: config.dir.clone() });
    }
    let admin = match config.admin {
        Some(_) => Some(admin::Listener::bind(&config.dir)?),
        None => None,
    };
    let store = Arc::new(Store::open_with(&config.dir, clock.clone(), &config.hub.limits)?);
    let notices = match store.postgres() {
        Some(pg) => Some(pg.listen().map_err(ServiceError::Notices)?),
        None => None,
    };
    let hub = Arc::new(Hub::new(&config.dir, config.hub.clone(), clock.clone(), rng, OnceLock::from(store.clone())));
    let backend = Arc::new(HubBackend::with_store(&config.dir, repo, &config.hub, clock, store));
    let key = config.identity.public_key().to_hex();
    let mut serve = ServeConfig::new(config.identity);
    serve.bind = config.bind;
    serve.max_connections = config.max_connections;
    let server = Server::bind(serve, backend.clone())?;
    let metrics = match config.metrics {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| ServiceError::Metrics { addr, source })?)
        }
        None => None,
    };
    let console = match config.console {
        Some(c) => Some(
            crate::console::Console::bind(c, hub.clone(), config.admin.clone(), after_command(&hub, &backend)).await?,
        ),
        None => None,
    };
    Ok(Running {
        dir: config.dir,
        key,
        handler: config.admin,
        admin_limits: config.admin_limits,
        periods: config.periods,
        telemetry_retention: config.telemetry_retention,
        sim_fault: config.sim_fault,
        hub,
        backend,
        server,
        admin,
        metrics,
        console,
        notices,
    })
}

/// What runs after every admin command (from the socket or the console): the backend drops its caches so the
/// effect is served at once, and on PostgreSQL every replica is told (with the revocation list's version, so a
/// package revoked here is pushed to the devices connected to the others).
fn after_command(hub: &Arc<Hub>, backend: &Arc<HubBackend>) -> Arc<dyn Fn() + Send + Sync> {
    let (hub, backend) = (hub.clone(), backend.clone());
    Arc::new(move || {
        backend.forget_cached();
        let Some(pg) = hub.store().ok().and_then(|s| s.postgres()) else { return };
        let notice = match Director::new(&hub.repo()).revocations() {
            Ok(list) => crate::store::postgres::Notice::Revocations(list.version),
            Err(_) => crate::store::postgres::Notice::Changed,
        };
        if let Err(e) = pg.notify(&notice) {
            tracing::warn!(error = %e, "telling the other replicas about an admin command");
        }
    })
}

/// Runs the hub in `config.dir` until `shutdown` resolves: [`start`], then [`Running::run`].
pub async fn run(
    config: ServiceConfig,
    clock: Arc<dyn Clock>,
    rng: Box<dyn Rng>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    start(config, clock, rng).await?.run(shutdown).await;
    Ok(())
}

impl Running {
    /// The UDP address devices connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The address `/metrics` is served on, if it is (with the port chosen when the config asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The web console's URL, if it is served.
    pub fn console_url(&self) -> Option<String> {
        self.console.as_ref().map(crate::console::Console::url)
    }

    /// The backend serving devices (for tests to look at what a device would be served).
    pub fn backend(&self) -> &Arc<HubBackend> {
        &self.backend
    }

    /// The hub admin commands run against.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Serves devices and admin commands and runs the periodic jobs until `shutdown` resolves; then stops them
    /// all and removes the admin socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Running {
            dir,
            key,
            handler,
            admin_limits,
            periods,
            telemetry_retention,
            sim_fault,
            hub,
            backend,
            server,
            admin,
            metrics,
            console,
            notices,
        } = self;
        let gate = backend.gate();
        if !gate.required() {
            tracing::warn!("[attestation] required = false in hub.toml: devices are served without attestation");
        } else {
            match gate.readiness() {
                Ok(serial) => {
                    tracing::info!(serial, "attestation required; reference values serial {serial} installed")
                }
                Err(why) => tracing::warn!(
                    "attestation is required but nobody can be attested, so nothing will be served: {why}"
                ),
            }
        }
        if let Ok(addr) = server.local_addr() {
            tracing::info!(%addr, hub_key = %key, "serving on {addr} (udp), hub key {key}");
        }
        let mut jobs = tokio::task::JoinSet::new();
        if let (Some(listener), Some(handler)) = (admin, handler) {
            let socket = admin::socket_path(&dir);
            tracing::info!(socket = %socket.display(), "admin commands on {}", socket.display());
            jobs.spawn(listener.run(hub.clone(), handler, admin_limits, after_command(&hub, &backend)));
        }
        if let Some(listener) = metrics {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "metrics on http://{addr}/metrics");
            }
            jobs.spawn(serve_metrics(listener, backend.clone()));
        }
        if let Some(console) = console {
            let url = console.url();
            tracing::info!(url = %url, "console on {url}");
            jobs.spawn(console.run());
        }
        // Revocations reach connected agents at once: a notice on their open connection whenever the list moves
        // (on PostgreSQL also when another replica says it moved, and then caches go with what it changed).
        let repo = hub.repo();
        if sim_fault == Some(SimFault::NoRevocationPush) {
            tracing::warn!(
                "SIMULATION FAULT: revocation notices are not pushed (serve --sim-fault no-revocation-push)"
            );
        } else if let Some(notices) = notices {
            let handler = Arc::new(ReplicaNotices { backend: backend.clone(), repo, notifier: server.notifier() });
            jobs.spawn(replicas::follow_notices(notices, periods.revocation_watch, handler));
        } else {
            jobs.spawn(outpost_net::server::push_revocations(server.notifier(), periods.revocation_watch, move || {
                Director::new(&repo).revocations().ok().map(|l| l.version)
            }));
        }
        // One replica re-signs and ticks rollouts: on PostgreSQL the holder of the leader lease, else this hub.
        let leadership = match hub.store().ok().and_then(|s| s.postgres()) {
            Some(pg) => {
                let leadership = Leadership::contending();
                let lease = Arc::new(pg.lease(LeaseName::Leader));
                jobs.spawn(replicas::keep_lease(lease, leadership.clone(), periods.lease));
                leadership
            }
            None => Leadership::alone(),
        };
        jobs.spawn(every(periods.retention, "telemetry retention", {
            let (b, retention) = (backend.clone(), telemetry_retention);
            move || {
                let n = b.apply_telemetry_retention(retention).map_err(|e| e.to_string())?;
                if n > 0 {
                    tracing::info!(events = n, "telemetry: pruned {n} events past the retention period");
                }
                Ok(())
            }
        }));
        jobs.spawn(judge_rollouts(backend.clone(), periods.rollouts, leadership.clone()));
        jobs.spawn(every(periods.resign, "re-signing online metadata", {
            let (hub, leadership) = (hub.clone(), leadership.clone());
            move || if leadership.leads() { resign(&hub) } else { Ok(()) }
        }));
        jobs.spawn(every(periods.controller, "viability controller", {
            let hub = hub.clone();
            move || if leadership.leads() { run_controller(&hub) } else { Ok(()) }
        }));
        server.run(shutdown).await;
        tracing::info!("shutting down");
        jobs.shutdown().await;
    }
}

/// Judges every staged rollout, says what happened, and sleeps until the earliest release deadline (at most
/// `bound`; after an error, `bound`). A replica that does not lead only waits.
async fn judge_rollouts(backend: Arc<HubBackend>, bound: Duration, leadership: Leadership) {
    loop {
        if !leadership.leads() {
            tokio::time::sleep(bound).await;
            continue;
        }
        let b = backend.clone();
        let judged = tokio::task::spawn_blocking(move || -> Result<Duration, String> {
            for happened in b.tick_rollouts().map_err(|e| e.to_string())? {
                happened.log();
            }
            b.rollout_wait().map_err(|e| e.to_string())
        })
        .await;
        let wait = match judged {
            Ok(Ok(wait)) => wait.min(bound),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "judging rollouts");
                bound
            }
            Err(e) => {
                tracing::error!(error = %e, "judging rollouts task");
                bound
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A replica's notice machinery ([`replicas::follow_notices`]): the backend's caches and the devices connected here.
struct ReplicaNotices {
    backend: Arc<HubBackend>,
    repo: TufRepo,
    notifier: outpost_net::server::Notifier,
}

impl replicas::NoticeHandler for ReplicaNotices {
    fn forget(&self, notice: &Notice) {
        match notice {
            // The store's change log has the key already; nothing cached here depends on a device's other fields.
            Notice::Device(_) => {}
            Notice::DeviceStatus(_) => self.backend.forget_revoked(),
            Notice::Revocations(_) | Notice::Changed | Notice::Resync => self.backend.forget_cached(),
        }
    }
    fn revocations(&self) -> Option<u64> {
        Director::new(&self.repo).revocations().ok().map(|l| l.version)
    }
    fn push(&self, version: u64) {
        self.notifier.broadcast(&outpost_shared::wire::Response::Notice { revocations: version });
    }
}

/// Keeps online metadata fresh: snapshot, timestamp and the revocation list are re-signed before they expire.
fn resign(hub: &Hub) -> Result<(), String> {
    let repo = hub.repo();
    let now = hub.clock().wall();
    let resigned = repo.refresh_online(now).map_err(|e| e.to_string())?;
    let director = Director::new(&repo);
    let list = director.revocations().map_err(|e| e.to_string())?;
    if list.version > 0 && list.expires <= now + hub.config().repository.resign_margin_secs {
        director.refresh_revocations(now).map_err(|e| e.to_string())?;
    }
    if resigned {
        tracing::info!("re-signed snapshot and timestamp");
    }
    Ok(())
}

/// One periodic controller run: proposals stored for `controller list`, nothing carried out. Without a registered
/// policy there is nothing to run.
fn run_controller(hub: &Hub) -> Result<(), String> {
    let store = hub.store().map_err(|e| e.to_string())?;
    if store.registry().controller_policy().map_err(|e| e.to_string())?.is_none() {
        return Ok(());
    }
    let (_, proposals) =
        crate::controller::run(store, &hub.repo(), None, hub.clock().wall()).map_err(|e| e.to_string())?;
    let stored = proposals.iter().filter(|(id, _)| id.is_some()).count();
    if stored > 0 {
        tracing::info!(
            proposals = stored,
            "controller: {stored} proposal(s) to review (`outpost-hub controller list`)"
        );
    }
    Ok(())
}

/// Runs `job` on the blocking pool every `period` (the first time at once), reporting its errors as `what`.
async fn every(period: Duration, what: &'static str, job: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
    let job = Arc::new(job);
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let j = job.clone();
        match tokio::task::spawn_blocking(move || j()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(job = what, error = %e, "{what}"),
            Err(e) => tracing::error!(job = what, error = %e, "{what} task"),
        }
    }
}

/// Serves the OpenMetrics exposition at `/metrics`.
async fn serve_metrics(listener: tokio::net::TcpListener, backend: Arc<HubBackend>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let b = backend.clone();
            let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = outpost_shared::metrics::Format::negotiate(accept);
            async move {
                use axum::http::{StatusCode, header};
                let failed = |e: String| {
                    tracing::error!(error = %e, "metrics");
                    (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], e)
                };
                match tokio::task::spawn_blocking(move || b.metrics_as(format).map_err(|e| e.to_string())).await {
                    Ok(Ok(text)) => (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type())], text),
                    Ok(Err(e)) => failed(e),
                    Err(e) => failed(e.to_string()),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics endpoint");
    }
}
