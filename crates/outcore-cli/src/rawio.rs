//! Byte access to array memory through the core's raw views, for any dtype: the mapped bytes
//! of a byte range of an array (in the array's memory order), chunk plans for streaming.
//! The only `unsafe` code touching array memory is here.

use std::ops::Range;

use outcore::array::ArrayMeta;
use outcore::db::{BigArray, RawView};

use crate::error::{CliError, Result};

/// Bytes per streaming step of `import` and `export` (before block alignment).
pub const CHUNK_BYTES: u64 = 64 << 20;

/// Splits `0..nbytes` into chunks of about [`CHUNK_BYTES`], each a whole number of blocks
/// (except the last), so that each block is written by one transaction only.
pub fn chunks(nbytes: u64, blksize: usize) -> Vec<Range<u64>> {
    let blksize = blksize.max(1) as u64;
    let step = (CHUNK_BYTES / blksize).max(1) * blksize;
    (0..nbytes.div_ceil(step))
        .map(|i| i * step..((i + 1) * step).min(nbytes))
        .collect()
}

/// The major-axis indices whose bytes cover `bytes`.
pub fn major_range(meta: &ArrayMeta, bytes: &Range<u64>) -> Range<u64> {
    if meta.shape.is_empty() {
        return 0..1;
    }
    let stride = meta.major_stride_bytes().max(1);
    bytes.start / stride..bytes.end.div_ceil(stride)
}

/// Part of an array's memory, mapped: `bytes` of the array in its memory order.
pub struct Mapped<'a> {
    raw: RawView,
    /// The bytes asked for (offsets in the array).
    bytes: Range<u64>,
    /// The array offset of `raw.ptr` (the first byte of the first major-axis index mapped).
    origin: u64,
    _array: &'a BigArray,
}

impl<'a> Mapped<'a> {
    /// Maps the blocks under `bytes` (which must lie inside the array). With `load`, their data
    /// is read now, so that read errors are reported here rather than at first touch.
    pub fn new(array: &'a BigArray, bytes: Range<u64>, load: bool) -> Result<Self> {
        let meta = array.meta()?;
        if bytes.start > bytes.end || bytes.end > meta.nbytes() {
            return Err(CliError::runtime(format!(
                "byte range {bytes:?} outside the array's {} bytes",
                meta.nbytes()
            )));
        }
        let major = major_range(&meta, &bytes);
        let raw = array.raw_view(major.clone())?;
        if load && !bytes.is_empty() {
            array.load(major.clone())?;
        }
        let origin = if meta.shape.is_empty() {
            0
        } else {
            major.start * meta.major_stride_bytes()
        };
        Ok(Mapped {
            raw,
            bytes,
            origin,
            _array: array,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        let len = (self.bytes.end - self.bytes.start) as usize;
        if len == 0 {
            return &[];
        }
        // SAFETY: `raw.ptr` is the first byte of the mapped sub-array, which `raw.keepalive`
        // keeps mapped; `new` checked that `bytes` lies inside the array and mapped every block
        // under it (`raw.ptr` is its byte `origin`), so the range is readable memory. Nothing in this process writes there
        // while the slice lives (`bytes_mut` needs `&mut self`).
        unsafe {
            std::slice::from_raw_parts(
                self.raw.ptr.add((self.bytes.start - self.origin) as usize),
                len,
            )
        }
    }

    /// The mapped bytes, writable (a writable connection is needed).
    pub fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        if !self.raw.writable {
            return Err(CliError::runtime("the array is read-only here"));
        }
        let len = (self.bytes.end - self.bytes.start) as usize;
        if len == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as in `bytes`, and the mapping is writable (checked above); `&mut self`
        // makes this the only slice of these bytes.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(
                self.raw.ptr.add((self.bytes.start - self.origin) as usize),
                len,
            )
        })
    }

    /// The byte at `offset` in the whole array's order, `len` bytes (within the mapped range).
    pub fn at(&self, offset: u64, len: usize) -> Result<&[u8]> {
        let start = offset
            .checked_sub(self.bytes.start)
            .ok_or_else(|| CliError::runtime("element outside the mapped range"))?
            as usize;
        self.bytes()
            .get(start..start + len)
            .ok_or_else(|| CliError::runtime("element outside the mapped range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outcore::array::Order;
    use outcore::db::Database;

    #[test]
    fn chunk_plan() {
        assert!(chunks(0, 4096).is_empty());
        assert_eq!(chunks(10, 4096), vec![0..10]);
        let c = chunks(200 << 20, 2 << 20);
        assert_eq!(c.len(), 4);
        assert_eq!(c[1], (64 << 20)..(128 << 20));
        assert_eq!(c[3].end, 200 << 20);
        let big = chunks(300 << 20, 100 << 20);
        assert_eq!(big[1], (100 << 20)..(200 << 20));
    }

    #[test]
    fn read_and_write_bytes() {
        let db = Database::open("mem:").unwrap();
        let conn = db.connect().unwrap();
        let a = conn.create::<u16>("a", &[3, 5], Order::F).unwrap();
        let m = a.meta().unwrap();
        assert_eq!(major_range(&m, &(0..30)), 0..5);
        assert_eq!(major_range(&m, &(7..13)), 1..3);
        {
            let mut w = Mapped::new(&a, 6..12, false).unwrap();
            w.bytes_mut().unwrap().copy_from_slice(&[1, 0, 2, 0, 3, 0]);
        }
        conn.commit().unwrap();
        let r = Mapped::new(&a, 0..30, true).unwrap();
        assert_eq!(&r.bytes()[6..12], &[1, 0, 2, 0, 3, 0]);
        assert_eq!(r.at(8, 2).unwrap(), &[2, 0]);
        assert!(r.at(29, 2).is_err());
        let v = a.view::<u16>().unwrap();
        assert_eq!(v[[0, 1]], 1);
        assert_eq!(v[[2, 1]], 3);
        assert!(Mapped::new(&a, 0..31, false).is_err());
    }
}
