//! The per-stream side of the protocol: a frame decoder that bounds what it buffers by the header's type and
//! length, and the readers that check a request's or a response's exchange (one frame, or a header and raw bytes).

use std::fmt;
use std::marker::PhantomData;

use super::*;

enum DecoderState {
    /// Filling the header; `usize` bytes of it so far.
    Header(usize),
    /// Filling a body of `len` bytes of message type `kind`.
    Body { kind: u8, len: usize },
}

/// Incremental frame decoder: push bytes as they arrive, pop messages as they complete.
///
/// [`push`](FrameDecoder::push) consumes at most up to the end of the current frame and says how many bytes it
/// took, so the caller decides what the rest of its buffer is (the next frame, raw target bytes, or an error).
/// The decoder never holds more than one frame, and never more body bytes than the type's limit. After an error
/// it stays failed.
pub struct FrameDecoder<M: Message> {
    limits: Limits,
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    state: DecoderState,
    ready: Option<M>,
    failed: Option<WireError>,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message> fmt::Debug for FrameDecoder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder").field("buffered", &self.buffered()).field("failed", &self.failed).finish()
    }
}

/// Bodies are buffered as they arrive; this caps the up-front reservation so a header alone costs little.
const INITIAL_BODY_RESERVE: usize = 16 * 1024;

impl<M: Message> FrameDecoder<M> {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder {
            limits,
            header: [0; HEADER_LEN],
            body: Vec::new(),
            state: DecoderState::Header(0),
            ready: None,
            failed: None,
            _message: PhantomData,
        }
    }

    /// Feeds bytes; returns how many were consumed. Stops at the end of a frame: pop it before pushing more
    /// (until then, nothing more is consumed).
    pub fn push(&mut self, input: &[u8]) -> Result<usize, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.ready.is_some() {
            return Ok(0);
        }
        let mut used = 0;
        if let DecoderState::Header(have) = self.state {
            let n = (HEADER_LEN - have).min(input.len());
            self.header[have..have + n].copy_from_slice(&input[..n]);
            used += n;
            if have + n < HEADER_LEN {
                self.state = DecoderState::Header(have + n);
                return Ok(used);
            }
            let len = u32::from_be_bytes([self.header[0], self.header[1], self.header[2], self.header[3]]);
            let k = self.header[4];
            let Some(limit) = M::body_limit(k, &self.limits) else {
                return Err(self.fail(WireError::UnknownType { kind: k }));
            };
            if len > limit {
                return Err(self.fail(WireError::Oversized { kind: k, len: u64::from(len), limit }));
            }
            let len = len as usize;
            self.body = Vec::with_capacity(len.min(INITIAL_BODY_RESERVE));
            self.state = DecoderState::Body { kind: k, len };
        }
        if let DecoderState::Body { kind: k, len } = self.state {
            let n = (len - self.body.len()).min(input.len() - used);
            self.body.extend_from_slice(&input[used..used + n]);
            used += n;
            if self.body.len() == len {
                let body = std::mem::take(&mut self.body);
                self.state = DecoderState::Header(0);
                match M::decode(k, &body, &self.limits) {
                    Ok(m) => self.ready = Some(m),
                    Err(e) => return Err(self.fail(e)),
                }
            }
        }
        Ok(used)
    }

    /// The message completed by the last push, if any.
    pub fn pop(&mut self) -> Option<M> {
        self.ready.take()
    }

    /// How many bytes of an incomplete frame are held.
    pub fn buffered(&self) -> usize {
        match self.state {
            DecoderState::Header(have) => have,
            DecoderState::Body { .. } => HEADER_LEN + self.body.len(),
        }
    }

    /// Call at end of stream: an incomplete frame is [`WireError::Truncated`].
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.buffered() {
            0 => Ok(()),
            n => Err(WireError::Truncated { received: n as u64 }),
        }
    }

    fn fail(&mut self, e: WireError) -> WireError {
        self.body = Vec::new();
        self.failed = Some(e.clone());
        e
    }
}

/// The hub's side of one stream: exactly one request frame, nothing after it.
#[derive(Debug)]
pub struct RequestReader {
    frames: FrameDecoder<Request>,
}

impl RequestReader {
    /// A reader enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        RequestReader { frames: FrameDecoder::new(limits) }
    }

    /// Feeds bytes; returns the request once its frame is complete. Bytes beyond the frame are
    /// [`WireError::TrailingBytes`].
    pub fn push(&mut self, input: &[u8]) -> Result<Option<Request>, WireError> {
        let used = self.frames.push(input)?;
        match self.frames.pop() {
            Some(_) if used < input.len() => Err(WireError::TrailingBytes { extra: input.len() - used }),
            req => Ok(req),
        }
    }

    /// The error to report when the stream ends before a complete request.
    pub fn eof(&self) -> WireError {
        match self.frames.finish() {
            Err(e) => e,
            Ok(()) => WireError::Truncated { received: 0 },
        }
    }
}

/// What a [`ResponseReader`] made of the bytes pushed into it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponseProgress<'a> {
    /// The response frame, once complete (at most once per exchange).
    pub response: Option<Response>,
    /// Raw target bytes from this push, in order; never more than the header's `len` in total.
    pub body: &'a [u8],
}

enum ReaderState {
    Header,
    Body { remaining: u64 },
    Done,
}

/// The agent's side of one stream: the response frame, checked against the request, then for targets exactly
/// `len` raw bytes, then the end of the stream.
pub struct ResponseReader {
    request: Request,
    frames: FrameDecoder<Response>,
    state: ReaderState,
    body_received: u64,
}

impl fmt::Debug for ResponseReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseReader").field("request", &self.request).finish_non_exhaustive()
    }
}

impl ResponseReader {
    /// A reader for the answer to `request`. A metadata answer is also bounded by the request's `max_len`
    /// (plus a few bytes of CBOR) before it is buffered.
    pub fn new(request: &Request, limits: Limits) -> Self {
        let mut limits = limits;
        if let Request::GetMetadata { max_len, .. } = request {
            // A byte string header is at most 9 bytes and the map around it 8 more.
            let bound = max_len.saturating_add(32);
            limits.metadata = limits.metadata.min(u32::try_from(bound).unwrap_or(u32::MAX));
        }
        ResponseReader {
            request: request.clone(),
            frames: FrameDecoder::new(limits),
            state: ReaderState::Header,
            body_received: 0,
        }
    }

    /// Feeds bytes from the stream.
    pub fn push<'a>(&mut self, input: &'a [u8]) -> Result<ResponseProgress<'a>, WireError> {
        let mut progress = ResponseProgress::default();
        let mut rest = input;
        if let ReaderState::Header = self.state {
            let used = self.frames.push(rest)?;
            rest = &rest[used..];
            if let Some(resp) = self.frames.pop() {
                self.state = match self.check(&resp)? {
                    Some(0) | None => ReaderState::Done,
                    Some(len) => ReaderState::Body { remaining: len },
                };
                progress.response = Some(resp);
            }
        }
        if let ReaderState::Body { remaining } = self.state {
            let n = remaining.min(rest.len() as u64) as usize;
            progress.body = &rest[..n];
            rest = &rest[n..];
            self.body_received += n as u64;
            self.state = match remaining - n as u64 {
                0 => ReaderState::Done,
                remaining => ReaderState::Body { remaining },
            };
        }
        if !rest.is_empty() {
            return Err(WireError::TrailingBytes { extra: rest.len() });
        }
        Ok(progress)
    }

    /// Call at end of stream: an incomplete frame or raw body is [`WireError::Truncated`].
    pub fn finish(&self) -> Result<(), WireError> {
        match self.state {
            ReaderState::Done => Ok(()),
            ReaderState::Header => Err(match self.frames.finish() {
                Err(e) => e,
                Ok(()) => WireError::Truncated { received: 0 },
            }),
            ReaderState::Body { .. } => Err(WireError::Truncated { received: self.body_received }),
        }
    }

    /// Checks that `resp` answers the request; for a target header, returns the raw body length to expect.
    fn check(&self, resp: &Response) -> Result<Option<u64>, WireError> {
        let unexpected = |reason: String| Err(WireError::UnexpectedResponse { reason });
        match (&self.request, resp) {
            (_, Response::Error { .. }) => Ok(None),
            (
                Request::GetMetadata { .. } | Request::GetAssignment { .. } | Request::GetTarget { .. },
                Response::NotFound,
            ) => Ok(None),
            (Request::GetMetadata { max_len, .. }, Response::Metadata { bytes }) => {
                if bytes.len() as u64 > *max_len {
                    return unexpected(format!("{} bytes of metadata, asked for at most {max_len}", bytes.len()));
                }
                Ok(None)
            }
            (Request::GetAssignment { .. }, Response::Assignment { .. }) => Ok(None),
            (Request::GetTarget { offset, len: want, .. }, Response::TargetHeader { offset: got, len, .. }) => {
                if got != offset {
                    return unexpected(format!("range starts at {got}, asked for {offset}"));
                }
                if want.is_some_and(|want| *len > want) {
                    return unexpected(format!("{len} bytes offered, asked for at most {want:?}"));
                }
                Ok(Some(*len))
            }
            (Request::PostTelemetry { .. }, Response::TelemetryAck { .. }) => Ok(None),
            (Request::PostReport { .. } | Request::Enroll { .. }, Response::Ack) => Ok(None),
            // NotFound: the server does not appraise evidence (a site node).
            (Request::GetChallenge { .. }, Response::Challenge { .. } | Response::NotFound) => Ok(None),
            (Request::PostEvidence { .. }, Response::Attested { .. }) => Ok(None),
            (req, resp) => unexpected(format!("type {:#04x} does not answer type {:#04x}", resp.kind(), req.kind())),
        }
    }
}
