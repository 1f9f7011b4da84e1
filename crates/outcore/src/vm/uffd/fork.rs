//! Serving the faults of forked children (and grandchildren): each sees the blocks registered
//! when it (or its forked ancestor) was forked ([`Snapshot`]), fetched by this process and
//! copied into its address space. How a child's userfaultfd gets here: `inherit.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::fault::{fetch_retrying, FAULT_RETRY_MS};
use super::sys::{page_range, Uffd, UffdioRange, PAGE};
use super::{lock, read, FaultServer, Fetch, Job};

/// Most forked children served at once.
pub(super) const CHILD_SLOTS: usize = 256;

/// The descriptors of the children's address spaces the fault thread polls: -1 free, `fd`
/// in use.
pub(super) static CHILDREN: [AtomicI32; CHILD_SLOTS] = [const { AtomicI32::new(-1) }; CHILD_SLOTS];

/// The address space of a forked child (or grandchild), whose faults this process serves.
pub(super) struct Child {
    /// The child's userfaultfd, received with the fork event.
    uffd: Uffd,
    /// What the fetched blocks held when the child was forked.
    pub snapshot: Arc<Snapshot>,
    /// Start addresses of blocks with a fetch job pending.
    queued: Mutex<HashSet<usize>>,
}

/// The registered blocks of every region at one fork, by region base.
pub(super) type Snapshot = BTreeMap<usize, SnapshotRegion>;

/// One region's registered blocks at a fork.
pub(super) struct SnapshotRegion {
    len: usize,
    blksize: usize,
    what: String,
    /// The registered blocks and how to fetch each.
    pub blocks: HashMap<u64, Arc<dyn Fetch>>,
}

impl SnapshotRegion {
    /// The addresses of `blocks` of this region, which starts at `base`.
    pub fn run_range(&self, base: usize, blocks: std::ops::Range<u64>) -> UffdioRange {
        UffdioRange {
            start: (base + blocks.start as usize * self.blksize) as u64,
            len: (blocks.end - blocks.start) * self.blksize as u64,
        }
    }
}

/// "block N of <array>" for the block of `snapshot` holding `addr`, if any.
pub(super) fn describe(snapshot: &Snapshot, addr: usize) -> Option<String> {
    let (&base, region) = snapshot.range(..=addr).next_back()?;
    (addr < base + region.len).then(|| {
        format!(
            "block {} of {}",
            (addr - base) / region.blksize,
            region.what
        )
    })
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

/// Frees the slot of the dead child `fd` and closes the descriptor (on the fault thread,
/// the only one polling it, so the number is never polled after its reuse).
pub(super) fn release_slot(fd: i32) {
    if let Some(slot) = CHILDREN.iter().find(|s| s.load(Ordering::Acquire) == fd) {
        // SAFETY: the descriptor was received by the fault thread and is closed once, here.
        unsafe { libc::close(fd) };
        slot.store(-1, Ordering::Release);
    }
}

impl Child {
    /// The child whose userfaultfd is `fd` (received by the fault thread, which owns and
    /// closes it), seeing `snapshot`.
    pub fn new(fd: i32, snapshot: Arc<Snapshot>) -> Option<Arc<Child>> {
        let uffd = Uffd::duplicate(fd)?;
        Some(Arc::new(Child {
            uffd,
            snapshot,
            queued: Mutex::new(HashSet::new()),
        }))
    }

    /// False once the child's address space is gone (it exited or exec'd). Asked with a copy
    /// to a page no child has registered (a static of this library): that fails without
    /// changing anything, with ESRCH only when the address space is gone.
    pub fn alive(&self) -> bool {
        #[repr(align(4096))]
        struct Page([u8; PAGE]);
        static PROBE: Page = Page([0; PAGE]);
        let probe = UffdioRange {
            start: PROBE.0.as_ptr() as u64,
            len: PAGE as u64,
        };
        !matches!(self.uffd.copy(probe, &PROBE.0, false), Err(e) if e.raw_os_error() == Some(libc::ESRCH))
    }
}

impl FaultServer {
    /// What every region's registered blocks hold now: what a child forked now sees.
    pub(super) fn snapshot(&self) -> Snapshot {
        let regions = read(&self.regions);
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
    pub(super) fn child_fault(&self, child: &Arc<Child>, addr: usize) {
        match snapshot_block(&child.snapshot, addr) {
            Some(SnapshotBlock {
                range,
                fetch: Some(_),
                ..
            }) => {
                let start = range.start as usize;
                if lock(&child.queued).insert(start) {
                    self.send(Job::Child {
                        child: child.clone(),
                        start,
                    });
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
        if self.poison && child.uffd.poison(range).is_ok() {
            return;
        }
        // Nothing else stops the child from waiting forever.
        std::process::abort();
    }

    /// Fetches a block as it was when `child` was forked, with this process's storage, and
    /// copies the pages the child lacks into its address space (writable: its writes are
    /// its own).
    pub(super) fn load_for_child(&self, child: &Child, start: usize, scratch: &mut Vec<u8>) {
        let Some(SnapshotBlock {
            range,
            what,
            fetch: Some(fetch),
        }) = snapshot_block(&child.snapshot, start)
        else {
            return;
        };
        scratch.resize(range.len as usize, 0);
        let fetched = fetch_retrying(&*fetch, scratch, &FAULT_RETRY_MS);
        // A fault from now on queues the block again (the copy below skips present pages).
        lock(&child.queued).remove(&start);
        match fetched {
            Ok(len) => {
                scratch[len..].fill(0);
                // Pages the child already has (copied on write from this process, or by an
                // earlier job) stay: copy the rest page by page.
                if child.uffd.copy(range, scratch, false).is_ok()
                    || child.uffd.copy_missing_pages(range, scratch, false)
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
}
