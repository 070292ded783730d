//! Signed reference values: the central team's list of software (agent and firmware versions) allowed to run,
//! each with the SHA-256 of its binary and a revoked flag, signed with the team's Ed25519 key.
//!
//! The document is a tagged COSE_Sign1 in the same strict profile as evidence, with content type
//! [`CONTENT_TYPE`] in the protected header (so it can never be mistaken for evidence) and a CBOR payload with
//! a serial number, an issue time, an expiry and the entries. [`TrustedReferenceValues`] can only be made by
//! [`TrustedReferenceValues::verify`], so the verifier never consults a document whose signature it has not checked.

use std::collections::HashMap;

use outpost_shared::Digest;
use outpost_shared::clock::UnixSeconds;
use serde::{Deserialize, Serialize};

use crate::cose::{self, FormatError};
use crate::identity::{Identity, PublicKey};

/// Protected-header content type of a reference-values document.
pub const CONTENT_TYPE: &str = "application/vnd.outpost.reference-values+cbor";
/// Largest document accepted (several thousand entries of about 130 bytes each).
pub const MAX_REFERENCE_VALUES_LEN: usize = 1 << 20;

/// One allowed (or revoked) piece of software.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoftwareRef {
    /// The name it reports in `swname`, e.g. `outpost-agent`.
    pub name: String,
    /// The version it reports in `swversion`.
    pub version: String,
    /// SHA-256 of the binary (agent) or image (firmware).
    pub sha256: Digest,
    /// Set when this version must no longer be served (e.g. a vulnerable agent): evidence naming it is refused.
    pub revoked: bool,
}

/// The reference-values document, as the central team writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// Increases with every document; the verifier never goes back to a lower one.
    pub serial: u64,
    /// When it was issued (Unix seconds).
    pub issued_at: UnixSeconds,
    /// After this instant the document no longer vouches for anything and every appraisal fails.
    pub expires: UnixSeconds,
    /// The software entries; each digest appears once.
    pub software: Vec<SoftwareRef>,
}

impl ReferenceValues {
    /// Signs the document with the central team's key (a tagged COSE_Sign1, see the module docs).
    pub fn sign(&self, key: &Identity) -> Vec<u8> {
        let mut payload = Vec::new();
        ciborium::ser::into_writer(self, &mut payload).expect("encoding into a Vec cannot fail");
        cose::sign1(key, Some(CONTENT_TYPE), payload)
    }
}

/// Why a reference-values document was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The envelope or CBOR is not acceptable.
    #[error("reference values: {0}")]
    Format(#[from] FormatError),
    /// The payload is not a reference-values document.
    #[error("reference values: malformed payload: {0}")]
    Malformed(String),
    /// The signature is not the central team's.
    #[error("reference values: not signed by the trusted key")]
    BadSignature,
    /// The same digest is listed twice.
    #[error("reference values: digest {0} listed twice")]
    DuplicateDigest(Digest),
    /// The document has expired.
    #[error("reference values: expired at {expires}, now {now}")]
    Expired {
        /// Its expiry.
        expires: UnixSeconds,
        /// The verifier's time.
        now: UnixSeconds,
    },
    /// The document is older than (or a different document with the same serial as) the one in use.
    #[error("reference values: serial {offered} does not supersede serial {current}")]
    Rollback {
        /// Serial offered.
        offered: u64,
        /// Serial in use.
        current: u64,
    },
}

/// Reference values whose signature has been verified, indexed by digest.
#[derive(Debug, Clone)]
pub struct TrustedReferenceValues {
    doc: ReferenceValues,
    by_digest: HashMap<Digest, usize>,
    fingerprint: Digest,
}

impl TrustedReferenceValues {
    /// Verifies a signed document against the central team's key and indexes it. Expiry and rollback are judged
    /// by the verifier that installs it.
    ///
    /// # Errors
    /// [`ReferenceError`] when the document is malformed, not signed by `trusted`, or lists a digest twice.
    pub fn verify(bytes: &[u8], trusted: &PublicKey) -> Result<TrustedReferenceValues, ReferenceError> {
        let sign1 = cose::parse_sign1(bytes, MAX_REFERENCE_VALUES_LEN, Some(CONTENT_TYPE))?;
        if !cose::verify_ed25519(trusted.as_bytes(), &sign1.tbs, &sign1.signature) {
            return Err(ReferenceError::BadSignature);
        }
        let doc: ReferenceValues =
            sign1.payload.deserialized().map_err(|e| ReferenceError::Malformed(e.to_string()))?;
        let mut by_digest = HashMap::with_capacity(doc.software.len());
        for (i, s) in doc.software.iter().enumerate() {
            if by_digest.insert(s.sha256, i).is_some() {
                return Err(ReferenceError::DuplicateDigest(s.sha256));
            }
        }
        Ok(TrustedReferenceValues { doc, by_digest, fingerprint: Digest::of(bytes) })
    }

    /// The verified document.
    pub fn document(&self) -> &ReferenceValues {
        &self.doc
    }

    /// SHA-256 of the signed bytes, to tell two documents with the same serial apart.
    pub fn fingerprint(&self) -> Digest {
        self.fingerprint
    }

    /// The entry for a binary digest, if listed.
    pub fn lookup(&self, digest: &Digest) -> Option<&SoftwareRef> {
        self.by_digest.get(digest).and_then(|&i| self.doc.software.get(i))
    }
}
