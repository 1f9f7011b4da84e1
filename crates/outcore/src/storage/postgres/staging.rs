//! Staged block bodies on PostgreSQL: written by one process (a dask worker) before the
//! commit another process makes publishes them (see `storage/staged.rs`).
//!
//! * **Stage**: one transaction inserts the body into `outcore_data` (encoded with the
//!   store's compression, like any body) and lists it in `outcore_staged` with its codec,
//!   checksum and length, and the stager's *staging lease*. The reference is the row id.
//! * **Hold**: the process that will publish it adds its own staging lease to the row's
//!   `holders` (and clears `stager`: the body is in its hands now); dropping the hold removes
//!   it again.
//! * **Publish**: the commit transaction, after taking the sequencer row (so no pack runs
//!   between), deletes the `outcore_staged` rows it publishes — checking each still lists a
//!   body with the reference's checksum and length — and points the new version rows at their
//!   bodies: no copy, and the same transaction as everything else the commit writes (a
//!   conflict rolls it all back and leaves the body staged and held).
//! * **Reclaim**: pack (holding the sequencer row) drops the `outcore_staged` rows no live
//!   lease holds (neither the stager's nor any holder's), then the bodies no version row and
//!   no staged row references, as it always did.
//!
//! A **staging lease** is an ordinary lease row at tid `i64::MAX` (it pins no history),
//! renewed by the heartbeat thread like any lease: a process that crashes or is killed stops
//! renewing it, and after `lease_timeout` pack reclaims what only it held.

use std::sync::Arc;

use postgres::types::ToSql;

use super::{chain, db_tid, Inner};
use crate::storage::codec;
use crate::storage::{delta, Key, StagedHold, StagedPlace, StagedRef, Tid};
use crate::{Error, Result};

/// The DDL of the staging table (additive: created when a store that lacks it is opened).
pub(super) const CREATE: &str = "
CREATE TABLE IF NOT EXISTS outcore_staged (
    data_id bigint PRIMARY KEY,
    codec smallint NOT NULL,
    checksum bigint NOT NULL,
    raw_len bigint NOT NULL,
    stager bigint,
    holders bigint[] NOT NULL DEFAULT '{}',
    created timestamptz NOT NULL DEFAULT now()
);
";

/// Registers (again, if pack removed it after a long pause) staging lease `lease` in the
/// transaction `t`.
fn renew(
    t: &mut postgres::Transaction<'_>,
    lease: i64,
) -> std::result::Result<(), postgres::Error> {
    t.execute(
        "INSERT INTO outcore_lease (id, tid) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET heartbeat = now()",
        &[&lease, &db_tid(Tid::MAX)],
    )
    .map(drop)
}

/// [`Storage::stage_body`](crate::storage::Storage::stage_body) for PostgreSQL.
pub(super) fn stage(inner: &Inner, key: Key, bytes: &[u8]) -> Result<Option<StagedRef>> {
    if !key.is_block() {
        return Err(Error::InvalidArgument(format!(
            "{key}: only block versions can be staged"
        )));
    }
    let used = delta::used_len(bytes);
    let e = codec::encode(&bytes[..used], inner.compression);
    let lease = inner.staging_lease()?;
    let (codec, checksum, raw_len) = (
        chain::codec_column(e.codec, false),
        e.checksum as i64,
        e.raw_len as i64,
    );
    let id: i64 = inner.with_client(|c| {
        let mut t = c.transaction()?;
        renew(&mut t, lease)?;
        let id: i64 = t
            .query_one(
                "INSERT INTO outcore_data (bytes) VALUES ($1) RETURNING id",
                &[&&*e.stored],
            )?
            .get(0);
        t.execute(
            "INSERT INTO outcore_staged (data_id, codec, checksum, raw_len, stager)
             VALUES ($1, $2, $3, $4, $5)",
            &[&id, &codec, &checksum, &raw_len, &lease],
        )?;
        t.commit()?;
        Ok(id)
    })?;
    Ok(Some(StagedRef {
        key,
        place: StagedPlace::Row(id),
        len: e.raw_len,
        checksum: e.checksum,
    }))
}

/// The row id of a body this kind of store staged.
fn row_of(version: &StagedRef) -> Result<i64> {
    match version.place {
        StagedPlace::Row(id) => Ok(id),
        _ => Err(version.foreign("a PostgreSQL store")),
    }
}

/// The message for a staged body that is not (or no longer) there.
fn gone(version: &StagedRef) -> Error {
    Error::NotFound(format!(
        "{version} is gone (published already, or its writer ended and a pack reclaimed it); \
         nothing was committed: compute it again"
    ))
}

/// [`Storage::hold_staged`](crate::storage::Storage::hold_staged) for PostgreSQL: adds this
/// process's staging lease to the body's holders.
pub(super) fn hold(inner: &Arc<Inner>, version: &StagedRef) -> Result<StagedHold> {
    let id = row_of(version)?;
    let lease = inner.staging_lease()?;
    let (checksum, len) = (version.checksum as i64, version.len as i64);
    let held = inner.with_client(|c| {
        let mut t = c.transaction()?;
        renew(&mut t, lease)?;
        let n = t.execute(
            "UPDATE outcore_staged SET stager = NULL, holders = array_append(holders, $2::bigint)
             WHERE data_id = $1 AND checksum = $3 AND raw_len = $4",
            &[&id, &lease, &checksum, &len],
        )?;
        t.commit()?;
        Ok(n)
    })?;
    if held == 0 {
        return Err(gone(version));
    }
    Ok(StagedHold::new(RowHold {
        inner: inner.clone(),
        id,
        lease,
    }))
}

/// One process's claim on a staged row; dropping it removes one occurrence of its lease from
/// the row's holders (a published row is gone already: nothing to do).
struct RowHold {
    inner: Arc<Inner>,
    id: i64,
    lease: i64,
}

impl std::fmt::Debug for RowHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "staged row {} held by lease {}", self.id, self.lease)
    }
}

impl Drop for RowHold {
    fn drop(&mut self) {
        let r = self.inner.with_client(|c| {
            Ok(c.execute(
                "UPDATE outcore_staged
                 SET holders = holders[:array_position(holders, $2::bigint) - 1]
                               || holders[array_position(holders, $2::bigint) + 1:]
                 WHERE data_id = $1 AND $2::bigint = ANY(holders)",
                &[&self.id, &self.lease],
            )?)
        });
        if let Err(e) = r {
            tracing::warn!(
                "releasing a staged body (pack reclaims it once the lease expires): {e}"
            );
        }
    }
}

/// The columns of a published body's version row: data id, codec, checksum, raw length.
pub(super) type Published = (i64, i16, i64, i64);

/// In the commit transaction `t`, after it took the sequencer row: takes the staged bodies
/// of `adopted` out of `outcore_staged` and returns their version columns, in order. A body
/// that is gone, or does not match its reference, fails the commit (the caller rolls back).
pub(super) fn publish(
    t: &mut postgres::Transaction<'_>,
    adopted: &[StagedRef],
) -> Result<Vec<Published>> {
    let ids = adopted.iter().map(row_of).collect::<Result<Vec<i64>>>()?;
    let rows = t.query(
        "DELETE FROM outcore_staged s USING outcore_data d
         WHERE s.data_id = d.id AND s.data_id = ANY($1)
         RETURNING s.data_id, s.codec, s.checksum, s.raw_len",
        &[&ids as &(dyn ToSql + Sync)],
    )?;
    let found: std::collections::HashMap<i64, Published> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(0), r.get(1), r.get(2), r.get(3))))
        .collect();
    let mut out = Vec::with_capacity(adopted.len());
    for (r, id) in adopted.iter().zip(&ids) {
        match found.get(id) {
            Some(p) if p.2 == r.checksum as i64 && p.3 == r.len as i64 => out.push(*p),
            Some(_) => {
                return Err(Error::InvalidArgument(format!(
                    "{}: {r:?} does not match the staged body (checksum or length); nothing \
                     was committed",
                    r.key
                )))
            }
            None => return Err(gone(r)),
        }
    }
    Ok(out)
}

/// In pack's transaction `t` (holding the sequencer row), before it deletes unreferenced
/// bodies: drops the staged rows no lease renewed within `timeout_secs` holds.
pub(super) fn reclaim(
    t: &mut postgres::Transaction<'_>,
    timeout_secs: f64,
) -> std::result::Result<u64, postgres::Error> {
    t.execute(
        "DELETE FROM outcore_staged s WHERE NOT EXISTS (
             SELECT 1 FROM outcore_lease l
             WHERE (l.id = s.stager OR l.id = ANY(s.holders))
               AND l.heartbeat > now() - make_interval(secs => $1))",
        &[&timeout_secs],
    )
}
