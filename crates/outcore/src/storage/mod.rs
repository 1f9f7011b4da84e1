//! The storage layer: an MVCC, transactional store of small metadata records and array blocks.
//!
//! Semantics every backend provides (the conformance suite in `tests/storage_conformance.rs`
//! checks them all):
//!
//! * **Tids** ([`Tid`]) are u64 nanoseconds since the Unix epoch, strictly increasing:
//!   a commit gets `max(now, head + 1)`. Commit order is tid order; a tid is also a timestamp.
//! * **Keys** ([`Key`]) name either a small metadata record ([`Key::Meta`]) or one block of a
//!   block file ([`Key::Block`], keyed by file object id and block index). There is no per-file
//!   block table: appending to a file writes only the new blocks.
//! * **Reads** take an explicit snapshot: [`Storage::load`] returns the newest version with
//!   `tid <= at`, or `None` when the key has no version there (for a block: a hole, read zeros).
//!   No engine transaction stays open between calls.
//! * **Commits** ([`Storage::commit`]) are atomic and durable when they return. First committer
//!   wins: if any written key has a version newer than the request's `base`, the commit fails
//!   with [`Error::Conflict`] naming that key and writes nothing.
//! * **The commit log** ([`Storage::log`], [`Storage::changes`]) lists every commit with the keys
//!   it changed; it is written atomically with the data and is the source of truth for
//!   invalidating caches of other clients.
//! * **History** stays readable until [`Storage::pack`], which removes versions shadowed at or
//!   before its horizon and never passes the snapshot of a live [`ReaderLease`]. A read at a
//!   snapshot older than the horizon (a reader without a live lease) never returns other data:
//!   it fails with [`Error::SnapshotTooOld`] unless what it finds
//!   is provably what that snapshot saw (see `check_horizon`).
//! * **Integrity**: every stored payload carries an xxh3-64 checksum of its bytes, checked
//!   whenever bytes are copied out; [`Storage::verify`] checks the whole store. Blocks may be
//!   compressed (lz4 or zstd, a store setting); compressed blocks cannot be mapped.
//! * **Mapping**: [`Storage::locate`] tells where an uncompressed block version lies in a file
//!   (page-aligned, immutable while referenced), so the memory layer can `mmap` it directly.

pub(crate) mod blobs;
mod closable;
pub(crate) mod codec;
pub(crate) mod delta;
mod lease;
mod local;
mod mem;
#[cfg(feature = "postgres")]
mod postgres;
pub(crate) mod record;
mod segment;
mod staged;
mod types;

#[cfg(feature = "s3")]
pub use blobs::{BlobOptions, BlobStorage};
pub use closable::ClosableStorage;
pub use codec::Compression;
pub use delta::Piece;
pub use lease::ReaderLease;
pub use local::{LocalOptions, LocalStorage, StagedExtent};
pub use mem::MemStorage;
#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgStorage};
pub use staged::{StagedHold, StagedPlace, StagedRef};
pub use types::{
    CommitRequest, Extent, Key, Located, Oid, PackStats, Payload, Tid, TxnInfo, TxnMeta,
    VerifyReport, Version, Write,
};

use std::fmt::Debug;
use std::ops::Range;

use crate::{Error, Result};

/// The pack-horizon rule every backend applies to a read at snapshot `at` that found nothing,
/// with the `horizon` of the same engine snapshot as the read.
///
/// Pack keeps, for each key, only the newest version at or before its horizon (none if that
/// is a deletion), plus all newer ones. So a version found at `at < horizon` is that newest
/// one and is exactly what the snapshot saw (no version can lie between it and `at`): such
/// reads succeed, which keeps blocks untouched since before a pack fetchable at the version
/// located. Finding nothing at `at < horizon` is ambiguous — a hole, or a version pack removed
/// — and fails with [`Error::SnapshotTooOld`] rather than read zeros. Listings
/// ([`Storage::block_indices`]) apply it to every snapshot below the horizon.
pub(crate) fn check_horizon(at: Tid, horizon: Tid) -> Result<()> {
    if at < horizon {
        return Err(Error::SnapshotTooOld {
            requested: at,
            horizon,
        });
    }
    Ok(())
}

/// A transactional, multi-version store of metadata records and array blocks.
///
/// All methods may be called from any thread; implementations synchronise internally.
/// See the [module documentation](self) for the guarantees.
pub trait Storage: Send + Sync + Debug {
    /// A short human-readable description (path or url) for messages.
    fn describe(&self) -> String;

    /// The newest committed tid ([`Tid::ZERO`] for an empty store). Every commit `<= head` is
    /// completely visible.
    fn head(&self) -> Result<Tid>;

    /// Allocates `n` fresh object ids, unique for the life of the store. Keys under a fresh
    /// id never conflict.
    fn new_oids(&self, n: u64) -> Result<Range<u64>>;

    /// The newest version of `key` with `tid <= at`, its bytes copied out and checksum-verified
    /// (decompressed if needed). `None` if the key has no version there or it was deleted.
    fn load(&self, key: Key, at: Tid) -> Result<Option<Version>>;

    /// Like [`Storage::load`], but decodes into the front of `out` (the version must fit in
    /// it) and returns the length written; stores override it to avoid a second copy.
    fn load_into(&self, key: Key, at: Tid, out: &mut [u8]) -> Result<Option<usize>> {
        let Some(v) = self.load(key, at)? else {
            return Ok(None);
        };
        let room = out.len();
        let target = out.get_mut(..v.data.len()).ok_or_else(|| Error::Corrupt {
            key,
            tid: v.tid,
            reason: format!(
                "length {} exceeds the {room} bytes it must fit in",
                v.data.len()
            ),
        })?;
        target.copy_from_slice(&v.data);
        Ok(Some(v.data.len()))
    }

    /// Where the newest version of `key` with `tid <= at` lies, without reading it.
    /// [`Located::Mapped`] is returned only for uncompressed block versions stored in a file
    /// at a page-aligned offset; such an extent is never overwritten while it is referenced.
    fn locate(&self, key: Key, at: Tid) -> Result<Located>;

    /// Commits `req` atomically and durably, returning its tid. Fails with
    /// [`Error::Conflict`] (nothing written) if a written key has a
    /// version newer than `req.base`.
    fn commit(&self, req: CommitRequest) -> Result<Tid>;

    /// The commit log for `after < tid <= upto`, oldest first: tid, user, description and keys.
    /// Fails with [`Error::SnapshotTooOld`] if `after` is older than
    /// what pack kept of the log.
    fn log(&self, after: Tid, upto: Tid) -> Result<Vec<TxnInfo>>;

    /// Registers a reader at snapshot `at`; pack will not remove what it can see.
    /// Prefer [`ReaderLease`], which calls this and releases on drop. The embedded store on
    /// media it cannot write hands out an unrecorded lease instead: its reads then fail with
    /// [`Error::SnapshotTooOld`] once another process packed past
    /// the snapshot, never return what that pack removed.
    fn acquire_lease(&self, at: Tid) -> Result<u64>;

    /// Moves lease `id` to snapshot `at`.
    fn renew_lease(&self, id: u64, at: Tid) -> Result<()>;

    /// Releases lease `id`. Never fails: an unknown id is ignored.
    fn release_lease(&self, id: u64);

    /// Waits until any pack running now has finished (packs started later see every lease
    /// registered before this call). Used when leasing an old snapshot.
    fn fence(&self) -> Result<()> {
        Ok(())
    }

    /// Space for a block version of `len` bytes (a multiple of 4096) written before the commit
    /// that publishes it ([`Write::Staged`]): the caller maps [`StagedExtent::file`] shared at
    /// [`StagedExtent::offset`] and writes there; a commit publishes it without a copy, and
    /// dropping it unpublished gives the space back. A crash leaves unpublished space to the
    /// next [`Storage::pack`]. `None` where the store cannot take writes ahead (compressed,
    /// remote or read-only stores): write the version with the commit instead.
    fn stage(&self, len: u64) -> Result<Option<std::sync::Arc<StagedExtent>>> {
        let _ = len;
        Ok(None)
    }

    /// Writes `bytes` (at most a block) as a new version of block `key` ahead of the commit
    /// that publishes it, for another process to publish ([`Write::Adopt`], see
    /// [`StagedRef`]): nothing reads it until then, and pack reclaims it once nothing holds
    /// it. `None` where the store cannot (compressed embedded, `mem:`, read-only or nearly
    /// full stores): send the bytes instead. The default stages space with
    /// [`Storage::stage`] and hands it over.
    fn stage_body(&self, key: Key, bytes: &[u8]) -> Result<Option<StagedRef>> {
        let len = bytes.len().next_multiple_of(4096).max(4096) as u64;
        let Some(extent) = self.stage(len)? else {
            return Ok(None);
        };
        let used = delta::used_len(bytes);
        std::os::unix::fs::FileExt::write_all_at(&**extent.file(), &bytes[..used], extent.offset())
            .map_err(|e| Error::io("writing a staged block", e))?;
        extent
            .hand_over(key, used as u64, codec::checksum(&bytes[..used]))
            .map(Some)
    }

    /// True if [`Storage::stage_body`] stages bodies here (it may still answer `None`, for
    /// a nearly full disk); false where it never does.
    fn stages_bodies(&self) -> bool {
        false
    }

    /// Keeps the body `version` names (staged by [`Storage::stage_body`], maybe in another
    /// process) from pack until the hold is dropped: taken by the process that will publish
    /// it with [`Write::Adopt`] as soon as it receives the reference. Fails if the body is
    /// gone already or the store cannot publish such versions.
    fn hold_staged(&self, version: &StagedRef) -> Result<StagedHold> {
        Err(Error::InvalidArgument(format!(
            "{} cannot publish a version staged by another process ({version:?})",
            self.describe()
        )))
    }

    /// The pack horizon: versions shadowed at or before it may have been removed, so snapshots
    /// older than it are not readable consistently. [`Tid::ZERO`] if never packed.
    fn pack_horizon(&self) -> Result<Tid>;

    /// Removes versions shadowed at or before `min(upto, head, oldest live lease)` (and
    /// deleted keys whose deletion is that old), drops the log up to there, and rewrites the
    /// live block bodies contiguously in key order.
    fn pack(&self, upto: Tid) -> Result<PackStats>;

    /// Reads every stored version and checks its checksum.
    fn verify(&self) -> Result<VerifyReport>;

    /// The indices of the blocks of block file `file` that hold data at snapshot `at`
    /// (newest version `<= at` exists and is not a deletion), ascending.
    fn block_indices(&self, file: Oid, at: Tid) -> Result<Vec<u64>>;

    /// True for stores whose blocks are fetched over a network and never mapped: callers
    /// should fetch many blocks at once with [`Storage::load_many`].
    fn is_remote(&self) -> bool {
        false
    }

    /// [`Storage::load`] of many keys at one snapshot, in the order given. Remote stores
    /// fetch them in parallel over several connections.
    fn load_many(&self, keys: &[Key], at: Tid) -> Result<Vec<Option<Version>>> {
        keys.iter().map(|&k| self.load(k, at)).collect()
    }

    /// The store that memory fetching blocks on first touch should read through, if not this
    /// one: [`ClosableStorage`] hands out one that keeps the store and the snapshots such
    /// memory may still fetch after the database is closed.
    fn fetch_store(&self) -> Option<std::sync::Arc<dyn Storage>> {
        None
    }

    /// The keys changed by each commit with `after < tid <= upto`, oldest first.
    fn changes(&self, after: Tid, upto: Tid) -> Result<Vec<(Tid, Vec<Key>)>> {
        Ok(self
            .log(after, upto)?
            .into_iter()
            .map(|t| (t.tid, t.keys))
            .collect())
    }
}
