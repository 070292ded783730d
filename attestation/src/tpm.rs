//! Device side of the TPM backend (feature `tpm`): the attestation key and quotes over the evidence nonce, through
//! tss-esapi and the system's libtss2. The only module here that does I/O (to the TPM, through a TCTI).
//!
//! The attestation key (AK) is a primary key in the endorsement hierarchy from a fixed template (restricted ECC
//! NIST P-256 signing key, ECDSA/SHA-256): the TPM derives the same key from its endorsement seed every time, so
//! nothing is persisted. The hub records its public point at enrolment ([`crate::quote::TpmEnrolment`]); proving
//! that this AK lives in a genuine TPM (EK certificate, credential activation) is part of enrolment, not of this
//! module. A quote covers SHA-256 PCRs chosen by a bitmask, qualified by the nonce: the enrolled measured-boot PCRs
//! (at most 8, one `TPM2_PCR_Read`) and [`MEASUREMENT_PCR`], which [`Tpm::measure_software`] resets and extends with
//! the agent's and the model's digests just before each quote.

use std::str::FromStr;

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::handles::KeyHandle;
/// A PCR, as [`Tpm::measure`] takes it.
pub use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    Data, Digest as TpmDigest, DigestValues, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme,
    PcrSelectionList, PcrSlot, Public, PublicBuilder, PublicEccParametersBuilder, Signature, SignatureScheme,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, Error as TssError};

use crate::quote::{AK_PUBLIC_LEN, MAX_BOOT_PCRS, MEASUREMENT_PCR, QUOTE_SIGNATURE_LEN, TpmEnrolment, TpmQuote};

/// The PCRs a quote covers by default: 0–7, the platform's measured boot (firmware, option ROMs, boot loader,
/// Secure Boot policy).
pub const DEFAULT_PCRS: u32 = 0xff;

/// Why the TPM could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TSS or the TPM refused (bad TCTI string, TPM not reachable, command failed).
    #[error("TPM: {0}")]
    Tss(#[from] TssError),
    /// The TPM answered with something outside the profile (e.g. a non-ECDSA signature).
    #[error("TPM returned an unexpected {0}")]
    Unexpected(&'static str),
    /// The PCR mask selects no PCR, too many to read at once, or one above 23.
    #[error("PCR mask {0:#x} must select 1 to 8 of PCRs 0-23 to read, or any of them to quote")]
    BadPcrMask(u32),
}

/// A TPM session: the loaded attestation key and its public point.
pub struct Tpm {
    ctx: Context,
    ak: KeyHandle,
    ak_public: [u8; AK_PUBLIC_LEN],
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm").field("ak_public", &hex::encode(self.ak_public)).finish_non_exhaustive()
    }
}

fn ak_template() -> Result<Public, TssError> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(false)
        .with_sign_encrypt(true)
        .with_restricted(true)
        .build()?;
    let params = PublicEccParametersBuilder::new()
        .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(true)
        .with_is_decryption_key(false)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(params)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Left-pads a big-endian integer to 32 bytes.
fn be32(v: &[u8]) -> Option<[u8; 32]> {
    if v.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - v.len()..].copy_from_slice(v);
    Some(out)
}

fn selection(pcrs: u32, max: u32) -> Result<(PcrSelectionList, usize), TpmError> {
    let count = pcrs.count_ones() as usize;
    if count == 0 || count > max as usize || pcrs >> 24 != 0 {
        return Err(TpmError::BadPcrMask(pcrs));
    }
    let slots = (0..24)
        .filter(|i| pcrs & (1 << i) != 0)
        .map(|i| PcrSlot::try_from(1u32 << i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((PcrSelectionList::builder().with_selection(HashingAlgorithm::Sha256, &slots).build()?, count))
}

impl Tpm {
    /// Opens the TPM named by a TCTI string (e.g. `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`) and
    /// loads the attestation key.
    ///
    /// # Errors
    /// [`TpmError`] when the TCTI string is invalid, the TPM unreachable, or key creation fails.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        let mut ctx = Context::new(TctiNameConf::from_str(tcti)?)?;
        let created = ctx.execute_with_nullauth_session(|c| {
            c.create_primary(Hierarchy::Endorsement, ak_template()?, None, None, None, None)
        })?;
        let Public::Ecc { unique, .. } = &created.out_public else { return Err(TpmError::Unexpected("AK type")) };
        let (Some(x), Some(y)) = (be32(unique.x().value()), be32(unique.y().value())) else {
            return Err(TpmError::Unexpected("AK point"));
        };
        let mut ak_public = [0u8; AK_PUBLIC_LEN];
        ak_public[0] = 0x04;
        ak_public[1..33].copy_from_slice(&x);
        ak_public[33..].copy_from_slice(&y);
        Ok(Tpm { ctx, ak: created.key_handle, ak_public })
    }

    /// The attestation key's public point (uncompressed P-256), for enrolment.
    pub fn attestation_key(&self) -> [u8; AK_PUBLIC_LEN] {
        self.ak_public
    }

    /// The current SHA-256 values of the PCRs in `pcrs`, in ascending order (for enrolment:
    /// [`crate::quote::pcr_digest`] of them is the known-good digest).
    ///
    /// # Errors
    /// [`TpmError`] on a bad mask or a TPM failure.
    pub fn read_pcrs(&mut self, pcrs: u32) -> Result<Vec<[u8; 32]>, TpmError> {
        let (list, count) = selection(pcrs, MAX_BOOT_PCRS)?;
        let (_, _, digests) = self.ctx.pcr_read(list)?;
        let values: Vec<[u8; 32]> =
            digests.value().iter().filter_map(|d: &TpmDigest| d.value().try_into().ok()).collect();
        if values.len() != count {
            return Err(TpmError::Unexpected("PCR read result"));
        }
        Ok(values)
    }

    /// Quotes the PCRs in `pcrs` with the evidence nonce as qualifying data.
    ///
    /// # Errors
    /// [`TpmError`] on a bad mask or a TPM failure.
    pub fn quote(&mut self, nonce: &[u8], pcrs: u32) -> Result<TpmQuote, TpmError> {
        let (list, _) = selection(pcrs, 24)?;
        let data = Data::try_from(nonce.to_vec())?;
        let ak = self.ak;
        let (attest, signature) =
            self.ctx.execute_with_nullauth_session(|c| c.quote(ak, data, SignatureScheme::Null, list))?;
        let Signature::EcDsa(sig) = signature else { return Err(TpmError::Unexpected("signature scheme")) };
        let (Some(r), Some(s)) = (be32(sig.signature_r().value()), be32(sig.signature_s().value())) else {
            return Err(TpmError::Unexpected("signature size"));
        };
        let mut rs = [0u8; QUOTE_SIGNATURE_LEN];
        rs[..32].copy_from_slice(&r);
        rs[32..].copy_from_slice(&s);
        Ok(TpmQuote { attest: attest.marshall()?, signature: rs })
    }

    /// What the hub records when it enrols this TPM: the attestation key and the current values of the
    /// measured-boot PCRs in `boot_pcrs` (the known-good state).
    ///
    /// # Errors
    /// [`TpmError`] on a bad mask (one naming [`MEASUREMENT_PCR`] included) or a TPM failure.
    pub fn enrolment(&mut self, boot_pcrs: u32) -> Result<TpmEnrolment, TpmError> {
        let values = self.read_pcrs(boot_pcrs)?;
        TpmEnrolment::new(self.ak_public, boot_pcrs, values).map_err(|_| TpmError::BadPcrMask(boot_pcrs))
    }

    /// Resets [`MEASUREMENT_PCR`] and extends it with each of `measurements` in order (the agent's binary, then
    /// its model: [`crate::quote::measurements`]), so that a quote right after shows what runs now.
    ///
    /// # Errors
    /// [`TpmError`] on a TPM failure.
    pub fn measure_software(&mut self, measurements: &[[u8; 32]]) -> Result<(), TpmError> {
        let pcr = PcrHandle::Pcr23;
        const _: () = assert!(MEASUREMENT_PCR == 23);
        self.ctx.execute_with_nullauth_session(|c| c.pcr_reset(pcr))?;
        measurements.iter().try_for_each(|m| self.extend(pcr, *m))
    }

    /// Extends a PCR with the SHA-256 of `measurement` (what measured boot does; here for tests and tools).
    ///
    /// # Errors
    /// [`TpmError`] on a TPM failure.
    pub fn measure(&mut self, pcr: PcrHandle, measurement: &[u8]) -> Result<(), TpmError> {
        use sha2::Digest as _;
        self.extend(pcr, sha2::Sha256::digest(measurement).into())
    }

    fn extend(&mut self, pcr: PcrHandle, digest: [u8; 32]) -> Result<(), TpmError> {
        let mut values = DigestValues::new();
        values.set(HashingAlgorithm::Sha256, TpmDigest::try_from(digest.to_vec())?);
        self.ctx.execute_with_nullauth_session(|c| c.pcr_extend(pcr, values))?;
        Ok(())
    }
}
