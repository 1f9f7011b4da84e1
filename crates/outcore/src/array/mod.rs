//! BigArray building blocks: persistent metadata, element types, slicing checks.
//!
//! The array handle users hold, [`BigArray`](crate::db::BigArray), lives in the `db` module
//! because it needs a connection (snapshot, transaction) to map its memory.

mod element;
mod meta;
pub(crate) mod slicing;

pub use element::Element;
pub use meta::{ArrayMeta, Order, DEFAULT_BLKSIZE};
