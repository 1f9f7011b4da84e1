//! Checksums and optional compression of stored payloads.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use super::{Key, Tid};
use crate::{Error, Result};

/// Per-store compression of block payloads.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is (the only mode whose blocks can be mapped zero-copy).
    #[default]
    None,
    /// LZ4 (fast; moderate ratio).
    Lz4,
    /// Zstandard level 3 (slower; better ratio).
    Zstd,
}

impl Compression {
    /// The on-disk code of this mode.
    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    /// Inverse of [`Compression::code`].
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" | "" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(Error::InvalidArgument(format!(
                "unknown compression {other:?}; use \"none\", \"lz4\" or \"zstd\""
            ))),
        }
    }
}

/// The largest payload (block size) outcore stores: 1 GiB.
pub const MAX_PAYLOAD: u64 = 1 << 30;

/// The checksum of raw (uncompressed) payload bytes.
pub(crate) fn checksum(raw: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(raw)
}

/// [`checksum`] of bytes that arrive in pieces (hashed while they are still in the CPU's
/// caches, as they are copied out of a network buffer).
#[cfg(feature = "s3")]
#[derive(Default)]
pub(crate) struct Checksummer(twox_hash::XxHash3_64);

#[cfg(feature = "s3")]
impl Checksummer {
    /// Adds the next piece.
    pub fn update(&mut self, bytes: &[u8]) {
        std::hash::Hasher::write(&mut self.0, bytes);
    }

    /// The checksum of all pieces so far, in order.
    pub fn checksum(&self) -> u64 {
        std::hash::Hasher::finish(&self.0)
    }
}

/// A payload ready to store: its bytes as stored plus what is needed to read them back.
pub(crate) struct Encoded<'a> {
    pub codec: Compression,
    pub checksum: u64,
    pub raw_len: u64,
    pub stored: Cow<'a, [u8]>,
}

/// Checksums and (if `codec` is not `None` and it helps) compresses `raw`.
pub(crate) fn encode(raw: &[u8], codec: Compression) -> Encoded<'_> {
    let sum = checksum(raw);
    let compressed = match codec {
        Compression::None => None,
        Compression::Lz4 => Some(lz4_flex::block::compress(raw)),
        Compression::Zstd => zstd::bulk::compress(raw, 3).ok(),
    };
    match compressed {
        // Incompressible data is stored raw, so it stays mappable.
        Some(c) if c.len() < raw.len() => Encoded {
            codec,
            checksum: sum,
            raw_len: raw.len() as u64,
            stored: Cow::Owned(c),
        },
        _ => Encoded {
            codec: Compression::None,
            checksum: sum,
            raw_len: raw.len() as u64,
            stored: Cow::Borrowed(raw),
        },
    }
}

/// Decompresses `stored` (taking it over when it is not compressed: no copy) and verifies
/// the checksum; errors name `key` and `tid`.
pub(crate) fn decode(
    stored: Vec<u8>,
    codec: Compression,
    raw_len: u64,
    expected: u64,
    key: Key,
    tid: Tid,
) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::Corrupt { key, tid, reason };
    if raw_len > MAX_PAYLOAD {
        // A damaged length must not make us allocate it.
        return Err(corrupt(format!(
            "length {raw_len} exceeds the largest payload"
        )));
    }
    let raw_len = usize::try_from(raw_len).map_err(|_| corrupt("length overflows".into()))?;
    let raw = match codec {
        Compression::None => stored,
        Compression::Lz4 => lz4_flex::block::decompress(&stored, raw_len)
            .map_err(|e| corrupt(format!("lz4: {e}")))?,
        Compression::Zstd => {
            zstd::bulk::decompress(&stored, raw_len).map_err(|e| corrupt(format!("zstd: {e}")))?
        }
    };
    verify(&raw, raw_len, expected, key, tid)?;
    Ok(raw)
}

/// Decompresses (or copies) `stored` into the front of `out` and verifies the checksum; the
/// payload's length. The one copy of a fetch: `out` is where the bytes are wanted.
pub(crate) fn decode_into(
    stored: &[u8],
    codec: Compression,
    raw_len: u64,
    expected: u64,
    key: Key,
    tid: Tid,
    out: &mut [u8],
) -> Result<usize> {
    let corrupt = |reason: String| Error::Corrupt { key, tid, reason };
    let len = usize::try_from(raw_len)
        .ok()
        .filter(|&l| l <= out.len())
        .ok_or_else(|| {
            corrupt(format!(
                "length {raw_len} exceeds the {} bytes it must fit in",
                out.len()
            ))
        })?;
    let target = &mut out[..len];
    let written = match codec {
        Compression::None if stored.len() == len => {
            target.copy_from_slice(stored);
            len
        }
        Compression::None => stored.len(),
        Compression::Lz4 => lz4_flex::block::decompress_into(stored, target)
            .map_err(|e| corrupt(format!("lz4: {e}")))?,
        Compression::Zstd => zstd::bulk::decompress_to_buffer(stored, target)
            .map_err(|e| corrupt(format!("zstd: {e}")))?,
    };
    if written != len {
        return Err(corrupt(format!("length {written} instead of {len}")));
    }
    verify(target, len, expected, key, tid)?;
    Ok(len)
}

/// Checks that `raw` has the expected length and checksum.
pub(crate) fn verify(raw: &[u8], raw_len: usize, expected: u64, key: Key, tid: Tid) -> Result<()> {
    if raw.len() != raw_len {
        return Err(Error::Corrupt {
            key,
            tid,
            reason: format!("length {} instead of {raw_len}", raw.len()),
        });
    }
    let actual = checksum(raw);
    if actual != expected {
        return Err(Error::Corrupt {
            key,
            tid,
            reason: format!("checksum {actual:016x} instead of {expected:016x}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Oid;

    #[cfg(feature = "s3")]
    #[test]
    fn a_checksum_of_pieces_is_the_checksum_of_the_whole() {
        let raw: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for piece in [1, 7, 240, 1024, 16 << 10, 300_000] {
            let mut sum = Checksummer::default();
            raw.chunks(piece).for_each(|p| sum.update(p));
            assert_eq!(sum.checksum(), checksum(&raw), "pieces of {piece}");
        }
        assert_eq!(Checksummer::default().checksum(), checksum(&[]));
    }

    #[test]
    fn roundtrip_every_codec_and_detect_damage() {
        let key = Key::Meta(Oid(1));
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let e = encode(&raw, codec);
            if codec != Compression::None {
                assert!(e.stored.len() < raw.len() / 4, "{codec} should compress");
            }
            let back = decode(
                e.stored.to_vec(),
                e.codec,
                e.raw_len,
                e.checksum,
                key,
                Tid(1),
            )
            .unwrap();
            assert_eq!(back, raw);
            let mut bad = e.stored.to_vec();
            bad[10] ^= 1;
            let err = decode(bad, e.codec, e.raw_len, e.checksum, key, Tid(1)).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{codec}: {err}");
        }
    }

    #[test]
    fn incompressible_data_stays_raw() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let raw: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = encode(&raw, Compression::Lz4);
        assert_eq!(e.codec, Compression::None);
        assert_eq!(&*e.stored, &raw[..]);
    }
}
