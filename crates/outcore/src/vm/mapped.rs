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
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard};

mod spill;

pub use spill::SpillTarget;

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

/// Kernel mappings one array memory may use for file extents before it switches to fetching
/// blocks on touch: a quarter of `vm.max_map_count` (65,530 by default), so a few fragmented
/// arrays and the rest of the process (its allocator maps memory too) stay under the limit.
fn mapping_budget() -> usize {
    max_map_count() / 4
}

/// The kernel's limit of mappings per process (`vm.max_map_count`), read once.
pub fn max_map_count() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65_530)
    })
}

/// A block version in a file extent, read when first touched (fetch mode).
struct FileExtent {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl Fetch for FileExtent {
    fn fetch(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.len as usize];
        self.fetch_into(&mut out)?;
        Ok(out)
    }

    fn fetch_into(&self, out: &mut [u8]) -> Result<usize> {
        let len = self.len as usize;
        let target = out.get_mut(..len).ok_or_else(|| {
            Error::InvalidArgument(format!("{}: larger than a block", self.describe()))
        })?;
        self.file
            .read_exact_at(target, self.offset)
            .map_err(|e| Error::io(format!("reading {}", self.describe()), e))?;
        Ok(len)
    }

    fn describe(&self) -> String {
        format!("{} bytes at offset {} of a segment", self.len, self.offset)
    }
}

/// A block made of file pieces, read when first touched (fetch mode).
struct FilePieces(Vec<FilePiece>);

impl Fetch for FilePieces {
    fn fetch(&self) -> Result<Vec<u8>> {
        let len = self.0.last().map_or(0, |p| p.at + p.len);
        let mut out = vec![0u8; len];
        self.fetch_into(&mut out)?;
        Ok(out)
    }

    fn fetch_into(&self, out: &mut [u8]) -> Result<usize> {
        let mut end = 0;
        for p in &self.0 {
            out.get_mut(end..p.at)
                .ok_or_else(|| Error::InvalidArgument(format!("{}: unordered", self.describe())))?
                .fill(0);
            let target = out.get_mut(p.at..p.at + p.len).ok_or_else(|| {
                Error::InvalidArgument(format!("{}: larger than a block", self.describe()))
            })?;
            p.file
                .read_exact_at(target, p.offset)
                .map_err(|e| Error::io(format!("reading {}", self.describe()), e))?;
            end = p.at + p.len;
        }
        Ok(end)
    }

    fn describe(&self) -> String {
        format!("a block of {} pieces of segments", self.0.len())
    }
}

/// A hole, fetched on touch as zeros (fetch mode: holes then share the mappings of fetched
/// blocks).
struct Zeros;

impl Fetch for Zeros {
    fn fetch(&self) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn describe(&self) -> String {
        "a hole".into()
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

    /// Switches to fetch mode: maps every mapped block, and `more`, again as fetched on
    /// touch. Private pages of mapped blocks are dropped: callers make sure there are none
    /// that matter (nothing uncommitted, or a boundary that re-maps anyway).
    fn enter_fetch_mode(
        &self,
        state: &mut State,
        more: Vec<u64>,
        source: &dyn BlockSource,
    ) -> Result<()> {
        tracing::info!(
            "{} switches to fetching blocks on touch: its blocks' file extents would need more \
             than {} kernel mappings",
            self.what,
            mapping_budget()
        );
        state.fetch_mode = true;
        let mut blocks: Vec<u64> = state
            .mapped
            .iter()
            .filter(|(_, m)| **m != Mapped::Fetched)
            .map(|(&b, _)| b)
            .chain(more)
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        self.map_blocks(state, blocks, source)
    }

    /// True once this memory fetches every block on touch (see
    /// [`ensure_mapped`](BlockMemory::ensure_mapped)).
    pub fn fetches_everything(&self) -> bool {
        self.lock().fetch_mode
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

    /// Maps `backing` at block `block`, replacing whatever was there (private pages included).
    pub fn install(&self, block: u64, backing: Backing) -> Result<()> {
        self.check_range(&(block..block + 1))?;
        let mut state = self.lock();
        self.install_locked(&mut state, block, backing)
    }

    fn install_locked(&self, state: &mut State, block: u64, backing: Backing) -> Result<()> {
        let was_remote = state.mapped.get(&block) == Some(&Mapped::Fetched);
        if was_remote {
            // Before the memory changes: no fetch of the old registration may land in it.
            if let Some((server, region)) = self.reservation.remote_if_any() {
                server.retire(region, self.rel(block));
            }
        }
        let mapped = match backing {
            Backing::Hole => {
                self.map_anonymous(block, 0, self.blksize)?;
                Mapped::Hole
            }
            Backing::File { file, offset, len } => {
                let len = (len as usize).min(self.blksize);
                let file_part = len.div_ceil(PAGE) * PAGE;
                if file_part > 0 {
                    self.map_file(block, 1, &file, offset, file_part)?;
                }
                if file_part < self.blksize {
                    self.map_anonymous(block, file_part, self.blksize - file_part)?;
                }
                Mapped::File {
                    inode: inode_of(&file)?,
                    offset,
                }
            }
            Backing::Pieces(pieces) => {
                // Zeros under the pieces; each piece then replaces its part (one kernel
                // mapping per piece and per gap between them).
                self.map_anonymous(block, 0, self.blksize)?;
                let mut mappings = 1;
                for p in &pieces {
                    if p.at + p.len > self.blksize {
                        return Err(Error::InvalidArgument(format!(
                            "a piece at byte {} of {} bytes exceeds the {}-byte block {block}",
                            p.at, p.len, self.blksize
                        )));
                    }
                    let len = p.len.div_ceil(PAGE) * PAGE;
                    self.map_file_at(block, p.at, &p.file, p.offset, len)?;
                    mappings += 2;
                }
                Mapped::Pieces(mappings)
            }
            Backing::Staged(staging) => {
                if !self.writable {
                    return Err(Error::InvalidArgument(format!(
                        "block {block}: staged space is for writable memory only"
                    )));
                }
                self.map_shared(block, staging.file(), staging.offset())?;
                state.staged.insert(block, staging);
                Mapped::Staged
            }
            Backing::Fetch(fetch) => {
                match self
                    .reservation
                    .remote(self.blksize, self.writable, &self.what)
                {
                    Ok((server, region)) => {
                        // A fetched block keeps its registered mapping (`register` drops its
                        // pages): a new mapping would show zeros until registered.
                        if !was_remote {
                            self.map_fetched(block, region.moves())?;
                            // Without fork events a forked child would inherit the memory but
                            // not its registration, and read zeros where blocks are not fetched
                            // yet: give it no mapping. With them, this process serves the
                            // child's faults.
                            if !server.serves_forks() {
                                let start = block as usize * self.blksize;
                                self.advise(
                                    start..start + self.blksize,
                                    libc::MADV_DONTFORK,
                                    "marking fetched memory",
                                )?;
                            }
                        }
                        server.register(region, self.rel(block), fetch)?;
                        Mapped::Fetched
                    }
                    Err(why) => {
                        tracing::debug!("fetching block {block} at once: {why}");
                        return self.install_locked(state, block, Backing::Bytes(fetch.fetch()?));
                    }
                }
            }
            Backing::Bytes(bytes) => {
                let len = bytes.len().min(self.blksize);
                let at = self.rel(block) * self.blksize as u64;
                if state.decoded.is_none() {
                    state.decoded = Some(memfd()?);
                }
                let decoded = state.decoded.as_ref().expect("created above");
                // Drop any older decoded copy, then store this one.
                punch_hole(decoded, at, self.blksize as u64)?;
                decoded
                    .write_all_at(&bytes[..len], at)
                    .map_err(|e| Error::io("writing decoded block", e))?;
                let decoded = Arc::new(
                    decoded
                        .try_clone()
                        .map_err(|e| Error::io("duplicating descriptor", e))?,
                );
                self.map_file(block, 1, &decoded, at, self.blksize)?;
                Mapped::Decoded
            }
        };
        if mapped != Mapped::Staged {
            // Replaced: the owner gives unpublished space back when the last holder drops it.
            state.staged.remove(&block);
        }
        state.spilled.remove(&block);
        match state.mapped.insert(block, mapped.clone()) {
            Some(Mapped::Decoded) if mapped != Mapped::Decoded => {
                if let Some(d) = &state.decoded {
                    punch_hole(
                        d,
                        self.rel(block) * self.blksize as u64,
                        self.blksize as u64,
                    )?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn prot(&self) -> libc::c_int {
        if self.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    fn map_file(
        &self,
        block: u64,
        nblocks: usize,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Result<()> {
        debug_assert!(len <= nblocks * self.blksize);
        self.map_file_at(block, 0, file, offset, len)
    }

    /// Maps `len` bytes at `offset` of `file` over the bytes `from..from + len` of `block`
    /// and those after it (page-aligned; callers check the range lies in the reservation).
    fn map_file_at(
        &self,
        block: u64,
        from: usize,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Result<()> {
        let addr = self.block_ptr(block).wrapping_add(from);
        // SAFETY: `addr..addr+len` lies inside our reservation (callers checked the block
        // range), which only this object maps into; MAP_FIXED replaces exactly that range.
        let r = unsafe {
            libc::mmap(
                addr.cast(),
                len,
                self.prot(),
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(map_error(
                format!(
                    "mapping {len} bytes of block {block} (from byte {from}) from a segment at \
                     offset {offset}"
                ),
                std::io::Error::last_os_error(),
            ));
        }
        readahead::advise_file_mapping(addr, len);
        Ok(())
    }

    /// Maps `block` shared and writable onto `file` at `offset`: writes go to the file's
    /// page cache directly (staged space).
    fn map_shared(&self, block: u64, file: &File, offset: u64) -> Result<()> {
        let addr = self.block_ptr(block);
        // SAFETY: inside our reservation, as in `map_file`; the file holds at least a block
        // at `offset` (staged space is allocated that long), so no access faults past its end.
        let r = unsafe {
            libc::mmap(
                addr.cast(),
                self.blksize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(map_error(
                format!("mapping staged space for block {block} at offset {offset}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn map_anonymous(&self, block: u64, from: usize, len: usize) -> Result<()> {
        self.map_zeros(block, from, len, self.prot(), libc::MADV_NOHUGEPAGE)
    }

    /// Maps the memory of a block fetched on touch. Where blocks load by moving pages in, the
    /// memory is read-write like the frames they come from (a move needs equal protections;
    /// the views handed out stay read-only) and takes huge pages.
    fn map_fetched(&self, block: u64, moves: bool) -> Result<()> {
        if moves {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            self.map_zeros(block, 0, self.blksize, rw, libc::MADV_HUGEPAGE)
        } else {
            self.map_anonymous(block, 0, self.blksize)
        }
    }

    /// Maps zeros at `from..from + len` of `block` with `prot`, then applies `huge` (advice
    /// on huge pages).
    fn map_zeros(
        &self,
        block: u64,
        from: usize,
        len: usize,
        prot: libc::c_int,
        huge: libc::c_int,
    ) -> Result<()> {
        let addr = self.block_ptr(block).wrapping_add(from);
        // SAFETY: inside our reservation, as in `map_file`.
        let r = unsafe {
            libc::mmap(
                addr.cast(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return Err(map_error(
                format!("mapping zeros for block {block}"),
                std::io::Error::last_os_error(),
            ));
        }
        // Holes take 4 KiB pages (a small write then dirties one page, not a whole 2 MiB).
        // SAFETY: advice on our own mapping; it cannot change its contents.
        unsafe { libc::madvise(addr.cast(), len, huge) };
        Ok(())
    }

    /// Applies `advice` to the mapped bytes `range` (offsets in the array).
    fn advise(&self, range: Range<usize>, advice: libc::c_int, what: &str) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let rel = self.in_reservation(&range)?;
        // madvise wants whole pages; blocks are page-aligned, so the rounded range stays
        // inside the mapped blocks.
        let start = rel.start / PAGE * PAGE;
        let end = rel.end.div_ceil(PAGE) * PAGE;
        let addr = self.reservation.base().wrapping_add(start);
        // SAFETY: advice on a range inside our reservation; callers mapped it first. Neither
        // WILLNEED nor POPULATE_READ changes what the memory holds.
        let rc = unsafe { libc::madvise(addr.cast(), end - start, advice) };
        if rc != 0 {
            return Err(Error::io(what.to_string(), std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The bytes `range` (offsets in the array) as offsets in the reservation; an error if
    /// they lie outside it.
    fn in_reservation(&self, range: &Range<usize>) -> Result<Range<usize>> {
        let origin = self.first as usize * self.blksize;
        if range.start < origin || range.end - origin > self.reservation.len() {
            return Err(Error::IndexOutOfBounds(format!(
                "bytes {range:?} lie outside the reservation of blocks {:?}",
                self.blocks()
            )));
        }
        Ok(range.start - origin..range.end - origin)
    }

    /// Starts reading the mapped bytes `range` into memory in the background and returns at
    /// once (`vm::readahead`); fetched blocks are queued for the fault server's workers,
    /// within its RAM budget.
    pub fn prefetch(&self, range: Range<usize>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let origin = range.start - self.in_reservation(&range)?.start;
        if let Some((server, region)) = self.reservation.remote_if_any() {
            let remote = self.remote_blocks(&range);
            server.prefetch(region, remote.into_iter().map(|b| self.rel(b)));
        }
        let files = self.file_runs(&range);
        let rel = files.into_iter().map(|r| r.start - origin..r.end - origin);
        readahead::in_background(self.reservation.clone(), rel.collect());
        Ok(())
    }

    /// The parts of the bytes `range` (not empty) on blocks mapped from files, as byte ranges
    /// in the array, consecutive blocks joined.
    fn file_runs(&self, range: &Range<usize>) -> Vec<Range<usize>> {
        let first = (range.start / self.blksize) as u64;
        let last = ((range.end - 1) / self.blksize) as u64;
        let state = self.lock();
        let mut runs: Vec<Range<usize>> = Vec::new();
        for (&b, m) in state.mapped.range(first..=last) {
            if !matches!(m, Mapped::File { .. } | Mapped::Pieces(_)) {
                continue;
            }
            let bytes = b as usize * self.blksize..(b as usize + 1) * self.blksize;
            let part = bytes.start.max(range.start)..bytes.end.min(range.end);
            match runs.last_mut() {
                Some(run) if run.end == part.start => run.end = part.end,
                _ => runs.push(part),
            }
        }
        runs
    }

    /// Reads the bytes `range` of a view just made ahead if the view is small (see
    /// `vm::readahead::small_view`).
    pub fn read_view_ahead(&self, range: Range<usize>) {
        if let Ok(rel) = self.in_reservation(&range) {
            readahead::small_view(&self.reservation, rel);
        }
    }

    /// The fetched blocks under the bytes `range` (not empty), ascending.
    fn remote_blocks(&self, range: &Range<usize>) -> Vec<u64> {
        let first = (range.start / self.blksize) as u64;
        let last = ((range.end - 1) / self.blksize) as u64;
        let state = self.lock();
        state
            .mapped
            .range(first..=last)
            .filter(|(_, m)| **m == Mapped::Fetched)
            .map(|(&b, _)| b)
            .collect()
    }

    /// Reads the mapped bytes `range` into memory now; storage errors are returned, not
    /// raised as a fault later.
    pub fn populate(&self, range: Range<usize>) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        // Fetched blocks are fetched here, in this thread, so errors come back as errors.
        let remote = self.remote_blocks(&range);
        if let Some((server, region)) = self.reservation.remote_if_any() {
            for b in remote {
                server.load_now(region, self.rel(b))?;
            }
        }
        // Without huge-page advice, read each piece ahead first (the page faults of
        // POPULATE_READ alone read around each page, a window at a time); with it, its faults
        // read whole folios, faster. Pieces, so a range larger than RAM does not evict its
        // start before it is mapped.
        let rel = self.in_reservation(&range)?;
        let origin = range.start - rel.start;
        for at in rel.clone().step_by(readahead::LOAD_PIECE) {
            let piece = at..(at + readahead::LOAD_PIECE).min(rel.end);
            if !readahead::faults_read_folios() {
                readahead::willneed(&self.reservation, piece.clone());
            }
            let bytes = piece.start + origin..piece.end + origin;
            self.advise(bytes, libc::MADV_POPULATE_READ, "loading array data")?;
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

    /// Written pages of every mapped block: block → byte ranges within the block, sorted.
    pub fn written_pages(&self) -> Result<BTreeMap<u64, Vec<Range<usize>>>> {
        self.written_pages_locked(&self.lock())
    }

    fn written_pages_locked(&self, state: &State) -> Result<BTreeMap<u64, Vec<Range<usize>>>> {
        let mut out: BTreeMap<u64, Vec<Range<usize>>> = BTreeMap::new();
        // Scan only the span of mapped blocks (one call for the whole span).
        let (Some(first), Some(last)) = (
            state.mapped.keys().next().copied(),
            state.mapped.keys().next_back().copied(),
        ) else {
            return Ok(out);
        };
        let span = self.block_ptr(first) as usize..self.block_ptr(last) as usize + self.blksize;
        let is_remote = |b: &u64| state.mapped.get(b) == Some(&Mapped::Fetched);
        self.add_by_block(&mut out, dirty::written_pages(span.clone())?, |b| {
            !is_remote(b)
        });
        if let Some((_, region)) = self.reservation.remote_if_any() {
            // Fetched blocks are private memory from the start; the fault server tracks
            // their written ranges (64 KiB granules, or the whole block).
            for (block, ranges) in region.dirty_ranges() {
                let block = block + self.first;
                if is_remote(&block) {
                    out.insert(block, ranges);
                }
            }
        }
        for (&block, staging) in &state.staged {
            if state.spilled.contains_key(&block) {
                // Spilled writes over a version: the whole block is the new version (its
                // pages cannot be told apart from the version's any more).
                out.insert(block, std::iter::once(0..self.blksize).collect());
                continue;
            }
            let ranges = self.written_staged(block, staging.as_ref())?;
            if !ranges.is_empty() {
                out.insert(block, ranges);
            }
        }
        if dirty::method() == dirty::ScanMethod::PagemapRead {
            // That scan cannot tell the shared zero page from a written page: drop all-zero
            // pages of holes (a hole page written with zeros is unchanged anyway).
            for (block, ranges) in out.iter_mut() {
                if state.mapped.get(block) == Some(&Mapped::Hole) {
                    *ranges = self.nonzero_pages(*block, ranges);
                }
            }
            out.retain(|_, ranges| !ranges.is_empty());
        }
        Ok(out)
    }

    /// Adds address ranges to `out` as byte ranges within their blocks (split at block
    /// boundaries), for the blocks `keep` accepts.
    fn add_by_block(
        &self,
        out: &mut BTreeMap<u64, Vec<Range<usize>>>,
        ranges: Vec<Range<usize>>,
        keep: impl Fn(&u64) -> bool,
    ) {
        let base = self.reservation.base() as usize;
        for r in ranges {
            let mut at = r.start - base;
            let end = r.end - base;
            while at < end {
                let rel = (at / self.blksize) as u64;
                let block_start = rel as usize * self.blksize;
                let stop = end.min(block_start + self.blksize);
                let block = rel + self.first;
                if keep(&block) {
                    out.entry(block)
                        .or_default()
                        .push(at - block_start..stop - block_start);
                }
                at = stop;
            }
        }
    }

    /// The pages of `ranges` (within `block`) holding a non-zero byte.
    /// The written pages of a block mapped onto staged space. Shared pages are not found by
    /// the page-table scan (they are the file's): the file tells which of its pages hold
    /// data (`SEEK_DATA`), even after they were written back and evicted. That answer is
    /// coarse on allocated space (pages only read there may count), so pages still in memory
    /// that hold only zeros are dropped — zeros over a hole change nothing; pages no longer
    /// in memory are kept (only written pages are written back).
    fn written_staged(&self, block: u64, staging: &dyn Staging) -> Result<Vec<Range<usize>>> {
        let ranges = written_in_file(staging.file(), staging.offset(), self.blksize)
            .map_err(|e| Error::io(format!("finding written pages of block {block}"), e))?;
        if ranges.is_empty() {
            return Ok(ranges);
        }
        let mut resident = vec![0u8; self.blksize / PAGE];
        // SAFETY: the block lies in our reservation and is mapped (it is staged); mincore
        // only fills `resident`, one byte per page of the range.
        let rc = unsafe {
            libc::mincore(
                self.block_ptr(block).cast(),
                self.blksize,
                resident.as_mut_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                format!("finding resident pages of block {block}"),
                std::io::Error::last_os_error(),
            ));
        }
        let mut page = vec![0u8; PAGE];
        let mut out: Vec<Range<usize>> = Vec::new();
        for r in ranges {
            for start in (r.start..r.end).step_by(PAGE) {
                if resident[start / PAGE] & 1 != 0 {
                    self.read_into(block, start, &mut page);
                    if page.iter().all(|&b| b == 0) {
                        continue;
                    }
                }
                match out.last_mut() {
                    Some(last) if last.end == start => last.end = start + PAGE,
                    _ => out.push(start..start + PAGE),
                }
            }
        }
        Ok(out)
    }

    fn nonzero_pages(&self, block: u64, ranges: &[Range<usize>]) -> Vec<Range<usize>> {
        let mut page = vec![0u8; PAGE];
        let mut out: Vec<Range<usize>> = Vec::new();
        for r in ranges {
            for start in (r.start..r.end).step_by(PAGE) {
                self.read_into(block, start, &mut page);
                if page.iter().any(|&b| b != 0) {
                    match out.last_mut() {
                        Some(last) if last.end == start => last.end = start + PAGE,
                        _ => out.push(start..start + PAGE),
                    }
                }
            }
        }
        out
    }

    /// The blocks with at least one written page.
    pub fn dirty_blocks(&self) -> Result<Vec<u64>> {
        Ok(self.written_pages()?.into_keys().collect())
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

    /// Drops the private (written) pages of `ranges` within `block`: they show the mapped
    /// version again.
    pub fn discard_pages(&self, block: u64, ranges: &[Range<usize>]) -> Result<()> {
        if self.lock().mapped.get(&block) == Some(&Mapped::Fetched) {
            // A fetched block is loaded whole: drop it whole, the next touch fetches it.
            let whole = 0..self.blksize;
            return match self.reservation.remote_if_any() {
                Some((server, region)) => {
                    let rel = self.rel(block);
                    server.drop_block(region, rel, || self.madvise_dontneed(block, &whole))
                }
                None => self.madvise_dontneed(block, &whole),
            };
        }
        {
            let mut state = self.lock();
            if let Some(version) = state.spilled.get(&block).cloned() {
                // Spilled: the writes live in staged space over the version. Map the version
                // again (the staged space is given back when dropped).
                return self.install_locked(&mut state, block, version);
            }
        }
        if let Some(staging) = self.lock().staged.get(&block).cloned() {
            // Shared pages live in the file: give them back there (they read as zeros again,
            // the state before any write).
            for r in ranges {
                punch_hole(
                    staging.file(),
                    staging.offset() + r.start as u64,
                    r.len() as u64,
                )?;
            }
            return Ok(());
        }
        for r in ranges {
            self.madvise_dontneed(block, r)?;
        }
        Ok(())
    }

    fn madvise_dontneed(&self, block: u64, r: &Range<usize>) -> Result<()> {
        let addr = self.block_ptr(block).wrapping_add(r.start);
        // SAFETY: inside our reservation; DONTNEED on a private mapping only drops private
        // pages, which re-fault from the file, as zeros, or through the fault server.
        let rc = unsafe { libc::madvise(addr.cast(), r.end - r.start, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(Error::io(
                format!("discarding pages of block {block}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// The staged space `block` is mapped onto, if it is.
    pub fn staged(&self, block: u64) -> Option<Arc<dyn Staging>> {
        self.lock().staged.get(&block).cloned()
    }

    /// Drops every written page of the given blocks.
    pub fn discard(&self, blocks: &[u64]) -> Result<()> {
        let whole = 0..self.blksize;
        for &b in blocks {
            self.discard_pages(b, std::slice::from_ref(&whole))?;
        }
        Ok(())
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

    /// How many separate kernel mappings the mapped blocks need at least (runs of blocks at
    /// consecutive offsets of one file count once). Compare with `vm.max_map_count`.
    pub fn mapping_runs(&self) -> usize {
        self.runs_locked(&self.lock())
    }

    fn runs_locked(&self, state: &State) -> usize {
        let mut runs = 0;
        let mut prev: Option<(u64, &Mapped)> = None;
        for (&b, m) in &state.mapped {
            let continues = match (prev, m) {
                (
                    Some((
                        pb,
                        Mapped::File {
                            inode: pi,
                            offset: po,
                        },
                    )),
                    Mapped::File { inode, offset },
                ) => pb + 1 == b && pi == inode && po + self.blksize as u64 == *offset,
                (Some((pb, Mapped::Hole)), Mapped::Hole)
                | (Some((pb, Mapped::Fetched)), Mapped::Fetched) => pb + 1 == b,
                _ => false,
            };
            if let Mapped::Pieces(n) = m {
                runs += n;
            } else if !continues {
                runs += 1;
            }
            prev = Some((b, m));
        }
        runs
    }
}

/// The page ranges of `len` bytes at `offset` of `file` that hold data (`SEEK_DATA` /
/// `SEEK_HOLE`: written pages, including ones written through a mapping and not yet written
/// back), relative to `offset`. A file system without those calls reports everything.
fn written_in_file(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<Range<usize>>> {
    let end = offset + len as u64;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        // SAFETY: lseek on a descriptor we hold; it moves only this descriptor's offset,
        // which nothing else uses (all other I/O on staged files is positional).
        let data = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(out), // no data from `at` to the end of the file
                Some(libc::EINVAL) => Ok(std::iter::once(0..len).collect()),
                _ => Err(e),
            };
        }
        let data = data as u64;
        if data >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let hole = (hole as u64).min(end);
        let start = ((data - offset) as usize / PAGE) * PAGE;
        let stop = ((hole - offset) as usize).div_ceil(PAGE) * PAGE;
        out.push(start..stop.min(len));
        at = hole;
    }
    Ok(out)
}

fn inode_of(file: &File) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = file
        .metadata()
        .map_err(|e| Error::io("reading segment metadata", e))?;
    Ok((m.dev(), m.ino()))
}

fn memfd() -> Result<File> {
    // SAFETY: memfd_create reads only the NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"outcore-decoded".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("memfd_create", std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Frees `len` bytes at `offset` of `file` (they read as zeros), keeping its size: decoded
/// copies in our memfd, discarded writes in staged space.
fn punch_hole(file: &File, offset: u64, len: u64) -> Result<()> {
    // SAFETY: fallocate on a descriptor we hold; it frees the pages of that range.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(Error::io(
            "freeing pages of a file",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
