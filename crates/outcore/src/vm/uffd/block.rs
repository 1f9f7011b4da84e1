//! The state of one registered block of a [`FetchedRegion`](super::region::FetchedRegion),
//! and its transitions. Every method is called with the region's state locked.
//!
//! ```text
//!  Registered ──start_install──► Busy ──finish_install(true)──► Loaded { Clean }
//!   ▲  ▲  ▲                       │                                │        │ write_at
//!   │  │  └─finish_install(false)─┘                                │        ▼
//!   │  │                                                           │  Loaded { Granule(g) }
//!   │  │                                                           │        │ write_at outside g
//!   │  └── finish_drop ◄── Busy ◄── start_evict (Clean only) ──────┘        ▼
//!   │                          ◄── start_drop (any state) ◄──────── Loaded { Whole }
//!   └── unload (the region closes)
//! ```
//!
//! # Written ranges below the block
//!
//! A loaded block arrives write-protected. The first write-protect fault lifts the
//! protection of only the [`GRANULE`] (64 KiB, aligned) holding the faulting address, and
//! records that granule as written; a write-protect fault in any other granule of the same
//! block lifts the protection of the whole block and records it all as written. So a bulk
//! write costs two faults per block, and a sparse write (an append touching the tail, one
//! element) reports 64 KiB instead of the whole block. Since the protection of a granule is
//! lifted only after it is recorded, and the protection of the rest of the block only after
//! the whole block is, every write lands in a recorded range; faults are handled one at a
//! time by the fault thread under the region's lock, so two threads writing two granules
//! at once both fault, and the second one escalates to the whole block.
//!
//! Being *queued* for a worker is not a state of the block: the fault server keeps that set,
//! so that a block re-registered while a job for it is pending is not queued twice.

use std::ops::Range;
use std::sync::Arc;

use super::Fetch;

/// One registered block: how to fetch it, which registration it is, and its state.
pub(super) struct Block {
    /// How to get this registration's bytes.
    pub fetch: Arc<dyn Fetch>,
    /// Bumped whenever the block is registered anew: a fetch of an older registration is
    /// thrown away.
    pub generation: u64,
    state: State,
}

/// The unit of write tracking below the block: the first write to a loaded block reports
/// (and unprotects) only the aligned granule it falls in.
pub(super) const GRANULE: usize = 64 << 10;

/// Which part of a loaded block was written since it was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Nothing: the whole block is write-protected (and may be evicted).
    Clean,
    /// Only granule `.0` (its protection is lifted; the rest of the block stays protected).
    Granule(usize),
    /// Possibly every byte: the whole block is unprotected.
    Whole,
}

/// Where a block's pages stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No pages: the next touch faults and queues a fetch.
    Registered,
    /// A thread is changing its pages without the region's lock (a worker copying in, the
    /// evictor or an abort dropping them); everyone else who would change them waits.
    Busy,
    /// Its bytes are in memory (counted against the budget).
    Loaded {
        /// What was written since it was loaded (its write protection lifted there). A block
        /// with anything written is dirty: never evicted.
        written: Written,
    },
}

/// What [`Block::start_evict`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Eviction {
    /// Not loaded (dropped or loaded again meanwhile): nothing to evict.
    NotLoaded,
    /// Written: it stays until commit or abort.
    Dirty,
    /// Now busy: the caller drops its pages, then calls [`Block::finish_drop`].
    Started,
}

impl Block {
    /// A newly registered block (no pages).
    pub fn new(fetch: Arc<dyn Fetch>, generation: u64) -> Block {
        Block {
            fetch,
            generation,
            state: State::Registered,
        }
    }

    /// True while a thread changes its pages.
    pub fn is_busy(&self) -> bool {
        self.state == State::Busy
    }

    /// True if its bytes are in memory.
    pub fn is_loaded(&self) -> bool {
        matches!(self.state, State::Loaded { .. })
    }

    /// The byte ranges of the block written since it was loaded (`blksize` bytes long),
    /// ascending; empty if clean or not loaded.
    pub fn written_ranges(&self, blksize: usize) -> Vec<Range<usize>> {
        match self.state {
            State::Loaded {
                written: Written::Granule(g),
            } => vec![granule_range(g, blksize)],
            State::Loaded {
                written: Written::Whole,
            } => std::iter::once(0..blksize).collect(),
            _ => Vec::new(),
        }
    }

    /// A worker with a fetch of registration `generation` starts copying it in: true (and
    /// busy) if the block still wants exactly that.
    pub fn start_install(&mut self, generation: u64) -> bool {
        let wanted = self.state == State::Registered && self.generation == generation;
        if wanted {
            self.state = State::Busy;
        }
        wanted
    }

    /// The copy of [`Block::start_install`] ended: loaded (clean, write-protected) if
    /// `installed`, else back to registered (the next touch fetches again).
    pub fn finish_install(&mut self, installed: bool) {
        debug_assert!(self.is_busy());
        self.state = if installed {
            State::Loaded {
                written: Written::Clean,
            }
        } else {
            State::Registered
        };
    }

    /// A write-protect fault at byte `offset` of the block (`blksize` bytes long): records
    /// the write and returns the byte range of the block whose protection the caller must
    /// lift now (the granule of `offset`, or the whole block once a second granule is
    /// written); `None` if the block is not loaded (dropped meanwhile: the write faults it
    /// in again).
    pub fn write_at(&mut self, offset: usize, blksize: usize) -> Option<Range<usize>> {
        let State::Loaded { written } = &mut self.state else {
            return None;
        };
        let granule = offset / GRANULE;
        Some(match *written {
            Written::Clean => {
                *written = Written::Granule(granule);
                granule_range(granule, blksize)
            }
            // Another thread's fault in the same granule, handled after the first: its
            // protection is already lifted (lifting it again is harmless and wakes the
            // writer).
            Written::Granule(g) if g == granule => granule_range(granule, blksize),
            Written::Granule(_) | Written::Whole => {
                *written = Written::Whole;
                0..blksize
            }
        })
    }

    /// The evictor wants this block's pages gone.
    pub fn start_evict(&mut self) -> Eviction {
        match self.state {
            State::Loaded {
                written: Written::Clean,
            } => {
                // Clean, so write-protected: a write from now on traps and waits for
                // `finish_drop`.
                self.state = State::Busy;
                Eviction::Started
            }
            State::Loaded { .. } => Eviction::Dirty,
            State::Registered | State::Busy => Eviction::NotLoaded,
        }
    }

    /// An abort drops the block's pages whatever they hold: busy now; true if it was loaded.
    pub fn start_drop(&mut self) -> bool {
        let was_loaded = self.is_loaded();
        self.state = State::Busy;
        was_loaded
    }

    /// The pages of [`Block::start_evict`] or [`Block::start_drop`] are gone.
    pub fn finish_drop(&mut self) {
        debug_assert!(self.is_busy());
        self.state = State::Registered;
    }

    /// The region closes: the block no longer counts as loaded. `Some(dirty)` if it was.
    pub fn unload(&mut self) -> Option<bool> {
        let State::Loaded { written } = self.state else {
            return None;
        };
        self.state = State::Registered;
        Some(written != Written::Clean)
    }
}

/// The bytes of granule `g` of a block of `blksize` bytes (the last one may be short).
fn granule_range(g: usize, blksize: usize) -> Range<usize> {
    (g * GRANULE).min(blksize)..((g + 1) * GRANULE).min(blksize)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Fetch for Nothing {
        fn fetch(&self) -> crate::Result<Vec<u8>> {
            Ok(Vec::new())
        }
        fn describe(&self) -> String {
            "nothing".into()
        }
    }

    fn whole(blksize: usize) -> Range<usize> {
        0..blksize
    }

    fn loaded() -> Block {
        let mut b = Block::new(Arc::new(Nothing), 1);
        assert!(b.start_install(1));
        b.finish_install(true);
        b
    }

    #[test]
    fn writes_widen_from_one_granule_to_the_whole_block() {
        let blk = 2 << 20;
        let mut b = loaded();
        assert!(b.written_ranges(blk).is_empty());
        assert_eq!(b.write_at(GRANULE + 5, blk), Some(GRANULE..2 * GRANULE));
        // Another fault in the same granule (a second writer's, handled after the first).
        assert_eq!(b.write_at(2 * GRANULE - 1, blk), Some(GRANULE..2 * GRANULE));
        assert_eq!(b.written_ranges(blk), vec![granule_range(1, blk)]);
        assert_eq!(b.start_evict(), Eviction::Dirty);
        assert_eq!(b.write_at(0, blk), Some(0..blk));
        assert_eq!(b.written_ranges(blk), vec![whole(blk)]);
        assert_eq!(b.write_at(GRANULE, blk), Some(0..blk));
        assert_eq!(b.unload(), Some(true));
        assert_eq!(b.write_at(0, blk), None, "not loaded: nothing to unprotect");
    }

    #[test]
    fn granules_end_at_the_block_end() {
        // A block of 96 KiB: the second granule is 32 KiB; a 16 KiB block is one granule.
        let mut b = loaded();
        assert_eq!(b.write_at(90 << 10, 96 << 10), Some(GRANULE..96 << 10));
        let mut b = loaded();
        assert_eq!(b.write_at(4096, 16 << 10), Some(0..16 << 10));
        assert_eq!(b.write_at(0, 16 << 10), Some(0..16 << 10));
        assert_eq!(b.written_ranges(16 << 10), vec![whole(16 << 10)]);
    }

    #[test]
    fn only_clean_blocks_are_evicted_and_a_dropped_block_is_clean() {
        let mut b = loaded();
        assert_eq!(b.start_evict(), Eviction::Started);
        b.finish_drop();
        assert!(!b.is_loaded());
        assert_eq!(b.start_evict(), Eviction::NotLoaded);
        let mut b = loaded();
        b.write_at(0, 2 << 20);
        assert!(b.start_drop(), "it was loaded");
        b.finish_drop();
        assert!(b.written_ranges(2 << 20).is_empty());
        assert!(
            !b.start_install(2),
            "another registration's fetch is not installed"
        );
    }
}
