//! # outcore — out-of-core, transactional N-d arrays
//!
//! Arrays bigger than RAM and bigger than local disk, used as if they were in memory, changed in
//! ACID transactions. The crate is layered (dependencies point down only):
//!
//! * [`storage`] — an MVCC block store: the [`storage::Storage`] trait and its backends
//!   ([`storage::MemStorage`] for tests, [`storage::LocalStorage`], the embedded default:
//!   an LMDB index plus page-aligned, append-only segment files).
//!
//! ```
//! use outcore::storage::{CommitRequest, Key, MemStorage, Oid, Storage, Tid, TxnMeta, Write};
//!
//! let store = MemStorage::new();
//! let file = Oid(store.new_oids(1)?.start);
//! let key = Key::Block { file, index: 0 };
//! let tid = store.commit(CommitRequest {
//!     base: store.head()?,
//!     writes: vec![(key, Write::Store(vec![7u8; 4096]))],
//!     meta: TxnMeta::new("me", "first block"),
//! })?;
//! let v = store.load(key, tid)?.expect("committed");
//! assert_eq!(v.data[0], 7);
//! assert!(store.load(key, Tid(tid.0 - 1))?.is_none()); // before the commit: a hole
//! # Ok::<(), outcore::Error>(())
//! ```

#![deny(missing_docs)]

pub mod array;
pub mod db;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod ids;
pub mod storage;
pub mod vm;

#[cfg(feature = "postgres")]
pub use error::PostgresError;
pub use error::{Error, IndexError, Result};

#[cfg(test)]
mod fuzz_smoke;
