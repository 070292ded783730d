//! The one seam between a TUF client and where repository bytes come from: the [`Transport`] trait (the hub over
//! QUIC, [`crate::client::HubClient`]; a static HTTP(S) mirror in the agent) and the bounded [`download`].
//!
//! Transports are untrusted pipes. Whatever one does, the length bound holds here: target bytes stream through a
//! sink that refuses the first byte past the length TUF declared ([`download`]), and metadata longer than asked
//! for is refused. Each transport also bounds what it reads before buffering; this is the backstop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// The byte range a target download delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetRange {
    /// The whole target's length, as the source declared it.
    pub total_len: u64,
    /// First byte delivered.
    pub offset: u64,
    /// Bytes delivered (all of them were written to the sink).
    pub len: u64,
}

/// Where a download's bytes go: a file being resumed, a buffer, or [`tokio::io::sink`].
pub type Sink<'a> = &'a mut (dyn AsyncWrite + Unpin + Send);

/// What a [`Transport`] call returns.
pub type TransportFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TransportError>> + Send + 'a>>;

/// Why a fetch through a [`Transport`] failed. `path` names the metadata file or target asked for.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The source announced or sent more bytes than the bound (an endless-data attack, or a wrong file).
    #[error("{path}: more than the {max} bytes allowed")]
    TooLarge {
        /// The metadata file or target.
        path: String,
        /// The bound, in bytes (for a target, its whole length).
        max: u64,
    },
    /// The source answered with another range than the one asked for.
    #[error("{path}: {problem}")]
    BadRange {
        /// The target.
        path: String,
        /// What does not match.
        problem: String,
    },
    /// The source failed (network, protocol, timeout, refusal); the transport's own typed error is the source.
    #[error("{path}: {source}")]
    Failed {
        /// The metadata file or target.
        path: String,
        /// The transport's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl TransportError {
    /// A transport failure fetching `path`, keeping the transport's typed error `e` as the source.
    pub fn failed(path: &str, e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
        TransportError::Failed { path: path.to_owned(), source: Box::new(e) }
    }

    /// The transport's own error, if this is one of type `E` (to tell a hub refusal from a network failure).
    pub fn source_as<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            TransportError::Failed { source, .. } => source.downcast_ref(),
            _ => None,
        }
    }
}

/// Where the agent reads a TUF repository (metadata and targets) from. Implementations bound what they read by
/// the limits given; callers go through [`download`] (and the agent's TUF adapter), which hold those bounds regardless.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// A metadata file by the name TUF asks for (`timestamp.json`, `3.root.json`, `2.role%2Fname.json`), at most
    /// `max_len` bytes; `None` if the repository has none by that name.
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_len: u64) -> TransportFuture<'a, Option<Vec<u8>>>;

    /// A target (by its stored path, hash prefix included) from byte `offset` to its end, written to `sink`: pass
    /// the length already on disk to resume. Refused as soon as the source announces or sends more than
    /// `max_total` bytes in all (the length TUF lists). `None` if the repository has no such target.
    fn fetch_target<'a>(
        &'a self,
        path: &'a str,
        offset: u64,
        max_total: u64,
        sink: Sink<'a>,
    ) -> TransportFuture<'a, Option<TargetRange>>;
}

/// Downloads target `path` from `offset` into `sink` through `transport`, never letting more than
/// `max_total - offset` bytes reach the sink whatever the transport does, and checking the range it reports is
/// the one asked for and the one written.
pub async fn download<T: Transport + ?Sized>(
    transport: &T,
    path: &str,
    offset: u64,
    max_total: u64,
    sink: Sink<'_>,
) -> Result<Option<TargetRange>, TransportError> {
    let mut bounded = Bounded { inner: sink, room: max_total.saturating_sub(offset), written: 0, overflowed: false };
    let fetched = transport.fetch_target(path, offset, max_total, &mut bounded).await;
    if bounded.overflowed {
        return Err(TransportError::TooLarge { path: path.to_owned(), max: max_total });
    }
    let Some(range) = fetched? else { return Ok(None) };
    let bad = |problem: String| TransportError::BadRange { path: path.to_owned(), problem };
    if range.offset != offset || range.len != bounded.written {
        return Err(bad(format!(
            "asked from byte {offset}, told {} bytes from byte {}, received {}",
            range.len, range.offset, bounded.written
        )));
    }
    if range.total_len > max_total {
        return Err(TransportError::TooLarge { path: path.to_owned(), max: max_total });
    }
    Ok(Some(range))
}

/// A sink that takes at most `room` bytes: the write that would pass the bound fails whole, and is remembered.
struct Bounded<'a> {
    inner: Sink<'a>,
    room: u64,
    written: u64,
    overflowed: bool,
}

impl AsyncWrite for Bounded<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.len() as u64 > self.room - self.written {
            self.overflowed = true;
            return Poll::Ready(Err(io::Error::other(format!("more than the {} bytes allowed", self.room))));
        }
        let poll = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.written += *n as u64;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}
