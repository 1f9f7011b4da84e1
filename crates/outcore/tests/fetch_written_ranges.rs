//! Written ranges of fault-filled (fetched) blocks below the block: the first write to a
//! loaded block reports its 64 KiB granule only; a write to a second granule of the block
//! reports the whole block.

mod common;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use outcore::vm::{Backing, BlockMemory, BlockSource, Fetch};
use outcore::Result;

const BLK: usize = 2 << 20;
const GRANULE: usize = 64 << 10;

/// The tests change or depend on the process-wide budget: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn content(block: u64) -> Vec<u8> {
    (0..BLK)
        .map(|i| (i as u64 * 13 + block * 97 + (i >> 12) as u64) as u8)
        .collect()
}

/// A block's committed bytes, counting fetches.
struct Counted {
    block: u64,
    fetches: Arc<AtomicUsize>,
}

impl Fetch for Counted {
    fn fetch(&self) -> Result<Vec<u8>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Ok(content(self.block))
    }
    fn describe(&self) -> String {
        format!("test block {}", self.block)
    }
}

/// Fetches of block 0 are counted in `.0`, of the others in `.1`.
struct Source(Arc<AtomicUsize>, Arc<AtomicUsize>);

impl Source {
    fn new() -> Source {
        Source(Arc::default(), Arc::default())
    }
}

impl BlockSource for Source {
    fn backing(&self, block: u64) -> Result<Backing> {
        let fetches = if block == 0 { &self.0 } else { &self.1 };
        Ok(Backing::Fetch(Arc::new(Counted {
            block,
            fetches: fetches.clone(),
        })))
    }
}

fn byte(mem: &BlockMemory, block: u64, at: usize) -> u8 {
    // SAFETY (test): the block is mapped; reading it faults it in.
    unsafe { std::ptr::read_volatile(mem.block_ptr(block).add(at)) }
}

fn write(mem: &BlockMemory, block: u64, at: usize, value: u8) {
    // SAFETY (test): mapped writable memory of the block.
    unsafe { std::ptr::write_volatile(mem.block_ptr(block).add(at), value) };
}

/// A value different from the committed byte.
fn changed(block: u64, at: usize) -> u8 {
    !content(block)[at]
}

fn whole() -> Range<usize> {
    0..BLK
}

fn granule(g: usize) -> Range<usize> {
    g * GRANULE..(g + 1) * GRANULE
}

/// Fetched memory of `n` writable blocks, all mapped; `None` without userfaultfd.
fn memory(n: u64, source: &Source) -> Option<BlockMemory> {
    if !common::uffd_available() {
        return None;
    }
    let mem = BlockMemory::new(BLK, n, true).unwrap();
    mem.ensure_mapped(0..n, source).unwrap();
    Some(mem)
}

#[test]
fn a_write_of_one_element_reports_only_its_granule() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mem) = memory(4, &Source::new()) else {
        return;
    };
    // One element near the front of block 1, and an append at the tail of block 2.
    write(&mem, 1, 3 * 4096 + 1, changed(1, 3 * 4096 + 1));
    write(&mem, 2, BLK - 8, changed(2, BLK - 8));
    // A read elsewhere writes nothing.
    assert_eq!(byte(&mem, 3, 100), content(3)[100]);
    let expected: BTreeMap<u64, Vec<Range<usize>>> =
        [(1, vec![granule(0)]), (2, vec![granule(BLK / GRANULE - 1)])]
            .into_iter()
            .collect();
    assert_eq!(mem.written_pages().unwrap(), expected);
    // More writes in the same granules stay there.
    write(&mem, 1, GRANULE - 1, 7);
    write(&mem, 2, BLK - GRANULE, 7);
    assert_eq!(mem.written_pages().unwrap(), expected);
    assert_eq!(mem.dirty_blocks().unwrap(), vec![1, 2]);
}

#[test]
fn a_write_spanning_two_granules_reports_the_whole_block() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mem) = memory(3, &Source::new()) else {
        return;
    };
    write(&mem, 0, 5 * GRANULE + 10, 1);
    assert_eq!(mem.written_pages().unwrap()[&0], vec![granule(5)]);
    // 16 bytes across the boundary of granules 7 and 8 (neither written yet).
    let at = 8 * GRANULE - 8;
    let bytes = [0xA5u8; 16];
    // SAFETY (test): mapped writable memory of block 0.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.block_ptr(0).add(at), 16) };
    assert_eq!(mem.written_pages().unwrap()[&0], vec![whole()]);
    // Block 1: the first write already spans two granules.
    // SAFETY (test): mapped writable memory of block 1.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), mem.block_ptr(1).add(at), 16) };
    assert_eq!(mem.written_pages().unwrap()[&1], vec![whole()]);
    assert_eq!(byte(&mem, 0, 5 * GRANULE + 10), 1);
    for i in 0..16 {
        assert_eq!(byte(&mem, 0, at + i), 0xA5);
        assert_eq!(byte(&mem, 1, at + i), 0xA5);
    }
}

#[test]
fn concurrent_writers_to_one_block_lose_nothing_and_are_all_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mem) = memory(2, &Source::new()) else {
        return;
    };
    let mem = Arc::new(mem);
    const THREADS: usize = 3;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for iteration in 0..150 {
        // Every other iteration all writers hit one granule (which alone is reported), else
        // each its own granule (the whole block is reported).
        let same = iteration % 2 == 0;
        let block = (iteration % 2) as u64;
        // Load the block first, so the writes race on its write protection.
        assert_eq!(byte(&mem, block, 0), content(block)[0]);
        let base = next() as usize % (BLK / GRANULE - THREADS);
        let offsets: Vec<usize> = (0..THREADS)
            .map(|t| {
                let g = if same { base } else { base + t };
                // Distinct offsets in the granule (thread t writes at t mod THREADS).
                g * GRANULE + (next() as usize % (GRANULE / THREADS)) / THREADS * THREADS + t
            })
            .collect();
        let barrier = Arc::new(Barrier::new(THREADS));
        std::thread::scope(|s| {
            for &at in &offsets {
                let (mem, barrier) = (mem.clone(), barrier.clone());
                s.spawn(move || {
                    barrier.wait();
                    write(&mem, block, at, changed(block, at));
                });
            }
        });
        let ranges = mem.written_pages().unwrap().remove(&block).unwrap();
        let expected = if same {
            vec![granule(base)]
        } else {
            vec![whole()]
        };
        assert_eq!(ranges, expected, "iteration {iteration}");
        for &at in &offsets {
            assert_eq!(
                byte(&mem, block, at),
                changed(block, at),
                "write at {at} lost"
            );
            assert!(
                ranges.iter().any(|r| r.contains(&at)),
                "write at {at} not reported"
            );
        }
        mem.discard(&[block]).unwrap();
    }
}

#[test]
fn discarding_a_partly_written_block_restores_the_committed_bytes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let source = Source::new();
    let Some(mem) = memory(2, &source) else {
        return;
    };
    let at = 9 * GRANULE + 77;
    write(&mem, 0, at, changed(0, at));
    assert_eq!(mem.written_pages().unwrap()[&0], vec![granule(9)]);
    mem.discard(&[0]).unwrap();
    assert!(mem.dirty_blocks().unwrap().is_empty());
    assert_eq!(mem.read_block(0), content(0));
    // Written again after the discard: tracked afresh, from a clean block.
    write(&mem, 0, 2 * GRANULE, 3);
    assert_eq!(mem.written_pages().unwrap()[&0], vec![granule(2)]);
}

#[test]
fn eviction_never_drops_a_partly_written_block() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let source = Source::new();
    let n = 40u64; // 80 MiB read through an 8 MiB budget
    let Some(mem) = memory(n, &source) else {
        return;
    };
    outcore::vm::set_cache_budget(8 << 20);
    let at = BLK - 100;
    write(&mem, 0, at, changed(0, at));
    assert_eq!(
        mem.written_pages().unwrap()[&0],
        vec![granule(BLK / GRANULE - 1)]
    );
    let freed = outcore::vm::fault_stats().freed;
    for round in 0..2 {
        for b in 1..n {
            assert_eq!(byte(&mem, b, 4096), content(b)[4096], "round {round}");
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        outcore::vm::fault_stats().freed > freed,
        "clean blocks were evicted"
    );
    assert_eq!(byte(&mem, 0, at), changed(0, at), "the write survived");
    assert_eq!(
        source.0.load(Ordering::SeqCst),
        1,
        "block 0 never fetched again"
    );
    assert_eq!(
        mem.written_pages().unwrap()[&0],
        vec![granule(BLK / GRANULE - 1)]
    );
    assert_eq!(&mem.read_block(0)[..at], &content(0)[..at]);
    outcore::vm::set_cache_budget(1 << 30);
}
