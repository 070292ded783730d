//! The hub's telemetry store: each event counted once however often it is sent, retention by the hub's clock, and
//! totals per release, stage, site and device.

use std::sync::Arc;
use std::time::Duration;

use outpost_hub::telemetry::{Filter, GroupBy, Summary, TelemetryStore, TelemetryStoreError};
use outpost_shared::Digest;
use outpost_shared::clock::ManualClock;
use outpost_shared::telemetry::{Batch, Event, EventKind, Histogram, Step};

const T0: u64 = 1_800_000_000;

struct Hub {
    _tmp: tempfile::TempDir,
    clock: Arc<ManualClock>,
    store: TelemetryStore,
}

fn hub() -> Hub {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let store = TelemetryStore::open(tmp.path(), clock.clone()).unwrap();
    Hub { _tmp: tmp, clock, store }
}

impl Hub {
    fn clock_now(&self) -> u64 {
        use outpost_shared::clock::Clock;
        self.clock.wall()
    }
}

fn pkg(name: &str) -> Digest {
    Digest::of(name.as_bytes())
}

/// A batch of `kinds` numbered from `first_seq` in queue `stream`.
fn batch(stream: u64, first_seq: u64, kinds: Vec<EventKind>, dropped: u64) -> Batch {
    let events = kinds.into_iter().zip(first_seq..).map(|(kind, seq)| Event { seq, at: T0, kind }).collect();
    Batch { stream, first_seq, events, dropped }
}

fn errors(n: usize) -> Vec<EventKind> {
    (0..n).map(|i| EventKind::Error { what: format!("e{i}") }).collect()
}

fn rejection(rule: &str, deferred: bool) -> EventKind {
    EventKind::PolicyRejection {
        package: pkg("p2"),
        rule: rule.into(),
        reason: "no".into(),
        deferred_until: deferred.then_some(T0 + 3600),
    }
}

fn inference(model: Digest, count: u64, errors: u64, latencies_us: &[u64]) -> EventKind {
    let mut latency = Histogram::new();
    latencies_us.iter().for_each(|&us| latency.record_us(us));
    EventKind::InferenceStats { model, count, errors, latency }
}

fn summary_of<'a>(groups: &'a [outpost_hub::telemetry::Group], key: &str) -> &'a Summary {
    &groups.iter().find(|g| g.key == key).unwrap_or_else(|| panic!("no group {key} in {groups:?}")).summary
}

#[test]
fn a_resent_batch_is_counted_once() {
    let h = hub();
    let b = batch(1, 1, errors(10), 0);
    let first = h.store.ingest("dev1", Some("site-a"), Some("r1"), Some(1), &b).unwrap();
    assert_eq!((first.stored, first.duplicates, first.ack), (10, 0, Some(10)));
    // The ack was lost: the device resends the same batch, now with newer events behind it.
    let again = batch(1, 1, errors(15), 0);
    let second = h.store.ingest("dev1", Some("site-a"), Some("r1"), Some(1), &again).unwrap();
    assert_eq!((second.stored, second.duplicates, second.ack), (5, 10, Some(15)));
    assert_eq!(h.store.len().unwrap(), 15);
    let all = h.store.aggregate(GroupBy::Device, &Filter::default()).unwrap();
    assert_eq!(summary_of(&all, "dev1").events, 15);
    assert_eq!(summary_of(&all, "dev1").errors, 15);
}

#[test]
fn a_device_inventing_stream_ids_cannot_grow_the_store_without_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let store =
        TelemetryStore::open(tmp.path(), Arc::new(ManualClock::new(T0))).unwrap().with_max_streams_per_device(4);
    for stream in 0..4 {
        store.ingest("dev1", None, None, None, &batch(stream, 1, errors(1), 0)).unwrap();
    }
    let e = store.ingest("dev1", None, None, None, &batch(99, 1, errors(1), 0)).unwrap_err();
    assert!(
        matches!(&e, TelemetryStoreError::TooManyStreams { device, stream: 99, held: 4, max: 4 } if device == "dev1"),
        "{e}"
    );
    assert_eq!(store.len().unwrap(), 4, "nothing of the refused batch was stored");
    assert_eq!(store.streams().unwrap().len(), 4);
    // Its known streams still go through, and other devices are not affected.
    store.ingest("dev1", None, None, None, &batch(3, 2, errors(1), 0)).unwrap();
    store.ingest("dev2", None, None, None, &batch(99, 1, errors(1), 0)).unwrap();
}

#[test]
fn a_recreated_device_queue_is_not_taken_for_a_resend() {
    let h = hub();
    h.store.ingest("dev1", None, None, None, &batch(1, 1, errors(3), 0)).unwrap();
    // The device's queue file was lost: a new stream numbers from 1 again, and its events are new.
    let outcome = h.store.ingest("dev1", None, None, None, &batch(2, 1, errors(3), 0)).unwrap();
    assert_eq!((outcome.stored, outcome.duplicates), (3, 0));
    assert_eq!(h.store.len().unwrap(), 6);
    assert_eq!(h.store.streams().unwrap().len(), 2);
}

#[test]
fn retention_drops_old_events_by_the_hubs_clock() {
    let h = hub();
    // Old events from a device whose clock is far ahead: retention goes by receipt, not by the device's `at`.
    let mut old = batch(1, 1, errors(4), 0);
    old.events.iter_mut().for_each(|e| e.at = T0 + 365 * 86_400);
    h.store.ingest("dev1", Some("s"), Some("r1"), None, &old).unwrap();
    h.clock.advance(Duration::from_secs(10 * 86_400));
    h.store.ingest("dev1", Some("s"), Some("r1"), None, &batch(1, 5, errors(3), 0)).unwrap();
    h.clock.advance(Duration::from_secs(25 * 86_400));

    // 35 days after the first batch, 25 after the second: a 30-day retention keeps only the second.
    assert_eq!(h.store.apply_retention(Duration::from_secs(30 * 86_400)).unwrap(), 4);
    assert_eq!(h.store.len().unwrap(), 3);
    let by_release = h.store.aggregate(GroupBy::Release, &Filter::default()).unwrap();
    assert_eq!(summary_of(&by_release, "r1").events, 3);
    // Pruning again removes nothing; pruning everything empties the store.
    assert_eq!(h.store.prune(T0).unwrap(), 0);
    assert_eq!(h.store.prune(h.clock_now() + 1).unwrap(), 3);
    assert!(h.store.is_empty().unwrap());
}

#[test]
fn aggregates_per_site_release_stage_and_device_are_correct() {
    let h = hub();
    let (m1, m2) = (pkg("model-1"), pkg("model-2"));
    // dev1 and dev2 at site-a, dev3 at site-b; dev1 and dev3 in r1 stage 1, dev2 in r2 stage 2.
    let dev1 = vec![
        EventKind::UpdateStep { package: pkg("p1"), step: Step::Downloaded, detail: String::new() },
        EventKind::UpdateStep { package: pkg("p1"), step: Step::Activated, detail: String::new() },
        inference(m1, 100, 2, &[1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 50_000]),
        EventKind::ShadowDivergence {
            package: pkg("p1"),
            max_abs_diff: 0.5,
            top1_agreement: 1.0,
            latency_ratio: 1.0,
            samples: 100,
        },
    ];
    let dev2 = vec![
        rejection("window", true),
        rejection("min-accuracy", false),
        EventKind::Rollback { from: pkg("p2"), to: Some(pkg("p1")), reason: "health".into() },
        inference(m2, 10, 0, &[200]),
    ];
    let dev3 = vec![
        rejection("window", false),
        inference(m1, 50, 1, &[1000; 10]),
        EventKind::ShadowDivergence {
            package: pkg("p1"),
            max_abs_diff: 0.25,
            top1_agreement: 0.5,
            latency_ratio: 3.0,
            samples: 300,
        },
    ];
    h.store.ingest("dev1", Some("site-a"), Some("r1"), Some(1), &batch(1, 1, dev1, 0)).unwrap();
    h.store.ingest("dev2", Some("site-a"), Some("r2"), Some(2), &batch(2, 1, dev2, 7)).unwrap();
    h.store.ingest("dev3", Some("site-b"), Some("r1"), Some(1), &batch(3, 1, dev3, 0)).unwrap();

    let by_site = h.store.aggregate(GroupBy::Site, &Filter::default()).unwrap();
    assert_eq!(by_site.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(), ["site-a", "site-b"]);
    let a = summary_of(&by_site, "site-a");
    assert_eq!((a.events, a.devices, a.rollbacks, a.deferrals, a.dropped), (8, 2, 1, 1, 7));
    assert_eq!(a.rejections_by_rule, [("min-accuracy".to_owned(), 1), ("window".to_owned(), 1)].into());
    assert_eq!(a.update_steps, [("activated".to_owned(), 1), ("downloaded".to_owned(), 1)].into());
    assert_eq!(a.by_kind["inference_stats"], 2);
    assert_eq!(a.rollbacks_from[&pkg("p2").to_hex()], 1);
    let a_m1 = &a.inference[&m1.to_hex()];
    assert_eq!((a_m1.count, a_m1.errors, a_m1.latency.count()), (100, 2, 10));
    // 9 of 10 latencies at 1 ms: the median's bucket holds 1000 µs, the 95th percentile's holds 50 ms.
    let (p50, p95) = (a_m1.p50_us.unwrap(), a_m1.p95_us.unwrap());
    assert!((1000..1250).contains(&p50) && (50_000..62_500).contains(&p95), "p50 {p50} p95 {p95}");

    let by_release = h.store.aggregate(GroupBy::Release, &Filter::default()).unwrap();
    let r1 = summary_of(&by_release, "r1");
    assert_eq!((r1.events, r1.devices, r1.dropped), (7, 2, 0));
    let r1_m1 = &r1.inference[&m1.to_hex()];
    assert_eq!((r1_m1.count, r1_m1.errors, r1_m1.latency.count()), (150, 3, 20));
    let shadow = &r1.shadow[&pkg("p1").to_hex()];
    assert_eq!((shadow.reports, shadow.samples, shadow.max_abs_diff), (2, 400, 0.5));
    // Averaged over samples: (100 × 1.0 + 300 × 0.5) / 400 and (100 × 1 + 300 × 3) / 400.
    assert!((shadow.top1_agreement - 0.625).abs() < 1e-12, "{}", shadow.top1_agreement);
    assert!((shadow.latency_ratio - 2.5).abs() < 1e-12, "{}", shadow.latency_ratio);
    assert_eq!(summary_of(&by_release, "r2").rejections_by_rule.values().sum::<u64>(), 2);

    // `release status r1`: its stages, and its sites.
    let r1_only = Filter { release: Some("r1".into()), ..Filter::default() };
    let stages = h.store.aggregate(GroupBy::Stage, &r1_only).unwrap();
    assert_eq!(stages.len(), 1);
    assert_eq!((stages[0].key.as_str(), stages[0].summary.events), ("1", 7));
    let sites = h.store.aggregate(GroupBy::Site, &r1_only).unwrap();
    assert_eq!(
        sites.iter().map(|g| (g.key.as_str(), g.summary.events)).collect::<Vec<_>>(),
        [("site-a", 4), ("site-b", 3)]
    );

    let by_device = h.store.aggregate(GroupBy::Device, &Filter::default()).unwrap();
    assert_eq!(
        by_device.iter().map(|g| (g.key.as_str(), g.summary.events)).collect::<Vec<_>>(),
        [("dev1", 4), ("dev2", 4), ("dev3", 3)]
    );
    let only_dev2 = Filter { device: Some("dev2".into()), ..Filter::default() };
    let dev2 = h.store.aggregate(GroupBy::Device, &only_dev2).unwrap();
    assert_eq!((dev2.len(), dev2[0].summary.dropped, dev2[0].summary.rollbacks), (1, 7, 1));
    // Everything fits in JSON for `--json`.
    let json = serde_json::to_value(&by_site).unwrap();
    assert_eq!(json[0]["summary"]["inference"][m1.to_hex()]["count"], 100);
}

#[test]
fn events_stay_with_the_release_they_arrived_in() {
    let h = hub();
    h.store.ingest("dev1", None, Some("r1"), Some(3), &batch(1, 1, errors(2), 0)).unwrap();
    h.store.ingest("dev1", None, Some("r2"), Some(1), &batch(1, 3, errors(5), 0)).unwrap();
    let by_release = h.store.aggregate(GroupBy::Release, &Filter::default()).unwrap();
    assert_eq!(
        by_release.iter().map(|g| (g.key.as_str(), g.summary.events)).collect::<Vec<_>>(),
        [("r1", 2), ("r2", 5)]
    );
    let stages = h.store.aggregate(GroupBy::Stage, &Filter::default()).unwrap();
    assert_eq!(stages.iter().map(|g| g.key.as_str()).collect::<Vec<_>>(), ["1", "3"]);
    let no_site = h.store.aggregate(GroupBy::Site, &Filter::default()).unwrap();
    assert_eq!((no_site[0].key.as_str(), no_site[0].summary.events), ("-", 7));
}

#[test]
fn dropped_counts_are_running_totals_not_summed_per_batch() {
    let h = hub();
    h.store.ingest("dev1", None, None, None, &batch(1, 1, errors(1), 4)).unwrap();
    h.store.ingest("dev1", None, None, None, &batch(1, 1, errors(1), 4)).unwrap();
    h.store.ingest("dev1", None, None, None, &batch(1, 2, errors(1), 6)).unwrap();
    let streams = h.store.streams().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].record.dropped, 6);
    let all = h.store.aggregate(GroupBy::Device, &Filter::default()).unwrap();
    assert_eq!(summary_of(&all, "dev1").dropped, 6);
}

#[test]
fn stored_events_survive_reopening_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    {
        let store = TelemetryStore::open(tmp.path(), clock.clone()).unwrap();
        store.ingest("dev1", None, None, None, &batch(1, 1, errors(9), 0)).unwrap();
    }
    let store = TelemetryStore::open(tmp.path(), clock).unwrap();
    assert_eq!(store.len().unwrap(), 9);
    let outcome = store.ingest("dev1", None, None, None, &batch(1, 1, errors(9), 0)).unwrap();
    assert_eq!((outcome.stored, outcome.duplicates), (0, 9));
}

#[test]
fn a_gap_in_a_streams_sequence_numbers_is_counted_as_missing() {
    let h = hub();
    h.store.ingest("dev1", Some("s"), None, None, &batch(1, 1, errors(10), 0)).unwrap();
    h.store.ingest("dev1", Some("s"), None, None, &batch(1, 1, errors(10), 0)).unwrap();
    assert_eq!(h.store.streams().unwrap()[0].record.missing(), 0, "a resend is not a gap");
    // Events 11..=20 never arrive.
    h.store.ingest("dev1", Some("s"), None, None, &batch(1, 21, errors(5), 0)).unwrap();
    let stream = &h.store.streams().unwrap()[0].record;
    assert_eq!((stream.highest_seq, stream.received, stream.missing()), (25, 15, 10));
    let by_site = h.store.aggregate(GroupBy::Site, &Filter::default()).unwrap();
    assert_eq!((summary_of(&by_site, "s").missing, summary_of(&by_site, "s").events), (10, 15));
    // Pruning forgets events, not what was received.
    h.store.prune(h.clock_now() + 1).unwrap();
    assert_eq!(h.store.streams().unwrap()[0].record.missing(), 10);
}
