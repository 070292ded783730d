-- Schema version 5: capabilities with their revisions, evaluation suites, evaluation records and challenger cycle
-- records. Suites, evaluation records and cycle records are write-once: the table refuses any update or delete.

-- Capability name -> its current CapabilityRecord, and every revision (numbered from 1 per name). The current
-- record and its history row change in one transaction under the capability row's lock.
CREATE TABLE capabilities (
    name text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);
CREATE TABLE capability_history (
    name text COLLATE "C" NOT NULL REFERENCES capabilities (name),
    revision bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (name, revision)
);

-- Suite digest (hex) -> its canonical manifest; one name, one digest, for ever.
CREATE TABLE suites (
    digest text COLLATE "C" PRIMARY KEY,
    name text COLLATE "C" NOT NULL UNIQUE,
    manifest bytea NOT NULL
);

-- Evaluation record id (hex) -> EvaluationRecord (canonical CBOR); `package` and `at` repeat its fields.
CREATE TABLE evaluations (
    id text COLLATE "C" PRIMARY KEY,
    package text COLLATE "C" NOT NULL,
    at bigint NOT NULL,
    record bytea NOT NULL
);
CREATE INDEX evaluations_by_package ON evaluations (package, id);

-- Challenger cycle id (hex) -> CycleRecord (canonical CBOR).
CREATE TABLE cycles (
    id text COLLATE "C" PRIMARY KEY,
    record bytea NOT NULL
);

CREATE FUNCTION outpost_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'rows of % are write-once', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER suites_write_once BEFORE UPDATE OR DELETE ON suites
    FOR EACH ROW EXECUTE FUNCTION outpost_refuse_change();
CREATE TRIGGER evaluations_write_once BEFORE UPDATE OR DELETE ON evaluations
    FOR EACH ROW EXECUTE FUNCTION outpost_refuse_change();
CREATE TRIGGER cycles_write_once BEFORE UPDATE OR DELETE ON cycles
    FOR EACH ROW EXECUTE FUNCTION outpost_refuse_change();
