-- Schema version 3: devices' telemetry. An event is stored once per (device, stream, seq), whichever replica
-- received it; a device's batches are ingested one at a time (a transaction-scoped advisory lock on the device).
-- Stream ids and sequence numbers are the device's u64s, stored order-preserving as bigint (the top bit flipped).

-- (device, stream, seq) -> StoredEvent (canonical CBOR, as in telemetry.redb); `received_at` (hub clock) repeats
-- the record's field for retention.
CREATE TABLE telemetry_events (
    device text COLLATE "C" NOT NULL,
    stream bigint NOT NULL,
    seq bigint NOT NULL,
    received_at bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (device, stream, seq)
);
CREATE INDEX telemetry_events_by_receipt ON telemetry_events (received_at);

-- (device, stream) -> StreamRecord (canonical CBOR).
CREATE TABLE telemetry_streams (
    device text COLLATE "C" NOT NULL,
    stream bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (device, stream)
);
