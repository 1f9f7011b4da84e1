//! Block bodies in an S3-compatible object store, the index in any other store.
//!
//! [`BlobStorage`] wraps an index store (PostgreSQL for many nodes, the embedded store for
//! one): every block version's body is an immutable object `<prefix>/<file oid>/<block>/<id>`
//! (a random 128-bit id, so names never collide and nothing is overwritten), and the index
//! keeps, as that version's block body, a small pointer record (id, length, xxh3-64
//! checksum). Metadata records stay in the index.
//!
//! * **Commit**: upload the new bodies first (in parallel), then commit the index transaction
//!   whose records point at them. A failed upload commits nothing; a crash in between leaves
//!   only unreferenced objects. Conflicts, snapshots, the log and leases are the index
//!   store's, so they behave exactly as with bodies inside it.
//! * **Read**: `load`/`load_many` fetch the objects (in parallel) and check length and
//!   checksum; `locate` answers `CopyOnly`, or, with a disk cache (`cache.rs`) holding the
//!   body, `Mapped` from the cached file.
//! * **Pack**: the index packs, then objects no version it still holds points at, older than
//!   a grace period (so the uploads of a commit in flight survive), are deleted.
//!
//! Which object store a store uses is recorded in its index at creation (`setting.rs`).

#[cfg(feature = "s3")]
mod body;
#[cfg(feature = "s3")]
mod cache;
#[cfg(feature = "s3")]
mod cache_home;
#[cfg(feature = "s3")]
mod cache_writer;
#[cfg(feature = "s3")]
mod client;
#[cfg(feature = "s3")]
mod fetch;
#[cfg(feature = "s3")]
mod objects;
#[cfg(feature = "s3")]
mod pointer;
#[cfg(feature = "s3")]
mod references;
pub(crate) mod setting;
#[cfg(feature = "s3")]
mod staging;
#[cfg(feature = "s3")]
mod store;
#[cfg(feature = "s3")]
mod upload;

#[cfg(feature = "s3")]
pub use store::{BlobOptions, BlobStorage};
