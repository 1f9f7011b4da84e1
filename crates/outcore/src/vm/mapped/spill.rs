//! Spilling one block: its uncommitted writes move out of private memory into staged space
//! of the store, so they stop counting against RAM.
//!
//! A block mapped privately (a file version, pieces, or a hole) holds its writes as private
//! anonymous pages; a block fetched on touch is private memory altogether. Spilling it:
//!
//! 1. takes the memory's state lock (no install, discard or commit scan of the block runs
//!    meanwhile) and asks the [`SpillTarget`] for the version under the block and for
//!    staged space of a block;
//! 2. raises a write [`Barrier`] over the block, then makes it read-only: from here on no
//!    write can change it, and a thread that writes waits in the barrier's signal handler;
//! 3. writes the block's current bytes (the version plus the writes) into the staged space;
//! 4. maps the staged space shared and writable over the block (`MAP_FIXED`): the private
//!    pages are freed, the bytes are the same, and later writes land in the page cache;
//! 5. lowers the barrier: waiting writers run again, on the new mapping;
//! 6. records the block as staged, and the version it was mapped from, so that discarding
//!    its writes (abort, rollback) shows that version again.
//!
//! A failure before step 4 makes the block writable again as it was: nothing is lost.
//! A spilled block commits as a [`Write::Staged`](crate::storage::Write::Staged) whole
//! version, published without a copy; a spilled transaction that is aborted or crashes
//! leaves only unpublished staged space, given back at once or by the next pack.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::{Backing, BlockMemory, Mapped, Staging};
use crate::vm::barrier::Barrier;
use crate::{Error, Result};

/// Where a memory's spilled blocks go: staged space of the store (the layer above knows it).
pub trait SpillTarget: Send + Sync + std::fmt::Debug {
    /// Space for one block's bytes, or `None` when there is none now (the block's writes
    /// then stay in memory).
    fn stage(&self) -> Result<Option<Arc<dyn Staging>>>;

    /// The stored version `block` is mapped from (its backing at the snapshot the memory
    /// was last mapped at): what discarding its spilled writes shows again.
    fn version(&self, block: u64) -> Result<Backing>;
}

impl BlockMemory {
    /// Lets this memory spill its written blocks to `target` when the process's dirty
    /// budget is exceeded (see [`crate::vm::set_dirty_budget`]). Writable memory only; the
    /// first target set stays.
    pub fn spill_to(self: &Arc<Self>, target: Arc<dyn SpillTarget>) {
        if self.writable && self.spill_target.set(target).is_ok() {
            crate::vm::dirty_budget::watch(self);
        }
    }

    /// The blocks that could be spilled and their private written bytes, for blocks with
    /// any: privately mapped blocks (file versions, pieces, holes) and fetched ones, not
    /// staged or decoded ones.
    pub fn spillable(&self) -> Result<Vec<(u64, usize)>> {
        if self.spill_target.get().is_none() {
            return Ok(Vec::new());
        }
        let state = self.lock();
        let (Some(first), Some(last)) = (
            state.mapped.keys().next().copied(),
            state.mapped.keys().next_back().copied(),
        ) else {
            return Ok(Vec::new());
        };
        let span = self.block_ptr(first) as usize..self.block_ptr(last) as usize + self.blksize;
        let mut out: std::collections::BTreeMap<u64, Vec<std::ops::Range<usize>>> =
            Default::default();
        self.add_by_block(&mut out, crate::vm::dirty::written_pages(span)?, |b| {
            matches!(
                state.mapped.get(b),
                Some(Mapped::Hole | Mapped::File { .. } | Mapped::Pieces(_))
            )
        });
        if let Some((_, region)) = self.reservation.remote_if_any() {
            // Fetched blocks: the fault server tracks their written ranges.
            for (rel, ranges) in region.dirty_ranges() {
                let block = rel + self.first;
                if state.mapped.get(&block) == Some(&Mapped::Fetched) {
                    out.insert(block, ranges);
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|(b, ranges)| (b, ranges.iter().map(|r| r.len()).sum()))
            .collect())
    }

    /// Spills `block` (see the module docs). `Ok(false)` if it cannot be spilled: not
    /// privately mapped, no target, or the target has no space.
    pub fn spill(&self, block: u64) -> Result<bool> {
        let Some(target) = self.spill_target.get() else {
            return Ok(false);
        };
        let mut state = self.lock();
        let version = match state.mapped.get(&block) {
            Some(Mapped::Hole) => Backing::Hole,
            Some(Mapped::File { .. } | Mapped::Pieces(_) | Mapped::Fetched) => {
                target.version(block)?
            }
            _ => return Ok(false),
        };
        if !self.has_writes(&state, block)? {
            // Discarded since it was found written (an abort): nothing to spill.
            return Ok(false);
        }
        let Some(staging) = target.stage()? else {
            return Ok(false);
        };
        let start = self.block_ptr(block) as usize;
        let barrier = Barrier::raise(start..start + self.blksize)?;
        self.protect(block, libc::PROT_READ)?;
        // SAFETY: the block is mapped and now read-only: nothing writes it while the slice
        // lives (writers wait in the barrier), and the reservation outlives this call.
        let bytes = unsafe { self.block_bytes(block) };
        let moved = staging
            .file()
            .write_all_at(bytes, staging.offset())
            .map_err(|e| Error::io(format!("spilling block {block} of {}", self.what), e))
            .and_then(|()| {
                if state.mapped.get(&block) == Some(&Mapped::Fetched) {
                    // The fault server forgets the block (it is loaded and written, so no
                    // fetch is in flight for it) before its memory is replaced.
                    if let Some((server, region)) = self.reservation.remote_if_any() {
                        server.retire(region, self.rel(block));
                    }
                }
                self.map_shared(block, staging.file(), staging.offset())
            });
        if let Err(e) = moved {
            // Writable again as it was (private pages kept): the writes stay in memory.
            self.protect(block, self.prot())?;
            return Err(e);
        }
        drop(barrier);
        state.mapped.insert(block, Mapped::Staged);
        state.staged.insert(block, staging.clone());
        state.spilled.insert(block, version);
        drop(state);
        // Start writing it back now, so the page cache it fills is soon clean and reclaimable
        // (a hint: a failure changes nothing).
        // SAFETY: sync_file_range on a descriptor the staging keeps open.
        unsafe {
            libc::sync_file_range(
                std::os::fd::AsRawFd::as_raw_fd(staging.file()),
                staging.offset() as libc::off64_t,
                self.blksize as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        Ok(true)
    }

    /// True if `block` (privately mapped or fetched) holds a write now.
    fn has_writes(&self, state: &super::State, block: u64) -> Result<bool> {
        if state.mapped.get(&block) == Some(&Mapped::Fetched) {
            let rel = self.rel(block);
            return Ok(self
                .reservation
                .remote_if_any()
                .is_some_and(|(_, region)| region.dirty_ranges().iter().any(|(b, _)| *b == rel)));
        }
        let start = self.block_ptr(block) as usize;
        Ok(!crate::vm::dirty::written_pages(start..start + self.blksize)?.is_empty())
    }

    /// True if `block` holds spilled writes.
    pub fn is_spilled(&self, block: u64) -> bool {
        self.lock().spilled.contains_key(&block)
    }

    fn protect(&self, block: u64, prot: libc::c_int) -> Result<()> {
        // SAFETY: the block lies inside our reservation and is mapped; mprotect only changes
        // the access rights of that range.
        let rc = unsafe { libc::mprotect(self.block_ptr(block).cast(), self.blksize, prot) };
        if rc != 0 {
            return Err(Error::io(
                format!("protecting block {block} of {}", self.what),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Writes to a memory's clean blocks held up while its written blocks are spilled
/// ([`BlockMemory::throttle`]); dropping it lets them go on.
pub(crate) struct Throttle {
    memory: Arc<BlockMemory>,
    /// Runs of blocks made read-only.
    runs: Vec<std::ops::Range<u64>>,
    _barrier: Barrier,
}

impl BlockMemory {
    /// Holds up writes to the blocks of this memory not in `written` (a writer faster than
    /// the disk would otherwise outgrow the budget while blocks are spilled): they are made
    /// read-only behind a barrier over the whole reservation, so a write to them waits until
    /// the returned guard is dropped. Reads go on. Best effort: `None` when no barrier slot
    /// is to spare (many memories throttled at once); blocks that cannot be protected (no
    /// kernel mapping left to split) are left writable.
    pub(crate) fn throttle(
        self: &Arc<Self>,
        written: &std::collections::BTreeSet<u64>,
    ) -> Result<Option<Throttle>> {
        let state = self.lock();
        let base = self.reservation.base() as usize;
        let range = base..base + self.reservation.len();
        let Some(barrier) = Barrier::try_raise(range, crate::vm::barrier::THROTTLE_LEAVES)? else {
            return Ok(None);
        };
        let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
        for (&b, m) in &state.mapped {
            let clean = matches!(
                m,
                Mapped::Hole | Mapped::File { .. } | Mapped::Pieces(_) | Mapped::Fetched
            ) && !written.contains(&b);
            if !clean {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.end == b => r.end = b + 1,
                _ => runs.push(b..b + 1),
            }
        }
        runs.retain(|r| self.protect_run(r, libc::PROT_READ).is_ok());
        drop(state);
        Ok(Some(Throttle {
            memory: self.clone(),
            runs,
            _barrier: barrier,
        }))
    }

    fn protect_run(&self, run: &std::ops::Range<u64>, prot: libc::c_int) -> Result<()> {
        let len = (run.end - run.start) as usize * self.blksize;
        // SAFETY: the run's blocks lie inside our reservation and are mapped; mprotect only
        // changes the access rights of that range.
        let rc = unsafe { libc::mprotect(self.block_ptr(run.start).cast(), len, prot) };
        if rc != 0 {
            return Err(Error::io(
                format!("protecting blocks {run:?} of {}", self.what),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Writable again before the barrier drops (waiting writers retry then). Blocks
        // re-mapped meanwhile got their protection from the new mapping; this repeats it.
        let prot = self.memory.prot();
        for run in &self.runs {
            if let Err(e) = self.memory.protect_run(run, prot) {
                tracing::error!("{e}: writes to those blocks will fail");
            }
        }
    }
}
