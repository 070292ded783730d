//! The agent's TUF transports meet sigstore-tuf here: [`TufRepository`], the one adapter it reads through, over
//! any [`Transport`] (the hub over QUIC, a static HTTP(S) mirror); the trait and the bounded [`download`] are
//! `outpost_net::transport`'s, re-exported.
//!
//! Metadata longer than asked for is refused here, and targets go through [`download`], so the length bound holds
//! whatever a transport does.

use std::sync::Arc;

pub use outpost_net::transport::{Sink, TargetRange, Transport, TransportError, TransportFuture, download};
use sigstore_tuf::transport::FetchFuture;

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
