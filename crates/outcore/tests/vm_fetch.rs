//! Fault-filled memory (userfaultfd): blocks fetched on first touch.

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use outcore::vm::{Backing, BlockMemory, BlockSource, Fetch, PAGE};
use outcore::Result;

const BLK: usize = 2 << 20;

/// Every test here loads blocks, which count against the process-wide budget that some tests
/// change or measure (spare frames, evictions): they run one at a time.
static BUDGET_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn content(block: u64) -> Vec<u8> {
    (0..BLK)
        .map(|i| (i as u64 * 7 + block * 131) as u8)
        .collect()
}

struct Counted {
    block: u64,
    fetches: Arc<AtomicUsize>,
}

impl Fetch for Counted {
    fn fetch(&self) -> Result<Vec<u8>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(2));
        Ok(content(self.block))
    }
    fn describe(&self) -> String {
        format!("test block {}", self.block)
    }
}

struct Source(Arc<AtomicUsize>);

impl BlockSource for Source {
    fn backing(&self, block: u64) -> Result<Backing> {
        Ok(Backing::Fetch(Arc::new(Counted {
            block,
            fetches: self.0.clone(),
        })))
    }
}

fn available() -> bool {
    common::uffd_available()
}

fn byte(mem: &BlockMemory, block: u64, at: usize) -> u8 {
    // SAFETY (test): the block is mapped; reading it faults it in.
    unsafe { std::ptr::read_volatile(mem.block_ptr(block).add(at)) }
}

#[test]
fn touching_one_element_fetches_one_block_and_writes_are_tracked() {
    // Loaded blocks count against the process-wide budget the budget tests measure.
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let fetches = Arc::new(AtomicUsize::new(0));
    let mem = BlockMemory::new(BLK, 16, true).unwrap();
    mem.ensure_mapped(0..8, &Source(fetches.clone())).unwrap();
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        0,
        "nothing fetched at map time"
    );
    assert_eq!(byte(&mem, 5, 1000), content(5)[1000]);
    // The block itself, plus read-ahead of the next two.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let n = fetches.load(Ordering::SeqCst);
    assert!((1..=3).contains(&n), "{n} fetches");
    assert!(
        mem.dirty_blocks().unwrap().is_empty(),
        "reads dirty nothing"
    );
    // A write marks its 64 KiB granule (fetched blocks are tracked per granule at first).
    // SAFETY (test): mapped writable memory.
    unsafe { *mem.block_ptr(5).add(3 * PAGE + 1) = 42 };
    let w = mem.written_pages().unwrap();
    assert_eq!(w.len(), 1);
    let granule = 0..64 << 10;
    assert_eq!(w[&5], vec![granule]);
    // Discard drops it: the next touch fetches the stored version again.
    mem.discard(&[5]).unwrap();
    assert_eq!(byte(&mem, 5, 3 * PAGE + 1), content(5)[3 * PAGE + 1]);
    assert!(mem.dirty_blocks().unwrap().is_empty());
}

#[test]
fn a_write_that_faults_a_block_in_is_recorded_with_the_install() {
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let fetches = Arc::new(AtomicUsize::new(0));
    let mem = BlockMemory::new(BLK, 4, true).unwrap();
    mem.ensure_mapped(0..4, &Source(fetches.clone())).unwrap();
    // The first touch of block 2 is a write in its third granule.
    let at = 2 * (64 << 10) + 17;
    // SAFETY (test): mapped writable memory; the write faults the block in first.
    unsafe { std::ptr::write_volatile(mem.block_ptr(2).add(at), 0xAB) };
    assert_eq!(
        byte(&mem, 2, at),
        0xAB,
        "the write landed on the fetched block"
    );
    assert_eq!(
        byte(&mem, 2, at + 1),
        content(2)[at + 1],
        "the rest is the stored version"
    );
    let w = mem.written_pages().unwrap();
    assert_eq!(
        w[&2],
        vec![2 * (64 << 10)..3 * (64 << 10)],
        "its granule is written"
    );
    // A write to another granule still traps and widens the record to the whole block.
    // SAFETY (test): mapped writable memory, loaded now.
    unsafe { std::ptr::write_volatile(mem.block_ptr(2).add(5), 0xCD) };
    assert_eq!(mem.written_pages().unwrap()[&2], vec![0..BLK]);
    mem.discard(&[2]).unwrap();
    assert_eq!(byte(&mem, 2, at), content(2)[at]);
}

#[test]
fn concurrent_faults_on_one_block_fetch_it_once() {
    // Loaded blocks count against the process-wide budget the budget tests measure.
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let fetches = Arc::new(AtomicUsize::new(0));
    let mem = Arc::new(BlockMemory::new(BLK, 4, true).unwrap());
    mem.ensure_mapped(3..4, &Source(fetches.clone())).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let mem = mem.clone();
            s.spawn(move || assert_eq!(byte(&mem, 3, t * 4096 + 5), content(3)[t * 4096 + 5]));
        }
    });
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
}

#[test]
fn the_kernel_can_read_unloaded_memory() {
    // Loaded blocks count against the process-wide budget the budget tests measure.
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let fetches = Arc::new(AtomicUsize::new(0));
    let mem = BlockMemory::new(BLK, 2, true).unwrap();
    mem.ensure_mapped(0..1, &Source(fetches.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = std::fs::File::create(dir.path().join("x")).unwrap();
    // SAFETY: the source range is mapped (fetch-on-touch) memory of `mem`.
    let n = unsafe { libc::write(out.as_raw_fd(), mem.block_ptr(0).cast(), BLK) };
    assert_eq!(n, BLK as isize, "{}", std::io::Error::last_os_error());
    assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), content(0));
}

#[test]
fn the_kernel_can_write_into_fetched_memory_and_it_counts_as_written() {
    // Loaded blocks count against the process-wide budget the budget tests measure.
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let mem = BlockMemory::new(BLK, 4, true).unwrap();
    mem.ensure_mapped(0..2, &Source(Arc::new(AtomicUsize::new(0))))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    std::fs::write(&path, vec![0xAB; 3 * PAGE]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // Block 0 loaded and clean (write-protected), block 1 not loaded at all: read(2) into
    // both, across the boundary.
    assert_eq!(byte(&mem, 0, 0), content(0)[0]);
    let at = BLK - PAGE;
    // SAFETY: the destination range lies in mapped, writable memory of `mem`.
    let n = unsafe {
        libc::pread(
            file.as_raw_fd(),
            mem.block_ptr(0).add(at).cast(),
            3 * PAGE,
            0,
        )
    };
    assert_eq!(n, 3 * PAGE as isize, "{}", std::io::Error::last_os_error());
    assert_eq!(byte(&mem, 0, at), 0xAB);
    assert_eq!(byte(&mem, 1, 2 * PAGE - 1), 0xAB);
    assert_eq!(
        byte(&mem, 1, 2 * PAGE),
        content(1)[2 * PAGE],
        "the rest is fetched"
    );
    assert_eq!(mem.dirty_blocks().unwrap(), vec![0, 1]);
}

fn rss_anon_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn clean_blocks_beyond_the_budget_are_dropped_and_fetched_again() {
    if !available() {
        return;
    }
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    outcore::vm::set_cache_budget(8 << 20);
    let fetches = Arc::new(AtomicUsize::new(0));
    let n = 48u64; // 96 MiB through an 8 MiB budget
    let mem = BlockMemory::new(BLK, n, false).unwrap();
    mem.ensure_mapped(0..n, &Source(fetches.clone())).unwrap();
    let before = rss_anon_kb();
    let mut peak = before;
    for b in 0..n {
        for at in [0, BLK / 2, BLK - 1] {
            assert_eq!(byte(&mem, b, at), content(b)[at], "block {b}");
        }
        std::thread::sleep(std::time::Duration::from_millis(3)); // let eviction run
        peak = peak.max(rss_anon_kb());
    }
    let grown_mb = (peak - before) / 1024;
    // 96 MiB were read: without eviction the growth would be about that. Fetch buffers of the
    // workers and the allocator's caches come on top of the budget.
    assert!(
        grown_mb < 8 + 20 + 40,
        "anonymous memory grew by {grown_mb} MiB over an 8 MiB budget"
    );
    let fetched = fetches.load(Ordering::SeqCst);
    assert_eq!(
        byte(&mem, 0, 5),
        content(0)[5],
        "an evicted block comes back"
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        fetches.load(Ordering::SeqCst) > fetched,
        "block 0 was fetched again"
    );
    let stats = outcore::vm::fault_stats();
    if stats.move_available {
        // Read-only memory with 2 MiB blocks: loads move frames in, evictions move them out.
        assert!(stats.moved_in >= n, "{stats:?}");
        assert!(stats.moved_out > 0, "{stats:?}");
    }
    outcore::vm::set_cache_budget(1 << 30);
}

/// Regression (found by bench/postgres): repeated scans through fresh connections over a
/// budget smaller than the array used to hang — dropped connections' blocks kept counting
/// against the budget, and a fault could be left without a wake-up.
#[test]
fn repeated_scans_over_a_small_budget_finish() {
    if !available() {
        return;
    }
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    use outcore::array::Order;
    use outcore::db::{Database, DbOptions};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let db = Database::open_with(
            "mem:",
            DbOptions {
                compression: outcore::storage::Compression::Lz4,
                cache_bytes: Some(8 << 20),
                ..DbOptions::default()
            },
        )
        .unwrap();
        let c = db.connect().unwrap();
        let n = 8u64 << 20; // 64 MiB of u64
        let mut a = c.create::<u64>("a", &[n], Order::C).unwrap();
        for (i, x) in a.view_mut::<u64>().unwrap().iter_mut().enumerate() {
            *x = (i % 1000) as u64;
        }
        c.commit().unwrap();
        let expected: u64 = (0..n).map(|i| i % 1000).sum();
        for _ in 0..4 {
            let fresh = db.connect().unwrap();
            let b = fresh.array("a").unwrap();
            assert_eq!(b.view::<u64>().unwrap().sum(), expected);
        }
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(120))
        .expect("the scans did not finish (hang in the fault path)");
    outcore::vm::set_cache_budget(1 << 30);
}

/// Regression: memory of dropped arrays must stop counting against the budget, and a block
/// dropped right after it was fetched must be fetched again for the thread that waits on it.
#[test]
fn dropped_memory_frees_the_budget() {
    if !available() {
        return;
    }
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    outcore::vm::set_cache_budget(8 << 20);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for round in 0..6 {
            let fetches = Arc::new(AtomicUsize::new(0));
            let mem = BlockMemory::new(BLK, 16, false).unwrap();
            mem.ensure_mapped(0..16, &Source(fetches.clone())).unwrap();
            for b in 0..16 {
                assert_eq!(byte(&mem, b, 77), content(b)[77], "round {round} block {b}");
            }
            drop(mem);
        }
        tx.send(()).unwrap();
    });
    let done = rx.recv_timeout(std::time::Duration::from_secs(60));
    outcore::vm::set_cache_budget(1 << 30);
    done.expect("reads did not finish (hang in the fault path)");
}

/// A fetch that reports when it starts, then waits for the test to let it finish.
struct Gated {
    block: u64,
    bytes: Vec<u8>,
    started: std::sync::Mutex<std::sync::mpsc::Sender<u64>>,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl Fetch for Gated {
    fn fetch(&self) -> Result<Vec<u8>> {
        let _ = self.started.lock().unwrap().send(self.block);
        let (open, cv) = &*self.gate;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut open = open.lock().unwrap();
        while !*open && std::time::Instant::now() < deadline {
            open = cv
                .wait_timeout(open, std::time::Duration::from_millis(50))
                .unwrap()
                .0;
        }
        Ok(self.bytes.clone())
    }
    fn describe(&self) -> String {
        format!("gated block {}", self.block)
    }
}

type Gate = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

fn open_gate(gate: &Gate) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

struct GatedSource {
    started: std::sync::mpsc::Sender<u64>,
    gate: Gate,
    version: u64,
}

impl BlockSource for GatedSource {
    fn backing(&self, block: u64) -> Result<Backing> {
        Ok(Backing::Fetch(Arc::new(Gated {
            block,
            bytes: content(block + self.version * 1000),
            started: std::sync::Mutex::new(self.started.clone()),
            gate: self.gate.clone(),
        })))
    }
}

#[test]
fn different_blocks_load_in_parallel() {
    if !available() {
        return;
    }
    // Serial with the tests that measure memory.
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let (started_tx, started) = std::sync::mpsc::channel();
    let gate: Gate = Default::default();
    let mem = Arc::new(BlockMemory::new(BLK, 64, false).unwrap());
    let source = GatedSource {
        started: started_tx,
        gate: gate.clone(),
        version: 0,
    };
    mem.ensure_mapped(0..64, &source).unwrap();
    let readers: Vec<_> = [0u64, 32]
        .into_iter()
        .map(|b| {
            let mem = mem.clone();
            std::thread::spawn(move || byte(&mem, b, 12345) == content(b)[12345])
        })
        .collect();
    // Both blocks' fetches are running at once: neither finishes before the gate opens.
    let mut seen = std::collections::BTreeSet::new();
    while !(seen.contains(&0) && seen.contains(&32)) {
        let b = started
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second block's fetch did not start while the first one ran");
        seen.insert(b);
    }
    open_gate(&gate);
    for r in readers {
        assert!(r.join().unwrap(), "a reader saw wrong bytes");
    }
}

#[test]
fn a_load_racing_a_remap_shows_the_new_version() {
    if !available() {
        return;
    }
    // Serial with the tests that measure memory.
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let (started_tx, started) = std::sync::mpsc::channel();
    let old_gate: Gate = Default::default();
    let mem = Arc::new(BlockMemory::new(BLK, 8, false).unwrap());
    let old = GatedSource {
        started: started_tx.clone(),
        gate: old_gate.clone(),
        version: 0,
    };
    mem.ensure_mapped(0..1, &old).unwrap();
    let reader = {
        let mem = mem.clone();
        std::thread::spawn(move || byte(&mem, 0, 4321))
    };
    started
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the old version's fetch started");
    // Another transaction changed block 0 while its old version is being fetched.
    let new_gate: Gate = Default::default();
    open_gate(&new_gate);
    let new = GatedSource {
        started: started_tx,
        gate: new_gate,
        version: 1,
    };
    mem.remap(&[0], &new).unwrap();
    open_gate(&old_gate);
    let want = content(1000)[4321];
    assert_ne!(want, content(0)[4321]);
    assert_eq!(
        reader.join().unwrap(),
        want,
        "the waiting reader sees the new version"
    );
    assert_eq!(byte(&mem, 0, 4321), want, "and so does every later read");
    assert_eq!(mem.read_block(0), content(1000));
}

#[test]
fn writes_racing_eviction_are_never_lost() {
    if !available() {
        return;
    }
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    outcore::vm::set_cache_budget(8 << 20);
    let n = 40u64;
    let mem = Arc::new(BlockMemory::new(BLK, n, true).unwrap());
    mem.ensure_mapped(0..n, &Source(Arc::new(AtomicUsize::new(0))))
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A scanner keeps the budget overflowing, so clean blocks are evicted all the time.
    let scanner = {
        let (mem, stop) = (mem.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut b = 0;
            while !stop.load(Ordering::Relaxed) {
                byte(&mem, b % n, (b as usize * 4096) % BLK);
                b += 1;
            }
        })
    };
    // The writer writes into blocks loaded a while ago: the next ones evicted.
    let mut written = std::collections::BTreeMap::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..3000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let block = x % n;
        let at = (x >> 8) as usize % BLK;
        let value = (i % 251) as u8 ^ content(block)[at] ^ 0xFF;
        // SAFETY (test): mapped writable memory of the block.
        unsafe { std::ptr::write_volatile(mem.block_ptr(block).add(at), value) };
        written.insert((block, at), value);
    }
    stop.store(true, Ordering::Relaxed);
    scanner.join().unwrap();
    let dirty: std::collections::BTreeSet<u64> = mem.dirty_blocks().unwrap().into_iter().collect();
    for (&(block, at), &value) in &written {
        assert_eq!(
            byte(&mem, block, at),
            value,
            "write at {at} of block {block} lost"
        );
        assert!(
            dirty.contains(&block),
            "block {block} written but not dirty"
        );
    }
    outcore::vm::set_cache_budget(1 << 30);
}

#[test]
fn frames_of_dropped_read_only_memory_are_kept_within_the_budget() {
    if !available() || !outcore::vm::fault_stats().move_available {
        return;
    }
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    outcore::vm::set_cache_budget(40 << 20);
    let mem = BlockMemory::new(BLK, 16, false).unwrap();
    mem.ensure_mapped(0..16, &Source(Arc::new(AtomicUsize::new(0))))
        .unwrap();
    for b in 0..16 {
        assert_eq!(byte(&mem, b, 99), content(b)[99]);
    }
    drop(mem);
    // The 32 MiB of clean pages became spare frames (the budget has room for them)...
    let spare = outcore::vm::fault_stats().spare_bytes;
    assert!(spare > 16 << 20 && spare <= 40 << 20, "{spare} bytes spare");
    // ...which give way when the budget shrinks (down to the minimum of 8 frames).
    outcore::vm::set_cache_budget(4 << 20);
    let mem = BlockMemory::new(BLK, 4, false).unwrap();
    mem.ensure_mapped(0..4, &Source(Arc::new(AtomicUsize::new(0))))
        .unwrap();
    for b in 0..4 {
        assert_eq!(
            byte(&mem, b, 7),
            content(b)[7],
            "a reused frame holds the new block"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let spare = outcore::vm::fault_stats().spare_bytes;
    assert!(spare <= 16 << 20, "{spare} bytes spare over a 4 MiB budget");
    outcore::vm::set_cache_budget(1 << 30);
}

/// Waits (up to a minute, a bound against hanging, not a timing check) until `done`.
fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

#[test]
fn prefetch_fetches_blocks_without_a_touch_within_the_budget() {
    if !available() {
        return;
    }
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let fetches = Arc::new(AtomicUsize::new(0));
    let mem = BlockMemory::new(BLK, 16, true).unwrap();
    mem.ensure_mapped(0..16, &Source(fetches.clone())).unwrap();
    let installed = || {
        let s = outcore::vm::fault_stats();
        s.copied_in + s.moved_in
    };
    let before = installed();
    mem.prefetch(BLK + 5..4 * BLK).unwrap();
    // Fetched *and installed*: a touch of a block still being copied in would fault, and a
    // missing-page fault queues read-ahead.
    assert!(
        wait_until(|| fetches.load(Ordering::SeqCst) == 3 && installed() >= before + 3),
        "prefetch started {} fetches, not 3",
        fetches.load(Ordering::SeqCst)
    );
    // Loaded: touching them fetches nothing more (not even read-ahead: the next blocks of a
    // sequential pass are queued only from a missing-page fault).
    for b in 1..4 {
        assert_eq!(byte(&mem, b, 77), content(b)[77]);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 3);
    // Prefetching beyond the budget stops at the budget: it would only evict itself.
    outcore::vm::set_cache_budget(0);
    mem.prefetch(8 * BLK..16 * BLK).unwrap();
    outcore::vm::set_cache_budget(1 << 30);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(fetches.load(Ordering::SeqCst), 3);
}

/// Block `block`'s byte `at` as `content` makes it, computed without allocating (a forked
/// child of a threaded process must not take locks such as malloc's).
fn expected(block: u64, at: usize) -> u8 {
    (at as u64 * 7 + block * 131) as u8
}

#[test]
fn a_forked_child_reads_the_parents_snapshot_of_fetched_memory() {
    if !available() {
        return;
    }
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    let fetches = Arc::new(AtomicUsize::new(0));
    let mem = BlockMemory::new(BLK, 8, true).unwrap();
    mem.ensure_mapped(0..8, &Source(fetches.clone())).unwrap();
    // Block 0 loaded (with blocks 1 and 2 read ahead, perhaps still being copied at the
    // fork), block 4 loaded and written, blocks 6 and 7 never touched.
    assert_eq!(byte(&mem, 0, 100), expected(0, 100));
    assert_eq!(byte(&mem, 4, 0), expected(4, 0));
    // SAFETY (test): mapped writable memory.
    unsafe { *mem.block_ptr(4).add(10) = 99 };
    let serves = outcore::vm::fault_stats().serves_forks;
    let copies = outcore::vm::fault_stats().child_copies;
    // SAFETY (test): the child only reads and writes this memory, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let mut ok = byte(&mem, 0, 100) == expected(0, 100)
            && byte(&mem, 1, BLK - 1) == expected(1, BLK - 1)
            && byte(&mem, 4, 10) == 99
            && byte(&mem, 4, 11) == expected(4, 11)
            && byte(&mem, 6, 5000) == expected(6, 5000)
            && byte(&mem, 7, 3) == expected(7, 3);
        // Writes are the child's own, to loaded and fetched blocks alike.
        // SAFETY (test): mapped writable memory.
        unsafe {
            *mem.block_ptr(0).add(100) = 7;
            *mem.block_ptr(7).add(3) = 8;
        }
        ok = ok && byte(&mem, 0, 100) == 7 && byte(&mem, 7, 3) == 8;
        // SAFETY (test): leaves the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    let reaped = wait_until(|| {
        // SAFETY (test): waits for our own child without blocking.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
    });
    if !reaped {
        // SAFETY (test): our own child, stuck.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("the forked child hangs");
    }
    if serves {
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child read wrong bytes (status {status:#x})"
        );
        assert!(outcore::vm::fault_stats().child_copies >= copies + 2);
    } else {
        // No fork events here: fetched memory is not inherited, a touch is a clear segfault.
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV);
    }
    // The parent's memory is untouched by the child's writes.
    assert_eq!(byte(&mem, 0, 100), expected(0, 100));
    assert_eq!(byte(&mem, 7, 3), expected(7, 3));
    assert_eq!(byte(&mem, 4, 10), 99);
}

/// A fetch of local data (as of a file or memory): records which thread ran each attempt,
/// and fails the first `failures` attempts.
struct Local {
    block: u64,
    threads: Arc<std::sync::Mutex<Vec<(u64, String)>>>,
    failures: Arc<AtomicUsize>,
}

impl Fetch for Local {
    fn fetch(&self) -> Result<Vec<u8>> {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().push((self.block, name));
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(outcore::Error::io(
                format!("test block {}", self.block),
                std::io::Error::other("a transient failure"),
            ));
        }
        Ok(content(self.block))
    }
    fn describe(&self) -> String {
        format!("local test block {}", self.block)
    }
    fn is_local(&self) -> bool {
        true
    }
}

struct LocalSource {
    threads: Arc<std::sync::Mutex<Vec<(u64, String)>>>,
    failures: Arc<AtomicUsize>,
}

impl LocalSource {
    /// Local blocks whose first `failures` fetch attempts (of any block) fail.
    fn failing(failures: usize) -> LocalSource {
        LocalSource {
            threads: Arc::default(),
            failures: Arc::new(AtomicUsize::new(failures)),
        }
    }
}

impl BlockSource for LocalSource {
    fn backing(&self, block: u64) -> Result<Backing> {
        Ok(Backing::Fetch(Arc::new(Local {
            block,
            threads: self.threads.clone(),
            failures: self.failures.clone(),
        })))
    }
}

/// The threads that ran the fetches of `block`, in order.
fn fetched_by(threads: &std::sync::Mutex<Vec<(u64, String)>>, block: u64) -> Vec<String> {
    let threads = threads.lock().unwrap();
    threads
        .iter()
        .filter(|(b, _)| *b == block)
        .map(|(_, t)| t.clone())
        .collect()
}

#[test]
fn an_isolated_fault_on_local_data_is_fetched_by_the_fault_thread() {
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    for writable in [false, true] {
        let source = LocalSource::failing(0);
        let mem = BlockMemory::new(BLK, 8, writable).unwrap();
        mem.ensure_mapped(0..8, &source).unwrap();
        // Jobs of earlier tests finish first: an isolated fault is one with nothing in flight.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(byte(&mem, 6, 4321), content(6)[4321]);
        // No thread hand-off to a worker: the thread that read the fault message fetched it.
        assert_eq!(fetched_by(&source.threads, 6), ["outcore-faults"]);
        if writable {
            // A write that faults a block in is recorded with the install, as on a worker.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let at = 5 * (64 << 10) + 3;
            // SAFETY (test): mapped writable memory; the write faults the block in first.
            unsafe { std::ptr::write_volatile(mem.block_ptr(2).add(at), 0x5A) };
            assert_eq!(fetched_by(&source.threads, 2), ["outcore-faults"]);
            assert_eq!(byte(&mem, 2, at), 0x5A);
            assert_eq!(byte(&mem, 2, at + 1), content(2)[at + 1]);
            let w = mem.written_pages().unwrap();
            assert_eq!(w[&2], vec![5 * (64 << 10)..6 * (64 << 10)]);
        }
    }
}

#[test]
fn a_local_fetch_failing_on_the_fault_thread_is_retried_by_a_worker() {
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let source = LocalSource::failing(1);
    let mem = BlockMemory::new(BLK, 4, false).unwrap();
    mem.ensure_mapped(0..4, &source).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Without the hand-over the reading thread would wait forever: read on another thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = mem.block_ptr(3) as usize;
    std::thread::spawn(move || {
        // SAFETY (test): the memory stays mapped until the receive below returns or fails.
        let x = unsafe { std::ptr::read_volatile((addr + 777) as *const u8) };
        let _ = tx.send(x);
    });
    let x = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the read finished");
    assert_eq!(x, content(3)[777]);
    let by = fetched_by(&source.threads, 3);
    assert_eq!(by.len(), 2, "{by:?}");
    assert_eq!(by[0], "outcore-faults");
    assert!(by[1].starts_with("outcore-fetch-"), "{by:?}");
}

#[test]
fn a_strided_pass_is_read_ahead_by_its_stride() {
    let _serial = BUDGET_TESTS.lock().unwrap_or_else(|p| p.into_inner());
    if !available() {
        return;
    }
    let source = LocalSource::failing(0);
    let mem = BlockMemory::new(BLK, 40, false).unwrap();
    mem.ensure_mapped(0..40, &source).unwrap();
    let pause = || std::thread::sleep(std::time::Duration::from_millis(150));
    // Every 7th block, as a column of tiles would be read.
    for b in [0, 7, 14] {
        pause();
        assert_eq!(byte(&mem, b, 99), content(b)[99]);
    }
    pause();
    // The stride was seen twice (0 → 7 → 14): the next two blocks of it were fetched ahead,
    // untouched; nothing in between.
    let fetched = |b| fetched_by(&source.threads, b).len();
    assert_eq!((fetched(21), fetched(28)), (1, 1));
    assert_eq!(fetched(35), 0, "two blocks ahead, not three");
    assert!((15..21).all(|b| fetched(b) == 0));
    // The pass goes on: block 21 and 28 are loaded, the next fault is at 35 (3 strides on),
    // and the stride holds.
    for b in [21, 28, 35] {
        assert_eq!(byte(&mem, b, 5), content(b)[5]);
    }
    pause();
    assert_eq!(fetched(35), 1);
    // 42 and 49 lie past the region: nothing more to read.
    // Random access after it reads nothing ahead.
    for b in [3, 30, 11] {
        pause();
        assert_eq!(byte(&mem, b, 1), content(b)[1]);
    }
    pause();
    assert!([4, 5, 31, 32, 12, 13, 19].iter().all(|&b| fetched(b) == 0));
}
