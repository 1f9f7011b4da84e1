//! The commit path of [`PgStorage`](super::PgStorage) (protocol in the module docs): locking
//! the written keys, writing bodies and index rows, and resolving a commit whose connection
//! failed at `COMMIT`.

use super::errors::is_connection_lost;
use super::*;

impl Inner {
    pub(super) fn commit(&self, req: CommitRequest) -> Result<Tid> {
        // Metadata records are encoded before touching the database; block bodies are
        // planned (whole or delta) once the key's current version is known, then encoded one
        // at a time and dropped once inserted (memory stays at one block, not all of them).
        struct Prepared {
            key: (i16, i64, i64),
            /// A block body, planned, encoded and inserted inside the transaction.
            body: bool,
            /// A metadata record, encoded: codec, checksum, raw length, bytes.
            inline: Option<(i16, i64, i64, Vec<u8>)>,
        }
        let prepared: Vec<Prepared> = req
            .writes
            .iter()
            .map(|(key, write)| Prepared {
                key: key_cols(*key),
                body: key.is_block() && write.bytes().is_some(),
                inline: write.bytes().filter(|_| !key.is_block()).map(|raw| {
                    let e = codec::encode(raw, Compression::None);
                    (
                        i16::from(e.codec.code()),
                        e.checksum as i64,
                        e.raw_len as i64,
                        e.stored.into_owned(),
                    )
                }),
            })
            .collect();
        let mut order: Vec<usize> = (0..prepared.len()).collect();
        order.sort_by_key(|&i| prepared[i].key);
        let mut keys_sorted: Vec<Key> = req.writes.iter().map(|(k, _)| *k).collect();
        keys_sorted.sort();
        let log_keys: Vec<u8> = keys_sorted.iter().flat_map(|k| k.encode()).collect();
        let token: i64 = rand_token();
        let base = db_tid(req.base);
        // Bodies staged ahead (`Write::Adopt`): published once the sequencer row is held.
        let adopted = req.adopted()?;

        let outcome = self.with_fresh_client(|c| -> Result<Tid> {
            let mut t = c.transaction()?;
            // 1. Lock the written keys in key order, check them against the base, and read
            //    the chain their current version ends (to plan deltas over it).
            let tags: Vec<i16> = order.iter().map(|&i| prepared[i].key.0).collect();
            let oids: Vec<i64> = order.iter().map(|&i| prepared[i].key.1).collect();
            let idxs: Vec<i64> = order.iter().map(|&i| prepared[i].key.2).collect();
            let heads = t.query(
                "SELECT h.tag, h.oid, h.idx, h.tid, o.data_id, o.raw_len, o.depth,
                        o.chain_bytes, o.block_len
                 FROM outcore_obj_head h
                 JOIN unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS k(tag, oid, idx)
                   ON h.tag = k.tag AND h.oid = k.oid AND h.idx = k.idx
                 LEFT JOIN outcore_obj o
                   ON o.tag = h.tag AND o.oid = h.oid AND o.idx = h.idx AND o.tid = h.tid
                 ORDER BY h.tag, h.oid, h.idx FOR UPDATE OF h",
                &[&tags, &oids, &idxs],
            )?;
            let mut existing = HashSet::new();
            let mut tips = std::collections::HashMap::new();
            for h in &heads {
                let cols: (i16, i64, i64) = (h.get(0), h.get(1), h.get(2));
                let committed: i64 = h.get(3);
                if committed > base {
                    return Err(Error::Conflict {
                        key: key_from_cols(cols.0, cols.1, cols.2),
                        base: req.base,
                        committed: Tid(committed as u64),
                    });
                }
                existing.insert(cols);
                let has_body = h.get::<_, Option<i64>>(4).is_some();
                if let Some(tip) = chain::tip(has_body, h.get(5), (h.get(6), h.get(7), h.get(8))) {
                    tips.insert(cols, tip);
                }
            }
            // 2. Bodies: whole (short) or the changed pages over the current version. Only
            //    the written keys are locked meanwhile, not the sequencer.
            let insert_body =
                t.prepare("INSERT INTO outcore_data (bytes) VALUES ($1) RETURNING id")?;
            let mut rows: Vec<ObjRow> = Vec::with_capacity(prepared.len());
            for (p, (key, write)) in prepared.iter().zip(&req.writes) {
                if let Some((codec, checksum, raw_len, bytes)) = &p.inline {
                    rows.push(ObjRow {
                        codec: *codec,
                        checksum: *checksum,
                        raw_len: *raw_len,
                        inline: Some(bytes),
                        ..ObjRow::default()
                    });
                    continue;
                }
                if !p.body {
                    rows.push(ObjRow::default());
                    continue;
                }
                let Some(plan) = delta::plan(*key, write, tips.get(&p.key).copied())? else {
                    rows.push(ObjRow::default());
                    continue;
                };
                let (raw, delta) = match plan {
                    delta::Plan::Whole(bytes) => (std::borrow::Cow::Borrowed(bytes), None),
                    delta::Plan::Delta { payload, delta } => {
                        (std::borrow::Cow::Owned(payload), Some(delta))
                    }
                };
                let e = codec::encode(&raw, self.compression);
                let id: i64 = t.query_one(&insert_body, &[&&*e.stored])?.get(0);
                rows.push(ObjRow {
                    data_id: Some(id),
                    codec: chain::codec_column(e.codec, delta.is_some()),
                    checksum: e.checksum as i64,
                    raw_len: e.raw_len as i64,
                    inline: None,
                    runs: delta.as_ref().map(|d| chain::encode_runs(&d.runs)),
                    depth: delta.as_ref().map(|d| d.depth as i32),
                    chain_bytes: delta.as_ref().map(|d| d.chain_bytes as i64),
                    block_len: delta.as_ref().map(|d| d.block_len as i64),
                });
            }
            // 3. The tid, from the sequencer row (held until COMMIT).
            let now = db_tid(Tid::now());
            let tid: i64 = t
                .query_one(
                    "UPDATE outcore_head SET tid = greatest(tid + 1, $1) RETURNING tid",
                    &[&now],
                )?
                .get(0);
            // 3b. Staged bodies: taken out of the staging table (pack, which takes the
            //     sequencer row too, cannot reclaim them now) and pointed at.
            if !adopted.is_empty() {
                let refs: Vec<crate::storage::StagedRef> =
                    adopted.iter().map(|(_, r)| *r).collect();
                let published = staging::publish(&mut t, &refs)?;
                for ((i, _), (data_id, codec, checksum, raw_len)) in adopted.iter().zip(published) {
                    rows[*i] = ObjRow {
                        data_id: Some(data_id),
                        codec,
                        checksum,
                        raw_len,
                        ..ObjRow::default()
                    };
                }
            }
            // 4. Index rows, per-key heads, log, notify.
            let insert_obj = t.prepare(
                "INSERT INTO outcore_obj
                 (tag, oid, idx, tid, data_id, codec, checksum, raw_len, inline,
                  runs, depth, chain_bytes, block_len)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )?;
            for (p, r) in prepared.iter().zip(&rows) {
                let params: [&(dyn ToSql + Sync); 13] = [
                    &p.key.0,
                    &p.key.1,
                    &p.key.2,
                    &tid,
                    &r.data_id,
                    &r.codec,
                    &r.checksum,
                    &r.raw_len,
                    &r.inline,
                    &r.runs,
                    &r.depth,
                    &r.chain_bytes,
                    &r.block_len,
                ];
                t.execute(&insert_obj, &params)?;
            }
            let (new_keys, old_keys): (Vec<usize>, Vec<usize>) = order
                .iter()
                .partition(|&&i| !existing.contains(&prepared[i].key));
            for (sql, which) in [
                (
                    "UPDATE outcore_obj_head h SET tid = $4
                     FROM unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS k(tag, oid, idx)
                     WHERE h.tag = k.tag AND h.oid = k.oid AND h.idx = k.idx",
                    old_keys,
                ),
                (
                    "INSERT INTO outcore_obj_head (tag, oid, idx, tid)
                     SELECT tag, oid, idx, $4
                     FROM unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS k(tag, oid, idx)",
                    new_keys,
                ),
            ] {
                if which.is_empty() {
                    continue;
                }
                let tags: Vec<i16> = which.iter().map(|&i| prepared[i].key.0).collect();
                let oids: Vec<i64> = which.iter().map(|&i| prepared[i].key.1).collect();
                let idxs: Vec<i64> = which.iter().map(|&i| prepared[i].key.2).collect();
                if let Err(e) = t.execute(sql, &[&tags, &oids, &idxs, &tid]) {
                    // Another commit created one of these keys first.
                    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
                        let (tag, oid, idx) = prepared[which[0]].key;
                        return Err(Error::Conflict {
                            key: key_from_cols(tag, oid, idx),
                            base: req.base,
                            committed: Tid(tid as u64),
                        });
                    }
                    return Err(e.into());
                }
            }
            t.execute(
                "INSERT INTO outcore_log (tid, user_name, description, keys, token)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &tid,
                    &req.meta.user,
                    &req.meta.description,
                    &log_keys,
                    &token,
                ],
            )?;
            t.execute("SELECT pg_notify('outcore', $1)", &[&tid.to_string()])?;
            t.commit()?;
            Ok(Tid(tid as u64))
        });
        match outcome {
            // The connection died somewhere in the transaction: did COMMIT happen?
            Err(e) if is_connection_lost(&e) => self.commit_outcome(token, e),
            other => other,
        }
    }
}

/// The columns of one new `outcore_obj` row (the default: a deletion).
#[derive(Default)]
struct ObjRow<'a> {
    data_id: Option<i64>,
    codec: i16,
    checksum: i64,
    raw_len: i64,
    inline: Option<&'a Vec<u8>>,
    runs: Option<Vec<u8>>,
    depth: Option<i32>,
    chain_bytes: Option<i64>,
    block_len: Option<i64>,
}

impl Inner {
    /// Finds out whether the commit with `token`, whose connection failed with `lost`, was
    /// applied: looks its token up in the log, again and again while the server stays
    /// unreachable, for up to the outage window. Past it, [`Error::CommitOutcomeUnknown`]:
    /// reporting a failure could make the caller apply a durable commit twice.
    fn commit_outcome(&self, token: i64, lost: Error) -> Result<Tid> {
        let start = std::time::Instant::now();
        let window = self.pool.outage_window();
        let mut last = lost;
        loop {
            // If the old server process is still finishing that transaction it holds the
            // head row: wait for it (FOR UPDATE) before looking the token up.
            let found = self.with_client(|c| {
                let mut t = c.transaction()?;
                t.query_one("SELECT tid FROM outcore_head FOR UPDATE", &[])?;
                let found: Option<i64> = t
                    .query_opt("SELECT tid FROM outcore_log WHERE token = $1", &[&token])?
                    .map(|r| r.get(0));
                t.rollback()?;
                Ok(found)
            });
            match found {
                Ok(Some(tid)) => return Ok(Tid(tid as u64)),
                // Not in the log, and no transaction of it can still commit: it failed.
                Ok(None) => return Err(last),
                Err(e) if is_connection_lost(&e) && start.elapsed() < window => {
                    tracing::warn!(
                        "looking up commit token {token} after a lost connection: {e}; \
                         still trying"
                    );
                    last = e;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => {
                    return Err(Error::CommitOutcomeUnknown {
                        token,
                        waited: start.elapsed(),
                        cause: e.to_string(),
                    })
                }
            }
        }
    }
}

/// A random 63-bit token identifying one commit attempt.
fn rand_token() -> i64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(Tid::now().0 as u128 ^ (u128::from(std::process::id()) << 64));
    (h.finish() >> 1) as i64
}
