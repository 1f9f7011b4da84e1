//! [`BlockMemory`]: one array's memory, block by block mapped straight from the store.
//!
//! # Block states
//!
//! ```text
//!              ensure_mapped                     user writes a page
//!  Unmapped ────────────────► Mapped clean ───────────────────────────► Dirty
//!  (PROT_NONE,                (file pages: page cache, zero copy;       (written 4 KiB pages
//!   in the reservation)        hole: anonymous zeros;                    are private copies,
//!                              decoded: a private memfd copy)            found by `written_pages`)
//!                                 ▲        ▲                               │        │
//!                                 │        └──── discard (MADV_DONTNEED) ──┘        │
//!                                 └────────────── install (new version) ────────────┘
//! ```
//!
//! * **Unmapped**: reserved address space, nothing behind it. Blocks are mapped when a view
//!   spanning them is created ([`BlockMemory::ensure_mapped`]); nothing is read then.
//! * **Mapped clean**: `MAP_PRIVATE|MAP_FIXED` of the block's stored version (a page-aligned
//!   extent of an immutable segment file). Reads fault pages in from the kernel's page cache,
//!   shared by every process. A hole is anonymous memory (zeros). A version that cannot be
//!   mapped (compressed) is decoded once into a private memory file and mapped from there, so
//!   all three kinds behave alike.
//! * **Dirty**: a write makes the kernel copy the touched page into private memory. The
//!   written pages are found by scanning page tables ([`super::dirty`]); no fault handler, no
//!   signal, and syscalls that write into the memory (`read(fd, view)`) just work.
//! * **discard** drops the private pages: the clean version shows again.
//! * **install** maps another version (after a commit, or when another transaction's commit
//!   changed the block), dropping private pages.
//!
//! The reservation is never unmapped while the [`BlockMemory`] or any view holding its
//! [`Arc<Reservation>`] lives, so a view can never point at unmapped memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

mod fetch_mode;
mod install;
mod reading;
mod spill;
mod written;

pub use fetch_mode::max_map_count;
pub use spill::SpillTarget;

use fetch_mode::{mapping_budget, FileExtent, FilePieces, Zeros};
use install::{inode_of, punch_hole};

use super::dirty::{self, PAGE};
use super::readahead;
use super::reservation::Reservation;
use super::uffd::Fetch;
use crate::{Error, Result};

/// What lies behind one block, as the layer above tells it.
#[derive(Clone, Debug)]
pub enum Backing {
    /// No stored data: the block reads as zeros.
    Hole,
    /// `len` bytes at page-aligned `offset` of `file` (immutable while mapped); the rest of
    /// the block reads as zeros.
    File {
        /// The file (a segment), open for reading.
        file: Arc<File>,
        /// Byte offset, a multiple of 4096.
        offset: u64,
        /// Bytes of the block stored there (at most the block size).
        len: u64,
    },
    /// Parts of the block lying in files (a version stored as changed pages over an older
    /// one): each mapped at its place; the rest of the block reads as zeros.
    Pieces(Vec<FilePiece>),
    /// Space where the block's next version is written directly ([`Staging`]): mapped shared
    /// and writable, so writes land once, in the page cache (writable memory only).
    Staged(Arc<dyn Staging>),
    /// Bytes that cannot be mapped (compressed or remote), decoded by the caller.
    Bytes(Vec<u8>),
    /// A version fetched when first touched (through userfaultfd; where that is unusable,
    /// fetched at once and handled as [`Backing::Bytes`]).
    Fetch(Arc<dyn Fetch>),
}

/// Space in a file for a block's next version, written through a shared mapping before the
/// commit that publishes it (a store's staged extent). Reads as zeros where not written. The
/// memory keeps it while the block is mapped there; dropping it unpublished is the owner's
/// business (it gives the space back).
pub trait Staging: Send + Sync + std::fmt::Debug {
    /// The file, open for reading and writing.
    fn file(&self) -> &File;
    /// Byte offset of the space (a multiple of 4096); it holds at least a block.
    fn offset(&self) -> u64;
    /// For the owner to recover its own type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// `len` bytes at page-aligned `offset` of `file` that are the block's bytes from `at` on.
#[derive(Clone, Debug)]
pub struct FilePiece {
    /// Byte offset within the block, a multiple of 4096.
    pub at: usize,
    /// The file (a segment), open for reading.
    pub file: Arc<File>,
    /// Byte offset in the file, a multiple of 4096.
    pub offset: u64,
    /// Length in bytes (`at + len` at most the block size).
    pub len: usize,
}

impl std::fmt::Debug for dyn Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Supplies the backing of blocks at the caller's current snapshot.
pub trait BlockSource {
    /// The backing of `block`.
    fn backing(&self, block: u64) -> Result<Backing>;

    /// The backings of `blocks`, in order. Sources that fetch over a network override this to
    /// fetch in parallel.
    fn backings(&self, blocks: &[u64]) -> Result<Vec<Backing>> {
        blocks.iter().map(|&b| self.backing(b)).collect()
    }
}

/// Blocks whose backings are asked for at once (bounds the bytes fetched before mapping).
const FETCH_BATCH: usize = 32;

/// How a mapped block is backed (kept to merge mappings and count fragmentation).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mapped {
    Hole,
    /// Identified by the file's inode and the offset of the block.
    File {
        inode: (u64, u64),
        offset: u64,
    },
    Decoded,
    /// Pieces of files over zeros, needing this many kernel mappings.
    Pieces(usize),
    /// Shared and writable on staged space (`State::staged` holds it).
    Staged,
    /// Fetched on first touch (userfaultfd).
    Fetched,
}

/// The memory of one open array, or of a window of it: a reservation of `capacity` blocks of
/// `blksize` bytes holding blocks `first..first + capacity` of the array. Blocks are always
/// named by their index in the array; byte ranges by their offset in the array.
/// All methods may be called from any thread.
#[derive(Debug)]
pub struct BlockMemory {
    blksize: usize,
    /// The array block at the reservation's first byte.
    first: u64,
    writable: bool,
    /// What the memory holds, for messages from the fault path ("array 5").
    what: String,
    reservation: Arc<Reservation>,
    state: Mutex<State>,
    /// Where written blocks are spilled above the process's dirty budget (set once).
    spill_target: std::sync::OnceLock<Arc<dyn SpillTarget>>,
}

#[derive(Debug, Default)]
struct State {
    mapped: BTreeMap<u64, Mapped>,
    /// Holds decoded copies of unmappable blocks at `block * blksize`; created on first use.
    decoded: Option<File>,
    /// Mapped-block count at which fragmentation is checked next.
    next_fragmentation_check: usize,
    /// The staged space of blocks mapped [`Mapped::Staged`].
    staged: BTreeMap<u64, Arc<dyn Staging>>,
    /// Spilled blocks (mapped [`Mapped::Staged`]) and the version their writes apply to:
    /// discarding the writes maps that version again.
    spilled: BTreeMap<u64, Backing>,
    /// Every block is fetched on touch (file extents and holes included): set once the
    /// blocks' file extents would need more kernel mappings than the budget allows (see
    /// [`BlockMemory::ensure_mapped`]). Fetched blocks of a window share a few mappings.
    fetch_mode: bool,
}

/// How many [`BlockMemory`] values exist in the process (each takes at least one kernel
/// mapping, usually two).
static LIVE_MEMORIES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many array memories (windows) exist in this process. Callers release idle ones when
/// this grows large, so that kernel mappings (`vm.max_map_count`) do not run out.
pub fn live_memories() -> usize {
    LIVE_MEMORIES.load(std::sync::atomic::Ordering::Relaxed)
}

impl Drop for BlockMemory {
    fn drop(&mut self) {
        LIVE_MEMORIES.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The error for a failed `mmap` of array memory: running out of kernel mappings (or address
/// space) is [`Error::AddressSpace`], which callers can cure by releasing idle memory.
fn map_error(what: String, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENOMEM) {
        let limit = max_map_count();
        Error::AddressSpace(format!(
            "{what}: the process has no kernel mapping left (vm.max_map_count = {limit}) or \
             no address space: {e}"
        ))
    } else {
        Error::io(what, e)
    }
}

impl BlockMemory {
    /// Reserves address space for `capacity_blocks` blocks of `blksize` bytes (a positive
    /// multiple of 4096). `writable` false maps everything read-only.
    pub fn new(blksize: usize, capacity_blocks: u64, writable: bool) -> Result<Self> {
        Self::window(blksize, 0, capacity_blocks, writable)
    }

    /// Reserves address space for blocks `first..first + capacity_blocks` of an array (a
    /// window onto a part of it). Fails with [`Error::AddressSpace`] when the process has no
    /// free address range that large.
    pub fn window(
        blksize: usize,
        first: u64,
        capacity_blocks: u64,
        writable: bool,
    ) -> Result<Self> {
        if blksize == 0 || blksize % PAGE != 0 {
            return Err(Error::InvalidArgument(format!(
                "block size {blksize} is not a positive multiple of {PAGE}"
            )));
        }
        let len = usize::try_from(capacity_blocks)
            .ok()
            .and_then(|n| n.checked_mul(blksize))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{capacity_blocks} blocks do not fit in memory"))
            })?;
        if first.checked_add(capacity_blocks).is_none() {
            return Err(Error::InvalidArgument(format!(
                "blocks {first}..+{capacity_blocks} overflow"
            )));
        }
        let reservation = Arc::new(Reservation::new(len.max(blksize))?);
        LIVE_MEMORIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(BlockMemory {
            blksize,
            first,
            writable,
            what: "an array".into(),
            reservation,
            state: Mutex::new(State::default()),
            spill_target: std::sync::OnceLock::new(),
        })
    }

    /// Names what the memory holds in messages of the fault path (e.g. "array 'A'").
    pub fn describe_as(mut self, what: impl Into<String>) -> Self {
        self.what = what.into();
        self
    }

    /// The block size in bytes.
    pub fn blksize(&self) -> usize {
        self.blksize
    }

    /// How many blocks the reservation holds.
    pub fn capacity_blocks(&self) -> u64 {
        (self.reservation.len() / self.blksize) as u64
    }

    /// The array blocks this memory can hold: `first..first + capacity`.
    pub fn blocks(&self) -> Range<u64> {
        self.first..self.first + self.capacity_blocks()
    }

    /// True if every block of `blocks` lies in this memory.
    pub fn covers(&self, blocks: &Range<u64>) -> bool {
        let mine = self.blocks();
        mine.start <= blocks.start && blocks.end <= mine.end
    }

    /// Index of `block` within the reservation (the fault server's numbering).
    fn rel(&self, block: u64) -> u64 {
        block - self.first
    }

    /// The reservation; views hold a clone so the memory outlives them.
    pub fn reservation(&self) -> &Arc<Reservation> {
        &self.reservation
    }

    /// The address of the first byte of `block`.
    pub fn block_ptr(&self, block: u64) -> *mut u8 {
        debug_assert!(self.covers(&(block..block + 1)));
        // The offset stays inside the reservation for blocks it covers.
        self.reservation
            .base()
            .wrapping_add(block.wrapping_sub(self.first) as usize * self.blksize)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_range(&self, blocks: &Range<u64>) -> Result<()> {
        if !self.covers(blocks) {
            return Err(Error::IndexOutOfBounds(format!(
                "blocks {blocks:?} lie outside the reservation of blocks {:?}",
                self.blocks()
            )));
        }
        Ok(())
    }

    /// Maps every not yet mapped block in `blocks`, asking `source` for its backing. Reads
    /// nothing: pages come in when touched.
    ///
    /// When the blocks' file extents need more kernel mappings than the budget (a quarter of
    /// `vm.max_map_count`), or mapping runs out of them, and nothing uncommitted lives in this
    /// memory, it switches to *fetch mode*: every block is fetched on touch into memory
    /// that takes a few mappings, slower but never failing for lack of mappings.
    pub fn ensure_mapped(&self, blocks: Range<u64>, source: &dyn BlockSource) -> Result<()> {
        self.check_range(&blocks)?;
        let mut state = self.lock();
        let todo: Vec<u64> = blocks.filter(|b| !state.mapped.contains_key(b)).collect();
        let mapped = self.map_blocks(&mut state, todo.clone(), source);
        let over_budget =
            !state.fetch_mode && state.mapped.len() >= state.next_fragmentation_check && {
                state.next_fragmentation_check = state.mapped.len() + 4096;
                self.runs_locked(&state) > mapping_budget()
            };
        let out_of_mappings = matches!(mapped, Err(Error::AddressSpace(_)));
        if (over_budget || out_of_mappings) && !state.fetch_mode {
            if self.written_pages_locked(&state)?.is_empty() {
                return self.enter_fetch_mode(&mut state, todo, source);
            }
            tracing::warn!(
                "{}: its mapped blocks need {} kernel mappings (budget {}): its blocks are \
                 scattered in the store (`pack` rewrites them contiguously); it switches to \
                 fetching blocks on touch at the next transaction boundary",
                self.what,
                self.runs_locked(&state),
                mapping_budget()
            );
        }
        mapped
    }

    /// Maps `blocks` (ascending) with their backings from `source`, replacing what was
    /// there. Consecutive blocks at consecutive offsets of one file share one `mmap` (and
    /// the kernel keeps a single mapping for them).
    fn map_blocks(
        &self,
        state: &mut State,
        blocks: Vec<u64>,
        source: &dyn BlockSource,
    ) -> Result<()> {
        let mut run: Vec<(u64, Backing)> = Vec::new();
        for batch in blocks.chunks(FETCH_BATCH) {
            for (&b, backing) in batch.iter().zip(source.backings(batch)?) {
                let backing = match backing {
                    Backing::File { file, offset, len } if state.fetch_mode => {
                        Backing::Fetch(Arc::new(FileExtent { file, offset, len }))
                    }
                    Backing::Pieces(pieces) if state.fetch_mode => {
                        Backing::Fetch(Arc::new(FilePieces(pieces)))
                    }
                    Backing::Hole if state.fetch_mode => Backing::Fetch(Arc::new(Zeros)),
                    other => other,
                };
                if !run.is_empty() && !self.extends_run(&run, b, &backing) {
                    self.map_run(state, std::mem::take(&mut run))?;
                }
                run.push((b, backing));
            }
        }
        if !run.is_empty() {
            self.map_run(state, run)?;
        }
        Ok(())
    }

    /// True if `backing` of block `b` continues `run` in the same file, so one `mmap` can
    /// cover both (and the kernel keeps a single mapping).
    fn extends_run(&self, run: &[(u64, Backing)], b: u64, backing: &Backing) -> bool {
        if let (Some((last_b, Backing::Hole)), Backing::Hole) = (run.last(), backing) {
            return *last_b + 1 == b;
        }
        let Some((
            last_b,
            Backing::File {
                file: last_file,
                offset: last_off,
                len: last_len,
            },
        )) = run.last()
        else {
            return false;
        };
        match backing {
            Backing::File { file, offset, len } => {
                *last_b + 1 == b
                    && Arc::ptr_eq(file, last_file)
                    && *last_len == self.blksize as u64
                    && *len == self.blksize as u64
                    && *offset == last_off + self.blksize as u64
            }
            _ => false,
        }
    }

    /// Maps a run of consecutive blocks (a single file run, a run of holes, or one block of
    /// any kind).
    fn map_run(&self, state: &mut State, run: Vec<(u64, Backing)>) -> Result<()> {
        // As in `install_locked`: a fork must not split a change of fetched blocks.
        let _fork = super::fork_gate::ForkGuard::enter();
        let first = run[0].0;
        let whole_run: Option<Box<dyn Fn(u64) -> Result<Mapped>>> = match &run[0].1 {
            _ if run.len() == 1 => None,
            Backing::File { file, offset, len } => {
                debug_assert_eq!(*len, self.blksize as u64);
                let inode = inode_of(file)?;
                let (offset, blksize) = (*offset, self.blksize as u64);
                Some(Box::new(move |b| {
                    Ok(Mapped::File {
                        inode,
                        offset: offset + (b - first) * blksize,
                    })
                }))
            }
            Backing::Hole => Some(Box::new(|_| Ok(Mapped::Hole))),
            _ => None,
        };
        if let Some(mapped_as) = whole_run {
            // Before the memory changes: no fetch of an old registration may land in it.
            if let Some((server, region)) = self.reservation.remote_if_any() {
                for (b, _) in &run {
                    if state.mapped.get(b) == Some(&Mapped::Fetched) {
                        server.retire(region, self.rel(*b));
                    }
                }
            }
            match &run[0].1 {
                Backing::File { file, offset, .. } => {
                    self.map_file(first, run.len(), file, *offset, run.len() * self.blksize)?
                }
                _ => self.map_anonymous(first, 0, run.len() * self.blksize)?,
            }
            for (b, _) in &run {
                state.staged.remove(b);
                state.spilled.remove(b);
                let previous = state.mapped.insert(*b, mapped_as(*b)?);
                if let (Some(Mapped::Decoded), Some(d)) = (previous, &state.decoded) {
                    punch_hole(d, self.rel(*b) * self.blksize as u64, self.blksize as u64)?;
                }
            }
            return Ok(());
        }
        for (b, backing) in run {
            self.install_locked(state, b, backing)?;
        }
        Ok(())
    }

    /// True if `block` is mapped.
    pub fn is_mapped(&self, block: u64) -> bool {
        self.lock().mapped.contains_key(&block)
    }

    /// The mapped blocks at or after `first`, ascending.
    pub fn mapped_blocks_from(&self, first: u64) -> Vec<u64> {
        self.lock().mapped.range(first..).map(|(&b, _)| b).collect()
    }

    /// The mapped blocks, ascending.
    pub fn mapped_blocks(&self) -> Vec<u64> {
        self.lock().mapped.keys().copied().collect()
    }

    /// A copy of the current bytes of `block` (including uncommitted writes).
    pub fn read_block(&self, block: u64) -> Vec<u8> {
        let mut out = vec![0u8; self.blksize];
        self.read_into(block, 0, &mut out);
        out
    }

    /// Copies bytes of `block` starting at `from` into `out`.
    pub fn read_into(&self, block: u64, from: usize, out: &mut [u8]) {
        assert!(from + out.len() <= self.blksize && self.covers(&(block..block + 1)));
        debug_assert!(
            self.is_mapped(block),
            "block {block} read before being mapped"
        );
        // SAFETY: the range lies inside a mapped block of our reservation (readable). Other
        // threads may write it concurrently; like any memcpy of shared memory the copy then
        // holds a mix, which is the documented behaviour of commit during writes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.block_ptr(block).add(from),
                out.as_mut_ptr(),
                out.len(),
            )
        };
    }

    /// Writes `bytes` into `block` at `from` (used to restore savepoints).
    pub fn write_into(&self, block: u64, from: usize, bytes: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly("this memory is mapped read-only".into()));
        }
        assert!(from + bytes.len() <= self.blksize && self.covers(&(block..block + 1)));
        if !self.is_mapped(block) {
            return Err(Error::InvalidArgument(format!(
                "block {block} is not mapped"
            )));
        }
        // SAFETY: inside a mapped, writable block of our reservation.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.block_ptr(block).add(from),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// The staged space `block` is mapped onto, if it is.
    pub fn staged(&self, block: u64) -> Option<Arc<dyn Staging>> {
        self.lock().staged.get(&block).cloned()
    }

    /// Re-maps those of `blocks` that are mapped, with their current backing from `source`
    /// (used when other transactions changed them). Unmapped blocks are left alone.
    ///
    /// Called where private pages of the re-mapped blocks may be dropped (transaction
    /// boundaries, rollbacks). Like [`ensure_mapped`](BlockMemory::ensure_mapped), it
    /// switches to fetch mode when the mapped file extents exceed the mapping budget or
    /// mapping runs out of kernel mappings; private pages of other blocks are dropped then
    /// too, so callers make sure no uncommitted write lives there (boundaries) or restore them
    /// (rollbacks).
    pub fn remap(&self, blocks: &[u64], source: &dyn BlockSource) -> Result<()> {
        let mut state = self.lock();
        let mut mapped: Vec<u64> = blocks
            .iter()
            .copied()
            .filter(|b| state.mapped.contains_key(b))
            .collect();
        mapped.sort_unstable();
        mapped.dedup();
        let changed = !mapped.is_empty();
        let result = self.map_blocks(&mut state, mapped, source);
        if !state.fetch_mode
            && (matches!(result, Err(Error::AddressSpace(_)))
                || (changed && self.runs_locked(&state) > mapping_budget()))
        {
            return self.enter_fetch_mode(&mut state, Vec::new(), source);
        }
        result
    }

    /// Re-maps every mapped block at or after `first` with its backing from `source`.
    pub fn remap_from(&self, first: u64, source: &dyn BlockSource) -> Result<()> {
        let blocks: Vec<u64> = self.lock().mapped.range(first..).map(|(&b, _)| b).collect();
        self.remap(&blocks, source)
    }

    /// The current bytes of `block` (uncommitted writes included), without a copy.
    ///
    /// # Safety
    /// `block` must be mapped, and nothing may write to it while the slice lives (the bytes
    /// are shared with every view of the array).
    pub unsafe fn block_bytes(&self, block: u64) -> &[u8] {
        debug_assert!(self.is_mapped(block));
        // SAFETY: the caller guarantees the block is mapped and not written meanwhile; the
        // reservation lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.block_ptr(block), self.blksize) }
    }
}
