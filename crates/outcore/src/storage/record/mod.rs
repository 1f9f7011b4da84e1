//! How one stored version is described in an index, and reading it back.
//!
//! Byte layout of an encoded [`VersionRecord`] (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | kind: 0 deletion marker, 1 inline payload, 2 payload in a segment, 3 delta in a segment (format v2) |
//! | 1 | compression code (0 none, 1 lz4, 2 zstd) |
//! | 2..10 | xxh3-64 of the raw payload |
//! | 10..18 | raw (uncompressed) length |
//! | 18.. | kind 1: the stored bytes; kinds 2 and 3: segment u32, offset u64, stored length u64 |
//! | 38.. | kind 3 only: depth u32, chain bytes u64, block length u64, run count u32, then per run first page u32, end page u32 |
//!
//! A delta's payload is its changed pages; the version it changes is the key's previous
//! version ([`Chain`] collects them; `storage::delta` explains the scheme).

use std::borrow::Cow;
use std::fs::File;
use std::sync::Arc;

mod chain;
mod log;

pub(crate) use chain::{packed_payload, Chain};
pub(crate) use log::{decode_log, encode_log};

use super::codec::{self, Compression};
use super::delta::{self, Delta, Tip};
use super::{segment, Extent, Key, Located, Tid, Version};
use crate::{Error, Result};

/// Where a version's payload lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// A deletion marker.
    Tombstone,
    /// Bytes kept in the index itself (metadata records).
    Inline(Vec<u8>),
    /// Bytes in a segment file.
    Segment {
        seg: u32,
        offset: u64,
        stored_len: u64,
    },
    /// Changed pages in a segment file, over the key's previous version.
    Delta {
        seg: u32,
        offset: u64,
        stored_len: u64,
        delta: Delta,
    },
}

impl Body {
    /// Where the payload lies in a segment: segment, offset, stored length.
    pub fn in_segment(&self) -> Option<(u32, u64, u64)> {
        match *self {
            Body::Segment {
                seg,
                offset,
                stored_len,
            }
            | Body::Delta {
                seg,
                offset,
                stored_len,
                ..
            } => Some((seg, offset, stored_len)),
            _ => None,
        }
    }

    /// The same body with its payload moved to `offset` of segment `seg`.
    pub fn moved_to(&self, seg: u32, offset: u64) -> Body {
        match self {
            Body::Segment { stored_len, .. } => Body::Segment {
                seg,
                offset,
                stored_len: *stored_len,
            },
            Body::Delta {
                stored_len, delta, ..
            } => Body::Delta {
                seg,
                offset,
                stored_len: *stored_len,
                delta: delta.clone(),
            },
            other => other.clone(),
        }
    }
}

/// One version of one key, as the index describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VersionRecord {
    pub codec: Compression,
    pub checksum: u64,
    pub raw_len: u64,
    pub body: Body,
}

const HEADER: usize = 18;

impl VersionRecord {
    /// A deletion marker.
    pub fn tombstone() -> Self {
        VersionRecord {
            codec: Compression::None,
            checksum: 0,
            raw_len: 0,
            body: Body::Tombstone,
        }
    }

    /// Serialises the record (layout in the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 20);
        out.push(match self.body {
            Body::Tombstone => 0,
            Body::Inline(_) => 1,
            Body::Segment { .. } => 2,
            Body::Delta { .. } => 3,
        });
        out.push(self.codec.code());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        match &self.body {
            Body::Tombstone => {}
            Body::Inline(bytes) => out.extend_from_slice(bytes),
            Body::Segment { .. } | Body::Delta { .. } => {
                let (seg, offset, stored_len) = self.body.in_segment().expect("in a segment");
                out.extend_from_slice(&seg.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&stored_len.to_le_bytes());
            }
        }
        if let Body::Delta { delta, .. } = &self.body {
            out.extend_from_slice(&delta.depth.to_le_bytes());
            out.extend_from_slice(&delta.chain_bytes.to_le_bytes());
            out.extend_from_slice(&delta.block_len.to_le_bytes());
            out.extend_from_slice(&(delta.runs.len() as u32).to_le_bytes());
            for r in &delta.runs {
                out.extend_from_slice(&r.start.to_le_bytes());
                out.extend_from_slice(&r.end.to_le_bytes());
            }
        }
        out
    }

    /// Parses a record; errors name `key` and `tid`.
    pub fn decode(bytes: &[u8], key: Key, tid: Tid) -> Result<Self> {
        let corrupt = |reason: &str| Error::Corrupt {
            key,
            tid,
            reason: format!("index record: {reason}"),
        };
        if bytes.len() < HEADER {
            return Err(corrupt("too short"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let codec = Compression::from_code(bytes[1]).ok_or_else(|| corrupt("bad codec"))?;
        const DELTA_FIXED: usize = HEADER + 20 + 24;
        let body = match bytes[0] {
            0 => Body::Tombstone,
            1 => Body::Inline(bytes[HEADER..].to_vec()),
            2 if bytes.len() == HEADER + 20 => Body::Segment {
                seg: u32_at(HEADER),
                offset: u64_at(HEADER + 4),
                stored_len: u64_at(HEADER + 12),
            },
            3 if bytes.len() >= DELTA_FIXED => {
                let count = u32_at(DELTA_FIXED - 4) as usize;
                if bytes.len() != DELTA_FIXED + 8 * count {
                    return Err(corrupt("bad delta run count"));
                }
                let runs: Vec<_> = (0..count)
                    .map(|i| u32_at(DELTA_FIXED + 8 * i)..u32_at(DELTA_FIXED + 8 * i + 4))
                    .collect();
                let delta = Delta {
                    runs,
                    depth: u32_at(HEADER + 20),
                    chain_bytes: u64_at(HEADER + 24),
                    block_len: u64_at(HEADER + 32),
                };
                // Readers allocate and index by these: a damaged record must fail here.
                delta.check().map_err(|why| corrupt(&why))?;
                Body::Delta {
                    seg: u32_at(HEADER),
                    offset: u64_at(HEADER + 4),
                    stored_len: u64_at(HEADER + 12),
                    delta,
                }
            }
            _ => return Err(corrupt("bad kind or length")),
        };
        Ok(VersionRecord {
            codec,
            checksum: u64_at(2),
            raw_len: u64_at(10),
            body,
        })
    }

    /// The stored (possibly compressed) bytes: borrowed when inline, read from the segment
    /// otherwise. `None` for a tombstone.
    fn stored(
        &self,
        key: Key,
        segment_file: impl FnOnce(u32) -> Result<Arc<File>>,
    ) -> Result<Option<Cow<'_, [u8]>>> {
        Ok(Some(match &self.body {
            Body::Tombstone => return Ok(None),
            Body::Inline(bytes) => Cow::Borrowed(&bytes[..]),
            Body::Segment { .. } | Body::Delta { .. } => {
                let (seg, offset, stored_len) = self.body.in_segment().expect("in a segment");
                let file = segment_file(seg)?;
                Cow::Owned(segment::read(&file, offset, stored_len, &key.to_string())?)
            }
        }))
    }

    /// Copies the payload out, decompressed and checksum-verified. `None` for a tombstone.
    pub fn load(
        &self,
        key: Key,
        tid: Tid,
        segment_file: impl FnOnce(u32) -> Result<Arc<File>>,
    ) -> Result<Option<Version>> {
        let Some(stored) = self.stored(key, segment_file)? else {
            return Ok(None);
        };
        let data = codec::decode(
            stored.into_owned(),
            self.codec,
            self.raw_len,
            self.checksum,
            key,
            tid,
        )?;
        Ok(Some(Version { tid, data }))
    }

    /// Like [`VersionRecord::load`], but decodes into the front of `out`; the length written.
    pub fn load_into(
        &self,
        key: Key,
        tid: Tid,
        segment_file: impl FnOnce(u32) -> Result<Arc<File>>,
        out: &mut [u8],
    ) -> Result<Option<usize>> {
        let Some(stored) = self.stored(key, segment_file)? else {
            return Ok(None);
        };
        codec::decode_into(
            &stored,
            self.codec,
            self.raw_len,
            self.checksum,
            key,
            tid,
            out,
        )
        .map(Some)
    }

    /// Says where the payload is, opening its segment only if it can be mapped.
    pub fn locate(
        &self,
        key: Key,
        tid: Tid,
        segment_file: impl FnOnce(u32) -> Result<Arc<File>>,
    ) -> Result<Located> {
        Ok(match &self.body {
            Body::Tombstone => Located::Absent,
            Body::Segment {
                seg,
                offset,
                stored_len,
            } if self.codec == Compression::None => {
                let file =
                    checked_segment(key, tid, segment_file(*seg)?, *seg, offset + stored_len)?;
                Located::Mapped(Extent {
                    file,
                    offset: *offset,
                    len: *stored_len,
                    tid,
                    checksum: self.checksum,
                })
            }
            _ => Located::CopyOnly(tid),
        })
    }

    /// Bytes the payload occupies in a segment (0 if not in one).
    pub fn segment_bytes(&self) -> u64 {
        self.body.in_segment().map_or(0, |(_, _, len)| len)
    }

    /// The chain this version ends, for planning the next one; `None` for a deletion.
    pub fn tip(&self) -> Option<Tip> {
        match &self.body {
            Body::Tombstone => None,
            Body::Delta { delta, .. } => Some(Tip {
                depth: delta.depth,
                chain_bytes: delta.chain_bytes,
                block_len: delta.block_len,
            }),
            _ => Some(Tip {
                depth: 0,
                chain_bytes: 0,
                block_len: self.raw_len,
            }),
        }
    }

    /// The delta this version stores, if it is one.
    pub fn delta(&self) -> Option<&Delta> {
        match &self.body {
            Body::Delta { delta, .. } => Some(delta),
            _ => None,
        }
    }
}

/// Encodes one write of a commit into a record: metadata records inline and uncompressed,
/// block payloads (whole or a delta, see [`delta::plan`]) compressed with `compression` and
/// stored by `append`, which returns the segment and offset it put them at. `tip` is the
/// chain the key's current version ends (`None`: no version or a deletion).
pub(crate) fn encode_write(
    key: Key,
    write: &super::Write,
    tip: Option<Tip>,
    compression: Compression,
    mut append: impl FnMut(&[u8]) -> Result<(u32, u64)>,
) -> Result<VersionRecord> {
    if !key.is_block() {
        let Some(raw) = write.bytes() else {
            return Ok(VersionRecord::tombstone());
        };
        let e = codec::encode(raw, Compression::None);
        return Ok(VersionRecord {
            codec: e.codec,
            checksum: e.checksum,
            raw_len: e.raw_len,
            body: Body::Inline(e.stored.into_owned()),
        });
    }
    let (raw, delta) = match delta::plan(key, write, tip)? {
        None => return Ok(VersionRecord::tombstone()),
        Some(delta::Plan::Whole(bytes)) => (Cow::Borrowed(bytes), None),
        Some(delta::Plan::Delta { payload, delta }) => (Cow::Owned(payload), Some(delta)),
    };
    let e = codec::encode(&raw, compression);
    let (seg, offset) = append(&e.stored)?;
    let stored_len = e.stored.len() as u64;
    Ok(VersionRecord {
        codec: e.codec,
        checksum: e.checksum,
        raw_len: e.raw_len,
        body: match delta {
            None => Body::Segment {
                seg,
                offset,
                stored_len,
            },
            Some(delta) => Body::Delta {
                seg,
                offset,
                stored_len,
                delta,
            },
        },
    })
}

/// `file` (segment `seg`) if it holds at least `end` bytes: mapping bytes past the end of a
/// (damaged, truncated) file would kill the process with SIGBUS on first touch.
fn checked_segment(key: Key, tid: Tid, file: Arc<File>, seg: u32, end: u64) -> Result<Arc<File>> {
    let size = file
        .metadata()
        .map_err(|e| Error::io("reading segment size", e))?
        .len();
    if size < end {
        return Err(Error::Corrupt {
            key,
            tid,
            reason: format!("segment {seg} is truncated ({size} bytes, the version ends at {end})"),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Oid;

    #[test]
    fn records_roundtrip() {
        let key = Key::Meta(Oid(3));
        for body in [
            Body::Tombstone,
            Body::Inline(b"hello".to_vec()),
            Body::Segment {
                seg: 7,
                offset: 8192,
                stored_len: 100,
            },
            Body::Delta {
                seg: 7,
                offset: 8192,
                stored_len: 100,
                delta: Delta {
                    runs: vec![0..2, 5..6],
                    depth: 3,
                    chain_bytes: 9 * 4096,
                    block_len: 6 * 4096,
                },
            },
        ] {
            let r = VersionRecord {
                codec: Compression::Lz4,
                checksum: 42,
                raw_len: 9,
                body,
            };
            assert_eq!(VersionRecord::decode(&r.encode(), key, Tid(1)).unwrap(), r);
        }
        assert!(VersionRecord::decode(&[2, 0, 1], key, Tid(1)).is_err());
        // A delta record whose run count disagrees with its length.
        let mut bad = VersionRecord {
            codec: Compression::None,
            checksum: 0,
            raw_len: 4096,
            body: Body::Delta {
                seg: 1,
                offset: 0,
                stored_len: 4096,
                delta: Delta {
                    runs: std::iter::once(0..1).collect(),
                    depth: 1,
                    chain_bytes: 4096,
                    block_len: 4096,
                },
            },
        }
        .encode();
        bad.pop();
        assert!(VersionRecord::decode(&bad, key, Tid(1)).is_err());
    }
}
