//! The state of one open array inside one connection: its memory and what the current
//! transaction changed (metadata, shrunk blocks).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use super::source::{SnapshotSource, StagedBlock, StoreSpill};
use crate::array::ArrayMeta;
use crate::storage::{Key, Oid, Payload, StagedHold, StagedRef, Storage, Tid, Write};
use crate::vm::BlockMemory;
use crate::{Error, Result};

/// Smallest and largest default reservation of a window (address space only: it costs no
/// memory until blocks are mapped, and 100,000 small arrays fit in the 128 TiB of a process).
const MIN_WINDOW: u64 = 64 << 20;
const MAX_WINDOW: u64 = 1 << 40;

/// Address space to reserve for a window that must hold `need` bytes: room to grow without
/// moving views. `configured` (from [`DbOptions::reserve_bytes`](super::DbOptions) or
/// `OUTCORE_RESERVE_BYTES`) replaces the default clamp(16 × need, 64 MiB, 1 TiB), at least
/// twice `need`; either way at least `need`.
fn window_bytes(need: u64, configured: Option<u64>) -> u64 {
    // Address-space-limited environments (ulimit -v, valgrind) can ask for less.
    let from_env = || {
        std::env::var("OUTCORE_RESERVE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
    };
    match configured.or_else(from_env) {
        Some(bytes) => bytes,
        None => need
            .saturating_mul(16)
            .clamp(MIN_WINDOW, MAX_WINDOW)
            .max(need.saturating_mul(2)),
    }
    .max(need)
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

/// The 4 KiB pages covering byte `ranges` of a block, as ascending, disjoint page-index runs.
fn page_runs(ranges: &[Range<usize>]) -> Vec<Range<u32>> {
    let page = crate::vm::PAGE;
    let mut pages: Vec<Range<u32>> = ranges
        .iter()
        .filter(|r| r.start < r.end)
        .map(|r| (r.start / page) as u32..r.end.div_ceil(page) as u32)
        .collect();
    pages.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u32>> = Vec::with_capacity(pages.len());
    for r in pages {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// True if `bytes` are all zero (checked 4 KiB at a time, in a vectorisable loop).
fn all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|page| page.iter().fold(0u8, |acc, &x| acc | x) == 0)
}

/// True if nothing but its array holds `window` (no view, no commit in progress) and it holds
/// no uncommitted write: releasing it loses nothing.
fn is_idle(window: &Arc<BlockMemory>) -> Result<bool> {
    Ok(Arc::strong_count(window) == 1
        && Arc::strong_count(window.reservation()) == 1
        && window.dirty_blocks()?.is_empty())
}

/// Folds `older` (a page as an older window wrote it) into `newer` (the same page as newer
/// windows left it), byte by byte against `base` (the committed page): a byte changed on one
/// side only takes that change. Returns the offset of the first byte both sides changed
/// differently, leaving `newer` partly merged (the caller then fails the commit).
fn merge_page(newer: &mut [u8], older: &[u8], base: &[u8]) -> std::result::Result<(), usize> {
    for (i, ((n, &o), &b)) in newer.iter_mut().zip(older).zip(base).enumerate() {
        if *n == o || o == b {
            continue;
        }
        if *n == b {
            *n = o;
        } else {
            return Err(i);
        }
    }
    Ok(())
}

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
        }
    }

    /// Releases the windows no view uses and that hold no uncommitted write; returns how
    /// many were released. Their blocks are mapped again when next viewed.
    pub fn release_idle_windows(&self) -> Result<usize> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let before = windows.len();
        let mut kept = Vec::with_capacity(before);
        for w in windows.drain(..) {
            if !is_idle(&w)? {
                kept.push(w);
            }
        }
        *windows = kept;
        Ok(before - windows.len())
    }

    /// Every window of the array, newest first.
    fn all_memory(&self) -> Vec<Arc<BlockMemory>> {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        w.iter().rev().cloned().collect()
    }

    /// The newest window holding `blocks` (the block containing byte 0 of an empty range),
    /// reserving one if none does, with those blocks mapped as of snapshot `at`.
    fn window_for(
        &self,
        g: &ArrayTxn,
        blocks: Range<u64>,
        storage: &Arc<dyn Storage>,
        at: Tid,
    ) -> Result<Arc<BlockMemory>> {
        let source = self.source(storage, g, at, g.cut);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = windows.iter().rev().find(|w| w.covers(&blocks)) {
            let w = w.clone();
            drop(windows);
            w.ensure_mapped(blocks, &source)?;
            return Ok(w);
        }
        let blk = g.meta.blksize as u64;
        // Arrays up to the largest default window get one window from block 0 (every view
        // aliases); larger ones a window starting at the view.
        let end = blocks.end.max(g.meta.nblocks());
        let first = if end.saturating_mul(blk) <= MAX_WINDOW {
            0
        } else {
            blocks.start
        };
        let need = (blocks.end.max(first + 1) - first).saturating_mul(blk);
        let window = self.reserve_window(g, first, need)?;
        if self.writable {
            // Above the process's dirty budget, written blocks move to staged space.
            window.spill_to(Arc::new(StoreSpill {
                storage: storage.clone(),
                blksize: g.meta.blksize,
            }));
        }
        // Windows no view uses and that hold no writes are released first (they would only
        // take address space).
        let mut kept = Vec::with_capacity(windows.len() + 1);
        for w in windows.drain(..) {
            if !is_idle(&w)? {
                kept.push(w);
            }
        }
        // Uncommitted writes of older windows show in the new one (oldest first, so the
        // newest write of a page wins).
        for old in &kept {
            for (block, ranges) in old.written_pages()? {
                if !window.covers(&(block..block + 1)) {
                    continue;
                }
                window.ensure_mapped(block..block + 1, &source)?;
                for range in ranges {
                    let mut bytes = vec![0u8; range.end - range.start];
                    old.read_into(block, range.start, &mut bytes);
                    window.write_into(block, range.start, &bytes)?;
                }
            }
        }
        if let Some(old) = kept
            .iter()
            .find(|w| !w.dirty_blocks().unwrap_or_default().is_empty())
        {
            tracing::warn!(
                "array {} outgrew its address-space window of blocks {:?} while views of it \
                 held uncommitted writes; new views use another window. Writes through views \
                 taken before show through newer views only after commit (they are merged \
                 then; the same bytes changed differently through both fail the commit)",
                self.oid,
                old.blocks()
            );
        }
        kept.push(window.clone());
        *windows = kept;
        drop(windows);
        window.ensure_mapped(blocks, &source)?;
        Ok(window)
    }

    /// Reserves a window for blocks from `first`, room for at least `need` bytes: the
    /// configured or default size, or just `need` if that much address space is not free.
    fn reserve_window(&self, g: &ArrayTxn, first: u64, need: u64) -> Result<Arc<BlockMemory>> {
        let blk = g.meta.blksize as u64;
        let max_blocks = u64::MAX / blk - first;
        let mut sizes = vec![window_bytes(need, self.reserve).div_ceil(blk)];
        sizes.push(need.div_ceil(blk));
        let mut last_error = None;
        for capacity in sizes.into_iter().map(|c| c.clamp(1, max_blocks)) {
            match BlockMemory::window(g.meta.blksize, first, capacity, self.writable) {
                Ok(m) => return Ok(Arc::new(m.describe_as(format!("array {}", self.oid)))),
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(Error::AddressSpace(_)) | None => Error::AddressSpace(format!(
                "a view of {need} bytes of array {} does not fit in this process's free \
                 address space: view a smaller part",
                self.oid
            )),
            Some(e) => e,
        })
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

    /// Adds this array's changes to a commit: written blocks (all-zero ones as holes),
    /// blocks dropped by a shrink, and the metadata if it changed. True if anything changed.
    pub fn collect_writes(
        &self,
        storage: &Arc<dyn Storage>,
        at: Tid,
        writes: &mut Vec<(Key, Write)>,
    ) -> Result<bool> {
        let g = self.lock()?;
        let before = writes.len();
        let nblocks = g.meta.nblocks();
        let mut blocks = self.written_blocks(&g, storage, at, nblocks)?;
        for (&b, adopted) in g.adopted.range(..nblocks) {
            if blocks.contains_key(&b) {
                return Err(Error::InvalidArgument(format!(
                    "block {b} of array {} was both written through views and given a version \
                     staged by another process in this transaction; nothing was committed",
                    self.oid
                )));
            }
            blocks.insert(b, Write::Adopt(adopted.version));
        }
        let written: Vec<u64> = blocks.keys().copied().collect();
        // Blocks from here on had no version at the snapshot (past the committed end, or
        // past the last stored block when that is known).
        let committed_end = g.committed.as_ref().map_or(0, |m| m.nblocks());
        let unstored_from = match *self.stored_end.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((tid, end)) if tid == at => end.min(committed_end),
            _ => committed_end,
        };
        for (b, write) in blocks {
            let key = Key::Block {
                file: g.meta.file,
                index: b,
            };
            if write.bytes().is_some_and(all_zero) {
                // Zeros over a block with nothing stored at the snapshot change nothing: no
                // write, no tombstone, no conflict with its writers.
                if b < unstored_from {
                    writes.push((key, Write::Delete));
                }
            } else {
                writes.push((key, write));
            }
        }
        if let Some(cut) = g.cut {
            // Only blocks that exist get a deletion: a shrink costs what is stored, not the
            // logical size (an array of 2**60 bytes holding one block deletes one).
            let stored = match g.committed {
                Some(_) => storage.block_indices(g.meta.file, at)?,
                None => Vec::new(),
            };
            let written: BTreeSet<u64> = written.into_iter().collect();
            for b in stored
                .into_iter()
                .filter(|&b| b >= cut && (!written.contains(&b) || b >= nblocks))
            {
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
    /// window that wrote it during the commit, or, where several windows wrote one block,
    /// their writes merged into a copy (see [`merge_page`]).
    fn written_blocks(
        &self,
        g: &ArrayTxn,
        storage: &Arc<dyn Storage>,
        at: Tid,
        nblocks: u64,
    ) -> Result<BTreeMap<u64, Write>> {
        let windows = self.all_memory();
        let written: Vec<BTreeMap<u64, Vec<Range<usize>>>> = windows
            .iter()
            .map(|w| w.written_pages())
            .collect::<Result<_>>()?;
        let all: BTreeSet<u64> = written
            .iter()
            .flat_map(|pages| pages.keys().copied())
            .filter(|&b| b < nblocks)
            .collect();
        let mut blocks = BTreeMap::new();
        for b in all {
            // Windows that wrote block b, newest first.
            let writers: Vec<usize> = (0..windows.len())
                .filter(|&i| written[i].contains_key(&b))
                .collect();
            if let [only] = writers[..] {
                let staged = windows[only].staged(b).and_then(|s| {
                    s.as_any()
                        .downcast_ref::<StagedBlock>()
                        .map(|s| s.0.clone())
                });
                let from = Arc::new(MappedBlock {
                    memory: windows[only].clone(),
                    block: b,
                });
                let write = if let Some(extent) = staged {
                    // Written into staged space: the store publishes it as it is.
                    Write::Staged { extent, from }
                } else if g.cut.is_some_and(|c| b >= c) {
                    // The memory reads zeros past the cut where the store still holds the old
                    // version: the whole block is new.
                    Write::StoreFrom(from)
                } else {
                    // Pages not written are those of the version the transaction read.
                    Write::Pages {
                        pages: page_runs(&written[only][&b]),
                        from,
                    }
                };
                blocks.insert(b, write);
                continue;
            }
            let mut bytes = windows[writers[0]].read_block(b);
            let mut base: Option<Vec<u8>> = None;
            let mut page = vec![0u8; crate::vm::PAGE];
            for &i in &writers[1..] {
                for r in &written[i][&b] {
                    for at_page in (r.start..r.end).step_by(crate::vm::PAGE) {
                        let end = at_page + crate::vm::PAGE;
                        windows[i].read_into(b, at_page, &mut page);
                        if page[..] == bytes[at_page..end] {
                            continue;
                        }
                        if base.is_none() {
                            base = Some(self.committed_block(g, storage, at, b)?);
                        }
                        let base = base.as_deref().expect("loaded above");
                        merge_page(&mut bytes[at_page..end], &page, &base[at_page..end]).map_err(
                            |offset| {
                                Error::DivergentWrites(format!(
                                    "byte {} of array {} (block {b}) was changed differently \
                                     through a view made before the array outgrew its \
                                     address-space window and through one made after; nothing \
                                     was committed: abort, and take views again after growing \
                                     the array",
                                    b * g.meta.blksize as u64 + (at_page + offset) as u64,
                                    self.oid
                                ))
                            },
                        )?;
                    }
                }
            }
            blocks.insert(b, Write::Store(bytes));
        }
        Ok(blocks)
    }

    /// The bytes of `block` at snapshot `at` as this transaction started from (zeros past a
    /// shrink's cut), `blksize` long.
    fn committed_block(
        &self,
        g: &ArrayTxn,
        storage: &Arc<dyn Storage>,
        at: Tid,
        block: u64,
    ) -> Result<Vec<u8>> {
        let mut out = vec![0u8; g.meta.blksize];
        if g.cut.is_some_and(|c| block >= c) {
            return Ok(out);
        }
        let key = Key::Block {
            file: g.meta.file,
            index: block,
        };
        if let Some(v) = storage.load(key, at)? {
            let n = v.data.len().min(out.len());
            out[..n].copy_from_slice(&v.data[..n]);
        }
        Ok(out)
    }

    /// After a successful commit: the current state is the committed one. Written pages of
    /// blocks past the end are dropped (the committed blocks are re-mapped by the
    /// invalidation that follows).
    pub fn committed(&self) -> Result<()> {
        let mut g = self.lock()?;
        g.committed = Some(g.meta.clone());
        g.cut = None;
        g.adopted.clear();
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
