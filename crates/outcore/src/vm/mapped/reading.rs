//! Reading ahead: advice to the kernel, prefetching in the background, and loading ranges
//! now.

use std::ops::Range;

use super::*;
use crate::{Error, Result};

impl BlockMemory {
    /// Applies `advice` to the mapped bytes `range` (offsets in the array).
    pub(super) fn advise(
        &self,
        range: Range<usize>,
        advice: libc::c_int,
        what: &str,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let rel = self.in_reservation(&range)?;
        // madvise wants whole pages; blocks are page-aligned, so the rounded range stays
        // inside the mapped blocks.
        let start = rel.start / PAGE * PAGE;
        let end = rel.end.div_ceil(PAGE) * PAGE;
        let addr = self.reservation.base().wrapping_add(start);
        // SAFETY: advice on a range inside our reservation; callers mapped it first. Neither
        // WILLNEED nor POPULATE_READ changes what the memory holds.
        let rc = unsafe { libc::madvise(addr.cast(), end - start, advice) };
        if rc != 0 {
            return Err(Error::io(what.to_string(), std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The bytes `range` (offsets in the array) as offsets in the reservation; an error if
    /// they lie outside it.
    pub(super) fn in_reservation(&self, range: &Range<usize>) -> Result<Range<usize>> {
        let origin = self.first as usize * self.blksize;
        if range.start < origin || range.end - origin > self.reservation.len() {
            return Err(Error::IndexOutOfBounds(format!(
                "bytes {range:?} lie outside the reservation of blocks {:?}",
                self.blocks()
            )));
        }
        Ok(range.start - origin..range.end - origin)
    }

    /// Starts reading the mapped bytes `range` into memory in the background and returns at
    /// once (`vm::readahead`); fetched blocks are queued for the fault server's workers,
    /// within its RAM budget.
    pub fn prefetch(&self, range: Range<usize>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let origin = range.start - self.in_reservation(&range)?.start;
        if let Some((server, region)) = self.reservation.remote_if_any() {
            let remote = self.remote_blocks(&range);
            server.prefetch(region, remote.into_iter().map(|b| self.rel(b)));
        }
        let files = self.file_runs(&range);
        let rel = files.into_iter().map(|r| r.start - origin..r.end - origin);
        readahead::in_background(self.reservation.clone(), rel.collect());
        Ok(())
    }

    /// The parts of the bytes `range` (not empty) on blocks mapped from files, as byte ranges
    /// in the array, consecutive blocks joined.
    pub(super) fn file_runs(&self, range: &Range<usize>) -> Vec<Range<usize>> {
        let first = (range.start / self.blksize) as u64;
        let last = ((range.end - 1) / self.blksize) as u64;
        let state = self.lock();
        let mut runs: Vec<Range<usize>> = Vec::new();
        for (&b, m) in state.mapped.range(first..=last) {
            if !matches!(m, Mapped::File { .. } | Mapped::Pieces(_)) {
                continue;
            }
            let bytes = b as usize * self.blksize..(b as usize + 1) * self.blksize;
            let part = bytes.start.max(range.start)..bytes.end.min(range.end);
            match runs.last_mut() {
                Some(run) if run.end == part.start => run.end = part.end,
                _ => runs.push(part),
            }
        }
        runs
    }

    /// Reads the bytes `range` of a view just made ahead if the view is small (see
    /// `vm::readahead::small_view`).
    pub fn read_view_ahead(&self, range: Range<usize>) {
        if let Ok(rel) = self.in_reservation(&range) {
            readahead::small_view(&self.reservation, rel);
        }
    }

    /// The fetched blocks under the bytes `range` (not empty), ascending.
    pub(super) fn remote_blocks(&self, range: &Range<usize>) -> Vec<u64> {
        let first = (range.start / self.blksize) as u64;
        let last = ((range.end - 1) / self.blksize) as u64;
        let state = self.lock();
        state
            .mapped
            .range(first..=last)
            .filter(|(_, m)| **m == Mapped::Fetched)
            .map(|(&b, _)| b)
            .collect()
    }

    /// Reads the mapped bytes `range` into memory now; storage errors are returned, not
    /// raised as a fault later.
    pub fn populate(&self, range: Range<usize>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        // Fetched blocks are fetched here, in this thread, so errors come back as errors.
        let remote = self.remote_blocks(&range);
        if let Some((server, region)) = self.reservation.remote_if_any() {
            for b in remote {
                server.load_now(region, self.rel(b))?;
            }
        }
        // Without huge-page advice, read each piece ahead first (the page faults of
        // POPULATE_READ alone read around each page, a window at a time); with it, its faults
        // read whole folios, faster. Pieces, so a range larger than RAM does not evict its
        // start before it is mapped.
        let rel = self.in_reservation(&range)?;
        let origin = range.start - rel.start;
        for at in rel.clone().step_by(readahead::LOAD_PIECE) {
            let piece = at..(at + readahead::LOAD_PIECE).min(rel.end);
            if !readahead::faults_read_folios() {
                readahead::willneed(&self.reservation, piece.clone());
            }
            let bytes = piece.start + origin..piece.end + origin;
            self.advise(bytes, libc::MADV_POPULATE_READ, "loading array data")?;
        }
        Ok(())
    }
}
