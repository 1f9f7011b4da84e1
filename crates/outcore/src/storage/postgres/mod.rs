//! [`PgStorage`]: the shared store — many nodes, one PostgreSQL database.
//!
//! **Commit protocol** (one READ COMMITTED transaction, measured to catch every real conflict):
//! lock the written keys' head rows in key order (`SELECT … FOR UPDATE`, which also reads the
//! chain each current version ends) and compare with the base tid (a conflict rolls back);
//! insert the block bodies (the slow part: only those keys are locked meanwhile), each the
//! whole block stored short or, over the current version, its changed pages (format v2,
//! `delta::plan`); then take the tid from the one-row head table (its row lock serialises
//! commits, so commit order = tid order; a SEQUENCE would let a poller miss a tid), write
//! index, per-key head and log rows, `NOTIFY outcore`, commit. Keys written for the first time
//! cannot be locked; two commits creating one key collide on the per-key head's primary key,
//! which is reported as a conflict. A conflict on a key that exists is found before any body
//! is sent.
//!
//! **Reads** of a page delta fetch its chain (down to the first whole version) in the same
//! statement and compose it (`chain`); **pack** rewrites as whole versions the deltas whose
//! base it removes and each key's newest version, so every kept chain still starts at a
//! whole version.
//!
//! **Invalidation**: clients read the log (`tid > last seen`) at every transaction boundary — the
//! source of truth; `NOTIFY` only helps idle listeners wake early.
//!
//! **Unknown commit outcome**: each commit carries a random token stored in its log row; if the
//! connection drops during `COMMIT`, the store reconnects and looks the token up, so a commit is
//! reported exactly once and never applied twice.
//!
//! **Leases** are rows with a heartbeat, renewed by a background thread every sixth of the
//! lease timeout; pack ignores leases whose heartbeat is older than the lease timeout (url
//! option `lease_timeout=SECONDS`, default 120 s), so a crashed node stops pinning
//! history. A reader paused for longer loses that protection: every read checks the pack
//! horizon in the same statement as the version it reads, and fails with
//! [`Error::SnapshotTooOld`] rather than return what pack left.
//!
//! **Url options** of outcore's own (removed before the url reaches libpq): `outcore_schema`,
//! `lease_timeout`, `pool_size` and `outage_window` (see [`PgOptions`]).
//!
//! Blocks are copied out of the database (never mapped); the memory layer decodes them into
//! private memory.

mod chain;
mod commit;
mod errors;
mod leases;
mod options;
mod pack;
mod pool;
mod schema;
mod staging;
mod tls;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use postgres::types::ToSql;

use super::codec::{self, Compression};
use super::delta;
use super::record::{decode_log, encode_log};
use super::{
    CommitRequest, Key, Located, Oid, PackStats, Storage, Tid, TxnInfo, VerifyReport, Version,
};
use crate::{Error, Result};
use leases::spawn_heartbeat;
use options::url_for_messages;
pub use options::PgOptions;
use pool::Pool;

/// The shared store on PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgStorage {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    /// The schema every statement runs in.
    schema: String,
    lease_timeout: Duration,
    compression: Compression,
    describe: String,
    /// Lease ids this process holds (renewed by the heartbeat thread).
    leases: Mutex<HashSet<i64>>,
    /// Oids allocated on the server but not handed out yet: allocating is a round trip and
    /// a commit on the head row every committer updates, so it is done `OID_BATCH` at a
    /// time. Unused oids of a batch are skipped for good.
    spare_oids: Mutex<Range<u64>>,
    /// The lease that keeps the bodies this process stages or holds from pack (see
    /// `staging.rs`), registered on first use.
    staging_lease: Mutex<Option<i64>>,
}

/// Oids taken from the server at a time (see `Inner::spare_oids`).
const OID_BATCH: u64 = 1024;

impl std::fmt::Debug for PgStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStorage")
            .field("at", &self.inner.describe)
            .finish()
    }
}

fn key_cols(key: Key) -> (i16, i64, i64) {
    match key {
        Key::Meta(oid) => (0, oid.0 as i64, 0),
        Key::Block { file, index } => (1, file.0 as i64, index as i64),
    }
}

fn key_from_cols(tag: i16, oid: i64, idx: i64) -> Key {
    if tag == 0 {
        Key::Meta(Oid(oid as u64))
    } else {
        Key::Block {
            file: Oid(oid as u64),
            index: idx as u64,
        }
    }
}

/// A tid as stored (tids are nanoseconds since 1970 and stay below `i64::MAX` until 2262).
fn db_tid(t: Tid) -> i64 {
    t.0.min(i64::MAX as u64) as i64
}

impl PgStorage {
    /// Opens (creating the schema if needed) the store at `url`
    /// (`postgresql://user[:password]@host[:port]/database`). A url parameter
    /// `outcore_schema=NAME` selects the schema (default `outcore`).
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, PgOptions::default())
    }

    /// Opens the store at `url` with `options` (url options override them).
    pub fn open_with(url: &str, mut options: PgOptions) -> Result<Self> {
        let url = Self::split_options(url, &mut options)?;
        let url = url.as_str();
        if options.schema.is_empty()
            || !options
                .schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(Error::InvalidArgument(format!(
                "schema name {:?} must be non-empty ASCII letters, digits or _",
                options.schema
            )));
        }
        let pool = pool::shared(url, options.pool_size, options.outage_window)?;
        let schema = options.schema.clone();
        let compression = pool.with_client(&schema, |c| {
            let mut t = c.transaction()?;
            // One creator at a time, across every client of this database.
            t.execute("SELECT pg_advisory_xact_lock(7311)", &[])?;
            t.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {0}; SET LOCAL search_path TO {0};
                 CREATE TABLE IF NOT EXISTS outcore_version (version int NOT NULL)",
                options.schema
            ))?;
            let version: Option<i32> = t
                .query_opt("SELECT version FROM outcore_version", &[])?
                .map(|r| r.get(0));
            match version {
                None => {
                    t.batch_execute(schema::CREATE_V1)?;
                    t.batch_execute(schema::UPGRADE_V2)?;
                    t.execute(
                        "INSERT INTO outcore_version VALUES ($1)",
                        &[&schema::VERSION],
                    )?;
                    t.execute(
                        "INSERT INTO outcore_head VALUES (true, 0, 1, 0, $1)",
                        &[&i16::from(options.compression.code())],
                    )?;
                }
                Some(v) if v > schema::VERSION => {
                    return Err(Error::Format {
                        path: url_for_messages(url).into(),
                        reason: format!(
                            "schema version {v} is newer than this build's {}; upgrade outcore",
                            schema::VERSION
                        ),
                    });
                }
                Some(v) if v < schema::VERSION => {
                    // Every version-1 row is a whole version: only columns are added.
                    t.batch_execute(schema::UPGRADE_V2)?;
                    t.execute(
                        "UPDATE outcore_version SET version = $1",
                        &[&schema::VERSION],
                    )?;
                }
                Some(_) => {}
            }
            // Additive: stores made before staging get the table (older builds ignore it).
            let staged: bool = t
                .query_one("SELECT to_regclass('outcore_staged') IS NOT NULL", &[])?
                .get(0);
            if !staged {
                t.batch_execute(staging::CREATE)?;
            }
            let code: i16 = t
                .query_one("SELECT compression FROM outcore_head", &[])?
                .get(0);
            t.commit()?;
            Ok(code)
        })?;
        let compression =
            Compression::from_code(compression as u8).ok_or_else(|| Error::Format {
                path: url_for_messages(url).into(),
                reason: "unknown compression setting".into(),
            })?;
        let inner = Arc::new(Inner {
            pool,
            schema,
            lease_timeout: options.lease_timeout,
            compression,
            describe: format!("{} (schema {})", url_for_messages(url), options.schema),
            leases: Mutex::new(HashSet::new()),
            spare_oids: Mutex::new(0..0),
            staging_lease: Mutex::new(None),
        });
        spawn_heartbeat(Arc::downgrade(&inner));
        Ok(PgStorage { inner })
    }

    /// The block compression of this store (its own setting, chosen when it was created).
    pub fn compression(&self) -> Compression {
        self.inner.compression
    }
}

impl Inner {
    /// [`Pool::with_client`] in this store's schema.
    fn with_client<T>(&self, f: impl FnMut(&mut postgres::Client) -> Result<T>) -> Result<T> {
        self.pool.with_client(&self.schema, f)
    }

    /// [`Pool::with_fresh_client`] in this store's schema.
    fn with_fresh_client<T>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T>,
    ) -> Result<T> {
        self.pool.with_fresh_client(&self.schema, f)
    }
}

impl Inner {
    /// The versions `<= at` of `keys` (composed from their chains), fetched in one query.
    fn load_batch(&self, keys: &[Key], at: Tid) -> Result<Vec<Option<Version>>> {
        let rows = self.with_client(|c| chain::query(c, keys, at))?;
        let mut chains = chain::parse(keys, at, &rows)?;
        drop(rows);
        let mut first: std::collections::HashMap<Key, usize> = Default::default();
        let mut out: Vec<Option<Version>> = Vec::with_capacity(keys.len());
        for (i, &key) in keys.iter().enumerate() {
            let version = match first.get(&key) {
                Some(&j) => out[j].clone(),
                None => {
                    first.insert(key, i);
                    chain::compose(key, chains.remove(&key).unwrap_or_default())?
                }
            };
            out.push(version);
        }
        Ok(out)
    }

    /// The rows of the chain that leads to `key`'s version `<= at`.
    fn fetch_one(&self, key: Key, at: Tid) -> Result<Vec<chain::StoredRow>> {
        let rows = self.with_client(|c| chain::query(c, &[key], at))?;
        let mut chains = chain::parse(&[key], at, &rows)?;
        Ok(chains.remove(&key).unwrap_or_default())
    }
}

/// Applies [`super::check_horizon`] to a read at `at` whose `row` (columns `pack_horizon` and
/// `tid`, NULL when no version was found) came from one statement.
fn check_horizon(row: &postgres::Row, at: Tid) -> Result<()> {
    if row.get::<_, Option<i64>>("tid").is_some() {
        return Ok(());
    }
    super::check_horizon(at, Tid(row.get::<_, i64>("pack_horizon") as u64))
}

impl Storage for PgStorage {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    fn head(&self) -> Result<Tid> {
        self.inner.with_client(|c| {
            let tid: i64 = c.query_one("SELECT tid FROM outcore_head", &[])?.get(0);
            Ok(Tid(tid as u64))
        })
    }

    fn new_oids(&self, n: u64) -> Result<Range<u64>> {
        let mut spare = self
            .inner
            .spare_oids
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if spare.end - spare.start < n {
            let batch = n.max(OID_BATCH) as i64;
            *spare = self.inner.with_client(|c| {
                let end: i64 = c
                    .query_one(
                        "UPDATE outcore_head SET next_oid = next_oid + $1 RETURNING next_oid",
                        &[&batch],
                    )?
                    .get(0);
                Ok((end - batch) as u64..end as u64)
            })?;
        }
        let out = spare.start..spare.start + n;
        spare.start += n;
        Ok(out)
    }

    fn load(&self, key: Key, at: Tid) -> Result<Option<Version>> {
        chain::compose(key, self.inner.fetch_one(key, at)?)
    }

    fn load_into(&self, key: Key, at: Tid, out: &mut [u8]) -> Result<Option<usize>> {
        chain::compose_into(key, self.inner.fetch_one(key, at)?, out)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn load_many(&self, keys: &[Key], at: Tid) -> Result<Vec<Option<Version>>> {
        if keys.len() <= 1 {
            return keys.iter().map(|&k| self.load(k, at)).collect();
        }
        // Several connections fetch disjoint slices of the keys at once.
        let parts = self.inner.pool.size().min(keys.len());
        let chunk = keys.len().div_ceil(parts);
        let results: Vec<Result<Vec<Option<Version>>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = keys
                .chunks(chunk)
                .map(|part| scope.spawn(move || self.inner.load_batch(part, at)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::InvalidArgument("a fetch thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut out = Vec::with_capacity(keys.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    fn locate(&self, key: Key, at: Tid) -> Result<Located> {
        let (tag, oid, idx) = key_cols(key);
        let r = self.inner.with_client(|c| {
            Ok(c.query_one(
                "SELECT h.pack_horizon, v.* FROM outcore_head h LEFT JOIN LATERAL (
                     SELECT tid, data_id, inline IS NOT NULL AS inline FROM outcore_obj
                     WHERE tag = $1 AND oid = $2 AND idx = $3 AND tid <= $4
                     ORDER BY tid DESC LIMIT 1) v ON true",
                &[&tag, &oid, &idx, &db_tid(at)],
            )?)
        })?;
        check_horizon(&r, at)?;
        let tid: Option<i64> = r.get("tid");
        let data_id: Option<i64> = r.get("data_id");
        let inline: Option<bool> = r.get("inline");
        Ok(match tid {
            Some(tid) if data_id.is_some() || inline == Some(true) => {
                Located::CopyOnly(Tid(tid as u64))
            }
            _ => Located::Absent,
        })
    }

    fn commit(&self, req: CommitRequest) -> Result<Tid> {
        self.inner.commit(req)
    }

    fn stages_bodies(&self) -> bool {
        true
    }

    fn stage_body(&self, key: Key, bytes: &[u8]) -> Result<Option<super::StagedRef>> {
        staging::stage(&self.inner, key, bytes)
    }

    fn hold_staged(&self, version: &super::StagedRef) -> Result<super::StagedHold> {
        staging::hold(&self.inner, version)
    }

    fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>> {
        let rows = self.inner.with_client(|c| {
            let packed: i64 = c
                .query_one("SELECT pack_horizon FROM outcore_head", &[])?
                .get(0);
            if db_tid(after) < packed {
                return Err(Error::SnapshotTooOld {
                    horizon: Tid(packed as u64),
                    requested: after,
                });
            }
            Ok(c.query(
                "SELECT tid, user_name, description, keys FROM outcore_log
                 WHERE tid > $1 AND tid <= $2 ORDER BY tid",
                &[&db_tid(after), &db_tid(upto)],
            )?)
        })?;
        rows.iter()
            .map(|r| {
                let tid = Tid(r.get::<_, i64>(0) as u64);
                let keys: Vec<u8> = r.get(3);
                let mut info = decode_log(&encode_log("", "", &[]), tid)?;
                info.user = r.get(1);
                info.description = r.get(2);
                info.keys = keys
                    .chunks(Key::ENCODED_LEN)
                    .map(|k| {
                        Key::decode(k).ok_or_else(|| Error::Corrupt {
                            key: Key::Meta(Oid(0)),
                            tid,
                            reason: "bad key in the commit log".into(),
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(info)
            })
            .collect()
    }

    fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>> {
        let oid = file.0 as i64;
        let rows = self.inner.with_client(|c| {
            Ok(c.query(
                "SELECT h.pack_horizon, v.idx FROM outcore_head h LEFT JOIN (
                     SELECT DISTINCT ON (idx) idx, data_id FROM outcore_obj
                     WHERE tag = 1 AND oid = $1 AND tid <= $2
                     ORDER BY idx, tid DESC) v ON v.data_id IS NOT NULL
                 ORDER BY v.idx",
                &[&oid, &db_tid(at)],
            )?)
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            super::check_horizon(at, Tid(r.get::<_, i64>("pack_horizon") as u64))?;
            out.extend(r.get::<_, Option<i64>>("idx").map(|i| i as u64));
        }
        Ok(out)
    }

    fn acquire_lease(&self, at: Tid) -> Result<u64> {
        self.inner.acquire_lease(at)
    }

    fn renew_lease(&self, id: u64, at: Tid) -> Result<()> {
        self.inner.renew_lease(id, at)
    }

    fn release_lease(&self, id: u64) {
        self.inner.release_lease(id)
    }

    fn fence(&self) -> Result<()> {
        // Pack holds the head row from start to commit.
        self.inner.with_client(|c| {
            let mut t = c.transaction()?;
            t.query_one("SELECT tid FROM outcore_head FOR UPDATE", &[])?;
            Ok(t.rollback()?)
        })
    }

    fn pack_horizon(&self) -> Result<Tid> {
        self.inner.with_client(|c| {
            let t: i64 = c
                .query_one("SELECT pack_horizon FROM outcore_head", &[])?
                .get(0);
            Ok(Tid(t as u64))
        })
    }

    fn pack(&self, upto: Tid) -> Result<PackStats> {
        self.inner.pack(upto)
    }

    fn verify(&self) -> Result<VerifyReport> {
        let rows = self.inner.with_client(|c| {
            Ok(c.query(
                "SELECT o.*, d.bytes
                 FROM outcore_obj o LEFT JOIN outcore_data d ON d.id = o.data_id
                 ORDER BY o.tag, o.oid, o.idx, o.tid",
                &[],
            )?)
        })?;
        let mut report = VerifyReport::default();
        // The key and whether it had a payload, of the row before.
        let mut previous: Option<(Key, bool)> = None;
        for row in &rows {
            let key = key_from_cols(row.get("tag"), row.get("oid"), row.get("idx"));
            report.versions_checked += 1;
            report.bytes_checked += row.get::<_, i64>("raw_len") as u64;
            let below = previous
                .filter(|(k, _)| *k == key)
                .map(|(_, payload)| payload);
            previous = Some((key, row.get::<_, Option<i64>>("data_id").is_some()));
            let version = match chain::StoredRow::from_row(key, row) {
                Ok(Some(version)) => version,
                Ok(None) => continue,
                Err(e) => {
                    report.problems.push(e);
                    continue;
                }
            };
            if version.delta.is_some() && below != Some(true) {
                report.problems.push(Error::Corrupt {
                    key,
                    tid: version.tid,
                    reason: "delta without the version it changes".into(),
                });
            }
            if let Err(e) = version.payload(key) {
                report.problems.push(e);
            }
        }
        Ok(report)
    }
}
