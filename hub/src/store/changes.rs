//! What changed in a table since a reader last looked: a bounded in-memory log of the keys written, numbered in
//! order, so a reader keeps a copy of the table current by re-reading only those keys (the console's device index).
//!
//! Invariants: a writer records a key after its transaction commits, so a reader that takes [`ChangeLog::head`]
//! before reading the table sees every later write either in what it read or in [`ChangeLog::since`]; when the
//! log has dropped entries a reader still needed, `since` says so ([`Since::Lost`]) and the reader reads it all
//! again. The log lives as long as the process: a new process starts at 0 with nothing to catch up on.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;

/// Keys written since a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Each key written at or after it (once each, however often written), and the number to ask from next.
    Keys {
        /// The keys.
        keys: BTreeSet<String>,
        /// The next sequence number.
        next: u64,
    },
    /// The log no longer holds every write since then: read the whole table again, from `next`'s writes on.
    Lost {
        /// The next sequence number.
        next: u64,
    },
}

/// A bounded log of the keys written to one table.
#[derive(Debug)]
pub struct ChangeLog {
    inner: Mutex<Log>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Log {
    /// The sequence number of the next write.
    next: u64,
    /// The newest writes, oldest first, with their sequence numbers (consecutive, ending at `next - 1`).
    keys: VecDeque<String>,
}

impl ChangeLog {
    /// An empty log keeping the newest `capacity` writes.
    pub fn new(capacity: usize) -> ChangeLog {
        ChangeLog { inner: Mutex::default(), capacity: capacity.max(1) }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequence number the next write gets: take it before reading the table, then ask [`ChangeLog::since`].
    pub fn head(&self) -> u64 {
        self.log().next
    }

    /// Notes a write of `key` (after its transaction committed).
    pub fn record(&self, key: &str) {
        let mut log = self.log();
        log.next += 1;
        log.keys.push_back(key.to_owned());
        while log.keys.len() > self.capacity {
            log.keys.pop_front();
        }
    }

    /// The keys written at or after sequence number `seq`.
    pub fn since(&self, seq: u64) -> Since {
        let log = self.log();
        let oldest = log.next - log.keys.len() as u64;
        if seq < oldest {
            return Since::Lost { next: log.next };
        }
        let skip = usize::try_from(seq - oldest).unwrap_or(usize::MAX);
        Since::Keys { keys: log.keys.iter().skip(skip).cloned().collect(), next: log.next.max(seq) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: &[&str]) -> BTreeSet<String> {
        s.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn a_reader_gets_each_key_written_since_its_head_once() {
        let log = ChangeLog::new(10);
        log.record("a");
        let head = log.head();
        for k in ["b", "c", "b"] {
            log.record(k);
        }
        assert_eq!(log.since(head), Since::Keys { keys: keys(&["b", "c"]), next: 4 });
        assert_eq!(log.since(4), Since::Keys { keys: keys(&[]), next: 4 });
    }

    #[test]
    fn a_reader_further_behind_than_the_log_keeps_is_told_to_read_everything() {
        let log = ChangeLog::new(2);
        let head = log.head();
        for k in ["a", "b", "c"] {
            log.record(k);
        }
        assert_eq!(log.since(head), Since::Lost { next: 3 });
        assert_eq!(log.since(1), Since::Keys { keys: keys(&["b", "c"]), next: 3 });
    }
}
