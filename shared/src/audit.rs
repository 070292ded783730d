//! The audit log's chain, sans-IO: every admin action (publish, sign, start, approve, abort, revoke, rotate...)
//! becomes an entry whose hash covers the previous entry's hash, so editing, removing or reordering an entry breaks
//! every link after it and [`verify`] names the first broken place.
//!
//! An entry's hash is SHA-256 over [`ENTRY_DOMAIN`] and the entry's deterministic CBOR ([`crate::canonical`]),
//! `prev_hash` included; the first entry links to [`GENESIS`]. What a chain alone cannot show: entries cut off its
//! *newest* end (truncating the head), an edit of the newest entry, or a whole chain recomputed after an edit.
//! Those need an [`Anchor`] (the sequence number and hash of the newest entry) kept where the log's writer cannot
//! silently rewrite it: in another store, a signed document, or an operator's notes after `audit verify`.

use serde::{Deserialize, Serialize};

use crate::canonical;
use crate::clock::UnixSeconds;
use crate::digest::{Digest, Sha256};

/// Domain tag hashed before each entry, so an entry's hash can never be mistaken for another document's.
pub const ENTRY_DOMAIN: &[u8] = b"outpost-audit-entry-v1\0";

/// The `prev_hash` of the first entry.
pub const GENESIS: Digest = Digest([0; 32]);

/// An admin action worth an audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub enum Action {
    Publish,
    Sign,
    Start,
    Approve,
    Pause,
    Resume,
    Abort,
    RetryFailed,
    Revoke,
    Rotate,
    /// A controller policy registered.
    ControllerPolicy,
    /// A controller proposal approved (and carried out) or rejected.
    Decide,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// When (the hub's clock).
    pub at: UnixSeconds,
    /// Key id of the key holder who acted (or the hub's own role, e.g. `hub` for automatic aborts).
    pub actor: String,
    /// What was done.
    pub action: Action,
    /// What it was done to: a package digest, a release id, a device id, a role...
    pub subject: String,
    /// Anything else worth keeping, for humans.
    pub detail: String,
    /// The previous entry's [`hash`](Entry::hash), or [`GENESIS`] for the first.
    pub prev_hash: Digest,
}

impl Entry {
    /// SHA-256 over [`ENTRY_DOMAIN`] and the entry's deterministic CBOR.
    pub fn hash(&self) -> Digest {
        // A struct of integers, strings and digests always has a CBOR encoding.
        let body = canonical::to_vec(self).expect("an audit entry always encodes as CBOR");
        let mut h = Sha256::new();
        h.update(ENTRY_DOMAIN);
        h.update(&body);
        h.finish()
    }

    /// This entry as an anchor.
    pub fn anchor(&self) -> Anchor {
        Anchor { seq: self.seq, hash: self.hash() }
    }
}

/// A remembered point of the chain: an entry's sequence number and hash. Verifying against the newest anchor
/// detects what the chain alone cannot (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The entry's sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: Digest,
}

/// The writing end of a chain: what the next entry's `seq` and `prev_hash` must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    prev_hash: Digest,
}

impl Default for Chain {
    fn default() -> Self {
        Chain { next_seq: 0, prev_hash: GENESIS }
    }
}

impl Chain {
    /// An empty log's chain.
    pub fn new() -> Chain {
        Chain::default()
    }

    /// The chain continuing after `last` (the newest entry of a log that [`verify`] accepted), or an empty
    /// log's chain.
    pub fn after(last: Option<&Entry>) -> Chain {
        last.map_or_else(Chain::new, |e| Chain { next_seq: e.seq + 1, prev_hash: e.hash() })
    }

    /// The next entry, linked to the previous one; the caller stores it, then keeps this chain.
    pub fn append(&mut self, at: UnixSeconds, actor: &str, action: Action, subject: &str, detail: &str) -> Entry {
        let entry = Entry {
            seq: self.next_seq,
            at,
            actor: actor.to_owned(),
            action,
            subject: subject.to_owned(),
            detail: detail.to_owned(),
            prev_hash: self.prev_hash,
        };
        self.next_seq += 1;
        self.prev_hash = entry.hash();
        entry
    }

    /// How many entries the log holds.
    pub fn len(&self) -> u64 {
        self.next_seq
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.next_seq == 0
    }
}

/// Where and how a chain is broken. The kind is the likeliest explanation: any tampering shows as one of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {index}: {kind}")]
pub struct Broken {
    /// 0-based index, in the log as given, of the first entry found at fault.
    pub index: usize,
    /// What is wrong there.
    pub kind: BreakKind,
}

/// How a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakKind {
    /// The entry's content no longer hashes to what the next entry recorded (or, for the first entry, it does
    /// not link to the genesis): it was edited, or the next entry's link was.
    #[error("edited: its content does not match the hash the next entry recorded")]
    Edited,
    /// Sequence numbers jump: entries before this one were removed.
    #[error("entries removed before it: expected sequence number {expected_seq}, found {found_seq}")]
    Removed {
        /// The sequence number due here.
        expected_seq: u64,
        /// The one found.
        found_seq: u64,
    },
    /// Sequence numbers go back, repeat, or skip one that comes later: entries were reordered or duplicated.
    #[error("out of order: expected sequence number {expected_seq}, found {found_seq}")]
    OutOfOrder {
        /// The sequence number due here.
        expected_seq: u64,
        /// The one found.
        found_seq: u64,
    },
    /// The log ends before the anchor's entry: its newest entries were removed. `index` is the log's length.
    #[error("truncated: the anchor names entry {anchor_seq}, the log holds {len} entries")]
    Truncated {
        /// The anchor's sequence number.
        anchor_seq: u64,
        /// Entries in the log.
        len: u64,
    },
    /// The anchor's entry hashes to something else: it was edited, or the chain up to it rewritten.
    #[error("does not match the anchor: edited, or the chain was recomputed")]
    AnchorMismatch,
}

/// Checks a whole log, oldest first, and against `anchor` if given. Returns the anchor of its newest entry
/// (`None` for an empty log) or the first broken place.
pub fn verify(entries: &[Entry], anchor: Option<&Anchor>) -> Result<Option<Anchor>, Broken> {
    let mut prev = GENESIS;
    let mut hashes = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let expected_seq = i as u64;
        if e.seq != expected_seq {
            // A later entry with the sequence number due here means a reordering, not a removal.
            let later = entries[i + 1..].iter().any(|l| l.seq == expected_seq);
            let kind = if e.seq > expected_seq && !later {
                BreakKind::Removed { expected_seq, found_seq: e.seq }
            } else {
                BreakKind::OutOfOrder { expected_seq, found_seq: e.seq }
            };
            return Err(Broken { index: i, kind });
        }
        if e.prev_hash != prev {
            return Err(Broken { index: i.saturating_sub(1), kind: BreakKind::Edited });
        }
        prev = e.hash();
        hashes.push(prev);
    }
    if let Some(a) = anchor {
        let len = entries.len() as u64;
        match hashes.get(a.seq as usize) {
            None => {
                return Err(Broken { index: entries.len(), kind: BreakKind::Truncated { anchor_seq: a.seq, len } });
            }
            Some(h) if *h != a.hash => return Err(Broken { index: a.seq as usize, kind: BreakKind::AnchorMismatch }),
            Some(_) => {}
        }
    }
    Ok(entries.last().map(|e| Anchor { seq: e.seq, hash: prev }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> Vec<Entry> {
        let mut c = Chain::new();
        (0..n).map(|i| c.append(1000 + i, "k1", Action::Publish, &format!("pkg{i}"), "")).collect()
    }

    #[test]
    fn an_appended_log_verifies_and_its_head_is_the_last_entry() {
        let l = log(4);
        assert_eq!(verify(&l, None), Ok(Some(l[3].anchor())));
        assert_eq!(verify(&l, Some(&l[1].anchor())), Ok(Some(l[3].anchor())));
        assert_eq!(verify(&[], None), Ok(None));
        assert_eq!(Chain::after(l.last()).append(9, "k", Action::Sign, "s", "").prev_hash, l[3].hash());
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let e = &log(1)[0];
        let mut edits: Vec<Entry> = vec![e.clone(); 7];
        edits[0].seq += 1;
        edits[1].at += 1;
        edits[2].actor.push('x');
        edits[3].action = Action::Revoke;
        edits[4].subject.push('x');
        edits[5].detail.push('x');
        edits[6].prev_hash = Digest([1; 32]);
        for edited in edits {
            assert_ne!(edited.hash(), e.hash(), "{edited:?}");
        }
    }

    #[test]
    fn an_edit_is_reported_at_the_edited_entry() {
        let mut l = log(4);
        l[1].detail = "nothing happened".into();
        assert_eq!(verify(&l, None), Err(Broken { index: 1, kind: BreakKind::Edited }));
        let mut l = log(4);
        l[0].prev_hash = Digest([7; 32]);
        assert_eq!(verify(&l, None), Err(Broken { index: 0, kind: BreakKind::Edited }));
    }

    #[test]
    fn removal_reordering_and_truncation_are_told_apart() {
        let mut l = log(4);
        l.remove(0);
        assert_eq!(verify(&l, None).unwrap_err().kind, BreakKind::Removed { expected_seq: 0, found_seq: 1 });
        let mut l = log(4);
        l.swap(1, 2);
        assert_eq!(verify(&l, None).unwrap_err().kind, BreakKind::OutOfOrder { expected_seq: 1, found_seq: 2 });
        let mut l = log(4);
        l[2] = l[1].clone();
        assert_eq!(verify(&l, None).unwrap_err().kind, BreakKind::OutOfOrder { expected_seq: 2, found_seq: 1 });
        let l = log(4);
        let anchor = l[3].anchor();
        assert!(verify(&l[..2], None).is_ok(), "a cut head looks like a shorter log without an anchor");
        assert_eq!(
            verify(&l[..2], Some(&anchor)),
            Err(Broken { index: 2, kind: BreakKind::Truncated { anchor_seq: 3, len: 2 } })
        );
    }
}
