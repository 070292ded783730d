-- Schema version 2: the package index and aliases. A package's row is written once (its blobs are on the hub's
-- blob storage first); an alias and its history change in one transaction.

-- Package digest (hex) -> PackageRecord and the manifest's canonical CBOR, exactly as in the package. One
-- name@version, one digest, for ever.
CREATE TABLE packages (
    digest text COLLATE "C" PRIMARY KEY,
    name_version text COLLATE "C" NOT NULL UNIQUE,
    record bytea NOT NULL,
    manifest bytea NOT NULL
);

-- Alias -> package digest (hex), and every change of each alias (AliasEvent), numbered from 1 per alias.
CREATE TABLE aliases (
    alias text COLLATE "C" PRIMARY KEY,
    digest text COLLATE "C" NOT NULL REFERENCES packages (digest)
);
CREATE TABLE alias_history (
    alias text COLLATE "C" NOT NULL REFERENCES aliases (alias),
    seq bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (alias, seq)
);
