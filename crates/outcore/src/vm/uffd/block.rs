//! The state of one registered block of a [`FetchedRegion`](super::region::FetchedRegion),
//! and its transitions. Every method is called with the region's state locked.
//!
//! ```text
//!  Registered ──start_install──► Busy ──finish_install(true)──► Loaded { dirty: false }
//!   ▲  ▲  ▲                       │                                │        │
//!   │  │  └─finish_install(false)─┘                                │   mark_written
//!   │  │                                                           │        ▼
//!   │  └── finish_drop ◄── Busy ◄── start_evict (clean only) ──────┘  Loaded { dirty: true }
//!   │                          ◄── start_drop (any state) ─────────────────────┘
//!   └── unload (the region closes)
//! ```
//!
//! Being *queued* for a worker is not a state of the block: the fault server keeps that set,
//! so that a block re-registered while a job for it is pending is not queued twice.

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
        /// Written since it was loaded (its write protection was lifted): never evicted.
        dirty: bool,
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

    /// True if written since it was loaded.
    pub fn is_dirty(&self) -> bool {
        self.state == State::Loaded { dirty: true }
    }

    /// True if a touch must fetch it (registered, nobody loading it now).
    pub fn wants_fetch(&self) -> bool {
        self.state == State::Registered
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
            State::Loaded { dirty: false }
        } else {
            State::Registered
        };
    }

    /// The first write to the loaded block: true if it was loaded (and is now dirty).
    pub fn mark_written(&mut self) -> bool {
        match &mut self.state {
            State::Loaded { dirty } => {
                *dirty = true;
                true
            }
            _ => false,
        }
    }

    /// The evictor wants this block's pages gone.
    pub fn start_evict(&mut self) -> Eviction {
        match self.state {
            State::Loaded { dirty: false } => {
                // Clean, so write-protected: a write from now on traps and waits for
                // `finish_drop`.
                self.state = State::Busy;
                Eviction::Started
            }
            State::Loaded { dirty: true } => Eviction::Dirty,
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
        let State::Loaded { dirty } = self.state else {
            return None;
        };
        self.state = State::Registered;
        Some(dirty)
    }
}
