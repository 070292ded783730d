//! The agent's update driver: performs what `shared::update::lanes` decides for each capability the device runs —
//! TUF refresh (from the hub over QUIC, or from a static mirror), director bundle checks, resumable downloads,
//! staging into the capability's inactive slot, activation — and persists the lanes' state atomically after every
//! step, so a `kill -9` anywhere resumes or falls back safely.
//!
//! Only this module touches the network and the slots; every decision is the sans-IO loop's.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use outpost_attestation::identity::Identity;
use outpost_shared::clock::Clock;
use outpost_shared::director::{
    self, Assignment, Bundle, DIRECTOR_TARGET, DirectorKeyDoc, ListedTarget, RevocationList,
};
use outpost_shared::policy::PackageFacts;
use outpost_shared::rng::SeededRng;
use outpost_shared::route::select::Skip;
use outpost_shared::telemetry::{self, EventKind, Histogram};
use outpost_shared::update::failover::Replicas;
use outpost_shared::update::lanes::Lanes;
use outpost_shared::update::{Action, AgentState, Event, HealthPolicy, Installed, Refusal, Slot, Target, Timing};
use outpost_shared::{Digest, Manifest, Package, PackageLimits, canonical};

use crate::config::AgentConfig;
use crate::device::{self, Layout};
#[cfg(feature = "gateway")]
use crate::gateway::{self, FirmwareUpdate};
use crate::inference::{ModelHandle, Served};
#[cfg(feature = "mirror")]
use crate::mirror::Mirror;
use crate::site_policy::SitePolicy;
use crate::transport::{self, Transport, TransportError};
use outpost_net::client::{ClientConfig, HubClient};

mod install;
pub mod lanes;
mod router;
mod shadow;
pub use install::load_slot;
use install::refuse_non_model;

/// Why an update check failed. The device keeps serving what it serves.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The hub could not be reached or misbehaved on the wire.
    #[error("hub: {0}")]
    Hub(outpost_net::client::ClientError),
    /// The hub serves this device nothing: its evidence was not appraised as good (unknown or revoked device,
    /// agent binary not in the reference values, a model it should not run...), or its attestation lapsed. The
    /// message is the hub's `not attested: <reason>`. The device keeps serving its model.
    #[error("hub refused to serve this device: {0}")]
    NotAttested(String),
    /// TUF verification failed (rollback, freeze, mix-and-match, bad signatures...).
    #[error("TUF: {0}")]
    Tuf(#[from] sigstore_tuf::Error),
    /// The device's trusted TUF root could not be read or is not root metadata.
    #[error("TUF: {0}")]
    TrustedRoot(#[from] crate::tuf::TufError),
    /// The static mirror client could not be set up (its configuration, CA file or TLS).
    #[cfg(feature = "mirror")]
    #[error("mirror: {0}")]
    Mirror(#[from] crate::mirror::MirrorError),
    /// A package download failed on the way (TUF failures are [`CheckError::Tuf`]).
    #[error("download: {0}")]
    Transport(TransportError),
    /// The director key document TUF lists is not usable.
    #[error("director key: {0}")]
    DirectorKey(#[from] director::DirectorKeyError),
    /// The director bundle failed its checks.
    #[error("director: {0}")]
    Director(#[from] director::DirectorError),
    /// Local storage failed.
    #[error("device storage: {0}")]
    Io(#[from] std::io::Error),
    /// Something the hub sent is not usable.
    #[error("{0}")]
    Invalid(String),
    /// Firmware for a secondary does not match what the director signed for it.
    #[cfg(feature = "gateway")]
    #[error("firmware: {0}")]
    Gateway(#[from] gateway::GatewayError),
    /// The hub asked for a part this build leaves out (firmware for secondaries without the `gateway` feature).
    #[error(transparent)]
    NotBuilt(#[from] crate::NotBuilt),
    /// The whole check took longer than `[updates] check_deadline_secs` (a hub, site node or mirror that sends a
    /// byte now and then, or a link too slow for the package): it was cut short, its connection dropped, and the
    /// next check retries (a download resumes where it stopped).
    #[error("the update check did not finish within its deadline of {0:?}; retrying at the next check")]
    Deadline(std::time::Duration),
}

impl CheckError {
    /// Whether the check failed because the hub replica could not be reached or stopped answering (connecting
    /// failed, the connection was lost or went silent, the check's deadline passed): the agent then moves to the
    /// next replica of `[hub] addresses`. A failure another replica would give too (refusals, TUF or director
    /// checks, local storage) does not count, nor does a static mirror's.
    pub fn hub_unreachable(&self) -> bool {
        match self {
            CheckError::Hub(e) => crate::upstream::unreachable(e),
            CheckError::Transport(e) => crate::upstream::unreachable_in_chain(e),
            CheckError::Tuf(e) => crate::upstream::unreachable_in_chain(e),
            CheckError::Deadline(_) => true,
            _ => false,
        }
    }
}

impl From<outpost_net::client::ClientError> for CheckError {
    fn from(e: outpost_net::client::ClientError) -> Self {
        match crate::attest::not_attested_reason(&e) {
            Some(reason) => CheckError::NotAttested(reason.to_owned()),
            None => CheckError::Hub(e),
        }
    }
}

impl From<TransportError> for CheckError {
    fn from(e: TransportError) -> Self {
        match e.source_as::<outpost_net::client::ClientError>().and_then(crate::attest::not_attested_reason) {
            Some(reason) => CheckError::NotAttested(reason.to_owned()),
            None => CheckError::Transport(e),
        }
    }
}

/// The agent.
pub struct Agent {
    config: AgentConfig,
    layout: Layout,
    identity: Identity,
    clock: Arc<dyn Clock>,
    /// One update lane per capability.
    lanes: Lanes,
    /// What the inference API serves first: the primary lane's model, swapped atomically, so in-flight requests
    /// finish on the old model.
    models: Arc<ModelHandle>,
    /// The other lanes' model handles, by capability ([`Agent::handle_of`]).
    handles: std::collections::BTreeMap<String, Arc<ModelHandle>>,
    /// What [`Agent::state`] shows while the device has no lane.
    no_lane: AgentState,
    /// The last site-policy problem reported (said once).
    policy_note: Option<String>,
    client: Option<Arc<HubClient>>,
    /// A client endpoint shared with other agents in this process ([`Agent::share_endpoint`]); `None`: each
    /// connection opens its own UDP socket, as a device does.
    endpoint: Option<quinn::Endpoint>,
    /// The static mirror TUF metadata and targets come from (`[hub] mirror`), if any: one client for the agent's
    /// life, so its TLS setup and connection pool outlive a check.
    #[cfg(feature = "mirror")]
    mirror: Option<Arc<Mirror>>,
    /// The hub's attestation of `client`'s connection (`None`: not attested, or a server that does not attest).
    attested: Option<outpost_net::client::Attested>,
    /// The newest revocation-list version the hub had announced on the connection when a check began: that check
    /// read a list at least as new, so [`Agent::notices`] does not report it again.
    notices_checked: u64,
    /// The TPM this device attests with (`[attestation] tpm`), if any.
    tpm: Option<Arc<crate::attest::DeviceTpm>>,
    /// This start's boot count (persisted in the device directory), stated in evidence.
    bootcount: u64,
    /// Reports waiting for a connection (telemetry proper arrives with the fleet issue).
    outbox: Vec<String>,
    /// Per capability, the model loaded and smoke-tested by the last successful stage, ready to swap in at once.
    staged: std::collections::BTreeMap<String, Arc<Served>>,
    /// Per capability, while a package is on trial, the model it replaced, still loaded: a rollback is a pointer
    /// swap.
    previous: std::collections::BTreeMap<String, Arc<Served>>,
    /// Firmware checked for this gateway's secondaries at the last check, per secondary device id.
    #[cfg(feature = "gateway")]
    firmware: Vec<(String, Result<FirmwareUpdate, CheckError>)>,
    /// The site policy in force (the last one that loaded).
    policy: Option<SitePolicy>,
    /// What the assigned packages' signed metadata stated when the policy judged them before download.
    advertised: std::collections::BTreeMap<Digest, PackageFacts>,
    /// Telemetry waiting for the hub (durable); `None` if the queue file could not be opened.
    telemetry: Option<crate::telemetry::Queue>,
    /// Inferences since the last check, per model: count, errors, latency.
    inferences: std::collections::BTreeMap<Digest, (u64, u64, Histogram)>,
    /// The routes the inference API serves, if any: their quality goes out as telemetry at each check.
    routes: Option<Arc<crate::inference::Routes>>,
    /// The router package installed into `routes`, if any.
    router: Option<Digest>,
    /// Router packages that did not install (their digests, the last reason), reported beside `router`.
    router_failed: outpost_shared::update::lanes::RouterReport,
    /// Shadow comparisons not yet in a report that reached the hub.
    pending_shadow: Option<outpost_shared::update::ShadowReport>,
    /// Draws the update loop's poll jitter.
    rng: SeededRng,
    /// The hub's replicas (`[hub] addresses`) and the one this agent talks to.
    replicas: Replicas<std::net::SocketAddr>,
}

/// Events the telemetry queue holds at most; beyond, new events are dropped and counted.
pub const TELEMETRY_CAPACITY: u64 = 100_000;
/// Events sent to the hub per batch.
pub const TELEMETRY_BATCH: usize = 256;

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("dir", &self.layout.root()).field("lanes", &self.lanes.state()).finish()
    }
}

impl Agent {
    /// Opens the device directory named by `config`, restoring persisted state and serving what was active.
    pub fn open(config: AgentConfig, clock: Arc<dyn Clock>) -> Result<Agent, CheckError> {
        Self::open_with(config, clock, Arc::new(ModelHandle::new()))
    }

    /// Like [`Agent::open`], activating models into `models` (the handle the inference API serves from).
    pub fn open_with(
        config: AgentConfig,
        clock: Arc<dyn Clock>,
        models: Arc<ModelHandle>,
    ) -> Result<Agent, CheckError> {
        let layout = Layout::new(&config.data_dir);
        let identity = Identity::load(&layout.identity()).map_err(|e| CheckError::Invalid(e.to_string()))?;
        let state = Self::load_lanes(&layout)?;
        let bootcount = crate::attest::next_bootcount(&layout)?;
        let tpm = match config.tpm.clone() {
            None => None,
            Some(t) => {
                Some(Arc::new(crate::attest::DeviceTpm::new(t).map_err(|e| CheckError::Invalid(e.to_string()))?))
            }
        };
        let health = HealthPolicy { inferences: config.updates.health_inferences, seconds: config.updates.health_secs };
        #[cfg(feature = "mirror")]
        let mirror = config.mirror.as_ref().map(Mirror::new).transpose()?.map(Arc::new);
        let timing = Timing {
            poll_secs: config.updates.poll_secs,
            jitter_secs: config.updates.jitter_secs,
            ..Timing::default()
        };
        let rng = SeededRng::new(local_seed(&identity, clock.as_ref(), b"poll jitter"));
        let memory_limit = config.updates.memory_limit_bytes;
        let replicas = crate::upstream::replicas(&config);
        let mut agent = Agent {
            config,
            layout,
            identity,
            clock,
            lanes: Lanes::new(state, health, timing, memory_limit),
            models,
            handles: std::collections::BTreeMap::new(),
            no_lane: AgentState::new(0),
            policy_note: None,
            client: None,
            endpoint: None,
            #[cfg(feature = "mirror")]
            mirror,
            attested: None,
            notices_checked: 0,
            tpm,
            bootcount,
            outbox: Vec::new(),
            staged: std::collections::BTreeMap::new(),
            previous: std::collections::BTreeMap::new(),
            #[cfg(feature = "gateway")]
            firmware: Vec::new(),
            policy: None,
            advertised: std::collections::BTreeMap::new(),
            telemetry: None,
            inferences: std::collections::BTreeMap::new(),
            routes: None,
            router: None,
            router_failed: Default::default(),
            pending_shadow: None,
            rng,
            replicas,
        };
        agent.telemetry = agent.open_telemetry();
        agent.reload_policy();
        let mut clean = false;
        for state in agent.lanes.states_mut() {
            clean |= std::mem::take(&mut state.clean_shutdown);
        }
        let actions = agent.lanes.started(agent.clock.wall(), clean);
        agent.apply_policy();
        agent.save()?;
        agent.perform_local(actions)?;
        Ok(agent)
    }

    /// Loads the configured site policy again if its files changed; a policy that does not load is reported and
    /// the last good one stays in force.
    pub fn reload_policy(&mut self) {
        let Some(source) = self.config.policy.clone() else {
            self.policy = None;
            self.apply_policy();
            return;
        };
        let (loaded, error) = SitePolicy::load_or_last_good(&source, &self.layout.policy());
        if let Some(e) = error {
            let kept = match &loaded {
                Some(p) => format!("keeping the last good policy {}", p.digest().short()),
                None => "no good policy on record: packages are refused until one loads".into(),
            };
            let message = format!("site policy not loaded: {e}; {kept}");
            let said = [self.policy_note.as_deref(), self.state().last_error.as_deref()];
            if !said.contains(&Some(message.as_str())) {
                tracing::warn!("{message}");
                self.outbox.push(message.clone());
                // Said once, and kept as the primary lane's last error (for `status` and the hub).
                let primary = self.lanes.primary().map(str::to_owned);
                if let Some(state) = primary.and_then(|p| self.lanes.lane_state_mut(&p)) {
                    state.last_error = Some(message.clone());
                }
                self.policy_note = Some(message);
            }
        } else {
            self.policy_note = None;
        }
        if loaded.as_ref().map(SitePolicy::digest) != self.policy.as_ref().map(SitePolicy::digest) || loaded.is_none() {
            self.policy = loaded;
        }
        self.apply_policy();
    }

    /// Records a graceful stop, so the next start continues a health window instead of rolling back.
    pub fn shutdown(mut self) -> Result<(), CheckError> {
        for state in self.lanes.states_mut() {
            state.clean_shutdown = true;
        }
        Ok(self.save()?)
    }

    /// The primary lane's persisted update state (a single-model agent's whole state; see [`Agent::lanes`] for
    /// every capability's).
    pub fn state(&self) -> &AgentState {
        self.lanes.primary_state().unwrap_or(&self.no_lane)
    }

    /// The primary lane's model serving now, if any (see [`Agent::active_of`]).
    pub fn active(&self) -> Option<Arc<Served>> {
        self.models.current()
    }

    /// The primary lane's package on trial in a health window, if any.
    pub fn on_trial(&self) -> Option<Digest> {
        match &self.state().phase {
            outpost_shared::update::Phase::Health { target, .. } => Some(target.digest),
            _ => None,
        }
    }

    fn save(&self) -> std::io::Result<()> {
        device::save_device_state(&self.layout, &self.lanes.state())
    }

    fn open_telemetry(&self) -> Option<crate::telemetry::Queue> {
        // The stream id only has to differ between queue files: this device, now.
        let seed = local_seed(&self.identity, self.clock.as_ref(), b"telemetry stream");
        let path = self.layout.root().join("telemetry.redb");
        match crate::telemetry::Queue::open(&path, TELEMETRY_CAPACITY, &mut SeededRng::new(seed)) {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(error = %e, "telemetry off");
                None
            }
        }
    }

    /// Queues one telemetry event (durably); a full queue drops it and counts the drop.
    fn queue(&self, kind: EventKind) {
        if let Some(q) = &self.telemetry
            && let Err(e) = q.push(kind, self.clock.wall())
        {
            tracing::warn!(error = %e, "telemetry event lost");
        }
    }

    /// Counts one inference on `model` for the next telemetry batch.
    pub fn record_inference_stats(&mut self, model: Digest, ok: bool, latency: std::time::Duration) {
        let entry = self.inferences.entry(model).or_default();
        entry.0 += 1;
        entry.1 += u64::from(!ok);
        entry.2.record(latency);
    }

    /// Routes requests by the router package the assignment names (installing the one kept from the last run at
    /// once), and reports what `routes` serve (requests, errors, fallbacks, latency per route and candidate) in
    /// telemetry at each check.
    /// The caller routes to the agent's own handle (`Routes::serve_handle`); the other capabilities' handles are
    /// added here, and as they come.
    pub fn set_routes(&mut self, routes: Arc<crate::inference::Routes>) {
        self.restore_router(&routes);
        for handle in self.handles.values() {
            routes.serve_handle(handle.clone());
        }
        self.routes = Some(routes);
    }

    /// Events waiting for the hub, and events dropped at the bound.
    pub fn telemetry_backlog(&self) -> Option<(u64, u64)> {
        let q = self.telemetry.as_ref()?;
        Some((q.len().ok()?, q.dropped().ok()?))
    }

    /// Sends queued telemetry in batches until the queue is empty; each batch leaves the queue only once the
    /// hub says it is stored.
    async fn drain_telemetry(&mut self, client: &HubClient) -> Result<(), CheckError> {
        let Some(q) = &self.telemetry else { return Ok(()) };
        loop {
            let batch = q.peek_batch(TELEMETRY_BATCH).map_err(|e| CheckError::Invalid(e.to_string()))?;
            if batch.events.is_empty() {
                return Ok(());
            }
            let body = batch
                .encode(&outpost_shared::telemetry::BatchLimits::default())
                .map_err(|e| CheckError::Invalid(e.to_string()))?;
            let up_to = client.telemetry(&body).await?;
            q.ack(up_to).map_err(|e| CheckError::Invalid(e.to_string()))?;
        }
    }

    /// Takes one inference outcome from the inference API (`crate::inference::outcomes`): into the counts for the
    /// next telemetry batch and, when it ran on the package on trial, into the health window (a failure rolls
    /// back).
    pub fn record_outcome(&mut self, outcome: crate::inference::Outcome) -> Result<(), CheckError> {
        let crate::inference::Outcome { model, ok, took } = outcome;
        match took {
            Some(took) => self.record_inference_stats(model, ok, took),
            None => {
                // A failure kept aside at the full queue: counted, its latency unknown.
                let entry = self.inferences.entry(model).or_default();
                entry.0 += 1;
                entry.1 += u64::from(!ok);
            }
        }
        if self.lanes.on_trial(&model).is_some() {
            let actions = self.step(&Event::Inference { ok }, |lanes, now| lanes.inference(now, model, ok))?;
            self.perform_local(actions)?;
            if !ok {
                tracing::warn!(package = model.short(), "inference failed during the health window: rolled back");
            }
        }
        Ok(())
    }

    /// Records one inference's outcome for the health window of the primary lane's package on trial.
    pub fn record_inference(&mut self, ok: bool) -> Result<(), CheckError> {
        let Some(model) = self.on_trial() else { return Ok(()) };
        let actions = self.step(&Event::Inference { ok }, |lanes, now| lanes.inference(now, model, ok))?;
        self.perform_local(actions)
    }

    /// Lets time-based decisions (the end of a health window) happen once the update loop's deadline for them
    /// has come; before that it does nothing (and writes nothing).
    pub fn tick(&mut self) -> Result<(), CheckError> {
        if self.lanes.health_deadline().is_none_or(|t| t > self.clock.wall()) {
            return Ok(());
        }
        let actions = self.step(&Event::Tick, |lanes, now| lanes.tick(now))?;
        self.perform_local(actions)
    }

    /// When the update loop next needs this driver (the next check, the end of a health window), as wall time.
    pub fn next_deadline(&self) -> u64 {
        self.lanes.next_deadline(self.clock.wall())
    }

    /// How long to sleep until [`next_deadline`](Agent::next_deadline) (zero: it has come).
    pub fn until_next_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.next_deadline().saturating_sub(self.clock.wall()))
    }

    /// Whether an update check is due now (poll interval with jitter over, a deferral's window open, the
    /// attestation to renew, or [`check_now`](Agent::check_now)).
    pub fn check_due(&self) -> bool {
        self.lanes.check_due(self.clock.wall())
    }

    /// Makes an update check due at once (the hub pushed a notice).
    pub fn check_now(&mut self) {
        self.lanes.checks.check_now();
    }

    /// The connection to the hub, attested: a new one enrols first if `init --token` left a token, then presents
    /// evidence. An attestation about to expire is renewed on a new connection.
    async fn connect(&mut self) -> Result<Arc<HubClient>, CheckError> {
        let due = self.lanes.checks.renewal_due(self.clock.wall());
        if let Some(c) = &self.client
            && c.connection().close_reason().is_none()
            && !due
        {
            return Ok(c.clone());
        }
        self.disconnect();
        let mut config = ClientConfig::new(*self.replicas.current(), self.config.hub_key);
        config.endpoint = self.endpoint.clone();
        let client = Arc::new(HubClient::connect(&self.identity, &config).await?);
        if crate::attest::enroll_if_pending(&client, &self.layout, self.tpm.as_ref()).await? {
            tracing::info!("enrolled with the hub using the one-time token");
        }
        let facts = crate::attest::Facts {
            bootcount: self.bootcount,
            model: self.state().active.as_ref().map(|i| i.target.digest),
            policy: self.policy.as_ref().map(SitePolicy::digest),
        };
        match crate::attest::attest(&client, &self.identity, &facts, self.tpm.as_ref()).await? {
            crate::attest::Outcome::Attested(a) => self.attested = Some(a),
            crate::attest::Outcome::NotRequired => {}
        }
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Revocation notices pushed by the hub on the current connection, if connected: wake on `changed()` and
    /// check at once. (Each new connection has its own; ask again after every check.) A notice a check has already
    /// acted on is marked seen: the receiver reports only what came after (else a loop that asks after every check
    /// would check again at once, for ever — the soak found agents checking ~140 times a second).
    pub fn notices(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let mut notices = self.client.as_ref().filter(|c| c.connection().close_reason().is_none())?.notices();
        if *notices.borrow() <= self.notices_checked {
            notices.mark_unchanged();
        }
        Some(notices)
    }

    /// Opens this agent's connections on `endpoint`, a UDP socket shared with other agents of this process (a
    /// fleet simulation: many devices, a few sockets) instead of one socket per connection.
    pub fn share_endpoint(&mut self, endpoint: quinn::Endpoint) {
        self.endpoint = Some(endpoint);
    }

    /// Drops the connection to the hub, so the next check connects, handshakes and attests afresh (a device
    /// that does not keep its connection between checks; the agent itself keeps it).
    pub fn disconnect(&mut self) {
        // Closed explicitly: the task receiving the hub's notices holds the connection too, and would keep it
        // (and its keep-alives) going after the last handle here is dropped.
        if let Some(client) = self.client.take() {
            let code = quinn::VarInt::from_u32(outpost_shared::wire::codes::CLOSE_NORMAL);
            client.connection().close(code, b"done");
        }
        self.attested = None;
    }

    /// The hub's attestation of the current connection, if any.
    pub fn attested(&self) -> Option<outpost_net::client::Attested> {
        self.attested
    }

    /// One update check: refresh TUF, fetch and verify the director bundle, and carry out whatever the loop
    /// decides (download, stage, activate) until it waits for the health window or for the next check; then
    /// send reports and queued telemetry. A failed check is itself queued as telemetry.
    ///
    /// A hub that stops serving this connection (`NotAttested`: revoked, or the result lapsed) ends the check
    /// with [`CheckError::NotAttested`] and the connection is dropped, so the next check attests afresh.
    pub async fn check(&mut self) -> Result<(), CheckError> {
        // `release` and `package` are filled in once the assignment names them.
        let span = tracing::info_span!(
            "check",
            device = %self.device_short(),
            release = tracing::field::Empty,
            package = tracing::field::Empty
        );
        tracing::Instrument::instrument(self.check_timed(), span).await
    }

    /// This device's key, short, as log fields carry it.
    pub fn device_short(&self) -> String {
        outpost_net::logging::short(&self.identity.public_key().to_hex()).to_owned()
    }

    async fn check_timed(&mut self) -> Result<(), CheckError> {
        // This check reads the newest revocation list: whatever the connection has announced so far is covered.
        let announced = self.client.as_ref().map_or(0, |c| *c.notices().borrow());
        self.notices_checked = self.notices_checked.max(announced);
        let started = self.clock.monotonic();
        let result = self.check_inner().await;
        let took = self.clock.monotonic().saturating_sub(started);
        self.models.metrics().checked(result.is_ok(), took.as_secs_f64());
        match &result {
            Ok(()) => tracing::debug!(took_ms = took.as_millis() as u64, "update check done"),
            Err(e) => {
                let ms = took.as_millis() as u64;
                tracing::warn!(error = %e, took_ms = ms, "update check failed (still serving what was active)")
            }
        }
        result
    }

    async fn check_inner(&mut self) -> Result<(), CheckError> {
        // Inference counts since the last check are queued first, so they are durable whatever happens next.
        for (model, (count, errors, latency)) in std::mem::take(&mut self.inferences) {
            self.queue(EventKind::InferenceStats { model, count, errors, latency });
        }
        for (route, quality) in self.routes.as_ref().map(|r| r.take_quality()).unwrap_or_default() {
            self.queue(EventKind::RouteQuality { route, quality });
        }
        self.collect_shadow();
        // One deadline for the whole step: every part of it (QUIC to the hub or a site node, HTTP to a mirror)
        // has its own stall timeout, which a peer sending a byte now and then never trips.
        let deadline = std::time::Duration::from_secs(self.config.updates.check_deadline_secs);
        let result = match tokio::time::timeout(deadline, self.check_attested()).await {
            Ok(result) => result,
            Err(_) => {
                // The connection may be the slow peer: the next check connects afresh, to the next replica.
                self.disconnect();
                let e = CheckError::Deadline(deadline);
                self.fail_over(&e);
                Err(e)
            }
        };
        let result = match (&result, self.client.as_ref().and_then(|c| c.not_attested())) {
            (Err(_), Some(reason)) => {
                self.disconnect();
                Err(CheckError::NotAttested(reason))
            }
            _ => result,
        };
        if let Err(e) = &result {
            self.queue(EventKind::Error { what: format!("update check failed: {e}") });
            // The next check starts on a fresh connection: this one may be what failed (a hub that restarted
            // without resetting it, a path that went dead), and waiting out its idle timeout would fail every
            // check until then, each after a stall timeout (found by the fleet simulator's hub-restart scenario).
            self.disconnect();
        }
        // The loop schedules the next check, and the renewal of the attestation this check left.
        self.lanes.checks.attested(self.attested.map(|a| a.expires));
        self.lanes.check_ended(self.clock.wall(), &mut self.rng);
        result
    }

    /// The check on the current hub replica; when it cannot be reached (see [`CheckError::hub_unreachable`]), on
    /// the next, until one answers or every replica failed in this round (then the check fails, and the next
    /// round starts at the next poll, with its jitter, from the replica that answered last). Work in flight
    /// carries over: a download cut short resumes from its staging file on the next replica.
    async fn check_attested(&mut self) -> Result<(), CheckError> {
        loop {
            let result = self.check_replica().await;
            match &result {
                Err(e) if e.hub_unreachable() => {
                    self.disconnect();
                    if self.fail_over(e) {
                        continue;
                    }
                }
                // Reached: whatever the outcome, another replica would have given the same.
                _ => self.replicas.worked(),
            }
            return result;
        }
    }

    /// Moves to the next hub replica after `e`; false when that ends the round (every replica failed in turn).
    fn fail_over(&mut self, e: &CheckError) -> bool {
        let switch = self.replicas.failed(self.clock.wall(), &mut self.rng);
        crate::upstream::log_switch(&switch, e);
        !switch.round_over
    }

    /// The hub replica this agent talks to now (or tries next).
    pub fn hub_address(&self) -> std::net::SocketAddr {
        *self.replicas.current()
    }

    async fn check_replica(&mut self) -> Result<(), CheckError> {
        let client = self.connect().await?;
        // Metadata and target bytes come from the mirror when one is configured; the assignment and reports
        // always go to the hub.
        #[cfg(feature = "mirror")]
        let source: Arc<dyn Transport> = match &self.mirror {
            Some(mirror) => mirror.clone(),
            None => client.clone(),
        };
        #[cfg(not(feature = "mirror"))]
        let source: Arc<dyn Transport> = client.clone();
        let last_known = self.lanes.lanes().values().map(|l| l.state.last_known_time).max().unwrap_or(0);
        let now = self.clock.wall().max(last_known);
        let ts = jiff::Timestamp::from_second(i64::try_from(now).unwrap_or(i64::MAX))
            .map_err(|e| CheckError::Invalid(e.to_string()))?;
        let mut tuf = crate::tuf::updater(source.clone(), &self.layout.tuf())?;
        tuf.refresh(ts).await?;
        let director_key = DirectorKeyDoc::parse(&tuf.get_target(DIRECTOR_TARGET, ts).await?)?.public;

        let Some(bundle) = client.assignment().await? else {
            return self.flush_reports(&client).await;
        };
        let bundle: Bundle = canonical::from_slice(&bundle).map_err(|e| CheckError::Invalid(e.to_string()))?;
        let assignment: Assignment = director::open(&bundle.assignment, director::ASSIGNMENT_DOMAIN, &director_key)?;
        let revocations: RevocationList =
            director::open(&bundle.revocations, director::REVOCATIONS_DOMAIN, &director_key)?;
        let states = || self.lanes.lanes().values().map(|l| &l.state);
        let (revocations_seen, assignment_seen) = (
            states().map(|s| s.revocations_version).max().unwrap_or(0),
            states().map(|s| s.assignment_version).max().unwrap_or(0),
        );
        director::check_revocations(&revocations, revocations_seen, now)?;
        let revocations_version = revocations.version;
        let revoked: Vec<Digest> = revocations.revoked.into_iter().map(|r| r.digest).collect();
        let mut listed = Vec::new();
        let mut custom = std::collections::BTreeMap::new();
        // A release published between the refresh above and the assignment fetch: the assignment names a target
        // the metadata just verified does not list yet. One more refresh settles it (the hub lists a package in
        // TUF before its director assigns it); a target still missing after it is refused below.
        for fresh in [false, true] {
            if fresh {
                if listed.len() == assignment.all_targets().count() {
                    break;
                }
                tuf = crate::tuf::updater(source.clone(), &self.layout.tuf())?;
                tuf.refresh(ts).await?;
                listed.clear();
            }
            for t in assignment.all_targets() {
                if let Some(info) = tuf.get_target_info(&t.path, ts).await? {
                    if let Some(fields) = &info.custom {
                        custom.insert(t.path.clone(), fields.clone());
                    }
                    let sha256 = info.hashes.get("sha256").and_then(|h| h.parse::<Digest>().ok());
                    if let Some(sha256) = sha256 {
                        listed.push((t.path.clone(), ListedTarget { length: info.length, sha256 }));
                    }
                }
            }
        }
        let lookup = |p: &str| listed.iter().find(|(path, _)| path == p).map(|(_, l)| l.clone());
        director::check_assignment(&assignment, &self.identity.public_key().0, assignment_seen, now, lookup)?;
        if let Some(t) = assignment.targets.first() {
            let span = tracing::Span::current();
            span.record("package", t.sha256.short());
            if !t.rollout.is_empty() {
                span.record("release", t.rollout.as_str());
            }
        }
        self.reload_policy();
        self.advertised.clear();
        let assigned = self.lane_assignments(&assignment.targets, &custom, now);
        let version = assignment.version;
        let assign = Event::Assigned { version, target: None, revoked: revoked.clone(), refusal: None, retry: 0 };
        let mut queue: VecDeque<_> = self
            .step(&assign, |lanes, now| {
                let actions = lanes.assigned(now, version, assigned, revoked);
                // Persisted with the lanes: an older list is a replay.
                for state in lanes.states_mut() {
                    state.revocations_version = state.revocations_version.max(revocations_version);
                }
                actions
            })?
            .into();
        while let Some(lane_action) = queue.pop_front() {
            let capability = lane_action.capability.clone();
            let event = match lane_action.action {
                Action::Download(t) => {
                    let (event, unreachable) = self.download(&*source, &t).await;
                    let actions = self.feed(&capability, event)?;
                    if let Some(e) = unreachable {
                        // The replica is gone: the rest of this check (its reports too) goes to the next one,
                        // where the download resumes from what is on disk.
                        self.perform_local(actions)?;
                        return Err(e);
                    }
                    queue.extend(actions);
                    None
                }
                Action::Stage { target, slot } => Some(self.stage(&capability, &target, slot)),
                other => {
                    let capability = capability.clone();
                    self.perform_local(vec![outpost_shared::update::lanes::LaneAction { capability, action: other }])?;
                    None
                }
            };
            if let Some(event) = event {
                queue.extend(self.feed(&capability, event)?);
            }
        }
        #[cfg(feature = "gateway")]
        {
            self.firmware = self.check_firmware(&*source, &assignment.secondaries, &director_key).await;
        }
        #[cfg(not(feature = "gateway"))]
        self.refuse_firmware(&assignment.secondaries);
        self.update_shadow(&*source, assignment.shadow.as_ref()).await;
        self.update_router(&*source, assignment.router.as_ref()).await;
        self.flush_reports(&client).await
    }

    /// The site policy's verdict on `t` from its signed TUF custom fields (`None`: accept, or no policy). With a
    /// policy configured but none loadable, everything is refused.
    fn judge_before_download(&mut self, t: &Target, custom: Option<&serde_json::Value>, now: u64) -> Option<Refusal> {
        self.config.policy.as_ref()?;
        let Some(policy) = &self.policy else {
            return Some(Refusal {
                digest: t.digest,
                package: t.digest.short(),
                rule: "policy".into(),
                reason: "the site policy does not load and no good copy is on record".into(),
                until: None,
                policy: Digest::of(b""),
                at: now,
                by_site: false,
            });
        };
        let signers = crate::tuf::signers(&self.layout.tuf(), &t.path);
        let (facts, refusal) = policy.before_download(t.digest, custom, signers, now, false);
        if let Some(f) = facts {
            self.advertised.insert(t.digest, f);
        }
        refusal
    }

    /// Downloads the firmware the verified assignment names for each secondary — the same resumable, bounded,
    /// hash-checked download as a model — and checks it against the director's compact manifest. The verified
    /// package stays in staging, so a later check does not fetch it again.
    #[cfg(feature = "gateway")]
    async fn check_firmware(
        &mut self,
        source: &dyn Transport,
        secondaries: &[director::SecondaryAssignment],
        director_key: &[u8; 32],
    ) -> Vec<(String, Result<FirmwareUpdate, CheckError>)> {
        let mut out = Vec::new();
        for s in secondaries {
            let t = Target { path: s.target.path.clone(), digest: s.target.sha256, length: s.target.length };
            let prepared = match self.try_download(source, &t).await {
                Ok(()) => std::fs::read(self.layout.staging(&t.digest))
                    .map_err(CheckError::from)
                    .and_then(|bytes| gateway::prepare(s, &bytes, director_key).map_err(CheckError::from)),
                Err(e) => Err(e),
            };
            out.push((s.device_id.clone(), prepared));
        }
        out
    }

    /// Without the `gateway` feature, firmware assigned to secondaries behind this device is not fetched: each one
    /// is refused by name, on stderr and in the next report to the hub, and the device's own update goes on.
    #[cfg(not(feature = "gateway"))]
    fn refuse_firmware(&mut self, secondaries: &[director::SecondaryAssignment]) {
        for s in secondaries {
            let e = CheckError::from(crate::NotBuilt { what: "firmware for secondaries", feature: "gateway" });
            let message = format!("firmware {} for secondary {} not fetched: {e}", s.target.path, s.device_id);
            tracing::warn!("{message}");
            self.outbox.push(message);
        }
    }

    /// Firmware verified at the last check for this gateway's secondaries (by device id), to hand over with
    /// [`gateway::deliver`]; taking it leaves nothing until the next check.
    #[cfg(feature = "gateway")]
    pub fn take_firmware(&mut self) -> Vec<(String, Result<FirmwareUpdate, CheckError>)> {
        std::mem::take(&mut self.firmware)
    }

    async fn flush_reports(&mut self, client: &HubClient) -> Result<(), CheckError> {
        for message in std::mem::take(&mut self.outbox) {
            let mut report = self.lanes.report(&message, self.pending_shadow);
            // A device that routes says by which router (a router release is judged on it).
            report.router = self.routes.is_some().then(|| outpost_shared::update::lanes::RouterReport {
                active: self.router,
                ..self.router_failed.clone()
            });
            let report = canonical::to_vec(&report).map_err(|e| CheckError::Invalid(e.to_string()))?;
            client.report(&report).await?;
            self.pending_shadow = None;
        }
        // Telemetry that cannot go now stays queued for the next check; it never fails the update check.
        if let Err(e) = self.drain_telemetry(client).await {
            tracing::warn!(error = %e, "telemetry not sent (kept for the next check)");
        }
        Ok(())
    }
}

/// A seed for `purpose` that differs between devices and between starts of one device: its key, the wall and
/// monotonic time.
pub(crate) fn local_seed(identity: &Identity, clock: &dyn Clock, purpose: &[u8]) -> u64 {
    let now = clock.wall().to_le_bytes();
    let mono = (clock.monotonic().as_nanos() as u64).to_le_bytes();
    let mix = Digest::of(&[purpose, &identity.public_key().0[..], &now, &mono].concat());
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&mix.0[..8]);
    u64::from_le_bytes(seed)
}

/// Writes a fresh device directory: identity (mode 0600), the pinned TUF root, and returns the device's public
/// key for `outpost-hub device approve`.
pub fn init_device(dir: &Path, root_json: &[u8], seed: [u8; 32]) -> Result<String, CheckError> {
    let layout = Layout::new(dir);
    sigstore_tuf::Metadata::<sigstore_tuf::Root>::from_slice(root_json)?;
    std::fs::create_dir_all(layout.root())?;
    let identity = Identity::from_seed(seed);
    identity.save(&layout.identity()).map_err(|e| CheckError::Invalid(e.to_string()))?;
    crate::tuf::pin_root(&layout.tuf(), root_json)?;
    Ok(identity.public_key().to_hex())
}

/// Leaves a one-time enrolment token (`outpost-hub device token`) in a device directory (mode 0600): the first
/// connection to the hub enrols with it, then it is removed.
pub fn store_enrolment_token(dir: &Path, token: &str) -> Result<(), CheckError> {
    let path = Layout::new(dir).enrolment_token();
    outpost_attestation::identity::write_new_file(&path, format!("{}\n", token.trim()).as_bytes(), 0o600)
        .map_err(|e| CheckError::Invalid(e.to_string()))
}
