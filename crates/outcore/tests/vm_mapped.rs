//! The mapped memory path: zero-copy reads, exact dirty pages, discard, install, kernel access.

mod common;
use common::status_kb;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use outcore::vm::{Backing, BlockMemory, BlockSource, PAGE};
use outcore::Result;

const BLK: usize = 2 << 20;

/// Blocks `0..n` stored back to back in one temp file, block `i` filled with `fill(i)`;
/// blocks listed in `holes` are holes.
struct FileSource {
    file: Arc<File>,
    holes: BTreeSet<u64>,
    _dir: tempfile::TempDir,
}

fn fill(block: u64, seed: u8) -> Vec<u8> {
    let mut v = vec![seed.wrapping_add(block as u8); BLK];
    v[..8].copy_from_slice(&block.to_le_bytes());
    v
}

impl FileSource {
    fn new(n: u64, seed: u8, holes: &[u64]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut f = File::create(dir.path().join("seg")).unwrap();
        for b in 0..n {
            f.write_all(&fill(b, seed)).unwrap();
        }
        f.sync_all().unwrap();
        let file = Arc::new(File::open(dir.path().join("seg")).unwrap());
        FileSource {
            file,
            holes: holes.iter().copied().collect(),
            _dir: dir,
        }
    }
}

impl BlockSource for FileSource {
    fn backing(&self, block: u64) -> Result<Backing> {
        Ok(if self.holes.contains(&block) {
            Backing::Hole
        } else {
            Backing::File {
                file: self.file.clone(),
                offset: block * BLK as u64,
                len: BLK as u64,
            }
        })
    }
}

#[allow(clippy::mut_from_ref)] // the memory is not owned by `mem`'s Rust borrow
fn slice(mem: &BlockMemory, block: u64) -> &mut [u8] {
    // SAFETY (test): the block is mapped writable and the test is its only user.
    unsafe { std::slice::from_raw_parts_mut(mem.block_ptr(block), BLK) }
}

#[test]
fn reads_come_from_the_file_and_holes_read_zero() {
    let src = FileSource::new(4, 10, &[2]);
    let mem = BlockMemory::new(BLK, 16, true).unwrap();
    mem.ensure_mapped(0..4, &src).unwrap();
    for b in [0u64, 1, 3] {
        assert_eq!(slice(&mem, b), &fill(b, 10)[..], "block {b}");
    }
    assert!(slice(&mem, 2).iter().all(|&x| x == 0));
    assert!(
        mem.dirty_blocks().unwrap().is_empty(),
        "reading dirties nothing"
    );
    assert_eq!(mem.mapping_runs(), 3, "blocks 0-1 merge; hole; block 3");
}

#[test]
fn overlapping_views_alias() {
    let src = FileSource::new(2, 0, &[]);
    let mem = BlockMemory::new(BLK, 4, true).unwrap();
    mem.ensure_mapped(0..2, &src).unwrap();
    let base = mem.block_ptr(0);
    // SAFETY (test): two overlapping views of mapped memory used one after the other.
    let a = unsafe { std::slice::from_raw_parts_mut(base, 2 * BLK) };
    let b = unsafe { std::slice::from_raw_parts(base.add(BLK - 10), 20) };
    a[BLK - 5] = 0xAB;
    assert_eq!(b[5], 0xAB);
}

#[test]
fn dirty_pages_are_exact() {
    let src = FileSource::new(8, 3, &[5, 6]);
    let mem = BlockMemory::new(BLK, 64, true).unwrap();
    mem.ensure_mapped(0..8, &src).unwrap();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut expected: BTreeSet<(u64, usize)> = BTreeSet::new();
    for _ in 0..300 {
        let block = next() % 8;
        let page = (next() % (BLK / PAGE) as u64) as usize;
        let s = slice(&mem, block);
        if next() % 3 == 0 {
            // Reads must not count.
            std::hint::black_box(s[page * PAGE + 7]);
        } else {
            s[page * PAGE + (next() % PAGE as u64) as usize] ^= 0xFF;
            expected.insert((block, page));
        }
    }
    let found: BTreeSet<(u64, usize)> = mem
        .written_pages()
        .unwrap()
        .into_iter()
        .flat_map(|(b, ranges)| {
            ranges
                .into_iter()
                .flat_map(move |r| (r.start / PAGE..r.end / PAGE).map(move |p| (b, p)))
        })
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn discard_restores_and_install_switches_versions() {
    let old = FileSource::new(3, 1, &[2]);
    let new = FileSource::new(3, 50, &[]);
    let mem = BlockMemory::new(BLK, 8, true).unwrap();
    mem.ensure_mapped(0..3, &old).unwrap();
    slice(&mem, 0)[100] = 0;
    slice(&mem, 2)[PAGE * 3] = 9;
    assert_eq!(mem.dirty_blocks().unwrap(), vec![0, 2]);
    mem.discard(&[0, 2]).unwrap();
    assert_eq!(slice(&mem, 0), &fill(0, 1)[..]);
    assert!(slice(&mem, 2).iter().all(|&x| x == 0));
    assert!(mem.dirty_blocks().unwrap().is_empty());

    // A dirty block replaced by a new version: private pages gone, new data shown.
    slice(&mem, 1).fill(7);
    let anon_dirty = status_kb("RssAnon:");
    mem.install(1, new.backing(1).unwrap()).unwrap();
    assert_eq!(slice(&mem, 1), &fill(1, 50)[..]);
    assert!(mem.dirty_blocks().unwrap().is_empty());
    // Other tests of this binary allocate concurrently: allow their few MiB.
    assert!(
        status_kb("RssAnon:") < anon_dirty + 8192,
        "private pages freed"
    );
    // Remap picks up new backings for mapped blocks only.
    mem.remap(&[0, 2, 5], &new).unwrap();
    assert_eq!(slice(&mem, 2), &fill(2, 50)[..]);
    assert!(!mem.is_mapped(5));
}

#[test]
fn decoded_bytes_behave_like_file_blocks() {
    struct Bytes;
    impl BlockSource for Bytes {
        fn backing(&self, block: u64) -> Result<Backing> {
            Ok(Backing::Bytes(fill(block, 77)))
        }
    }
    let mem = BlockMemory::new(BLK, 4, true).unwrap();
    mem.ensure_mapped(0..2, &Bytes).unwrap();
    assert_eq!(slice(&mem, 1), &fill(1, 77)[..]);
    assert!(mem.dirty_blocks().unwrap().is_empty());
    slice(&mem, 1)[5] = 1;
    assert_eq!(mem.dirty_blocks().unwrap(), vec![1]);
    mem.discard(&[1]).unwrap();
    assert_eq!(slice(&mem, 1), &fill(1, 77)[..]);
}

#[test]
fn kernel_reads_and_writes_view_memory() {
    let src = FileSource::new(2, 20, &[1]);
    let mem = BlockMemory::new(BLK, 4, true).unwrap();
    mem.ensure_mapped(0..2, &src).unwrap();
    // write(2) from untouched memory: the kernel faults the pages in itself.
    let dir = tempfile::tempdir().unwrap();
    let out = File::create(dir.path().join("out")).unwrap();
    // SAFETY: the source range is mapped and readable.
    let n = unsafe { libc::write(out.as_raw_fd(), mem.block_ptr(0).cast(), BLK) };
    assert_eq!(n, BLK as isize);
    let mut back = vec![0u8; BLK];
    File::open(dir.path().join("out"))
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    assert_eq!(back, fill(0, 20));
    // read(2) into a hole: the kernel writes, and the pages count as dirty.
    let src_file = File::open(dir.path().join("out")).unwrap();
    // SAFETY: the destination range is mapped writable.
    let n = unsafe { libc::pread(src_file.as_raw_fd(), mem.block_ptr(1).cast(), 2 * PAGE, 0) };
    assert_eq!(n, 2 * PAGE as isize);
    assert_eq!(&slice(&mem, 1)[..8], &0u64.to_le_bytes());
    let dirty = mem.written_pages().unwrap();
    let expected = 0..2 * PAGE;
    assert_eq!(
        dirty.get(&1).map(Vec::as_slice),
        Some(std::slice::from_ref(&expected))
    );
}

#[test]
fn full_read_is_zero_copy() {
    let n = 128u64; // 256 MiB
    let src = FileSource::new(n, 5, &[]);
    let mem = BlockMemory::new(BLK, n, false).unwrap();
    mem.ensure_mapped(0..n, &src).unwrap();
    let before = status_kb("RssAnon:");
    let mut sum = 0u64;
    for b in 0..n {
        // SAFETY: mapped read-only block.
        let s = unsafe { std::slice::from_raw_parts(mem.block_ptr(b), BLK) };
        sum += s.iter().step_by(64).map(|&x| u64::from(x)).sum::<u64>();
    }
    std::hint::black_box(sum);
    let grown_kb = status_kb("RssAnon:").saturating_sub(before);
    // Other tests of this binary run concurrently and allocate; 256 MiB copied would show.
    assert!(
        grown_kb < 48 * 1024,
        "anonymous memory grew by {grown_kb} kB"
    );
    assert_eq!(
        mem.mapping_runs(),
        1,
        "consecutive extents form one mapping"
    );
}
