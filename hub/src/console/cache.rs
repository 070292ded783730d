//! What the console's pages read instead of decoding the store on every request: a value built from the store
//! (the releases with their status), served as is while a background thread rebuilds it once it is older than
//! `cache_max_age`, and dropped after an action so the next page shows the action's effect.
//!
//! Invariants: at most one rebuild of a value runs at a time; a failed rebuild keeps the previous value; a rebuild
//! that started before an invalidation never stores its (older) result.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_shared::clock::UnixSeconds;

use super::http::PageError;
use crate::service::Hub;

/// How old a cached value may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ages {
    /// Older than this, a page still gets it but a rebuild starts in the background.
    pub fresh: Duration,
    /// Older than this (nobody looked for a while), a page waits for a rebuild rather than show it.
    pub stale: Duration,
}

/// A value built from the store, with when (monotonic, for its age; wall, for the page).
#[derive(Debug)]
pub struct Built<T> {
    /// The value.
    pub value: T,
    /// When it was built (the hub's monotonic clock).
    pub at: Duration,
    /// When it was built (wall clock, shown on pages).
    pub wall: UnixSeconds,
}

/// One cached value and how it is built.
pub struct Cached<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    current: Mutex<Option<Arc<Built<T>>>>,
    rebuilding: AtomicBool,
    generation: AtomicU64,
    build: fn(&Hub) -> Result<T, PageError>,
    what: &'static str,
}

impl<T> std::fmt::Debug for Cached<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached").field("what", &self.inner.what).finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Cached<T> {
    /// A cache of what `build` makes (`what` names it in logs).
    pub fn new(what: &'static str, build: fn(&Hub) -> Result<T, PageError>) -> Cached<T> {
        Cached {
            inner: Arc::new(Inner {
                current: Mutex::new(None),
                rebuilding: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                build,
                what,
            }),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Built<T>>>> {
        self.inner.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value: built now if there is none or it is older than `ages.stale`; if only older than `ages.fresh`,
    /// served as is while a background thread rebuilds it. Call from the blocking pool.
    pub fn get(&self, hub: &Arc<Hub>, ages: Ages) -> Result<Arc<Built<T>>, PageError> {
        let current = self.slot().clone();
        if let Some(v) = current {
            let age = hub.clock().monotonic().saturating_sub(v.at);
            if age <= ages.stale {
                if age > ages.fresh {
                    self.refresh_in_background(hub);
                }
                return Ok(v);
            }
        }
        let generation = self.inner.generation.load(Ordering::Acquire);
        let v = Arc::new(build(&self.inner, hub)?);
        store(&self.inner, generation, v.clone());
        Ok(v)
    }

    /// Starts a rebuild on its own thread unless one runs.
    pub fn refresh_in_background(&self, hub: &Arc<Hub>) {
        if self.inner.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let (inner, hub) = (self.inner.clone(), hub.clone());
        std::thread::spawn(move || {
            let generation = inner.generation.load(Ordering::Acquire);
            match build(&inner, &hub) {
                Ok(v) => store(&inner, generation, Arc::new(v)),
                Err(e) => tracing::warn!(error = %e, "console: rebuilding the {}", inner.what),
            }
            inner.rebuilding.store(false, Ordering::Release);
        });
    }

    /// Forgets the value (an action changed the store): the next page builds it afresh.
    pub fn invalidate(&self) {
        let mut slot = self.slot();
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        *slot = None;
    }
}

/// Stores `v` unless the cache was invalidated since its build began (`generation`).
fn store<T>(inner: &Inner<T>, generation: u64, v: Arc<Built<T>>) {
    let mut slot = inner.current.lock().unwrap_or_else(|p| p.into_inner());
    if inner.generation.load(Ordering::Acquire) == generation {
        *slot = Some(v);
    }
}

fn build<T>(inner: &Inner<T>, hub: &Hub) -> Result<Built<T>, PageError> {
    let (at, wall) = (hub.clock().monotonic(), hub.clock().wall());
    Ok(Built { value: (inner.build)(hub)?, at, wall })
}
