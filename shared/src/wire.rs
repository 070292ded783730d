//! The agent–hub wire protocol, sans-IO: frames, messages, per-type size limits and the per-stream exchanges.
//!
//! One request per bidirectional QUIC stream. Every frame is `len u32 BE | type u8 | body (canonical CBOR map)`;
//! the type and length are checked against [`Limits`] before a single body byte is buffered, so a peer can never
//! make us hold more than one frame of bounded size. Target bytes follow a `TargetHeader` frame raw, exactly
//! `len` of them, then the stream ends. Decoding never panics: every fault is a typed [`WireError`].
//!
//! Message bodies (all CBOR maps with text keys, canonical encoding, no unknown keys):
//!
//! | type | message | body |
//! |---|---|---|
//! | `0x01` | [`Request::GetMetadata`] | `{"name": text, "max_len": uint}` |
//! | `0x02` | [`Request::GetAssignment`] | `{"device"?: bytes .size 32}` |
//! | `0x03` | [`Request::GetTarget`] | `{"path": text, "offset": uint, "len"?: uint}` |
//! | `0x04` | [`Request::PostReport`] | `{"body": bytes, "device"?: bytes .size 32}` |
//! | `0x10` | [`Request::PostTelemetry`] | `{"body": bytes, "device"?: bytes .size 32}` (a `telemetry::Batch`) |
//! | `0x05` | [`Request::GetChallenge`] | `{?"device": bytes .size 32}` |
//! | `0x06` | [`Request::PostEvidence`] | `{"evidence": bytes, ?"device": bytes .size 32, ?"exporter": bytes .size 32}` (an EAT in COSE_Sign1, `outpost_attestation::evidence`) |
//! | `0x07` | [`Request::Enroll`] | `{"token": text, "hardware": text, ?"tpm": bytes}` |
//! | `0x81` | [`Response::Metadata`] | `{"bytes": bytes}` |
//! | `0x82` | [`Response::NotFound`] | `{}` |
//! | `0x83` | [`Response::Assignment`] | `{"bytes": bytes}` |
//! | `0x84` | [`Response::TargetHeader`] | `{"total_len": uint, "offset": uint, "len": uint}` then `len` raw bytes |
//! | `0x85` | [`Response::Ack`] | `{}` |
//! | `0x86` | [`Response::Error`] | `{"code": uint, "message": text}` |
//! | `0x90` | [`Response::TelemetryAck`] | `{"up_to": uint}`: every event up to this sequence number is stored |
//! | `0x91` | [`Response::Notice`] | `{"revocations": uint}`, pushed on a hub-opened unidirectional stream |
//! | `0x87` | [`Response::Challenge`] | `{"nonce_challenge": bytes .size 32}` |
//! | `0x88` | [`Response::Attested`] | `{"status": "affirming" / "warning", "expires": uint, "tier": "software" / "hardware"}` |
//!
//! Attestation: on a hub that requires it, every request but `GetChallenge`, `PostEvidence` and `Enroll` is answered
//! `Error` with [`ErrorCode::NotAttested`] until the connection holds a current attestation result. A server that
//! does not appraise evidence answers `GetChallenge` with `NotFound`. `Enroll` is answered `Ack` once the hub has
//! approved the connection's key.
//!
//! A site node relays its devices' attestation (RFC 9334's background-check model with the site node as relying
//! party): on its own attested connection it asks for a challenge with `device` set, and posts that device's
//! evidence with `device` and `exporter`, the TLS exporter of the device's connection to the site node, to which
//! the evidence's nonce is bound. The hub appraises it as it would a direct connection's and answers `Attested`.

/// Largest UDP payload QUIC path-MTU discovery probes for (jumbo frames). Discovery only raises the packet size
/// where the path carries it, so a high bound is safe (quinn's own advice) and lets LANs and loopback use fewer,
/// larger packets; the default, 1452, fits Ethernet only.
pub const MTU_DISCOVERY_UPPER_BOUND: u16 = 8952;

use ciborium::Value;

use crate::canonical;

/// The ALPN protocol identifier both sides insist on.
pub const ALPN: &[u8] = b"outpost/1";

/// Bytes in a frame header: a big-endian `u32` body length, then a one-byte message type.
pub const HEADER_LEN: usize = 5;

/// QUIC application error codes used to close connections and reset or stop streams.
pub mod codes {
    /// Connection closed normally (hub shutting down, client done).
    pub const CLOSE_NORMAL: u32 = 0;
    /// Connection refused after the handshake: the device key is not on the hub's allow-list.
    pub const CLOSE_UNKNOWN_DEVICE: u32 = 0x10;
    /// Connection refused: the peer's identity could not be read as an Ed25519 key.
    pub const CLOSE_BAD_IDENTITY: u32 = 0x11;
    /// Connection refused: the hub is at its connection limit.
    pub const CLOSE_BUSY: u32 = 0x12;
    /// Stream stopped because the request is complete and nothing more is wanted on it.
    pub const STREAM_DONE: u32 = 0;
    /// Stream stopped or reset because the peer broke the protocol (bad frame, wrong message).
    pub const STREAM_PROTOCOL: u32 = 0x20;
    /// Stream stopped or reset because the peer stalled past the timeout.
    pub const STREAM_TIMEOUT: u32 = 0x21;
    /// Stream reset because the sender hit a local fault (I/O error reading a target, say).
    pub const STREAM_INTERNAL: u32 = 0x22;
}

/// Per-message-type limits on body size, plus bounds on the strings inside requests.
///
/// A frame whose declared length exceeds its type's limit is refused from its header alone. Both sides use the
/// same struct; start from [`Limits::default`] and tighten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `GetMetadata` body.
    pub get_metadata: u32,
    /// Largest `GetAssignment` body.
    pub get_assignment: u32,
    /// Largest `GetTarget` body.
    pub get_target: u32,
    /// Largest `PostReport` body (the report bytes plus a few bytes of CBOR).
    pub post_report: u32,
    /// Largest `PostTelemetry` body (a batch plus a few bytes of CBOR).
    pub post_telemetry: u32,
    /// Largest `TelemetryAck` body.
    pub telemetry_ack: u32,
    /// Largest `Metadata` body. A client also caps it by the `max_len` it asked for.
    pub metadata: u32,
    /// Largest `NotFound` body.
    pub not_found: u32,
    /// Largest `Assignment` body.
    pub assignment: u32,
    /// Largest `TargetHeader` body.
    pub target_header: u32,
    /// Largest `Ack` body.
    pub ack: u32,
    /// Largest `Error` body.
    pub error: u32,
    /// Largest `GetChallenge` body.
    pub get_challenge: u32,
    /// Largest `PostEvidence` body.
    pub post_evidence: u32,
    /// Largest `Enroll` body.
    pub enroll: u32,
    /// Largest `Challenge` body.
    pub challenge: u32,
    /// Largest `Attested` body.
    pub attested: u32,
    /// Longest metadata file name, in bytes.
    pub max_name_len: u32,
    /// Longest target path, in bytes.
    pub max_path_len: u32,
}

impl Limits {
    /// Default `GetMetadata` body limit.
    pub const GET_METADATA: u32 = 512;
    /// Default `GetAssignment` body limit (an empty map, or one device key).
    pub const GET_ASSIGNMENT: u32 = 64;
    /// Default `GetTarget` body limit: room for a path of [`Limits::MAX_PATH_LEN`] bytes.
    pub const GET_TARGET: u32 = 2048;
    /// Default `PostReport` body limit: 64 KiB.
    pub const POST_REPORT: u32 = 64 * 1024;
    /// Default `PostTelemetry` body limit: a 1 MiB batch (`telemetry::BatchLimits`) and its framing.
    pub const POST_TELEMETRY: u32 = 1024 * 1024 + 128;
    /// Default `TelemetryAck` body limit.
    pub const TELEMETRY_ACK: u32 = 32;
    /// Default `Metadata` body limit: 6 MiB, above sigstore-tuf's default 5 MB targets bound.
    pub const METADATA: u32 = 6 * 1024 * 1024;
    /// Default `NotFound` body limit.
    pub const NOT_FOUND: u32 = 16;
    /// Default `Assignment` body limit: 64 KiB.
    pub const ASSIGNMENT: u32 = 64 * 1024;
    /// Default `TargetHeader` body limit.
    pub const TARGET_HEADER: u32 = 128;
    /// Default `Ack` body limit.
    pub const ACK: u32 = 16;
    /// Default `Error` body limit.
    pub const ERROR: u32 = 1024;
    /// Default `GetChallenge` body limit: a map of at most a device key.
    pub const GET_CHALLENGE: u32 = 64;
    /// Default `PostEvidence` body limit: the attestation crate's 2 KiB evidence bound plus room for the map and
    /// a relay's device key and exporter.
    pub const POST_EVIDENCE: u32 = 2048 + 160;
    /// Default `Enroll` body limit: a token, a line of hardware facts and TPM enrolment facts.
    pub const ENROLL: u32 = 1024;
    /// Default `Challenge` body limit: 32 bytes and the map around them.
    pub const CHALLENGE: u32 = 64;
    /// Default `Attested` body limit.
    pub const ATTESTED: u32 = 96;
    /// Longest enrolment token, in bytes.
    pub const MAX_TOKEN_LEN: usize = 128;
    /// Longest hardware-facts line in `Enroll`, in bytes.
    pub const MAX_HARDWARE_LEN: usize = 256;
    /// Longest TPM enrolment facts in `Enroll`: a P-256 point, a PCR mask and 8 PCR values.
    pub const MAX_TPM_FACTS_LEN: usize = 65 + 4 + 8 * 32;
    /// Bytes in an attestation challenge.
    pub const CHALLENGE_LEN: usize = 32;
    /// Default longest metadata file name.
    pub const MAX_NAME_LEN: u32 = 255;
    /// Default longest target path.
    pub const MAX_PATH_LEN: u32 = 1024;
    /// Longest error message put on the wire; longer ones are cut at a character boundary.
    pub const MAX_ERROR_MESSAGE: usize = 512;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            get_metadata: Self::GET_METADATA,
            get_assignment: Self::GET_ASSIGNMENT,
            get_target: Self::GET_TARGET,
            post_report: Self::POST_REPORT,
            post_telemetry: Self::POST_TELEMETRY,
            telemetry_ack: Self::TELEMETRY_ACK,
            metadata: Self::METADATA,
            not_found: Self::NOT_FOUND,
            assignment: Self::ASSIGNMENT,
            target_header: Self::TARGET_HEADER,
            ack: Self::ACK,
            error: Self::ERROR,
            get_challenge: Self::GET_CHALLENGE,
            post_evidence: Self::POST_EVIDENCE,
            enroll: Self::ENROLL,
            challenge: Self::CHALLENGE,
            attested: Self::ATTESTED,
            max_name_len: Self::MAX_NAME_LEN,
            max_path_len: Self::MAX_PATH_LEN,
        }
    }
}

/// Why a frame or an exchange was refused. Each variant maps to an [`ErrorCode`] sent back to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The stream ended inside a frame, or before the frame the exchange needs.
    #[error("stream ended early: {received} bytes of an incomplete frame or body")]
    Truncated {
        /// How many bytes of the incomplete frame (header included) or raw body had arrived.
        received: u64,
    },
    /// A frame header declared a body longer than its type allows; nothing of the body was buffered.
    #[error("frame type {kind:#04x} declares {len} bytes, limit is {limit}")]
    Oversized {
        /// The message type byte.
        kind: u8,
        /// The declared body length.
        len: u64,
        /// The limit for that type.
        limit: u32,
    },
    /// The type byte names no message this side accepts.
    #[error("unknown message type {kind:#04x}")]
    UnknownType {
        /// The message type byte.
        kind: u8,
    },
    /// The body is not well-formed canonical CBOR, or its map lacks or adds keys.
    #[error("malformed body for message type {kind:#04x}: {reason}")]
    Malformed {
        /// The message type byte.
        kind: u8,
        /// What was wrong.
        reason: String,
    },
    /// Well-formed CBOR of the wrong type: text where a map was due, a string where an integer was due...
    #[error("message type {kind:#04x}: `{field}` must be {expected}")]
    WrongCborType {
        /// The message type byte.
        kind: u8,
        /// The field (or `body` for the whole body).
        field: &'static str,
        /// The CBOR type expected there.
        expected: &'static str,
    },
    /// A field has the right type but a value outside what the protocol allows.
    #[error("message type {kind:#04x}: invalid `{field}`: {reason}")]
    InvalidField {
        /// The message type byte.
        kind: u8,
        /// The field.
        field: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// Bytes arrived after the message (or raw body) that completes the exchange.
    #[error("{extra} unexpected bytes after the end of the message")]
    TrailingBytes {
        /// How many bytes were left over in the offending read.
        extra: usize,
    },
    /// The response does not answer the request sent (a `Metadata` for a `GetTarget`, a range not asked for...).
    #[error("response does not fit the request: {reason}")]
    UnexpectedResponse {
        /// What did not fit.
        reason: String,
    },
}

impl WireError {
    /// The error code that tells the peer about this fault.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::Truncated { .. } => ErrorCode::Truncated,
            WireError::Oversized { .. } => ErrorCode::Oversized,
            WireError::UnknownType { .. } => ErrorCode::UnknownType,
            WireError::Malformed { .. } => ErrorCode::Malformed,
            WireError::WrongCborType { .. } => ErrorCode::WrongCborType,
            WireError::InvalidField { .. } => ErrorCode::InvalidRequest,
            WireError::TrailingBytes { .. } => ErrorCode::TrailingBytes,
            WireError::UnexpectedResponse { .. } => ErrorCode::Malformed,
        }
    }

    /// The `Error` response that reports this fault to the peer.
    pub fn to_response(&self) -> Response {
        Response::error(self.code(), self.to_string())
    }
}

/// The typed reason carried by [`Response::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request frame was cut short.
    Truncated,
    /// The request frame declared a body above its type's limit.
    Oversized,
    /// The request frame's type is unknown.
    UnknownType,
    /// The request body is not well-formed canonical CBOR of the right shape.
    Malformed,
    /// The request body has a field of the wrong CBOR type.
    WrongCborType,
    /// A request field has a value the protocol does not allow (a path with `..`, a name too long...).
    InvalidRequest,
    /// Bytes followed the request frame.
    TrailingBytes,
    /// The request did not arrive in time.
    Timeout,
    /// The requested target range starts beyond the end of the target.
    RangeNotSatisfiable,
    /// The answer is larger than the request's `max_len` or the response limit.
    TooLarge,
    /// The hub failed internally; the message gives no detail on purpose.
    Internal,
    /// The request is refused: a site node asking for a device not of its site, or a package its site policy
    /// refuses (the message names the rule).
    Forbidden,
    /// The connection holds no current attestation result (none yet, expired, failed, or the device was revoked):
    /// the message is `not attested: <reason>`.
    NotAttested,
    /// A code this version does not know (sent by a newer peer).
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Truncated => 1,
            ErrorCode::Oversized => 2,
            ErrorCode::UnknownType => 3,
            ErrorCode::Malformed => 4,
            ErrorCode::WrongCborType => 5,
            ErrorCode::InvalidRequest => 6,
            ErrorCode::TrailingBytes => 7,
            ErrorCode::Timeout => 8,
            ErrorCode::RangeNotSatisfiable => 9,
            ErrorCode::TooLarge => 10,
            ErrorCode::Internal => 11,
            ErrorCode::Forbidden => 12,
            ErrorCode::NotAttested => 13,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a number on the wire; unknown numbers become [`ErrorCode::Other`].
    pub fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::Truncated,
            2 => ErrorCode::Oversized,
            3 => ErrorCode::UnknownType,
            4 => ErrorCode::Malformed,
            5 => ErrorCode::WrongCborType,
            6 => ErrorCode::InvalidRequest,
            7 => ErrorCode::TrailingBytes,
            8 => ErrorCode::Timeout,
            9 => ErrorCode::RangeNotSatisfiable,
            10 => ErrorCode::TooLarge,
            11 => ErrorCode::Internal,
            12 => ErrorCode::Forbidden,
            13 => ErrorCode::NotAttested,
            n => ErrorCode::Other(n),
        }
    }
}

/// Whose evidence a site node relays, and the connection it was made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// The device's public key.
    pub device: [u8; 32],
    /// The TLS exporter of the device's connection to the site node (what the evidence nonce binds).
    pub exporter: [u8; 32],
}

/// What an agent asks the hub, one per stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A TUF metadata file by name (`timestamp.json`, `3.root.json`, `7.snapshot.json`...), at most `max_len`
    /// bytes long.
    GetMetadata {
        /// The file name: ASCII letters, digits, `.`, `_`, `-`; no leading dot.
        name: String,
        /// The largest answer the agent will take.
        max_len: u64,
    },
    /// The director's assignment for the connected device (the connection's peer identity), or, from a site
    /// node, for `device` of its site.
    GetAssignment {
        /// The device a site node asks for; `None`: the peer itself.
        device: Option<[u8; 32]>,
    },
    /// A byte range of a target file: from `offset`, `len` bytes or to the end.
    GetTarget {
        /// Repository-relative target path: `/`-separated, no empty, `.` or `..` segments.
        path: String,
        /// First byte wanted.
        offset: u64,
        /// How many bytes; `None` means to the end.
        len: Option<u64>,
    },
    /// Telemetry or installed-state report from the device; the hub acknowledges once it is stored.
    PostReport {
        /// The report, opaque to the transport.
        body: Vec<u8>,
        /// The device a site node forwards for; `None`: the peer itself.
        device: Option<[u8; 32]>,
    },
    /// A batch of queued telemetry events; the hub answers with the sequence number stored up to.
    PostTelemetry {
        /// The batch (`telemetry::Batch`, canonical CBOR), opaque to the transport.
        body: Vec<u8>,
        /// The device a site node forwards for; `None`: the peer itself.
        device: Option<[u8; 32]>,
    },
    /// A fresh attestation challenge for this connection.
    GetChallenge {
        /// The device a site node relays for; `None`: the peer itself.
        device: Option<[u8; 32]>,
    },
    /// Attestation evidence answering this connection's challenge.
    PostEvidence {
        /// The signed EAT (COSE_Sign1), opaque to the transport.
        evidence: Vec<u8>,
        /// For a site node relaying a device's evidence: the device and its connection's TLS exporter.
        relay: Option<Relay>,
    },
    /// Enrols the connection's key with a one-time token from `outpost-hub device token`.
    Enroll {
        /// The token, as the operator handed it over (at most [`Limits::MAX_TOKEN_LEN`] bytes).
        token: String,
        /// What the device says about its hardware, one line (at most [`Limits::MAX_HARDWARE_LEN`] bytes).
        hardware: String,
        /// Its TPM's enrolment facts (`outpost_attestation::TpmEnrolment::to_bytes`, at most
        /// [`Limits::MAX_TPM_FACTS_LEN`] bytes), when it attests with a TPM.
        tpm: Option<Vec<u8>>,
    },
}

/// An attestation verdict that lets the hub serve (RFC 9334 trustworthiness: affirming or warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestedStatus {
    /// Everything matched.
    Affirming,
    /// Verified, with a concern (the device runs the model it is moving away from); still served.
    Warning,
}

/// How strongly the device's evidence is rooted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestedTier {
    /// A key file on the device.
    Software,
    /// A TPM quote.
    Hardware,
}

impl AttestedStatus {
    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestedStatus::Affirming => "affirming",
            AttestedStatus::Warning => "warning",
        }
    }
}

impl AttestedTier {
    /// The wire text.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestedTier::Software => "software",
            AttestedTier::Hardware => "hardware",
        }
    }
}

/// What the hub answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The metadata file's bytes.
    Metadata {
        /// The file's bytes, exactly as signed.
        bytes: Vec<u8>,
    },
    /// The metadata, assignment or target does not exist.
    NotFound,
    /// The device's director assignment.
    Assignment {
        /// The signed assignment's bytes.
        bytes: Vec<u8>,
    },
    /// The target range that follows raw on the stream: exactly `len` bytes, starting at `offset`.
    TargetHeader {
        /// The whole target's length.
        total_len: u64,
        /// The first byte sent (as requested).
        offset: u64,
        /// How many raw bytes follow.
        len: u64,
    },
    /// The report was stored.
    Ack,
    /// A fresh attestation challenge, valid for one `PostEvidence` on this connection.
    Challenge {
        /// The hub's random challenge; the agent derives the evidence nonce from it and this connection's TLS
        /// exporter.
        nonce_challenge: [u8; 32],
    },
    /// The evidence was appraised and the connection is attested until `expires`.
    Attested {
        /// Affirming or warning.
        status: AttestedStatus,
        /// Wall-clock expiry of the result (Unix seconds); the agent attests again on a new connection.
        expires: u64,
        /// The tier the evidence proves.
        tier: AttestedTier,
    },
    /// The request failed.
    Error {
        /// Why, as a typed code.
        code: ErrorCode,
        /// A human-readable explanation, at most [`Limits::MAX_ERROR_MESSAGE`] bytes.
        message: String,
    },
    /// Pushed by the hub on a unidirectional stream it opens (never an answer to a request): the revocation
    /// list changed. The device checks for updates at once (and re-verifies everything through TUF as always).
    Notice {
        /// The revocation list's new version.
        revocations: u64,
    },
    /// The telemetry batch is stored durably, with every event of the device's queue up to `up_to`.
    TelemetryAck {
        /// The last sequence number stored (the device may drop its events up to it).
        up_to: u64,
    },
}

impl Response {
    /// An `Error` response, its message cut to [`Limits::MAX_ERROR_MESSAGE`] bytes at a character boundary.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        let mut message = message.into();
        if message.len() > Limits::MAX_ERROR_MESSAGE {
            let mut cut = Limits::MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Response::Error { code, message }
    }
}

/// A message that travels in frames. Implemented by [`Request`] and [`Response`].
pub trait Message: Sized {
    /// The type byte of this message.
    fn kind(&self) -> u8;
    /// The body limit for a type byte, or `None` if this direction has no such message.
    fn body_limit(kind: u8, limits: &Limits) -> Option<u32>;
    /// Decodes a complete body of the given type.
    fn decode(kind: u8, body: &[u8], limits: &Limits) -> Result<Self, WireError>;
    /// The body as a CBOR value (encoded canonically by [`encode_frame`]).
    fn to_value(&self) -> Value;
}

/// The type byte of every message. Requests have the high bit clear, responses set.
pub mod kinds {
    /// [`Request::GetMetadata`](super::Request::GetMetadata).
    pub const GET_METADATA: u8 = 0x01;
    /// [`Request::GetAssignment`](super::Request::GetAssignment).
    pub const GET_ASSIGNMENT: u8 = 0x02;
    /// [`Request::GetTarget`](super::Request::GetTarget).
    pub const GET_TARGET: u8 = 0x03;
    /// [`Request::PostReport`](super::Request::PostReport).
    pub const POST_REPORT: u8 = 0x04;
    /// [`Request::PostTelemetry`](super::Request::PostTelemetry).
    pub const POST_TELEMETRY: u8 = 0x10;
    /// [`Request::GetChallenge`](super::Request::GetChallenge).
    pub const GET_CHALLENGE: u8 = 0x05;
    /// [`Request::PostEvidence`](super::Request::PostEvidence).
    pub const POST_EVIDENCE: u8 = 0x06;
    /// [`Request::Enroll`](super::Request::Enroll).
    pub const ENROLL: u8 = 0x07;
    /// [`Response::Metadata`](super::Response::Metadata).
    pub const METADATA: u8 = 0x81;
    /// [`Response::NotFound`](super::Response::NotFound).
    pub const NOT_FOUND: u8 = 0x82;
    /// [`Response::Assignment`](super::Response::Assignment).
    pub const ASSIGNMENT: u8 = 0x83;
    /// [`Response::TargetHeader`](super::Response::TargetHeader).
    pub const TARGET_HEADER: u8 = 0x84;
    /// [`Response::Ack`](super::Response::Ack).
    pub const ACK: u8 = 0x85;
    /// [`Response::Error`](super::Response::Error).
    pub const ERROR: u8 = 0x86;
    /// [`Response::TelemetryAck`](super::Response::TelemetryAck).
    pub const TELEMETRY_ACK: u8 = 0x90;
    /// [`Response::Notice`](super::Response::Notice).
    pub const NOTICE: u8 = 0x91;
    /// [`Response::Challenge`](super::Response::Challenge).
    pub const CHALLENGE: u8 = 0x87;
    /// [`Response::Attested`](super::Response::Attested).
    pub const ATTESTED: u8 = 0x88;
}
use kinds as kind;

impl Message for Request {
    fn kind(&self) -> u8 {
        match self {
            Request::GetMetadata { .. } => kind::GET_METADATA,
            Request::GetAssignment { .. } => kind::GET_ASSIGNMENT,
            Request::GetTarget { .. } => kind::GET_TARGET,
            Request::PostReport { .. } => kind::POST_REPORT,
            Request::PostTelemetry { .. } => kind::POST_TELEMETRY,
            Request::GetChallenge { .. } => kind::GET_CHALLENGE,
            Request::PostEvidence { .. } => kind::POST_EVIDENCE,
            Request::Enroll { .. } => kind::ENROLL,
        }
    }

    fn body_limit(k: u8, limits: &Limits) -> Option<u32> {
        match k {
            kind::GET_METADATA => Some(limits.get_metadata),
            kind::GET_ASSIGNMENT => Some(limits.get_assignment),
            kind::GET_TARGET => Some(limits.get_target),
            kind::POST_REPORT => Some(limits.post_report),
            kind::POST_TELEMETRY => Some(limits.post_telemetry),
            kind::GET_CHALLENGE => Some(limits.get_challenge),
            kind::POST_EVIDENCE => Some(limits.post_evidence),
            kind::ENROLL => Some(limits.enroll),
            _ => None,
        }
    }

    fn decode(k: u8, body: &[u8], limits: &Limits) -> Result<Self, WireError> {
        let mut m = Fields::parse(k, body)?;
        let req = match k {
            kind::GET_METADATA => {
                let name = m.text("name")?;
                check_name(k, &name, limits)?;
                Request::GetMetadata { name, max_len: m.uint("max_len")? }
            }
            kind::GET_ASSIGNMENT => Request::GetAssignment { device: m.opt_key("device")? },
            kind::GET_TARGET => {
                let path = m.text("path")?;
                check_path(k, &path, limits)?;
                Request::GetTarget { path, offset: m.uint("offset")?, len: m.opt_uint("len")? }
            }
            kind::POST_REPORT => Request::PostReport { body: m.bytes("body")?, device: m.opt_key("device")? },
            kind::POST_TELEMETRY => Request::PostTelemetry { body: m.bytes("body")?, device: m.opt_key("device")? },
            kind::GET_CHALLENGE => Request::GetChallenge { device: m.opt_key("device")? },
            kind::POST_EVIDENCE => {
                let evidence = m.bytes("evidence")?;
                let relay = match (m.opt_key("device")?, m.opt_key("exporter")?) {
                    (None, None) => None,
                    (Some(device), Some(exporter)) => Some(Relay { device, exporter }),
                    _ => {
                        return Err(WireError::Malformed {
                            kind: k,
                            reason: "`device` and `exporter` come together".into(),
                        });
                    }
                };
                Request::PostEvidence { evidence, relay }
            }
            kind::ENROLL => {
                let token = m.text("token")?;
                check_text(k, "token", &token, Limits::MAX_TOKEN_LEN, false)?;
                let hardware = m.text("hardware")?;
                check_text(k, "hardware", &hardware, Limits::MAX_HARDWARE_LEN, true)?;
                let tpm = m.opt_bytes("tpm")?;
                if tpm.as_ref().is_some_and(|t| t.len() > Limits::MAX_TPM_FACTS_LEN) {
                    return Err(WireError::Malformed {
                        kind: k,
                        reason: format!("`tpm` is longer than {} bytes", Limits::MAX_TPM_FACTS_LEN),
                    });
                }
                Request::Enroll { token, hardware, tpm }
            }
            _ => return Err(WireError::UnknownType { kind: k }),
        };
        m.finish()?;
        Ok(req)
    }

    fn to_value(&self) -> Value {
        match self {
            Request::GetMetadata { name, max_len } => {
                map(vec![("name", Value::Text(name.clone())), ("max_len", (*max_len).into())])
            }
            Request::GetAssignment { device } => map(device_entry(device).collect()),
            Request::GetTarget { path, offset, len } => {
                let mut entries = vec![("path", Value::Text(path.clone())), ("offset", (*offset).into())];
                if let Some(len) = len {
                    entries.push(("len", (*len).into()));
                }
                map(entries)
            }
            Request::PostReport { body, device } | Request::PostTelemetry { body, device } => {
                map(std::iter::once(("body", Value::Bytes(body.clone()))).chain(device_entry(device)).collect())
            }
            Request::GetChallenge { device } => map(device_entry(device).collect()),
            Request::PostEvidence { evidence, relay } => {
                let mut entries = vec![("evidence", Value::Bytes(evidence.clone()))];
                if let Some(r) = relay {
                    entries.push(("device", Value::Bytes(r.device.to_vec())));
                    entries.push(("exporter", Value::Bytes(r.exporter.to_vec())));
                }
                map(entries)
            }
            Request::Enroll { token, hardware, tpm } => {
                let mut entries =
                    vec![("token", Value::Text(token.clone())), ("hardware", Value::Text(hardware.clone()))];
                if let Some(tpm) = tpm {
                    entries.push(("tpm", Value::Bytes(tpm.clone())));
                }
                map(entries)
            }
        }
    }
}

impl Message for Response {
    fn kind(&self) -> u8 {
        match self {
            Response::Metadata { .. } => kind::METADATA,
            Response::NotFound => kind::NOT_FOUND,
            Response::Assignment { .. } => kind::ASSIGNMENT,
            Response::TargetHeader { .. } => kind::TARGET_HEADER,
            Response::Ack => kind::ACK,
            Response::Error { .. } => kind::ERROR,
            Response::TelemetryAck { .. } => kind::TELEMETRY_ACK,
            Response::Notice { .. } => kind::NOTICE,
            Response::Challenge { .. } => kind::CHALLENGE,
            Response::Attested { .. } => kind::ATTESTED,
        }
    }

    fn body_limit(k: u8, limits: &Limits) -> Option<u32> {
        match k {
            kind::METADATA => Some(limits.metadata),
            kind::NOT_FOUND => Some(limits.not_found),
            kind::ASSIGNMENT => Some(limits.assignment),
            kind::TARGET_HEADER => Some(limits.target_header),
            kind::ACK => Some(limits.ack),
            kind::ERROR => Some(limits.error),
            kind::TELEMETRY_ACK => Some(limits.telemetry_ack),
            kind::NOTICE => Some(limits.telemetry_ack),
            kind::CHALLENGE => Some(limits.challenge),
            kind::ATTESTED => Some(limits.attested),
            _ => None,
        }
    }

    fn decode(k: u8, body: &[u8], _limits: &Limits) -> Result<Self, WireError> {
        let mut m = Fields::parse(k, body)?;
        let resp = match k {
            kind::METADATA => Response::Metadata { bytes: m.bytes("bytes")? },
            kind::NOT_FOUND => Response::NotFound,
            kind::ASSIGNMENT => Response::Assignment { bytes: m.bytes("bytes")? },
            kind::TARGET_HEADER => {
                let (total_len, offset, len) = (m.uint("total_len")?, m.uint("offset")?, m.uint("len")?);
                if offset.checked_add(len).is_none_or(|end| end > total_len) {
                    return Err(WireError::InvalidField {
                        kind: k,
                        field: "len",
                        reason: format!("range {offset}+{len} runs past the target's {total_len} bytes"),
                    });
                }
                Response::TargetHeader { total_len, offset, len }
            }
            kind::ACK => Response::Ack,
            kind::TELEMETRY_ACK => Response::TelemetryAck { up_to: m.uint("up_to")? },
            kind::NOTICE => Response::Notice { revocations: m.uint("revocations")? },
            kind::ERROR => {
                let code = m.uint("code")?;
                let code = u16::try_from(code).map_err(|_| WireError::InvalidField {
                    kind: k,
                    field: "code",
                    reason: format!("{code} does not fit 16 bits"),
                })?;
                Response::Error { code: ErrorCode::from_u16(code), message: m.text("message")? }
            }
            kind::CHALLENGE => Response::Challenge {
                nonce_challenge: m
                    .opt_key("nonce_challenge")?
                    .ok_or_else(|| WireError::Malformed { kind: k, reason: "missing `nonce_challenge`".into() })?,
            },
            kind::ATTESTED => {
                let status = match m.text("status")?.as_str() {
                    "affirming" => AttestedStatus::Affirming,
                    "warning" => AttestedStatus::Warning,
                    other => return Err(invalid(k, "status", format!("`{other}` is not affirming or warning"))),
                };
                let expires = m.uint("expires")?;
                let tier = match m.text("tier")?.as_str() {
                    "software" => AttestedTier::Software,
                    "hardware" => AttestedTier::Hardware,
                    other => return Err(invalid(k, "tier", format!("`{other}` is not software or hardware"))),
                };
                Response::Attested { status, expires, tier }
            }
            _ => return Err(WireError::UnknownType { kind: k }),
        };
        m.finish()?;
        Ok(resp)
    }

    fn to_value(&self) -> Value {
        match self {
            Response::Metadata { bytes } => map(vec![("bytes", Value::Bytes(bytes.clone()))]),
            Response::NotFound | Response::Ack => map(vec![]),
            Response::Assignment { bytes } => map(vec![("bytes", Value::Bytes(bytes.clone()))]),
            Response::TargetHeader { total_len, offset, len } => {
                map(vec![("total_len", (*total_len).into()), ("offset", (*offset).into()), ("len", (*len).into())])
            }
            Response::Error { code, message } => {
                map(vec![("code", u64::from(code.to_u16()).into()), ("message", Value::Text(message.clone()))])
            }
            Response::TelemetryAck { up_to } => map(vec![("up_to", (*up_to).into())]),
            Response::Notice { revocations } => map(vec![("revocations", (*revocations).into())]),
            Response::Challenge { nonce_challenge } => {
                map(vec![("nonce_challenge", Value::Bytes(nonce_challenge.to_vec()))])
            }
            Response::Attested { status, expires, tier } => map(vec![
                ("status", Value::Text(status.as_str().into())),
                ("expires", (*expires).into()),
                ("tier", Value::Text(tier.as_str().into())),
            ]),
        }
    }
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::Text(k.to_owned()), v)).collect())
}

/// A frame header for `kind` with a body of `len` bytes. For hand-built frames in tests and tools.
pub fn frame_header(kind: u8, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [l[0], l[1], l[2], l[3], kind]
}

/// Encodes `msg` as one frame, refusing a body above its type's limit (so a sender never emits what the
/// receiver must refuse).
pub fn encode_frame<M: Message>(msg: &M, limits: &Limits) -> Result<Vec<u8>, WireError> {
    let k = msg.kind();
    let body =
        canonical::to_vec(&msg.to_value()).map_err(|e| WireError::Malformed { kind: k, reason: e.to_string() })?;
    let limit = M::body_limit(k, limits).unwrap_or(0);
    let len = u32::try_from(body.len()).ok().filter(|l| *l <= limit);
    let Some(len) = len else {
        return Err(WireError::Oversized { kind: k, len: body.len() as u64, limit });
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&frame_header(k, len));
    out.extend_from_slice(&body);
    Ok(out)
}

fn device_entry(device: &Option<[u8; 32]>) -> impl Iterator<Item = (&'static str, Value)> {
    device.map(|d| ("device", Value::Bytes(d.to_vec()))).into_iter()
}

/// The keys of a decoded body map, taken one by one so that missing, mistyped and unknown keys are all caught.
struct Fields {
    kind: u8,
    entries: Vec<(String, Value)>,
}

impl Fields {
    fn parse(kind: u8, body: &[u8]) -> Result<Fields, WireError> {
        let value: Value =
            canonical::from_slice(body).map_err(|e| WireError::Malformed { kind, reason: e.to_string() })?;
        let Value::Map(raw) = value else {
            return Err(WireError::WrongCborType { kind, field: "body", expected: "a map" });
        };
        let mut entries = Vec::with_capacity(raw.len());
        for (k, v) in raw {
            let Value::Text(k) = k else {
                return Err(WireError::WrongCborType { kind, field: "body", expected: "a map with text keys" });
            };
            entries.push((k, v));
        }
        Ok(Fields { kind, entries })
    }

    fn take(&mut self, field: &'static str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == field)?;
        Some(self.entries.swap_remove(i).1)
    }

    fn required(&mut self, field: &'static str) -> Result<Value, WireError> {
        self.take(field).ok_or_else(|| WireError::Malformed { kind: self.kind, reason: format!("missing `{field}`") })
    }

    fn wrong(&self, field: &'static str, expected: &'static str) -> WireError {
        WireError::WrongCborType { kind: self.kind, field, expected }
    }

    fn text(&mut self, field: &'static str) -> Result<String, WireError> {
        match self.required(field)? {
            Value::Text(s) => Ok(s),
            _ => Err(self.wrong(field, "a text string")),
        }
    }

    fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, WireError> {
        match self.required(field)? {
            Value::Bytes(b) => Ok(b),
            _ => Err(self.wrong(field, "a byte string")),
        }
    }

    fn uint(&mut self, field: &'static str) -> Result<u64, WireError> {
        let v = self.required(field)?;
        self.as_uint(field, v)
    }

    fn opt_uint(&mut self, field: &'static str) -> Result<Option<u64>, WireError> {
        match self.take(field) {
            None => Ok(None),
            Some(v) => self.as_uint(field, v).map(Some),
        }
    }

    fn as_uint(&self, field: &'static str, v: Value) -> Result<u64, WireError> {
        match v {
            Value::Integer(i) => u64::try_from(i).map_err(|_| self.wrong(field, "an unsigned 64-bit integer")),
            _ => Err(self.wrong(field, "an unsigned integer")),
        }
    }

    fn opt_bytes(&mut self, field: &'static str) -> Result<Option<Vec<u8>>, WireError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(b)),
            Some(_) => Err(self.wrong(field, "a byte string")),
        }
    }

    fn opt_key(&mut self, field: &'static str) -> Result<Option<[u8; 32]>, WireError> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Bytes(b)) => b.try_into().map(Some).map_err(|_| self.wrong(field, "32 bytes")),
            Some(_) => Err(self.wrong(field, "a byte string")),
        }
    }

    fn finish(self) -> Result<(), WireError> {
        match self.entries.first() {
            None => Ok(()),
            Some((k, _)) => {
                Err(WireError::Malformed { kind: self.kind, reason: format!("unexpected or repeated key `{k}`") })
            }
        }
    }
}

fn invalid(kind: u8, field: &'static str, reason: String) -> WireError {
    WireError::InvalidField { kind, field, reason }
}

/// A bounded text field: no control characters; `may_be_empty` or not.
fn check_text(kind: u8, field: &'static str, text: &str, max: usize, may_be_empty: bool) -> Result<(), WireError> {
    if (text.is_empty() && !may_be_empty) || text.len() > max {
        return Err(invalid(kind, field, format!("must be {}to {max} bytes", if may_be_empty { "" } else { "1 " })));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(kind, field, "control characters are not allowed".into()));
    }
    Ok(())
}

fn check_name(kind: u8, name: &str, limits: &Limits) -> Result<(), WireError> {
    let bad = |reason: &str| Err(WireError::InvalidField { kind, field: "name", reason: reason.to_owned() });
    if name.is_empty() || name.len() > limits.max_name_len as usize {
        return bad("empty or too long");
    }
    if name.starts_with('.') || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("only ASCII letters, digits, `.`, `_` and `-` are allowed, and no leading `.`");
    }
    Ok(())
}

fn check_path(kind: u8, path: &str, limits: &Limits) -> Result<(), WireError> {
    let bad = |reason: &str| Err(WireError::InvalidField { kind, field: "path", reason: reason.to_owned() });
    if path.is_empty() || path.len() > limits.max_path_len as usize {
        return bad("empty or too long");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control characters and `\\` are not allowed");
    }
    if path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return bad("must be relative, with no empty, `.` or `..` segments");
    }
    Ok(())
}

mod stream;
pub use stream::{FrameDecoder, RequestReader, ResponseProgress, ResponseReader};

#[cfg(test)]
mod tests;
