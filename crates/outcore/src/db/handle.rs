//! The state of one open array inside one connection: its memory and what the current
//! transaction changed (metadata, shrunk blocks).

mod commit;
mod windows;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use super::source::{MappedAt, SnapshotSource};
use crate::array::ArrayMeta;
use crate::storage::{Key, Oid, StagedHold, StagedRef, Storage, Tid};
use crate::vm::BlockMemory;
use crate::{Error, Result};

/// One open array of a connection.
///
/// Its memory is a set of *windows* ([`BlockMemory`]): address-space reservations that each
/// hold a range of the array's blocks, reserved when a view first needs them and in
/// proportion to what is viewed (with room to grow), so arrays far larger than the address
/// space can be viewed in parts and many arrays can be open at once. A view is served by the
/// newest window holding its blocks; only when none does is a new one reserved (arrays up to
/// 1 TiB get one window from block 0, so all their views alias).
///
/// Windows that hold the same block (a view made before the array outgrew its window, and
/// one made after) do not share memory: the new window starts with a copy of the old one's
/// uncommitted writes, later writes show only through the window written. At commit the
/// windows' writes are merged byte by byte against the committed data; a byte changed
/// differently through two windows fails the commit with [`Error::DivergentWrites`]
/// (nothing is lost silently). Windows no view uses and without writes are released when a
/// new one is reserved.
#[derive(Debug)]
pub(crate) struct ArrayHandle {
    /// The oid of the array's metadata record.
    pub oid: Oid,
    writable: bool,
    reserve: Option<u64>,
    /// The windows, oldest first.
    windows: Mutex<Vec<Arc<BlockMemory>>>,
    txn: Mutex<ArrayTxn>,
    /// `stored_end` at a snapshot: (snapshot, one past the last stored block). A leaf lock
    /// (taken under `txn`, nothing taken under it but store-internal locks).
    stored_end: Mutex<Option<(Tid, u64)>>,
    /// The snapshot and cut its blocks were last mapped at (for spilling).
    mapped_at: Arc<MappedAt>,
}

#[derive(Debug)]
struct ArrayTxn {
    /// The metadata at the connection's snapshot; `None` if created in this transaction.
    committed: Option<ArrayMeta>,
    /// The metadata as changed by this transaction.
    meta: ArrayMeta,
    /// Blocks at or beyond `cut` were dropped by a shrink in this transaction.
    cut: Option<u64>,
    /// The array was deleted, or its creation rolled back: unusable.
    detached: bool,
    /// Blocks whose new version another process staged (`adopt`), with the hold that keeps
    /// its staging segment from pack until this transaction ends.
    adopted: BTreeMap<u64, Adopted>,
}

/// A block version staged by another process, to be published by this transaction.
#[derive(Clone, Debug)]
struct Adopted {
    version: StagedRef,
    _hold: Arc<StagedHold>,
}

/// Written pages of one block: byte ranges within the block and their saved bytes.
type SavedPages = Vec<(Range<usize>, Vec<u8>)>;

/// What a savepoint remembers of one array.
#[derive(Debug)]
pub(crate) struct ArraySavepoint {
    meta: ArrayMeta,
    cut: Option<u64>,
    adopted: BTreeMap<u64, Adopted>,
    /// Each window's written pages at savepoint time and their bytes, oldest window first.
    pages: Vec<(Arc<BlockMemory>, BTreeMap<u64, SavedPages>)>,
}

impl ArrayHandle {
    /// A handle for an array whose metadata at the snapshot is `committed` (or a new one).
    /// Reserves nothing: windows are reserved when views need them.
    pub fn new(
        oid: Oid,
        meta: ArrayMeta,
        committed: Option<ArrayMeta>,
        writable: bool,
        reserve: Option<u64>,
    ) -> Self {
        ArrayHandle {
            oid,
            writable,
            reserve,
            windows: Mutex::new(Vec::new()),
            txn: Mutex::new(ArrayTxn {
                committed,
                meta,
                cut: None,
                detached: false,
                adopted: BTreeMap::new(),
            }),
            stored_end: Mutex::new(None),
            mapped_at: Arc::new(MappedAt::new()),
        }
    }

    /// The blocks of the array `g` describes as of snapshot `at`, holes from `cut` on; in a
    /// writable transaction, holes past the committed end are staged where the store can.
    fn source<'a>(
        &self,
        storage: &'a Arc<dyn Storage>,
        g: &ArrayTxn,
        at: Tid,
        cut: Option<u64>,
    ) -> SnapshotSource<'a> {
        // Every mapping goes through here: what it maps is the version at (at, cut).
        self.mapped_at.set(at, cut);
        SnapshotSource {
            storage,
            file: g.meta.file,
            at,
            cut,
            stage_from: self
                .writable
                .then(|| self.stored_end(storage, g, at))
                .flatten(),
            blksize: g.meta.blksize,
        }
    }

    /// One past the last block stored at snapshot `at` (0 for an array created in this
    /// transaction): holes from there on are the array's unwritten tail — a fresh array,
    /// appended or grown ranges — where new data goes, so they are staged (see
    /// [`SnapshotSource::stage_from`]); holes among stored blocks are not (reading a sparse
    /// array must not allocate space). Cached per snapshot. `None` if it cannot be told.
    fn stored_end(&self, storage: &Arc<dyn Storage>, g: &ArrayTxn, at: Tid) -> Option<u64> {
        if g.committed.is_none() {
            return Some(0);
        }
        let mut cache = self.stored_end.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tid, end)) = *cache {
            if tid == at {
                return Some(end);
            }
        }
        match storage.block_indices(g.meta.file, at) {
            Ok(stored) => {
                let end = stored.last().map_or(0, |last| last + 1);
                *cache = Some((at, end));
                Some(end)
            }
            Err(e) => {
                tracing::debug!("not staging new blocks of array {}: {e}", self.oid);
                None
            }
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, ArrayTxn>> {
        let g = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        if g.detached {
            return Err(Error::NotFound(
                "this array was deleted (or its creation rolled back)".into(),
            ));
        }
        Ok(g)
    }

    /// The current metadata.
    pub fn meta(&self) -> Result<ArrayMeta> {
        Ok(self.lock()?.meta.clone())
    }

    /// True once the array is unusable.
    pub fn is_detached(&self) -> bool {
        self.txn.lock().unwrap_or_else(|p| p.into_inner()).detached
    }

    /// Marks the array unusable (deleted or creation rolled back); drops its private pages.
    pub fn detach(&self) -> Result<()> {
        let mut g = self.txn.lock().unwrap_or_else(|p| p.into_inner());
        g.detached = true;
        self.discard_all()
    }

    /// Drops every written page of every reservation.
    pub fn discard_all(&self) -> Result<()> {
        for m in self.all_memory() {
            m.discard(&m.dirty_blocks()?)?;
        }
        Ok(())
    }

    /// Maps the blocks holding bytes `bytes` of the array, as of snapshot `at`, and returns
    /// the window they are mapped in.
    pub fn map_bytes(
        &self,
        storage: &Arc<dyn Storage>,
        at: Tid,
        bytes: Range<u64>,
    ) -> Result<Arc<BlockMemory>> {
        let g = self.lock()?;
        self.map_locked(&g, storage, at, bytes)
    }

    fn map_locked(
        &self,
        g: &ArrayTxn,
        storage: &Arc<dyn Storage>,
        at: Tid,
        bytes: Range<u64>,
    ) -> Result<Arc<BlockMemory>> {
        let blk = g.meta.blksize as u64;
        let blocks = bytes.start / blk..bytes.end.div_ceil(blk).max(bytes.start / blk);
        self.window_for(g, blocks, storage, at)
    }

    /// Discards every change of the transaction: written pages, shrink holes, metadata.
    pub fn abort(&self, storage: &Arc<dyn Storage>, at: Tid) -> Result<()> {
        let mut g = self.lock()?;
        self.discard_all()?;
        g.adopted.clear();
        if let Some(committed) = g.committed.clone() {
            g.meta = committed;
        }
        // Blocks at or past a shrink's cut were mapped as holes: show the stored data again.
        if let Some(cut) = g.cut.take() {
            let source = self.source(storage, &g, at, None);
            for m in self.all_memory() {
                m.remap_from(cut, &source)?;
            }
        }
        Ok(())
    }

    /// Applies other transactions' commits: new metadata (or deletion) and changed blocks,
    /// as of the new snapshot `at`. Called with no uncommitted changes.
    pub fn invalidate(
        &self,
        storage: &Arc<dyn Storage>,
        at: Tid,
        blocks: &[u64],
        meta_changed: bool,
    ) -> Result<()> {
        let mut g = self.lock()?;
        if meta_changed {
            match storage.load(Key::Meta(self.oid), at)? {
                Some(v) => {
                    let meta = ArrayMeta::decode_stored(self.oid, &v)?;
                    g.committed = Some(meta.clone());
                    g.meta = meta;
                }
                None => {
                    drop(g);
                    return self.detach();
                }
            }
        }
        let source = self.source(storage, &g, at, None);
        for m in self.all_memory() {
            m.remap(blocks, &source)?;
        }
        Ok(())
    }

    /// Moves to snapshot `at` without knowing what changed: reloads the metadata (detaching
    /// a deleted array) and re-maps every mapped block of every window. Called with no
    /// uncommitted changes.
    pub fn reload(&self, storage: &Arc<dyn Storage>, at: Tid) -> Result<()> {
        self.invalidate(storage, at, &[], true)?;
        if self.is_detached() {
            return Ok(());
        }
        let g = self.lock()?;
        let source = self.source(storage, &g, at, None);
        for m in self.all_memory() {
            m.remap_from(0, &source)?;
        }
        Ok(())
    }

    /// Changes the shape; only the major axis may change. Shrinking drops the blocks past the
    /// new end (and zeroes the tail of the last block) so that growing again shows zeros.
    pub fn resize(&self, storage: &Arc<dyn Storage>, at: Tid, shape: &[u64]) -> Result<()> {
        let mut g = self.lock()?;
        let old = g.meta.clone();
        if shape.len() != old.shape.len() {
            return Err(Error::InvalidShape(format!(
                "cannot resize a {}-d array to shape {shape:?}",
                old.shape.len()
            )));
        }
        let major = old.major_axis();
        if let Some(axis) = (0..shape.len()).find(|&a| a != major && shape[a] != old.shape[a]) {
            return Err(Error::InvalidShape(format!(
                "only the major axis ({major} for {} order) may change; axis {axis} differs: \
                 {:?} -> {shape:?}",
                old.order, old.shape
            )));
        }
        let mut meta = old.clone();
        meta.shape = shape.to_vec();
        let meta = ArrayMeta::new(
            meta.dtype,
            meta.itemsize,
            &meta.shape,
            meta.order,
            meta.blksize,
            meta.file,
        )?
        .with_attrs(old.attrs.clone())?;
        let (old_bytes, new_bytes) = (old.nbytes(), meta.nbytes());
        let blk = meta.blksize as u64;
        // Growing touches no memory: blocks past the old end are mapped when viewed.
        if new_bytes < old_bytes {
            let keep = meta.nblocks();
            let tail = new_bytes % blk;
            if tail != 0 {
                // Zero the dropped part of the last kept block.
                let window = self.map_locked(&g, storage, at, new_bytes - 1..new_bytes)?;
                let zeros = vec![0u8; (blk - tail) as usize];
                window.write_into(keep - 1, tail as usize, &zeros)?;
            }
            for window in self.all_memory() {
                let doomed = window.mapped_blocks_from(keep);
                for b in doomed {
                    window.install(b, crate::vm::Backing::Hole)?;
                }
            }
            g.cut = Some(g.cut.map_or(keep, |c| c.min(keep)));
        }
        g.meta = meta;
        Ok(())
    }

    /// Replaces the user attributes (see [`ArrayMeta::attrs`]): a metadata change like
    /// [`resize`](Self::resize), written at commit and undone by abort or rollback.
    pub fn set_attrs(&self, attrs: Option<String>) -> Result<()> {
        let mut g = self.lock()?;
        g.meta = g.meta.clone().with_attrs(attrs)?;
        Ok(())
    }

    /// Writes `bytes` at byte offset `at_byte` of the array's data (mapping as needed).
    pub fn write_bytes(
        &self,
        storage: &Arc<dyn Storage>,
        at: Tid,
        at_byte: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let g = self.lock()?;
        let end = at_byte + bytes.len() as u64;
        if end > g.meta.nbytes() {
            return Err(Error::IndexOutOfBounds(format!(
                "write of {} bytes at {at_byte} past the end ({} bytes)",
                bytes.len(),
                g.meta.nbytes()
            )));
        }
        let memory = self.map_locked(&g, storage, at, at_byte..end)?;
        let blk = g.meta.blksize as u64;
        let mut pos = at_byte;
        let mut rest = bytes;
        while !rest.is_empty() {
            let block = pos / blk;
            let within = (pos % blk) as usize;
            let n = rest.len().min(blk as usize - within);
            memory.write_into(block, within, &rest[..n])?;
            rest = &rest[n..];
            pos += n as u64;
        }
        Ok(())
    }

    /// True if the transaction changed this array.
    pub fn is_dirty(&self) -> Result<bool> {
        let g = self.lock()?;
        if g.committed.as_ref() != Some(&g.meta) || g.cut.is_some() || !g.adopted.is_empty() {
            return Ok(true);
        }
        for m in self.all_memory() {
            if !m.dirty_blocks()?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Remembers the current changes.
    pub fn savepoint(&self) -> Result<ArraySavepoint> {
        let g = self.lock()?;
        let mut pages = Vec::new();
        for memory in self.all_memory().into_iter().rev() {
            let mut saved_pages: BTreeMap<u64, SavedPages> = BTreeMap::new();
            for (block, ranges) in memory.written_pages()? {
                let saved = ranges
                    .into_iter()
                    .map(|r| {
                        let mut bytes = vec![0u8; r.end - r.start];
                        memory.read_into(block, r.start, &mut bytes);
                        (r, bytes)
                    })
                    .collect();
                saved_pages.insert(block, saved);
            }
            pages.push((memory, saved_pages));
        }
        Ok(ArraySavepoint {
            meta: g.meta.clone(),
            cut: g.cut,
            adopted: g.adopted.clone(),
            pages,
        })
    }

    /// Restores the state remembered by `sp`. Windows reserved after the savepoint get the
    /// saved writes of every window for the blocks they have mapped, as if reserved then.
    pub fn rollback(&self, sp: &ArraySavepoint, storage: &Arc<dyn Storage>, at: Tid) -> Result<()> {
        let mut g = self.lock()?;
        for memory in self.all_memory().into_iter().rev() {
            // Blocks at or past either cut are re-mapped as the savepoint saw them (stored
            // data below its cut, holes from it on)...
            if g.cut != sp.cut {
                let lo = g.cut.unwrap_or(u64::MAX).min(sp.cut.unwrap_or(u64::MAX));
                let source = self.source(storage, &g, at, sp.cut);
                memory.remap_from(lo, &source)?;
            }
            // ...then every written page is dropped and the saved ones written back.
            memory.discard(&memory.dirty_blocks()?)?;
            let own = sp.pages.iter().find(|(m, _)| Arc::ptr_eq(m, &memory));
            let sources: Vec<&BTreeMap<u64, SavedPages>> = match own {
                Some((_, saved)) => vec![saved],
                None => sp.pages.iter().map(|(_, saved)| saved).collect(),
            };
            for saved in sources {
                for (&block, pages) in saved {
                    if !memory.is_mapped(block) {
                        continue;
                    }
                    for (r, bytes) in pages {
                        memory.write_into(block, r.start, bytes)?;
                    }
                }
            }
        }
        g.meta = sp.meta.clone();
        g.cut = sp.cut;
        g.adopted = sp.adopted.clone();
        Ok(())
    }

    /// Makes `version` (staged and handed over by another process, held by `hold`) the new
    /// version of `block` in this transaction: the commit publishes it as it lies in the
    /// store. Views of this connection show it only after the commit.
    pub fn adopt(&self, block: u64, version: StagedRef, hold: StagedHold) -> Result<()> {
        let mut g = self.lock()?;
        let nblocks = g.meta.nblocks();
        if block >= nblocks {
            return Err(Error::InvalidArgument(format!(
                "block {block} is past the end of array {} ({nblocks} blocks)",
                self.oid
            )));
        }
        let key = Key::Block {
            file: g.meta.file,
            index: block,
        };
        if version.key != key {
            return Err(Error::InvalidArgument(format!(
                "{version} cannot become {key} of array {}: it was staged for another block",
                self.oid
            )));
        }
        if version.len > g.meta.blksize as u64 {
            return Err(Error::InvalidArgument(format!(
                "a staged version of {} bytes for a block of {} bytes",
                version.len, g.meta.blksize
            )));
        }
        g.adopted.insert(
            block,
            Adopted {
                version,
                _hold: Arc::new(hold),
            },
        );
        Ok(())
    }
}
