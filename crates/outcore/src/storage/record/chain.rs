//! Reading a version stored as a delta: [`Chain`], the version and the versions it is stored
//! over, composed on read; and pack's rewriting of such chains ([`packed_payload`]).

use std::collections::HashSet;
use std::fs::File;
use std::sync::Arc;

use super::{checked_segment, Body, VersionRecord};
use crate::storage::codec::{self, Compression};
use crate::storage::delta;
use crate::storage::{segment, Key, Located, Tid, Version};
use crate::{Error, Result};

/// For pack: the payload to copy for version `all[i]` (of `all`, every version of the store
/// sorted by key and tid; `removed` are those pack drops), with its record (whose body pack
/// then moves with [`Body::moved_to`]). `None` for versions without a segment payload.
///
/// A delta is folded into a whole version (composed, trailing zero pages dropped, compressed
/// with `compression`) when the version it changes is removed (it is the one kept at the
/// horizon) or when it is its key's newest version: what readers map most then takes one
/// extent, and every chain still ends at a whole version. A delta's contents never change by
/// folding its base, so the deltas kept over it stay valid.
pub(crate) fn packed_payload(
    all: &[(Key, Tid, VersionRecord)],
    i: usize,
    removed: &HashSet<(Key, Tid)>,
    compression: Compression,
    segment_file: &dyn Fn(u32) -> Result<Arc<File>>,
) -> Result<Option<(Vec<u8>, VersionRecord)>> {
    let (key, tid, rec) = &all[i];
    let Some((seg, offset, stored_len)) = rec.body.in_segment() else {
        return Ok(None);
    };
    let previous = i.checked_sub(1).map(|p| &all[p]).filter(|p| p.0 == *key);
    let newest = all.get(i + 1).is_none_or(|n| n.0 != *key);
    let base_removed = previous.is_none_or(|p| removed.contains(&(p.0, p.1)));
    if rec.delta().is_none() || !(newest || base_removed) {
        let file = segment_file(seg)?;
        let bytes = segment::read(&file, offset, stored_len, &key.to_string())?;
        return Ok(Some((bytes, rec.clone())));
    }
    let chain = Chain::collect(*key, (*tid, rec.clone()), |before| {
        let at = all.partition_point(|(k, t, _)| (*k, *t) <= (*key, before));
        Ok(at
            .checked_sub(1)
            .map(|j| &all[j])
            .filter(|(k, _, _)| k == key)
            .map(|(_, t, r)| (*t, r.clone())))
    })?;
    let data = chain
        .load(*key, segment_file)?
        .map(|v| v.data)
        .unwrap_or_default();
    let e = codec::encode(&data[..delta::used_len(&data)], compression);
    let record = VersionRecord {
        codec: e.codec,
        checksum: e.checksum,
        raw_len: e.raw_len,
        body: Body::Segment {
            seg,
            offset,
            stored_len: e.stored.len() as u64,
        },
    };
    Ok(Some((e.stored.into_owned(), record)))
}

/// A version and the versions it is stored over: a whole version first, then deltas, oldest
/// first; the version read is the last. A version that is not a delta is a chain of one.
#[derive(Clone, Debug)]
pub(crate) struct Chain(Vec<(Tid, VersionRecord)>);

impl Chain {
    /// The chain of `newest`: while the oldest version collected is a delta, `previous(tid)`
    /// gives the key's version just before `tid`.
    pub fn collect(
        key: Key,
        newest: (Tid, VersionRecord),
        mut previous: impl FnMut(Tid) -> Result<Option<(Tid, VersionRecord)>>,
    ) -> Result<Chain> {
        let mut versions = vec![newest];
        loop {
            let (tid, oldest) = versions.last().expect("never empty");
            let Some(depth) = oldest.delta().map(|d| d.depth) else {
                break;
            };
            let tid = *tid;
            let corrupt = |reason: &str| Error::Corrupt {
                key,
                tid,
                reason: reason.into(),
            };
            if versions.len() > delta::MAX_DEPTH as usize + 1
                || depth as usize > delta::MAX_DEPTH as usize
            {
                return Err(corrupt("delta chain longer than the format allows"));
            }
            match previous(Tid(tid.0.saturating_sub(1)))? {
                Some((t, rec)) if t < tid && rec.body != Body::Tombstone => versions.push((t, rec)),
                _ => return Err(corrupt("delta without the version it changes")),
            }
        }
        versions.reverse();
        Ok(Chain(versions))
    }

    /// The version read (the newest of the chain).
    pub fn version(&self) -> (Tid, &VersionRecord) {
        let (tid, rec) = self.0.last().expect("never empty");
        (*tid, rec)
    }

    /// Copies the composed version out. `None` for a deletion.
    pub fn load(
        &self,
        key: Key,
        segment_file: &dyn Fn(u32) -> Result<Arc<File>>,
    ) -> Result<Option<Version>> {
        let (tid, rec) = self.version();
        let Some(delta) = rec.delta() else {
            return rec.load(key, tid, segment_file);
        };
        let mut data = vec![0u8; delta.block_len as usize];
        let n = self.load_into(key, segment_file, &mut data)?;
        data.truncate(n.unwrap_or(0));
        Ok(Some(Version { tid, data }))
    }

    /// Composes the version into the front of `out`; the length written. `None` for a
    /// deletion.
    pub fn load_into(
        &self,
        key: Key,
        segment_file: &dyn Fn(u32) -> Result<Arc<File>>,
        out: &mut [u8],
    ) -> Result<Option<usize>> {
        let (tid, rec) = self.version();
        let Some(newest) = rec.delta() else {
            return rec.load_into(key, tid, segment_file, out);
        };
        let out = delta::composed_front(newest, out, key, tid)?;
        let len = out.len();
        let (base_tid, base) = &self.0[0];
        let n = base
            .load_into(key, *base_tid, segment_file, out)?
            .unwrap_or(0);
        out[n.min(len)..].fill(0);
        for (tid, rec) in &self.0[1..] {
            let delta = rec
                .delta()
                .expect("a chain is a whole version, then deltas");
            let payload = rec
                .load(key, *tid, segment_file)?
                .map(|v| v.data)
                .unwrap_or_default();
            delta::apply(delta, &payload, out, key, *tid)?;
        }
        Ok(Some(len))
    }

    /// Says where the composed version lies: [`Located::Mapped`] for an uncompressed whole
    /// version, [`Located::Pieces`] for uncompressed deltas over one, else
    /// [`Located::CopyOnly`].
    pub fn locate(
        &self,
        key: Key,
        segment_file: &dyn Fn(u32) -> Result<Arc<File>>,
    ) -> Result<Located> {
        let (tid, rec) = self.version();
        let Some(newest) = rec.delta() else {
            return rec.locate(key, tid, segment_file);
        };
        let (base_tid, base) = &self.0[0];
        let Located::Mapped(base) = base.locate(key, *base_tid, segment_file)? else {
            return Ok(Located::CopyOnly(tid));
        };
        let mut deltas = Vec::with_capacity(self.0.len() - 1);
        for (tid, rec) in &self.0[1..] {
            let (
                Body::Delta {
                    seg,
                    offset,
                    stored_len,
                    delta,
                },
                Compression::None,
            ) = (&rec.body, rec.codec)
            else {
                return Ok(Located::CopyOnly(*tid));
            };
            let file = checked_segment(key, *tid, segment_file(*seg)?, *seg, offset + stored_len)?;
            deltas.push((file, *offset, delta));
        }
        Ok(Located::Pieces {
            tid,
            pieces: delta::pieces(
                Some((base.file, base.offset, base.len)),
                &deltas,
                newest.block_len,
            ),
        })
    }
}
