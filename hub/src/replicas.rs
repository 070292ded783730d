//! What a serving hub does as one of several replicas on one PostgreSQL database: it contends for the leader lease
//! (the holder alone re-signs online metadata and ticks rollouts) and follows the other replicas' notices.
//!
//! On the embedded store a hub is alone and always leads. Leadership is a flag the periodic jobs read before each
//! run: a replica that lost its lease stops at its next run, and one that gains it starts at its next run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::store::postgres::{Lease, Notice, Notices};

/// How often a replica tries to take the lease, and its holder checks it still holds it: a holder that dies is
/// replaced within about this long (plus the database noticing its connection is gone).
pub const LEASE_PERIOD: Duration = Duration::from_secs(2);

/// Whether this hub leads: on the embedded store always; on PostgreSQL while it holds the leader lease.
#[derive(Debug, Clone)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// A hub that always leads (the embedded store: nobody else serves its state).
    pub fn alone() -> Leadership {
        Leadership(Arc::new(AtomicBool::new(true)))
    }

    /// A replica that does not lead until [`keep_lease`] takes the lease for it.
    pub fn contending() -> Leadership {
        Leadership(Arc::new(AtomicBool::new(false)))
    }

    /// Whether this hub leads now.
    pub fn leads(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, leads: bool) -> bool {
        self.0.swap(leads, Ordering::SeqCst)
    }
}

/// Tries to take (or checks it still holds) `lease` every `period`, and keeps `leadership` to what it found, until
/// the task is dropped (then the lease goes with the last reference to it).
pub async fn keep_lease(lease: Arc<Lease>, leadership: Leadership, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let l = lease.clone();
        let held = match tokio::task::spawn_blocking(move || l.try_acquire()).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader lease");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader lease task");
                false
            }
        };
        match (leadership.set(held), held) {
            (false, true) => tracing::info!("this replica holds the leader lease: it re-signs and ticks rollouts"),
            (true, false) => tracing::warn!("this replica lost the leader lease: another re-signs and ticks rollouts"),
            _ => {}
        }
    }
}

/// What a replica does with the notices of every replica ([`follow_notices`]).
pub trait NoticeHandler: Send + Sync + 'static {
    /// Drops what this replica cached that `notice` may have made stale.
    fn forget(&self, notice: &Notice);
    /// The director's revocation list's version as stored now (`None` when unreadable); read on the blocking pool.
    fn revocations(&self) -> Option<u64>;
    /// Tells every device connected to this replica that the revocation list is now at `version`.
    fn push(&self, version: u64);
}

/// Follows `notices` until the store closes them: each is passed to [`NoticeHandler::forget`], and whenever the
/// revocation list's version rises (a [`Notice::Revocations`], or the stored list read after any notice and every
/// `period`) the devices connected here are told once. The periodic read covers notices lost with a connection.
pub async fn follow_notices(mut notices: Notices, period: Duration, handler: Arc<dyn NoticeHandler>) {
    let mut last: Option<u64> = None;
    let mut open = true;
    let mut tick = tokio::time::interval(period);
    loop {
        let mut announced = None;
        tokio::select! {
            _ = tick.tick() => {}
            notice = notices.next(), if open => match notice {
                Some(notice) => {
                    handler.forget(&notice);
                    if let Notice::Revocations(v) = notice {
                        announced = Some(v);
                    }
                }
                None => open = false,
            },
        }
        let h = handler.clone();
        let stored = tokio::task::spawn_blocking(move || h.revocations()).await.ok().flatten();
        let Some(now) = stored.max(announced) else { continue };
        if last.is_some_and(|l| now > l) {
            handler.push(now);
            tracing::info!(revocations = now, "revocation list v{now}: notice pushed");
        }
        last = Some(last.map_or(now, |l| l.max(now)));
    }
}
