//! Version rows and the delta chains a read composes (format v2).
//!
//! A block version's `outcore_obj` row is **whole** (`runs` NULL: its bytes up to the last
//! non-zero page) or a **delta** (`runs`, `depth`, `chain_bytes`, `block_len` set: the changed
//! pages over the key's previous version; `storage::delta` explains the scheme). A read
//! fetches, in one statement, the version it wants and the versions below it down to the
//! first whole one ([`query`], [`parse`]), then composes them ([`compose`], [`compose_into`]).

use std::collections::HashMap;
use std::ops::Range;

use postgres::GenericClient;

use crate::storage::codec::{self, Compression};
use crate::storage::delta::{self, Delta, Tip};
use crate::storage::{Key, Tid, Version};
use crate::{Error, Result};

use super::{db_tid, key_cols, key_from_cols};

/// The chains of a list of keys at `$4`, with the pack horizon in the same statement (one
/// snapshot: a pack committing meanwhile is seen entirely or not at all). Per key: its newest
/// versions `<= $4`, newest first, at most `$5` of them, cut after the first that is not a
/// delta (a whole version or a deletion); bodies are joined only for those. When no key has
/// a version, one row whose version columns are NULL.
const CHAINS_SQL: &str = "SELECT h.pack_horizon, v.* FROM outcore_head h LEFT JOIN (
         SELECT c.tag, c.oid, c.idx, c.tid, c.data_id, c.codec, c.checksum, c.raw_len,
                c.inline, c.runs, c.depth, c.chain_bytes, c.block_len, d.bytes
         FROM unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS k(tag, oid, idx)
         CROSS JOIN LATERAL (
             SELECT o.*, count(*) FILTER (WHERE o.runs IS NULL) OVER (
                        ORDER BY o.tid DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                    ) AS newer_whole
             FROM (SELECT * FROM outcore_obj o
                   WHERE o.tag = k.tag AND o.oid = k.oid AND o.idx = k.idx AND o.tid <= $4
                   ORDER BY o.tid DESC LIMIT $5) o) c
         LEFT JOIN outcore_data d ON d.id = c.data_id
         WHERE c.newer_whole = 0) v ON true
     ORDER BY v.tag, v.oid, v.idx, v.tid DESC";

/// Added to a delta's `codec` column: a build that predates deltas, still connected when the
/// schema was upgraded, then refuses a delta as an unknown codec instead of reading its
/// changed pages as the whole block.
pub(super) const DELTA_CODEC: i16 = 16;

/// The `codec` column of a version compressed with `codec`, a delta or not.
pub(super) fn codec_column(codec: Compression, delta: bool) -> i16 {
    i16::from(codec.code()) + if delta { DELTA_CODEC } else { 0 }
}

/// One version as its row holds it.
pub(super) struct StoredRow {
    /// The version's tid.
    pub tid: Tid,
    /// The stored (possibly compressed) payload; `None` for a deletion.
    pub stored: Option<Vec<u8>>,
    /// How the payload is compressed.
    pub codec: Compression,
    /// Length of the decoded payload: the (short) block, or a delta's changed pages.
    pub raw_len: u64,
    /// xxh3-64 of the decoded payload.
    pub checksum: u64,
    /// What a delta changes; `None` for a whole version or a deletion.
    pub delta: Option<Delta>,
}

impl StoredRow {
    /// Parses a row with the columns of `outcore_obj` (and `bytes`, the body, NULL when
    /// there is none); `None` when its `tid` is NULL (no version found).
    pub fn from_row(key: Key, row: &postgres::Row) -> Result<Option<Self>> {
        let Some(tid) = row.get::<_, Option<i64>>("tid") else {
            return Ok(None);
        };
        let tid = Tid(tid as u64);
        let corrupt = |reason: String| Error::Corrupt { key, tid, reason };
        let data_id: Option<i64> = row.get("data_id");
        let inline: Option<Vec<u8>> = row.get("inline");
        let stored = match (inline, data_id) {
            (Some(bytes), _) => Some(bytes),
            (None, Some(id)) => Some(
                row.get::<_, Option<Vec<u8>>>("bytes")
                    .ok_or_else(|| corrupt(format!("body {id} is missing")))?,
            ),
            (None, None) => None,
        };
        let runs = row.get::<_, Option<Vec<u8>>>("runs");
        let offset = if runs.is_some() { DELTA_CODEC } else { 0 };
        let code = row.get::<_, i16>("codec").saturating_sub(offset);
        let codec = u8::try_from(code)
            .ok()
            .and_then(Compression::from_code)
            .ok_or_else(|| corrupt("unknown codec".into()))?;
        let delta = match runs {
            None => None,
            Some(runs) => {
                let runs = decode_runs(&runs)
                    .ok_or_else(|| corrupt("malformed delta page runs".into()))?;
                let (depth, chain_bytes, block_len) = (
                    row.get::<_, Option<i32>>("depth"),
                    row.get::<_, Option<i64>>("chain_bytes"),
                    row.get::<_, Option<i64>>("block_len"),
                );
                let (Some(depth), Some(chain_bytes), Some(block_len)) =
                    (depth, chain_bytes, block_len)
                else {
                    return Err(corrupt("delta without its chain columns".into()));
                };
                Some(Delta {
                    runs,
                    depth: depth as u32,
                    chain_bytes: chain_bytes as u64,
                    block_len: block_len as u64,
                })
            }
        };
        Ok(Some(StoredRow {
            tid,
            stored,
            codec,
            raw_len: row.get::<_, i64>("raw_len") as u64,
            checksum: row.get::<_, i64>("checksum") as u64,
            delta,
        }))
    }

    /// Decodes the payload (checksum-verified); `None` for a deletion. Of a delta, its
    /// changed pages, checked against its runs.
    pub fn payload(self, key: Key) -> Result<Option<Vec<u8>>> {
        let Some(stored) = self.stored else {
            return Ok(None);
        };
        let bytes = codec::decode(
            stored,
            self.codec,
            self.raw_len,
            self.checksum,
            key,
            self.tid,
        )?;
        if let Some(d) = &self.delta {
            if d.payload_len() != bytes.len() as u64 {
                return Err(Error::Corrupt {
                    key,
                    tid: self.tid,
                    reason: format!(
                        "delta payload of {} bytes for {} changed bytes",
                        bytes.len(),
                        d.payload_len()
                    ),
                });
            }
        }
        Ok(Some(bytes))
    }
}

/// The chain the version with these columns ends, for planning the next one (`None`: a
/// deletion, or no version).
pub(super) fn tip(
    has_payload: bool,
    raw_len: Option<i64>,
    delta: (Option<i32>, Option<i64>, Option<i64>),
) -> Option<Tip> {
    if !has_payload {
        return None;
    }
    Some(match delta {
        (Some(depth), Some(chain_bytes), Some(block_len)) => Tip {
            depth: depth as u32,
            chain_bytes: chain_bytes as u64,
            block_len: block_len as u64,
        },
        _ => Tip {
            depth: 0,
            chain_bytes: 0,
            block_len: raw_len.unwrap_or(0) as u64,
        },
    })
}

/// `runs` as stored in `outcore_obj.runs`: per run its first and end page, u32 little-endian.
pub(super) fn encode_runs(runs: &[Range<u32>]) -> Vec<u8> {
    runs.iter()
        .flat_map(|r| [r.start.to_le_bytes(), r.end.to_le_bytes()])
        .flatten()
        .collect()
}

/// Inverse of [`encode_runs`]; `None` for bytes it cannot have made.
fn decode_runs(bytes: &[u8]) -> Option<Vec<Range<u32>>> {
    if bytes.len() % 8 != 0 {
        return None;
    }
    let u32_at = |c: &[u8]| u32::from_le_bytes(c.try_into().expect("4 bytes"));
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u32_at(&c[..4])..u32_at(&c[4..]))
            .collect(),
    )
}

/// Fetches the chains of `keys` at `at`, in one statement (parse them with [`parse`]).
pub(super) fn query(
    client: &mut impl GenericClient,
    keys: &[Key],
    at: Tid,
) -> Result<Vec<postgres::Row>> {
    let mut unique: Vec<Key> = keys.to_vec();
    unique.sort();
    unique.dedup();
    let cols: Vec<(i16, i64, i64)> = unique.iter().map(|&k| key_cols(k)).collect();
    let tags: Vec<i16> = cols.iter().map(|c| c.0).collect();
    let oids: Vec<i64> = cols.iter().map(|c| c.1).collect();
    let idxs: Vec<i64> = cols.iter().map(|c| c.2).collect();
    let limit = i64::from(delta::MAX_DEPTH) + 1;
    Ok(client.query(CHAINS_SQL, &[&tags, &oids, &idxs, &db_tid(at), &limit])?)
}

/// The chains [`query`] fetched for `keys` at `at`: per key, its versions newest first, from
/// the newest `<= at` down to the first whole one (no entry: no version). Fails with
/// [`Error::SnapshotTooOld`] for a key without a version when `at` is below the pack
/// horizon (pack may have removed it).
pub(super) fn parse(
    keys: &[Key],
    at: Tid,
    rows: &[postgres::Row],
) -> Result<HashMap<Key, Vec<StoredRow>>> {
    let mut chains: HashMap<Key, Vec<StoredRow>> = HashMap::with_capacity(keys.len());
    let mut horizon = Tid::ZERO;
    for row in rows {
        horizon = Tid(row.get::<_, i64>("pack_horizon") as u64);
        let Some(tag) = row.get::<_, Option<i16>>("tag") else {
            continue;
        };
        let key = key_from_cols(tag, row.get("oid"), row.get("idx"));
        if let Some(version) = StoredRow::from_row(key, row)? {
            chains.entry(key).or_default().push(version);
        }
    }
    if keys.iter().any(|k| !chains.contains_key(k)) {
        crate::storage::check_horizon(at, horizon)?;
    }
    Ok(chains)
}

/// Checks that `rows` (one key's, newest first, as [`parse`] returns them) form a chain: the
/// version read, the deltas below it, and the whole version they start from. `None` when
/// the version read is a deletion (or there is none).
fn chain(key: Key, mut rows: Vec<StoredRow>) -> Result<Option<Vec<StoredRow>>> {
    match rows.first() {
        Some(newest) if newest.stored.is_some() => {}
        _ => return Ok(None),
    }
    let whole = rows.iter().position(|r| r.delta.is_none());
    let Some(whole) = whole.filter(|&w| rows[w].stored.is_some()) else {
        let tid = rows.last().map_or(Tid::ZERO, |r| r.tid);
        return Err(Error::Corrupt {
            key,
            tid,
            reason: "delta without the version it changes (or a chain longer than the \
                     format allows)"
                .into(),
        });
    };
    rows.truncate(whole + 1);
    Ok(Some(rows))
}

/// Composes the version `rows` lead to (see [`chain`]): its bytes, `None` for a deletion.
pub(super) fn compose(key: Key, rows: Vec<StoredRow>) -> Result<Option<Version>> {
    let Some(rows) = chain(key, rows)? else {
        return Ok(None);
    };
    let tid = rows[0].tid;
    let Some(newest) = &rows[0].delta else {
        let whole = rows
            .into_iter()
            .next()
            .ok_or_else(|| unreachable_chain(key, tid))?;
        return Ok(whole.payload(key)?.map(|data| Version { tid, data }));
    };
    if newest.block_len > codec::MAX_PAYLOAD {
        return Err(Error::Corrupt {
            key,
            tid,
            reason: format!("composed length {} is too large", newest.block_len),
        });
    }
    let mut data = vec![0u8; newest.block_len as usize];
    let n = compose_chain(key, rows, &mut data)?;
    data.truncate(n);
    Ok(Some(Version { tid, data }))
}

/// Composes the version `rows` lead to into the front of `out`: the length written, `None`
/// for a deletion.
pub(super) fn compose_into(
    key: Key,
    rows: Vec<StoredRow>,
    out: &mut [u8],
) -> Result<Option<usize>> {
    match chain(key, rows)? {
        None => Ok(None),
        Some(rows) => compose_chain(key, rows, out).map(Some),
    }
}

/// The error for a chain whose shape [`chain`] already checked.
fn unreachable_chain(key: Key, tid: Tid) -> Error {
    Error::Corrupt {
        key,
        tid,
        reason: "a whole version with deltas below it".into(),
    }
}

/// Composes a checked chain (newest first) into `out`: the whole version, zeros up to the
/// composed length, then each delta's pages, oldest first.
fn compose_chain(key: Key, mut rows: Vec<StoredRow>, out: &mut [u8]) -> Result<usize> {
    let tid = rows[0].tid;
    let base = rows.pop().ok_or_else(|| unreachable_chain(key, tid))?;
    let stored = base
        .stored
        .as_deref()
        .ok_or_else(|| unreachable_chain(key, base.tid))?;
    let Some(newest) = rows.first().and_then(|r| r.delta.as_ref()) else {
        return codec::decode_into(
            stored,
            base.codec,
            base.raw_len,
            base.checksum,
            key,
            base.tid,
            out,
        );
    };
    let out = delta::composed_front(newest, out, key, tid)?;
    let len = out.len();
    let n = codec::decode_into(
        stored,
        base.codec,
        base.raw_len,
        base.checksum,
        key,
        base.tid,
        out,
    )?;
    out[n..].fill(0);
    for mut row in rows.into_iter().rev() {
        let row_tid = row.tid;
        let delta = row
            .delta
            .take()
            .ok_or_else(|| unreachable_chain(key, row_tid))?;
        // `apply` checks the payload against the runs.
        let payload = row.payload(key)?.unwrap_or_default();
        delta::apply(&delta, &payload, out, key, row_tid)?;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_roundtrip_and_bad_runs_are_refused() {
        let runs = vec![0..2, 5..6, 9..64];
        assert_eq!(decode_runs(&encode_runs(&runs)), Some(runs));
        assert_eq!(decode_runs(&[]), Some(vec![]));
        assert_eq!(decode_runs(&[1, 2, 3]), None);
    }
}
