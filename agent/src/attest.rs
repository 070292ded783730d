//! The agent's side of attestation: on each new connection, ask the hub for a challenge, derive the nonce from it
//! and this connection's TLS exporter, and present signed EAT evidence of what this device runs.
//!
//! The evidence states the agent's own binary (SHA-256 of `/proc/self/exe`, hashed once per process), name and
//! version, the active model package, the site policy in force and a boot counter persisted in the device
//! directory. The hub appraises it; the agent only reports truthfully and surfaces a refusal.

use std::sync::OnceLock;

use outpost_attestation::{Claims, Evidence, Identity};
use outpost_shared::Digest;
use outpost_shared::wire::ErrorCode;

use crate::device::{self, Layout};
use crate::quic::{Attested, ClientError, HubClient};

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

/// Attests `client`'s connection: challenge, evidence bound to this connection, verdict.
///
/// # Errors
/// A refusal is [`ClientError::Hub`] with [`ErrorCode::NotAttested`] and the hub's reason; see
/// [`not_attested_reason`].
pub async fn attest(client: &HubClient, identity: &Identity, facts: &Facts) -> Result<Outcome, ClientError> {
    let Some(challenge) = client.challenge().await? else { return Ok(Outcome::NotRequired) };
    let claims = Claims {
        nonce: challenge.nonce(&client.exporter()?),
        ueid: identity.public_key(),
        oemid: None,
        hwmodel: None,
        bootcount: facts.bootcount,
        swname: SWNAME.into(),
        swversion: SWVERSION.into(),
        software_digest: software_digest()?,
        model_digest: facts.model,
        policy_digest: facts.policy,
        tpm_quote: None,
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

/// Enrols with the token `init --token` left in the device directory, if any, then forgets it.
///
/// # Errors
/// The hub refused the token (`Forbidden`, with why), or the token file could not be read or removed.
pub async fn enroll_if_pending(client: &HubClient, layout: &Layout) -> Result<bool, ClientError> {
    let path = layout.enrolment_token();
    let token = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ClientError::Io(e)),
    };
    client.enroll(&token, &hardware_facts()).await?;
    std::fs::remove_file(&path)?;
    Ok(true)
}
