//! Decoded values of one table kept beside their bytes' digest, so a large record read again and again (a
//! release's rollout over every device of its channel) is decoded once per write instead of once per read.
//!
//! Invariants: a value is used only while the stored bytes still hash to the digest it was decoded from (or
//! encoded to), whoever wrote them; what is held is bounded by the size of the values' encodings, the least
//! recently used going first.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use outpost_shared::Digest;

/// How many bytes of encodings the decoded values held may stand for (their decoded size is a few times more).
pub const DECODED_BYTES_KEPT: usize = 64 << 20;

/// Decoded values by key.
#[derive(Debug)]
pub struct Decoded {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

struct Entry {
    digest: Digest,
    len: usize,
    value: Arc<dyn Any + Send + Sync>,
    used: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("digest", &self.digest).field("len", &self.len).finish_non_exhaustive()
    }
}

impl Decoded {
    /// Empty, holding values whose encodings total at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Decoded {
        Decoded { inner: Mutex::default(), max_bytes }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value `bytes` (stored under `key`) decode to: the one held if it came from the same bytes, else
    /// `decode(bytes)`, then held.
    pub fn get<T, E>(&self, key: &str, bytes: &[u8], decode: impl FnOnce(&[u8]) -> Result<T, E>) -> Result<T, E>
    where
        T: Clone + Send + Sync + 'static,
    {
        self.get_shared(key, bytes, decode).map(|v| T::clone(&v))
    }

    /// [`Decoded::get`] without the copy: the value held, shared (readers that only look need no copy of a
    /// rollout over every device).
    pub fn get_shared<T, E>(
        &self,
        key: &str,
        bytes: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<T, E>,
    ) -> Result<Arc<T>, E>
    where
        T: Send + Sync + 'static,
    {
        let digest = Digest::of(bytes);
        let held = {
            let mut inner = self.inner();
            inner.clock += 1;
            let now = inner.clock;
            match inner.entries.get_mut(key) {
                Some(e) if e.digest == digest => {
                    e.used = now;
                    e.value.clone().downcast::<T>().ok()
                }
                _ => None,
            }
        };
        if let Some(v) = held {
            return Ok(v);
        }
        let value = Arc::new(decode(bytes)?);
        self.put(key, bytes, value.clone());
        Ok(value)
    }

    /// Holds `value` as what `bytes` (just written under `key`) decode to.
    pub fn put<T: Send + Sync + 'static>(&self, key: &str, bytes: &[u8], value: Arc<T>) {
        let (digest, len) = (Digest::of(bytes), bytes.len());
        if len > self.max_bytes {
            self.forget(key);
            return;
        }
        let mut inner = self.inner();
        inner.clock += 1;
        let used = inner.clock;
        if let Some(old) = inner.entries.insert(key.to_owned(), Entry { digest, len, value, used }) {
            inner.bytes -= old.len;
        }
        inner.bytes += len;
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= e.len;
            }
        }
    }

    /// Drops what is held for `key`.
    fn forget(&self, key: &str) {
        let mut inner = self.inner();
        if let Some(e) = inner.entries.remove(key) {
            inner.bytes -= e.len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_decoded_again_once_its_bytes_change_whoever_wrote_them() {
        let d = Decoded::new(1 << 20);
        let decodes = std::cell::Cell::new(0);
        let read = |bytes: &[u8]| {
            d.get("k", bytes, |b| {
                decodes.set(decodes.get() + 1);
                Ok::<_, ()>(b.len())
            })
            .unwrap()
        };
        assert_eq!(read(b"abc"), 3);
        assert_eq!(read(b"abc"), 3);
        assert_eq!(read(b"abcd"), 4, "other bytes under the same key are decoded afresh");
        assert_eq!(decodes.get(), 2);
    }

    #[test]
    fn the_values_held_stay_within_their_byte_bound_least_recently_used_first() {
        let d = Decoded::new(10);
        d.put("a", &[0; 4], Arc::new(1u8));
        d.put("b", &[1; 4], Arc::new(2u8));
        assert_eq!(d.get("a", &[0; 4], |_| Err(())), Ok(1u8), "held");
        d.put("c", &[2; 4], Arc::new(3u8));
        assert_eq!(d.get("b", &[1; 4], |_| Err::<u8, ()>(())), Err(()), "the least recently used went");
        assert_eq!(d.get("a", &[0; 4], |_| Err(())), Ok(1u8));
        assert_eq!(d.inner().bytes, 8);
    }
}
