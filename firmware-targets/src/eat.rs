//! Compact attestation evidence for a microcontroller: an Entity Attestation Token (RFC 9711) in a tagged COSE_Sign1
//! signed with the device's Ed25519 key, encoded into a caller buffer without allocating.
//!
//! The bytes are exactly what the hub's verifier (`outpost-attestation`'s `evidence` module) accepts: protected
//! header `{1: -19}`, empty unprotected header, and a claims map in preferred serialization with its keys in
//! deterministic order — nonce (10), ueid (256, `0x01` ‖ public key), hwmodel (259, optional), bootcount (267),
//! swname (271), swversion (272, `[tstr]`), firmware SHA-256 (-65537, the "software digest" claim). The secondary
//! reports no model package and no site policy, so those claims are absent.
//!
//! The gateway agent derives the nonce from the hub's challenge and its own connection's TLS exporter and hands it
//! to the secondary; the evidence is then only good on that connection. Signing is a closure, so the key may live
//! in a secure element; [`sign_with`] adapts an `ed25519-dalek` key.

use minicbor::Encoder;
use minicbor::data::Tag;
use minicbor::encode::write::Cursor;

use crate::manifest::{PUBLIC_KEY_LEN, SHA256_LEN, SIGNATURE_LEN};

/// Length of the nonce claim.
pub const NONCE_LEN: usize = 32;
/// Longest `swname` / `swversion`, in bytes.
pub const MAX_SW_TEXT_LEN: usize = 32;
/// Longest `hwmodel`, in bytes (RFC 9711 §4.2.4).
pub const MAX_HWMODEL_LEN: usize = 32;
/// Longest claims payload: every claim at its maximum size (237 bytes).
pub const MAX_PAYLOAD_LEN: usize = 240;
/// Longest encoded token; a buffer of this size always suffices.
pub const MAX_EAT_LEN: usize = 1 + 1 + 4 + 1 + 2 + MAX_PAYLOAD_LEN + 2 + SIGNATURE_LEN;
/// The protected header, `{1: -19}` (alg: Ed25519), as its encoded map.
pub const PROTECTED_HEADER: [u8; 3] = [0xa1, 0x01, 0x32];
/// CBOR tag of a COSE_Sign1.
pub const COSE_SIGN1_TAG: u64 = 18;
/// UEID type byte (RAND, RFC 9711 §4.2.1); the id is the device's Ed25519 public key.
pub const UEID_TYPE_RAND: u8 = 0x01;

const CLAIM_NONCE: u32 = 10;
const CLAIM_UEID: u32 = 256;
const CLAIM_HWMODEL: u32 = 259;
const CLAIM_BOOTCOUNT: u32 = 267;
const CLAIM_SWNAME: u32 = 271;
const CLAIM_SWVERSION: u32 = 272;
const CLAIM_SOFTWARE_DIGEST: i64 = -65537;
/// Longest Sig_structure: `["Signature1", protected, h'', payload]`.
const MAX_TBS_LEN: usize = 1 + 11 + 4 + 1 + 2 + MAX_PAYLOAD_LEN;

/// What the secondary attests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EatClaims<'a> {
    /// The nonce the gateway derived from the hub's challenge and its connection.
    pub nonce: &'a [u8; NONCE_LEN],
    /// The device's Ed25519 public key (its enrolled identity at the hub).
    pub device_key: &'a [u8; PUBLIC_KEY_LEN],
    /// Hardware model, 1..=[`MAX_HWMODEL_LEN`] bytes, if reported.
    pub hwmodel: Option<&'a [u8]>,
    /// Boots since provisioning.
    pub bootcount: u64,
    /// Firmware name as listed in the hub's reference values, 1..=[`MAX_SW_TEXT_LEN`] bytes.
    pub swname: &'a str,
    /// Firmware version as listed there, 1..=[`MAX_SW_TEXT_LEN`] bytes.
    pub swversion: &'a str,
    /// SHA-256 of the running firmware image.
    pub firmware_sha256: &'a [u8; SHA256_LEN],
}

/// Why a token could not be encoded. Always a caller mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EatError {
    /// The output buffer is too small; [`MAX_EAT_LEN`] always fits.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// `swname` or `swversion` is empty or longer than [`MAX_SW_TEXT_LEN`].
    #[error("swname and swversion must be 1..={MAX_SW_TEXT_LEN} bytes")]
    BadText,
    /// `hwmodel` is empty or longer than [`MAX_HWMODEL_LEN`].
    #[error("hwmodel must be 1..={MAX_HWMODEL_LEN} bytes")]
    BadHwModel,
}

impl<E> From<minicbor::encode::Error<E>> for EatError {
    fn from(_: minicbor::encode::Error<E>) -> Self {
        // Only bounded slices are written to; their only failure is running out of room.
        Self::BufferTooSmall
    }
}

fn text_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SW_TEXT_LEN
}

impl EatClaims<'_> {
    /// Encodes the claims map into `out` and returns its length (at most [`MAX_PAYLOAD_LEN`]).
    ///
    /// # Errors
    /// [`EatError`] when a claim is out of bounds or `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EatError> {
        if !text_ok(self.swname) || !text_ok(self.swversion) {
            return Err(EatError::BadText);
        }
        if self.hwmodel.is_some_and(|m| m.is_empty() || m.len() > MAX_HWMODEL_LEN) {
            return Err(EatError::BadHwModel);
        }
        let mut ueid = [0u8; 1 + PUBLIC_KEY_LEN];
        let (ty, key) = ueid.split_at_mut(1);
        ty.copy_from_slice(&[UEID_TYPE_RAND]);
        key.copy_from_slice(self.device_key);

        let mut enc = Encoder::new(Cursor::new(out));
        enc.map(if self.hwmodel.is_some() { 7 } else { 6 })?;
        enc.u32(CLAIM_NONCE)?.bytes(self.nonce)?;
        enc.u32(CLAIM_UEID)?.bytes(&ueid)?;
        if let Some(hw) = self.hwmodel {
            enc.u32(CLAIM_HWMODEL)?.bytes(hw)?;
        }
        enc.u32(CLAIM_BOOTCOUNT)?.u64(self.bootcount)?;
        enc.u32(CLAIM_SWNAME)?.str(self.swname)?;
        enc.u32(CLAIM_SWVERSION)?.array(1)?.str(self.swversion)?;
        enc.i64(CLAIM_SOFTWARE_DIGEST)?.bytes(self.firmware_sha256)?;
        Ok(enc.writer().position())
    }
}

/// Encodes and signs a token into `out`; returns its length (at most [`MAX_EAT_LEN`]). `sign` receives the COSE
/// Sig_structure (RFC 9052 §4.4) and returns the Ed25519 signature over it. Uses about 500 bytes of stack.
///
/// # Errors
/// [`EatError`] when a claim is out of bounds or `out` is too small.
pub fn encode_eat(
    claims: &EatClaims<'_>,
    sign: impl FnOnce(&[u8]) -> [u8; SIGNATURE_LEN],
    out: &mut [u8],
) -> Result<usize, EatError> {
    let mut payload_buf = [0u8; MAX_PAYLOAD_LEN];
    let payload_len = claims.encode(&mut payload_buf)?;
    let payload = payload_buf.get(..payload_len).ok_or(EatError::BufferTooSmall)?;

    let mut tbs_buf = [0u8; MAX_TBS_LEN];
    let mut tbs = Encoder::new(Cursor::new(tbs_buf.as_mut_slice()));
    tbs.array(4)?.str("Signature1")?.bytes(&PROTECTED_HEADER)?.bytes(&[])?.bytes(payload)?;
    let tbs_len = tbs.writer().position();
    let signature = sign(tbs_buf.get(..tbs_len).ok_or(EatError::BufferTooSmall)?);

    let mut enc = Encoder::new(Cursor::new(out));
    enc.tag(Tag::new(COSE_SIGN1_TAG))?.array(4)?.bytes(&PROTECTED_HEADER)?.map(0)?.bytes(payload)?.bytes(&signature)?;
    Ok(enc.writer().position())
}

/// A signing closure for [`encode_eat`] from an `ed25519-dalek` key held in RAM.
pub fn sign_with(key: &ed25519_dalek::SigningKey) -> impl FnOnce(&[u8]) -> [u8; SIGNATURE_LEN] + '_ {
    move |message| {
        use ed25519_dalek::Signer;
        key.sign(message).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn claims<'a>(name: &'a str, hw: Option<&'a [u8]>) -> EatClaims<'a> {
        EatClaims {
            nonce: &[0xaa; NONCE_LEN],
            device_key: &[0xbb; PUBLIC_KEY_LEN],
            hwmodel: hw,
            bootcount: u64::MAX,
            swname: name,
            swversion: name,
            firmware_sha256: &[0xcc; SHA256_LEN],
        }
    }

    #[test]
    fn maximal_token_fits_the_documented_bounds() {
        let text = [b'x'; MAX_SW_TEXT_LEN];
        let hw = [1u8; MAX_HWMODEL_LEN];
        let c = claims(core::str::from_utf8(&text).unwrap(), Some(&hw));
        let mut payload = [0u8; MAX_PAYLOAD_LEN];
        assert!(c.encode(&mut payload).unwrap() <= MAX_PAYLOAD_LEN);
        let mut out = [0u8; MAX_EAT_LEN];
        let n = encode_eat(&c, |_| [0u8; SIGNATURE_LEN], &mut out).unwrap();
        assert!(n <= MAX_EAT_LEN);
        assert_eq!(out[0], 0xd2, "tag 18");
    }

    #[test]
    fn out_of_bounds_claims_and_small_buffers_are_refused() {
        let text = [b'x'; MAX_SW_TEXT_LEN + 1];
        let long = core::str::from_utf8(&text).unwrap();
        let mut out = [0u8; MAX_EAT_LEN];
        assert_eq!(encode_eat(&claims(long, None), |_| [0; 64], &mut out), Err(EatError::BadText));
        assert_eq!(encode_eat(&claims("", None), |_| [0; 64], &mut out), Err(EatError::BadText));
        assert_eq!(encode_eat(&claims("fw", Some(&[])), |_| [0; 64], &mut out), Err(EatError::BadHwModel));
        assert_eq!(encode_eat(&claims("fw", None), |_| [0; 64], &mut out[..100]), Err(EatError::BufferTooSmall));
    }
}
