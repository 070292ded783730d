//! The audit log suite: [`AuditEntries`] on each backend, one hash chain from genesis however many writers append,
//! listed from any sequence number; on PostgreSQL, a row edited in the database is refused.

use std::sync::Barrier;

use outpost_hub::audit::{AuditError, MAX_RECORD_BYTES};
use outpost_hub::storage::AuditEntries;
use outpost_shared::audit::{self, Action, GENESIS};

use super::{Backend, START};

both!(
    audit_entries_chain_from_genesis_and_list_from_a_sequence_number,
    audit_appends_by_two_replicas_at_once_never_fork_the_chain,
    audit_entry_above_the_record_bound_is_refused_and_not_appended,
);

fn audit_entries_chain_from_genesis_and_list_from_a_sequence_number(b: &Backend) {
    let [one, other] = &b.audit_log;
    assert!(one.audit_entries(0).unwrap().is_empty());
    for n in 0..6u64 {
        let writer = if n % 2 == 0 { one } else { other };
        let e = writer.audit_append(START + n, "key-1", Action::Approve, &format!("dev{n}"), "detail").unwrap();
        assert_eq!(e.seq, n, "each writer continues after the other's entries");
    }
    let all = other.audit_entries(0).unwrap();
    assert_eq!(all[0].prev_hash, GENESIS);
    let head = audit::verify(&all, None).unwrap().unwrap();
    assert_eq!(head, all[5].anchor());
    assert_eq!(audit::verify(&all, Some(&all[2].anchor())).unwrap(), Some(head), "an older anchor is reached");
    let (subject, at) = (&all[3].subject, all[3].at);
    assert_eq!(
        (subject.as_str(), at, all[3].actor.as_str(), all[3].action),
        ("dev3", START + 3, "key-1", Action::Approve)
    );
    let tail = one.audit_entries(4).unwrap();
    assert_eq!(tail, all[4..], "from a sequence number on");
    assert!(one.audit_entries(6).unwrap().is_empty());
}

fn audit_appends_by_two_replicas_at_once_never_fork_the_chain(b: &Backend) {
    const APPENDS: u64 = 25;
    let [one, other] = &b.audit_log;
    let barrier = Barrier::new(2);
    let append = |log: &dyn AuditEntries, who: &str| -> Vec<u64> {
        barrier.wait();
        (0..APPENDS)
            .map(|n| log.audit_append(START, who, Action::Sign, &format!("{who}-{n}"), "").unwrap().seq)
            .collect()
    };
    let (x, y) = std::thread::scope(|scope| {
        let x = scope.spawn(|| append(&**one, "one"));
        let y = scope.spawn(|| append(&**other, "two"));
        (x.join().unwrap(), y.join().unwrap())
    });
    for seen in [&x, &y] {
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "one writer's entries only move forward: {seen:?}");
    }
    let mut seqs: Vec<u64> = x.iter().chain(&y).copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..2 * APPENDS).collect::<Vec<_>>(), "every append got its own place");
    let all = one.audit_entries(0).unwrap();
    assert_eq!(all.len() as u64, 2 * APPENDS);
    audit::verify(&all, None).unwrap_or_else(|broken| panic!("the chain forked: {broken}"));
    for who in ["one", "two"] {
        assert_eq!(all.iter().filter(|e| e.actor == who).count() as u64, APPENDS, "none of {who}'s entries lost");
    }
}

fn audit_entry_above_the_record_bound_is_refused_and_not_appended(b: &Backend) {
    let [one, other] = &b.audit_log;
    one.audit_append(START, "key-1", Action::Publish, "pkg", "").unwrap();
    let long = "x".repeat(MAX_RECORD_BYTES);
    let e = other.audit_append(START, "key-1", Action::Publish, "pkg", &long).unwrap_err();
    assert!(matches!(e, AuditError::TooLong { .. }), "{e}");
    assert_eq!(other.audit_append(START, "key-1", Action::Sign, "pkg", "").unwrap().seq, 1, "its place is free");
    let all = one.audit_entries(0).unwrap();
    assert_eq!(all.len(), 2);
    audit::verify(&all, None).unwrap();
}

#[test]
fn audit_row_edited_in_the_database_is_refused() {
    let (db, url) = super::support::postgres::database();
    outpost_hub::store::postgres::migrate(&url, &outpost_hub::store::postgres::PgLimits::default()).unwrap();
    let pg = super::open(&url).unwrap();
    for n in 0..3 {
        pg.audit_append(START, "key-1", Action::Revoke, &format!("dev{n}"), "").unwrap();
    }
    // The record rewritten without its hash column: reads and the next append refuse it.
    let edited = pg.audit_entries(0).unwrap()[2].clone();
    let mut forged = edited.clone();
    forged.subject = "someone-else".into();
    let cbor = outpost_shared::canonical::to_vec(&forged).unwrap();
    let hex: String = cbor.iter().map(|b| format!("{b:02x}")).collect();
    super::support::postgres::cluster().sql(&db, &format!("UPDATE audit_log SET record = '\\x{hex}' WHERE seq = 2"));
    let e = pg.audit_entries(0).unwrap_err();
    assert!(matches!(e, AuditError::CorruptRow { seq: 2, .. }), "{e}");
    let e = pg.audit_append(START, "key-1", Action::Revoke, "dev3", "").unwrap_err();
    assert!(matches!(e, AuditError::CorruptRow { seq: 2, .. }), "{e}");
    // A second entry at a taken place is refused by the table itself.
    let taken = super::support::postgres::cluster();
    let dup = std::panic::catch_unwind(|| {
        taken.sql(&db, "INSERT INTO audit_log (seq, hash, record) SELECT 1, hash, record FROM audit_log WHERE seq = 1")
    });
    assert!(dup.is_err(), "two entries at sequence number 1");
}
