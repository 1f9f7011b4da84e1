//! Read-ahead policy of the mapped path: how file-backed blocks come into memory on first use.
//!
//! Measured on Linux 6.18, ext4 on virtio (`bench/README.md`, "Read-ahead on the mapped
//! path"), a cold 2 MiB block read through a plain file mapping costs about 3× one `pread` of
//! it: the first fault reads `read_ahead_kb` around the faulting page (8 MiB there, 128 KiB on
//! many disks, then one small window after another). Three measures, each the winner of its
//! case:
//!
//! * **Huge-page advice on file mappings** ([`advise_file_mapping`]): with `MADV_HUGEPAGE` a
//!   fault reads the aligned 2 MiB of the file around it as one large folio (two with the
//!   next as read-ahead), whatever `read_ahead_kb` says, and maps it with one PMD when the
//!   extent is 2 MiB-aligned in its file: a cold block then costs about 0.5–0.7× a `pread` of
//!   it, a warm one a single fault.
//! * **Exact read-ahead of small views** ([`small_view`]): a view of less than
//!   [`SMALL_VIEW_BYTES`] (a row, a record) reads just its pages ahead (`MADV_WILLNEED`), so
//!   its faults find them in the page cache and do not read 2–4 MiB around them.
//! * **Background prefetch** ([`in_background`]): `MADV_WILLNEED` reads at most
//!   `max(io_pages, ra_pages)` per call (8 MiB here: the rest of a larger range was ignored),
//!   blocks while the device queue is full, and reads small folios; so a prefetch populates its
//!   range in [`STEP`] pieces in one thread of the process, and the caller returns at once.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use super::reservation::Reservation;

/// Views smaller than this read exactly their pages ahead when made: below it, one read of
/// the view beats the 2–4 MiB a huge-page fault reads.
pub const SMALL_VIEW_BYTES: usize = 256 << 10;

/// Bytes per `MADV_WILLNEED` or `MADV_POPULATE_READ` call: no more than the kernel reads for
/// one `WILLNEED` on common devices (`max(max_sectors_kb, read_ahead_kb)`, at least 1 MiB on
/// the disks we know), and a bounded wait per `POPULATE_READ`.
pub const STEP: usize = 1 << 20;

/// Advises the kernel to read and map the file mapping at `addr..addr + len` in large folios
/// (`MADV_HUGEPAGE`). Kernels without transparent huge pages refuse the advice; the mapping
/// then keeps the default read-around, so the refusal is not an error (see
/// [`faults_read_folios`]).
pub fn advise_file_mapping(addr: *mut u8, len: usize) {
    // SAFETY: advice on a mapping the caller just made; it changes how pages are read and
    // mapped, never what the memory holds.
    let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    HUGE_ADVICE.store(rc == 0, Ordering::Relaxed);
}

/// Whether the kernel took the last huge-page advice on a file mapping: faults then read
/// whole 2 MiB folios, and reading ahead with `MADV_WILLNEED` first (small folios) would only
/// slow them down.
pub fn faults_read_folios() -> bool {
    HUGE_ADVICE.load(Ordering::Relaxed)
}

static HUGE_ADVICE: AtomicBool = AtomicBool::new(false);

/// Starts reading the bytes `range` of `reservation` (offsets in it, page-aligned start) ahead
/// in this thread if the range is smaller than [`SMALL_VIEW_BYTES`]; larger ranges are left to
/// the faults' own read-ahead. Advice only: a refusal costs speed, not correctness.
pub fn small_view(reservation: &Reservation, range: Range<usize>) {
    if !range.is_empty() && range.len() < SMALL_VIEW_BYTES {
        willneed(reservation, range);
    }
}

/// Reads the byte ranges `ranges` of `reservation` (file-backed memory only: the caller leaves
/// out fetched blocks, which the fault server prefetches, and holes) into memory in the
/// process's read-ahead thread and returns at once; no more than half the RAM of them, from
/// the start. The thread populates them [`STEP`] at a time (`MADV_POPULATE_READ`): each
/// piece is read as the faults would read it — with huge-page advice as large folios, not
/// the small ones `MADV_WILLNEED` allocates — and mapped, so the caller's later accesses take
/// no fault. It holds `reservation` until done, so the ranges stay this memory's. Prefetches
/// are served in the order they come.
pub fn in_background(reservation: Arc<Reservation>, ranges: Vec<Range<usize>>) {
    let ranges = first_bytes(ranges, prefetch_limit());
    if ranges.is_empty() {
        return;
    }
    let mut worker = WORKER.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    // A forked child inherits the sender but not the thread: it starts its own.
    let job = match worker.as_ref() {
        Some((p, tx)) if *p == pid => tx.send((reservation, ranges)).err().map(|e| e.0),
        _ => Some((reservation, ranges)),
    };
    if let Some(job) = job {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("outcore-readahead".into())
            .spawn(move || {
                for (reservation, ranges) in rx {
                    for range in ranges {
                        populate(&reservation, range);
                    }
                }
            });
        match spawned {
            Ok(_) => {
                // The receiver lives in the new thread while the sender lives.
                let _ = tx.send(job);
                *worker = Some((pid, tx));
            }
            // No thread: read ahead (without waiting) here rather than not at all.
            Err(_) => job.1.into_iter().for_each(|r| willneed(&job.0, r)),
        }
    }
}

/// The most one prefetch reads: half the machine's RAM. Reading more would evict its own
/// start from the page cache before it is used (the fault-filled path caps its prefetches at
/// its budget for the same reason).
fn prefetch_limit() -> usize {
    // SAFETY: sysconf only reads system configuration.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    usize::try_from(pages).map_or(usize::MAX, |p| p.saturating_mul(super::PAGE) / 2)
}

/// The first `limit` bytes of `ranges`, in order, empty ranges left out.
fn first_bytes(ranges: Vec<Range<usize>>, mut limit: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for r in ranges {
        let len = r.len().min(limit);
        if len > 0 {
            out.push(r.start..r.start + len);
            limit -= len;
        }
    }
    out
}

/// A prefetch: the memory and its byte ranges to populate.
type Job = (Arc<Reservation>, Vec<Range<usize>>);

/// The read-ahead thread of this process (its pid, to tell a forked child) and its queue.
type Worker = Option<(u32, Sender<Job>)>;

static WORKER: Mutex<Worker> = Mutex::new(None);

/// `MADV_POPULATE_READ` over the bytes `range` of `reservation`, [`STEP`] at a time. Errors
/// are ignored: the range may have been re-mapped meanwhile (a commit, a shrink), and a read
/// error there will surface where the data is used.
fn populate(reservation: &Reservation, range: Range<usize>) {
    for_pages(reservation, range, |addr, len| {
        // SAFETY: populating pages inside the reservation, which the caller keeps alive; it
        // reads and maps them as a read fault would, never changing what the memory holds.
        unsafe { libc::madvise(addr.cast(), len, libc::MADV_POPULATE_READ) };
    });
}

/// Bytes an explicit load reads ahead and maps at a time.
pub const LOAD_PIECE: usize = 64 << 20;

/// `MADV_WILLNEED` over the bytes `range` of `reservation`, [`STEP`] at a time, clamped to the
/// reservation and rounded out to whole pages.
pub fn willneed(reservation: &Reservation, range: Range<usize>) {
    for_pages(reservation, range, |addr, len| {
        // SAFETY: advice on pages inside the reservation, which the caller keeps alive;
        // WILLNEED reads ahead and never changes what the memory holds.
        unsafe { libc::madvise(addr.cast(), len, libc::MADV_WILLNEED) };
    });
}

/// Calls `f(address, length)` for the pages of the bytes `range` of `reservation`, clamped to
/// it and rounded out to whole pages, [`STEP`] at a time.
fn for_pages(reservation: &Reservation, range: Range<usize>, mut f: impl FnMut(*mut u8, usize)) {
    let page = super::PAGE;
    let start = range.start / page * page;
    let end = range.end.min(reservation.len()).div_ceil(page) * page;
    let mut at = start;
    while at < end {
        let len = STEP.min(end - at);
        f(reservation.base().wrapping_add(at), len);
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::first_bytes;

    #[test]
    fn first_bytes_keeps_the_start_of_the_ranges_in_order() {
        let ranges = vec![0..10, 20..20, 30..50, 60..70];
        assert_eq!(first_bytes(ranges.clone(), 25), vec![0..10, 30..45]);
        assert_eq!(
            first_bytes(ranges.clone(), 0),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(first_bytes(ranges, usize::MAX), vec![0..10, 30..50, 60..70]);
    }
}
