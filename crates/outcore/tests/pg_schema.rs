//! PostgreSQL schema versions: a version-1 schema (written before format v2) is upgraded in
//! place by the first open of this build — idempotently, by one opener at a time — keeps
//! reading its data, and takes page deltas from then on; a newer schema is refused.
//!
//! Needs `OUTCORE_TEST_PG` (scripts/test.sh sets it); skips without.

mod common;

use std::sync::Arc;

use outcore::storage::{
    CommitRequest, Key, Oid, Payload, PgOptions, PgStorage, Storage, Tid, TxnMeta, Write,
};
use outcore::Error;

/// The tables as schema version 1 created them (a copy: the build's own DDL may change).
const V1_DDL: &str = "
CREATE TABLE outcore_version (version int NOT NULL);
CREATE TABLE outcore_data (id bigserial PRIMARY KEY, bytes bytea NOT NULL);
ALTER TABLE outcore_data ALTER COLUMN bytes SET STORAGE EXTERNAL;
CREATE TABLE outcore_obj (
    tag smallint NOT NULL, oid bigint NOT NULL, idx bigint NOT NULL, tid bigint NOT NULL,
    data_id bigint, codec smallint NOT NULL, checksum bigint NOT NULL,
    raw_len bigint NOT NULL, inline bytea,
    PRIMARY KEY (tag, oid, idx, tid)
);
CREATE INDEX outcore_obj_data ON outcore_obj (data_id);
CREATE TABLE outcore_obj_head (
    tag smallint NOT NULL, oid bigint NOT NULL, idx bigint NOT NULL, tid bigint NOT NULL,
    PRIMARY KEY (tag, oid, idx)
);
CREATE TABLE outcore_log (
    tid bigint PRIMARY KEY, user_name text NOT NULL, description text NOT NULL,
    keys bytea NOT NULL, token bigint
);
CREATE INDEX outcore_log_token ON outcore_log (token);
CREATE TABLE outcore_lease (
    id bigserial PRIMARY KEY, tid bigint NOT NULL, heartbeat timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outcore_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one), tid bigint NOT NULL,
    next_oid bigint NOT NULL, pack_horizon bigint NOT NULL, compression smallint NOT NULL
);
INSERT INTO outcore_version VALUES (1);
";

const PAGE: usize = 4096;
const FILE: u64 = 10;
const TID: i64 = 1_000;

struct Held(Vec<u8>);
impl Payload for Held {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Incompressible bytes (xorshift), different per `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Block 0 of the old data: 16 pages whose last 4 are zeros (version 1 stored them too).
fn old_block() -> Vec<u8> {
    let mut b = noise(1, 16 * PAGE);
    b[12 * PAGE..].fill(0);
    b
}

/// Creates schema `schema` as version 1 left it: one commit (tid 1000) of block 0 of file
/// 10 (stored whole, at full length) and metadata record 9.
fn create_v1(c: &mut postgres::Client, schema: &str) {
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};
         SET search_path TO {schema}; {V1_DDL}"
    ))
    .unwrap();
    let block = old_block();
    let id: i64 = c
        .query_one(
            "INSERT INTO outcore_data (bytes) VALUES ($1) RETURNING id",
            &[&block],
        )
        .unwrap()
        .get(0);
    let sum = |b: &[u8]| twox_hash::XxHash3_64::oneshot(b) as i64;
    let meta = b"outcore-array 1".to_vec();
    c.execute(
        "INSERT INTO outcore_obj VALUES (1, $1, 0, $2, $3, 0, $4, $5, NULL),
                                        (0, 9, 0, $2, NULL, 0, $6, $7, $8)",
        &[
            &(FILE as i64),
            &TID,
            &id,
            &sum(&block),
            &(block.len() as i64),
            &sum(&meta),
            &(meta.len() as i64),
            &meta,
        ],
    )
    .unwrap();
    let keys: Vec<u8> = [
        Key::Meta(Oid(9)),
        Key::Block {
            file: Oid(FILE),
            index: 0,
        },
    ]
    .iter()
    .flat_map(|k| k.encode())
    .collect();
    c.execute(
        "INSERT INTO outcore_obj_head VALUES (1, $1, 0, $2), (0, 9, 0, $2)",
        &[&(FILE as i64), &TID],
    )
    .unwrap();
    c.execute(
        "INSERT INTO outcore_log VALUES ($1, 'old', 'v1 data', $2, 1)",
        &[&TID, &keys],
    )
    .unwrap();
    c.execute(
        "INSERT INTO outcore_head VALUES (true, $1, 100, 0, 0)",
        &[&TID],
    )
    .unwrap();
    c.batch_execute("RESET search_path").unwrap();
}

fn open(url: &str, schema: &str) -> outcore::Result<PgStorage> {
    PgStorage::open_with(
        url,
        PgOptions {
            schema: schema.into(),
            ..PgOptions::default()
        },
    )
}

fn version(c: &mut postgres::Client, schema: &str) -> i32 {
    c.query_one(
        &format!("SELECT version FROM {schema}.outcore_version"),
        &[],
    )
    .unwrap()
    .get(0)
}

/// (tid, stored as a delta) of each version of block 0, oldest first.
fn block_rows(c: &mut postgres::Client, schema: &str) -> Vec<(i64, bool)> {
    c.query(
        &format!(
            "SELECT tid, runs IS NOT NULL FROM {schema}.outcore_obj
             WHERE tag = 1 AND oid = $1 AND idx = 0 ORDER BY tid"
        ),
        &[&(FILE as i64)],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// `bytes` zero-padded to `len` (reads may return a block short).
fn padded(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(
        bytes.len() <= len,
        "{} bytes of a {len}-byte block",
        bytes.len()
    );
    bytes.resize(len, 0);
    bytes
}

#[test]
fn version_1_schema_is_upgraded_in_place_and_takes_deltas() {
    let Some(url) = common::pg_server() else {
        return;
    };
    let schema = format!("schema_v1_{}", std::process::id());
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    create_v1(&mut c, &schema);
    // A column the upgrade adds already there (as if added by hand): the upgrade still runs.
    c.batch_execute(&format!(
        "ALTER TABLE {schema}.outcore_obj ADD COLUMN runs bytea"
    ))
    .unwrap();

    // Several nodes open the old schema at once: one upgrades it, all open it.
    let stores: Vec<PgStorage> = std::thread::scope(|s| {
        let opens: Vec<_> = (0..4).map(|_| s.spawn(|| open(&url, &schema))).collect();
        opens
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    assert_eq!(version(&mut c, &schema), 2);
    let store = &stores[0];
    let k = Key::Block {
        file: Oid(FILE),
        index: 0,
    };
    let meta = Key::Meta(Oid(9));

    // The old data reads as before, on every read path.
    assert_eq!(store.head().unwrap(), Tid(TID as u64));
    let old = store.load(k, Tid::MAX).unwrap().unwrap();
    assert_eq!(
        (old.tid, padded(old.data, 16 * PAGE)),
        (Tid(TID as u64), old_block())
    );
    let many = store.load_many(&[meta, k], Tid::MAX).unwrap();
    assert_eq!(many[0].as_ref().unwrap().data, b"outcore-array 1");
    assert_eq!(
        padded(many[1].clone().unwrap().data, 16 * PAGE),
        old_block()
    );
    assert_eq!(
        store.log(Tid::ZERO, Tid::MAX).unwrap()[0].description,
        "v1 data"
    );

    // A commit changing two pages of the old whole version is stored as a delta over it.
    let mut next = old_block();
    next[2 * PAGE..4 * PAGE].copy_from_slice(&noise(2, 2 * PAGE));
    let t = store
        .commit(CommitRequest {
            base: store.head().unwrap(),
            writes: vec![(
                k,
                Write::Pages {
                    pages: std::iter::once(2..4).collect(),
                    from: Arc::new(Held(next.clone())),
                },
            )],
            meta: TxnMeta::default(),
        })
        .unwrap();
    assert_eq!(
        block_rows(&mut c, &schema),
        vec![(TID, false), (t.0 as i64, true)]
    );
    // A build that predates deltas (still connected when the schema was upgraded) finds a
    // codec it does not know (it knows 0, 1, 2) in a delta row, so it refuses to read the
    // changed pages as the whole block.
    let codec: i16 = c
        .query_one(
            &format!("SELECT codec FROM {schema}.outcore_obj WHERE tid = $1"),
            &[&(t.0 as i64)],
        )
        .unwrap()
        .get(0);
    assert!(codec > 2, "{codec}");
    for s in &stores {
        let v = s.load(k, t).unwrap().unwrap();
        assert_eq!(padded(v.data, 16 * PAGE), next);
        let mut out = vec![0xAAu8; 16 * PAGE];
        let n = s.load_into(k, t, &mut out).unwrap().unwrap();
        out[n..].fill(0);
        assert_eq!(out, next);
        assert_eq!(
            padded(s.load(k, Tid(t.0 - 1)).unwrap().unwrap().data, 16 * PAGE),
            old_block()
        );
    }
    assert!(store.verify().unwrap().problems.is_empty());

    // Opening again changes nothing; pack folds the delta into a whole version.
    drop(stores);
    let store = open(&url, &schema).unwrap();
    assert_eq!(version(&mut c, &schema), 2);
    store.pack(t).unwrap();
    assert_eq!(block_rows(&mut c, &schema), vec![(t.0 as i64, false)]);
    assert_eq!(
        padded(store.load(k, t).unwrap().unwrap().data, 16 * PAGE),
        next
    );
    assert!(store.verify().unwrap().problems.is_empty());

    // A schema newer than this build is refused, with the reason.
    c.execute(
        &format!("UPDATE {schema}.outcore_version SET version = 3"),
        &[],
    )
    .unwrap();
    let err = open(&url, &schema).unwrap_err();
    assert!(
        matches!(&err, Error::Format { reason, .. } if reason.contains("newer")),
        "{err}"
    );
}

/// The staging table is additive: a store made by a build before staging (schema version 2
/// without `outcore_staged`) gets it at the next open, and takes staged bodies from then on.
#[test]
fn a_store_made_before_staging_gets_the_staging_table() {
    let Some(url) = common::pg_server() else {
        return;
    };
    let schema = format!("schema_prestaging_{}", std::process::id());
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    create_v1(&mut c, &schema);
    drop(open(&url, &schema).unwrap());
    c.batch_execute(&format!("DROP TABLE {schema}.outcore_staged"))
        .unwrap();
    let store = open(&url, &schema).unwrap();
    assert_eq!(version(&mut c, &schema), 2, "additive: the version stays");
    let k = Key::Block {
        file: Oid(FILE),
        index: 0,
    };
    let body = noise(3, 8 * PAGE);
    let r = store
        .stage_body(k, &body)
        .unwrap()
        .expect("PostgreSQL stages");
    let hold = store.hold_staged(&r).unwrap();
    store
        .commit(CommitRequest {
            base: store.head().unwrap(),
            writes: vec![(k, Write::Adopt(r))],
            meta: TxnMeta::default(),
        })
        .unwrap();
    drop(hold);
    assert_eq!(
        padded(store.load(k, Tid::MAX).unwrap().unwrap().data, 8 * PAGE),
        body
    );
    assert!(store.verify().unwrap().problems.is_empty());
}
