//! The memory layer: arrays as plain memory whose contents come from the store.
//!
//! This layer knows nothing of storage or transactions: it is told what lies behind each block
//! ([`Backing`]) and reports which pages were written. Part 1 — the *mapped path* for stores
//! whose block versions are immutable, page-aligned file extents — is [`BlockMemory`]; its
//! block state machine is documented there.

mod dirty;
mod mapped;
mod reservation;

pub use dirty::{method as scan_method, ScanMethod, PAGE};
pub use mapped::{Backing, BlockMemory, BlockSource};
pub use reservation::{Reservation, ALIGN};
