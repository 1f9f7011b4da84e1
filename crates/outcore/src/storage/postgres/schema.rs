//! The PostgreSQL schema, created and migrated by outcore itself.
//!
//! All tables live in one schema (default `outcore`), so several stores can share a database.
//! `outcore_version` records the schema version; a newer version than this build knows is
//! refused with a clear message instead of being misread, an older one is upgraded in place
//! ([`UPGRADE_V2`], in the transaction that opens the store).

/// The schema version this build writes and reads: 2 (format v2: short blocks and page
/// deltas).
pub(super) const VERSION: i32 = 2;

/// DDL of version 1. Bodies are in their own table, stored uncompressed by PostgreSQL
/// (`STORAGE EXTERNAL`: TOAST compression cut write speed 4× on incompressible blocks); the
/// version index and per-key head stay small; the one-row head is the commit sequencer.
pub(super) const CREATE_V1: &str = "
CREATE TABLE IF NOT EXISTS outcore_data (
    id bigserial PRIMARY KEY,
    bytes bytea NOT NULL
);
ALTER TABLE outcore_data ALTER COLUMN bytes SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS outcore_obj (
    tag smallint NOT NULL,
    oid bigint NOT NULL,
    idx bigint NOT NULL,
    tid bigint NOT NULL,
    data_id bigint,
    codec smallint NOT NULL,
    checksum bigint NOT NULL,
    raw_len bigint NOT NULL,
    inline bytea,
    PRIMARY KEY (tag, oid, idx, tid)
);
CREATE INDEX IF NOT EXISTS outcore_obj_data ON outcore_obj (data_id);
CREATE TABLE IF NOT EXISTS outcore_obj_head (
    tag smallint NOT NULL,
    oid bigint NOT NULL,
    idx bigint NOT NULL,
    tid bigint NOT NULL,
    PRIMARY KEY (tag, oid, idx)
);
CREATE TABLE IF NOT EXISTS outcore_log (
    tid bigint PRIMARY KEY,
    user_name text NOT NULL,
    description text NOT NULL,
    keys bytea NOT NULL,
    token bigint
);
CREATE INDEX IF NOT EXISTS outcore_log_token ON outcore_log (token);
CREATE TABLE IF NOT EXISTS outcore_lease (
    id bigserial PRIMARY KEY,
    tid bigint NOT NULL,
    heartbeat timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS outcore_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    tid bigint NOT NULL,
    next_oid bigint NOT NULL,
    pack_horizon bigint NOT NULL,
    compression smallint NOT NULL
);
";

/// Version 1 → 2: the delta columns of `outcore_obj` (all NULL for a whole version, which is
/// what every version-1 row is). `IF NOT EXISTS` makes it idempotent; it runs in one
/// transaction with the version update, so a crash leaves either schema, never half of one.
pub(super) const UPGRADE_V2: &str = "
ALTER TABLE outcore_obj
    ADD COLUMN IF NOT EXISTS runs bytea,
    ADD COLUMN IF NOT EXISTS depth int,
    ADD COLUMN IF NOT EXISTS chain_bytes bigint,
    ADD COLUMN IF NOT EXISTS block_len bigint;
";
