//! Evidence: an Entity Attestation Token (RFC 9711) in a tagged COSE_Sign1 signed by the device's Ed25519
//! identity, its strict parser, and the nonce that binds it to one challenge on one TLS connection.
//!
//! # Wire format
//!
//! Evidence is a **tagged** COSE_Sign1 (CBOR tag 18, RFC 9052) at most [`MAX_EVIDENCE_LEN`] bytes: protected header
//! exactly `{1: -19}` (Ed25519, RFC 9864), empty unprotected header, attached payload, empty external AAD. The
//! payload is a claims map in preferred serialization with its keys in CBOR's deterministic order, which is the
//! order of this table (RFC 8949 §4.2.1); an unknown claim, a missing required claim or any other order is refused.
//!
//! | key     | claim (RFC 9711 name)   | CBOR                       | required | notes                                  |
//! |---------|-------------------------|----------------------------|----------|----------------------------------------|
//! | 10      | nonce                   | bstr, 32 bytes             | yes      | [`Challenge::nonce`]                   |
//! | 256     | ueid                    | bstr, 33 bytes             | yes      | `0x01` (RAND type) ‖ Ed25519 public key |
//! | 258     | oemid                   | bstr (3 or 16) or uint     | no       | IEEE OUI, random, or IANA PEN          |
//! | 259     | hwmodel                 | bstr, 1..=32 bytes         | no       |                                        |
//! | 267     | bootcount               | uint                       | yes      |                                        |
//! | 271     | swname                  | tstr, 1..=64 bytes         | yes      | e.g. `outpost-agent`                   |
//! | 272     | swversion               | `[tstr]`, 1..=64 bytes     | yes      | version without a scheme               |
//! | -65537  | software digest (private) | bstr, 32 bytes           | yes      | SHA-256 of the agent binary / firmware |
//! | -65538  | model digest (private)  | bstr, 32 bytes             | no       | active model package; absent = none    |
//! | -65539  | policy digest (private) | bstr, 32 bytes             | no       | active site policy; absent = none      |
//! | -65540  | TPM quote (private)     | `[bstr, bstr]`             | no       | `TPMS_ATTEST`, ECDSA `r ‖ s` (hardware tier) |
//!
//! # Nonce
//!
//! `nonce = SHA-256(NONCE_DOMAIN ‖ challenge ‖ exporter)`, where `challenge` is the hub's 32 random bytes and
//! `exporter` is [`EXPORTER_LEN`] bytes of the connection's TLS exporter (RFC 8446 §7.5) with label
//! [`EXPORTER_LABEL`] and an empty context (quinn: `Connection::export_keying_material(&mut out, EXPORTER_LABEL,
//! EXPORTER_CONTEXT)`; rustls: `export_keying_material(&mut out, EXPORTER_LABEL, None)`, the same in TLS 1.3).
//! Both ends of one connection compute the same exporter and no other connection can, so evidence answers one
//! challenge on one connection only.

use ciborium::Value;
use outpost_shared::Digest;
use sha2::Digest as _;

use crate::cose::{self, FormatError, SIGNATURE_LEN, Sign1};
use crate::identity::{Identity, PublicKey};
use crate::quote::{MAX_ATTEST_LEN, QUOTE_SIGNATURE_LEN, TpmQuote};

/// Largest evidence accepted, checked before any decoding. Typical tokens are about 300 bytes (software) and 520
/// bytes (with a TPM quote); one with every claim at its bound is under 1,100 bytes.
pub const MAX_EVIDENCE_LEN: usize = 2048;
/// TLS exporter label for the attestation nonce (RFC 8446 §7.5; custom labels start with `EXPORTER-`).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-outpost-attestation-v1";
/// TLS exporter context: empty.
pub const EXPORTER_CONTEXT: &[u8] = b"";
/// Bytes taken from the TLS exporter.
pub const EXPORTER_LEN: usize = 32;
/// Length of the hub's challenge.
pub const CHALLENGE_LEN: usize = 32;
/// Length of the nonce claim.
pub const NONCE_LEN: usize = 32;
/// Domain label hashed in front of the challenge and exporter.
pub const NONCE_DOMAIN: &[u8] = b"outpost-attestation-nonce-v1\0";
/// Longest `swname` / `swversion`, in bytes.
pub const MAX_TEXT_LEN: usize = 64;
/// Longest `hwmodel`, in bytes (RFC 9711 §4.2.4).
pub const MAX_HWMODEL_LEN: usize = 32;
/// UEID type byte for a random (or hash-derived) 256-bit id (RFC 9711 §4.2.1); ours is the device's public key.
pub const UEID_TYPE_RAND: u8 = 0x01;

/// Claim key: nonce (RFC 9711).
pub const CLAIM_NONCE: i64 = 10;
/// Claim key: ueid (RFC 9711).
pub const CLAIM_UEID: i64 = 256;
/// Claim key: oemid (RFC 9711).
pub const CLAIM_OEMID: i64 = 258;
/// Claim key: hwmodel (RFC 9711).
pub const CLAIM_HWMODEL: i64 = 259;
/// Claim key: bootcount (RFC 9711).
pub const CLAIM_BOOTCOUNT: i64 = 267;
/// Claim key: swname (RFC 9711).
pub const CLAIM_SWNAME: i64 = 271;
/// Claim key: swversion (RFC 9711).
pub const CLAIM_SWVERSION: i64 = 272;
/// Private-use claim key: SHA-256 of the running software (agent binary or firmware image).
pub const CLAIM_SOFTWARE_DIGEST: i64 = -65537;
/// Private-use claim key: SHA-256 of the active model package.
pub const CLAIM_MODEL_DIGEST: i64 = -65538;
/// Private-use claim key: SHA-256 of the active site policy.
pub const CLAIM_POLICY_DIGEST: i64 = -65539;
/// Private-use claim key: a TPM quote over the nonce ([`crate::quote`]).
pub const CLAIM_TPM_QUOTE: i64 = -65540;

/// The hub's challenge: 32 random bytes, sent to the device once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Challenge(pub [u8; CHALLENGE_LEN]);

impl Challenge {
    /// The nonce claim answering this challenge on the connection whose TLS exporter output is `exporter`.
    pub fn nonce(&self, exporter: &[u8; EXPORTER_LEN]) -> [u8; NONCE_LEN] {
        derive_nonce(&self.0, exporter)
    }
}

/// `SHA-256(NONCE_DOMAIN ‖ challenge ‖ exporter)`: see the module docs.
pub fn derive_nonce(challenge: &[u8; CHALLENGE_LEN], exporter: &[u8; EXPORTER_LEN]) -> [u8; NONCE_LEN] {
    let mut h = sha2::Sha256::new();
    h.update(NONCE_DOMAIN);
    h.update(challenge);
    h.update(exporter);
    h.finalize().into()
}

/// The OEM that made the device (RFC 9711 §4.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OemId {
    /// IEEE OUI / MA-L, 3 bytes.
    Ieee([u8; 3]),
    /// A random id, 16 bytes.
    Random([u8; 16]),
    /// An IANA Private Enterprise Number.
    Pen(u64),
}

/// The claims of one piece of evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Answer to the hub's challenge on this connection ([`Challenge::nonce`]).
    pub nonce: [u8; NONCE_LEN],
    /// The device: its Ed25519 public key (encoded as a RAND-type UEID).
    pub ueid: PublicKey,
    /// Who made the device, where known.
    pub oemid: Option<OemId>,
    /// The hardware model, where known.
    pub hwmodel: Option<Vec<u8>>,
    /// Boots since manufacture (or since the counter was provisioned).
    pub bootcount: u64,
    /// Name of the attesting software, e.g. `outpost-agent`.
    pub swname: String,
    /// Its version, e.g. `0.1.0`.
    pub swversion: String,
    /// SHA-256 of the running software (the agent binary, or the firmware image on a microcontroller).
    pub software_digest: Digest,
    /// SHA-256 of the active model package; `None` when no model is active.
    pub model_digest: Option<Digest>,
    /// SHA-256 of the active site policy; `None` when no site policy is set.
    pub policy_digest: Option<Digest>,
    /// A TPM quote over `nonce` and the device's measured-boot PCRs: present only from the TPM backend.
    pub tpm_quote: Option<TpmQuote>,
}

/// Claims the caller asked to sign that the parser would refuse (an API misuse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// `swname` or `swversion` is empty or longer than [`MAX_TEXT_LEN`].
    #[error("swname and swversion must be 1..={MAX_TEXT_LEN} bytes")]
    BadText,
    /// `hwmodel` is empty or longer than [`MAX_HWMODEL_LEN`].
    #[error("hwmodel must be 1..={MAX_HWMODEL_LEN} bytes")]
    BadHwModel,
    /// The quote's attestation structure is empty or longer than [`MAX_ATTEST_LEN`].
    #[error("TPM quote must be 1..={MAX_ATTEST_LEN} bytes")]
    BadQuote,
}

/// Why bytes are not acceptable evidence. Always the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The envelope or its CBOR is not acceptable (size, truncation, duplicates, algorithm, headers...).
    #[error("{0}")]
    Format(#[from] FormatError),
    /// The payload is not a map.
    #[error("claims are not a CBOR map")]
    NotAMap,
    /// A claim key this profile does not define.
    #[error("unknown claim {0}")]
    UnknownClaim(String),
    /// A required claim is absent.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or length.
    #[error("malformed claim {0}")]
    BadClaim(&'static str),
}

/// Evidence parsed from bytes: claims whose signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct Evidence {
    claims: Claims,
    tbs: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

impl Evidence {
    /// Signs `claims` with the device's identity: a tagged COSE_Sign1 as described in the module docs.
    ///
    /// # Errors
    /// [`ClaimsError`] when a claim is out of the bounds the parser enforces.
    pub fn sign(identity: &Identity, claims: &Claims) -> Result<Vec<u8>, ClaimsError> {
        Ok(cose::sign1(identity, None, claims.encode()?))
    }

    /// Parses evidence strictly (see the module docs). The signature is not checked: see [`Evidence::verify`].
    ///
    /// # Errors
    /// [`EvidenceError`] for anything but one canonical token within [`MAX_EVIDENCE_LEN`].
    pub fn parse(bytes: &[u8]) -> Result<Evidence, EvidenceError> {
        let Sign1 { tbs, payload, payload_bytes, signature } = cose::parse_sign1(bytes, MAX_EVIDENCE_LEN, None)?;
        let claims = Claims::from_value(payload)?;
        // Deterministic key order and no alternative encodings of the same claims.
        if claims.encode().ok().as_deref() != Some(payload_bytes.as_slice()) {
            return Err(FormatError::NonCanonical.into());
        }
        Ok(Evidence { claims, tbs, signature })
    }

    /// The claims, unauthenticated until [`Evidence::verify`] succeeds.
    pub fn claims_unverified(&self) -> &Claims {
        &self.claims
    }

    /// The claims, if `key` made the signature (Ed25519, strict verification).
    pub fn verify(&self, key: &PublicKey) -> Option<&Claims> {
        cose::verify_ed25519(key.as_bytes(), &self.tbs, &self.signature).then_some(&self.claims)
    }
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn text_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TEXT_LEN
}

impl Claims {
    /// The payload bytes: the claims map in deterministic order.
    ///
    /// # Errors
    /// [`ClaimsError`] when a claim is out of bounds.
    pub fn encode(&self) -> Result<Vec<u8>, ClaimsError> {
        if !text_ok(&self.swname) || !text_ok(&self.swversion) {
            return Err(ClaimsError::BadText);
        }
        if self.hwmodel.as_ref().is_some_and(|m| m.is_empty() || m.len() > MAX_HWMODEL_LEN) {
            return Err(ClaimsError::BadHwModel);
        }
        let mut ueid = Vec::with_capacity(33);
        ueid.push(UEID_TYPE_RAND);
        ueid.extend_from_slice(self.ueid.as_bytes());
        let mut m = vec![(int(CLAIM_NONCE), Value::Bytes(self.nonce.to_vec())), (int(CLAIM_UEID), Value::Bytes(ueid))];
        if let Some(oem) = self.oemid {
            let v = match oem {
                OemId::Ieee(b) => Value::Bytes(b.to_vec()),
                OemId::Random(b) => Value::Bytes(b.to_vec()),
                OemId::Pen(n) => Value::Integer(n.into()),
            };
            m.push((int(CLAIM_OEMID), v));
        }
        if let Some(hw) = &self.hwmodel {
            m.push((int(CLAIM_HWMODEL), Value::Bytes(hw.clone())));
        }
        m.push((int(CLAIM_BOOTCOUNT), Value::Integer(self.bootcount.into())));
        m.push((int(CLAIM_SWNAME), Value::Text(self.swname.clone())));
        m.push((int(CLAIM_SWVERSION), Value::Array(vec![Value::Text(self.swversion.clone())])));
        m.push((int(CLAIM_SOFTWARE_DIGEST), Value::Bytes(self.software_digest.0.to_vec())));
        if let Some(d) = self.model_digest {
            m.push((int(CLAIM_MODEL_DIGEST), Value::Bytes(d.0.to_vec())));
        }
        if let Some(d) = self.policy_digest {
            m.push((int(CLAIM_POLICY_DIGEST), Value::Bytes(d.0.to_vec())));
        }
        if let Some(q) = &self.tpm_quote {
            if q.attest.is_empty() || q.attest.len() > MAX_ATTEST_LEN {
                return Err(ClaimsError::BadQuote);
            }
            let quote = Value::Array(vec![Value::Bytes(q.attest.clone()), Value::Bytes(q.signature.to_vec())]);
            m.push((int(CLAIM_TPM_QUOTE), quote));
        }
        Ok(cose::encode(&Value::Map(m)))
    }

    fn from_value(payload: Value) -> Result<Claims, EvidenceError> {
        let Value::Map(entries) = payload else { return Err(EvidenceError::NotAMap) };
        let mut nonce = None;
        let mut ueid = None;
        let mut oemid = None;
        let mut hwmodel = None;
        let mut bootcount = None;
        let mut swname = None;
        let mut swversion = None;
        let mut software_digest = None;
        let mut model_digest = None;
        let mut policy_digest = None;
        let mut tpm_quote = None;
        for (k, v) in entries {
            let key = match k {
                Value::Integer(i) => i64::try_from(i128::from(i)).ok(),
                _ => None,
            };
            match key {
                Some(CLAIM_NONCE) => nonce = Some(fixed::<NONCE_LEN>(v, "nonce")?),
                Some(CLAIM_UEID) => {
                    let raw = fixed::<33>(v, "ueid")?;
                    let (ty, key) = raw.split_at(1);
                    if ty != [UEID_TYPE_RAND] {
                        return Err(EvidenceError::BadClaim("ueid"));
                    }
                    ueid = Some(PublicKey(key.try_into().map_err(|_| EvidenceError::BadClaim("ueid"))?));
                }
                Some(CLAIM_OEMID) => {
                    oemid = Some(match v {
                        Value::Bytes(b) if b.len() == 3 => OemId::Ieee(b.as_slice().try_into().unwrap_or_default()),
                        Value::Bytes(b) if b.len() == 16 => OemId::Random(b.as_slice().try_into().unwrap_or_default()),
                        Value::Integer(i) => {
                            OemId::Pen(u64::try_from(i).map_err(|_| EvidenceError::BadClaim("oemid"))?)
                        }
                        _ => return Err(EvidenceError::BadClaim("oemid")),
                    })
                }
                Some(CLAIM_HWMODEL) => match v {
                    Value::Bytes(b) if !b.is_empty() && b.len() <= MAX_HWMODEL_LEN => hwmodel = Some(b),
                    _ => return Err(EvidenceError::BadClaim("hwmodel")),
                },
                Some(CLAIM_BOOTCOUNT) => match v {
                    Value::Integer(i) => {
                        bootcount = Some(u64::try_from(i).map_err(|_| EvidenceError::BadClaim("bootcount"))?)
                    }
                    _ => return Err(EvidenceError::BadClaim("bootcount")),
                },
                Some(CLAIM_SWNAME) => match v {
                    Value::Text(t) if text_ok(&t) => swname = Some(t),
                    _ => return Err(EvidenceError::BadClaim("swname")),
                },
                Some(CLAIM_SWVERSION) => match v {
                    Value::Array(a) => match <[Value; 1]>::try_from(a) {
                        Ok([Value::Text(t)]) if text_ok(&t) => swversion = Some(t),
                        _ => return Err(EvidenceError::BadClaim("swversion")),
                    },
                    _ => return Err(EvidenceError::BadClaim("swversion")),
                },
                Some(CLAIM_SOFTWARE_DIGEST) => software_digest = Some(Digest(fixed(v, "software digest")?)),
                Some(CLAIM_MODEL_DIGEST) => model_digest = Some(Digest(fixed(v, "model digest")?)),
                Some(CLAIM_POLICY_DIGEST) => policy_digest = Some(Digest(fixed(v, "policy digest")?)),
                Some(CLAIM_TPM_QUOTE) => tpm_quote = Some(quote_claim(v)?),
                _ => {
                    return Err(EvidenceError::UnknownClaim(
                        key.map_or_else(|| "(non-integer)".into(), |k| k.to_string()),
                    ));
                }
            }
        }
        Ok(Claims {
            nonce: nonce.ok_or(EvidenceError::MissingClaim("nonce"))?,
            ueid: ueid.ok_or(EvidenceError::MissingClaim("ueid"))?,
            oemid,
            hwmodel,
            bootcount: bootcount.ok_or(EvidenceError::MissingClaim("bootcount"))?,
            swname: swname.ok_or(EvidenceError::MissingClaim("swname"))?,
            swversion: swversion.ok_or(EvidenceError::MissingClaim("swversion"))?,
            software_digest: software_digest.ok_or(EvidenceError::MissingClaim("software digest"))?,
            model_digest,
            policy_digest,
            tpm_quote,
        })
    }
}

fn quote_claim(v: Value) -> Result<TpmQuote, EvidenceError> {
    let bad = || EvidenceError::BadClaim("tpm quote");
    let Value::Array(items) = v else { return Err(bad()) };
    match <[Value; 2]>::try_from(items) {
        Ok([Value::Bytes(attest), signature]) if !attest.is_empty() && attest.len() <= MAX_ATTEST_LEN => {
            Ok(TpmQuote { attest, signature: fixed::<QUOTE_SIGNATURE_LEN>(signature, "tpm quote")? })
        }
        _ => Err(bad()),
    }
}

fn fixed<const N: usize>(v: Value, name: &'static str) -> Result<[u8; N], EvidenceError> {
    match v {
        Value::Bytes(b) => b.as_slice().try_into().map_err(|_| EvidenceError::BadClaim(name)),
        _ => Err(EvidenceError::BadClaim(name)),
    }
}
