//! The plain data types of the storage contract.

use std::fmt;
use std::fs::File;
use std::sync::Arc;

pub use crate::ids::{Key, Oid, Tid};

/// Bytes to store that live elsewhere (for example in mapped array memory); the store reads
/// them during the commit, so no copy is made beforehand.
pub trait Payload: Send + Sync {
    /// The bytes; they must not change while the commit runs.
    fn bytes(&self) -> &[u8];
}

/// One change in a commit.
#[derive(Clone)]
pub enum Write {
    /// A new version with these bytes.
    Store(Vec<u8>),
    /// A new version with bytes read from `Payload` during the commit.
    StoreFrom(Arc<dyn Payload>),
    /// A new version of a block that differs from the version the writer read (at the
    /// commit's `base`; first committer wins makes it the current one) only in `pages`:
    /// ascending, disjoint ranges of 4 KiB page indices. `from` holds the complete new
    /// contents (read during the commit); the store may keep just the changed pages (a delta,
    /// format v2) or the whole version.
    Pages {
        /// The changed pages, as page-index ranges.
        pages: Vec<std::ops::Range<u32>>,
        /// The complete new contents of the block.
        from: Arc<dyn Payload>,
    },
    /// A new version of a block written ahead into space the store staged
    /// ([`Storage::stage`](super::Storage::stage)): the store that staged it records the
    /// extent itself (no copy; it syncs the file first). `from` holds the same bytes (the
    /// memory mapping the extent): any other store stores those, like `StoreFrom`.
    Staged {
        /// The staged space holding the version.
        extent: Arc<super::StagedExtent>,
        /// The bytes written there.
        from: Arc<dyn Payload>,
    },
    /// A new version of a block whose body another process staged
    /// ([`Storage::stage_body`](super::Storage::stage_body)) in this store: the store records
    /// it as it lies, without a copy (the commit fails, writing nothing, if a pack reclaimed
    /// it meanwhile, if it was staged for another block or by another store). `mem:` stores
    /// refuse it.
    Adopt(super::StagedRef),
    /// A deletion marker: from this tid on the key reads as absent (a hole for blocks).
    Delete,
}

impl Write {
    /// The complete bytes of a new version, `None` for a deletion (and for
    /// [`Write::Adopt`], whose bytes lie in the store already).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Write::Store(v) => Some(v),
            Write::StoreFrom(p) | Write::Pages { from: p, .. } | Write::Staged { from: p, .. } => {
                Some(p.bytes())
            }
            Write::Delete | Write::Adopt(_) => None,
        }
    }
}

impl fmt::Debug for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.bytes()) {
            (Write::Adopt(r), _) => write!(f, "Adopt({r:?})"),
            (_, Some(b)) => write!(f, "Store({} bytes)", b.len()),
            (_, None) => f.write_str("Delete"),
        }
    }
}

/// Who made a transaction and why, stored in the commit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnMeta {
    /// User name.
    pub user: String,
    /// Free-form description.
    pub description: String,
}

impl TxnMeta {
    /// Transaction metadata with a user and a description.
    pub fn new(user: impl Into<String>, description: impl Into<String>) -> Self {
        TxnMeta {
            user: user.into(),
            description: description.into(),
        }
    }
}

/// Everything one commit writes.
#[derive(Clone, Debug, Default)]
pub struct CommitRequest {
    /// The snapshot the writer read from; a written key with a newer version is a conflict.
    pub base: Tid,
    /// The new versions and deletions. A key may appear at most once.
    pub writes: Vec<(Key, Write)>,
    /// User and description for the log.
    pub meta: TxnMeta,
}

impl CommitRequest {
    /// Fails for a request that publishes versions staged by another process
    /// ([`Write::Adopt`]) on a store that cannot (`store`, for the message).
    pub(crate) fn refuse_adoption(&self, store: &str) -> crate::Result<()> {
        match self
            .writes
            .iter()
            .find(|(_, w)| matches!(w, Write::Adopt(_)))
        {
            Some((key, _)) => Err(crate::Error::InvalidArgument(format!(
                "{key}: {store} cannot publish a version staged by another process (only \
                 the embedded store, PostgreSQL and object storage can)"
            ))),
            None => Ok(()),
        }
    }

    /// The writes that publish staged bodies ([`Write::Adopt`]): their positions in
    /// `writes` and references, each checked to have been staged for the block it is written
    /// to.
    #[cfg(feature = "postgres")]
    pub(crate) fn adopted(&self) -> crate::Result<Vec<(usize, super::StagedRef)>> {
        adopted(&self.writes)
    }
}

/// [`CommitRequest::adopted`] of `writes`.
#[cfg(any(feature = "postgres", feature = "s3"))]
pub(crate) fn adopted(writes: &[(Key, Write)]) -> crate::Result<Vec<(usize, super::StagedRef)>> {
    let mut out = Vec::new();
    for (i, (key, write)) in writes.iter().enumerate() {
        if let Write::Adopt(r) = write {
            if r.key != *key {
                return Err(crate::Error::InvalidArgument(format!(
                    "{key}: {r} was staged for another block; nothing was committed"
                )));
            }
            out.push((i, *r));
        }
    }
    Ok(out)
}

/// One commit-log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnInfo {
    /// The commit's tid (also its time, see [`Tid::time`]).
    pub tid: Tid,
    /// Who committed.
    pub user: String,
    /// Why.
    pub description: String,
    /// Every key the commit wrote or deleted, in key order.
    pub keys: Vec<Key>,
}

/// A version's bytes, copied out of the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The tid that wrote this version.
    pub tid: Tid,
    /// The (decompressed, checksum-verified) bytes.
    pub data: Vec<u8>,
}

/// Where a block version lies in a file: `len` bytes from page-aligned `offset`.
///
/// The bytes never change while any snapshot can see this version. The file may be unlinked
/// by a later pack; an open descriptor (and any mapping made from it) stays valid.
#[derive(Clone, Debug)]
pub struct Extent {
    /// The file holding the bytes (open for reading).
    pub file: Arc<File>,
    /// Byte offset, a multiple of 4096.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The version's tid.
    pub tid: Tid,
    /// The xxh3-64 checksum of the bytes.
    pub checksum: u64,
}

/// The answer of [`Storage::locate`](super::Storage::locate).
#[derive(Clone, Debug)]
pub enum Located {
    /// No version at that snapshot (or deleted): a hole.
    Absent,
    /// An uncompressed version lying in a file; map it.
    Mapped(Extent),
    /// An uncompressed version stored as changed pages over older versions (format v2
    /// deltas), all lying in files: map each piece at its place in the block; gaps read as
    /// zeros.
    Pieces {
        /// The version's tid.
        tid: Tid,
        /// Where each part of the composed block lies, ascending by `at`.
        pieces: Vec<super::delta::Piece>,
    },
    /// A version that exists but can only be copied out with `load` (compressed, inline or
    /// remote); the tid tells which version.
    CopyOnly(Tid),
}

impl Located {
    /// The tid of the located version, `None` for a hole.
    pub fn tid(&self) -> Option<Tid> {
        match self {
            Located::Absent => None,
            Located::Mapped(e) => Some(e.tid),
            Located::Pieces { tid, .. } | Located::CopyOnly(tid) => Some(*tid),
        }
    }
}

/// What [`Storage::pack`](super::Storage::pack) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    /// The horizon actually used: `min(upto, head, oldest live lease)`.
    pub horizon: Tid,
    /// Versions removed.
    pub versions_removed: u64,
    /// Versions kept.
    pub versions_kept: u64,
    /// Bytes of block bodies before and after.
    pub body_bytes_before: u64,
    /// Bytes of block bodies after.
    pub body_bytes_after: u64,
}

/// What [`Storage::verify`](super::Storage::verify) found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Versions read.
    pub versions_checked: u64,
    /// Payload bytes read.
    pub bytes_checked: u64,
    /// Every damaged version, as a [`Corrupt`](crate::Error::Corrupt) error.
    pub problems: Vec<crate::Error>,
}
