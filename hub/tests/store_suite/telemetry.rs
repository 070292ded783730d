//! The telemetry suite: [`TelemetryEvents`] on each backend, each event stored once per `(device, stream, seq)`
//! however often and by however many replicas it is ingested, summed by every grouping, pruned by the hub's clock.

use std::sync::Barrier;
use std::time::Duration;

use outpost_hub::storage::TelemetryEvents;
use outpost_hub::telemetry::{Filter, Group, GroupBy, Summary, TelemetryStoreError};
use outpost_shared::Digest;
use outpost_shared::telemetry::{Batch, Event, EventKind, Histogram, Step};

use super::{Backend, START};

/// A batch of `kinds` numbered from `first_seq` in queue `stream`.
fn batch(stream: u64, first_seq: u64, kinds: Vec<EventKind>, dropped: u64) -> Batch {
    let events =
        kinds.into_iter().zip(first_seq..=u64::MAX).map(|(kind, seq)| Event { seq, at: START, kind }).collect();
    Batch { stream, first_seq, events, dropped }
}

fn errors(n: usize) -> Vec<EventKind> {
    (0..n).map(|i| EventKind::Error { what: format!("e{i}") }).collect()
}

fn summary<'a>(groups: &'a [Group], key: &str) -> &'a Summary {
    &groups.iter().find(|g| g.key == key).unwrap_or_else(|| panic!("no group {key} in {groups:?}")).summary
}

fn keys(groups: &[Group]) -> Vec<&str> {
    groups.iter().map(|g| g.key.as_str()).collect()
}

fn events(t: &dyn TelemetryEvents) -> u64 {
    t.aggregate(GroupBy::Device, &Filter::default()).unwrap().iter().map(|g| g.summary.events).sum()
}

both!(
    telemetry_batch_resent_is_stored_once,
    telemetry_batch_ingested_by_two_replicas_at_once_is_stored_once,
    telemetry_aggregates_by_every_grouping_and_filter,
    telemetry_new_streams_beyond_the_bound_are_refused,
    telemetry_retention_goes_by_the_hubs_clock,
    telemetry_stream_ids_past_i64_max_stay_apart_and_in_order,
);

fn telemetry_batch_resent_is_stored_once(b: &Backend) {
    let [one, other] = &b.telemetry;
    let first = one.ingest("dev1", Some("site-a"), Some("r1"), Some(1), &batch(1, 1, errors(10), 0)).unwrap();
    assert_eq!((first.stored, first.duplicates, first.ack), (10, 0, Some(10)));
    // The ack was lost: the device resends, with newer events behind, to the other replica.
    let second = other.ingest("dev1", Some("site-a"), Some("r1"), Some(1), &batch(1, 1, errors(15), 0)).unwrap();
    assert_eq!((second.stored, second.duplicates, second.ack), (5, 10, Some(15)));
    // A recreated queue (new stream) numbering from 1 again is new.
    let recreated = one.ingest("dev1", None, None, None, &batch(2, 1, errors(3), 0)).unwrap();
    assert_eq!((recreated.stored, recreated.duplicates), (3, 0));
    let empty = one.ingest("dev1", None, None, None, &batch(2, 4, vec![], 0)).unwrap();
    assert_eq!((empty.stored, empty.duplicates, empty.ack), (0, 0, None));
    let all = other.aggregate(GroupBy::Device, &Filter::default()).unwrap();
    assert_eq!((summary(&all, "dev1").events, summary(&all, "dev1").errors), (18, 18));
    assert_eq!(summary(&all, "dev1").missing, 0, "a resend is not a gap");
}

fn telemetry_batch_ingested_by_two_replicas_at_once_is_stored_once(b: &Backend) {
    const BATCHES: u64 = 10;
    const EVENTS: usize = 20;
    let [one, other] = &b.telemetry;
    for n in 0..BATCHES {
        let sent = batch(1, n * EVENTS as u64 + 1, errors(EVENTS), n);
        let barrier = Barrier::new(2);
        let ingest = |t: &dyn TelemetryEvents| {
            barrier.wait();
            t.ingest("dev1", Some("s"), Some("r1"), Some(2), &sent).unwrap()
        };
        let (x, y) = std::thread::scope(|scope| {
            let x = scope.spawn(|| ingest(&**one));
            let y = scope.spawn(|| ingest(&**other));
            (x.join().unwrap(), y.join().unwrap())
        });
        assert_eq!(x.stored + y.stored, EVENTS as u64, "batch {n}: stored once in all, {x:?} {y:?}");
        assert_eq!(x.duplicates + y.duplicates, EVENTS as u64, "batch {n}: the other copy is all duplicates");
        assert_eq!((x.ack, y.ack), (sent.last_seq(), sent.last_seq()), "both replicas may ack it");
    }
    let all = one.aggregate(GroupBy::Stage, &Filter::default()).unwrap();
    let s = summary(&all, "2");
    assert_eq!(s.events, BATCHES * EVENTS as u64);
    // The stream's running count saw each event once: nothing is taken for missing.
    assert_eq!((s.missing, s.dropped), (0, BATCHES - 1));
}

fn telemetry_aggregates_by_every_grouping_and_filter(b: &Backend) {
    let [one, other] = &b.telemetry;
    let model = Digest::of(b"model");
    let mut latency = Histogram::new();
    [100, 200, 300].iter().for_each(|&us| latency.record_us(us));
    let inference = EventKind::InferenceStats { model, count: 30, errors: 1, latency };
    let step = |step| EventKind::UpdateStep { package: model, step, detail: String::new() };
    let rollback = EventKind::Rollback { from: model, to: None, reason: "health".into() };
    // dev1, dev2 at site-a; dev3 at site-b; dev4 nowhere. dev1, dev3 in r1 stage 1; dev2 in r2 stage 10.
    one.ingest(
        "dev1",
        Some("site-a"),
        Some("r1"),
        Some(1),
        &batch(1, 1, vec![inference.clone(), step(Step::Downloaded)], 0),
    )
    .unwrap();
    other
        .ingest("dev2", Some("site-a"), Some("r2"), Some(10), &batch(1, 1, vec![step(Step::Activated), rollback], 3))
        .unwrap();
    one.ingest("dev3", Some("site-b"), Some("r1"), Some(1), &batch(7, 1, errors(2), 0)).unwrap();
    // dev4 loses events 2..=4 on the way.
    other.ingest("dev4", None, None, None, &batch(1, 1, errors(1), 0)).unwrap();
    b.clock.advance(Duration::from_secs(60));
    other.ingest("dev4", None, None, Some(2), &batch(1, 5, errors(1), 0)).unwrap();

    let by_release = one.aggregate(GroupBy::Release, &Filter::default()).unwrap();
    assert_eq!(keys(&by_release), ["r1", "r2", "-"], "by name, events without one last");
    let r1 = summary(&by_release, "r1");
    assert_eq!((r1.events, r1.devices, r1.errors), (4, 2, 2));
    assert_eq!(r1.update_steps.get("downloaded"), Some(&1));
    let inf = &r1.inference[&model.to_hex()];
    assert_eq!((inf.count, inf.errors, inf.p50_us.is_some()), (30, 1, true));
    let r2 = summary(&by_release, "r2");
    assert_eq!((r2.events, r2.rollbacks, r2.dropped), (2, 1, 3));
    assert_eq!(summary(&by_release, "-").missing, 3, "dev4's gap, in the group of its last batch");

    let by_stage = other.aggregate(GroupBy::Stage, &Filter::default()).unwrap();
    assert_eq!(keys(&by_stage), ["1", "2", "10", "-"], "stages by number");
    assert_eq!((summary(&by_stage, "1").events, summary(&by_stage, "10").events), (4, 2));
    let by_site = one.aggregate(GroupBy::Site, &Filter::default()).unwrap();
    assert_eq!(keys(&by_site), ["site-a", "site-b", "-"]);
    assert_eq!((summary(&by_site, "site-a").events, summary(&by_site, "site-a").devices), (4, 2));
    let by_device = one.aggregate(GroupBy::Device, &Filter::default()).unwrap();
    assert_eq!(keys(&by_device), ["dev1", "dev2", "dev3", "dev4"]);

    let only = |f: Filter| one.aggregate(GroupBy::Device, &f).unwrap();
    assert_eq!(keys(&only(Filter { release: Some("r1".into()), ..Filter::default() })), ["dev1", "dev3"]);
    assert_eq!(keys(&only(Filter { stage: Some(10), ..Filter::default() })), ["dev2"]);
    assert_eq!(keys(&only(Filter { site: Some("site-b".into()), ..Filter::default() })), ["dev3"]);
    assert_eq!(keys(&only(Filter { device: Some("dev2".into()), ..Filter::default() })), ["dev2"]);
    // `since` filters events; a queue's dropped count is a running total and stays in its group.
    let recent = only(Filter { since: Some(START + 60), ..Filter::default() });
    assert_eq!(keys(&recent), ["dev2", "dev4"]);
    assert_eq!((summary(&recent, "dev2").events, summary(&recent, "dev2").dropped), (0, 3));
    assert_eq!(summary(&recent, "dev4").events, 1);
    assert!(only(Filter { release: Some("r9".into()), ..Filter::default() }).is_empty());
}

fn telemetry_new_streams_beyond_the_bound_are_refused(b: &Backend) {
    let [one, other] = &b.telemetry;
    let max = outpost_hub::telemetry::DEFAULT_MAX_STREAMS_PER_DEVICE;
    for stream in 0..u64::from(max) {
        let t = if stream % 2 == 0 { one } else { other };
        t.ingest("dev1", None, None, None, &batch(stream, 1, errors(1), 0)).unwrap();
    }
    let e = one.ingest("dev1", None, None, None, &batch(999, 1, errors(1), 0)).unwrap_err();
    assert!(
        matches!(&e, TelemetryStoreError::TooManyStreams { device, stream: 999, held, max: m }
            if device == "dev1" && *held == u64::from(max) && *m == max),
        "{e}"
    );
    assert_eq!(events(&**other), u64::from(max), "nothing of the refused batch was stored");
    // Known streams still go through, and other devices are not affected.
    assert_eq!(other.ingest("dev1", None, None, None, &batch(3, 2, errors(1), 0)).unwrap().stored, 1);
    assert_eq!(one.ingest("dev2", None, None, None, &batch(999, 1, errors(1), 0)).unwrap().stored, 1);
}

fn telemetry_retention_goes_by_the_hubs_clock(b: &Backend) {
    let [one, other] = &b.telemetry;
    // Old events from a device whose clock is far ahead: retention goes by receipt, not by the device's `at`.
    let mut old = batch(1, 1, errors(4), 0);
    old.events.iter_mut().for_each(|e| e.at = START + 365 * 86_400);
    one.ingest("dev1", None, Some("r1"), None, &old).unwrap();
    b.clock.advance(Duration::from_secs(10 * 86_400));
    other.ingest("dev1", None, Some("r1"), None, &batch(1, 5, errors(3), 0)).unwrap();
    b.clock.advance(Duration::from_secs(25 * 86_400));
    let month = Duration::from_secs(30 * 86_400);
    assert_eq!(one.apply_retention(month).unwrap(), 4);
    assert_eq!(other.apply_retention(month).unwrap(), 0, "pruning again removes nothing");
    let by_release = other.aggregate(GroupBy::Release, &Filter::default()).unwrap();
    assert_eq!((summary(&by_release, "r1").events, summary(&by_release, "r1").missing), (3, 0));
    // Pruned events are forgotten, not taken for new: a resend of them is stored again.
    assert_eq!(one.ingest("dev1", None, None, None, &old).unwrap().stored, 4);
    assert_eq!(one.apply_retention(Duration::ZERO).unwrap(), 3, "all but what was received now");
    assert_eq!(events(&**other), 4);
}

fn telemetry_stream_ids_past_i64_max_stay_apart_and_in_order(b: &Backend) {
    let [one, other] = &b.telemetry;
    // Stream ids and sequence numbers at both ends of u64: each batch ends at seq u64::MAX.
    for (n, stream) in [u64::MAX, 0, 1 << 63, i64::MAX as u64].into_iter().enumerate() {
        one.ingest("dev1", Some(&format!("s{n}")), None, None, &batch(stream, u64::MAX - n as u64, errors(n + 1), 0))
            .unwrap();
    }
    assert_eq!(events(&**other), 1 + 2 + 3 + 4, "four streams, none taken for another");
    let again = other.ingest("dev1", Some("s2"), None, None, &batch(1 << 63, u64::MAX - 2, errors(3), 0)).unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 3), "found under its own stream");
    let by_site = one.aggregate(GroupBy::Site, &Filter::default()).unwrap();
    assert_eq!(keys(&by_site), ["s0", "s1", "s2", "s3"]);
    for (n, g) in by_site.iter().enumerate() {
        assert_eq!(g.summary.missing, u64::MAX - (n as u64 + 1), "seqs from 1 on never arrived: {g:?}");
    }
}
