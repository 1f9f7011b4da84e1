//! The state of one open array inside one connection: its memory and what the current
//! transaction changed (metadata, shrunk blocks).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use super::source::SnapshotSource;
use crate::array::ArrayMeta;
use crate::storage::{Key, Oid, Payload, Storage, Tid, Write};
use crate::vm::BlockMemory;
use crate::{Error, Result};

/// Address space reserved per array holding `nbytes`: room to append without moving views.
/// `configured` (from [`DbOptions::reserve_bytes`](super::DbOptions)) replaces the default
/// clamp(16 × size, 64 GiB, 1 TiB); either way at least twice the size.
fn reservation_bytes(nbytes: u64, configured: Option<u64>) -> u64 {
    const MIN: u64 = 64 << 30;
    const MAX: u64 = 1 << 40;
    // Address-space-limited environments (ulimit -v, valgrind) can ask for less.
    let from_env = || {
        std::env::var("OUTCORE_RESERVE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
    };
    let base = configured
        .or_else(from_env)
        .unwrap_or_else(|| nbytes.saturating_mul(16).clamp(MIN, MAX));
    base.max(nbytes.saturating_mul(2))
}

/// A written block handed to the store without a copy: the store reads it from the array's
/// memory while the commit runs.
struct MappedBlock {
    memory: Arc<BlockMemory>,
    block: u64,
}

impl Payload for MappedBlock {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the block is mapped (it has written pages) and stays so while `memory`
        // lives; commits run under the connection lock and writing into views during a
        // commit is documented as not allowed (`Connection`).
        unsafe { self.memory.block_bytes(self.block) }
    }
}

/// True if `bytes` are all zero (checked 4 KiB at a time, in a vectorisable loop).
fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// One open array of a connection.
///
/// Its memory is one reservation ([`BlockMemory`]). When the array outgrows it, a larger one
/// replaces it for new views; older reservations that views still use are kept in
/// `Regions::older` and kept showing committed data: at every transaction boundary their
/// changed blocks are re-mapped and their private pages dropped. Writes made through them
/// are committed (merged page by page: where both wrote one page, the newer reservation's page
/// wins) but not seen through newer views before that commit, and savepoints cover only the
/// current reservation.
#[derive(Debug)]
pub(crate) struct ArrayHandle {
    /// The oid of the array's metadata record.
    pub oid: Oid,
    writable: bool,
    reserve: Option<u64>,
    regions: Mutex<Regions>,
    txn: Mutex<ArrayTxn>,
}

#[derive(Debug)]
struct Regions {
    current: Arc<BlockMemory>,
    older: Vec<Arc<BlockMemory>>,
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
}

/// Written pages of one block: byte ranges within the block and their saved bytes.
type SavedPages = Vec<(Range<usize>, Vec<u8>)>;

/// What a savepoint remembers of one array.
#[derive(Debug)]
pub(crate) struct ArraySavepoint {
    meta: ArrayMeta,
    cut: Option<u64>,
    /// Written pages at savepoint time and their bytes.
    pages: BTreeMap<u64, SavedPages>,
}

impl ArrayHandle {
    /// A handle for an array whose metadata at the snapshot is `committed` (or a new one).
    pub fn new(
        oid: Oid,
        meta: ArrayMeta,
        committed: Option<ArrayMeta>,
        writable: bool,
        reserve: Option<u64>,
    ) -> Result<Self> {
        let blocks = reservation_bytes(meta.nbytes(), reserve).div_ceil(meta.blksize as u64);
        let current = Arc::new(
            BlockMemory::new(meta.blksize, blocks, writable)?.describe_as(format!("array {oid}")),
        );
        Ok(ArrayHandle {
            oid,
            writable,
            reserve,
            regions: Mutex::new(Regions {
                current,
                older: Vec::new(),
            }),
            txn: Mutex::new(ArrayTxn {
                committed,
                meta,
                cut: None,
                detached: false,
            }),
        })
    }

    /// The reservation new views are made from.
    pub fn memory(&self) -> Arc<BlockMemory> {
        self.regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }

    /// Every reservation of the array: the current one first, then older ones, newest first.
    fn all_memory(&self) -> Vec<Arc<BlockMemory>> {
        // Older reservations are kept as long as the handle: Rust views borrow them without
        // holding a reference count.
        let r = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        std::iter::once(r.current.clone())
            .chain(r.older.iter().rev().cloned())
            .collect()
    }

    /// Makes sure the current reservation holds `nblocks` blocks, replacing it by a larger
    /// one if needed. Written blocks are mapped from the store in the new one and only their
    /// written pages copied over, so an abort there shows the stored data again.
    fn ensure_capacity(
        &self,
        g: &ArrayTxn,
        nblocks: u64,
        storage: &Arc<dyn Storage>,
        at: Tid,
    ) -> Result<()> {
        let mut r = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        if nblocks <= r.current.capacity_blocks() {
            return Ok(());
        }
        let blk = g.meta.blksize as u64;
        let bytes = reservation_bytes(nblocks * blk, self.reserve);
        let grown = Arc::new(
            BlockMemory::new(g.meta.blksize, bytes.div_ceil(blk), self.writable)?
                .describe_as(format!("array {}", self.oid)),
        );
        let old = r.current.clone();
        let source = SnapshotSource {
            storage,
            file: g.meta.file,
            at,
            cut: g.cut,
        };
        for (block, ranges) in old.written_pages()? {
            grown.ensure_mapped(block..block + 1, &source)?;
            for range in ranges {
                let mut bytes = vec![0u8; range.end - range.start];
                old.read_into(block, range.start, &mut bytes);
                grown.write_into(block, range.start, &bytes)?;
            }
        }
        tracing::warn!(
            "array {} outgrew its address-space reservation of {} bytes; new views use a \
             larger one. Views taken before keep working and show committed data after each \
             transaction boundary, but not uncommitted writes made through newer views",
            self.oid,
            old.capacity_blocks() * blk
        );
        r.older.push(old);
        r.current = grown;
        Ok(())
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

    /// Maps the blocks holding bytes `bytes` of the array, as of snapshot `at`.
    pub fn map_bytes(&self, storage: &Arc<dyn Storage>, at: Tid, bytes: Range<u64>) -> Result<()> {
        let g = self.lock()?;
        self.map_locked(&g, storage, at, bytes)
    }

    fn map_locked(
        &self,
        g: &ArrayTxn,
        storage: &Arc<dyn Storage>,
        at: Tid,
        bytes: Range<u64>,
    ) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let blk = g.meta.blksize as u64;
        let blocks = bytes.start / blk..bytes.end.div_ceil(blk);
        // Another connection's append may have grown the array past the reservation.
        self.ensure_capacity(g, blocks.end, storage, at)?;
        let source = SnapshotSource {
            storage,
            file: g.meta.file,
            at,
            cut: g.cut,
        };
        self.memory().ensure_mapped(blocks, &source)
    }

    /// Adds this array's changes to a commit: written blocks (all-zero ones as holes),
    /// blocks dropped by a shrink, and the metadata if it changed. True if anything changed.
    pub fn collect_writes(&self, writes: &mut Vec<(Key, Write)>) -> Result<bool> {
        let g = self.lock()?;
        let before = writes.len();
        let nblocks = g.meta.nblocks();
        let blocks = self.written_blocks(nblocks)?;
        let written: Vec<u64> = blocks.keys().copied().collect();
        for (b, write) in blocks {
            let key = Key::Block {
                file: g.meta.file,
                index: b,
            };
            if write.bytes().is_some_and(all_zero) {
                writes.push((key, Write::Delete));
            } else {
                writes.push((key, write));
            }
        }
        if let Some(cut) = g.cut {
            let stored = g.committed.as_ref().map_or(0, ArrayMeta::nblocks);
            let written: BTreeSet<u64> = written.into_iter().collect();
            for b in (cut..stored).filter(|b| !written.contains(b) || *b >= nblocks) {
                let key = Key::Block {
                    file: g.meta.file,
                    index: b,
                };
                writes.push((key, Write::Delete));
            }
        }
        if g.committed.as_ref() != Some(&g.meta) {
            writes.push((Key::Meta(self.oid), Write::Store(g.meta.encode())));
        }
        Ok(writes.len() > before)
    }

    /// The new version of every written block below `nblocks`: read straight from the
    /// current reservation during the commit, or (where pages were written through older
    /// reservations) merged into a copy, older pages only where the current one has no write.
    fn written_blocks(&self, nblocks: u64) -> Result<BTreeMap<u64, Write>> {
        let regions = self.all_memory();
        let current = &regions[0];
        let current_pages = current.written_pages()?;
        let mut blocks: BTreeMap<u64, Write> = current_pages
            .keys()
            .filter(|&&b| b < nblocks)
            .map(|&b| {
                let payload = MappedBlock {
                    memory: current.clone(),
                    block: b,
                };
                (b, Write::StoreFrom(Arc::new(payload)))
            })
            .collect();
        // Page offsets already taken, per block: first the current reservation's writes.
        let mut taken: BTreeMap<u64, BTreeSet<usize>> = current_pages
            .iter()
            .map(|(&b, ranges)| {
                let pages = ranges
                    .iter()
                    .flat_map(|r| (r.start..r.end).step_by(crate::vm::PAGE))
                    .collect();
                (b, pages)
            })
            .collect();
        for old in &regions[1..] {
            for (b, ranges) in old.written_pages()? {
                if b >= nblocks {
                    continue;
                }
                let mut bytes = match blocks.remove(&b) {
                    Some(Write::Store(v)) => v,
                    // Written in the current reservation too: start from a copy of it.
                    Some(_) => current.read_block(b),
                    None if current.is_mapped(b) => current.read_block(b),
                    None => old.read_block(b),
                };
                // Pages written through a newer reservation win.
                let newer = taken.entry(b).or_default();
                for r in ranges {
                    for page in (r.start..r.end).step_by(crate::vm::PAGE) {
                        if !newer.contains(&page) {
                            let end = page + crate::vm::PAGE;
                            old.read_into(b, page, &mut bytes[page..end]);
                            newer.insert(page);
                        }
                    }
                }
                blocks.insert(b, Write::Store(bytes));
            }
        }
        Ok(blocks)
    }

    /// After a successful commit: the current state is the committed one. Written pages of
    /// blocks past the end are dropped (the committed blocks are re-mapped by the
    /// invalidation that follows).
    pub fn committed(&self) -> Result<()> {
        let mut g = self.lock()?;
        g.committed = Some(g.meta.clone());
        g.cut = None;
        let nblocks = g.meta.nblocks();
        for m in self.all_memory() {
            let beyond: Vec<u64> = m
                .dirty_blocks()?
                .into_iter()
                .filter(|&b| b >= nblocks)
                .collect();
            m.discard(&beyond)?;
        }
        Ok(())
    }

    /// Discards every change of the transaction: written pages, shrink holes, metadata.
    pub fn abort(&self, storage: &Arc<dyn Storage>, at: Tid) -> Result<()> {
        let mut g = self.lock()?;
        self.discard_all()?;
        if let Some(committed) = g.committed.clone() {
            g.meta = committed;
        }
        // Blocks at or past a shrink's cut were mapped as holes: show the stored data again.
        if let Some(cut) = g.cut.take() {
            let source = SnapshotSource {
                storage,
                file: g.meta.file,
                at,
                cut: None,
            };
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
                    let meta = ArrayMeta::decode(&v.data)?;
                    g.committed = Some(meta.clone());
                    g.meta = meta;
                }
                None => {
                    drop(g);
                    return self.detach();
                }
            }
        }
        let source = SnapshotSource {
            storage,
            file: g.meta.file,
            at,
            cut: None,
        };
        for m in self.all_memory() {
            m.remap(blocks, &source)?;
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
        )?;
        let (old_bytes, new_bytes) = (old.nbytes(), meta.nbytes());
        let blk = meta.blksize as u64;
        self.ensure_capacity(&g, meta.nblocks(), storage, at)?;
        let memory = self.memory();
        if new_bytes < old_bytes {
            let keep = meta.nblocks();
            let tail = new_bytes % blk;
            if tail != 0 {
                // Zero the dropped part of the last kept block.
                self.map_locked(&g, storage, at, new_bytes..new_bytes + 1)?;
                let zeros = vec![0u8; (blk - tail) as usize];
                memory.write_into(keep - 1, tail as usize, &zeros)?;
            }
            let doomed: Vec<u64> = memory
                .mapped_blocks()
                .into_iter()
                .filter(|&b| b >= keep)
                .collect();
            for &b in &doomed {
                memory.install(b, crate::vm::Backing::Hole)?;
            }
            g.cut = Some(g.cut.map_or(keep, |c| c.min(keep)));
        }
        g.meta = meta;
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
        self.map_locked(&g, storage, at, at_byte..end)?;
        let memory = self.memory();
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
        if g.committed.as_ref() != Some(&g.meta) || g.cut.is_some() {
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
        let memory = self.memory();
        let mut pages: BTreeMap<u64, SavedPages> = BTreeMap::new();
        for (block, ranges) in memory.written_pages()? {
            let saved = ranges
                .into_iter()
                .map(|r| {
                    let mut bytes = vec![0u8; r.end - r.start];
                    memory.read_into(block, r.start, &mut bytes);
                    (r, bytes)
                })
                .collect();
            pages.insert(block, saved);
        }
        Ok(ArraySavepoint {
            meta: g.meta.clone(),
            cut: g.cut,
            pages,
        })
    }

    /// Restores the state remembered by `sp`.
    pub fn rollback(&self, sp: &ArraySavepoint, storage: &Arc<dyn Storage>, at: Tid) -> Result<()> {
        let mut g = self.lock()?;
        let memory = self.memory();
        // Blocks at or past either cut are re-mapped as the savepoint saw them (stored data
        // below its cut, holes from it on)...
        if g.cut != sp.cut {
            let lo = g.cut.unwrap_or(u64::MAX).min(sp.cut.unwrap_or(u64::MAX));
            let source = SnapshotSource {
                storage,
                file: g.meta.file,
                at,
                cut: sp.cut,
            };
            memory.remap_from(lo, &source)?;
        }
        // ...then every written page is dropped and the saved ones written back.
        memory.discard(&memory.dirty_blocks()?)?;
        for (&block, saved) in &sp.pages {
            for (r, bytes) in saved {
                memory.write_into(block, r.start, bytes)?;
            }
        }
        g.meta = sp.meta.clone();
        g.cut = sp.cut;
        Ok(())
    }
}
