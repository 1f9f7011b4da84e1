//! Pack of [`PgStorage`](super::PgStorage): removing the versions no snapshot or lease can
//! reach, folding the deltas whose base goes, and reclaiming unreferenced bodies.

use super::*;

impl Inner {
    /// [`Storage::pack`](super::Storage::pack).
    pub(super) fn pack(&self, upto: Tid) -> Result<PackStats> {
        let timeout = self.lease_timeout.as_secs_f64();
        let compression = self.compression;
        self.with_client(|c| {
            let mut t = c.transaction()?;
            // Serialise with commits: no version can appear below the horizon meanwhile.
            let head: i64 = t
                .query_one("SELECT tid FROM outcore_head FOR UPDATE", &[])?
                .get(0);
            let old: i64 = t
                .query_one("SELECT pack_horizon FROM outcore_head", &[])?
                .get(0);
            let lease: Option<i64> = t
                .query_one(
                    "SELECT min(tid) FROM outcore_lease
                     WHERE heartbeat > now() - make_interval(secs => $1)",
                    &[&timeout],
                )?
                .get(0);
            let horizon = db_tid(upto)
                .min(head)
                .min(lease.unwrap_or(i64::MAX))
                .max(old);
            let before: i64 = t
                .query_one(
                    "SELECT coalesce(sum(octet_length(bytes)), 0)::bigint FROM outcore_data",
                    &[],
                )?
                .get(0);
            fold_deltas(&mut t, horizon, compression)?;
            staging::reclaim(&mut t, timeout)?;
            let removed = t.execute(
                "DELETE FROM outcore_obj o USING (
                     SELECT tag, oid, idx, max(tid) AS keep FROM outcore_obj
                     WHERE tid <= $1 GROUP BY tag, oid, idx) k
                 WHERE o.tag = k.tag AND o.oid = k.oid AND o.idx = k.idx
                   AND (o.tid < k.keep
                        OR (o.tid = k.keep AND o.data_id IS NULL AND o.inline IS NULL))",
                &[&horizon],
            )?;
            t.execute(
                "DELETE FROM outcore_data d
                 WHERE NOT EXISTS (SELECT 1 FROM outcore_obj o WHERE o.data_id = d.id)
                   AND NOT EXISTS (SELECT 1 FROM outcore_staged s WHERE s.data_id = d.id)",
                &[],
            )?;
            t.execute("DELETE FROM outcore_log WHERE tid <= $1", &[&horizon])?;
            t.execute(
                "DELETE FROM outcore_lease
                 WHERE heartbeat <= now() - make_interval(secs => $1)",
                &[&timeout],
            )?;
            t.execute("UPDATE outcore_head SET pack_horizon = $1", &[&horizon])?;
            let after: i64 = t
                .query_one(
                    "SELECT coalesce(sum(octet_length(bytes)), 0)::bigint FROM outcore_data",
                    &[],
                )?
                .get(0);
            let kept: i64 = t.query_one("SELECT count(*) FROM outcore_obj", &[])?.get(0);
            t.commit()?;
            Ok(PackStats {
                horizon: Tid(horizon as u64),
                versions_removed: removed,
                versions_kept: kept as u64,
                body_bytes_before: before as u64,
                body_bytes_after: after as u64,
            })
        })
    }
}

/// For pack at `horizon` (in its transaction, before it removes versions): rewrites as
/// whole versions (composed, stored short, compressed with `compression`) each delta kept at
/// the horizon, whose base pack removes, and each key's newest version if it is a delta, so
/// every kept chain still starts at a whole version and the newest versions read in one
/// piece. Other deltas stay: folding their base does not change what it composes to.
fn fold_deltas(
    t: &mut postgres::Transaction<'_>,
    horizon: i64,
    compression: Compression,
) -> Result<()> {
    let fold = t.query(
        "SELECT o.tag, o.oid, o.idx, o.tid FROM outcore_obj o JOIN (
             SELECT tag, oid, idx, max(tid) AS keep FROM outcore_obj
             WHERE tid <= $1 GROUP BY tag, oid, idx) k
           ON o.tag = k.tag AND o.oid = k.oid AND o.idx = k.idx AND o.tid = k.keep
         WHERE o.runs IS NOT NULL
         UNION
         SELECT o.tag, o.oid, o.idx, o.tid FROM outcore_obj o JOIN outcore_obj_head h
           ON o.tag = h.tag AND o.oid = h.oid AND o.idx = h.idx AND o.tid = h.tid
         WHERE o.runs IS NOT NULL",
        &[&horizon],
    )?;
    if fold.is_empty() {
        return Ok(());
    }
    let insert_body = t.prepare("INSERT INTO outcore_data (bytes) VALUES ($1) RETURNING id")?;
    let rewrite = t.prepare(
        "UPDATE outcore_obj SET data_id = $5, codec = $6, checksum = $7, raw_len = $8,
                runs = NULL, depth = NULL, chain_bytes = NULL, block_len = NULL
         WHERE tag = $1 AND oid = $2 AND idx = $3 AND tid = $4",
    )?;
    for r in &fold {
        let (tag, oid, idx, tid): (i16, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        let key = key_from_cols(tag, oid, idx);
        let at = Tid(tid as u64);
        let rows = chain::query(t, &[key], at)?;
        let mut chains = chain::parse(&[key], at, &rows)?;
        let data = chain::compose(key, chains.remove(&key).unwrap_or_default())?
            .map(|v| v.data)
            .unwrap_or_default();
        let e = codec::encode(&data[..delta::used_len(&data)], compression);
        let id: i64 = t.query_one(&insert_body, &[&&*e.stored])?.get(0);
        let (codec, checksum, raw_len) = (
            i16::from(e.codec.code()),
            e.checksum as i64,
            e.raw_len as i64,
        );
        t.execute(
            &rewrite,
            &[&tag, &oid, &idx, &tid, &id, &codec, &checksum, &raw_len],
        )?;
    }
    Ok(())
}
