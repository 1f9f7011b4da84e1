//! Append-only, page-aligned segment files holding block bodies.
//!
//! A body is written at the first 4 KiB boundary at or after the segment's tail, so each body
//! starts on its own page and can be mapped with `mmap(MAP_PRIVATE)`. Bytes beyond the tail
//! recorded in the index belong to no commit (a crash between body write and index commit)
//! and are simply overwritten by the next commit.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::{Error, Result};

/// The page size bodies are aligned to.
pub const PAGE: u64 = 4096;

/// Rounds `n` up to a multiple of [`PAGE`].
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(PAGE) * PAGE
}

/// Writes `bytes` at the first page boundary at or after `tail`; returns the offset written.
pub fn append(file: &File, tail: u64, bytes: &[u8], what: &str) -> Result<u64> {
    let offset = align_up(tail);
    file.write_all_at(bytes, offset)
        .map_err(|e| Error::io(format!("writing {what}"), e))?;
    Ok(offset)
}

/// Reads exactly `len` bytes at `offset`.
pub fn read(file: &File, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| Error::InvalidArgument(format!("{what}: length {len} too large")))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io(format!("reading {what}"), e))?;
    Ok(buf)
}
