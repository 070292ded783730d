//! The agent's durable, bounded telemetry queue: events wait in a redb file until the hub acknowledges them.
//!
//! Every push and every ack is one redb transaction committed with immediate durability (fsync), so what `push`
//! returned survives a crash, and an event leaves the file only when the hub's acknowledgement covers it. At the
//! bound the NEWEST event is dropped (see [`Queue::push`]) and counted durably, so sequence numbers stay gap-free.
//!
//! A write the disk refuses (full, failing) fails that one operation and nothing committed before it. redb refuses
//! every later operation on a handle that met an I/O error, so the queue then closes the file and reopens it at its
//! next use: once the disk takes writes again, the queue works again without restarting the agent.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use outpost_shared::canonical;
use outpost_shared::clock::UnixSeconds;
use outpost_shared::rng::Rng;
use outpost_shared::telemetry::{Batch, BatchLimits, Event, EventKind, TelemetryError};

/// Sequence number → the [`Event`] (canonical CBOR, exactly the bytes it takes inside a batch).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Counters: [`STREAM`], [`NEXT_SEQ`], [`DROPPED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The queue's stream id, chosen at random when the file is created.
const STREAM: &str = "stream";
/// The sequence number the next queued event gets (from 1).
const NEXT_SEQ: &str = "next_seq";
/// Events dropped at the bound since the file was created.
const DROPPED: &str = "dropped";

/// What [`Queue::push`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued durably under this sequence number.
    Queued(u64),
    /// The queue was full: the event was dropped, and counted. `total` is the running count of drops.
    Dropped {
        /// Events dropped since the queue file was created.
        total: u64,
    },
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue file could not be opened, read or written.
    #[error("telemetry queue {}: {source}", path.display())]
    Db {
        /// The queue file.
        path: PathBuf,
        /// What redb reported.
        source: redb::Error,
    },
    /// Another process (or another `Queue` in this one) has the file open.
    #[error("telemetry queue {} is in use by another process", path.display())]
    Busy {
        /// The queue file.
        path: PathBuf,
    },
    /// A stored record could not be read back: the file is damaged.
    #[error("telemetry queue {} is damaged at {what}: {problem}", path.display())]
    Corrupt {
        /// The queue file.
        path: PathBuf,
        /// Which record.
        what: String,
        /// What could not be decoded.
        problem: String,
    },
    /// The caller asked for a queue that can hold nothing.
    #[error("a telemetry queue needs a capacity of at least one event")]
    ZeroCapacity,
    /// The caller pushed an event no hub would accept (a NaN figure, more errors than inferences...). It is
    /// refused here rather than queued, where it would block every batch behind it.
    #[error("telemetry event refused: {0}")]
    Invalid(TelemetryError),
    /// The hub acknowledged a sequence number this queue never handed out (the peer misbehaved).
    #[error("hub acknowledged telemetry up to {up_to}, but the last event queued is {last}")]
    AckBeyondQueue {
        /// The acknowledged sequence number.
        up_to: u64,
        /// The last sequence number this queue assigned (0 if none).
        last: u64,
    },
}

/// A durable, bounded FIFO of telemetry events in one redb file.
///
/// Invariant: the stored events are exactly the sequence numbers `(last acked, next_seq)`, contiguous, because
/// events leave only by [`Queue::ack`] of a prefix and a full queue refuses new events instead of evicting old
/// ones. Dropping the newest (not the oldest) was chosen because everything already queued may be in flight to
/// the hub: evicting it would make the drop count ambiguous; and the first events of an outage (the rollback, the
/// first errors) usually explain it, while the later ones are repetitive periodic stats. The device's current
/// state still reaches the hub through its state report.
pub struct Queue {
    /// `None` after an I/O error, until the next operation reopens the file.
    db: Mutex<Option<Database>>,
    path: PathBuf,
    capacity: u64,
    limits: BatchLimits,
    stream: u64,
}

impl Queue {
    /// Opens the queue at `path`, creating it (with a stream id drawn from `rng`) if it does not exist. `capacity`
    /// bounds the events held; reopening with a smaller one keeps what is queued and drops new events until the
    /// queue has drained below it.
    pub fn open(path: &Path, capacity: u64, rng: &mut dyn Rng) -> Result<Queue, QueueError> {
        if capacity == 0 {
            return Err(QueueError::ZeroCapacity);
        }
        let db_err = |e: redb::Error| QueueError::Db { path: path.to_owned(), source: e };
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(QueueError::Busy { path: path.to_owned() }),
            Err(e) => return Err(db_err(e.into())),
        };
        let tx = db.begin_write().map_err(|e| db_err(e.into()))?;
        let stream = {
            tx.open_table(EVENTS).map_err(|e| db_err(e.into()))?;
            let mut meta = tx.open_table(META).map_err(|e| db_err(e.into()))?;
            let existing = meta.get(STREAM).map_err(|e| db_err(e.into()))?.map(|v| v.value());
            match existing {
                Some(stream) => stream,
                None => {
                    let mut bytes = [0u8; 8];
                    rng.fill(&mut bytes);
                    let stream = u64::from_le_bytes(bytes);
                    for (key, value) in [(STREAM, stream), (NEXT_SEQ, 1), (DROPPED, 0)] {
                        meta.insert(key, value).map_err(|e| db_err(e.into()))?;
                    }
                    stream
                }
            }
        };
        tx.commit().map_err(|e| db_err(e.into()))?;
        Ok(Queue { db: Mutex::new(Some(db)), path: path.to_owned(), capacity, limits: BatchLimits::default(), stream })
    }

    /// Runs `f` on the open database, reopening it first if an I/O error closed it; an I/O error from `f` closes
    /// it (redb would refuse everything after it) so that the next call starts on a fresh handle.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, QueueError>) -> Result<T, QueueError> {
        let mut slot: MutexGuard<'_, Option<Database>> = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let db = match Database::create(&self.path) {
                Ok(db) => db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    return Err(QueueError::Busy { path: self.path.clone() });
                }
                Err(e) => return Err(self.db_err(e)),
            };
            *slot = Some(db);
        }
        let result = f(slot.as_ref().expect("opened above"));
        if let Err(QueueError::Db { source: redb::Error::Io(_) | redb::Error::PreviousIo, .. }) = &result {
            *slot = None;
        }
        result
    }

    /// Bounds batches by `limits` as well as by the `max` given to [`Queue::peek_batch`] (the default is
    /// [`BatchLimits::default`], what the hub accepts).
    pub fn with_limits(mut self, limits: BatchLimits) -> Queue {
        self.limits = limits;
        self
    }

    /// The queue's stream id.
    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// How many events the queue holds at most.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Queues what happened at `at`, durably, unless the queue is full: then the event is dropped and the drop
    /// counted, durably too. Text longer than the wire allows is cut; an event with an out-of-range figure is
    /// refused with [`QueueError::Invalid`].
    pub fn push(&self, mut kind: EventKind, at: UnixSeconds) -> Result<Pushed, QueueError> {
        kind.truncate_text();
        kind.check().map_err(QueueError::Invalid)?;
        self.with_db(|db| self.push_in(db, kind, at))
    }

    fn push_in(&self, db: &Database, kind: EventKind, at: UnixSeconds) -> Result<Pushed, QueueError> {
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        let pushed = {
            let mut events = tx.open_table(EVENTS).map_err(|e| self.db_err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            if events.len().map_err(|e| self.db_err(e))? >= self.capacity {
                let total = self.counter(&meta, DROPPED)?.saturating_add(1);
                meta.insert(DROPPED, total).map_err(|e| self.db_err(e))?;
                Pushed::Dropped { total }
            } else {
                let seq = self.counter(&meta, NEXT_SEQ)?;
                let bytes = canonical::to_vec(&Event { seq, at, kind })
                    .map_err(|e| QueueError::Invalid(TelemetryError::Encode(e)))?;
                events.insert(seq, bytes.as_slice()).map_err(|e| self.db_err(e))?;
                meta.insert(NEXT_SEQ, seq + 1).map_err(|e| self.db_err(e))?;
                Pushed::Queued(seq)
            }
        };
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(pushed)
    }

    /// The oldest unacknowledged events, at most `max` of them (at least one, if any wait) and no more than the batch limits allow, as the
    /// batch to send. Nothing is removed: send it, and [`Queue::ack`] its `last_seq` when the hub acknowledges it.
    /// Peeking again before that returns the same events (plus any queued since, within the bounds).
    pub fn peek_batch(&self, max: usize) -> Result<Batch, QueueError> {
        self.with_db(|db| self.peek_in(db, max))
    }

    fn peek_in(&self, db: &Database, max: usize) -> Result<Batch, QueueError> {
        let tx = db.begin_read().map_err(|e| self.db_err(e))?;
        let events = tx.open_table(EVENTS).map_err(|e| self.db_err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
        // At least one: an empty batch while events wait would name the wrong `first_seq`.
        let max = max.clamp(1, self.limits.max_events.max(1));
        let mut batch =
            Batch { stream: self.stream, first_seq: 0, events: Vec::new(), dropped: self.counter(&meta, DROPPED)? };
        let mut bytes = BatchLimits::OVERHEAD;
        for entry in events.iter().map_err(|e| self.db_err(e))? {
            if batch.events.len() >= max {
                break;
            }
            let (seq, value) = entry.map_err(|e| self.db_err(e))?;
            let (seq, value) = (seq.value(), value.value());
            // Always take one event, so a queue drains even under limits tighter than its largest event.
            bytes += value.len();
            if bytes > self.limits.max_bytes && !batch.events.is_empty() {
                break;
            }
            let event: Event = canonical::from_slice(value).map_err(|e| self.corrupt(format!("event {seq}"), e))?;
            if event.seq != seq {
                return Err(self.corrupt(format!("event {seq}"), format!("holds sequence number {}", event.seq)));
            }
            batch.events.push(event);
        }
        batch.first_seq = match batch.events.first() {
            Some(e) => e.seq,
            None => self.counter(&meta, NEXT_SEQ)?,
        };
        Ok(batch)
    }

    /// Removes every event up to and including `up_to`: call it only once the hub has acknowledged a batch ending
    /// there. Acknowledging again (a duplicated ack) removes nothing. Returns how many events were removed.
    pub fn ack(&self, up_to: u64) -> Result<u64, QueueError> {
        self.with_db(|db| self.ack_in(db, up_to))
    }

    fn ack_in(&self, db: &Database, up_to: u64) -> Result<u64, QueueError> {
        let tx = db.begin_write().map_err(|e| self.db_err(e))?;
        let removed = {
            let mut events = tx.open_table(EVENTS).map_err(|e| self.db_err(e))?;
            let meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            let last = self.counter(&meta, NEXT_SEQ)? - 1;
            if up_to > last {
                return Err(QueueError::AckBeyondQueue { up_to, last });
            }
            let before = events.len().map_err(|e| self.db_err(e))?;
            events.retain_in(..=up_to, |_, _| false).map_err(|e| self.db_err(e))?;
            before - events.len().map_err(|e| self.db_err(e))?
        };
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(removed)
    }

    /// Events waiting for the hub.
    pub fn len(&self) -> Result<u64, QueueError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.db_err(e))?;
            let events = tx.open_table(EVENTS).map_err(|e| self.db_err(e))?;
            events.len().map_err(|e| self.db_err(e))
        })
    }

    /// Whether no event waits for the hub.
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// Events dropped at the bound since the queue file was created.
    pub fn dropped(&self) -> Result<u64, QueueError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.db_err(e))?;
            let meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            self.counter(&meta, DROPPED)
        })
    }

    fn counter(&self, meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, QueueError> {
        match meta.get(key).map_err(|e| self.db_err(e))? {
            Some(v) => Ok(v.value()),
            None => Err(self.corrupt(format!("counter `{key}`"), "missing")),
        }
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> QueueError {
        QueueError::Db { path: self.path.clone(), source: e.into() }
    }

    fn corrupt(&self, what: String, problem: impl ToString) -> QueueError {
        QueueError::Corrupt { path: self.path.clone(), what, problem: problem.to_string() }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("path", &self.path).field("capacity", &self.capacity).finish()
    }
}
