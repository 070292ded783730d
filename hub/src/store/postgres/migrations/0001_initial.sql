-- Schema version 1: the records replicas race on first (devices and one-time tokens), releases and the audit anchor.
-- Records are the redb index's canonical CBOR, byte for byte (`outpost_shared::canonical`); columns beside them are
-- the keys the queries need. Text keys sort as bytes (COLLATE "C"), as redb's do.

-- Device public key (hex) -> DeviceRecord.
CREATE TABLE devices (
    key text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

-- SHA-256 of an enrolment token (hex) -> EnrolmentToken. `used_by` and `expires` repeat the record's fields for
-- `tokens_open`; they change only together with it, under the row's lock.
CREATE TABLE enrolment_tokens (
    hash text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL,
    used_by text,
    expires bigint NOT NULL
);
CREATE INDEX enrolment_tokens_open ON enrolment_tokens (expires) WHERE used_by IS NULL;

-- Release id -> ReleaseRecord (its rollout).
CREATE TABLE releases (
    id text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

-- The audit log's newest anchor: one row, whose sequence number only rises.
CREATE TABLE audit_anchor (
    id smallint PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    record bytea NOT NULL
);
