//! The memory layer: arrays as plain memory whose contents come from the store.
//!
//! This layer knows nothing of storage or transactions: it is told what lies behind each block
//! ([`Backing`]) and reports which pages were written. Part 1 — the *mapped path* for stores
//! whose block versions are immutable, page-aligned file extents — is [`BlockMemory`]; its
//! block state machine is documented there.

mod barrier;
mod dirty;
mod dirty_budget;
mod fork_gate;
mod mapped;
mod readahead;
mod reservation;
mod uffd;

pub use dirty::{method as scan_method, ScanMethod, PAGE};
pub use dirty_budget::{dirty_budget, set_dirty_budget, spill_over};
pub use mapped::{
    live_memories, max_map_count, Backing, BlockMemory, BlockSource, FilePiece, SpillTarget,
    Staging,
};
pub use reservation::{Reservation, ALIGN};
pub use uffd::{stats as fault_stats, FaultStats, Fetch};

/// Sets the process-wide RAM budget for fetched (fault-filled) blocks that are clean; the
/// oldest are dropped beyond it and fetched again when touched.
pub fn set_cache_budget(bytes: u64) {
    uffd::set_budget(bytes);
}

/// Why fault-filled memory (userfaultfd) cannot be used here, or `None` if it can; without it,
/// unmappable blocks are fetched when a view covering them is made.
pub fn fault_filling_unavailable() -> Option<String> {
    uffd::server().err()
}
