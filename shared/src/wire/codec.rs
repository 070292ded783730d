//! The bodies of wire messages: each [`Request`] and [`Response`] to and from its canonical CBOR map, with every
//! field checked (missing, mistyped, unknown, oversized or malformed text), and the framing of an encoded message.

use ciborium::Value;

use super::*;
use crate::canonical;

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

pub(super) fn map(entries: Vec<(&str, Value)>) -> Value {
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
