//! Finding and dropping a memory's uncommitted writes: which pages of which blocks were
//! written (page tables, the fault server's records, or the staged file's data), and
//! discarding them.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;

use super::*;
use crate::{Error, Result};

/// The page ranges of `len` bytes at `offset` of `file` that hold data (`SEEK_DATA` /
/// `SEEK_HOLE`: written pages, including ones written through a mapping and not yet written
/// back), relative to `offset`. A file system without those calls reports everything.
pub(super) fn written_in_file(
    file: &File,
    offset: u64,
    len: usize,
) -> std::io::Result<Vec<Range<usize>>> {
    let end = offset + len as u64;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        // SAFETY: lseek on a descriptor we hold; it moves only this descriptor's offset,
        // which nothing else uses (all other I/O on staged files is positional).
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out), // no data from `at` to the end of the file
                Some(libc::EINVAL) => Ok(std::iter::once(0..len).collect()),
                _ => Err(e),
            };
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = (hole as u64).min(end);
        let start = ((data - offset) as usize / PAGE) * PAGE;
        let stop = ((hole - offset) as usize).div_ceil(PAGE) * PAGE;
        out.push(start..stop.min(len));
        at = hole;
    }
    Ok(out)
}

impl BlockMemory {
    /// Written pages of every mapped block: block → byte ranges within the block, sorted.
    pub fn written_pages(&self) -> Result<BTreeMap<u64, Vec<Range<usize>>>> {
        self.written_pages_locked(&self.lock())
    }

    pub(super) fn written_pages_locked(
        &self,
        state: &State,
    ) -> Result<BTreeMap<u64, Vec<Range<usize>>>> {
        let mut out: BTreeMap<u64, Vec<Range<usize>>> = BTreeMap::new();
        // Scan only the span of mapped blocks (one call for the whole span).
        let (Some(first), Some(last)) = (
            state.mapped.keys().next().copied(),
            state.mapped.keys().next_back().copied(),
        ) else {
            return Ok(out);
        };
        let span = self.block_ptr(first) as usize..self.block_ptr(last) as usize + self.blksize;
        let is_remote = |b: &u64| state.mapped.get(b) == Some(&Mapped::Fetched);
        self.add_by_block(&mut out, dirty::written_pages(span.clone())?, |b| {
            !is_remote(b)
        });
        if let Some((_, region)) = self.reservation.remote_if_any() {
            // Fetched blocks are private memory from the start; the fault server tracks
            // their written ranges (64 KiB granules, or the whole block).
            for (block, ranges) in region.dirty_ranges() {
                let block = block + self.first;
                if is_remote(&block) {
                    out.insert(block, ranges);
                }
            }
        }
        for (&block, staging) in &state.staged {
            if state.spilled.contains_key(&block) {
                // Spilled writes over a version: the whole block is the new version (its
                // pages cannot be told apart from the version's any more).
                out.insert(block, std::iter::once(0..self.blksize).collect());
                continue;
            }
            let ranges = self.written_staged(block, staging.as_ref())?;
            if !ranges.is_empty() {
                out.insert(block, ranges);
            }
        }
        if dirty::method() == dirty::ScanMethod::PagemapRead {
            // That scan cannot tell the shared zero page from a written page: drop all-zero
            // pages of holes (a hole page written with zeros is unchanged anyway).
            for (block, ranges) in out.iter_mut() {
                if state.mapped.get(block) == Some(&Mapped::Hole) {
                    *ranges = self.nonzero_pages(*block, ranges);
                }
            }
            out.retain(|_, ranges| !ranges.is_empty());
        }
        Ok(out)
    }

    /// Adds address ranges to `out` as byte ranges within their blocks (split at block
    /// boundaries), for the blocks `keep` accepts.
    pub(super) fn add_by_block(
        &self,
        out: &mut BTreeMap<u64, Vec<Range<usize>>>,
        ranges: Vec<Range<usize>>,
        keep: impl Fn(&u64) -> bool,
    ) {
        let base = self.reservation.base() as usize;
        for r in ranges {
            let mut at = r.start - base;
            let end = r.end - base;
            while at < end {
                let rel = (at / self.blksize) as u64;
                let block_start = rel as usize * self.blksize;
                let stop = end.min(block_start + self.blksize);
                let block = rel + self.first;
                if keep(&block) {
                    out.entry(block)
                        .or_default()
                        .push(at - block_start..stop - block_start);
                }
                at = stop;
            }
        }
    }

    /// The pages of `ranges` (within `block`) holding a non-zero byte.
    /// The written pages of a block mapped onto staged space. Shared pages are not found by
    /// the page-table scan (they are the file's): the file tells which of its pages hold
    /// data (`SEEK_DATA`), even after they were written back and evicted. That answer is
    /// coarse on allocated space (pages only read there may count), so pages still in memory
    /// that hold only zeros are dropped — zeros over a hole change nothing; pages no longer
    /// in memory are kept (only written pages are written back).
    pub(super) fn written_staged(
        &self,
        block: u64,
        staging: &dyn Staging,
    ) -> Result<Vec<Range<usize>>> {
        let ranges = written_in_file(staging.file(), staging.offset(), self.blksize)
            .map_err(|e| Error::io(format!("finding written pages of block {block}"), e))?;
        if ranges.is_empty() {
            return Ok(ranges);
        }
        let mut resident = vec![0u8; self.blksize / PAGE];
        // SAFETY: the block lies in our reservation and is mapped (it is staged); mincore
        // only fills `resident`, one byte per page of the range.
        let rc = unsafe {
            libc::mincore(
                self.block_ptr(block).cast(),
                self.blksize,
                resident.as_mut_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                format!("finding resident pages of block {block}"),
                std::io::Error::last_os_error(),
            ));
        }
        let mut page = vec![0u8; PAGE];
        let mut out: Vec<Range<usize>> = Vec::new();
        for r in ranges {
            for start in (r.start..r.end).step_by(PAGE) {
                if resident[start / PAGE] & 1 != 0 {
                    self.read_into(block, start, &mut page);
                    if page.iter().all(|&b| b == 0) {
                        continue;
                    }
                }
                match out.last_mut() {
                    Some(last) if last.end == start => last.end = start + PAGE,
                    _ => out.push(start..start + PAGE),
                }
            }
        }
        Ok(out)
    }

    pub(super) fn nonzero_pages(&self, block: u64, ranges: &[Range<usize>]) -> Vec<Range<usize>> {
        let mut page = vec![0u8; PAGE];
        let mut out: Vec<Range<usize>> = Vec::new();
        for r in ranges {
            for start in (r.start..r.end).step_by(PAGE) {
                self.read_into(block, start, &mut page);
                if page.iter().any(|&b| b != 0) {
                    match out.last_mut() {
                        Some(last) if last.end == start => last.end = start + PAGE,
                        _ => out.push(start..start + PAGE),
                    }
                }
            }
        }
        out
    }

    /// The blocks with at least one written page.
    pub fn dirty_blocks(&self) -> Result<Vec<u64>> {
        Ok(self.written_pages()?.into_keys().collect())
    }

    /// Drops the private (written) pages of `ranges` within `block`: they show the mapped
    /// version again.
    pub fn discard_pages(&self, block: u64, ranges: &[Range<usize>]) -> Result<()> {
        if self.lock().mapped.get(&block) == Some(&Mapped::Fetched) {
            // A fetched block is loaded whole: drop it whole, the next touch fetches it.
            let whole = 0..self.blksize;
            return match self.reservation.remote_if_any() {
                Some((server, region)) => {
                    let rel = self.rel(block);
                    server.drop_block(region, rel, || self.madvise_dontneed(block, &whole))
                }
                None => self.madvise_dontneed(block, &whole),
            };
        }
        {
            let mut state = self.lock();
            if let Some(version) = state.spilled.get(&block).cloned() {
                // Spilled: the writes live in staged space over the version. Map the version
                // again (the staged space is given back when dropped).
                return self.install_locked(&mut state, block, version);
            }
        }
        if let Some(staging) = self.lock().staged.get(&block).cloned() {
            // Shared pages live in the file: give them back there (they read as zeros again,
            // the state before any write).
            for r in ranges {
                punch_hole(
                    staging.file(),
                    staging.offset() + r.start as u64,
                    r.len() as u64,
                )?;
            }
            return Ok(());
        }
        for r in ranges {
            self.madvise_dontneed(block, r)?;
        }
        Ok(())
    }

    pub(super) fn madvise_dontneed(&self, block: u64, r: &Range<usize>) -> Result<()> {
        let addr = self.block_ptr(block).wrapping_add(r.start);
        // SAFETY: inside our reservation; DONTNEED on a private mapping only drops private
        // pages, which re-fault from the file, as zeros, or through the fault server.
        let rc = unsafe { libc::madvise(addr.cast(), r.end - r.start, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(Error::io(
                format!("discarding pages of block {block}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Drops every written page of the given blocks.
    pub fn discard(&self, blocks: &[u64]) -> Result<()> {
        let whole = 0..self.blksize;
        for &b in blocks {
            self.discard_pages(b, std::slice::from_ref(&whole))?;
        }
        Ok(())
    }
}
