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

mod codec;
pub use codec::{Message, encode_frame, frame_header, kinds};

mod stream;
pub use stream::{FrameDecoder, RequestReader, ResponseProgress, ResponseReader};

#[cfg(test)]
mod tests;
