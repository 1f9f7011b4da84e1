//! Blocks and regions come and go: what `vm::mapped` and `vm::reservation` call (step 1 of
//! the fault path, and the exits of the block life cycle: retire, abort, region removal).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::block::Block;
use super::sys;
use super::{write, FaultServer, Fetch, FetchedRegion, THREADS};
use crate::{Error, Result};

impl FaultServer {
    /// Registers `region` (its whole reservation) so faults in it are served.
    pub fn add_region(&'static self, region: &Arc<FetchedRegion>) {
        THREADS.get_or_init(|| self.spawn_threads());
        write(&self.regions).insert(region.base, Arc::downgrade(region));
    }

    /// Forgets `region` (its reservation is going away): waits for copies into it to
    /// finish, refuses later ones, and stops counting its blocks against the budget.
    pub fn remove_region(&self, region: &FetchedRegion) {
        write(&self.regions).remove(&region.base);
        let mut state = region.lock_all_idle();
        state.closed = true;
        let mut clean = Vec::new();
        for (&i, b) in state.blocks.iter_mut() {
            if let Some(dirty) = b.unload() {
                self.unloaded(region);
                if !dirty {
                    clean.push(i);
                }
            }
        }
        drop(state);
        // Closed: nothing copies into the region any more. Its clean pages become spare
        // frames (within the budget) before the reservation is unmapped.
        if region.moves {
            for block in clean {
                if !self.move_to_spare(region, block) {
                    break;
                }
            }
        }
    }

    /// Makes `block` of `region` fetch-on-touch (step 1). Its memory is private anonymous
    /// memory: a fresh mapping, or the block's registered mapping after
    /// [`FaultServer::retire`].
    pub fn register(
        &self,
        region: &FetchedRegion,
        block: u64,
        fetch: Arc<dyn Fetch>,
    ) -> Result<()> {
        let range = region.block_range(block);
        self.uffd
            .register(range, true)
            .map_err(|e| Error::io(format!("registering block {block} for fetch-on-touch"), e))?;
        // Drop whatever is there (the old version, or zeros faulted in before the registration
        // took effect): from here on every touch faults, and waits until the block is known.
        // SAFETY: private anonymous memory of our reservation, about to show another version:
        // its old pages matter to nobody.
        unsafe { sys::discard(range) }
            .map_err(|e| Error::io(format!("dropping the old pages of block {block}"), e))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = region.lock_idle(block);
        let old = state.blocks.insert(block, Block::new(fetch, generation));
        drop(state);
        if old.is_some_and(|o| o.is_loaded()) {
            self.unloaded(region);
        }
        self.uffd.wake(range);
        Ok(())
    }

    /// `block` stops fetching on touch; called *before* its memory is mapped anew, so that
    /// no copy of the old registration can land in the new mapping.
    pub fn retire(&self, region: &FetchedRegion, block: u64) {
        let mut state = region.lock_idle(block);
        let old = state.blocks.remove(&block);
        drop(state);
        if old.is_some_and(|o| o.is_loaded()) {
            self.unloaded(region);
        }
        self.uffd.wake(region.block_range(block));
    }

    /// Drops the memory of `block` with `drop_pages` (abort): the next touch fetches the
    /// block again.
    pub fn drop_block(
        &self,
        region: &FetchedRegion,
        block: u64,
        drop_pages: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut state = region.lock_idle(block);
        let was_loaded = state.blocks.get_mut(&block).map(Block::start_drop);
        drop(state);
        if was_loaded == Some(true) {
            self.unloaded(region);
        }
        let dropped = drop_pages();
        region.end_busy(block, Block::finish_drop);
        dropped
    }

    /// A block of `region` stopped counting against the budget.
    pub(super) fn unloaded(&self, region: &FetchedRegion) {
        self.loaded_bytes
            .fetch_sub(region.blksize as u64, Ordering::Relaxed);
    }

    /// Registers a new frame as a move destination (write-protect mode only: decoding into
    /// it must not raise missing-page faults).
    pub(super) fn register_frame(&self, frame: super::frames::Frame, size: usize) -> bool {
        let range = sys::UffdioRange {
            start: frame.0 as u64,
            len: size as u64,
        };
        self.uffd.register(range, false).is_ok()
    }
}
