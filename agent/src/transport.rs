//! The one seam between the agent's TUF client and where repository bytes come from: the [`Transport`] trait
//! (the hub over QUIC, a static HTTP(S) mirror) and the one adapter sigstore-tuf reads through, [`TufRepository`].
//!
//! Transports are untrusted pipes. Whatever one does, the length bound holds here: target bytes stream through a
//! sink that refuses the first byte past the length TUF declared ([`download`]), and metadata longer than asked
//! for is refused. Each transport also bounds what it reads before buffering; this is the backstop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use sigstore_tuf::transport::FetchFuture;
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
/// the limits given; callers go through [`download`] and [`TufRepository`], which hold those bounds regardless.
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

/// sigstore-tuf's view of a [`Transport`]: `Ok(None)` for a missing file, a transport error naming the file for
/// anything else (the [`TransportError`] kept as its source), and never more than `max_length` bytes.
#[derive(Debug)]
pub struct TufRepository<T: ?Sized>(Arc<T>);

impl<T: Transport + ?Sized> TufRepository<T> {
    /// The adapter over `transport`.
    pub fn new(transport: Arc<T>) -> Self {
        TufRepository(transport)
    }
}

impl<T: Transport + ?Sized> sigstore_tuf::Repository for TufRepository<T> {
    fn fetch_metadata<'a>(&'a self, name: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(async move {
            let fetched = match self.0.fetch_metadata(name, max_length).await {
                Ok(Some(bytes)) if bytes.len() as u64 > max_length => {
                    Err(TransportError::TooLarge { path: name.to_owned(), max: max_length })
                }
                other => other,
            };
            fetched.map_err(|e| sigstore_tuf::Error::transport_with_source(format!("fetching {name}"), e))
        })
    }

    fn fetch_target<'a>(&'a self, path: &'a str, max_length: u64) -> FetchFuture<'a> {
        Box::pin(async move {
            let mut bytes = Vec::new();
            match download(&*self.0, path, 0, max_length, &mut bytes).await {
                Ok(found) => Ok(found.map(|_| bytes)),
                Err(e) => Err(sigstore_tuf::Error::transport_with_source(format!("fetching target {path}"), e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigstore_tuf::Repository;
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    /// A source that ignores every bound: metadata is `len` bytes whatever was asked, targets are `len` bytes in
    /// 1 KiB writes (endless if `None`), and it counts the bytes its sink accepted. If it `overstates`, it reports
    /// one byte more than it wrote.
    #[derive(Debug)]
    struct Careless {
        len: Option<u64>,
        accepted: Mutex<u64>,
        overstates: bool,
    }

    impl Careless {
        fn new(len: Option<u64>) -> Arc<Careless> {
            Arc::new(Careless { len, accepted: Mutex::new(0), overstates: false })
        }

        fn accepted(&self) -> u64 {
            *self.accepted.lock().unwrap()
        }
    }

    impl Transport for Careless {
        fn fetch_metadata<'a>(&'a self, _: &'a str, _: u64) -> TransportFuture<'a, Option<Vec<u8>>> {
            let len = usize::try_from(self.len.unwrap_or(1 << 20)).unwrap();
            Box::pin(async move { Ok(Some(vec![b'{'; len])) })
        }

        fn fetch_target<'a>(
            &'a self,
            path: &'a str,
            offset: u64,
            _: u64,
            sink: Sink<'a>,
        ) -> TransportFuture<'a, Option<TargetRange>> {
            Box::pin(async move {
                let chunk = [b'x'; 1024];
                let mut sent = 0;
                while self.len.is_none_or(|len| sent < len) {
                    sink.write_all(&chunk).await.map_err(|e| TransportError::failed(path, e))?;
                    *self.accepted.lock().unwrap() += chunk.len() as u64;
                    sent += chunk.len() as u64;
                }
                let len = sent + u64::from(self.overstates);
                Ok(Some(TargetRange { total_len: offset + len, offset, len }))
            })
        }
    }

    fn too_large(e: &sigstore_tuf::Error) -> Option<u64> {
        let source = std::error::Error::source(e)?.downcast_ref::<TransportError>()?;
        match source {
            TransportError::TooLarge { max, .. } => Some(*max),
            _ => None,
        }
    }

    #[tokio::test]
    async fn an_endless_target_is_cut_at_the_declared_length() {
        let source = Careless::new(None);
        let repo = TufRepository::new(source.clone());
        let e = repo.fetch_target("p/x.opkg", 10_000).await.unwrap_err();
        assert_eq!(too_large(&e), Some(10_000), "{e}");
        assert!(source.accepted() <= 10_000, "{} bytes got through", source.accepted());
    }

    #[tokio::test]
    async fn a_resumed_download_takes_only_what_is_missing() {
        let source = Careless::new(Some(8 * 1024));
        let mut out = Vec::new();
        let e = download(&*source, "p/x.opkg", 4096, 8 * 1024, &mut out).await.unwrap_err();
        assert!(matches!(e, TransportError::TooLarge { max: 8192, .. }), "{e}");
        assert!(out.len() <= 4096, "{} bytes written past byte 4096", out.len());
        assert_eq!(source.accepted(), out.len() as u64);
    }

    #[tokio::test]
    async fn a_target_within_its_length_arrives_whole() {
        let source = Careless::new(Some(3 * 1024));
        let bytes = TufRepository::new(source).fetch_target("p/x.opkg", 3 * 1024).await.unwrap().unwrap();
        assert_eq!(bytes, vec![b'x'; 3 * 1024]);
    }

    #[tokio::test]
    async fn oversized_metadata_is_refused() {
        let repo = TufRepository::new(Careless::new(Some(2000)));
        let e = repo.fetch_metadata("timestamp.json", 1000).await.unwrap_err();
        assert_eq!(too_large(&e), Some(1000), "{e}");
        assert_eq!(repo.fetch_metadata("timestamp.json", 2000).await.unwrap().map(|b| b.len()), Some(2000));
    }

    #[tokio::test]
    async fn a_range_other_than_the_one_written_is_refused() {
        let liar = Arc::new(Careless { len: Some(1024), accepted: Mutex::new(0), overstates: true });
        let e = download(&*liar, "t", 0, 4096, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(e, TransportError::BadRange { .. }), "{e}");
    }
}
