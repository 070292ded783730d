//! The inference outcomes the update loop reads (the health window, telemetry counts): a bounded queue between
//! the inference threads, which never wait on it, and the loop, which drains it between its other work.
//!
//! An outcome that finds the queue full is dropped and counted (`outpost_agent_inference_outcomes_dropped_total`)
//! instead of growing memory. A dropped failure is not forgotten, though: its model is kept aside (one entry per
//! model, so bounded by the models served) and the receiver hands it out before anything queued, so a failing
//! package on trial cannot pass its health window because the loop was busy when it failed.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outpost_shared::Digest;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Outcomes the queue holds by default: at a thousand inferences a second, a second of the loop's inattention.
pub const DEFAULT_OUTCOME_CAPACITY: usize = 1024;

/// One inference that reached a model, as the update loop hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The package digest of the model it ran on.
    pub model: Digest,
    /// Whether the model answered (false: it failed on tensors that fit its contract).
    pub ok: bool,
    /// How long the model took; `None` for a failure that was dropped at the full queue and kept aside.
    pub took: Option<Duration>,
}

/// What the two ends share besides the queue.
struct Overflow {
    /// Outcomes dropped at the full queue (the metric).
    dropped: Counter,
    /// Models that failed while the queue was full, not yet handed to the loop.
    failed: Mutex<BTreeSet<Digest>>,
}

/// The inference side: [`OutcomeSender::send`] never waits.
#[derive(Clone)]
pub struct OutcomeSender {
    tx: mpsc::Sender<Outcome>,
    overflow: Arc<Overflow>,
}

/// The update loop's side.
pub struct OutcomeReceiver {
    rx: mpsc::Receiver<Outcome>,
    overflow: Arc<Overflow>,
}

/// A queue of `capacity` outcomes (at least one); drops are counted on `dropped`.
pub fn channel(capacity: usize, dropped: Counter) -> (OutcomeSender, OutcomeReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let overflow = Arc::new(Overflow { dropped, failed: Mutex::default() });
    (OutcomeSender { tx, overflow: overflow.clone() }, OutcomeReceiver { rx, overflow })
}

impl OutcomeSender {
    /// Queues `outcome`, or, when the queue is full, drops and counts it (keeping a failure's model aside). A
    /// receiver that is gone (the loop stopped) drops it silently.
    pub fn send(&self, outcome: Outcome) {
        if let Err(mpsc::error::TrySendError::Full(o)) = self.tx.try_send(outcome) {
            self.overflow.dropped.inc();
            if !o.ok {
                self.overflow.failed.lock().unwrap_or_else(PoisonError::into_inner).insert(o.model);
            }
        }
    }
}

impl OutcomeReceiver {
    /// The next outcome: a failure kept aside at a full queue first, else the next queued one (waiting for it).
    /// `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Outcome> {
        if let Some(model) = self.overflow.failed.lock().unwrap_or_else(PoisonError::into_inner).pop_first() {
            return Some(Outcome { model, ok: false, took: None });
        }
        self.rx.recv().await
    }

    /// Outcomes dropped at the full queue so far.
    pub fn dropped(&self) -> u64 {
        self.overflow.dropped.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(model: u8, ok: bool) -> Outcome {
        Outcome { model: Digest([model; 32]), ok, took: Some(Duration::from_millis(1)) }
    }

    /// A failing package on trial whose failure arrives while the loop is busy must still roll back: the failure
    /// is dropped from the full queue like any outcome, but its model is kept aside and handed out first.
    #[tokio::test]
    async fn a_failure_dropped_at_the_full_queue_still_reaches_the_health_window() {
        let dropped = Counter::default();
        let (tx, mut rx) = channel(1, dropped.clone());
        tx.send(outcome(1, true));
        tx.send(outcome(2, false));
        tx.send(outcome(2, false));
        tx.send(outcome(1, true));
        assert_eq!((rx.dropped(), dropped.get()), (3, 3), "one queued, three dropped and counted");
        assert_eq!(rx.recv().await, Some(Outcome { model: Digest([2; 32]), ok: false, took: None }), "failure first");
        assert_eq!(rx.recv().await, Some(outcome(1, true)));
        drop(tx);
        assert_eq!(rx.recv().await, None, "the failure was handed out once");
    }
}
