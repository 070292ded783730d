//! Device identity and attestation for Outpost, modelled on IETF RATS (RFC 9334, background-check model) and
//! Entity Attestation Tokens (RFC 9711). Sans-IO: it knows nothing of QUIC or storage; the hub and agent drive it.
//!
//! - [`identity`]: the Ed25519 identity, its key files and the pinned-key TLS configs built from it;
//! - [`evidence`]: the EAT claims, signed as a COSE_Sign1 by the device, their strict parser, and the nonce that
//!   binds evidence to one challenge on one TLS connection;
//! - [`reference`](mod@reference): the central team's signed list of allowed (and revoked) agent and firmware versions;
//! - [`appraisal`]: the hub's fail-closed verifier: single-use challenges, appraisal, attestation results;
//! - [`quote`]: TPM 2.0 quotes as the hub checks them (plain Rust, no TPM library);
//! - `tpm` (feature `tpm`): the device side of the TPM backend over tss-esapi and the system's libtss2.
//!
//! The flow on one connection: hub [`Verifier::issue_challenge`] → agent [`Challenge::nonce`] with the
//! connection's TLS exporter, [`Evidence::sign`] → hub [`Verifier::appraise`] with its own exporter for the
//! same connection → an [`AttestationResult`] the hub keeps with the connection, or [`NotAttested`].

pub mod appraisal;
mod cose;
pub mod evidence;
pub mod identity;
pub mod quote;
pub mod reference;
#[cfg(feature = "tpm")]
pub mod tpm;

pub use appraisal::{
    AttestationResult, ChallengeError, Concern, DeviceDirectory, DeviceRecord, DeviceStatus, Expected, NotAttested,
    Presented, Reason, Status, Tier, Verifier, VerifierConfig,
};
pub use cose::{ALLOWED_ALGORITHMS, ED25519, FormatError};
pub use evidence::{Challenge, Claims, ClaimsError, Evidence, EvidenceError, OemId, derive_nonce};
pub use identity::{Identity, PublicKey};
pub use quote::{QuoteError, TpmEnrolment, TpmQuote};
pub use reference::{ReferenceError, ReferenceValues, SoftwareRef, TrustedReferenceValues};
