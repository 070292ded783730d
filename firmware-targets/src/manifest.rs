//! Byte format of the hub-signed image manifest and time token: types, encoders (usable from `std` code, writing
//! into caller buffers) and strict, allocation-free decoders. Nothing here checks signatures; see [`crate::verify`].
//!
//! # Byte format (version 1)
//!
//! All CBOR is definite-length and uses the shortest encoding of every integer and length (RFC 8949 §4.2.1
//! "preferred serialization", which is what [`minicbor`] emits). A decoder that finds anything else, an unknown
//! version, a field outside its limit or bytes after the last item rejects the input.
//!
//! **Manifest body** — a CBOR array of 8 items, at most [`MAX_BODY_LEN`] bytes:
//!
//! | # | field             | CBOR type | notes                                                       |
//! |---|-------------------|-----------|-------------------------------------------------------------|
//! | 0 | format version    | uint      | always [`FORMAT_VERSION`] (1)                               |
//! | 1 | hardware id       | bstr      | 1..=[`MAX_ID_LEN`] bytes, compared byte for byte            |
//! | 2 | device id         | bstr      | 1..=[`MAX_ID_LEN`] bytes, compared byte for byte            |
//! | 3 | image length      | uint      | 1..=`u32::MAX` bytes                                        |
//! | 4 | image SHA-256     | bstr      | exactly 32 bytes                                            |
//! | 5 | release counter   | uint      | u64, anti-rollback: never lower than the device's stored one |
//! | 6 | expiry kind       | uint      | 0 = unix seconds (needs a time token), 1 = gateway counter  |
//! | 7 | expires at        | uint      | u64; the manifest is valid while `now < expires at`         |
//!
//! **Time token body** — a CBOR array of 3 items: `[1, device id (bstr, 1..=MAX_ID_LEN), unix seconds (uint)]`.
//!
//! **Signing input** — `domain tag || body`, where the tag is [`MANIFEST_DOMAIN`] (`"outpost-fw-manifest-v1\0"`)
//! or [`TIME_TOKEN_DOMAIN`] (`"outpost-fw-time-v1\0"`). The tags keep a signed time token from ever being read as
//! a manifest and vice versa. Signatures are plain Ed25519 (RFC 8032), verified with `verify_strict`.
//!
//! **Signed envelope** — a CBOR array of 3 items, at most [`MAX_ENVELOPE_LEN`] bytes:
//! `[key id (bstr, 8 bytes), body (bstr), signature (bstr, 64 bytes)]`. The key id is the first 8 bytes of
//! SHA-256 over the 32-byte Ed25519 public key ([`key_id`]); it only selects which provisioned key to try.

use minicbor::encode::write::Cursor;
use minicbor::{Decoder, Encoder};
use sha2::{Digest, Sha256};

/// The only manifest / time-token format version this crate reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Longest hardware id or device id, in bytes.
pub const MAX_ID_LEN: usize = 32;
/// Length of a key id: a prefix of SHA-256 over the public key.
pub const KEY_ID_LEN: usize = 8;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of a SHA-256 digest.
pub const SHA256_LEN: usize = 32;
/// Longest encoded manifest or time-token body (a maximal manifest body is 126 bytes).
pub const MAX_BODY_LEN: usize = 128;
/// Longest signed envelope (a maximal one is 207 bytes).
pub const MAX_ENVELOPE_LEN: usize = 256;
/// Domain tag prefixed to a manifest body to form its signing input.
pub const MANIFEST_DOMAIN: &[u8] = b"outpost-fw-manifest-v1\0";
/// Domain tag prefixed to a time-token body to form its signing input.
pub const TIME_TOKEN_DOMAIN: &[u8] = b"outpost-fw-time-v1\0";
/// Longest signing input: the longer domain tag plus a maximal body.
pub const MAX_SIGNING_INPUT_LEN: usize = MANIFEST_DOMAIN.len() + MAX_BODY_LEN;

const MANIFEST_ITEMS: u64 = 8;
const TIME_TOKEN_ITEMS: u64 = 3;
const ENVELOPE_ITEMS: u64 = 3;
const EXPIRY_UNIX_SECONDS: u8 = 0;
const EXPIRY_GATEWAY_COUNTER: u8 = 1;

/// Builds a domain-separated signing input from a body into a buffer ([`manifest_signing_input`],
/// [`time_token_signing_input`]).
pub type SigningInputFn = for<'o> fn(&[u8], &'o mut [u8]) -> Result<&'o [u8], EncodeError>;

/// Identifies a trusted public key inside an envelope.
pub type KeyId = [u8; KEY_ID_LEN];

/// When a manifest stops being installable, and on which clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Unix seconds; checked against a hub-signed time token.
    UnixSeconds(u64),
    /// A value of the monotonic counter the gateway hands the secondary (e.g. its metadata epoch).
    GatewayCounter(u64),
}

/// The manifest body: what the hub says one device may install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// Hardware model the image is built for.
    pub hardware_id: &'a [u8],
    /// The one device the manifest is addressed to.
    pub device_id: &'a [u8],
    /// Exact image length in bytes.
    pub image_len: u32,
    /// SHA-256 of the whole image.
    pub image_sha256: [u8; SHA256_LEN],
    /// Release counter; the device refuses anything lower than what it has confirmed.
    pub release_counter: u64,
    /// End of validity.
    pub expiry: Expiry,
}

/// A hub-signed statement of the current time for one device, for secondaries without a trusted clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeToken<'a> {
    /// The device the token is issued to.
    pub device_id: &'a [u8],
    /// Current time as unix seconds.
    pub unix_seconds: u64,
}

/// The three parts of a signed envelope, borrowed from its bytes; nothing in it is authenticated yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Which trusted key claims to have signed.
    pub key_id: KeyId,
    /// The encoded body (manifest or time token).
    pub body: &'a [u8],
    /// Ed25519 signature over the domain tag and `body`.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why a value could not be encoded. Always a caller mistake, never the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The output buffer is too small; [`MAX_ENVELOPE_LEN`] / [`MAX_BODY_LEN`] / [`MAX_SIGNING_INPUT_LEN`] always fit.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A hardware or device id is empty or longer than [`MAX_ID_LEN`].
    #[error("id must be 1..={MAX_ID_LEN} bytes")]
    BadIdLength,
    /// The image length is zero.
    #[error("image length must be at least 1")]
    EmptyImage,
    /// The body handed to the envelope or signing-input encoder is empty or longer than [`MAX_BODY_LEN`].
    #[error("body must be 1..={MAX_BODY_LEN} bytes")]
    BadBodyLength,
}

/// Why bytes could not be decoded. Always the peer's doing: the input is not a version-1 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input exceeds its length limit.
    #[error("input too long")]
    TooLong,
    /// Not the expected CBOR structure (wrong type, wrong item count, indefinite length, truncated).
    #[error("malformed CBOR")]
    Malformed,
    /// Well-formed, but not in the one canonical encoding (e.g. a non-shortest integer).
    #[error("not canonically encoded")]
    NonCanonical,
    /// Bytes follow the last item.
    #[error("trailing bytes after the value")]
    TrailingBytes,
    /// The format version is not [`FORMAT_VERSION`].
    #[error("unsupported format version")]
    UnsupportedVersion,
    /// An id, digest, key id or signature has the wrong length.
    #[error("field has the wrong length")]
    BadFieldLength,
    /// The image length is zero.
    #[error("image length is zero")]
    EmptyImage,
    /// The expiry kind is neither 0 nor 1.
    #[error("unknown expiry kind")]
    UnknownExpiryKind,
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(_: minicbor::decode::Error) -> Self {
        Self::Malformed
    }
}

impl<E> From<minicbor::encode::Error<E>> for EncodeError {
    fn from(_: minicbor::encode::Error<E>) -> Self {
        // The only writer used here is a bounded slice; its only failure is running out of room.
        Self::BufferTooSmall
    }
}

/// The key id of a public key: the first [`KEY_ID_LEN`] bytes of its SHA-256.
#[must_use]
pub fn key_id(public_key: &[u8; PUBLIC_KEY_LEN]) -> KeyId {
    let digest: [u8; SHA256_LEN] = Sha256::digest(public_key).into();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(digest.get(..KEY_ID_LEN).unwrap_or(&[0u8; KEY_ID_LEN]));
    id
}

fn id_ok(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN
}

fn written(enc: &Encoder<Cursor<&mut [u8]>>) -> usize {
    enc.writer().position()
}

impl Manifest<'_> {
    /// Encodes the body into `out` and returns the number of bytes written (at most [`MAX_BODY_LEN`]).
    ///
    /// # Errors
    /// [`EncodeError`] when a field is out of its limits or `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if !id_ok(self.hardware_id) || !id_ok(self.device_id) {
            return Err(EncodeError::BadIdLength);
        }
        if self.image_len == 0 {
            return Err(EncodeError::EmptyImage);
        }
        let (kind, at) = match self.expiry {
            Expiry::UnixSeconds(t) => (EXPIRY_UNIX_SECONDS, t),
            Expiry::GatewayCounter(c) => (EXPIRY_GATEWAY_COUNTER, c),
        };
        let mut enc = Encoder::new(Cursor::new(out));
        enc.array(MANIFEST_ITEMS)?
            .u8(FORMAT_VERSION)?
            .bytes(self.hardware_id)?
            .bytes(self.device_id)?
            .u32(self.image_len)?
            .bytes(&self.image_sha256)?
            .u64(self.release_counter)?
            .u8(kind)?
            .u64(at)?;
        Ok(written(&enc))
    }

    /// Decodes a body produced by [`Manifest::encode`], rejecting any other encoding of the same values.
    ///
    /// # Errors
    /// [`DecodeError`] for anything but one canonical version-1 manifest body.
    pub fn decode(body: &[u8]) -> Result<Manifest<'_>, DecodeError> {
        if body.len() > MAX_BODY_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut d = Decoder::new(body);
        if d.array()? != Some(MANIFEST_ITEMS) {
            return Err(DecodeError::Malformed);
        }
        if d.u64()? != u64::from(FORMAT_VERSION) {
            return Err(DecodeError::UnsupportedVersion);
        }
        let hardware_id = d.bytes()?;
        let device_id = d.bytes()?;
        if !id_ok(hardware_id) || !id_ok(device_id) {
            return Err(DecodeError::BadFieldLength);
        }
        let image_len = d.u32()?;
        if image_len == 0 {
            return Err(DecodeError::EmptyImage);
        }
        let image_sha256 = fixed::<SHA256_LEN>(d.bytes()?)?;
        let release_counter = d.u64()?;
        let kind = d.u64()?;
        let at = d.u64()?;
        let expiry = match kind {
            k if k == u64::from(EXPIRY_UNIX_SECONDS) => Expiry::UnixSeconds(at),
            k if k == u64::from(EXPIRY_GATEWAY_COUNTER) => Expiry::GatewayCounter(at),
            _ => return Err(DecodeError::UnknownExpiryKind),
        };
        if d.position() != body.len() {
            return Err(DecodeError::TrailingBytes);
        }
        let manifest = Manifest { hardware_id, device_id, image_len, image_sha256, release_counter, expiry };
        ensure_canonical(body, |out| manifest.encode(out))?;
        Ok(manifest)
    }
}

impl TimeToken<'_> {
    /// Encodes the token body into `out` and returns the number of bytes written.
    ///
    /// # Errors
    /// [`EncodeError`] when the device id is out of its limits or `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if !id_ok(self.device_id) {
            return Err(EncodeError::BadIdLength);
        }
        let mut enc = Encoder::new(Cursor::new(out));
        enc.array(TIME_TOKEN_ITEMS)?.u8(FORMAT_VERSION)?.bytes(self.device_id)?.u64(self.unix_seconds)?;
        Ok(written(&enc))
    }

    /// Decodes a body produced by [`TimeToken::encode`].
    ///
    /// # Errors
    /// [`DecodeError`] for anything but one canonical version-1 time-token body.
    pub fn decode(body: &[u8]) -> Result<TimeToken<'_>, DecodeError> {
        if body.len() > MAX_BODY_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut d = Decoder::new(body);
        if d.array()? != Some(TIME_TOKEN_ITEMS) {
            return Err(DecodeError::Malformed);
        }
        if d.u64()? != u64::from(FORMAT_VERSION) {
            return Err(DecodeError::UnsupportedVersion);
        }
        let device_id = d.bytes()?;
        if !id_ok(device_id) {
            return Err(DecodeError::BadFieldLength);
        }
        let unix_seconds = d.u64()?;
        if d.position() != body.len() {
            return Err(DecodeError::TrailingBytes);
        }
        let token = TimeToken { device_id, unix_seconds };
        ensure_canonical(body, |out| token.encode(out))?;
        Ok(token)
    }
}

impl<'a> Envelope<'a> {
    /// Decodes an envelope. Only the structure is checked; the signature is not.
    ///
    /// # Errors
    /// [`DecodeError`] for anything but one canonical envelope within [`MAX_ENVELOPE_LEN`].
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut d = Decoder::new(bytes);
        if d.array()? != Some(ENVELOPE_ITEMS) {
            return Err(DecodeError::Malformed);
        }
        let key_id = fixed::<KEY_ID_LEN>(d.bytes()?)?;
        let body = d.bytes()?;
        if body.is_empty() || body.len() > MAX_BODY_LEN {
            return Err(DecodeError::BadFieldLength);
        }
        let signature = fixed::<SIGNATURE_LEN>(d.bytes()?)?;
        if d.position() != bytes.len() {
            return Err(DecodeError::TrailingBytes);
        }
        let envelope = Envelope { key_id, body, signature };
        ensure_canonical(bytes, |out| encode_envelope(&envelope.key_id, envelope.body, &envelope.signature, out))?;
        Ok(envelope)
    }
}

/// Encodes a signed envelope into `out` and returns the number of bytes written (at most [`MAX_ENVELOPE_LEN`]).
///
/// # Errors
/// [`EncodeError`] when `body` is empty or longer than [`MAX_BODY_LEN`], or `out` is too small.
pub fn encode_envelope(
    key_id: &KeyId,
    body: &[u8],
    signature: &[u8; SIGNATURE_LEN],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    if body.is_empty() || body.len() > MAX_BODY_LEN {
        return Err(EncodeError::BadBodyLength);
    }
    let mut enc = Encoder::new(Cursor::new(out));
    enc.array(ENVELOPE_ITEMS)?.bytes(key_id)?.bytes(body)?.bytes(signature)?;
    Ok(written(&enc))
}

/// Signs `body` and wraps it in an envelope naming `public_key` (what the hub does, with the signer held
/// elsewhere: `sign` gets the domain-separated signing input built by `signing_input` and returns the Ed25519
/// signature). Returns the envelope's length in `out`. Not on the verify path.
///
/// # Errors
/// [`EncodeError`] when `body` is empty or too long, or `out` is too small.
pub fn seal(
    public_key: &[u8; PUBLIC_KEY_LEN],
    body: &[u8],
    signing_input: SigningInputFn,
    sign: impl FnOnce(&[u8]) -> [u8; SIGNATURE_LEN],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut buf = [0u8; MAX_SIGNING_INPUT_LEN];
    let signature = sign(signing_input(body, &mut buf)?);
    encode_envelope(&key_id(public_key), body, &signature, out)
}

/// Writes the bytes a hub key signs for a manifest body (`MANIFEST_DOMAIN || body`) into `out`.
///
/// # Errors
/// [`EncodeError`] when `body` is empty or too long, or `out` is shorter than the input.
pub fn manifest_signing_input<'o>(body: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], EncodeError> {
    signing_input(MANIFEST_DOMAIN, body, out)
}

/// Writes the bytes a hub key signs for a time-token body (`TIME_TOKEN_DOMAIN || body`) into `out`.
///
/// # Errors
/// [`EncodeError`] when `body` is empty or too long, or `out` is shorter than the input.
pub fn time_token_signing_input<'o>(body: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], EncodeError> {
    signing_input(TIME_TOKEN_DOMAIN, body, out)
}

fn signing_input<'o>(domain: &[u8], body: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], EncodeError> {
    if body.is_empty() || body.len() > MAX_BODY_LEN {
        return Err(EncodeError::BadBodyLength);
    }
    let total = domain.len().checked_add(body.len()).ok_or(EncodeError::BufferTooSmall)?;
    let dst = out.get_mut(..total).ok_or(EncodeError::BufferTooSmall)?;
    let (head, tail) = dst.split_at_mut(domain.len());
    head.copy_from_slice(domain);
    tail.copy_from_slice(body);
    Ok(dst)
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::BadFieldLength)
}

/// Re-encodes a decoded value and demands the identical bytes, so every value has exactly one accepted encoding
/// (no parser differentials between the std gateway and the secondary, stable digests of manifests).
fn ensure_canonical(
    input: &[u8],
    encode: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), DecodeError> {
    let mut buf = [0u8; MAX_ENVELOPE_LEN];
    match encode(&mut buf) {
        Ok(n) if buf.get(..n) == Some(input) => Ok(()),
        _ => Err(DecodeError::NonCanonical),
    }
}
