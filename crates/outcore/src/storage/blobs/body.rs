//! [`Body`]: a fetched object's bytes in page-aligned memory, zero-padded to whole pages, so
//! that the disk cache can write it with `O_DIRECT` (`cache.rs`): the disk reads it straight
//! from this memory, without the copy into the page cache (and its writeback) that a
//! buffered write costs. That copy was the largest part of a cold scan's client work.
//! [`BodyWriter`] fills one from the front as the bytes arrive, checksumming each piece while
//! it is still in the CPU's caches, and writing no byte twice (no zeroing first).

use crate::storage::codec::{checksum, Checksummer};

/// Alignment (and padding) of a body's bytes: a page, which every `O_DIRECT` file system
/// accepts (most need only the device's logical block size).
pub(crate) const ALIGN: usize = 4096;

/// Bytes in page-aligned memory whose padding up to the next page boundary reads as zeros.
///
/// Invariant: `buf[start..start + padded_len(len)]` lies inside `buf`, `start` is the offset
/// of the first page-aligned byte of `buf`, and every byte of that range past `len` is zero.
#[derive(Default)]
pub(crate) struct Body {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    /// The checksum of the bytes, where computed while they were filled in.
    sum: Option<u64>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Body({} bytes)", self.len)
    }
}

/// `len` rounded up to whole [`ALIGN`] units.
fn padded_len(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

impl Body {
    /// `len` zero bytes. The memory is allocated zeroed (fresh pages from the kernel for
    /// large bodies, so no bytes are written here).
    pub fn zeroed(len: usize) -> Body {
        // One page more than needed, to start at a page boundary wherever the allocator put it.
        let buf = vec![0u8; padded_len(len) + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        debug_assert!(start < ALIGN);
        Body {
            buf,
            start,
            len,
            sum: None,
        }
    }

    /// A copy of `bytes`.
    #[cfg(test)]
    pub fn copy_of(bytes: &[u8]) -> Body {
        let mut body = Body::zeroed(bytes.len());
        body.as_mut_slice().copy_from_slice(bytes);
        body
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Its bytes, to fill in.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.sum = None;
        &mut self.buf[self.start..self.start + self.len]
    }

    /// The checksum of its bytes ([`checksum`]; computed now unless it was while they
    /// were filled in).
    pub fn checksum(&self) -> u64 {
        self.sum.unwrap_or_else(|| checksum(self.as_slice()))
    }

    /// Its bytes and the zeros after them up to a whole number of [`ALIGN`] bytes, starting
    /// at a page boundary: what an `O_DIRECT` write takes.
    pub fn padded(&self) -> &[u8] {
        &self.buf[self.start..self.start + padded_len(self.len)]
    }

    /// Its bytes as a vector (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
    }
}

/// A [`Body`] of a known length being filled from the front.
pub(crate) struct BodyWriter {
    /// `buf` holds the alignment gap and the bytes so far; its capacity, fixed at creation,
    /// holds the whole padded body (so pushing never moves it off its alignment).
    body: Body,
    sum: Checksummer,
}

impl BodyWriter {
    /// A writer of a body of `len` bytes.
    pub fn new(len: usize) -> BodyWriter {
        // Never zero capacity, so the vector's address is a real allocation's, which the
        // pushes below keep (they stay within the capacity).
        let mut buf: Vec<u8> = Vec::with_capacity(padded_len(len) + ALIGN);
        let start = buf.as_ptr().align_offset(ALIGN);
        buf.resize(start, 0);
        BodyWriter {
            body: Body {
                buf,
                start,
                len,
                sum: None,
            },
            sum: Checksummer::default(),
        }
    }

    /// Appends `bytes`; false (and nothing appended) if they would make the body longer than
    /// its length.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        let body = &mut self.body;
        if body.buf.len() - body.start + bytes.len() > body.len {
            return false;
        }
        body.buf.extend_from_slice(bytes);
        self.sum.update(bytes);
        true
    }

    /// The body, checksummed; `None` if fewer bytes than its length were pushed.
    pub fn finish(self) -> Option<Body> {
        let BodyWriter { mut body, sum } = self;
        if body.buf.len() - body.start != body.len {
            return None;
        }
        let before = body.buf.as_ptr();
        body.buf.resize(body.start + padded_len(body.len), 0);
        debug_assert_eq!(
            before,
            body.buf.as_ptr(),
            "within the capacity: never moved"
        );
        body.sum = Some(sum.checksum());
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_padded_with_zeros() {
        for len in [0, 1, 4095, 4096, 4097, 3 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251 + 1) as u8).collect();
            let body = Body::copy_of(&bytes);
            assert_eq!(body.len(), len);
            assert_eq!(body.as_slice(), &bytes[..]);
            assert_eq!(body.to_vec(), bytes);
            let padded = body.padded();
            assert_eq!(padded.as_ptr() as usize % ALIGN, 0, "len {len}");
            assert_eq!(padded.len() % ALIGN, 0);
            assert!(padded.len() >= len && padded.len() < len + ALIGN);
            assert!(padded[len..].iter().all(|&b| b == 0), "len {len}");
            assert_eq!(body.checksum(), checksum(&bytes));
            // Written piece by piece: the same body, checksummed on the way.
            for piece in [1, 1000, 4096, 1 << 20] {
                let mut w = BodyWriter::new(len);
                for p in bytes.chunks(piece) {
                    assert!(w.push(p));
                }
                let written = w.finish().expect("all bytes pushed");
                assert_eq!(written.as_slice(), &bytes[..]);
                assert_eq!(written.padded(), padded, "len {len}");
                assert_eq!(written.padded().as_ptr() as usize % ALIGN, 0);
                assert_eq!(written.sum, Some(checksum(&bytes)));
            }
        }
    }

    #[test]
    fn a_writer_refuses_bytes_past_the_length_and_a_short_body() {
        let mut w = BodyWriter::new(10);
        assert!(w.push(&[1; 6]));
        assert!(!w.push(&[2; 5]), "11 bytes into a body of 10");
        assert!(w.push(&[3; 4]));
        assert_eq!(
            w.finish().unwrap().as_slice(),
            &[1, 1, 1, 1, 1, 1, 3, 3, 3, 3]
        );
        let mut w = BodyWriter::new(10);
        assert!(w.push(&[1; 9]));
        assert!(w.finish().is_none(), "one byte short");
    }
}
