//! The site node (`outpost-agent run --mode site`): serves the hub's QUIC protocol to the devices of one site and
//! fetches from the hub on their behalf — TUF metadata and hub-signed assignments passed through, blobs through a
//! verified cache so each package crosses the WAN once per site — and applies the site policy for the whole site.
//!
//! Nothing the site node serves is trusted by the devices: they verify TUF metadata, assignments and bytes
//! exactly as from the hub, so a site node that tampers or serves stale metadata is caught. A package the site
//! policy refuses is never fetched from the hub; devices asking for it get `Forbidden` with the rule, keep their
//! model, and the hub gets one site-level refusal in the site node's own report.
//!
//! Attestation: the site node attests itself to the hub on its upstream connection (its own binary, policy and
//! boot count, its TPM if it has one), so a site node running an unlisted agent build is served nothing. It relays
//! its devices' attestation to the hub (RFC 9334's background-check model, the site node as relying party): a
//! device's `GetChallenge` becomes a challenge the hub issues for that device, its evidence (bound to the device's
//! own connection to the site node) goes to the hub with that connection's TLS exporter, and the hub's verdict is
//! kept with the device's connection. Until it holds a current result the device is served nothing, and a device
//! the hub revokes is cut off within [`DEVICE_FRESH`] (the hub refuses to act for it at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_attestation::identity::{Identity, PublicKey};
use outpost_attestation::{AttestationResult, Challenge, Status, Tier};
use outpost_net::server::{Backend, BackendError, Refused, Submitted, Unattested};
use outpost_shared::clock::Clock;
use outpost_shared::policy::PackageFacts;
use outpost_shared::rng::SeededRng;
use outpost_shared::update::failover::{Backoff, Replicas};
use outpost_shared::update::{AgentState, Refusal};
use outpost_shared::wire::{AttestedStatus, AttestedTier, ErrorCode, Limits, Relay};
use outpost_shared::{Digest, Package, PackageLimits, canonical};

use crate::config::AgentConfig;
use crate::device::{self, Layout};
use crate::site_policy::SitePolicy;
use outpost_net::client::{ClientConfig, ClientError, HubClient};

/// How long an unversioned metadata file (`timestamp.json`...) is served from memory before asking the hub
/// again. Versioned files (`3.root.json`, `7.snapshot.json`) never change and are kept.
pub const METADATA_FRESH: Duration = Duration::from_secs(1);

/// How long the hub's answer on whether a device belongs to this site is reused.
pub const DEVICE_FRESH: Duration = Duration::from_secs(5);

/// Most answers on devices kept at once. Anyone may connect with a new key, so each new answer prunes those past
/// [`DEVICE_FRESH`] (useless by then), and when the map is still full the new answer is not kept.
pub const MAX_KNOWN_DEVICES: usize = 4096;

/// Most questions about devices asked of the hub at once; a connection finding them all taken is refused (it
/// connects again later), so a flood of unknown keys cannot queue unbounded work on the upstream link.
pub const MAX_DEVICE_LOOKUPS: usize = 16;

/// The site node's backend.
pub struct SiteNode {
    config: AgentConfig,
    layout: Layout,
    identity: Identity,
    clock: Arc<dyn Clock>,
    /// The connection to the hub and when its attestation expires (`None`: the hub does not attest).
    upstream: tokio::sync::Mutex<Option<(Arc<HubClient>, Option<u64>)>>,
    bootcount: u64,
    /// The TPM the site node attests with, if any.
    tpm: Option<Arc<crate::attest::DeviceTpm>>,
    /// Whether the hub attests (it answered the site node's own challenge): then the site's devices must too.
    upstream_attests: AtomicBool,
    metadata: Mutex<HashMap<String, (Vec<u8>, Duration)>>,
    devices: Mutex<HashMap<[u8; 32], (bool, Duration)>>,
    /// One permit per question about a device in flight to the hub.
    lookups: tokio::sync::Semaphore,
    /// One fetch per blob at a time: the second device waits for the first fetch and gets the cached copy.
    fetching: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    state: Mutex<AgentState>,
    upstream_target_bytes: AtomicU64,
    /// The hub's replicas (`[hub] addresses`): the one the upstream connection goes to, and with several, the
    /// backoff after a round that reached none (the site node has no poll of its own to pace its rounds).
    replicas: Mutex<Replicas<SocketAddr>>,
    /// Draws the backoff's jitter.
    rng: Mutex<SeededRng>,
}

impl std::fmt::Debug for SiteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiteNode").field("dir", &self.layout.root()).finish_non_exhaustive()
    }
}

/// Why the site node could not start.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The identity could not be loaded.
    #[error("identity: {0}")]
    Identity(String),
    /// Local storage failed.
    #[error("site node storage: {0}")]
    Io(#[from] std::io::Error),
    /// The configured TPM cannot be used by this build.
    #[error("{0}")]
    Tpm(String),
}

impl SiteNode {
    /// A site node over the device directory of `config` (identity, pinned TUF root, policy).
    pub fn open(config: AgentConfig, clock: Arc<dyn Clock>) -> Result<SiteNode, SiteError> {
        let layout = Layout::new(&config.data_dir);
        let identity = Identity::load(&layout.identity()).map_err(|e| SiteError::Identity(e.to_string()))?;
        let state = device::load_state(&layout)?.unwrap_or_else(|| AgentState::new(clock.wall()));
        std::fs::create_dir_all(layout.cache())?;
        let bootcount = crate::attest::next_bootcount(&layout)?;
        let tpm = match config.tpm.clone() {
            None => None,
            Some(t) => Some(Arc::new(crate::attest::DeviceTpm::new(t).map_err(|e| SiteError::Tpm(e.to_string()))?)),
        };
        // With one replica there is no round to pace: as before replicas, each request that needs the hub tries it.
        let replicas = crate::upstream::replicas(&config);
        let replicas =
            Mutex::new(if replicas.len() > 1 { replicas.with_backoff(Backoff::SITE_NODE) } else { replicas });
        let rng = Mutex::new(SeededRng::new(crate::driver::local_seed(&identity, clock.as_ref(), b"site backoff")));
        Ok(SiteNode {
            replicas,
            rng,
            bootcount,
            tpm,
            upstream_attests: AtomicBool::new(true),
            config,
            layout,
            identity,
            clock,
            upstream: tokio::sync::Mutex::new(None),
            metadata: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            lookups: tokio::sync::Semaphore::new(MAX_DEVICE_LOOKUPS),
            fetching: Mutex::new(HashMap::new()),
            state: Mutex::new(state),
            upstream_target_bytes: AtomicU64::new(0),
        })
    }

    /// The site node's identity (devices pin its public key as their hub key).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// How many answers on devices the site node keeps now (at most [`MAX_KNOWN_DEVICES`]).
    pub fn known_devices(&self) -> usize {
        self.devices.lock().map_or(0, |d| d.len())
    }

    /// Target bytes fetched from the hub since start (what crossed the WAN).
    pub fn upstream_target_bytes(&self) -> u64 {
        self.upstream_target_bytes.load(Ordering::Relaxed)
    }

    /// The attested connection to the hub; a new one when the old one closed, was refused as not attested, or
    /// its attestation is about to expire. A new one goes to the current replica, then to the next while they
    /// cannot be reached, for one round at most; after a round that reached none, none is tried again before the
    /// backoff is over (the requests meanwhile fail at once).
    async fn client(&self) -> Result<Arc<HubClient>, ClientError> {
        let mut upstream = self.upstream.lock().await;
        let margin = outpost_shared::update::RENEW_MARGIN_SECS;
        if let Some((c, expires)) = upstream.as_ref()
            && c.connection().close_reason().is_none()
            && c.not_attested().is_none()
            && expires.is_none_or(|e| e > self.clock.wall().saturating_add(margin))
        {
            return Ok(c.clone());
        }
        *upstream = None;
        let now = self.clock.monotonic().as_secs();
        let (addr, retry_at) = {
            let replicas = self.replicas.lock().map_err(|_| ClientError::Setup("replicas lock poisoned".into()))?;
            (*replicas.current(), replicas.retry_at().filter(|_| !replicas.ready(now)))
        };
        if let Some(at) = retry_at {
            let wait = Duration::from_secs(at.saturating_sub(now));
            return Err(ClientError::Setup(format!(
                "no hub replica reached in the last round: next round in {wait:?}"
            )));
        }
        let mut addr = addr;
        loop {
            match self.connect_attested(addr).await {
                Ok((client, expires)) => {
                    if let Ok(mut replicas) = self.replicas.lock() {
                        replicas.worked();
                    }
                    *upstream = Some((client.clone(), expires));
                    return Ok(client);
                }
                Err(e) if crate::upstream::unreachable(&e) => match self.fail_over(&e) {
                    Some(next) => addr = next,
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves to the next hub replica after `e`: its address, or `None` when that ends the round.
    fn fail_over(&self, e: &dyn std::fmt::Display) -> Option<SocketAddr> {
        let mut replicas = self.replicas.lock().ok()?;
        let mut rng = self.rng.lock().ok()?;
        let switch = replicas.failed(self.clock.monotonic().as_secs(), &mut *rng);
        crate::upstream::log_switch(&switch, e);
        (!switch.round_over).then_some(switch.to)
    }

    /// The upstream connection `client` failed with `e`: when that means its replica cannot be reached and there
    /// is another, the connection is dropped (unless another request replaced it already) and the next request
    /// goes to the next replica. With one replica the connection is kept until QUIC closes it, as before replicas:
    /// across a partition that heals it carries on at once, where a new handshake would wait out its backoff (the
    /// fleet simulator's site-partition scenario).
    async fn upstream_failed(&self, client: &Arc<HubClient>, e: &(dyn std::error::Error + Send + Sync + 'static)) {
        let several = self.replicas.lock().is_ok_and(|r| r.len() > 1);
        if !several || !crate::upstream::unreachable_in_chain(e) {
            return;
        }
        let mut upstream = self.upstream.lock().await;
        if upstream.as_ref().is_some_and(|(c, _)| Arc::ptr_eq(c, client)) {
            *upstream = None;
            let code = quinn::VarInt::from_u32(outpost_shared::wire::codes::CLOSE_NORMAL);
            client.connection().close(code, b"replica unreachable");
            self.fail_over(&e);
        }
    }

    /// Runs `request` on the upstream connection; a replica found unreachable on the way is left for the next.
    async fn upstream<T>(
        &self,
        request: impl AsyncFnOnce(&HubClient) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let client = self.client().await?;
        let result = request(&client).await;
        if let Err(e) = &result {
            self.upstream_failed(&client, e).await;
        }
        result
    }

    /// A fresh connection to the replica at `addr`, attested: the client and when its attestation expires.
    async fn connect_attested(&self, addr: SocketAddr) -> Result<(Arc<HubClient>, Option<u64>), ClientError> {
        let config = ClientConfig::new(addr, self.config.hub_key);
        let client = Arc::new(HubClient::connect(&self.identity, &config).await?);
        let facts = {
            let state = self.state.lock().map_err(|_| ClientError::Setup("site state lock poisoned".into()))?;
            crate::attest::Facts {
                bootcount: self.bootcount,
                model: state.active.as_ref().map(|i| i.target.digest),
                policy: state.policy,
            }
        };
        let expires = match crate::attest::attest(&client, &self.identity, &facts, self.tpm.as_ref()).await {
            Ok(crate::attest::Outcome::Attested(a)) => {
                self.upstream_attests.store(true, Ordering::Relaxed);
                Some(a.expires)
            }
            Ok(crate::attest::Outcome::NotRequired) => {
                self.upstream_attests.store(false, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "the hub did not attest this site node");
                return Err(e);
            }
        };
        Ok((client, expires))
    }

    fn now(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_known_time = state.last_known_time.max(self.clock.wall());
        state.last_known_time
    }

    fn load_policy(&self) -> Result<Option<SitePolicy>, BackendError> {
        let Some(source) = &self.config.policy else { return Ok(None) };
        let (policy, error) = SitePolicy::load_or_last_good(source, &self.layout.policy());
        if let Some(e) = error {
            tracing::warn!(error = %e, "site policy not loaded");
        }
        match policy {
            Some(p) => {
                let mut state = self.state.lock().map_err(|_| "state lock poisoned")?;
                state.policy = Some(p.digest());
                state.site = p.site().map(str::to_owned);
                Ok(Some(p))
            }
            None => Err(Box::new(Refused("the site policy does not load and no good copy is on record".into()))),
        }
    }

    /// Records a site-level refusal and tells the hub (once per decision); the error refuses the device's request.
    async fn refuse(&self, refusal: Refusal) -> BackendError {
        let site = self.state.lock().ok().and_then(|s| s.site.clone()).map(|s| format!(" of {s}")).unwrap_or_default();
        let message = format!("{} by site policy{site}: rule `{}`: {}", refusal.verb(), refusal.rule, refusal.reason);
        let refusal_digest = refusal.digest;
        let report = match self.state.lock() {
            Ok(mut state) => {
                let news = !state.refused.iter().any(|r| {
                    (r.digest, &r.rule, r.until, r.policy)
                        == (refusal.digest, &refusal.rule, refusal.until, refusal.policy)
                });
                news.then(|| {
                    state.refused.retain(|r| r.digest != refusal.digest);
                    state.refused.push(refusal);
                    let excess = state.refused.len().saturating_sub(outpost_shared::update::MAX_REFUSALS);
                    state.refused.drain(..excess);
                    if let Err(e) = device::save_state(&self.layout, &state) {
                        tracing::error!(error = %e, "cannot save state");
                    }
                    state.report(&message)
                })
            }
            Err(_) => None,
        };
        if let Some(report) = report {
            tracing::warn!(package = refusal_digest.short(), "{message}");
            let sent = async {
                let body = canonical::to_vec(&report).map_err(|e| e.to_string())?;
                self.upstream(async |c| c.report(&body).await).await.map_err(|e| e.to_string())
            };
            if let Err(e) = sent.await {
                tracing::error!(error = %e, "cannot report the refusal to the hub");
            }
        }
        Box::new(Refused(message))
    }

    /// Fetches, verifies (TUF length and hash) and judges a package for the site, leaving it in the cache. A
    /// cached package is judged again under the policy in force now (it may have been tightened since).
    async fn fetch(&self, stored: &str, digest: Digest) -> Result<(PathBuf, u64), BackendError> {
        let cached = self.layout.cache().join(digest.to_hex());
        let hit = std::fs::metadata(&cached).ok().map(|m| m.len());
        let policy = self.load_policy()?;
        if hit.is_some() {
            self.touch(&cached);
        }
        if let (Some(len), None) = (hit, &policy) {
            // Verified when it was fetched, and no policy to judge it by.
            return Ok((cached, len));
        }
        let Some(tuf_path) = tuf_path(stored, &digest) else { return Err(Box::new(Refused("bad target path".into()))) };
        let client = self.client().await?;
        // A replica lost on the way is left for the next request, which goes to the next replica.
        let lost = async |e: &(dyn std::error::Error + Send + Sync + 'static)| self.upstream_failed(&client, e).await;
        let now = self.now();
        let ts = jiff::Timestamp::from_second(i64::try_from(now)?)?;
        let mut tuf = crate::tuf::updater(client.clone(), &self.layout.tuf())?;
        if let Err(e) = tuf.refresh(ts).await {
            lost(&e).await;
            return Err(e.into());
        }
        let info = match tuf.get_target_info(&tuf_path, ts).await {
            Ok(info) => info.ok_or_else(|| Refused(format!("{tuf_path} is not a TUF target")))?,
            Err(e) => {
                lost(&e).await;
                return Err(e.into());
            }
        };
        let listed = info.hashes.get("sha256").and_then(|h| h.parse::<Digest>().ok());
        if listed != Some(digest) {
            return Err(Box::new(Refused(format!("{tuf_path}: TUF lists another hash"))));
        }
        let mut advertised = None;
        // Packages carry their manifest's facts in `custom.outpost`; other targets (the director's key) are
        // not packages and pass.
        let is_package = info.custom.as_ref().is_some_and(|c| c.get("outpost").is_some());
        let policy = policy.filter(|_| is_package);
        if let Some(policy) = &policy {
            let signers = crate::tuf::signers(&self.layout.tuf(), &tuf_path);
            let (facts, refusal) = policy.before_download(digest, info.custom.as_ref(), signers, now, true);
            if let Some(r) = refusal {
                return Err(self.refuse(r).await);
            }
            advertised = facts;
        }
        if let Some(len) = hit {
            if let Some(policy) = &policy
                && let Some(r) = judge_package(policy, &cached, digest, advertised.as_ref(), now)?
            {
                return Err(self.refuse(r).await);
            }
            return Ok((cached, len));
        }
        // Fetch the whole package once into a temporary file, then verify and judge it before it is served. A
        // fetch cut short (a replica lost, a restart) resumes from what the file holds.
        let partial = self.layout.cache().join(format!(".{}.part", digest.to_hex()));
        let mut have = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if have > info.length {
            std::fs::remove_file(&partial)?;
            have = 0;
        }
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&partial).await?;
        if have < info.length {
            match crate::transport::download(&*client, stored, have, info.length, &mut file).await {
                Ok(Some(_)) => {}
                Ok(None) => return Err(Box::new(Refused(format!("the hub has no {tuf_path}")))),
                Err(e) => {
                    // What arrived stays for the next fetch to resume from.
                    let _ = file.sync_all().await;
                    lost(&e).await;
                    return Err(Box::new(e));
                }
            }
        }
        file.sync_all().await?;
        drop(file);
        self.upstream_target_bytes.fetch_add(info.length - have, Ordering::Relaxed);
        let (len, got) = device::hash_file(&partial)?;
        if len != info.length || got != digest {
            let _ = std::fs::remove_file(&partial);
            return Err(format!("{tuf_path}: the hub sent {len} bytes hashing to {}", got.short()).into());
        }
        if let Some(policy) = &policy
            && let Some(r) = judge_package(policy, &partial, digest, advertised.as_ref(), now)?
        {
            let _ = std::fs::remove_file(&partial);
            return Err(self.refuse(r).await);
        }
        std::fs::rename(&partial, &cached)?;
        tracing::info!(path = %tuf_path, bytes = len, "fetched {tuf_path} ({len} bytes) from the hub once for the site; cached");
        self.touch(&cached);
        match prune_cache(&self.layout.cache(), self.config.site_cache_max_bytes, &cached) {
            Ok(dropped) if !dropped.is_empty() => {
                let n = dropped.len();
                tracing::info!(dropped = n, "cache over its budget: dropped the {n} package(s) served least recently");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune the package cache"),
        }
        Ok((cached, len))
    }

    /// Marks a cached package as served now (its modification time, on the injected clock): the cache drops the
    /// packages served least recently first.
    fn touch(&self, cached: &Path) {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(self.now());
        if let Err(e) = std::fs::File::options().write(true).open(cached).and_then(|f| f.set_modified(now)) {
            tracing::warn!(file = %cached.display(), error = %e, "cannot mark a cached package as served");
        }
    }
}

/// Deletes packages from the cache in `dir`, least recently served (oldest modification time) first, until the
/// packages left hold at most `budget` bytes; `keep` (the package just fetched) stays whatever its size. Returns
/// the files deleted. A device downloading a deleted package keeps its open file; a later request fetches it from
/// the hub again. Partial downloads (`.…part`) are not packages and are left alone.
pub fn prune_cache(dir: &Path, budget: u64, keep: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut packages = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name();
        if !meta.is_file() || name.to_string_lossy().starts_with('.') {
            continue;
        }
        packages.push((meta.modified()?, meta.len(), entry.path()));
    }
    let mut held: u64 = packages.iter().map(|(_, len, _)| len).sum();
    packages.sort();
    let mut dropped = Vec::new();
    for (_, len, path) in packages {
        if held <= budget {
            break;
        }
        if path == keep {
            continue;
        }
        std::fs::remove_file(&path)?;
        held -= len;
        dropped.push(path);
    }
    Ok(dropped)
}

/// The site policy's verdict on a downloaded package file, judged on its manifest (`None`: accepted; a file that is
/// not a package has no manifest to judge and passes, as devices check it themselves).
fn judge_package(
    policy: &SitePolicy,
    file: &std::path::Path,
    digest: Digest,
    advertised: Option<&PackageFacts>,
    now: u64,
) -> Result<Option<Refusal>, std::io::Error> {
    let bytes = std::fs::read(file)?;
    Ok(Package::decode(&bytes, &PackageLimits::default()).ok().and_then(|package| {
        let model_len = package.model.len() as u64;
        policy.after_download(digest, &package.manifest, model_len, advertised, now, true)
    }))
}

/// Why the hub did not attest a relayed device, as the device is told (`not attested: <this>`).
fn relay_refusal(e: &ClientError) -> Unattested {
    match e {
        ClientError::Hub { code: ErrorCode::NotAttested, message } => {
            Unattested(message.strip_prefix("not attested: ").unwrap_or(message).to_owned())
        }
        other => Unattested(format!("the hub could not appraise this device: {other}")),
    }
}

impl Backend for SiteNode {
    /// Whenever the hub attests (see the module docs): the site's devices attest through the site node.
    fn attestation_required(&self) -> bool {
        self.upstream_attests.load(Ordering::Relaxed)
    }

    async fn challenge(self: Arc<Self>, device: PublicKey) -> Result<Challenge, Unattested> {
        match self.upstream(async |c| c.challenge_for(Some(device.0)).await).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => {
                self.upstream_attests.store(false, Ordering::Relaxed);
                Err(Unattested("the hub does not attest devices: connect again".into()))
            }
            Err(e) => Err(relay_refusal(&e)),
        }
    }

    async fn appraise(self: Arc<Self>, evidence: Submitted) -> Result<AttestationResult, Unattested> {
        // The hub holds the challenge it issued for this device (the same bytes); the exporter is that of the
        // device's connection to this site node, which the evidence nonce must bind.
        let relay = Relay { device: evidence.device.0, exporter: evidence.exporter };
        let verdict = self
            .upstream(async |c| c.post_evidence_for(Some(relay), &evidence.evidence).await)
            .await
            .map_err(|e| relay_refusal(&e))?;
        let ttl = Duration::from_secs(verdict.expires.saturating_sub(self.clock.wall()));
        Ok(AttestationResult {
            status: match verdict.status {
                AttestedStatus::Affirming => Status::Affirming,
                AttestedStatus::Warning => Status::Warning,
            },
            concerns: Vec::new(),
            device: evidence.device,
            tier: match verdict.tier {
                AttestedTier::Software => Tier::Software,
                AttestedTier::Hardware => Tier::Hardware,
            },
            expires: verdict.expires,
            valid_until: self.clock.monotonic().saturating_add(ttl),
            // What the hub appraised stays with the hub (`outpost-hub device show`).
            software: (String::new(), String::new()),
            bootcount: 0,
        })
    }

    async fn still_attested(self: Arc<Self>, result: AttestationResult) -> Result<(), Unattested> {
        if !result.is_current(&*self.clock) {
            return Err(Unattested("attestation result expired".into()));
        }
        match self.device_allowed(result.device.0).await {
            true => Ok(()),
            false => Err(Unattested("device revoked or no longer of this site".into())),
        }
    }

    async fn device_allowed(self: Arc<Self>, key: [u8; 32]) -> bool {
        if let Ok(devices) = self.devices.lock()
            && let Some((ok, at)) = devices.get(&key)
            && self.clock.monotonic().saturating_sub(*at) < DEVICE_FRESH
        {
            return *ok;
        }
        // The hub decides: it answers a site node only for approved devices of its site.
        let Ok(_lookup) = self.lookups.try_acquire() else { return false };
        let ok = self.upstream(async |c| c.assignment_for(Some(key)).await).await.is_ok();
        if let Ok(mut devices) = self.devices.lock() {
            let now = self.clock.monotonic();
            devices.retain(|_, (_, at)| now.saturating_sub(*at) < DEVICE_FRESH);
            if devices.len() < MAX_KNOWN_DEVICES || devices.contains_key(&key) {
                devices.insert(key, (ok, now));
            }
        }
        ok
    }

    async fn metadata(self: Arc<Self>, name: String) -> Result<Option<Vec<u8>>, BackendError> {
        let versioned = name.split('.').next().is_some_and(|v| v.parse::<u64>().is_ok());
        if let Ok(cache) = self.metadata.lock()
            && let Some((bytes, at)) = cache.get(&name)
            && (versioned || self.clock.monotonic().saturating_sub(*at) < METADATA_FRESH)
        {
            return Ok(Some(bytes.clone()));
        }
        let found = self.upstream(async |c| c.metadata(&name, u64::from(Limits::METADATA)).await).await?;
        if let (Some(bytes), Ok(mut cache)) = (&found, self.metadata.lock()) {
            cache.insert(name, (bytes.clone(), self.clock.monotonic()));
        }
        Ok(found)
    }

    async fn assignment(self: Arc<Self>, device: [u8; 32]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.upstream(async |c| c.assignment_for(Some(device)).await).await?)
    }

    async fn target(self: Arc<Self>, path: String) -> Result<Option<(PathBuf, u64)>, BackendError> {
        let Some(digest) = stored_digest(&path) else { return Ok(None) };
        let lock = {
            let mut fetching = self.fetching.lock().map_err(|_| "fetch lock poisoned")?;
            fetching.entry(digest).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        self.fetch(&path, digest).await.map(Some)
    }

    async fn report(self: Arc<Self>, device: [u8; 32], body: Vec<u8>) -> Result<(), BackendError> {
        // Forwarded at once: the device's Ack means the hub has stored it.
        Ok(self.upstream(async |c| c.report_for(Some(device), &body).await).await?)
    }

    async fn telemetry(self: Arc<Self>, device: [u8; 32], batch: Vec<u8>) -> Result<u64, BackendError> {
        // Forwarded at once: the hub's ack, passed back, is what lets the device drop its events.
        Ok(self.upstream(async |c| c.telemetry_for(Some(device), &batch).await).await?)
    }
}

/// The digest a stored target path carries (`dir/<sha256>.name`).
fn stored_digest(path: &str) -> Option<Digest> {
    let file = path.rsplit('/').next()?;
    file.split_once('.')?.0.parse().ok()
}

/// The TUF target path of a stored path (the digest prefix of the file name removed), if it has that form.
fn tuf_path(stored: &str, digest: &Digest) -> Option<String> {
    let prefix = format!("{}.", digest.to_hex());
    match stored.rsplit_once('/') {
        Some((dir, file)) => file.strip_prefix(&prefix).map(|f| format!("{dir}/{f}")),
        None => stored.strip_prefix(&prefix).map(str::to_owned),
    }
}

/// Serves the site on `bind` until `shutdown` completes.
pub async fn run(
    config: AgentConfig,
    clock: Arc<dyn Clock>,
    bind: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let identity = Identity::load(&Layout::new(&config.data_dir).identity())?;
    let node = Arc::new(SiteNode::open(config, clock)?);
    let mut serve = outpost_net::server::ServeConfig::new(identity);
    serve.bind = bind;
    let server = outpost_net::server::Server::bind(serve, node.clone())?;
    let key = node.identity().public_key().to_hex();
    let site = node.state.lock().ok().and_then(|s| s.site.clone()).unwrap_or_else(|| "-".into());
    let span = tracing::info_span!("site_node", node = outpost_net::logging::short(&key), site = %site);
    let addr = server.local_addr()?;
    span.in_scope(|| tracing::info!(%addr, "site node {key} serving devices on {addr} (QUIC)"));
    tracing::Instrument::instrument(server.run(shutdown), span).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path, name: &str, bytes: usize, served_at: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; bytes]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(served_at)).unwrap();
        path
    }

    #[test]
    fn a_site_cache_over_its_budget_drops_the_packages_served_least_recently() {
        let tmp = tempfile::tempdir().unwrap();
        let old = package(tmp.path(), "aa", 400, 1_000);
        let recent = package(tmp.path(), "bb", 400, 3_000);
        let partial = package(tmp.path(), ".cc.part", 900, 10);
        // The package just fetched is the oldest by its time, and stays anyway.
        let new = package(tmp.path(), "dd", 400, 500);
        let dropped = prune_cache(tmp.path(), 1_000, &new).unwrap();
        assert_eq!(dropped, vec![old.clone()]);
        assert!(!old.exists() && recent.exists() && new.exists() && partial.exists());
        // Within the budget, nothing goes.
        assert!(prune_cache(tmp.path(), 1_000, &new).unwrap().is_empty());
        // A package larger than the whole budget is kept alone.
        let huge = package(tmp.path(), "ee", 5_000, 4_000);
        let dropped = prune_cache(tmp.path(), 1_000, &huge).unwrap();
        assert_eq!(dropped.len(), 2, "{dropped:?}");
        assert!(huge.exists() && !recent.exists() && !new.exists());
    }
}
