//! Partial (Uptane "secondary") verification: a signed manifest is accepted only if a provisioned key signed it, it
//! names this hardware and device, does not roll back, has not expired; then the streamed image must match it.
//!
//! Order matters: the signature is checked before the manifest body is parsed, so unauthenticated bytes only ever
//! reach the envelope decoder. Nothing here allocates; the largest stack buffer is [`MAX_ENVELOPE_LEN`] bytes.
//!
//! Limitation: a time token carries no device nonce, so a compromised gateway can replay an older token. The
//! device's `latest_known_time` floor (persisted by [`crate::slots`]) bounds that replay to times it has already
//! accepted.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::manifest::{
    DecodeError, Envelope, Expiry, MAX_ENVELOPE_LEN, MAX_SIGNING_INPUT_LEN, Manifest, PUBLIC_KEY_LEN, SHA256_LEN,
    SigningInputFn, TimeToken, key_id, manifest_signing_input, time_token_signing_input,
};

/// Everything the device trusts or remembers when judging a manifest.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'k> {
    /// Ed25519 public keys provisioned at build time (typically a `const` slice).
    pub trusted_keys: &'k [[u8; PUBLIC_KEY_LEN]],
    /// This device's hardware id.
    pub hardware_id: &'k [u8],
    /// This device's id.
    pub device_id: &'k [u8],
    /// Lowest release counter the device still accepts (the stored anti-rollback counter).
    pub min_release_counter: u64,
    /// Latest unix time the device has accepted from a time token; an older token is refused.
    pub latest_known_time: u64,
    /// Latest gateway counter the device has accepted; a lower one is refused.
    pub latest_known_counter: u64,
}

/// What the gateway offers as "now", matching the manifest's [`Expiry`] kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness<'a> {
    /// A signed time-token envelope (see [`crate::manifest`]); needed for [`Expiry::UnixSeconds`].
    TimeToken(&'a [u8]),
    /// The gateway's monotonic counter; needed for [`Expiry::GatewayCounter`].
    GatewayCounter(u64),
}

/// The "now" a verification relied on, to be persisted as the new floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Unix seconds from a verified time token.
    UnixSeconds(u64),
    /// The gateway counter.
    GatewayCounter(u64),
}

/// Why a signed envelope (manifest or time token) was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The envelope or its body is not well-formed.
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    /// No provisioned key has the envelope's key id.
    #[error("signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify under the named key.
    #[error("bad signature")]
    BadSignature,
    /// A provisioned key is not a valid Ed25519 point (a build/provisioning mistake).
    #[error("a provisioned public key is invalid")]
    InvalidTrustedKey,
}

/// Why a manifest was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The manifest envelope failed the signature check.
    #[error("manifest: {0}")]
    Signature(SignatureError),
    /// The manifest is for another hardware model.
    #[error("manifest is for another hardware id")]
    WrongHardwareId,
    /// The manifest is for another device.
    #[error("manifest is for another device id")]
    WrongDeviceId,
    /// The release counter is below the stored one (rollback attempt).
    #[error("release counter {offered} is below the stored {stored}")]
    Rollback {
        /// Counter in the manifest.
        offered: u64,
        /// Counter stored on the device.
        stored: u64,
    },
    /// The freshness evidence is on a different clock than the manifest's expiry.
    #[error("freshness evidence does not match the expiry kind")]
    FreshnessKindMismatch,
    /// The time token failed its own checks.
    #[error("time token: {0}")]
    TimeToken(SignatureError),
    /// The time token is addressed to another device.
    #[error("time token is for another device id")]
    TimeTokenWrongDevice,
    /// The offered "now" is older than the device's floor for that clock.
    #[error("clock went backwards: {offered} < {floor}")]
    ClockWentBackwards {
        /// The time or counter offered.
        offered: u64,
        /// The device's floor.
        floor: u64,
    },
    /// The manifest has expired (`now >= expires_at`).
    #[error("manifest expired at {expires_at}, now is {now}")]
    Expired {
        /// Expiry from the manifest.
        expires_at: u64,
        /// The verified "now".
        now: u64,
    },
}

/// A manifest that passed every check in [`verify_manifest`]. Only that function makes one, so an installer that
/// takes `&VerifiedManifest` cannot be handed an unchecked manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedManifest<'a> {
    manifest: Manifest<'a>,
    observed: Observed,
}

impl<'a> VerifiedManifest<'a> {
    /// The verified manifest body.
    #[must_use]
    pub fn manifest(&self) -> &Manifest<'a> {
        &self.manifest
    }

    /// The "now" the expiry check used.
    #[must_use]
    pub fn observed(&self) -> Observed {
        self.observed
    }
}

/// Checks a signed envelope against the trusted keys and returns its (still unparsed) body.
///
/// `signing_input` builds the domain-separated message for the body.
fn check_envelope<'e>(
    envelope: &'e [u8],
    trusted_keys: &[[u8; PUBLIC_KEY_LEN]],
    signing_input: SigningInputFn,
) -> Result<&'e [u8], SignatureError> {
    let env = Envelope::decode(envelope)?;
    let mut buf = [0u8; MAX_SIGNING_INPUT_LEN];
    // Envelope::decode already bounded the body, so this cannot fail; map it anyway rather than panic.
    let message = signing_input(env.body, &mut buf).map_err(|_| DecodeError::BadFieldLength)?;
    let signature = Signature::from_bytes(&env.signature);
    let mut known = false;
    for key in trusted_keys.iter().filter(|k| key_id(k) == env.key_id) {
        known = true;
        let key = VerifyingKey::from_bytes(key).map_err(|_| SignatureError::InvalidTrustedKey)?;
        if key.verify_strict(message, &signature).is_ok() {
            return Ok(env.body);
        }
    }
    Err(if known { SignatureError::BadSignature } else { SignatureError::UnknownKey })
}

/// Verifies a signed time token for `device_id` and returns its unix seconds.
///
/// # Errors
/// [`ManifestError::TimeToken`] or [`ManifestError::TimeTokenWrongDevice`].
pub fn verify_time_token(
    envelope: &[u8],
    trusted_keys: &[[u8; PUBLIC_KEY_LEN]],
    device_id: &[u8],
) -> Result<u64, ManifestError> {
    let body = check_envelope(envelope, trusted_keys, time_token_signing_input).map_err(ManifestError::TimeToken)?;
    let token = TimeToken::decode(body).map_err(|e| ManifestError::TimeToken(e.into()))?;
    if token.device_id != device_id {
        return Err(ManifestError::TimeTokenWrongDevice);
    }
    Ok(token.unix_seconds)
}

/// Runs every manifest check, in this order: envelope structure, signature, body, hardware id, device id,
/// release counter, freshness floor, expiry.
///
/// # Errors
/// The first [`ManifestError`] found.
pub fn verify_manifest<'e>(
    envelope: &'e [u8],
    policy: &Policy<'_>,
    now: Freshness<'_>,
) -> Result<VerifiedManifest<'e>, ManifestError> {
    if envelope.len() > MAX_ENVELOPE_LEN {
        return Err(ManifestError::Signature(SignatureError::Decode(DecodeError::TooLong)));
    }
    let body =
        check_envelope(envelope, policy.trusted_keys, manifest_signing_input).map_err(ManifestError::Signature)?;
    let manifest = Manifest::decode(body).map_err(|e| ManifestError::Signature(e.into()))?;
    if manifest.hardware_id != policy.hardware_id {
        return Err(ManifestError::WrongHardwareId);
    }
    if manifest.device_id != policy.device_id {
        return Err(ManifestError::WrongDeviceId);
    }
    if manifest.release_counter < policy.min_release_counter {
        return Err(ManifestError::Rollback { offered: manifest.release_counter, stored: policy.min_release_counter });
    }
    let (observed, now, floor, expires_at) = match (manifest.expiry, now) {
        (Expiry::UnixSeconds(at), Freshness::TimeToken(token)) => {
            let t = verify_time_token(token, policy.trusted_keys, policy.device_id)?;
            (Observed::UnixSeconds(t), t, policy.latest_known_time, at)
        }
        (Expiry::GatewayCounter(at), Freshness::GatewayCounter(c)) => {
            (Observed::GatewayCounter(c), c, policy.latest_known_counter, at)
        }
        _ => return Err(ManifestError::FreshnessKindMismatch),
    };
    if now < floor {
        return Err(ManifestError::ClockWentBackwards { offered: now, floor });
    }
    if now >= expires_at {
        return Err(ManifestError::Expired { expires_at, now });
    }
    Ok(VerifiedManifest { manifest, observed })
}

/// Why a streamed image does not match its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// More bytes arrived than the manifest's length; the excess chunk was refused before it was consumed.
    #[error("image longer than the {expected} bytes in the manifest")]
    TooLong {
        /// Length from the manifest.
        expected: u32,
    },
    /// The stream ended early.
    #[error("image is {got} bytes, manifest says {expected}")]
    TooShort {
        /// Length from the manifest.
        expected: u32,
        /// Bytes received.
        got: u32,
    },
    /// Right length, wrong SHA-256.
    #[error("image hash does not match the manifest")]
    HashMismatch,
}

/// Streaming length-and-hash check of an image against a verified manifest.
#[derive(Debug, Clone)]
pub struct ImageCheck {
    expected_len: u32,
    expected_sha256: [u8; SHA256_LEN],
    seen: u32,
    hasher: Sha256,
}

impl ImageCheck {
    /// Starts checking an image for `manifest`.
    #[must_use]
    pub fn new(manifest: &VerifiedManifest<'_>) -> Self {
        Self::expecting(manifest.manifest.image_len, manifest.manifest.image_sha256)
    }

    /// Starts checking against an explicit length and digest (e.g. a slot descriptor read back from flash).
    #[must_use]
    pub(crate) fn expecting(expected_len: u32, expected_sha256: [u8; SHA256_LEN]) -> Self {
        Self { expected_len, expected_sha256, seen: 0, hasher: Sha256::new() }
    }

    /// Feeds the next chunk. A chunk that would exceed the length is refused whole and not hashed.
    ///
    /// # Errors
    /// [`ImageError::TooLong`].
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), ImageError> {
        let too_long = ImageError::TooLong { expected: self.expected_len };
        let len = u32::try_from(chunk.len()).map_err(|_| too_long)?;
        let seen = self.seen.checked_add(len).filter(|s| *s <= self.expected_len).ok_or(too_long)?;
        self.hasher.update(chunk);
        self.seen = seen;
        Ok(())
    }

    /// Bytes accepted so far.
    #[must_use]
    pub fn seen(&self) -> u32 {
        self.seen
    }

    /// Ends the stream and compares length and hash.
    ///
    /// # Errors
    /// [`ImageError::TooShort`] or [`ImageError::HashMismatch`].
    pub fn finish(self) -> Result<(), ImageError> {
        if self.seen != self.expected_len {
            return Err(ImageError::TooShort { expected: self.expected_len, got: self.seen });
        }
        let digest: [u8; SHA256_LEN] = self.hasher.finalize().into();
        if digest == self.expected_sha256 { Ok(()) } else { Err(ImageError::HashMismatch) }
    }
}
