//! One array reservation's registered blocks: [`FetchedRegion`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::block::Block;
use super::pattern::AccessPattern;
use super::sys::UffdioRange;
use super::{lock, wait};

/// The registered blocks of one array's reservation (fault-filled memory).
pub(crate) struct FetchedRegion {
    /// Unique for the life of the process (unlike addresses: a dropped reservation's range
    /// can be mapped again for another array).
    pub(super) id: u64,
    pub(super) base: usize,
    pub(super) len: usize,
    pub(super) blksize: usize,
    /// The array, for messages.
    pub(super) what: String,
    /// Blocks are loaded by moving frames in (read-only memory with huge-page-sized blocks).
    pub(super) moves: bool,
    /// The missing-page faults so far, to tell sequential and strided passes (read ahead)
    /// from random access (don't). A leaf lock.
    pub(super) pattern: Mutex<AccessPattern>,
    state: Mutex<RegionState>,
    /// Signalled whenever a block stops being busy.
    idle: Condvar,
}

/// What [`FetchedRegion::state`] guards.
#[derive(Default)]
pub(super) struct RegionState {
    /// The registered blocks, by index in the region.
    pub blocks: HashMap<u64, Block>,
    /// The reservation is going away: nothing is copied into it any more.
    pub closed: bool,
}

impl FetchedRegion {
    /// A region for the reservation `base..base + len` of blocks of `blksize` bytes.
    /// `moves`: load blocks by moving frames in ([`super::FaultServer::can_move`]).
    pub fn new(base: usize, len: usize, blksize: usize, what: String, moves: bool) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        FetchedRegion {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            base,
            len,
            blksize,
            what,
            moves,
            pattern: Mutex::new(AccessPattern::default()),
            state: Mutex::new(RegionState::default()),
            idle: Condvar::new(),
        }
    }

    /// True if blocks are loaded by moving frames in: the memory must then be mapped
    /// read-write (a move needs equal protections) with huge pages.
    pub fn moves(&self) -> bool {
        self.moves
    }

    /// The blocks written since they were loaded, ascending, each with its written byte
    /// ranges (within the block, ascending; see `block.rs` for their granularity).
    pub fn dirty_ranges(&self) -> Vec<(u64, Vec<Range<usize>>)> {
        let state = self.lock();
        let mut dirty: Vec<(u64, Vec<Range<usize>>)> = state
            .blocks
            .iter()
            .map(|(&i, b)| (i, b.written_ranges(self.blksize)))
            .filter(|(_, ranges)| !ranges.is_empty())
            .collect();
        dirty.sort_unstable_by_key(|(i, _)| *i);
        dirty
    }

    /// The address range of bytes `range` of `block`.
    pub(super) fn bytes_range(&self, block: u64, range: Range<usize>) -> UffdioRange {
        let start = self.base + block as usize * self.blksize + range.start;
        UffdioRange {
            start: start as u64,
            len: range.len() as u64,
        }
    }

    /// The address range of `block`.
    pub(super) fn block_range(&self, block: u64) -> UffdioRange {
        self.bytes_range(block, 0..self.blksize)
    }

    /// The block holding `addr`, if the region does.
    pub(super) fn block_of(&self, addr: usize) -> Option<u64> {
        (self.base..self.base + self.len)
            .contains(&addr)
            .then(|| ((addr - self.base) / self.blksize) as u64)
    }

    /// Locks the region's state.
    pub(super) fn lock(&self) -> MutexGuard<'_, RegionState> {
        lock(&self.state)
    }

    /// Locks the region once `block` is not busy.
    pub(super) fn lock_idle(&self, block: u64) -> MutexGuard<'_, RegionState> {
        let mut state = self.lock();
        while state.blocks.get(&block).is_some_and(Block::is_busy) {
            state = wait(&self.idle, state);
        }
        state
    }

    /// Locks the region once no block is busy.
    pub(super) fn lock_all_idle(&self) -> MutexGuard<'_, RegionState> {
        let mut state = self.lock();
        while state.blocks.values().any(Block::is_busy) {
            state = wait(&self.idle, state);
        }
        state
    }

    /// Ends the busy state of `block` (if it still exists) with `finish` and wakes the
    /// waiters.
    pub(super) fn end_busy(&self, block: u64, finish: impl FnOnce(&mut Block)) {
        let mut state = self.lock();
        if let Some(b) = state.blocks.get_mut(&block) {
            finish(b);
        }
        drop(state);
        self.idle.notify_all();
    }
}
