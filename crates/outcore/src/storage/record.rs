//! How one stored version is described in an index, and reading it back.
//!
//! Byte layout of an encoded [`VersionRecord`] (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0 | kind: 0 deletion marker, 1 inline payload, 2 payload in a segment |
//! | 1 | compression code (0 none, 1 lz4, 2 zstd) |
//! | 2..10 | xxh3-64 of the raw payload |
//! | 10..18 | raw (uncompressed) length |
//! | 18.. | kind 1: the stored bytes; kind 2: segment u32, offset u64, stored length u64 |

use std::borrow::Cow;
use std::fs::File;
use std::sync::Arc;

use super::codec::{self, Compression};
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
        });
        out.push(self.codec.code());
        out.extend_from_slice(&self.checksum.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        match &self.body {
            Body::Tombstone => {}
            Body::Inline(bytes) => out.extend_from_slice(bytes),
            Body::Segment {
                seg,
                offset,
                stored_len,
            } => {
                out.extend_from_slice(&seg.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&stored_len.to_le_bytes());
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
        let codec = Compression::from_code(bytes[1]).ok_or_else(|| corrupt("bad codec"))?;
        let body = match bytes[0] {
            0 => Body::Tombstone,
            1 => Body::Inline(bytes[HEADER..].to_vec()),
            2 if bytes.len() == HEADER + 20 => Body::Segment {
                seg: u32::from_le_bytes(bytes[HEADER..HEADER + 4].try_into().expect("4 bytes")),
                offset: u64_at(HEADER + 4),
                stored_len: u64_at(HEADER + 12),
            },
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
            Body::Segment {
                seg,
                offset,
                stored_len,
            } => {
                let file = segment_file(*seg)?;
                Cow::Owned(segment::read(
                    &file,
                    *offset,
                    *stored_len,
                    &key.to_string(),
                )?)
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
                let file = segment_file(*seg)?;
                // Mapping bytes past the end of a (damaged, truncated) file would kill the
                // process with SIGBUS on first touch: refuse here instead.
                let size = file
                    .metadata()
                    .map_err(|e| Error::io("reading segment size", e))?
                    .len();
                if size < offset + stored_len {
                    return Err(Error::Corrupt {
                        key,
                        tid,
                        reason: format!(
                            "segment {seg} is truncated ({size} bytes, the version ends at {})",
                            offset + stored_len
                        ),
                    });
                }
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
        match self.body {
            Body::Segment { stored_len, .. } => stored_len,
            _ => 0,
        }
    }
}

/// Serialises a commit-log entry: user, description, then the changed keys.
pub(crate) fn encode_log(user: &str, description: &str, keys: &[Key]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + user.len() + description.len() + 17 * keys.len());
    for s in [user, description] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for k in keys {
        out.extend_from_slice(&k.encode());
    }
    out
}

/// Inverse of [`encode_log`].
pub(crate) fn decode_log(bytes: &[u8], tid: Tid) -> Result<super::TxnInfo> {
    let corrupt = || Error::Corrupt {
        key: Key::Meta(super::Oid(0)),
        tid,
        reason: "commit-log record is malformed".into(),
    };
    let mut pos = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = bytes.get(pos..pos + n).ok_or_else(corrupt)?;
        pos += n;
        Ok(s)
    };
    let mut strings = Vec::with_capacity(2);
    for _ in 0..2 {
        let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        strings.push(String::from_utf8_lossy(take(n)?).into_owned());
    }
    let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    // A damaged count must not make us allocate more than the record can hold.
    let mut keys = Vec::with_capacity(n.min(bytes.len() / Key::ENCODED_LEN));
    for _ in 0..n {
        keys.push(Key::decode(take(Key::ENCODED_LEN)?).ok_or_else(corrupt)?);
    }
    let description = strings.pop().unwrap_or_default();
    let user = strings.pop().unwrap_or_default();
    Ok(super::TxnInfo {
        tid,
        user,
        description,
        keys,
    })
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
    }

    #[test]
    fn log_roundtrip() {
        let keys = vec![
            Key::Meta(Oid(1)),
            Key::Block {
                file: Oid(2),
                index: 5,
            },
        ];
        let info = decode_log(&encode_log("u", "d", &keys), Tid(9)).unwrap();
        assert_eq!((info.user.as_str(), info.description.as_str()), ("u", "d"));
        assert_eq!(info.keys, keys);
        assert!(decode_log(&[1, 0], Tid(9)).is_err());
    }
}
