//! Fault-filled memory: blocks that cannot be mapped from a local file (compressed, or in a
//! remote store) are fetched when first touched, through `userfaultfd`.
//!
//! # Files
//!
//! * `sys.rs`: the kernel interface (ioctl numbers and structs, thin wrappers).
//! * `block.rs`: one block's state (`Registered` / `Busy` / `Loaded { written }`) and its
//!   transitions, and the granules that written ranges are tracked in; `region.rs`: one reservation's blocks ([`FetchedRegion`]).
//! * `lifecycle.rs`: what `vm::mapped` calls: register, retire and drop blocks, add and
//!   remove regions.
//! * `messages.rs`: the fault thread, reading and dispatching each fault message.
//! * `fault.rs`: the fault path proper, steps 3 to 5 below (the fault thread's `fault` and
//!   `write_fault`, the workers' `fetch_and_install`).
//! * `pattern.rs`: which blocks to read ahead after a fault (sequential, backwards, strided).
//! * `budget.rs`: the RAM budget, the LRU of loaded blocks, eviction (step 6), spare frames;
//!   `frames.rs`: the frame pool.
//! * `inherit.rs`: what happens at a fork, in the parent and in the child (which registers
//!   its inherited fetched memory with a userfaultfd of its own and hands it over);
//!   `fork.rs`: serving the faults of forked children.
//!
//! # The fault path, top to bottom
//!
//! 1. A block is *registered* ([`FaultServer::register`]): its range is fresh anonymous memory
//!    registered with the process-wide userfaultfd for MISSING and write-protect faults, and
//!    its [`Fetch`] (how to get its bytes) is recorded in the array's [`FetchedRegion`].
//! 2. A thread touches the block (user code, or the kernel in `read(2)`): the kernel suspends
//!    it and queues a fault message.
//! 3. The fault thread reads the message, finds the region and block, and queues the block
//!    for a worker (several blocks load in parallel; a block already queued is not queued
//!    twice; when the faults look sequential or strided, the next two blocks of the pattern
//!    are queued too, as read-ahead: `pattern.rs`). With no fetch in flight and a local fetch (a file, memory), it fetches
//!    the block itself instead (step 4 on the fault thread): one thread wake-up per
//!    isolated fault instead of three.
//! 4. A worker fetches the bytes (no lock held), marks the block *busy* if it still wants this
//!    version, and copies it in with `UFFDIO_COPY` in write-protect mode (no lock held either,
//!    so workers copy in parallel), which also wakes the suspended threads.
//! 5. The first write to a loaded block raises a write-protect message: the fault thread records
//!    the 64 KiB granule written and lifts the protection of that granule only; a write to
//!    another granule of the block records and unprotects the whole block. So a bulk write
//!    costs two round trips per block and transaction, and a sparse write reports 64 KiB
//!    ([`FetchedRegion::dirty_ranges`]). A block with anything written is dirty.
//! 6. When loaded clean blocks exceed the RAM budget, the oldest are dropped
//!    (`MADV_DONTNEED`); touching them again fetches them again. Dirty blocks stay. Because
//!    a clean block is write-protected, a write racing its eviction traps and waits for the
//!    eviction to finish, then faults the block in again: no write is lost.
//!
//! Whoever changes a block's pages (a worker copying, the evictor, an abort dropping it, a
//! re-mapping) first waits until the block is not busy and marks it busy itself, so these
//! never interleave, and a fetch that finishes after its block was re-registered is dropped.
//!
//! A fetch that keeps failing (an error, or a panic, which is caught and counts as one)
//! cannot be reported to the faulting instruction: after retries
//! the block is poisoned (`UFFDIO_POISON`: the thread gets SIGBUS) after logging an error naming
//! the array and block. `BigArray::load` fetches under the caller's control and returns
//! errors normally. The fault thread and workers never call Python or need the GIL.
//!
//! # Forked children
//!
//! A child inherits fetched memory. At the fork this process snapshots which version every
//! registered block has; the child registers those blocks with a userfaultfd of its own and
//! hands it over a socket; the fault thread then serves the child's missing pages from the
//! snapshot (fetched here, copied into the child, writable: the child's writes are its own).
//! A child that outlives this process fails its faults loudly. Steps in `inherit.rs`. With
//! `OUTCORE_NO_UFFD_FORK` fetched memory is not inherited (`MADV_DONTFORK`, in `mapped.rs`).
//!
//! # Lock order
//!
//! Callers (`vm::mapped`) may hold their own locks (levels 1–5 of docs/DESIGN.md, "Locking
//! rules") when calling in; nothing here takes any of them. Here, outermost first:
//!
//! ```text
//!  1. FaultServer.regions    RwLock, base address → Weak<FetchedRegion>; held (read) while
//!                            locking each region's state only by fork.rs's snapshot()
//!  2. FetchedRegion.state    per region, with its `idle` Condvar (waiting for a block's busy
//!                            state to end, see below)
//!  3. leaves, never held while taking another lock: FetchedRegion.pattern,
//!     FaultServer.lru, FaultServer.queued,
//!     FaultServer.jobs, the job receiver (an idle worker waits in `recv` holding it),
//!     Child.queued, FramePool.sizes, PENDING_RX, and inherit.rs's NEW_CONTROLS,
//!     PENDING_SNAPSHOT and INHERITED
//! ```
//!
//! Around a fork (`vm/fork_gate.rs`): the prepare handler first waits until no `ForkGuard`
//! is held (callers hold one while changing fetched mappings, under their own locks), then
//! takes `regions` and each region's state to snapshot; the child's handler takes no lock
//! another thread could have held (only `try_lock`).
//!
//! Apart from `regions` → a region's state, every lock is released before the next is taken.
//! The fault thread's `write_fault` holds a region's state across the `UFFDIO_WRITEPROTECT` ioctl.
//!
//! *Busy* works like a per-block lock below level 2: it is taken and given back under the
//! region's state ([`FetchedRegion::lock_idle`], [`FetchedRegion::end_busy`]). While a block
//! is busy, its holder takes no lock but `FramePool.sizes` and, to end it, the
//! region's state; it waits for nothing. Threads waiting for it may hold the caller's locks
//! (a remap under `BlockMemory.state`), but no busy holder ever takes those, so every wait
//! ends. Fetches (`Fetch::fetch_into`, the store) run with no lock held and not busy.
//!
//! # Poisoned locks
//!
//! Every lock here is taken through [`lock`], [`wait`], [`read`] or [`write`], which take a
//! poisoned lock anyway: the fault thread and workers must keep serving faults after a panic
//! elsewhere (a thread they stop serving stays suspended forever), and no critical section
//! leaves its data inconsistent when it unwinds (each changes a block's state or a table in
//! one assignment; fetches, which may panic, run outside any lock and their panics are
//! caught).

mod block;
mod budget;
mod fault;
mod fork;
pub(super) mod frames;
mod inherit;
mod lifecycle;
mod messages;
mod pattern;
mod region;
mod sys;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};

use crate::{Error, Result};
use budget::LruEntry;
use fork::Child;
use frames::FramePool;
pub(super) use inherit::{after_fork_in_child, after_fork_in_parent, before_fork};
pub(crate) use region::FetchedRegion;
use sys::Uffd;

/// How to get one block version's bytes (decoded, checksum-verified).
pub trait Fetch: Send + Sync {
    /// The bytes (at most the block size; the rest of the block reads as zeros).
    fn fetch(&self) -> Result<Vec<u8>>;
    /// The bytes written into the front of `out` (a whole block); their length. Fetches
    /// that can decode straight into place override this to save a copy.
    fn fetch_into(&self, out: &mut [u8]) -> Result<usize> {
        let bytes = self.fetch()?;
        let room = out.len();
        let target = out.get_mut(..bytes.len()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: {} bytes do not fit in a block of {room}",
                self.describe(),
                bytes.len()
            ))
        })?;
        target.copy_from_slice(&bytes);
        Ok(bytes.len())
    }
    /// What this is, for error messages ("block 3 of array 'A' at tid ...").
    fn describe(&self) -> String;
    /// True if fetching reads only this machine's files or memory: it cannot stall on a
    /// server, so the fault thread may fetch it itself (an isolated fault then waits for
    /// fewer thread hand-offs). A fetch that may wait for anything else must say false.
    fn is_local(&self) -> bool {
        false
    }
}

/// Locks `m`, poisoned or not (see "Poisoned locks" in the module docs).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cv` with `guard`, poisoned or not (see "Poisoned locks" in the module docs).
fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, poisoned or not (see "Poisoned locks" in the module docs).
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, poisoned or not (see "Poisoned locks" in the module docs).
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// A block of this process's memory with a fetch job pending: region ids are never reused,
/// unlike addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct BlockKey {
    region: u64,
    block: u64,
}

/// A block to fetch.
enum Job {
    /// For this process.
    Own {
        /// Gone if the region was dropped meanwhile.
        region: Weak<FetchedRegion>,
        /// The region's id and the block.
        key: BlockKey,
        /// The block was first touched by a write at this byte offset: it is installed with
        /// that write recorded and its granule unprotected, saving the writer a second
        /// round trip (step 5) right after the first.
        write_at: Option<usize>,
    },
    /// Eviction over the budget and spare frames, after a block was loaded on the fault
    /// thread (which leaves that work to a worker).
    Tidy,
    /// For a forked child.
    Child {
        /// The child's address space.
        child: Arc<Child>,
        /// The block's start address there.
        start: usize,
    },
}

/// The process-wide userfaultfd, its fault thread and workers.
pub(crate) struct FaultServer {
    uffd: Uffd,
    /// The kernel has `UFFDIO_POISON`.
    poison: bool,
    regions: RwLock<BTreeMap<usize, Weak<FetchedRegion>>>,
    jobs: Mutex<Sender<Job>>,
    /// Blocks with a job pending.
    queued: Mutex<HashSet<BlockKey>>,
    /// Loaded blocks, oldest first (entries of blocks dropped meanwhile are skipped).
    lru: Mutex<VecDeque<LruEntry>>,
    /// Bytes of loaded blocks (clean or dirty), against `budget`.
    loaded_bytes: AtomicU64,
    budget: AtomicU64,
    /// The last registration's generation.
    generation: AtomicU64,
    /// The kernel has `UFFDIO_MOVE` (Linux >= 6.8).
    move_available: bool,
    /// Forked children inherit fetched memory, and this process serves their faults
    /// (`inherit.rs`); off with `OUTCORE_NO_UFFD_FORK`.
    serves_forks: bool,
    /// A block was ever loaded by a move: keep a few spare frames ready.
    moves_used: AtomicBool,
    frames: FramePool,
    stats: Counters,
}

/// How blocks were loaded and dropped so far (for tests and benchmarks).
#[derive(Default)]
struct Counters {
    moved_in: AtomicU64,
    copied_in: AtomicU64,
    moved_out: AtomicU64,
    freed: AtomicU64,
    child_copies: AtomicU64,
}

/// What the fault server did so far in this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// The kernel can move pages (`UFFDIO_MOVE`), so read-only memory loads by moving.
    pub move_available: bool,
    /// Blocks loaded by moving a frame in.
    pub moved_in: u64,
    /// Blocks loaded by copying (`UFFDIO_COPY`).
    pub copied_in: u64,
    /// Evicted blocks whose pages were moved into a spare frame.
    pub moved_out: u64,
    /// Evicted blocks whose pages were freed.
    pub freed: u64,
    /// Bytes held by spare frames now (pages kept for the next loads, within the budget).
    pub spare_bytes: u64,
    /// Bytes of loaded blocks now (clean or dirty), counted against the budget.
    pub loaded_bytes: u64,
    /// Forked children can read fetched memory (this process serves their faults); without
    /// it, fetched memory is not inherited and touching it in a child is a segfault.
    pub serves_forks: bool,
    /// Blocks copied into forked children.
    pub child_copies: u64,
}

/// The fault server's counters (all zero if it is not running).
pub fn stats() -> FaultStats {
    let Ok(s) = server() else {
        return FaultStats::default();
    };
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    FaultStats {
        move_available: s.move_available,
        serves_forks: s.serves_forks,
        child_copies: get(&s.stats.child_copies),
        moved_in: get(&s.stats.moved_in),
        copied_in: get(&s.stats.copied_in),
        moved_out: get(&s.stats.moved_out),
        freed: get(&s.stats.freed),
        spare_bytes: s.frames.spare_bytes() as u64,
        loaded_bytes: get(&s.loaded_bytes),
    }
}

/// Workers fetching blocks in parallel.
const WORKERS: usize = 4;

static SERVER: OnceLock<std::result::Result<&'static FaultServer, String>> = OnceLock::new();
/// Set in a forked child: the server (its descriptor, threads and tables) belongs to the parent.
static FORKED: AtomicBool = AtomicBool::new(false);
/// The job receiver, from [`FaultServer::start`] until the workers start.
static PENDING_RX: Mutex<Option<Receiver<Job>>> = Mutex::new(None);
static THREADS: OnceLock<()> = OnceLock::new();

/// The fault server, started on first use; an error says why userfaultfd is unusable here.
///
/// In a forked child there is none: the inherited descriptor still acts on the *parent's*
/// address space, and its threads were not forked. Memory the child inherited is
/// served by the parent (see `fork.rs`); new arrays fetch at once.
pub(crate) fn server() -> std::result::Result<&'static FaultServer, String> {
    if FORKED.load(Ordering::Relaxed) {
        return Err("not in a forked child (the parent serves the memory it inherited)".into());
    }
    SERVER
        .get_or_init(|| {
            if std::env::var_os("OUTCORE_NO_USERFAULTFD").is_some() {
                return Err("disabled by OUTCORE_NO_USERFAULTFD".into());
            }
            let server = FaultServer::start().map(|s| &*Box::leak(Box::new(s)))?;
            // Forked children inherit fetched memory (inherit.rs).
            crate::vm::fork_gate::install_handlers();
            Ok(server)
        })
        .clone()
}

/// Sets the RAM budget for loaded clean blocks of the whole process.
pub(crate) fn set_budget(bytes: u64) {
    if let Ok(s) = server() {
        s.budget.store(bytes, Ordering::Relaxed);
    }
}

/// The default budget: `OUTCORE_CACHE_BYTES`, else 1 GiB.
fn default_budget() -> u64 {
    std::env::var("OUTCORE_CACHE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

impl FaultServer {
    fn start() -> std::result::Result<Self, String> {
        // Ask one descriptor what the kernel offers, then configure a second one.
        let (probe, _) = Uffd::open()?;
        let offered = probe.api(0).map_err(|e| format!("UFFDIO_API: {e}"))?;
        drop(probe);
        let poison = offered & sys::FEATURE_POISON != 0;
        let move_available =
            offered & sys::FEATURE_MOVE != 0 && std::env::var_os("OUTCORE_NO_UFFD_MOVE").is_none();
        let base = if poison { sys::FEATURE_POISON } else { 0 }
            | if move_available { sys::FEATURE_MOVE } else { 0 };
        let (uffd, full_mode) = Uffd::open()?;
        uffd.api(base).map_err(|e| format!("UFFDIO_API: {e}"))?;
        let serves_forks = std::env::var_os("OUTCORE_NO_UFFD_FORK").is_none();
        if !full_mode {
            tracing::warn!(
                "userfaultfd in user-mode-only mode: system calls that read or write array \
                 memory not yet fetched fail with EFAULT; call load() on the range first, or \
                 give this user access to /dev/userfaultfd"
            );
        }
        let (tx, rx) = channel();
        let server = FaultServer {
            uffd,
            poison,
            regions: RwLock::new(BTreeMap::new()),
            jobs: Mutex::new(tx),
            queued: Mutex::new(HashSet::new()),
            lru: Mutex::new(VecDeque::new()),
            loaded_bytes: AtomicU64::new(0),
            budget: AtomicU64::new(default_budget()),
            generation: AtomicU64::new(0),
            move_available,
            serves_forks,
            moves_used: AtomicBool::new(false),
            frames: FramePool::default(),
            stats: Counters::default(),
        };
        lock(&PENDING_RX).replace(rx);
        Ok(server)
    }

    /// Starts the fault thread and workers (called once, with the 'static server).
    fn spawn_threads(&'static self) {
        let rx = lock(&PENDING_RX).take().expect("jobs receiver");
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("outcore-fetch-{i}"))
                .spawn(move || self.worker(&rx))
                .expect("spawn a fetch worker");
        }
        messages::spawn(self);
    }

    /// Queues a job for the workers.
    fn send(&self, job: Job) {
        // The receiver lives as long as the (leaked) server.
        let _ = lock(&self.jobs).send(job);
    }

    /// The region holding `addr` and the block index there, if any.
    fn locate(&self, addr: usize) -> Option<(Arc<FetchedRegion>, u64)> {
        let region = read(&self.regions)
            .range(..=addr)
            .next_back()
            .and_then(|(_, w)| w.upgrade())?;
        let block = region.block_of(addr)?;
        Some((region, block))
    }

    /// The registry's weak reference to `region` (dangling if it was removed).
    fn region_weak(&self, region: &FetchedRegion) -> Weak<FetchedRegion> {
        read(&self.regions)
            .get(&region.base)
            .cloned()
            .unwrap_or_default()
    }

    /// True if forked children keep fetched memory and this process serves their faults;
    /// otherwise fetched memory must not be inherited (`MADV_DONTFORK`).
    pub fn serves_forks(&self) -> bool {
        self.serves_forks
    }

    /// Whether blocks of `blksize` in memory that is `writable` or not load by moving frames.
    ///
    /// Only read-only memory: a moved page arrives writable and unprotected, so a write
    /// between the move and the write-protection that follows would escape dirty tracking.
    /// Writable memory therefore gets `UFFDIO_COPY` in write-protect mode, which is atomic.
    pub fn can_move(&self, blksize: usize, writable: bool) -> bool {
        self.move_available && !writable && blksize % frames::HUGE == 0
    }
}
