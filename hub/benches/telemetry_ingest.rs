//! Telemetry ingest: events per second into the hub's telemetry store, against a raw redb batch insert of the same
//! events.
//!
//! Run: `cargo bench -p outpost-hub --bench telemetry_ingest`. Both sides take the same 100,000 events (a mix of
//! every kind, from 100 devices) in batches of 256, one write transaction per batch, committed with redb's
//! default immediate durability (fsync), into a fresh file in the same directory. The baseline inserts each
//! event's canonical CBOR, encoded before the clock starts, under its `(device, stream, seq)` key into one table:
//! the floor for storing these events durably. The store also encodes, deduplicates, indexes by receipt time and
//! tracks each device queue. Each side runs `ROUNDS` times, alternating, and the medians are compared. Last, one
//! `aggregate` by site over the 100,000 stored events is timed: what `fleet status` costs at that size.

use std::sync::Arc;
use std::time::Instant;

use outpost_hub::clock::SystemClock;
use outpost_hub::telemetry::{Filter, GroupBy, TelemetryStore};
use outpost_shared::Digest;
use outpost_shared::canonical;
use outpost_shared::telemetry::{Batch, Event, EventKind, Histogram, Step};
use redb::{Database, TableDefinition};

const EVENTS: u64 = 100_000;
const BATCH: u64 = 256;
const DEVICES: u64 = 100;
const ROUNDS: usize = 5;

const RAW: TableDefinition<(&str, u64, u64), &[u8]> = TableDefinition::new("events");

/// One device's batch, ready for both sides.
struct Input {
    device: String,
    batch: Batch,
    /// The batch's events, encoded for the baseline.
    encoded: Vec<Vec<u8>>,
}

fn kind(i: u64) -> EventKind {
    let package = Digest::of(&(i % 7).to_le_bytes());
    match i % 6 {
        0 => EventKind::UpdateStep { package, step: Step::Downloaded, detail: "length and hashes match".into() },
        1 => EventKind::PolicyRejection {
            package,
            rule: "maintenance-window".into(),
            reason: "outside 02:00-04:00".into(),
            deferred_until: Some(1_800_003_600),
        },
        2 => {
            EventKind::Rollback { from: package, to: None, reason: "inference failed during the health window".into() }
        }
        3 => EventKind::Error { what: "staging file: no space left on device".into() },
        4 => EventKind::ShadowDivergence {
            package,
            max_abs_diff: 0.0125,
            top1_agreement: 0.985,
            latency_ratio: 1.25,
            samples: 500,
        },
        _ => {
            let mut latency = Histogram::new();
            for n in 0..200 {
                latency.record_us(800 + (n * 37 + i) % 3000);
            }
            EventKind::InferenceStats { model: package, count: 200, errors: 1, latency }
        }
    }
}

fn inputs() -> Vec<Input> {
    let mut next_seq = vec![1u64; DEVICES as usize];
    let mut out = Vec::new();
    let mut made = 0;
    while made < EVENTS {
        let d = (out.len() as u64 % DEVICES) as usize;
        let n = BATCH.min(EVENTS - made);
        let first_seq = next_seq[d];
        let events: Vec<Event> =
            (0..n).map(|k| Event { seq: first_seq + k, at: 1_800_000_000 + made + k, kind: kind(made + k) }).collect();
        let encoded = events.iter().map(|e| canonical::to_vec(e).expect("encodes")).collect();
        next_seq[d] += n;
        made += n;
        out.push(Input {
            device: format!("{:064x}", d),
            batch: Batch { stream: d as u64, first_seq, events, dropped: 0 },
            encoded,
        });
    }
    out
}

/// Ingests every input into a fresh store; returns the seconds it took, and how long one `aggregate` by site then
/// takes.
#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn store_round(inputs: &[Input]) -> (f64, f64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = TelemetryStore::open(tmp.path(), Arc::new(SystemClock)).expect("open store");
    let start = Instant::now();
    for input in inputs {
        let outcome = store.ingest(&input.device, Some("site-a"), Some("r1"), Some(1), &input.batch).expect("ingest");
        assert_eq!(outcome.stored, input.batch.events.len() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(store.len().expect("len"), EVENTS);
    let start = Instant::now();
    let groups = store.aggregate(GroupBy::Site, &Filter::default()).expect("aggregate");
    let aggregate = start.elapsed().as_secs_f64();
    assert_eq!(groups[0].summary.events, EVENTS);
    (secs, aggregate)
}

#[allow(clippy::disallowed_methods)] // A benchmark measures real time.
fn raw_round(inputs: &[Input]) -> f64 {
    let tmp = tempfile::tempdir().expect("temp dir");
    let db = Database::create(tmp.path().join("raw.redb")).expect("create");
    let start = Instant::now();
    for input in inputs {
        let tx = db.begin_write().expect("begin");
        {
            let mut t = tx.open_table(RAW).expect("table");
            for (event, bytes) in input.batch.events.iter().zip(&input.encoded) {
                t.insert((input.device.as_str(), input.batch.stream, event.seq), bytes.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let inputs = inputs();
    let bytes: usize = inputs.iter().flat_map(|i| &i.encoded).map(Vec::len).sum();
    // One warm-up of each, then alternate.
    store_round(&inputs);
    raw_round(&inputs);
    let (mut ours, mut theirs, mut aggregate) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (ingest, agg) = store_round(&inputs);
        ours.push(ingest);
        aggregate.push(agg);
        theirs.push(raw_round(&inputs));
    }
    let (ours, theirs, aggregate) = (median(ours), median(theirs), median(aggregate));
    let rate = |secs: f64| EVENTS as f64 / secs;
    println!(
        "telemetry ingest ({EVENTS} events, {} batches of {BATCH}, {:.1} MB encoded, fsync per batch, median of {ROUNDS} runs)",
        inputs.len(),
        bytes as f64 / 1e6
    );
    println!("  TelemetryStore::ingest       : {:.3} s  {:>9.0} events/s", ours, rate(ours));
    println!("  raw redb insert, one table   : {:.3} s  {:>9.0} events/s  (baseline)", theirs, rate(theirs));
    println!("  ratio (ours / baseline)      : {:.2}", rate(ours) / rate(theirs));
    println!("  store overhead per event     : {:.1} µs", (ours - theirs) / EVENTS as f64 * 1e6);
    println!("  aggregate by site, {EVENTS} events: {aggregate:.3} s");
}
