//! The audit log on disk, tampered with the ways an intruder or an accident would: an edited, removed, reordered
//! or garbled record is detected by the chain alone; a cut head or a recomputed chain only against an anchor.

use std::path::{Path, PathBuf};

use outpost_hub::audit::{self, AuditError, AuditLog, Verified};
use outpost_shared::audit::{Action, Anchor, BreakKind, Broken, Chain, Entry};

const T0: u64 = 1_800_000_000;

/// A log of `n` entries in a temporary directory; returns the directory guard, the path and the head.
fn log_with(n: u64) -> (tempfile::TempDir, PathBuf, Option<Anchor>) {
    let dir = tempfile::tempdir().unwrap();
    let path = audit::default_path(dir.path());
    let mut log = AuditLog::open(&path).unwrap();
    let actions = [Action::Publish, Action::Sign, Action::Start, Action::Approve, Action::Abort, Action::Revoke];
    for i in 0..n {
        let detail = format!("step {i}");
        log.append(T0 + i, "k1", actions[i as usize % actions.len()], &format!("release-{i}"), &detail).unwrap();
    }
    let head = log.head();
    (dir, path, head)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn broken(path: &Path, anchor: Option<&Anchor>) -> Broken {
    match audit::verify(path, anchor) {
        Err(AuditError::Broken { broken, .. }) => broken,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[test]
fn appended_entries_verify_and_survive_reopen() {
    let (_dir, path, head) = log_with(3);
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.head(), head);
    let e = log.append(T0 + 10, "k2", Action::Rotate, "targets", "key k1 retired").unwrap();
    assert_eq!(e.seq, 3);
    assert_eq!(e.prev_hash, head.unwrap().hash);
    let v = audit::verify(&path, head.as_ref()).unwrap();
    assert_eq!(v, Verified { entries: 4, head: Some(e.anchor()), incomplete_tail: false });
    assert_eq!(lines(&path).len(), 4, "one record per line");
}

#[test]
fn a_missing_log_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let v = audit::verify(&dir.path().join("audit.log"), None).unwrap();
    assert_eq!(v, Verified { entries: 0, head: None, incomplete_tail: false });
}

#[test]
fn edited_entry_is_detected() {
    let (_dir, path, _) = log_with(4);
    let mut l = lines(&path);
    l[1] = l[1].replace("step 1", "step 9");
    write_lines(&path, &l);
    assert_eq!(broken(&path, None), Broken { index: 1, kind: BreakKind::Edited });
}

#[test]
fn edited_actor_or_time_is_detected() {
    let (_dir, path, _) = log_with(4);
    let mut l = lines(&path);
    let mut v: serde_json::Value = serde_json::from_str(&l[2]).unwrap();
    v["actor"] = "k2".into();
    l[2] = v.to_string();
    write_lines(&path, &l);
    assert_eq!(broken(&path, None), Broken { index: 2, kind: BreakKind::Edited });
}

#[test]
fn removed_entry_is_detected() {
    let (_dir, path, _) = log_with(5);
    let mut l = lines(&path);
    l.remove(2);
    write_lines(&path, &l);
    assert_eq!(broken(&path, None), Broken { index: 2, kind: BreakKind::Removed { expected_seq: 2, found_seq: 3 } });
}

#[test]
fn removed_first_entry_is_detected() {
    let (_dir, path, _) = log_with(3);
    let l = lines(&path);
    write_lines(&path, &l[1..]);
    assert_eq!(broken(&path, None), Broken { index: 0, kind: BreakKind::Removed { expected_seq: 0, found_seq: 1 } });
}

#[test]
fn reordered_entries_are_detected() {
    let (_dir, path, _) = log_with(4);
    let mut l = lines(&path);
    l.swap(1, 2);
    write_lines(&path, &l);
    assert_eq!(broken(&path, None), Broken { index: 1, kind: BreakKind::OutOfOrder { expected_seq: 1, found_seq: 2 } });
}

#[test]
fn truncated_head_is_detected_only_with_an_anchor() {
    let (_dir, path, head) = log_with(4);
    let l = lines(&path);
    write_lines(&path, &l[..2]);
    assert_eq!(audit::verify(&path, None).unwrap().entries, 2, "without an anchor a cut head is a shorter log");
    assert_eq!(broken(&path, head.as_ref()), Broken { index: 2, kind: BreakKind::Truncated { anchor_seq: 3, len: 2 } });
}

#[test]
fn edited_last_entry_is_detected_only_with_an_anchor() {
    let (_dir, path, head) = log_with(3);
    let mut l = lines(&path);
    l[2] = l[2].replace("step 2", "step 7");
    write_lines(&path, &l);
    assert!(audit::verify(&path, None).is_ok(), "no later entry records its hash");
    assert_eq!(broken(&path, head.as_ref()), Broken { index: 2, kind: BreakKind::AnchorMismatch });
}

#[test]
fn recomputed_chain_is_detected_only_with_an_anchor() {
    let (_dir, path, head) = log_with(4);
    let (mut entries, _) = audit::read(&path).unwrap();
    entries[1].detail = "nothing to see".into();
    // The intruder rebuilds every link after the edit.
    let mut chain = Chain::new();
    let forged: Vec<Entry> =
        entries.iter().map(|e| chain.append(e.at, &e.actor, e.action, &e.subject, &e.detail)).collect();
    write_lines(&path, &forged.iter().map(|e| serde_json::to_string(e).unwrap()).collect::<Vec<_>>());
    assert!(audit::verify(&path, None).is_ok());
    assert_eq!(broken(&path, head.as_ref()), Broken { index: 3, kind: BreakKind::AnchorMismatch });
}

#[test]
fn garbled_or_extended_record_is_reported_with_its_line() {
    let (_dir, path, _) = log_with(3);
    let mut l = lines(&path);
    l[1] = "rm -rf /".into();
    write_lines(&path, &l);
    assert!(matches!(audit::verify(&path, None), Err(AuditError::Malformed { line: 2, .. })));
    let (_dir, path, _) = log_with(3);
    let mut l = lines(&path);
    l[0] = l[0].replacen('{', "{\"approved_by\":\"k9\",", 1);
    write_lines(&path, &l);
    let err = audit::verify(&path, None).unwrap_err();
    assert!(matches!(&err, AuditError::Malformed { line: 1, problem, .. } if problem.contains("approved_by")), "{err}");
}

#[test]
fn tampered_log_is_never_extended() {
    let (_dir, path, _) = log_with(3);
    let mut l = lines(&path);
    l.remove(1);
    write_lines(&path, &l);
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(AuditLog::open(&path), Err(AuditError::Broken { .. })));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn tampering_after_open_stops_the_next_append() {
    let (_dir, path, _) = log_with(3);
    let mut log = AuditLog::open(&path).unwrap();
    let mut l = lines(&path);
    l[0] = l[0].replace("step 0", "step 5");
    l.push(l[2].clone()); // keeps the file length different from what the log last wrote
    write_lines(&path, &l);
    assert!(matches!(log.append(T0, "k1", Action::Pause, "r", ""), Err(AuditError::Broken { .. })));
}

#[test]
fn incomplete_last_record_is_reported_and_cut_on_open() {
    let (_dir, path, head) = log_with(2);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"seq\":2,\"at\":18000");
    std::fs::write(&path, &bytes).unwrap();
    let v = audit::verify(&path, head.as_ref()).unwrap();
    assert_eq!((v.entries, v.incomplete_tail), (2, true));
    let mut log = AuditLog::open(&path).unwrap();
    let e = log.append(T0 + 5, "k1", Action::Start, "release-2", "").unwrap();
    assert_eq!(e.seq, 2);
    let v = audit::verify(&path, Some(&e.anchor())).unwrap();
    assert_eq!((v.entries, v.incomplete_tail), (3, false));
}

#[test]
fn two_writers_keep_one_chain() {
    let (_dir, path, _) = log_with(1);
    let mut a = AuditLog::open(&path).unwrap();
    let mut b = AuditLog::open(&path).unwrap();
    for i in 0..3 {
        a.append(T0 + i, "ka", Action::Pause, "r", "").unwrap();
        b.append(T0 + i, "kb", Action::Resume, "r", "").unwrap();
    }
    let v = audit::verify(&path, b.head().as_ref()).unwrap();
    assert_eq!(v.entries, 7);
}

#[test]
fn oversized_detail_is_refused_before_writing() {
    let (_dir, path, head) = log_with(1);
    let mut log = AuditLog::open(&path).unwrap();
    let detail = "x".repeat(audit::MAX_RECORD_BYTES);
    assert!(matches!(log.append(T0, "k1", Action::Publish, "p", &detail), Err(AuditError::TooLong { .. })));
    assert_eq!(audit::verify(&path, head.as_ref()).unwrap().entries, 1);
    assert_eq!(log.append(T0, "k1", Action::Publish, "p", "ok").unwrap().seq, 1, "the chain is unharmed");
}
