//! Fault-filled memory: blocks that cannot be mapped from a local file (compressed, or in a
//! remote store) are fetched when first touched, through `userfaultfd`.
//!
//! # The fault path, top to bottom
//!
//! 1. A block is *registered* ([`FaultServer::register`]): its range is fresh anonymous memory
//!    registered with the process-wide userfaultfd for MISSING and write-protect faults, and
//!    its [`Fetch`] (how to get its bytes) is recorded in the array's [`RemoteRegion`].
//! 2. A thread touches the block (user code, or the kernel in `read(2)`): the kernel suspends
//!    it and queues a fault message.
//! 3. The handler thread reads the message, finds the region and block, and queues the block
//!    for a worker (several blocks load in parallel; a block already queued is not queued
//!    twice; when the faults look sequential, the next two blocks are queued too, as
//!    read-ahead).
//! 4. A worker fetches the bytes (no lock held), marks the block *busy* if it still wants this
//!    version, and copies it in with `UFFDIO_COPY` in write-protect mode (no lock held either,
//!    so workers copy in parallel), which also wakes the suspended threads.
//! 5. The first write to a loaded block raises a write-protect message: the handler marks the
//!    block dirty and lifts the protection of the whole block (one round trip per block per
//!    transaction; dirty tracking is per block, the unit a commit stores anyway).
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
//! errors normally. The handler and workers never call Python or need the GIL.
//!
//! # Forked children
//!
//! Where the kernel reports forks (`UFFD_FEATURE_EVENT_FORK`), a child keeps its registered
//! memory and the handler receives a userfaultfd for the child's address space with the fork
//! event. It snapshots which version every registered block had, and serves the child's
//! missing pages from it (fetched here, copied into the child, writable: the child's writes
//! are its own). Elsewhere fetched memory is not inherited (`MADV_DONTFORK`, in `mapped.rs`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Duration;

use super::frames::{self, Frame, FramePool};
use crate::{Error, Result};

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
}

const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_AA02;
const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_MOVE: libc::c_ulong = 0xC028_AA05;
const UFFDIO_WRITEPROTECT: libc::c_ulong = 0xC018_AA06;
const UFFDIO_POISON: libc::c_ulong = 0xC020_AA08;
const USERFAULTFD_IOC_NEW: libc::c_ulong = 0xAA00;
const UFFD_API: u64 = 0xAA;
const FEATURE_EVENT_FORK: u64 = 1 << 1;
const FEATURE_MOVE: u64 = 1 << 10;
const FEATURE_POISON: u64 = 1 << 14;
const MOVE_MODE_DONTWAKE: u64 = 1;
const REGISTER_MISSING: u64 = 1;
const REGISTER_WP: u64 = 2;
const COPY_MODE_WP: u64 = 2;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_FORK: u8 = 0x13;
const PAGEFAULT_FLAG_WP: u64 = 1 << 1;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioPoison {
    range: UffdioRange,
    mode: u64,
    updated: i64,
}

/// One fault message (`struct uffd_msg`, 32 bytes). For a fork event, the low 32 bits of
/// `flags` are the new descriptor of the child's address space.
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdMsg {
    event: u8,
    reserved: [u8; 7],
    flags: u64,
    address: u64,
    ptid: u64,
}

/// The registered blocks of one array's reservation.
pub(crate) struct RemoteRegion {
    /// Unique for the life of the process.
    id: u64,
    base: usize,
    len: usize,
    blksize: usize,
    what: String,
    /// Blocks are loaded by moving frames in (read-only memory with huge-page-sized blocks).
    moves: bool,
    /// The block of the last missing-page fault (`u64::MAX`: none yet), to tell a sequential
    /// pass (read ahead) from random access (don't).
    last_fault: AtomicU64,
    state: Mutex<RegionState>,
    /// Signalled whenever a block stops being busy.
    idle: Condvar,
}

#[derive(Default)]
struct RegionState {
    blocks: HashMap<u64, RemoteBlock>,
    /// The reservation is going away: nothing is copied into it any more.
    closed: bool,
}

struct RemoteBlock {
    fetch: Arc<dyn Fetch>,
    /// Its bytes are in memory (counted against the budget).
    loaded: bool,
    /// Written since it was loaded (its write protection was lifted).
    dirty: bool,
    /// A thread is changing its pages (copying in, dropping); others wait.
    busy: bool,
    /// Bumped whenever the block is registered anew: a fetch of an older registration is
    /// thrown away.
    generation: u64,
}

impl RemoteRegion {
    fn block_range(&self, block: u64) -> UffdioRange {
        UffdioRange {
            start: (self.base + block as usize * self.blksize) as u64,
            len: self.blksize as u64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the region once `block` is not busy.
    fn lock_idle(&self, block: u64) -> MutexGuard<'_, RegionState> {
        let mut state = self.lock();
        while state.blocks.get(&block).is_some_and(|b| b.busy) {
            state = self.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state
    }

    /// Ends the busy state of `block` (if it still exists) and wakes the waiters.
    fn end_busy(&self, block: u64, update: impl FnOnce(&mut RemoteBlock)) {
        let mut state = self.lock();
        if let Some(b) = state.blocks.get_mut(&block) {
            b.busy = false;
            update(b);
        }
        drop(state);
        self.idle.notify_all();
    }

    /// True if blocks are loaded by moving frames in: the memory must then be mapped
    /// read-write (a move needs equal protections) with huge pages.
    pub fn moves(&self) -> bool {
        self.moves
    }

    /// The blocks written since they were loaded.
    pub fn dirty_blocks(&self) -> Vec<u64> {
        let state = self.lock();
        let mut dirty: Vec<u64> = state
            .blocks
            .iter()
            .filter(|(_, b)| b.dirty)
            .map(|(&i, _)| i)
            .collect();
        dirty.sort_unstable();
        dirty
    }
}

/// The process-wide userfaultfd, its handler thread and workers.
pub(crate) struct FaultServer {
    uffd: OwnedFd,
    poison: bool,
    regions: RwLock<BTreeMap<usize, Weak<RemoteRegion>>>,
    jobs: Mutex<Sender<Job>>,
    /// Blocks with a job pending, by (region id, block): region ids are never reused, unlike
    /// addresses (a dropped reservation's range can be mapped again for another array).
    queued: Mutex<HashSet<(u64, u64)>>,
    lru: Mutex<VecDeque<(Weak<RemoteRegion>, u64, u64)>>,
    loaded_bytes: AtomicU64,
    budget: AtomicU64,
    generation: AtomicU64,
    /// The kernel has `UFFDIO_MOVE` (Linux >= 6.8).
    move_available: bool,
    /// The kernel reports forks (`UFFD_FEATURE_EVENT_FORK`, which needs `CAP_SYS_PTRACE`):
    /// forked children keep fetched memory, and this process serves their faults.
    serves_forks: bool,
    /// A block was ever loaded by a move: keep a few spare frames ready.
    moves_used: std::sync::atomic::AtomicBool,
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
    }
}

/// Workers fetching blocks in parallel.
const WORKERS: usize = 4;
/// Blocks after a faulting one that are fetched ahead.
const READ_AHEAD: u64 = 2;
/// Most recently loaded blocks never evicted (enough for every worker and read-ahead).
const KEEP_NEWEST: usize = 2 * WORKERS + READ_AHEAD as usize;

static SERVER: OnceLock<std::result::Result<&'static FaultServer, String>> = OnceLock::new();
/// Set in a forked child: the server (its descriptor, threads and tables) belongs to the parent.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The fault server, started on first use; an error says why userfaultfd is unusable here.
///
/// In a forked child there is none: the inherited descriptor still acts on the *parent's*
/// address space, and the handler threads were not forked. Memory the child inherited is
/// served by the parent (see [`FaultServer::handle_faults`]); new arrays fetch at once.
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
            // SAFETY: registers a handler that only stores an atomic and writes(2) a static
            // message, both async-signal-safe, as a handler run in a forked child must be.
            unsafe { libc::pthread_atfork(None, None, Some(in_forked_child)) };
            Ok(server)
        })
        .clone()
}

/// Runs in a forked child: stops it from using the parent's fault server. Without fork events
/// the child has no fetched memory (it is not inherited), so say why touching it segfaults.
extern "C" fn in_forked_child() {
    FORKED.store(true, Ordering::Relaxed);
    let Some(Ok(server)) = SERVER.get() else {
        return;
    };
    let has_regions = server
        .regions
        .try_read()
        .map(|r| !r.is_empty())
        .unwrap_or(true);
    if !server.serves_forks && has_regions {
        const WHY: &[u8] = b"outcore: warning: this forked child cannot read fetched (compressed \
or PostgreSQL) arrays of its parent, touching them is a segfault: serving a child's faults \
needs userfaultfd fork events (CAP_SYS_PTRACE); use the 'spawn' or 'forkserver' start method\n";
        // SAFETY: writes a static buffer to stderr; write(2) is async-signal-safe.
        unsafe { libc::write(2, WHY.as_ptr().cast(), WHY.len()) };
    }
}

/// Sets the RAM budget for loaded clean blocks of the whole process.
pub(crate) fn set_budget(bytes: u64) {
    if let Ok(s) = server() {
        s.budget.store(bytes, Ordering::Relaxed);
    }
}

fn ioctl<T>(fd: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is the repr(C) struct the request expects, alive for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A new userfaultfd and whether it serves kernel-mode faults, trying the privilege ladder:
/// `/dev/userfaultfd`, then the syscall, then the syscall in user-mode-only mode.
fn open_uffd() -> std::result::Result<(OwnedFd, bool), String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if let Ok(dev) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
    {
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument and returns a new fd.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor owned by nobody else.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, true));
        }
    }
    for (extra, full) in [(0, true), (UFFD_USER_MODE_ONLY, false)] {
        // SAFETY: the userfaultfd syscall takes flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | extra) } as i32;
        if fd >= 0 {
            // SAFETY: a fresh descriptor owned by nobody else.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, full));
        }
    }
    Err(format!(
        "userfaultfd is not available ({}); give this user access to /dev/userfaultfd \
         (e.g. a group with mode 0660) or set vm.unprivileged_userfaultfd=1",
        std::io::Error::last_os_error()
    ))
}

impl FaultServer {
    fn start() -> std::result::Result<Self, String> {
        // Ask one descriptor what the kernel offers, then configure a second one.
        let (probe, _) = open_uffd()?;
        let mut api = UffdioApi {
            api: UFFD_API,
            ..UffdioApi::default()
        };
        ioctl(&probe, UFFDIO_API, &mut api).map_err(|e| format!("UFFDIO_API: {e}"))?;
        drop(probe);
        let poison = api.features & FEATURE_POISON != 0;
        let move_available =
            api.features & FEATURE_MOVE != 0 && std::env::var_os("OUTCORE_NO_UFFD_MOVE").is_none();
        let base =
            if poison { FEATURE_POISON } else { 0 } | if move_available { FEATURE_MOVE } else { 0 };
        // Fork events need CAP_SYS_PTRACE: without it the kernel refuses them (EPERM), and a
        // descriptor that failed its handshake is replaced by a fresh one.
        let fork = api.features & FEATURE_EVENT_FORK != 0
            && std::env::var_os("OUTCORE_NO_UFFD_FORK").is_none();
        let mut configured = None;
        for features in [base | FEATURE_EVENT_FORK, base] {
            if features & FEATURE_EVENT_FORK != 0 && !fork {
                continue;
            }
            let (uffd, full_mode) = open_uffd()?;
            let mut api = UffdioApi {
                api: UFFD_API,
                features,
                ..UffdioApi::default()
            };
            match ioctl(&uffd, UFFDIO_API, &mut api) {
                Ok(()) => {
                    configured = Some((uffd, full_mode, features & FEATURE_EVENT_FORK != 0));
                    break;
                }
                Err(e) if features & FEATURE_EVENT_FORK == 0 => {
                    return Err(format!("UFFDIO_API: {e}"))
                }
                Err(_) => {}
            }
        }
        let (uffd, full_mode, serves_forks) = configured.ok_or("UFFDIO_API failed")?;
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
            moves_used: std::sync::atomic::AtomicBool::new(false),
            frames: FramePool::default(),
            stats: Counters::default(),
        };
        PENDING_RX
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(rx);
        Ok(server)
    }

    /// Starts the handler thread and workers (called once, with the 'static server).
    fn spawn_threads(&'static self) {
        let rx = PENDING_RX
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("jobs receiver");
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("outcore-fetch-{i}"))
                .spawn(move || self.worker(&rx))
                .expect("spawn a fetch worker");
        }
        let mut ends = [-1; 2];
        // SAFETY: creates a pipe into the two descriptors of `ends`.
        let rc = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "a pipe for fault messages");
        // SAFETY: fresh descriptors owned by nobody else.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        // SAFETY: fcntl on our own pipe: non-blocking reads, and room for many messages.
        unsafe {
            libc::fcntl(rd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
            libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        }
        std::thread::Builder::new()
            .name("outcore-faults".into())
            .spawn(move || self.handle_faults(rd))
            .expect("spawn the fault handler");
        std::thread::Builder::new()
            .name("outcore-uffd-read".into())
            .spawn(move || self.read_messages(wr))
            .expect("spawn the fault reader");
    }

    /// Registers `region` (its whole reservation) so faults in it are served.
    pub fn add_region(&'static self, region: &Arc<RemoteRegion>) {
        THREADS.get_or_init(|| self.spawn_threads());
        self.regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region.base, Arc::downgrade(region));
    }

    /// Forgets `region` (its reservation is going away): waits for copies into it to
    /// finish, refuses later ones, and stops counting its blocks against the budget.
    pub fn remove_region(&self, region: &RemoteRegion) {
        self.regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&region.base);
        let mut state = region.lock();
        while state.blocks.values().any(|b| b.busy) {
            state = region.idle.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.closed = true;
        let mut clean = Vec::new();
        for (&i, b) in state.blocks.iter_mut().filter(|(_, b)| b.loaded) {
            b.loaded = false;
            self.loaded_bytes
                .fetch_sub(region.blksize as u64, Ordering::Relaxed);
            if !b.dirty {
                clean.push(i);
            }
        }
        drop(state);
        // Closed: nothing copies into the region any more. Its clean pages become spare
        // frames (within the budget) before the reservation is unmapped.
        if region.moves {
            for block in clean {
                if !self.move_to_spare(region, block) {
                    break;
                }
            }
        }
    }

    /// Makes `block` of `region` fetch-on-touch. Its memory is private anonymous memory: a
    /// fresh mapping, or the block's registered mapping after [`FaultServer::retire`].
    pub fn register(&self, region: &RemoteRegion, block: u64, fetch: Arc<dyn Fetch>) -> Result<()> {
        let range = region.block_range(block);
        let mut reg = UffdioRegister {
            range,
            mode: REGISTER_MISSING | REGISTER_WP,
            ..UffdioRegister::default()
        };
        ioctl(&self.uffd, UFFDIO_REGISTER, &mut reg)
            .map_err(|e| Error::io(format!("registering block {block} for fetch-on-touch"), e))?;
        // Drop whatever is there (the old version, or zeros faulted in before the registration
        // took effect): from here on every touch faults, and waits until the block is known.
        // SAFETY: private anonymous memory of our reservation; only its pages are dropped.
        let rc = unsafe {
            libc::madvise(
                range.start as *mut libc::c_void,
                range.len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                format!("dropping the old pages of block {block}"),
                std::io::Error::last_os_error(),
            ));
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = region.lock_idle(block);
        let old = state.blocks.insert(
            block,
            RemoteBlock {
                fetch,
                loaded: false,
                dirty: false,
                busy: false,
                generation,
            },
        );
        drop(state);
        if old.is_some_and(|o| o.loaded) {
            self.loaded_bytes
                .fetch_sub(region.blksize as u64, Ordering::Relaxed);
        }
        self.wake(region.block_range(block));
        Ok(())
    }

    /// `block` stops fetching on touch; called *before* its memory is mapped anew, so that
    /// no copy of the old registration can land in the new mapping.
    pub fn retire(&self, region: &RemoteRegion, block: u64) {
        let mut state = region.lock_idle(block);
        let old = state.blocks.remove(&block);
        drop(state);
        if old.is_some_and(|o| o.loaded) {
            self.loaded_bytes
                .fetch_sub(region.blksize as u64, Ordering::Relaxed);
        }
        self.wake(region.block_range(block));
    }

    /// Drops the memory of `block` with `drop_pages` (abort): the next touch fetches the
    /// block again.
    pub fn drop_block(
        &self,
        region: &RemoteRegion,
        block: u64,
        drop_pages: impl FnOnce() -> Result<()>,
    ) -> Result<()> {
        let mut state = region.lock_idle(block);
        if let Some(b) = state.blocks.get_mut(&block) {
            b.busy = true;
            b.dirty = false;
            if std::mem::take(&mut b.loaded) {
                self.loaded_bytes
                    .fetch_sub(region.blksize as u64, Ordering::Relaxed);
            }
        }
        drop(state);
        let dropped = drop_pages();
        region.end_busy(block, |_| {});
        dropped
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

    /// Registers a new frame as a move destination (write-protect mode only: decoding into
    /// it must not raise missing-page faults).
    fn register_frame(&self, frame: Frame, size: usize) -> bool {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: frame.0 as u64,
                len: size as u64,
            },
            mode: REGISTER_WP,
            ..UffdioRegister::default()
        };
        ioctl(&self.uffd, UFFDIO_REGISTER, &mut reg).is_ok()
    }

    /// Moves `len` bytes of pages from `src` to `dst` without waking anyone; true if all moved.
    fn move_pages(&self, dst: usize, src: usize, len: usize) -> bool {
        let mut mv = UffdioMove {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: MOVE_MODE_DONTWAKE,
            ..UffdioMove::default()
        };
        ioctl(&self.uffd, UFFDIO_MOVE, &mut mv).is_ok()
    }

    fn wake(&self, mut range: UffdioRange) {
        // Waking a range nobody waits on is harmless.
        let _ = ioctl(&self.uffd, UFFDIO_WAKE, &mut range);
    }

    /// The reader: moves every message of this process's descriptor and of the children's
    /// into `pipe`, each tagged with the descriptor it came from.
    ///
    /// A fork waits in the kernel until its fork event is read, and glibc holds every
    /// malloc arena lock across the fork: so this thread never allocates (nor takes a lock)
    /// after it starts; everything else happens in [`FaultServer::handle_faults`].
    fn read_messages(&'static self, pipe: OwnedFd) {
        let mut msgs = [EMPTY_MSG; 64];
        loop {
            let mut pfds = [libc::pollfd {
                fd: -1,
                events: libc::POLLIN,
                revents: 0,
            }; 1 + CHILD_SLOTS];
            pfds[0].fd = self.uffd.as_raw_fd();
            for (slot, pfd) in CHILDREN.iter().zip(&mut pfds[1..]) {
                let fd = slot.load(Ordering::Acquire);
                if fd < -1 {
                    // The handler is done with this child: close its descriptor here, where
                    // it is polled, so the number is never polled after its reuse.
                    // SAFETY: the descriptor was received by this thread and is closed once.
                    unsafe { libc::close(-fd - 2) };
                    slot.store(-1, Ordering::Release);
                } else {
                    pfd.fd = fd; // -1: ignored by poll
                }
            }
            // SAFETY: valid pollfds for the duration of the call.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
            for pfd in pfds.iter().filter(|p| p.fd >= 0 && p.revents != 0) {
                loop {
                    // SAFETY: reading fault messages into a buffer of that many messages.
                    let n = unsafe {
                        libc::read(
                            pfd.fd,
                            msgs.as_mut_ptr().cast(),
                            std::mem::size_of_val(&msgs),
                        )
                    };
                    if n <= 0 {
                        break; // EAGAIN: no more messages for now
                    }
                    for msg in &msgs[..n as usize / std::mem::size_of::<UffdMsg>()] {
                        if msg.event == EVENT_FORK {
                            // Poll the child from now on (its faults may come before the
                            // handler sees this message).
                            let fd = msg.flags as u32 as i32;
                            let free = CHILDREN.iter().find(|s| {
                                s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                                    .is_ok()
                            });
                            if free.is_none() {
                                const FULL: &[u8] = b"outcore: too many forked children to \
serve; the newest cannot read fetched memory\n";
                                // SAFETY: writes a static buffer to stderr.
                                unsafe { libc::write(2, FULL.as_ptr().cast(), FULL.len()) };
                            }
                        }
                        let rec = Tagged {
                            from: pfd.fd,
                            msg: *msg,
                        };
                        // Atomic (smaller than PIPE_BUF); the pipe holds thousands of them,
                        // and each faulting thread has one message outstanding at most.
                        // SAFETY: writes one plain struct to our pipe.
                        unsafe {
                            libc::write(
                                pipe.as_raw_fd(),
                                (&rec as *const Tagged).cast(),
                                std::mem::size_of::<Tagged>(),
                            )
                        };
                    }
                }
            }
        }
    }

    /// The handler: turns fault messages (from [`FaultServer::read_messages`]) into fetch
    /// jobs, for this process and for the forked children it serves.
    fn handle_faults(&'static self, pipe: OwnedFd) {
        let own = self.uffd.as_raw_fd();
        let mut children: HashMap<i32, Arc<Child>> = HashMap::new();
        let mut last_probe = std::time::Instant::now();
        let mut rec = Tagged {
            from: -1,
            msg: EMPTY_MSG,
        };
        loop {
            let mut pfd = libc::pollfd {
                fd: pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            loop {
                // SAFETY: reads one plain struct from our pipe (non-blocking).
                let n = unsafe {
                    libc::read(
                        pipe.as_raw_fd(),
                        (&mut rec as *mut Tagged).cast(),
                        std::mem::size_of::<Tagged>(),
                    )
                };
                if n != std::mem::size_of::<Tagged>() as isize {
                    break;
                }
                let msg = rec.msg;
                let addr = msg.address as usize;
                let wp = msg.flags & PAGEFAULT_FLAG_WP != 0;
                if rec.from == own {
                    match msg.event {
                        EVENT_PAGEFAULT if wp => self.write_fault(addr),
                        EVENT_PAGEFAULT => self.fault(addr),
                        EVENT_FORK => {
                            let snapshot = Arc::new(self.snapshot());
                            if let Some(c) = Child::new(&msg, snapshot) {
                                children.insert(msg.flags as u32 as i32, c);
                            }
                        }
                        _ => {}
                    }
                } else if let Some(child) = children.get(&rec.from).cloned() {
                    match msg.event {
                        EVENT_PAGEFAULT if wp => child.write_fault(addr),
                        EVENT_PAGEFAULT => self.child_fault(&child, addr),
                        // A grandchild sees what its parent saw.
                        EVENT_FORK => {
                            if let Some(c) = Child::new(&msg, child.snapshot.clone()) {
                                children.insert(msg.flags as u32 as i32, c);
                            }
                        }
                        _ => {}
                    }
                }
            }
            // An exited child sends nothing: ask the kernel now and then; the reader closes
            // the descriptor of a dead one.
            if last_probe.elapsed() >= Duration::from_secs(1) {
                children.retain(|&fd, c| {
                    let alive = c.alive();
                    if !alive {
                        if let Some(slot) =
                            CHILDREN.iter().find(|s| s.load(Ordering::Acquire) == fd)
                        {
                            slot.store(-fd - 2, Ordering::Release);
                        }
                    }
                    alive
                });
                last_probe = std::time::Instant::now();
            }
        }
    }

    /// What every region's registered blocks hold now: what a child forked now sees.
    fn snapshot(&self) -> Snapshot {
        let regions = self.regions.read().unwrap_or_else(|p| p.into_inner());
        regions
            .values()
            .filter_map(Weak::upgrade)
            .map(|region| {
                let state = region.lock();
                let blocks = state
                    .blocks
                    .iter()
                    .map(|(&b, rb)| (b, rb.fetch.clone()))
                    .collect();
                let snap = SnapshotRegion {
                    len: region.len,
                    blksize: region.blksize,
                    what: region.what.clone(),
                    blocks,
                };
                (region.base, snap)
            })
            .collect()
    }

    /// A missing page in a child: queue its block (as of the fork) for the workers.
    fn child_fault(&self, child: &Arc<Child>, addr: usize) {
        match snapshot_block(&child.snapshot, addr) {
            Some(SnapshotBlock {
                range,
                fetch: Some(_),
                ..
            }) => {
                let start = range.start as usize;
                if child
                    .queued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(start)
                {
                    let _ = self
                        .jobs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .send(Job::Child(child.clone(), start));
                }
            }
            // Registered after the fork's snapshot was taken: its contents at the fork are
            // unknown, and zeros would be wrong.
            _ => self.fail_child(
                child,
                page_range(addr),
                &format!("address {addr:#x}, not fetched memory when the child was forked"),
            ),
        }
    }

    /// Makes the child's access of `range` fail (SIGBUS), after saying why.
    fn fail_child(&self, child: &Child, range: UffdioRange, what: &str) {
        let msg = format!("outcore: cannot serve a forked child's access to {what}");
        tracing::error!("{msg}");
        eprintln!("{msg}");
        if self.poison {
            let mut p = UffdioPoison {
                range,
                ..UffdioPoison::default()
            };
            if ioctl(&child.uffd, UFFDIO_POISON, &mut p).is_ok() {
                return;
            }
        }
        // Nothing else stops the child from waiting forever.
        std::process::abort();
    }

    /// Fetches a block as it was when `child` was forked, with this process's storage, and
    /// copies the pages the child lacks into its address space (writable: its writes are
    /// its own).
    fn load_for_child(&self, child: &Child, start: usize, scratch: &mut Vec<u8>) {
        let Some(SnapshotBlock {
            range,
            what,
            fetch: Some(fetch),
        }) = snapshot_block(&child.snapshot, start)
        else {
            return;
        };
        scratch.resize(range.len as usize, 0);
        let mut fetched = Err(Error::NotFound(String::new()));
        for delay in [0, 100, 500, 2000] {
            std::thread::sleep(Duration::from_millis(delay));
            fetched = fetch_caught(&*fetch, scratch);
            if fetched.is_ok() {
                break;
            }
        }
        // A fault from now on queues the block again (the copy below skips present pages).
        child
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&start);
        match fetched {
            Ok(len) => {
                scratch[len..].fill(0);
                let mut copy = UffdioCopy {
                    dst: range.start,
                    src: scratch.as_ptr() as u64,
                    len: range.len,
                    ..UffdioCopy::default()
                };
                // Pages the child already has (copied on write from this process, or by an
                // earlier job) stay: copy the rest page by page.
                if ioctl(&child.uffd, UFFDIO_COPY, &mut copy).is_ok()
                    || copy_missing_pages(&child.uffd, range, scratch, 0)
                {
                    self.stats.child_copies.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => self.fail_child(
                child,
                range,
                &format!("{} of {what} after retries: {e}", fetch.describe()),
            ),
        }
    }

    /// The region holding `addr` and the block index there, if any.
    fn locate(&self, addr: usize) -> Option<(Arc<RemoteRegion>, u64)> {
        let region = {
            let regions = self.regions.read().unwrap_or_else(|p| p.into_inner());
            regions
                .range(..=addr)
                .next_back()
                .and_then(|(_, w)| w.upgrade())
        }?;
        if addr >= region.base + region.len {
            return None;
        }
        let block = ((addr - region.base) / region.blksize) as u64;
        Some((region, block))
    }

    /// Wakes the threads waiting on the page of `addr`: they retry their access.
    fn wake_page(&self, addr: usize) {
        self.wake(page_range(addr));
    }

    /// A missing page: queue its block (and read-ahead) for the workers.
    fn fault(&'static self, addr: usize) {
        let Some((region, block)) = self.locate(addr) else {
            // Not ours (any more): let the thread retry against whatever is mapped now.
            self.wake_page(addr);
            return;
        };
        // A sequential pass faults every READ_AHEAD + 1 blocks (the others were read ahead).
        let last = region.last_fault.swap(block, Ordering::Relaxed);
        let sequential = last == u64::MAX || (block > last && block - last <= READ_AHEAD + 1);
        let ahead = if sequential { READ_AHEAD } else { 0 };
        for b in block..block + 1 + ahead {
            let wanted = {
                let state = region.lock();
                !state.closed && state.blocks.get(&b).is_some_and(|rb| !rb.loaded)
            };
            if !wanted {
                if b == block {
                    self.wake(region.block_range(b));
                }
                continue;
            }
            if self
                .queued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((region.id, b))
            {
                let _ = self
                    .jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(Job::Own(Arc::downgrade(&region), region.id, b));
            }
        }
    }

    /// The first write to a loaded (write-protected) block: mark it dirty and lift the
    /// protection of the whole block. Waits while the block is being evicted or copied, so a
    /// write never slips past an eviction.
    fn write_fault(&self, addr: usize) {
        let Some((region, block)) = self.locate(addr) else {
            self.wake_page(addr);
            return;
        };
        let mut state = region.lock_idle(block);
        match state.blocks.get_mut(&block) {
            Some(b) if b.loaded => {
                b.dirty = true;
                let mut unprotect = UffdioWriteprotect {
                    range: region.block_range(block),
                    mode: 0, // lift the protection and wake the writer
                };
                if ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut unprotect).is_err() {
                    self.wake(region.block_range(block));
                }
            }
            // Dropped meanwhile (or never ours): the retried write faults the block in anew.
            _ => {
                drop(state);
                self.wake(region.block_range(block));
            }
        }
    }

    fn worker(&'static self, rx: &Mutex<Receiver<Job>>) {
        // The fetch buffer of the copy path, reused from block to block.
        let mut scratch = Vec::new();
        loop {
            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let (region, id, block) = match job {
                Ok(Job::Own(region, id, block)) => (region, id, block),
                Ok(Job::Child(child, start)) => {
                    self.load_for_child(&child, start, &mut scratch);
                    continue;
                }
                Err(_) => return,
            };
            match region.upgrade() {
                Some(region) => {
                    self.load(&region, block, &mut scratch);
                    self.evict_over_budget();
                    self.refill_spares();
                }
                None => {
                    self.queued
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&(id, block));
                }
            }
        }
    }

    /// Fetches and installs one block (step 4 of the module docs).
    fn load(&self, region: &RemoteRegion, block: u64, scratch: &mut Vec<u8>) {
        let delays = [0, 100, 500, 2000];
        if let Err((e, what)) = self.fetch_and_install(region, block, &delays, scratch) {
            // Nobody can receive this error: the faulting instruction waits. Say what broke,
            // then make the access fail (SIGBUS) rather than show wrong data.
            let msg = format!(
                "outcore: cannot load {what} of {} after retries: {e}",
                region.what
            );
            tracing::error!("{msg}");
            eprintln!("{msg}");
            if self.poison {
                let mut p = UffdioPoison {
                    range: region.block_range(block),
                    ..UffdioPoison::default()
                };
                let _ = ioctl(&self.uffd, UFFDIO_POISON, &mut p);
                return;
            }
            std::process::abort();
        }
    }

    /// Queues the registered, unloaded `blocks` of `region` for the workers without waiting
    /// (a later touch finds them loaded), as many as the budget leaves room for: prefetching
    /// more would evict the first prefetched blocks again.
    pub fn prefetch(&self, region: &RemoteRegion, blocks: impl IntoIterator<Item = u64>) {
        let weak = self.region_weak(region);
        let budget = self.budget.load(Ordering::Relaxed);
        let mut room = budget.saturating_sub(self.loaded_bytes.load(Ordering::Relaxed));
        for b in blocks {
            if room < region.blksize as u64 {
                return;
            }
            let wanted = {
                let state = region.lock();
                !state.closed && state.blocks.get(&b).is_some_and(|rb| !rb.loaded)
            };
            if wanted
                && self
                    .queued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((region.id, b))
            {
                room -= region.blksize as u64;
                let _ = self
                    .jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .send(Job::Own(weak.clone(), region.id, b));
            }
        }
    }

    /// Fetches `block` now in the calling thread (if it is registered and not loaded), so
    /// that errors reach the caller instead of the fault path.
    pub fn load_now(&self, region: &RemoteRegion, block: u64) -> Result<()> {
        self.fetch_and_install(region, block, &[0], &mut Vec::new())
            .map_err(|(e, _)| e)
    }

    /// Fetches `block` (retrying after each delay) into a frame (moving regions) or
    /// `scratch`, and installs it; on failure, the error and what was being fetched.
    fn fetch_and_install(
        &self,
        region: &RemoteRegion,
        block: u64,
        delays_ms: &[u64],
        scratch: &mut Vec<u8>,
    ) -> std::result::Result<(), (Error, String)> {
        let range = region.block_range(block);
        let wanted = {
            let state = region.lock_idle(block);
            state
                .blocks
                .get(&block)
                .filter(|b| !b.loaded && !state.closed)
                .map(|b| (b.fetch.clone(), b.generation))
        };
        let Some((fetch, generation)) = wanted else {
            self.queued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(region.id, block));
            self.wake(range);
            return Ok(());
        };
        let size = region.blksize;
        let frame = region
            .moves
            .then(|| self.frames.take(size, |f| self.register_frame(f, size)))
            .flatten();
        let buf: &mut [u8] = match frame {
            // SAFETY: we own the frame until it goes back to the pool below.
            Some(f) => unsafe { frames::bytes_mut(f, size) },
            None => {
                scratch.resize(size, 0);
                &mut scratch[..]
            }
        };
        let mut fetched = Err(Error::NotFound(String::new()));
        for &delay in delays_ms {
            std::thread::sleep(Duration::from_millis(delay));
            fetched = fetch_caught(&*fetch, buf);
            if fetched.is_ok() {
                break;
            }
        }
        // From here on a new fault on this block queues it again: a thread that faults after
        // the copy below (say, the block was dropped meanwhile) is never left waiting on a job
        // that already finished.
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(region.id, block));
        let give_back = |moved: bool| match frame {
            Some(f) if moved => self.frames.put_empty(size, f),
            Some(f) => self.frames.put_full(size, f, self.spare_limit()),
            None => {}
        };
        let len = match fetched {
            Ok(len) => len,
            Err(e) => {
                give_back(false);
                return Err((e, fetch.describe()));
            }
        };
        // The rest of the block reads as zeros (a reused frame or buffer holds old bytes).
        buf[len..].fill(0);
        {
            let mut state = region.lock_idle(block);
            let closed = state.closed;
            match state.blocks.get_mut(&block) {
                Some(b) if !closed && b.generation == generation && !b.loaded => b.busy = true,
                _ => {
                    // Re-registered, dropped or loaded meanwhile: this copy is not wanted.
                    drop(state);
                    give_back(false);
                    self.wake(range);
                    return Ok(());
                }
            }
        }
        // Busy: nobody re-maps, drops or copies into this block until `end_busy`, so the copy
        // runs without the lock, in parallel with other workers.
        let moved = frame.is_some_and(|f| self.move_pages(range.start as usize, f.0, size));
        if moved {
            self.moves_used.store(true, Ordering::Relaxed);
        }
        let installed = moved || {
            let mut copy = UffdioCopy {
                dst: range.start,
                src: buf.as_ptr() as u64,
                len: range.len,
                mode: COPY_MODE_WP,
                ..UffdioCopy::default()
            };
            ioctl(&self.uffd, UFFDIO_COPY, &mut copy).is_ok()
                || copy_missing_pages(&self.uffd, range, buf, COPY_MODE_WP)
        };
        if moved {
            self.wake(range);
        }
        give_back(moved);
        region.end_busy(block, |b| b.loaded = installed);
        let counter = if moved {
            &self.stats.moved_in
        } else {
            &self.stats.copied_in
        };
        if installed {
            counter.fetch_add(1, Ordering::Relaxed);
            self.loaded_bytes
                .fetch_add(region.blksize as u64, Ordering::Relaxed);
            self.lru
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((self.region_weak(region), block, generation));
        } else {
            // The mapping changed under us (ENOENT): the waiting threads retry their
            // access against whatever is mapped now.
            self.wake(range);
        }
        Ok(())
    }

    fn region_weak(&self, region: &RemoteRegion) -> Weak<RemoteRegion> {
        self.regions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&region.base)
            .cloned()
            .unwrap_or_default()
    }

    /// With nothing queued, prepares one spare frame (up to the minimum), so that isolated
    /// faults of read-only memory find their frame's pages ready.
    fn refill_spares(&self) {
        if !self.moves_used.load(Ordering::Relaxed)
            || !self
                .queued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            return;
        }
        let size = frames::HUGE;
        self.frames.refill(size, |f| self.register_frame(f, size));
    }

    /// Bytes of spare frames allowed now: what loaded blocks leave of the budget.
    fn spare_limit(&self) -> usize {
        let budget = self.budget.load(Ordering::Relaxed);
        budget.saturating_sub(self.loaded_bytes.load(Ordering::Relaxed)) as usize
    }

    /// Moves the pages of a clean block nobody else changes now (busy, or its region closed)
    /// into a spare frame, if one may be kept: the next load reuses them instead of
    /// allocating and zeroing new memory. True if moved.
    fn move_to_spare(&self, region: &RemoteRegion, block: u64) -> bool {
        let range = region.block_range(block);
        let size = region.blksize;
        let spare = self
            .frames
            .take_for_eviction(size, self.spare_limit(), |f| self.register_frame(f, size));
        let Some(frame) = spare else {
            return false;
        };
        let moved = self.move_pages(frame.0, range.start as usize, size);
        self.frames.put_full(size, frame, self.spare_limit());
        if moved {
            self.stats.moved_out.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }

    /// Drops the pages of a busy, clean block: moved into a spare frame where the region
    /// moves, otherwise freed.
    fn drop_pages(&self, region: &RemoteRegion, block: u64) {
        let range = region.block_range(block);
        if region.moves && self.move_to_spare(region, block) {
            return;
        }
        // SAFETY: drops the pages of a clean block of our reservation (busy: nothing else
        // changes them now); the next touch faults and fetches it again.
        unsafe {
            libc::madvise(
                range.start as *mut libc::c_void,
                range.len as usize,
                libc::MADV_DONTNEED,
            )
        };
        self.stats.freed.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops the oldest clean loaded blocks while over the budget (step 6).
    fn evict_over_budget(&self) {
        let budget = self.budget.load(Ordering::Relaxed);
        // Spares give way to loaded blocks (a lowered budget, or loads after an idle time).
        self.frames.trim(self.spare_limit());
        let mut kept_dirty = 0;
        loop {
            let next = {
                let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
                // The newest blocks stay: the threads that faulted them in may not have read
                // them yet.
                let over = self.loaded_bytes.load(Ordering::Relaxed) > budget;
                if !over || kept_dirty >= lru.len() || lru.len() <= KEEP_NEWEST {
                    return;
                }
                lru.pop_front()
            };
            let Some((weak, block, generation)) = next else {
                return;
            };
            let Some(region) = weak.upgrade() else {
                continue;
            };
            let mut state = region.lock_idle(block);
            let closed = state.closed;
            let Some(b) = state.blocks.get_mut(&block) else {
                continue;
            };
            if closed || b.generation != generation || !b.loaded {
                continue;
            }
            if b.dirty {
                // Dirty blocks stay until commit or abort.
                kept_dirty += 1;
                drop(state);
                self.lru
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((weak, block, generation));
                continue;
            }
            // Clean, so write-protected: a write from now on traps and waits for `end_busy`.
            b.busy = true;
            b.loaded = false;
            drop(state);
            self.loaded_bytes
                .fetch_sub(region.blksize as u64, Ordering::Relaxed);
            self.drop_pages(&region, block);
            region.end_busy(block, |_| {});
        }
    }
}

/// Copies `data` into `range` through `uffd` page by page (with copy `mode`), skipping pages
/// that are already there (a block left partly populated by an interrupted copy, or a child's
/// pages copied on write). True if every page is in place.
fn copy_missing_pages(uffd: &OwnedFd, range: UffdioRange, data: &[u8], mode: u64) -> bool {
    const PAGE: u64 = 4096;
    let mut ok = true;
    'pages: for offset in (0..range.len).step_by(PAGE as usize) {
        for _attempt in 0..3 {
            let mut copy = UffdioCopy {
                dst: range.start + offset,
                src: data[offset as usize..].as_ptr() as u64,
                len: PAGE,
                mode,
                ..UffdioCopy::default()
            };
            match ioctl(uffd, UFFDIO_COPY, &mut copy) {
                Ok(()) => break,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => break,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                // The address space is gone (an exited child): nothing left to fill.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return false,
                Err(_) => {
                    ok = false;
                    continue 'pages;
                }
            }
        }
    }
    let mut wake = range;
    // Waking a range nobody waits on is harmless.
    let _ = ioctl(uffd, UFFDIO_WAKE, &mut wake);
    ok
}

/// The page holding `addr`.
fn page_range(addr: usize) -> UffdioRange {
    UffdioRange {
        start: (addr & !4095) as u64,
        len: 4096,
    }
}

impl Child {
    /// The child announced by fork event `msg`, seeing `snapshot`.
    fn new(msg: &UffdMsg, snapshot: Arc<Snapshot>) -> Option<Arc<Child>> {
        let fd = msg.flags as u32 as i32;
        if fd < 0 {
            return None;
        }
        // The reader owns (and closes) the received descriptor: keep a duplicate for ioctls.
        // SAFETY: dup of a descriptor open until the reader closes it, after this.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let uffd = unsafe { OwnedFd::from_raw_fd(dup) };
        Some(Arc::new(Child {
            uffd,
            snapshot,
            queued: Mutex::new(HashSet::new()),
        }))
    }

    /// A write to a page the child inherited write-protected: the child has no transaction
    /// and its writes are private to it, so just lift the protection (of the whole block).
    fn write_fault(&self, addr: usize) {
        let range = snapshot_block(&self.snapshot, addr).map_or(page_range(addr), |b| b.range);
        let mut unprotect = UffdioWriteprotect { range, mode: 0 };
        if ioctl(&self.uffd, UFFDIO_WRITEPROTECT, &mut unprotect).is_err() {
            let mut wake = range;
            let _ = ioctl(&self.uffd, UFFDIO_WAKE, &mut wake);
        }
    }

    /// False once the child's address space is gone (it exited or exec'd). Asked with a copy
    /// to a page no child has registered (a static of this library): that fails without
    /// changing anything, with ESRCH only when the address space is gone.
    fn alive(&self) -> bool {
        #[repr(align(4096))]
        struct Page([u8; 4096]);
        static PROBE: Page = Page([0; 4096]);
        let mut copy = UffdioCopy {
            dst: PROBE.0.as_ptr() as u64,
            src: PROBE.0.as_ptr() as u64,
            len: 4096,
            mode: 0,
            ..UffdioCopy::default()
        };
        !matches!(ioctl(&self.uffd, UFFDIO_COPY, &mut copy), Err(e) if e.raw_os_error() == Some(libc::ESRCH))
    }
}

/// `fetch.fetch_into(buf)`, with a panic (a bug in a store or decoder) turned into an error
/// naming the block: a worker that unwound would leave its block queued and the threads
/// faulting it suspended forever, and a caller of `load` would get a panic instead of an error.
fn fetch_caught(fetch: &dyn Fetch, buf: &mut [u8]) -> Result<usize> {
    // AssertUnwindSafe: after a panic `buf` holds arbitrary bytes, which is fine because a
    // failed fetch's buffer is never installed (the next attempt rewrites it, and the rest
    // beyond the fetched length is zeroed before any copy); `fetch` is only borrowed, and
    // whatever state it left behind is still valid memory, so retrying or dropping it is safe.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fetch.fetch_into(buf))).unwrap_or_else(
        |payload| {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(Error::io(
                format!("fetching {}", fetch.describe()),
                std::io::Error::other(format!("the fetch panicked: {why}")),
            ))
        },
    )
}

const EMPTY_MSG: UffdMsg = UffdMsg {
    event: 0,
    reserved: [0; 7],
    flags: 0,
    address: 0,
    ptid: 0,
};

/// A message and the descriptor it was read from, passed from reader to handler.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tagged {
    from: i32,
    msg: UffdMsg,
}

/// Most forked children served at once.
const CHILD_SLOTS: usize = 256;

/// The descriptors of the children's address spaces the reader polls: -1 free, `fd` in use,
/// `-fd - 2` to be closed by the reader.
static CHILDREN: [std::sync::atomic::AtomicI32; CHILD_SLOTS] =
    [const { std::sync::atomic::AtomicI32::new(-1) }; CHILD_SLOTS];

/// A block to fetch.
enum Job {
    /// For this process: its region, the region's id and the block index.
    Own(Weak<RemoteRegion>, u64, u64),
    /// For a forked child: the child and the block's start address there.
    Child(Arc<Child>, usize),
}

/// The address space of a forked child (or grandchild), whose faults this process serves.
struct Child {
    /// The child's userfaultfd, received with the fork event.
    uffd: OwnedFd,
    /// What the fetched blocks held when the child was forked.
    snapshot: Arc<Snapshot>,
    /// Start addresses of blocks with a fetch job pending.
    queued: Mutex<HashSet<usize>>,
}

/// The registered blocks of every region at one fork, by region base.
type Snapshot = BTreeMap<usize, SnapshotRegion>;

/// One region's registered blocks at a fork.
struct SnapshotRegion {
    len: usize,
    blksize: usize,
    what: String,
    blocks: HashMap<u64, Arc<dyn Fetch>>,
}

/// The block of a snapshot holding an address.
struct SnapshotBlock<'a> {
    range: UffdioRange,
    /// The region's description, for messages.
    what: &'a str,
    /// How to fetch the block (`None`: not registered at the fork).
    fetch: Option<Arc<dyn Fetch>>,
}

/// The block of `snapshot` holding `addr`, if any region of it does.
fn snapshot_block(snapshot: &Snapshot, addr: usize) -> Option<SnapshotBlock<'_>> {
    let (&base, region) = snapshot.range(..=addr).next_back()?;
    if addr >= base + region.len {
        return None;
    }
    let block = ((addr - base) / region.blksize) as u64;
    let range = UffdioRange {
        start: (base + block as usize * region.blksize) as u64,
        len: region.blksize as u64,
    };
    Some(SnapshotBlock {
        range,
        what: &region.what,
        fetch: region.blocks.get(&block).cloned(),
    })
}

static PENDING_RX: Mutex<Option<Receiver<Job>>> = Mutex::new(None);
static THREADS: OnceLock<()> = OnceLock::new();

/// The default budget: `OUTCORE_CACHE_BYTES`, else 1 GiB.
fn default_budget() -> u64 {
    std::env::var("OUTCORE_CACHE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

impl RemoteRegion {
    /// A region for the reservation `base..base + len` of blocks of `blksize` bytes.
    /// `moves`: load blocks by moving frames in ([`FaultServer::can_move`]).
    pub fn new(base: usize, len: usize, blksize: usize, what: String, moves: bool) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        RemoteRegion {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            base,
            len,
            blksize,
            what,
            moves,
            last_fault: AtomicU64::new(u64::MAX),
            state: Mutex::new(RegionState::default()),
            idle: Condvar::new(),
        }
    }
}
