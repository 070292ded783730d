//! The hub's verifier (RATS background-check model): issues single-use challenges, appraises evidence against
//! what the hub knows about the device and the central team's signed reference values, and says "attested" or not.
//!
//! Fail-closed: [`Verifier::appraise`] returns an [`AttestationResult`] only when every check passed; every other
//! path, including ones this code did not foresee (no reference values, a clock oddity), is a [`NotAttested`] with
//! a typed [`Reason`]. The hub binds the result to the connection and serves nothing until it holds one that
//! [`AttestationResult::is_current`]. No I/O, no global clock or randomness: time comes from the injected
//! [`Clock`], challenges from the caller's [`Rng`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use outpost_shared::Digest;
use outpost_shared::clock::{Clock, UnixSeconds};
use outpost_shared::rng::Rng;

use crate::evidence::{CHALLENGE_LEN, Challenge, EXPORTER_LEN, Evidence, EvidenceError};
use crate::identity::PublicKey;
use crate::quote::{QuoteError, TpmEnrolment, measurements, qualifying_data, replay, verify_quote};
use crate::reference::{ReferenceError, TrustedReferenceValues};

/// Bounds and lifetimes of a [`Verifier`]. The defaults are conservative; every field is a named knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifierConfig {
    /// How long a challenge may be answered after it was issued.
    pub challenge_ttl: Duration,
    /// Most challenges held at once (outstanding, or answered and remembered until they would have expired);
    /// when full, [`Verifier::issue_challenge`] refuses rather than evict a challenge someone is answering.
    pub max_challenges: usize,
    /// Most of those held for one device key, however many connections it opens and whoever relays for it, so
    /// one device (or a site node for it) cannot fill the store and lock the others out. A device at the bound
    /// gives up its oldest answered or expired challenge for a new one; it is refused only while all it holds are
    /// outstanding.
    pub max_challenges_per_device: usize,
    /// Most of those relayed through one site node, whatever devices it names, so a site node cannot fill the
    /// store by asking for many devices (each under its own share). Size it to the devices one site node may have
    /// attesting at once; like a device, a node at the bound gives up its oldest answered or expired challenge.
    pub max_challenges_per_relay: usize,
    /// How long an attestation result stays current (it also never outlives the reference values).
    pub result_ttl: Duration,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            challenge_ttl: Duration::from_secs(30),
            max_challenges: 16_384,
            max_challenges_per_device: 8,
            max_challenges_per_relay: 1024,
            result_ttl: Duration::from_secs(3600),
        }
    }
}

/// Whether the hub still accepts a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    /// Enrolled and in good standing.
    Active,
    /// Cut off: never attested again.
    Revoked,
}

/// How strongly a device's evidence is rooted. Ordered: `Software < Hardware`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// The signing key is a file on the device: evidence proves the key, not the platform. A release plan may keep
    /// these devices away from high-risk packages.
    Software,
    /// Evidence includes a quote by the device's enrolled TPM attestation key over the nonce and the known-good
    /// measured-boot PCRs ([`crate::quote`]).
    Hardware,
}

/// What a device should report for one digest claim (model package or site policy); `None` means "nothing active".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this.
    Exactly(Option<Digest>),
    /// An update window or a rollback: `to` is what the device is assigned; `from` is what it ran before and may
    /// still run until it switches (or what it fell back to). Reporting `to` affirms; reporting `from` gives a
    /// [`Status::Warning`].
    Moving {
        /// What it ran before.
        from: Option<Digest>,
        /// What it is assigned.
        to: Option<Digest>,
    },
}

/// What the hub knows about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Active or revoked.
    pub status: DeviceStatus,
    /// Its TPM, if it was enrolled with one: such a device must present a quote (hardware tier); one without
    /// is a software-tier device.
    pub tpm: Option<TpmEnrolment>,
    /// The model package it should run.
    pub model: Expected,
    /// The site policy it should run.
    pub policy: Expected,
}

impl DeviceRecord {
    /// The tier it was enrolled at.
    pub fn tier(&self) -> Tier {
        if self.tpm.is_some() { Tier::Hardware } else { Tier::Software }
    }
}

/// The hub's device registry, as the verifier sees it (the hub implements it over its store).
pub trait DeviceDirectory {
    /// The record of the device with this identity key; `None` if it was never enrolled.
    fn device(&self, key: &PublicKey) -> Option<DeviceRecord>;
}

/// The appraisal's verdict on an attested device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Everything matched exactly.
    Affirming,
    /// Everything verified and the software is allowed, but the model or policy is the one the device is moving
    /// away from ([`Expected::Moving::from`]): mid-update or rolled back. The hub still serves it (it needs its
    /// assignment and bytes to finish the update) and reports the concern.
    Warning,
    /// The device is not attested: the status every [`NotAttested`] carries. Never inside an `AttestationResult`.
    Contraindicated,
}

/// Why a result is [`Status::Warning`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// The device runs the model it is moving away from.
    PreviousModel,
    /// The device runs the site policy it is moving away from.
    PreviousPolicy,
}

/// A positive appraisal, to be bound to the connection the evidence arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationResult {
    /// Affirming or Warning.
    pub status: Status,
    /// Why it is a Warning (empty when Affirming).
    pub concerns: Vec<Concern>,
    /// The device attested.
    pub device: PublicKey,
    /// The tier its evidence proves.
    pub tier: Tier,
    /// Wall-clock expiry, for logs and audit (Unix seconds).
    pub expires: UnixSeconds,
    /// Monotonic expiry: what [`AttestationResult::is_current`] checks.
    pub valid_until: Duration,
    /// The software it runs (`swname`, `swversion`) as listed in the reference values.
    pub software: (String, String),
    /// Its boot count.
    pub bootcount: u64,
}

impl AttestationResult {
    /// Whether the result still allows serving this device (not expired on the monotonic clock).
    pub fn is_current(&self, clock: &dyn Clock) -> bool {
        self.status != Status::Contraindicated && clock.monotonic() < self.valid_until
    }

    /// Whether every check matched exactly (no [`Concern`]).
    pub fn is_affirming(&self) -> bool {
        self.status == Status::Affirming
    }
}

/// Why a device is not attested. Every variant means the same thing to the hub: serve nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The challenge was never issued by this verifier or is long gone.
    #[error("unknown challenge")]
    UnknownChallenge,
    /// The challenge was already answered (each challenge admits one appraisal, successful or not).
    #[error("challenge already used")]
    ChallengeReused,
    /// The challenge expired before it was answered.
    #[error("challenge expired")]
    ChallengeExpired,
    /// The evidence is malformed.
    #[error("evidence: {0}")]
    Evidence(#[from] EvidenceError),
    /// The device was never enrolled.
    #[error("unknown device")]
    UnknownDevice,
    /// The device has been revoked.
    #[error("device revoked")]
    RevokedDevice,
    /// The device is enrolled with a TPM but its evidence carries no quote.
    #[error("hardware-tier device presented software-only evidence")]
    HardwareEvidenceRequired,
    /// The evidence carries a TPM quote but the device was enrolled without a TPM.
    #[error("TPM quote from a device enrolled without a TPM")]
    QuoteNotEnrolled,
    /// The TPM quote failed its checks (signature, nonce, PCR selection or values).
    #[error("TPM quote: {0}")]
    Quote(QuoteError),
    /// The signature is not the device's.
    #[error("bad signature")]
    BadSignature,
    /// The evidence names another device (its UEID is not the key that signed it).
    #[error("evidence names another device")]
    WrongDevice,
    /// The nonce does not answer this challenge on this connection: evidence replayed from an earlier challenge or
    /// made on another connection.
    #[error("nonce does not match this challenge on this connection")]
    NonceMismatch,
    /// No verified reference values are installed.
    #[error("no reference values installed")]
    NoReferenceValues,
    /// The installed reference values have expired.
    #[error("reference values expired")]
    ReferenceValuesExpired,
    /// The software digest is not listed in the reference values.
    #[error("software digest {0} not in the reference values")]
    UnknownSoftware(Digest),
    /// The digest is listed, but under another name or version than the evidence claims.
    #[error("software digest is listed as {listed}, evidence claims {claimed}")]
    SoftwareMismatch {
        /// `swname swversion` as claimed.
        claimed: String,
        /// `name version` as listed for the digest.
        listed: String,
    },
    /// The software version has been revoked.
    #[error("software {name} {version} is revoked")]
    RevokedSoftware {
        /// Its name.
        name: String,
        /// Its version.
        version: String,
    },
    /// The model digest is not what the device should run.
    #[error("model digest {reported:?} is not what the device should run")]
    ModelMismatch {
        /// What the device reported.
        reported: Option<Digest>,
    },
    /// The policy digest is not what the device should run.
    #[error("policy digest {reported:?} is not what the device should run")]
    PolicyMismatch {
        /// What the device reported.
        reported: Option<Digest>,
    },
}

/// A failed appraisal: the device is not attested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not attested: {reason}")]
pub struct NotAttested {
    /// The device the evidence was presented for.
    pub device: PublicKey,
    /// Why.
    pub reason: Reason,
}

impl NotAttested {
    /// Always [`Status::Contraindicated`].
    pub fn status(&self) -> Status {
        Status::Contraindicated
    }
}

/// A misuse of the verifier's API (not the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// [`VerifierConfig::max_challenges`] challenges are held; the hub should refuse the connection.
    #[error("too many outstanding challenges ({0})")]
    Full(usize),
    /// [`VerifierConfig::max_challenges_per_device`] challenges are outstanding for this device: it must answer
    /// one or let it expire first.
    #[error("too many outstanding challenges for device {device} ({held})")]
    DeviceFull {
        /// The device key.
        device: PublicKey,
        /// Challenges held for it.
        held: usize,
    },
    /// [`VerifierConfig::max_challenges_per_relay`] challenges relayed through this site node are outstanding.
    #[error("too many outstanding challenges relayed by site node {relay} ({held})")]
    RelayFull {
        /// The site node's key.
        relay: PublicKey,
        /// Challenges held that it relayed.
        held: usize,
    },
    /// The random source kept repeating challenges that are still held: it is broken (or a fixed test stub).
    #[error("the random source repeats itself")]
    RngRepeats,
}

/// Draws per challenge before the random source is declared broken (a repeat is otherwise a 2^-256 event).
const MAX_CHALLENGE_DRAWS: usize = 4;

/// Evidence presented on one connection, with what the hub knows about that connection.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    /// The challenge the hub issued on this connection.
    pub challenge: &'a Challenge,
    /// This connection's TLS exporter output ([`crate::evidence::EXPORTER_LABEL`]).
    pub exporter: &'a [u8; EXPORTER_LEN],
    /// The key the evidence must be signed with: the TLS peer's key for a device talking to the hub directly;
    /// for a microcontroller behind a gateway agent, the secondary's enrolled key that the gateway names.
    pub device: PublicKey,
    /// The evidence bytes.
    pub evidence: &'a [u8],
}

#[derive(Debug)]
struct Slot {
    expires: Duration,
    used: bool,
    device: PublicKey,
    relay: Option<PublicKey>,
}

/// Who a challenge counts against: the device it is for, and the site node that relayed it, if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    Device(PublicKey),
    Relay(PublicKey),
}

impl Slot {
    fn holders(&self) -> impl Iterator<Item = Holder> {
        std::iter::once(Holder::Device(self.device)).chain(self.relay.map(Holder::Relay))
    }
}

/// Challenges by value, with a FIFO of issue order for purging (all share one TTL, so it is also expiry order).
/// An entry is kept one TTL past its expiry so a late answer is reported as expired rather than unknown.
#[derive(Debug, Default)]
struct Challenges {
    slots: HashMap<[u8; CHALLENGE_LEN], Slot>,
    order: VecDeque<([u8; CHALLENGE_LEN], Duration)>,
    /// The challenges held per device key and per relaying site node, oldest first (no entry when none).
    held: HashMap<Holder, VecDeque<[u8; CHALLENGE_LEN]>>,
}

impl Challenges {
    fn purge(&mut self, now: Duration, ttl: Duration) {
        while let Some(&(c, expires)) = self.order.front() {
            if expires.saturating_add(ttl) > now {
                break;
            }
            self.order.pop_front();
            // Gone already if it was evicted for its device's room (see `make_room`).
            if let Some(slot) = self.slots.remove(&c) {
                self.forget(&slot, &c);
            }
        }
    }

    fn forget(&mut self, slot: &Slot, c: &[u8; CHALLENGE_LEN]) {
        for holder in slot.holders() {
            self.forget_for(holder, c);
        }
    }

    fn forget_for(&mut self, holder: Holder, c: &[u8; CHALLENGE_LEN]) {
        if let Some(held) = self.held.get_mut(&holder) {
            held.retain(|h| h != c);
            if held.is_empty() {
                self.held.remove(&holder);
            }
        }
    }

    /// Room for one more challenge for `holder`, which holds at most `max`: its oldest answered or expired one
    /// goes (it was only kept to report a late answer as expired); refused when all it holds are outstanding.
    fn make_room(&mut self, holder: Holder, max: usize, now: Duration) -> Result<(), ChallengeError> {
        let Some(held) = self.held.get(&holder).filter(|h| h.len() >= max) else { return Ok(()) };
        let spent = held.iter().find(|c| self.slots.get(*c).is_none_or(|s| s.used || now >= s.expires)).copied();
        let Some(c) = spent else {
            let held = held.len();
            return Err(match holder {
                Holder::Device(device) => ChallengeError::DeviceFull { device, held },
                Holder::Relay(relay) => ChallengeError::RelayFull { relay, held },
            });
        };
        if let Some(slot) = self.slots.remove(&c) {
            self.forget(&slot, &c);
        }
        self.forget_for(holder, &c);
        Ok(())
    }

    fn take(&mut self, c: &Challenge, now: Duration) -> Result<(), Reason> {
        let slot = self.slots.get_mut(&c.0).ok_or(Reason::UnknownChallenge)?;
        if slot.used {
            return Err(Reason::ChallengeReused);
        }
        slot.used = true;
        if now >= slot.expires {
            return Err(Reason::ChallengeExpired);
        }
        Ok(())
    }
}

/// The hub's attestation verifier. Shareable across connections (`&self` everywhere; the challenge store and the
/// reference values sit behind their own locks, held only for map operations, never across a signature check).
pub struct Verifier {
    config: VerifierConfig,
    clock: Arc<dyn Clock>,
    reference_key: PublicKey,
    reference: RwLock<Option<Arc<TrustedReferenceValues>>>,
    challenges: Mutex<Challenges>,
    latest_wall: Mutex<UnixSeconds>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("config", &self.config)
            .field("reference_key", &self.reference_key)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier trusting reference values signed by `reference_key` (the central team's key). It attests
    /// nobody until [`Verifier::install_reference_values`] succeeds.
    pub fn new(config: VerifierConfig, clock: Arc<dyn Clock>, reference_key: PublicKey) -> Verifier {
        Verifier {
            config,
            clock,
            reference_key,
            reference: RwLock::new(None),
            challenges: Mutex::new(Challenges::default()),
            latest_wall: Mutex::new(0),
        }
    }

    /// Wall-clock "now" that never goes back below a time already seen (a clock stepped backwards cannot revive
    /// expired reference values).
    fn wall_now(&self) -> UnixSeconds {
        let mut latest = self.latest_wall.lock().unwrap_or_else(|p| p.into_inner());
        *latest = (*latest).max(self.clock.wall());
        *latest
    }

    /// Verifies and installs a signed reference-values document. It must be signed by the trusted key, unexpired,
    /// and have a higher serial than the one in use (re-installing the very same document is a no-op). Returns
    /// the serial now in use.
    ///
    /// # Errors
    /// [`ReferenceError`]; the previous document stays in use.
    pub fn install_reference_values(&self, bytes: &[u8]) -> Result<u64, ReferenceError> {
        let new = TrustedReferenceValues::verify(bytes, &self.reference_key)?;
        let now = self.wall_now();
        let doc = new.document();
        if now >= doc.expires {
            return Err(ReferenceError::Expired { expires: doc.expires, now });
        }
        let mut slot = self.reference.write().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = slot.as_ref() {
            let current_serial = current.document().serial;
            if current.fingerprint() == new.fingerprint() {
                return Ok(current_serial);
            }
            if doc.serial <= current_serial {
                return Err(ReferenceError::Rollback { offered: doc.serial, current: current_serial });
            }
        }
        let serial = doc.serial;
        *slot = Some(Arc::new(new));
        Ok(serial)
    }

    /// The reference values in use, if any.
    pub fn reference_values(&self) -> Option<Arc<TrustedReferenceValues>> {
        self.reference.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Issues a fresh challenge for `device` (the key it is asked for on its own connection), valid for
    /// [`VerifierConfig::challenge_ttl`] and for one appraisal.
    ///
    /// # Errors
    /// [`ChallengeError::Full`] when [`VerifierConfig::max_challenges`] are held; [`ChallengeError::DeviceFull`]
    /// when [`VerifierConfig::max_challenges_per_device`] are held for `device`; [`ChallengeError::RngRepeats`]
    /// when `rng` only produces challenges already held.
    pub fn issue_challenge(&self, device: PublicKey, rng: &mut dyn Rng) -> Result<Challenge, ChallengeError> {
        self.issue(device, None, rng)
    }

    /// [`Verifier::issue_challenge`] for `device` asked through the site node `relay`: the challenge counts
    /// against both the device's share and the node's.
    ///
    /// # Errors
    /// As [`Verifier::issue_challenge`], and [`ChallengeError::RelayFull`] when
    /// [`VerifierConfig::max_challenges_per_relay`] relayed by `relay` are held.
    pub fn issue_relayed_challenge(
        &self,
        device: PublicKey,
        relay: PublicKey,
        rng: &mut dyn Rng,
    ) -> Result<Challenge, ChallengeError> {
        self.issue(device, Some(relay), rng)
    }

    fn issue(
        &self,
        device: PublicKey,
        relay: Option<PublicKey>,
        rng: &mut dyn Rng,
    ) -> Result<Challenge, ChallengeError> {
        let now = self.clock.monotonic();
        let mut store = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
        store.purge(now, self.config.challenge_ttl);
        if store.slots.len() >= self.config.max_challenges {
            return Err(ChallengeError::Full(store.slots.len()));
        }
        store.make_room(Holder::Device(device), self.config.max_challenges_per_device, now)?;
        if let Some(relay) = relay {
            store.make_room(Holder::Relay(relay), self.config.max_challenges_per_relay, now)?;
        }
        let mut bytes = [0u8; CHALLENGE_LEN];
        let fresh = (0..MAX_CHALLENGE_DRAWS).any(|_| {
            rng.fill(&mut bytes);
            !store.slots.contains_key(&bytes)
        });
        if !fresh {
            return Err(ChallengeError::RngRepeats);
        }
        let expires = now.saturating_add(self.config.challenge_ttl);
        let slot = Slot { expires, used: false, device, relay };
        for holder in slot.holders() {
            store.held.entry(holder).or_default().push_back(bytes);
        }
        store.slots.insert(bytes, slot);
        store.order.push_back((bytes, expires));
        Ok(Challenge(bytes))
    }

    /// Appraises evidence presented on a connection. The challenge is consumed whatever the outcome.
    ///
    /// Checks, in order: challenge known, unused, unexpired; evidence well-formed; device enrolled, not revoked;
    /// signature by the device key; UEID names that key; nonce answers this challenge on this connection; a TPM
    /// quote if and only if the device was enrolled with a TPM, valid for that TPM ([`verify_quote`]); software digest listed, matching its name and version, not revoked; model and policy
    /// digests as expected.
    ///
    /// # Errors
    /// [`NotAttested`] with the first failed check.
    pub fn appraise(
        &self,
        presented: &Presented<'_>,
        devices: &dyn DeviceDirectory,
    ) -> Result<AttestationResult, NotAttested> {
        self.appraise_inner(presented, devices).map_err(|reason| NotAttested { device: presented.device, reason })
    }

    fn appraise_inner(&self, p: &Presented<'_>, devices: &dyn DeviceDirectory) -> Result<AttestationResult, Reason> {
        let now = self.clock.monotonic();
        self.challenges.lock().unwrap_or_else(|e| e.into_inner()).take(p.challenge, now)?;

        let evidence = Evidence::parse(p.evidence)?;
        let record = devices.device(&p.device).ok_or(Reason::UnknownDevice)?;
        if record.status == DeviceStatus::Revoked {
            return Err(Reason::RevokedDevice);
        }
        let claims = evidence.verify(&p.device).ok_or(Reason::BadSignature)?;
        if claims.ueid != p.device {
            return Err(Reason::WrongDevice);
        }
        if claims.nonce != p.challenge.nonce(p.exporter) {
            return Err(Reason::NonceMismatch);
        }
        let tier = match (&claims.tpm_quote, &record.tpm) {
            (None, None) => Tier::Software,
            (None, Some(_)) => return Err(Reason::HardwareEvidenceRequired),
            (Some(_), None) => return Err(Reason::QuoteNotEnrolled),
            (Some(quote), Some(tpm)) => {
                // The measurement PCR must hold exactly the agent and model the claims name; the reference values
                // below then judge those claims.
                let measured = replay(&measurements(&claims.software_digest, claims.model_digest.as_ref()));
                let extra = qualifying_data(&claims.nonce, &p.device.0);
                verify_quote(quote, tpm, &extra, measured).map_err(Reason::Quote)?;
                Tier::Hardware
            }
        };

        let reference = self.reference_values().ok_or(Reason::NoReferenceValues)?;
        let wall = self.wall_now();
        let ref_expires = reference.document().expires;
        if wall >= ref_expires {
            return Err(Reason::ReferenceValuesExpired);
        }
        let sw = reference.lookup(&claims.software_digest).ok_or(Reason::UnknownSoftware(claims.software_digest))?;
        if sw.name != claims.swname || sw.version != claims.swversion {
            return Err(Reason::SoftwareMismatch {
                claimed: format!("{} {}", claims.swname, claims.swversion),
                listed: format!("{} {}", sw.name, sw.version),
            });
        }
        if sw.revoked {
            return Err(Reason::RevokedSoftware { name: sw.name.clone(), version: sw.version.clone() });
        }

        let mut concerns = Vec::new();
        match judge(record.model, claims.model_digest) {
            Judgement::Expected => {}
            Judgement::Previous => concerns.push(Concern::PreviousModel),
            Judgement::Unexpected => return Err(Reason::ModelMismatch { reported: claims.model_digest }),
        }
        match judge(record.policy, claims.policy_digest) {
            Judgement::Expected => {}
            Judgement::Previous => concerns.push(Concern::PreviousPolicy),
            Judgement::Unexpected => return Err(Reason::PolicyMismatch { reported: claims.policy_digest }),
        }

        let ttl = self.config.result_ttl.min(Duration::from_secs(ref_expires - wall));
        Ok(AttestationResult {
            status: if concerns.is_empty() { Status::Affirming } else { Status::Warning },
            concerns,
            device: p.device,
            tier,
            expires: wall.saturating_add(ttl.as_secs()),
            valid_until: now.saturating_add(ttl),
            software: (sw.name.clone(), sw.version.clone()),
            bootcount: claims.bootcount,
        })
    }
}

enum Judgement {
    Expected,
    Previous,
    Unexpected,
}

fn judge(expected: Expected, reported: Option<Digest>) -> Judgement {
    match expected {
        Expected::Exactly(d) if d == reported => Judgement::Expected,
        Expected::Moving { to, .. } if to == reported => Judgement::Expected,
        Expected::Moving { from, .. } if from == reported => Judgement::Previous,
        _ => Judgement::Unexpected,
    }
}
