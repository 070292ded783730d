//! TPM 2.0 quotes as the hub checks them: a strict parser of the signed `TPMS_ATTEST` structure and the checks
//! that make a quote hardware evidence — signed by the device's enrolled attestation key, over this appraisal's
//! nonce, over the enrolled measured-boot PCRs with their known-good values plus [`MEASUREMENT_PCR`], whose value
//! the hub replays from the agent and model digests the evidence claims (and the reference values then judge).
//!
//! Plain Rust and sans-IO (ECDSA P-256 through aws-lc-rs, the provider rustls already uses): the hub needs no TPM
//! library. The device side, which talks to a TPM, is the `tpm` module behind the `tpm` feature.
//!
//! Profile: the attestation key is a restricted ECC NIST P-256 signing key with ECDSA/SHA-256; the quote selects
//! PCRs from the SHA-256 bank only; its qualifying data is [`qualifying_data`] of the evidence nonce and the device's
//! Ed25519 key (32 bytes), so a quote answers one appraisal of one device. The signature travels as
//! `r ‖ s`, each 32 bytes big-endian.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use outpost_shared::Digest;
use sha2::Digest as _;

/// Length of an uncompressed P-256 public key (`0x04 ‖ x ‖ y`).
pub const AK_PUBLIC_LEN: usize = 65;
/// Length of an ECDSA P-256 signature as `r ‖ s`.
pub const QUOTE_SIGNATURE_LEN: usize = 64;
/// Longest `TPMS_ATTEST` accepted.
pub const MAX_ATTEST_LEN: usize = 512;
/// `TPM_GENERATED_VALUE`: every structure the TPM signs starts with it (a key cannot be made to sign a forgery).
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000b;
/// Highest PCR index in the profile (a PC-client TPM has 24).
pub const MAX_PCR: u8 = 23;
/// The PCR the agent measures into: PCR 23, the PC-client profile's application PCR, which locality 0 may reset.
/// Before each quote the agent resets it and extends its own binary's SHA-256, then the active model package's
/// ([`measurements`]); [`replay`] recomputes the value on the hub.
pub const MEASUREMENT_PCR: u8 = 23;
/// Most measured-boot PCRs an enrolment may name (one `TPM2_PCR_Read` returns at most 8 values).
pub const MAX_BOOT_PCRS: u32 = 8;

/// A quote as carried in evidence: the signed attestation structure and the signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmQuote {
    /// The marshalled `TPMS_ATTEST`, exactly as the TPM signed it.
    pub attest: Vec<u8>,
    /// ECDSA P-256 / SHA-256 signature, `r ‖ s`.
    pub signature: [u8; QUOTE_SIGNATURE_LEN],
}

/// What the hub recorded about a device's TPM when it enrolled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmEnrolment {
    /// The attestation key's public point, uncompressed.
    pub ak: [u8; AK_PUBLIC_LEN],
    /// The measured-boot SHA-256 PCRs the quote must cover besides [`MEASUREMENT_PCR`]: bit `i` is PCR `i`
    /// (at most [`MAX_BOOT_PCRS`], none at or above [`MEASUREMENT_PCR`]).
    pub pcrs: u32,
    /// Their known-good values, in ascending PCR order.
    pub values: Vec<[u8; 32]>,
}

/// Why enrolment facts about a TPM are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrolmentError {
    /// Not in the uncompressed `0x04 ‖ x ‖ y` form.
    #[error("the attestation key is not an uncompressed P-256 point")]
    BadKey,
    /// The boot PCR mask is out of profile.
    #[error("boot PCR mask {0:#x} must name at most 8 of PCRs 0-22")]
    BadMask(u32),
    /// Not one value per PCR in the mask.
    #[error("{given} PCR values for {expected} PCRs")]
    ValueCount {
        /// Values the mask names.
        expected: usize,
        /// Values given.
        given: usize,
    },
    /// The encoding is truncated or too long.
    #[error("TPM enrolment facts: {0} bytes is not a valid length")]
    Length(usize),
}

impl TpmEnrolment {
    /// Checks the facts are in profile: an uncompressed point, a boot mask below [`MEASUREMENT_PCR`] naming at most
    /// [`MAX_BOOT_PCRS`] PCRs, one value for each.
    ///
    /// # Errors
    /// The first fact out of profile.
    pub fn new(ak: [u8; AK_PUBLIC_LEN], pcrs: u32, values: Vec<[u8; 32]>) -> Result<TpmEnrolment, EnrolmentError> {
        // A point off the curve passes here but fails every quote's signature check (fail closed).
        if ak[0] != 0x04 {
            return Err(EnrolmentError::BadKey);
        }
        if pcrs >> MEASUREMENT_PCR != 0 || pcrs.count_ones() > MAX_BOOT_PCRS {
            return Err(EnrolmentError::BadMask(pcrs));
        }
        let expected = pcrs.count_ones() as usize;
        if values.len() != expected {
            return Err(EnrolmentError::ValueCount { expected, given: values.len() });
        }
        Ok(TpmEnrolment { ak, pcrs, values })
    }

    /// The compact encoding a device sends when it enrols: `ak ‖ pcrs (u32, big-endian) ‖ values`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(AK_PUBLIC_LEN + 4 + 32 * self.values.len());
        out.extend_from_slice(&self.ak);
        out.extend_from_slice(&self.pcrs.to_be_bytes());
        self.values.iter().for_each(|v| out.extend_from_slice(v));
        out
    }

    /// Parses [`TpmEnrolment::to_bytes`], strictly.
    ///
    /// # Errors
    /// A wrong length or facts out of profile ([`TpmEnrolment::new`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<TpmEnrolment, EnrolmentError> {
        let head = AK_PUBLIC_LEN + 4;
        if bytes.len() < head
            || !(bytes.len() - head).is_multiple_of(32)
            || bytes.len() > head + 32 * MAX_BOOT_PCRS as usize
        {
            return Err(EnrolmentError::Length(bytes.len()));
        }
        let ak: [u8; AK_PUBLIC_LEN] = bytes[..AK_PUBLIC_LEN].try_into().map_err(|_| EnrolmentError::BadKey)?;
        let pcrs =
            u32::from_be_bytes(bytes[AK_PUBLIC_LEN..head].try_into().map_err(|_| EnrolmentError::Length(bytes.len()))?);
        let values = bytes[head..].chunks_exact(32).filter_map(|c| c.try_into().ok()).collect();
        TpmEnrolment::new(ak, pcrs, values)
    }

    /// The PCRs a quote must select: the boot PCRs and [`MEASUREMENT_PCR`].
    pub fn quoted_pcrs(&self) -> u32 {
        self.pcrs | 1 << MEASUREMENT_PCR
    }
}

/// The parts of a quote the appraisal uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The qualifying data the quote was made over.
    pub extra_data: Vec<u8>,
    /// TPM resets since manufacture (power cycles), from the clock info.
    pub reset_count: u32,
    /// The PCR selection: `(hash algorithm, bitmap)` per bank.
    pub pcr_select: Vec<(u16, Vec<u8>)>,
    /// The digest of the selected PCR values.
    pub pcr_digest: Vec<u8>,
}

/// Why a quote does not make hardware evidence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The signature does not verify under the enrolled attestation key (or that key is not a P-256 point).
    #[error("quote signature does not verify under the enrolled attestation key")]
    BadSignature,
    /// Not a well-formed `TPMS_ATTEST` (truncated, trailing bytes, oversized).
    #[error("malformed TPMS_ATTEST")]
    Malformed,
    /// Signed by the key but not a TPM-generated quote.
    #[error("not a TPM-generated quote")]
    NotAQuote,
    /// The quote was made over another nonce or for another device: stale, or from another appraisal.
    #[error("quote made over another nonce or device key")]
    NonceMismatch,
    /// The quote covers other PCRs than enrolled.
    #[error("quote covers other PCRs than enrolled")]
    PcrSelectionMismatch,
    /// The PCR values differ from the known-good boot state and the replayed measurements (something else
    /// booted, or the device measured another agent or model than its evidence claims).
    #[error("PCR values differ from the known-good boot state and the replayed agent and model measurements")]
    PcrMismatch,
}

/// SHA-256 over PCR values in ascending PCR order: the `pcrDigest` a quote reports for them.
pub fn pcr_digest(values: &[[u8; 32]]) -> Digest {
    let mut h = sha2::Sha256::new();
    for v in values {
        h.update(v);
    }
    Digest(h.finalize().into())
}

/// What the agent extends into [`MEASUREMENT_PCR`] after resetting it, in order: its own binary's SHA-256, then
/// the active model package's digest if it has one.
pub fn measurements(software: &Digest, model: Option<&Digest>) -> Vec<[u8; 32]> {
    std::iter::once(software.0).chain(model.map(|m| m.0)).collect()
}

/// Domain separation for [`qualifying_data`].
pub const QUALIFYING_DOMAIN: &[u8] = b"outpost-tpm-quote-v1";

/// The quote's qualifying data (`extraData`): `SHA-256(QUALIFYING_DOMAIN ‖ nonce ‖ device key)`, binding the quote
/// to this appraisal's nonce (itself bound to the challenge and the connection) and to the device's identity key.
pub fn qualifying_data(nonce: &[u8; 32], device: &[u8; 32]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(QUALIFYING_DOMAIN);
    h.update(nonce);
    h.update(device);
    h.finalize().into()
}

/// The value of a reset PCR after extending `measurements` in order (`pcr = SHA-256(pcr ‖ m)`).
pub fn replay(measurements: &[[u8; 32]]) -> [u8; 32] {
    measurements.iter().fold([0u8; 32], |pcr, m| {
        let mut h = sha2::Sha256::new();
        h.update(pcr);
        h.update(m);
        h.finalize().into()
    })
}

/// The `pcrSelect` bitmap (3 bytes) of a PCR mask.
pub fn pcr_bitmap(pcrs: u32) -> [u8; 3] {
    let b = pcrs.to_le_bytes();
    [b[0], b[1], b[2]]
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], QuoteError> {
        if self.0.len() < n {
            return Err(QuoteError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, QuoteError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, QuoteError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| QuoteError::Malformed)?))
    }
    fn u32(&mut self) -> Result<u32, QuoteError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| QuoteError::Malformed)?))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], QuoteError> {
        let n = self.u16()?;
        self.take(n.into())
    }
}

/// Parses a `TPMS_ATTEST` holding a quote (TPM 2.0 Part 2 §10.12). Refuses anything else, trailing bytes included.
///
/// # Errors
/// [`QuoteError::Malformed`] or [`QuoteError::NotAQuote`].
pub fn parse_quote(attest: &[u8]) -> Result<QuoteInfo, QuoteError> {
    if attest.len() > MAX_ATTEST_LEN {
        return Err(QuoteError::Malformed);
    }
    let mut r = Reader(attest);
    if r.u32()? != TPM_GENERATED || r.u16()? != ST_ATTEST_QUOTE {
        return Err(QuoteError::NotAQuote);
    }
    let _qualified_signer = r.tpm2b()?;
    let extra_data = r.tpm2b()?.to_vec();
    let _clock = r.take(8)?;
    let reset_count = r.u32()?;
    let _restart_count = r.u32()?;
    let _safe = r.u8()?;
    let _firmware_version = r.take(8)?;
    let banks = r.u32()?;
    // A TPM has a handful of banks; anything more is not a real quote (and bounds the allocation below).
    if banks > 16 {
        return Err(QuoteError::Malformed);
    }
    let mut pcr_select = Vec::with_capacity(banks as usize);
    for _ in 0..banks {
        let hash = r.u16()?;
        let size = r.u8()?;
        pcr_select.push((hash, r.take(size.into())?.to_vec()));
    }
    let pcr_digest = r.tpm2b()?.to_vec();
    if !r.0.is_empty() {
        return Err(QuoteError::Malformed);
    }
    Ok(QuoteInfo { extra_data, reset_count, pcr_select, pcr_digest })
}

/// Checks a quote for one appraisal: signature under the enrolled key first (nothing unauthenticated is
/// interpreted), then a TPM-generated quote whose qualifying data is `extra_data` ([`qualifying_data`] of the
/// appraisal's nonce and device key), over the enrolled boot PCRs and [`MEASUREMENT_PCR`],
/// whose digest is that of the known-good boot values followed by `measured` (the [`replay`] of what the evidence
/// claims the device runs).
///
/// # Errors
/// The first failed check, as a [`QuoteError`].
pub fn verify_quote(
    quote: &TpmQuote,
    enrolment: &TpmEnrolment,
    extra_data: &[u8; 32],
    measured: [u8; 32],
) -> Result<QuoteInfo, QuoteError> {
    if quote.attest.len() > MAX_ATTEST_LEN {
        return Err(QuoteError::Malformed);
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &enrolment.ak[..])
        .verify(&quote.attest, &quote.signature)
        .map_err(|_| QuoteError::BadSignature)?;
    let info = parse_quote(&quote.attest)?;
    if info.extra_data != extra_data {
        return Err(QuoteError::NonceMismatch);
    }
    if info.pcr_select != [(ALG_SHA256, pcr_bitmap(enrolment.quoted_pcrs()).to_vec())] {
        return Err(QuoteError::PcrSelectionMismatch);
    }
    let mut values = enrolment.values.clone();
    values.push(measured);
    if info.pcr_digest != pcr_digest(&values).0 {
        return Err(QuoteError::PcrMismatch);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attest(extra: &[u8], select: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&TPM_GENERATED.to_be_bytes());
        a.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        a.extend_from_slice(&[0, 2, 0xaa, 0xbb]); // qualified signer
        a.extend_from_slice(&(extra.len() as u16).to_be_bytes());
        a.extend_from_slice(extra);
        a.extend_from_slice(&[0; 8 + 4 + 4 + 1 + 8]);
        a.extend_from_slice(&1u32.to_be_bytes());
        a.extend_from_slice(&ALG_SHA256.to_be_bytes());
        a.push(select.len() as u8);
        a.extend_from_slice(select);
        a.extend_from_slice(&(digest.len() as u16).to_be_bytes());
        a.extend_from_slice(digest);
        a
    }

    #[test]
    fn parses_a_quote_and_refuses_truncation_and_trailing_bytes() {
        let a = attest(&[7; 32], &[0xff, 0, 0], &[9; 32]);
        let info = parse_quote(&a).unwrap();
        assert_eq!(info.extra_data, vec![7; 32]);
        assert_eq!(info.pcr_select, vec![(ALG_SHA256, vec![0xff, 0, 0])]);
        for cut in 0..a.len() {
            assert!(parse_quote(&a[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = a.clone();
        long.push(0);
        assert_eq!(parse_quote(&long), Err(QuoteError::Malformed));
        let mut other = a;
        other[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert_eq!(parse_quote(&other), Err(QuoteError::NotAQuote));
    }

    #[test]
    fn pcr_bitmap_is_little_endian_by_pcr_index() {
        assert_eq!(pcr_bitmap(0xff), [0xff, 0, 0]);
        assert_eq!(pcr_bitmap(1 << 16), [0, 0, 1]);
    }
}
