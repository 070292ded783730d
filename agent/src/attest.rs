//! The agent's side of attestation: on each new connection, ask the hub for a challenge, derive the nonce from it
//! and this connection's TLS exporter, and present signed EAT evidence of what this device runs.
//!
//! The evidence states the agent's own binary (SHA-256 of `/proc/self/exe`, hashed once per process), name and
//! version, the active model package, the site policy in force and a boot counter persisted in the device
//! directory. The hub appraises it; the agent only reports truthfully and surfaces a refusal. With a TPM
//! ([`DeviceTpm`], feature `tpm`) the agent first measures its binary and model into PCR 23 and adds a quote.

use std::sync::{Arc, OnceLock};

use outpost_attestation::{Claims, Evidence, Identity, TpmEnrolment, TpmQuote};
use outpost_shared::Digest;
use outpost_shared::wire::ErrorCode;

use crate::config::TpmConfig;
use crate::device::{self, Layout};
use outpost_net::client::{Attested, ClientError, HubClient};

/// `swname` in the evidence; the reference values list agent builds under this name.
pub const SWNAME: &str = "outpost-agent";
/// `swversion` in the evidence: this crate's version.
pub const SWVERSION: &str = env!("CARGO_PKG_VERSION");

/// SHA-256 of the running executable (`/proc/self/exe`, which names the file this process runs even if it was
/// replaced on disk since), computed on first use and kept for the life of the process.
///
/// # Errors
/// The executable cannot be read.
pub fn software_digest() -> Result<Digest, ClientError> {
    static DIGEST: OnceLock<Result<Digest, String>> = OnceLock::new();
    DIGEST
        .get_or_init(|| {
            let exe = std::path::Path::new("/proc/self/exe");
            device::hash_file(exe).map(|(_, d)| d).map_err(|e| format!("hashing {}: {e}", exe.display()))
        })
        .clone()
        .map_err(ClientError::Setup)
}

/// Bumps the persisted boot counter and returns the new value (1 on a fresh device).
///
/// # Errors
/// The counter file cannot be written (a counter that does not parse starts again from 0: it is a claim the hub
/// records, not a security boundary).
pub fn next_bootcount(layout: &Layout) -> std::io::Result<u64> {
    let path = layout.bootcount();
    let current = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    let next = current.saturating_add(1);
    device::write_atomic(&path, format!("{next}\n").as_bytes())?;
    Ok(next)
}

/// What this device states about itself in its evidence, besides its identity and binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Boot count.
    pub bootcount: u64,
    /// The active model package.
    pub model: Option<Digest>,
    /// The site policy in force.
    pub policy: Option<Digest>,
}

/// What attesting a connection gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The hub attested this connection.
    Attested(Attested),
    /// The server does not appraise evidence (a site node): nothing to do.
    NotRequired,
}

/// The device's TPM (`[attestation] tpm`). Each use opens a session and closes it (the attestation key is derived
/// again, a few milliseconds): nothing is held between attestations, an hour apart, and nothing goes stale.
#[derive(Debug, Clone)]
pub struct DeviceTpm {
    config: TpmConfig,
}

impl DeviceTpm {
    /// The TPM `config` names; nothing is opened yet.
    ///
    /// # Errors
    /// This agent was built without the `tpm` feature.
    pub fn new(config: TpmConfig) -> Result<DeviceTpm, ClientError> {
        if cfg!(not(feature = "tpm")) {
            return Err(ClientError::Setup(
                "agent.toml names a TPM ([attestation] tpm) but this agent was built without TPM support \
                 (cargo feature `tpm`)"
                    .into(),
            ));
        }
        Ok(DeviceTpm { config })
    }

    /// Runs `f` on a new session with the TPM.
    #[cfg(feature = "tpm")]
    fn with<T>(
        &self,
        f: impl FnOnce(&mut outpost_attestation::tpm::Tpm) -> Result<T, outpost_attestation::tpm::TpmError>,
    ) -> Result<T, ClientError> {
        let failed =
            |e: outpost_attestation::tpm::TpmError| ClientError::Setup(format!("TPM `{}`: {e}", self.config.tcti));
        let mut tpm = outpost_attestation::tpm::Tpm::open(&self.config.tcti).map_err(failed)?;
        f(&mut tpm).map_err(failed)
    }

    /// What the hub records when it enrols this TPM: the attestation key and the boot PCRs' current values.
    ///
    /// # Errors
    /// The TPM cannot be reached or read.
    pub fn enrolment(&self) -> Result<TpmEnrolment, ClientError> {
        #[cfg(feature = "tpm")]
        return self.with(|t| t.enrolment(self.config.boot_pcrs));
        #[cfg(not(feature = "tpm"))]
        Err(ClientError::Setup("built without TPM support".into()))
    }

    /// Measures `software` and `model` into the measurement PCR (reset first), then quotes it and the boot PCRs
    /// over the evidence `nonce` and the `device`'s identity key (`quote::qualifying_data`).
    ///
    /// # Errors
    /// The TPM cannot be reached or refuses.
    pub fn quote(
        &self,
        software: &Digest,
        model: Option<&Digest>,
        nonce: &[u8; 32],
        device: &[u8; 32],
    ) -> Result<TpmQuote, ClientError> {
        let measurements = outpost_attestation::quote::measurements(software, model);
        let extra = outpost_attestation::quote::qualifying_data(nonce, device);
        let pcrs = self.config.boot_pcrs | 1 << outpost_attestation::quote::MEASUREMENT_PCR;
        #[cfg(feature = "tpm")]
        return self.with(|t| {
            t.measure_software(&measurements)?;
            t.quote(&extra, pcrs)
        });
        #[cfg(not(feature = "tpm"))]
        {
            let _ = (measurements, pcrs, extra);
            Err(ClientError::Setup("built without TPM support".into()))
        }
    }
}

/// Runs a blocking TPM call off the async threads.
async fn on_tpm<T: Send + 'static>(
    tpm: &Arc<DeviceTpm>,
    f: impl FnOnce(&DeviceTpm) -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    let tpm = tpm.clone();
    tokio::task::spawn_blocking(move || f(&tpm)).await.map_err(|e| ClientError::Setup(format!("TPM task: {e}")))?
}

/// Attests `client`'s connection: challenge, evidence bound to this connection (with a TPM quote when `tpm` is
/// set), verdict.
///
/// # Errors
/// A refusal is [`ClientError::Hub`] with [`ErrorCode::NotAttested`] and the hub's reason; see
/// [`not_attested_reason`]. A TPM that cannot quote is [`ClientError::Setup`].
pub async fn attest(
    client: &HubClient,
    identity: &Identity,
    facts: &Facts,
    tpm: Option<&Arc<DeviceTpm>>,
) -> Result<Outcome, ClientError> {
    let Some(challenge) = client.challenge().await? else { return Ok(Outcome::NotRequired) };
    let nonce = challenge.nonce(&client.exporter()?);
    let software = software_digest()?;
    let tpm_quote = match tpm {
        None => None,
        Some(tpm) => {
            let (model, device) = (facts.model, identity.public_key().0);
            Some(on_tpm(tpm, move |t| t.quote(&software, model.as_ref(), &nonce, &device)).await?)
        }
    };
    let claims = Claims {
        nonce,
        ueid: identity.public_key(),
        oemid: None,
        hwmodel: None,
        bootcount: facts.bootcount,
        swname: SWNAME.into(),
        swversion: SWVERSION.into(),
        software_digest: software,
        model_digest: facts.model,
        policy_digest: facts.policy,
        tpm_quote,
    };
    let evidence = Evidence::sign(identity, &claims).map_err(|e| ClientError::Setup(e.to_string()))?;
    client.post_evidence(&evidence).await.map(Outcome::Attested)
}

/// The hub's reason if `e` is a `NotAttested` refusal (`not attested: <reason>`).
pub fn not_attested_reason(e: &ClientError) -> Option<&str> {
    match e {
        ClientError::Hub { code: ErrorCode::NotAttested, message } => Some(message),
        _ => None,
    }
}

/// One line of hardware facts for enrolment: architecture, OS and CPU count.
pub fn hardware_facts() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    format!("arch={} os={} cpus={cpus}", std::env::consts::ARCH, std::env::consts::OS)
}

/// Enrols with the token `init --token` left in the device directory, if any, then forgets it. With a TPM, the
/// enrolment carries its facts ([`DeviceTpm::enrolment`]) so the device attests at the hardware tier.
///
/// # Errors
/// The hub refused the token (`Forbidden`, with why), the TPM could not be read, or the token file could not be
/// read or removed.
pub async fn enroll_if_pending(
    client: &HubClient,
    layout: &Layout,
    tpm: Option<&Arc<DeviceTpm>>,
) -> Result<bool, ClientError> {
    let path = layout.enrolment_token();
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ClientError::Io(e)),
    };
    let facts = match tpm {
        None => None,
        Some(tpm) => Some(on_tpm(tpm, |t| t.enrolment()).await?.to_bytes()),
    };
    client.enroll(&token, &hardware_facts(), facts).await?;
    std::fs::remove_file(&path)?;
    Ok(true)
}
