//! The fault path of this process, in the order a fault travels (the steps of the module
//! docs): [`FaultServer::fault`] (step 3) and [`FaultServer::write_fault`] (step 5) run on
//! the fault thread; [`FaultServer::worker`] and [`FaultServer::fetch_and_install`] (step 4)
//! on the workers, which also evict (step 6, in `budget.rs`), and on the fault thread for an
//! isolated fault on local data. Explicit loads and prefetches enter at step 4 and step 3.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::frames;
use super::pattern::AccessPattern;
use super::sys::page_range;
use super::{lock, BlockKey, FaultServer, Fetch, FetchedRegion, Job};
use crate::{Error, Result};

/// Retry delays of a fetch on the fault path (its error has nobody to go to).
pub(super) const FAULT_RETRY_MS: [u64; 4] = [0, 100, 500, 2000];

impl FaultServer {
    /// Step 3: a missing page, touched by a write if `write`. Queues its block (and
    /// read-ahead) for the workers, or fetches the block right here (`scratch` is this
    /// thread's fetch buffer).
    pub(super) fn fault(&'static self, addr: usize, write: bool, scratch: &mut Vec<u8>) {
        // 3a. Find the region and block.
        let Some((region, block)) = self.locate(addr) else {
            // Not ours (any more): let the thread retry against whatever is mapped now.
            self.uffd.wake(page_range(addr));
            return;
        };
        // 3b. Sequential, strided or random? (`pattern.rs`)
        let step = lock(&region.pattern).fault(block);
        let blocks = (region.len / region.blksize) as u64;
        // 3c. A writer of a writable region gets its granule unprotected with the install
        // (step 4g); read-only regions never see a write fault.
        let write_at =
            (write && !region.moves()).then(|| addr - region.block_range(block).start as usize);
        // 3d. With no other fetch in flight, a block whose fetch is local (a file, memory) is
        // fetched on this thread: two thread hand-offs fewer for an isolated fault. Remote
        // fetches can stall for as long as a server does, and would hold up every other
        // fault meanwhile.
        let here = match self.fetch_wanted(&region, block) {
            None => {
                // Loaded meanwhile, or gone: the thread retries its access.
                self.uffd.wake(region.block_range(block));
                false
            }
            Some(fetch) if fetch.is_local() && self.claim_if_idle(&region, block) => true,
            Some(_) => {
                self.queue(Arc::downgrade(&region), &region, block, write_at);
                false
            }
        };
        // 3e. Queue the read-ahead blocks that still want fetching, once.
        for b in AccessPattern::ahead(block, step, blocks) {
            if self.fetch_wanted(&region, b).is_some() {
                self.queue(Arc::downgrade(&region), &region, b, None);
            }
        }
        if here {
            self.fetch_here(&region, block, write_at, scratch);
        }
    }

    /// The fetch of `block` of `region` if it is registered, not loaded, and the region
    /// open. A busy block counts: it is being loaded or dropped, and a job queued now waits
    /// for that to end (in `fetch_and_install`), then loads it or finds it loaded.
    fn fetch_wanted(&self, region: &FetchedRegion, block: u64) -> Option<Arc<dyn Fetch>> {
        let state = region.lock();
        if state.closed {
            return None;
        }
        let b = state.blocks.get(&block).filter(|b| !b.is_loaded())?;
        Some(b.fetch.clone())
    }

    /// Marks `block` as having a fetch in flight if no fetch is (not even another block's):
    /// true if the caller may fetch it now.
    fn claim_if_idle(&self, region: &FetchedRegion, block: u64) -> bool {
        let mut queued = lock(&self.queued);
        queued.is_empty()
            && queued.insert(BlockKey {
                region: region.id,
                block,
            })
    }

    /// Step 4 on the fault thread, for a block [`FaultServer::claim_if_idle`] claimed: one
    /// attempt; if it fails, the workers take over (retrying, then poisoning). Eviction and
    /// spare frames are left to a worker too.
    fn fetch_here(
        &self,
        region: &Arc<FetchedRegion>,
        block: u64,
        write_at: Option<usize>,
        scratch: &mut Vec<u8>,
    ) {
        match self.fetch_and_install(region, block, &[0], write_at, scratch) {
            Ok(()) => self.send(Job::Tidy),
            Err(_) => {
                self.queue(Arc::downgrade(region), region, block, write_at);
            }
        }
    }

    /// Queues a job for `block` unless one is pending; true if queued.
    fn queue(
        &self,
        weak: Weak<FetchedRegion>,
        region: &FetchedRegion,
        block: u64,
        write_at: Option<usize>,
    ) -> bool {
        let key = BlockKey {
            region: region.id,
            block,
        };
        let fresh = lock(&self.queued).insert(key);
        if fresh {
            self.send(Job::Own {
                region: weak,
                key,
                write_at,
            });
        }
        fresh
    }

    /// Step 5: a write to a write-protected part of a loaded block. Records it (the
    /// granule written, or the whole block at the second granule, see `block.rs`) and
    /// lifts the protection there, in that order, so no write lands unrecorded. Waits while
    /// the block is being evicted or copied, so a write never slips past an eviction.
    pub(super) fn write_fault(&self, addr: usize) {
        let Some((region, block)) = self.locate(addr) else {
            self.uffd.wake(page_range(addr));
            return;
        };
        let offset = addr - region.block_range(block).start as usize;
        self.record_write(&region, block, offset);
    }

    /// Records a write at byte `offset` of `block` and lifts the protection there, in that
    /// order (step 5); if the block is not loaded any more, wakes the writer to fault it in
    /// anew.
    fn record_write(&self, region: &FetchedRegion, block: u64, offset: usize) {
        let block_range = region.block_range(block);
        let mut state = region.lock_idle(block);
        let unprotect = state
            .blocks
            .get_mut(&block)
            .and_then(|b| b.write_at(offset, region.blksize));
        match unprotect {
            Some(bytes) => {
                // Under the region's lock: nothing drops or re-protects the block meanwhile.
                let range = region.bytes_range(block, bytes);
                if self.uffd.unprotect(range).is_err() {
                    self.uffd.wake(range);
                }
            }
            None => {
                // Dropped meanwhile (or never ours): the retried write faults the block in
                // anew.
                drop(state);
                self.uffd.wake(block_range);
            }
        }
    }

    /// A worker thread: runs jobs (step 4), then evicts over the budget (step 6).
    pub(super) fn worker(&'static self, rx: &Mutex<Receiver<Job>>) {
        // The fetch buffer of the copy path, reused from block to block.
        let mut scratch = Vec::new();
        loop {
            let job = lock(rx).recv();
            let (weak, key, write_at) = match job {
                Ok(Job::Own {
                    region,
                    key,
                    write_at,
                }) => (region, key, write_at),
                Ok(Job::Child { child, start }) => {
                    self.load_for_child(&child, start, &mut scratch);
                    continue;
                }
                Ok(Job::Tidy) => {
                    self.evict_over_budget();
                    self.refill_spares();
                    continue;
                }
                Err(_) => return,
            };
            match weak.upgrade() {
                Some(region) => {
                    self.load(&region, key.block, write_at, &mut scratch);
                    self.evict_over_budget();
                    self.refill_spares();
                }
                None => {
                    lock(&self.queued).remove(&key);
                }
            }
        }
    }

    /// Step 4 for a fault: fetches and installs one block; if that keeps failing, poisons
    /// it.
    fn load(
        &self,
        region: &FetchedRegion,
        block: u64,
        write_at: Option<usize>,
        scratch: &mut Vec<u8>,
    ) {
        let fetched = self.fetch_and_install(region, block, &FAULT_RETRY_MS, write_at, scratch);
        if let Err((e, what)) = fetched {
            // Nobody can receive this error: the faulting instruction waits. Say what broke,
            // then make the access fail (SIGBUS) rather than show wrong data.
            let msg = format!(
                "outcore: cannot load {what} of {} after retries: {e}",
                region.what
            );
            tracing::error!("{msg}");
            eprintln!("{msg}");
            if self.poison {
                let _ = self.uffd.poison(region.block_range(block));
                return;
            }
            std::process::abort();
        }
    }

    /// Step 3 without a fault: queues the registered, unloaded `blocks` of `region` for the
    /// workers without waiting (a later touch finds them loaded), as many as the budget
    /// leaves room for: prefetching more would evict the first prefetched blocks again.
    pub fn prefetch(&self, region: &FetchedRegion, blocks: impl IntoIterator<Item = u64>) {
        let weak = self.region_weak(region);
        let mut room = self.spare_limit() as u64;
        for b in blocks {
            if room < region.blksize as u64 {
                return;
            }
            if self.fetch_wanted(region, b).is_some() && self.queue(weak.clone(), region, b, None) {
                room -= region.blksize as u64;
            }
        }
    }

    /// Step 4 without a fault: fetches `block` now in the calling thread (if it is
    /// registered and not loaded), so that errors reach the caller instead of the fault path.
    pub fn load_now(&self, region: &FetchedRegion, block: u64) -> Result<()> {
        self.fetch_and_install(region, block, &[0], None, &mut Vec::new())
            .map_err(|(e, _)| e)
    }

    /// Step 4: fetches `block` (retrying after each delay) into a frame (moving regions) or
    /// `scratch`, and installs it (with a write at byte `write_at` recorded, see
    /// [`Job::Own`]); on failure, the error and what was being fetched.
    fn fetch_and_install(
        &self,
        region: &FetchedRegion,
        block: u64,
        delays_ms: &[u64],
        write_at: Option<usize>,
        scratch: &mut Vec<u8>,
    ) -> std::result::Result<(), (Error, String)> {
        let range = region.block_range(block);
        let key = BlockKey {
            region: region.id,
            block,
        };
        // 4a. Which registration is wanted (none: loaded or gone meanwhile).
        let wanted = {
            let state = region.lock_idle(block);
            state
                .blocks
                .get(&block)
                .filter(|b| !b.is_loaded() && !state.closed)
                .map(|b| (b.fetch.clone(), b.generation))
        };
        let Some((fetch, generation)) = wanted else {
            lock(&self.queued).remove(&key);
            self.uffd.wake(range);
            return Ok(());
        };
        // 4b. Where to decode: a frame to move in, or the scratch buffer to copy from.
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
        // 4c. Fetch, with no lock held.
        let fetched = fetch_retrying(&*fetch, buf, delays_ms);
        // 4d. Unqueue: from here on a new fault on this block queues it again, so a thread
        // that faults after the copy below (say, the block was dropped meanwhile) is never
        // left waiting on a job that already finished.
        lock(&self.queued).remove(&key);
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
        // 4e. Busy, if the block still wants this registration.
        {
            let mut state = region.lock_idle(block);
            let closed = state.closed;
            let started = !closed
                && state
                    .blocks
                    .get_mut(&block)
                    .is_some_and(|b| b.start_install(generation));
            if !started {
                // Re-registered, dropped or loaded meanwhile: this copy is not wanted.
                drop(state);
                give_back(false);
                self.uffd.wake(range);
                return Ok(());
            }
        }
        // 4f. Install. Busy: nobody re-maps, drops or copies into this block until
        // `end_busy`, so the copy runs without the lock, in parallel with other workers.
        // SAFETY: the frame is ours and the block's range is busy (nobody else changes it);
        // its pages are missing, so nothing is lost.
        let moved =
            frame.is_some_and(|f| unsafe { self.uffd.move_pages(range.start as usize, f.0, size) });
        if moved {
            self.moves_used.store(true, Ordering::Relaxed);
        }
        // Write-protected, so the first write is seen (step 5). A waiting writer is woken
        // only in 4g, once its write is recorded and its granule unprotected.
        let installed = moved
            || match write_at {
                Some(_) => self.uffd.copy_protected_quietly(range, buf).is_ok(),
                None => self.uffd.copy(range, buf, true).is_ok(),
            }
            || self.uffd.copy_missing_pages(range, buf, true);
        if moved {
            self.uffd.wake(range);
        }
        give_back(moved);
        // 4g. Loaded (or not: the waiting threads retry), and counted against the budget.
        region.end_busy(block, |b| b.finish_install(installed));
        if installed {
            let counter = if moved {
                &self.stats.moved_in
            } else {
                &self.stats.copied_in
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.loaded(region, block, generation);
            if let Some(offset) = write_at {
                // Step 5 for the writer that faulted the block in: recorded before it runs.
                self.record_write(region, block, offset);
                self.uffd.wake(range);
            }
        } else {
            // The mapping changed under us (ENOENT): the waiting threads retry their
            // access against whatever is mapped now.
            self.uffd.wake(range);
        }
        Ok(())
    }
}

/// [`fetch_caught`], after each of `delays_ms` (milliseconds) in turn while it fails; the
/// last error if every attempt failed.
pub(super) fn fetch_retrying(
    fetch: &dyn Fetch,
    buf: &mut [u8],
    delays_ms: &[u64],
) -> Result<usize> {
    let mut last = None;
    for &delay in delays_ms {
        std::thread::sleep(Duration::from_millis(delay));
        match fetch_caught(fetch, buf) {
            Ok(len) => return Ok(len),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::InvalidArgument(format!("{}: no fetch attempted", fetch.describe()))
    }))
}

/// `fetch.fetch_into(buf)`, with a panic (a bug in a store or decoder) turned into an error
/// naming the block: a worker that unwound would leave its block queued and the threads
/// faulting it suspended forever, and a caller of `load` would get a panic instead of an error.
pub(super) fn fetch_caught(fetch: &dyn Fetch, buf: &mut [u8]) -> Result<usize> {
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
