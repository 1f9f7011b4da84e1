//! The RAM budget of loaded blocks: the LRU, eviction (step 6 of the fault path) and the
//! spare frames that evicted pages are moved into.

use std::sync::atomic::Ordering;
use std::sync::Weak;

use super::block::{Block, Eviction};
use super::frames;
use super::sys;
use super::{lock, FaultServer, FetchedRegion, WORKERS};

/// Blocks after a faulting one that are fetched ahead.
pub(super) const READ_AHEAD: u64 = 2;
/// Most recently loaded blocks never evicted (enough for every worker and read-ahead).
const KEEP_NEWEST: usize = 2 * WORKERS + READ_AHEAD as usize;

/// A loaded block, in load order.
pub(super) struct LruEntry {
    region: Weak<FetchedRegion>,
    block: u64,
    /// The registration loaded: an entry for an older one is stale.
    generation: u64,
}

impl FaultServer {
    /// Counts a block just loaded against the budget, as the newest.
    pub(super) fn loaded(&self, region: &FetchedRegion, block: u64, generation: u64) {
        self.loaded_bytes
            .fetch_add(region.blksize as u64, Ordering::Relaxed);
        let entry = LruEntry {
            region: self.region_weak(region),
            block,
            generation,
        };
        lock(&self.lru).push_back(entry);
    }

    /// Bytes of spare frames allowed now: what loaded blocks leave of the budget.
    pub(super) fn spare_limit(&self) -> usize {
        let budget = self.budget.load(Ordering::Relaxed);
        budget.saturating_sub(self.loaded_bytes.load(Ordering::Relaxed)) as usize
    }

    /// With nothing queued, prepares one spare frame (up to the minimum), so that isolated
    /// faults of read-only memory find their frame's pages ready.
    pub(super) fn refill_spares(&self) {
        if !self.moves_used.load(Ordering::Relaxed) || !lock(&self.queued).is_empty() {
            return;
        }
        let size = frames::HUGE;
        self.frames.refill(size, |f| self.register_frame(f, size));
    }

    /// Moves the pages of a clean block nobody else changes now (busy, or its region closed)
    /// into a spare frame, if one may be kept: the next load reuses them instead of
    /// allocating and zeroing new memory. True if moved.
    pub(super) fn move_to_spare(&self, region: &FetchedRegion, block: u64) -> bool {
        let range = region.block_range(block);
        let size = region.blksize;
        let spare = self
            .frames
            .take_for_eviction(size, self.spare_limit(), |f| self.register_frame(f, size));
        let Some(frame) = spare else {
            return false;
        };
        // SAFETY: the frame is ours until given back below; the block's pages are clean and
        // nobody changes them now (busy or closed): readers fault and fetch them again.
        let moved = unsafe { self.uffd.move_pages(frame.0, range.start as usize, size) };
        self.frames.put_full(size, frame, self.spare_limit());
        if moved {
            self.stats.moved_out.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }

    /// Drops the pages of a busy, clean block: moved into a spare frame where the region
    /// moves, otherwise freed.
    fn drop_pages(&self, region: &FetchedRegion, block: u64) {
        if region.moves && self.move_to_spare(region, block) {
            return;
        }
        // SAFETY: the pages of a clean block of our reservation (busy: nothing else changes
        // them now); the next touch faults and fetches it again.
        let _ = unsafe { sys::discard(region.block_range(block)) };
        self.stats.freed.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops the oldest clean loaded blocks while over the budget (step 6).
    pub(super) fn evict_over_budget(&self) {
        let budget = self.budget.load(Ordering::Relaxed);
        // Spares give way to loaded blocks (a lowered budget, or loads after an idle time).
        self.frames.trim(|| self.spare_limit());
        let mut kept_dirty = 0;
        loop {
            let next = {
                let mut lru = lock(&self.lru);
                // The newest blocks stay: the threads that faulted them in may not have read
                // them yet.
                let over = self.loaded_bytes.load(Ordering::Relaxed) > budget;
                if !over || kept_dirty >= lru.len() || lru.len() <= KEEP_NEWEST {
                    return;
                }
                lru.pop_front()
            };
            let Some(entry) = next else {
                return;
            };
            let Some(region) = entry.region.upgrade() else {
                continue;
            };
            let mut state = region.lock_idle(entry.block);
            let closed = state.closed;
            let Some(b) = state.blocks.get_mut(&entry.block) else {
                continue;
            };
            if closed || b.generation != entry.generation {
                continue;
            }
            match b.start_evict() {
                Eviction::NotLoaded => continue,
                Eviction::Dirty => {
                    // Dirty blocks stay until commit or abort.
                    kept_dirty += 1;
                    drop(state);
                    lock(&self.lru).push_back(entry);
                }
                Eviction::Started => {
                    drop(state);
                    self.unloaded(&region);
                    self.drop_pages(&region, entry.block);
                    region.end_busy(entry.block, Block::finish_drop);
                }
            }
        }
    }
}
