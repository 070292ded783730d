//! The durable telemetry queue: nothing lost across agent restarts and hub outages within its bound, drops at the
//! bound counted, and nothing removed before the hub acknowledges it.

use std::collections::BTreeSet;
use std::path::Path;

use outpost_agent::telemetry::{Pushed, Queue, QueueError};
use outpost_shared::Digest;
use outpost_shared::rng::SeededRng;
use outpost_shared::telemetry::{Batch, BatchLimits, EventKind, Histogram, Step};

const T0: u64 = 1_800_000_000;

fn open(path: &Path, capacity: u64) -> Queue {
    Queue::open(path, capacity, &mut SeededRng::new(7)).unwrap()
}

/// A different event for each `i`, cycling through the kinds.
fn event(i: u64) -> EventKind {
    let d = Digest::of(&i.to_le_bytes());
    match i % 4 {
        0 => EventKind::UpdateStep { package: d, step: Step::Downloaded, detail: format!("event {i}") },
        1 => {
            let mut latency = Histogram::new();
            latency.record_us(100 + i);
            EventKind::InferenceStats { model: d, count: i, errors: 0, latency }
        }
        2 => EventKind::Error { what: format!("error {i}") },
        _ => EventKind::Rollback { from: d, to: None, reason: format!("rollback {i}") },
    }
}

fn seqs(batch: &Batch) -> Vec<u64> {
    batch.events.iter().map(|e| e.seq).collect()
}

/// What the hub does with a batch on the wire: decode it strictly and keep each sequence number once.
fn deliver(batch: &Batch, hub: &mut BTreeSet<u64>) -> usize {
    let limits = BatchLimits::default();
    let decoded = Batch::decode(&batch.encode(&limits).unwrap(), &limits).unwrap();
    decoded.events.iter().filter(|e| hub.insert(e.seq)).count()
}

#[test]
fn events_survive_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.redb");
    let (stream, before) = {
        let q = open(&path, 100);
        for i in 0..10 {
            assert_eq!(q.push(event(i), T0 + i).unwrap(), Pushed::Queued(i + 1));
        }
        (q.stream(), q.peek_batch(100).unwrap())
    }; // The queue (and its redb file) closes here, as when the agent stops or crashes.
    let q = Queue::open(&path, 100, &mut SeededRng::new(999)).unwrap();
    assert_eq!(q.stream(), stream, "the stream id is the file's, not the opener's");
    assert_eq!(q.len().unwrap(), 10);
    assert_eq!(q.peek_batch(100).unwrap(), before);
    // Numbering carries on where it stopped.
    assert_eq!(q.push(event(10), T0 + 10).unwrap(), Pushed::Queued(11));
}

#[test]
fn events_survive_a_hub_outage_with_zero_lost() {
    const N: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir.path().join("telemetry.redb"), N);
    // Hub down: every attempt to send fails, so nothing is ever acknowledged.
    for i in 0..N {
        assert!(matches!(q.push(event(i), T0 + i).unwrap(), Pushed::Queued(_)));
        if i % 100 == 0 {
            let attempt = q.peek_batch(64).unwrap();
            assert_eq!(attempt.first_seq, 1, "unacknowledged events stay at the head");
        }
    }
    assert_eq!(q.len().unwrap(), N);

    // Hub back: drain in batches; every third ack is lost on the way back, so that batch is sent again.
    let mut hub = BTreeSet::new();
    let (mut acked, mut sends, mut delivered_new) = (0u64, 0u32, 0usize);
    loop {
        let batch = q.peek_batch(64).unwrap();
        let Some(last) = batch.last_seq() else { break };
        assert!(seqs(&batch).iter().all(|&s| s > acked), "an acknowledged event was sent again");
        assert_eq!(batch.dropped, 0);
        delivered_new += deliver(&batch, &mut hub);
        sends += 1;
        if sends % 3 != 0 {
            q.ack(last).unwrap();
            acked = last;
        }
    }
    assert_eq!(hub.len() as u64, N, "exactly N distinct events reached the hub");
    assert_eq!(delivered_new as u64, N, "each event counted once however often it was sent");
    assert_eq!(hub.iter().copied().collect::<Vec<_>>(), (1..=N).collect::<Vec<_>>());
    assert!(q.is_empty().unwrap());
    assert_eq!(q.dropped().unwrap(), 0);
}

#[test]
fn queue_at_its_bound_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.redb");
    {
        let q = open(&path, 5);
        for i in 0..8 {
            let pushed = q.push(event(i), T0).unwrap();
            if i < 5 {
                assert_eq!(pushed, Pushed::Queued(i + 1));
            } else {
                assert_eq!(pushed, Pushed::Dropped { total: i - 4 }, "the newest event is the one dropped");
            }
        }
        assert_eq!((q.len().unwrap(), q.dropped().unwrap()), (5, 3));
    }
    // The drop count is as durable as the events, and travels with every batch.
    let q = open(&path, 5);
    assert_eq!(q.dropped().unwrap(), 3);
    let batch = q.peek_batch(100).unwrap();
    assert_eq!((seqs(&batch), batch.dropped), (vec![1, 2, 3, 4, 5], 3));
    assert_eq!(batch.events[0].kind, event(0), "the oldest events are kept");
    // Room again after an ack: numbering is gap-free, since dropped events never took a number.
    q.ack(2).unwrap();
    assert_eq!(q.push(event(8), T0).unwrap(), Pushed::Queued(6));
}

#[test]
fn unacked_batch_is_resent_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.redb");
    let sent = {
        let q = open(&path, 100);
        for i in 0..20 {
            q.push(event(i), T0 + i).unwrap();
        }
        q.ack(q.peek_batch(5).unwrap().last_seq().unwrap()).unwrap();
        // This batch goes out, and the agent dies before the hub's ack arrives.
        q.peek_batch(10).unwrap()
    };
    assert_eq!(seqs(&sent), (6..=15).collect::<Vec<_>>());
    let q = open(&path, 100);
    assert_eq!(q.peek_batch(10).unwrap(), sent, "the same batch, byte for byte");
    assert_eq!(q.ack(15).unwrap(), 10);
    assert_eq!(seqs(&q.peek_batch(10).unwrap()), (16..=20).collect::<Vec<_>>());
}

#[test]
fn a_repeated_ack_removes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir.path().join("telemetry.redb"), 100);
    for i in 0..4 {
        q.push(event(i), T0).unwrap();
    }
    assert_eq!(q.ack(2).unwrap(), 2);
    assert_eq!(q.ack(2).unwrap(), 0);
    assert_eq!(q.ack(1).unwrap(), 0);
    assert_eq!(q.len().unwrap(), 2);
}

#[test]
fn ack_beyond_what_was_queued_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir.path().join("telemetry.redb"), 100);
    q.push(event(0), T0).unwrap();
    assert!(matches!(q.ack(2), Err(QueueError::AckBeyondQueue { up_to: 2, last: 1 })));
    assert_eq!(q.len().unwrap(), 1);
}

#[test]
fn an_event_the_hub_would_refuse_is_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir.path().join("telemetry.redb"), 100);
    let nan = EventKind::ShadowDivergence {
        package: Digest::of(b"p"),
        max_abs_diff: f64::NAN,
        top1_agreement: 1.0,
        latency_ratio: 1.0,
        samples: 1,
    };
    assert!(matches!(q.push(nan, T0), Err(QueueError::Invalid(_))));
    // Overlong text is cut, not refused: an error message should never cost the event.
    assert!(matches!(q.push(EventKind::Error { what: "x".repeat(10_000) }, T0).unwrap(), Pushed::Queued(1)));
    let batch = q.peek_batch(10).unwrap();
    let limits = BatchLimits::default();
    assert!(Batch::decode(&batch.encode(&limits).unwrap(), &limits).is_ok());
}

#[test]
fn batches_stay_within_the_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = BatchLimits { max_bytes: 2048, ..BatchLimits::default() };
    let q = open(&dir.path().join("telemetry.redb"), 100).with_limits(limits);
    for _ in 0..20 {
        q.push(EventKind::Error { what: "y".repeat(400) }, T0).unwrap();
    }
    let batch = q.peek_batch(100).unwrap();
    assert!(batch.events.len() > 1 && batch.events.len() < 20, "{} events", batch.events.len());
    assert!(batch.encode(&limits).unwrap().len() <= limits.max_bytes);
}

#[test]
fn a_second_opener_of_the_same_file_is_told_it_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("telemetry.redb");
    let _q = open(&path, 10);
    assert!(matches!(Queue::open(&path, 10, &mut SeededRng::new(1)), Err(QueueError::Busy { .. })));
}

#[test]
fn an_empty_queue_gives_an_empty_batch_naming_the_next_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(&dir.path().join("telemetry.redb"), 10);
    q.push(event(0), T0).unwrap();
    q.ack(1).unwrap();
    let batch = q.peek_batch(10).unwrap();
    assert_eq!((batch.first_seq, batch.events.len(), batch.last_seq()), (2, 0, None));
    assert!(matches!(
        Queue::open(&dir.path().join("zero.redb"), 0, &mut SeededRng::new(1)),
        Err(QueueError::ZeroCapacity)
    ));
}

/// The acceptance: events go from the agent's queue to the hub's store over the wire format, through a
/// hub outage, an agent restart in the middle of it, a lost ack and a hub restart, and every one is counted once.
#[test]
fn telemetry_survives_a_hub_outage_and_an_agent_restart_end_to_end() {
    use std::sync::Arc;

    use outpost_hub::telemetry::{Filter, GroupBy, TelemetryStore};
    use outpost_shared::clock::ManualClock;

    let dir = tempfile::tempdir().unwrap();
    let (queue_path, hub_dir) = (dir.path().join("telemetry.redb"), dir.path().join("hub"));
    std::fs::create_dir(&hub_dir).unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let limits = BatchLimits::default();
    // One exchange: the batch crosses the wire, the hub stores it, and its ack comes back unless `lose_ack`.
    let send = |q: &Queue, hub: &TelemetryStore, lose_ack: bool| -> Option<u64> {
        let batch = q.peek_batch(100).unwrap();
        batch.last_seq()?;
        let received = Batch::decode(&batch.encode(&limits).unwrap(), &limits).unwrap();
        let outcome = hub.ingest("device-1", Some("site-a"), Some("r1"), Some(1), &received).unwrap();
        if !lose_ack {
            q.ack(outcome.ack.unwrap()).unwrap();
        }
        outcome.ack
    };
    let mut pushed = 0u64;
    let mut push = |q: &Queue, n: u64| {
        for _ in 0..n {
            assert!(matches!(q.push(event(pushed), T0 + pushed).unwrap(), Pushed::Queued(_)));
            pushed += 1;
        }
    };

    let hub = TelemetryStore::open(&hub_dir, clock.clone()).unwrap();
    let q = open(&queue_path, 10_000);
    push(&q, 150);
    while send(&q, &hub, false).is_some() {}
    // A batch reaches the hub but its ack is lost; then the hub goes down.
    push(&q, 50);
    assert_eq!(send(&q, &hub, true), Some(200));
    drop(hub);
    push(&q, 300);
    drop(q); // The agent restarts during the outage.
    let q = open(&queue_path, 10_000);
    push(&q, 500);
    assert_eq!(q.len().unwrap(), 850, "the unacknowledged batch and everything since");

    // The hub comes back (a new process on the same store) and the queue drains.
    let hub = TelemetryStore::open(&hub_dir, clock).unwrap();
    while send(&q, &hub, false).is_some() {}
    assert!(q.is_empty().unwrap());
    assert_eq!(pushed, 1000);
    assert_eq!(hub.len().unwrap(), 1000, "every event stored, none twice");
    let by_device = hub.aggregate(GroupBy::Device, &Filter::default()).unwrap();
    assert_eq!(by_device.len(), 1);
    let summary = &by_device[0].summary;
    assert_eq!((summary.events, summary.dropped, summary.missing), (1000, 0, 0));
    assert_eq!(summary.by_kind.values().sum::<u64>(), 1000);
}
