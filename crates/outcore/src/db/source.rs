//! Telling the memory layer what lies behind a block at a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::storage::{Key, Located, Oid, StagedExtent, Storage, Tid};
use crate::vm::{Backing, BlockSource, Fetch, FilePiece, SpillTarget, Staging};
use crate::{Error, Result};

/// A block stored as more pieces than this (changed pages of several commits scattered over
/// the block) is composed into fetched memory rather than mapped piece by piece: each piece
/// costs up to two of the process's `vm.max_map_count` kernel mappings.
const MAX_MAPPED_PIECES: usize = 16;

/// The blocks of one block file as of snapshot `at`. Blocks at or beyond `cut` were dropped by
/// a shrink in the current transaction and read as holes whatever the store holds.
pub(crate) struct SnapshotSource<'a> {
    pub storage: &'a Arc<dyn Storage>,
    pub file: Oid,
    pub at: Tid,
    pub cut: Option<u64>,
    /// Holes from this block on are new data of a writable transaction (blocks past the
    /// committed end: fresh arrays, appends, grown ranges): where the store can, they are
    /// mapped onto staged space (`Storage::stage`) so that writes land in the store's file
    /// once, and memory stays bounded (the kernel writes such pages back and evicts them).
    pub stage_from: Option<u64>,
    /// The block size (of staged space).
    pub blksize: usize,
}

/// A store's staged space as the memory layer maps it.
#[derive(Debug)]
pub(crate) struct StagedBlock(pub Arc<StagedExtent>);

impl Staging for StagedBlock {
    fn file(&self) -> &std::fs::File {
        self.0.file()
    }

    fn offset(&self) -> u64 {
        self.0.offset()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The snapshot and shrink cut an array's windows were last mapped at (updated whenever
/// its blocks are mapped), read without locks by the spill thread: the version under a
/// mapped block is its version there.
#[derive(Debug)]
pub(crate) struct MappedAt {
    at: AtomicU64,
    /// The cut, or `u64::MAX` for none.
    cut: AtomicU64,
}

impl MappedAt {
    pub fn new() -> Self {
        MappedAt {
            at: AtomicU64::new(0),
            cut: AtomicU64::new(u64::MAX),
        }
    }

    pub fn set(&self, at: Tid, cut: Option<u64>) {
        self.at.store(at.0, Ordering::Release);
        self.cut.store(cut.unwrap_or(u64::MAX), Ordering::Release);
    }
}

/// Where a writable window spills written blocks: staged space of the store where it has
/// any (published at commit without a copy), else the process's scratch file.
#[derive(Debug)]
pub(crate) struct StoreSpill {
    pub storage: Arc<dyn Storage>,
    pub file: Oid,
    pub blksize: usize,
    pub mapped_at: Arc<MappedAt>,
}

impl SpillTarget for StoreSpill {
    fn version(&self, block: u64) -> Result<Backing> {
        let source = SnapshotSource {
            storage: &self.storage,
            file: self.file,
            at: Tid(self.mapped_at.at.load(Ordering::Acquire)),
            cut: Some(self.mapped_at.cut.load(Ordering::Acquire)).filter(|&c| c != u64::MAX),
            stage_from: None,
            blksize: self.blksize,
        };
        source.backing(block)
    }

    fn stage(&self) -> Result<Option<Arc<dyn Staging>>> {
        let len = self.blksize as u64;
        Ok(Some(match self.storage.stage(len)? {
            Some(extent) => Arc::new(StagedBlock(extent)),
            // The store writes versions only at commit: the block waits in scratch space.
            None => Arc::new(super::scratch::ScratchExtent::new(len)?),
        }))
    }
}

impl SnapshotSource<'_> {
    fn key(&self, block: u64) -> Key {
        Key::Block {
            file: self.file,
            index: block,
        }
    }
}

/// One stored block version, fetched when the memory layer asks (on first touch).
struct StoredBlock {
    storage: Arc<dyn Storage>,
    key: Key,
    at: Tid,
}

impl StoredBlock {
    /// The version the store located is not there: the store lost data (a pack that removed it
    /// would have made the read fail with [`Error::SnapshotTooOld`] instead).
    fn vanished(&self) -> Error {
        Error::Corrupt {
            key: self.key,
            tid: self.at,
            reason: "the block version the store located at this snapshot has vanished".into(),
        }
    }
}

impl Fetch for StoredBlock {
    fn fetch(&self) -> Result<Vec<u8>> {
        let v = self
            .storage
            .load(self.key, self.at)?
            .ok_or_else(|| self.vanished())?;
        Ok(v.data)
    }

    fn fetch_into(&self, out: &mut [u8]) -> Result<usize> {
        self.storage
            .load_into(self.key, self.at, out)?
            .ok_or_else(|| self.vanished())
    }

    fn describe(&self) -> String {
        format!("{} at {} in {}", self.key, self.at, self.storage.describe())
    }

    fn is_local(&self) -> bool {
        !self.storage.is_remote()
    }
}

impl SnapshotSource<'_> {
    /// The backing of a block without data: staged space for new data where the store has
    /// it, else zeros.
    fn hole(&self, block: u64) -> Result<Backing> {
        if self.stage_from.is_some_and(|from| block >= from) {
            if let Some(extent) = self.storage.stage(self.blksize as u64)? {
                return Ok(Backing::Staged(Arc::new(StagedBlock(extent))));
            }
        }
        Ok(Backing::Hole)
    }
}

impl BlockSource for SnapshotSource<'_> {
    fn backings(&self, blocks: &[u64]) -> Result<Vec<Backing>> {
        // Fetch on touch where the kernel allows it; otherwise remote blocks are fetched now,
        // many at once.
        if !self.storage.is_remote() || crate::vm::fault_filling_unavailable().is_none() {
            return blocks.iter().map(|&b| self.backing(b)).collect();
        }
        let wanted: Vec<u64> = blocks
            .iter()
            .copied()
            .filter(|b| self.cut.is_none_or(|c| *b < c))
            .collect();
        let keys: Vec<Key> = wanted.iter().map(|&b| self.key(b)).collect();
        let mut fetched = wanted
            .into_iter()
            .zip(self.storage.load_many(&keys, self.at)?);
        let mut next = fetched.next();
        Ok(blocks
            .iter()
            .map(|&b| match next.take() {
                Some((fb, version)) if fb == b => {
                    next = fetched.next();
                    version.map_or(Backing::Hole, |v| Backing::Bytes(v.data))
                }
                other => {
                    next = other;
                    Backing::Hole
                }
            })
            .collect())
    }

    fn backing(&self, block: u64) -> Result<Backing> {
        if self.cut.is_some_and(|c| block >= c) {
            return self.hole(block);
        }
        let key = Key::Block {
            file: self.file,
            index: block,
        };
        Ok(match self.storage.locate(key, self.at)? {
            Located::Absent => self.hole(block)?,
            Located::Mapped(e) => Backing::File {
                file: e.file,
                offset: e.offset,
                len: e.len,
            },
            Located::Pieces { pieces, .. } if pieces.len() <= MAX_MAPPED_PIECES => Backing::Pieces(
                pieces
                    .into_iter()
                    .map(|p| FilePiece {
                        at: p.at as usize,
                        file: p.file,
                        offset: p.offset,
                        len: p.len as usize,
                    })
                    .collect(),
            ),
            // Scattered pieces are fetched instead of mapped: composed on first touch into
            // memory that shares few kernel mappings (the fault-filled path).
            Located::Pieces { tid, .. } | Located::CopyOnly(tid) => {
                Backing::Fetch(Arc::new(StoredBlock {
                    // Through what the store names for this (a closable wrapper's pin): closing
                    // the database must not leave views with blocks that cannot be fetched.
                    storage: self
                        .storage
                        .fetch_store()
                        .unwrap_or_else(|| self.storage.clone()),
                    key,
                    // Exactly the version located.
                    at: tid,
                }))
            }
        })
    }
}
