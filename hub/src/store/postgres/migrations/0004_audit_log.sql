-- Schema version 4: the audit log's entries, one row per entry keyed by its sequence number (from 0, no gaps), so
-- two entries can never share a place in the chain. Appends serialise on a transaction-scoped advisory lock.

-- Sequence number -> the entry (`outpost_shared::audit::Entry`, canonical CBOR) and its hash (SHA-256 over the
-- entry domain and that CBOR), which the next entry's `prev_hash` repeats.
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY CHECK (seq >= 0),
    hash bytea NOT NULL CHECK (length(hash) = 32),
    record bytea NOT NULL
);
