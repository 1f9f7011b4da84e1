//! Read-ahead on the mapped path (`vm::readahead`): prefetches that return at once still read
//! their whole range, leave what a transaction wrote alone, and views with read-ahead read
//! the right bytes.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use ndarray::s;
use outcore::array::Order;
use outcore::db::Database;
use outcore::vm::{Backing, BlockMemory, BlockSource, PAGE};
use outcore::Result;

const BLK: usize = 2 << 20;

/// Blocks `0..n` back to back in one file on disk (not tmpfs: its page cache can be
/// dropped), block `b` filled with `b + seed` and its block number in the first 8 bytes.
struct FileSource {
    file: Arc<File>,
    seed: u8,
    _dir: tempfile::TempDir,
}

fn fill(block: u64, seed: u8) -> Vec<u8> {
    let mut v = vec![seed.wrapping_add(block as u8); BLK];
    v[..8].copy_from_slice(&block.to_le_bytes());
    v
}

impl FileSource {
    fn new(n: u64, seed: u8) -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("seg");
        let mut f = File::create(&path).unwrap();
        for b in 0..n {
            f.write_all(&fill(b, seed)).unwrap();
        }
        f.sync_all().unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY (test): advice on our own descriptor; it only drops clean cached pages.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "dropping the test file's page cache");
        FileSource {
            file: Arc::new(file),
            seed,
            _dir: dir,
        }
    }
}

impl BlockSource for FileSource {
    fn backing(&self, block: u64) -> Result<Backing> {
        Ok(Backing::File {
            file: self.file.clone(),
            offset: block * BLK as u64,
            len: BLK as u64,
        })
    }
}

/// Pages of blocks `blocks` of `mem` not resident (mincore), without touching them.
fn missing_pages(mem: &BlockMemory, blocks: std::ops::Range<u64>) -> usize {
    let len = (blocks.end - blocks.start) as usize * BLK;
    let mut vec = vec![0u8; len / PAGE];
    // SAFETY (test): mincore only reports on the mapped range; the blocks are mapped.
    let rc = unsafe { libc::mincore(mem.block_ptr(blocks.start).cast(), len, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 == 0).count()
}

/// Waits until every page of `blocks` is resident. No timing is asserted: a prefetch that
/// leaves pages out never finishes, and the message says how many are missing.
fn until_resident(mem: &BlockMemory, blocks: std::ops::Range<u64>) {
    for _ in 0..6000 {
        if missing_pages(mem, blocks.clone()) == 0 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!(
        "{} pages of blocks {blocks:?} still not read a minute after the prefetch",
        missing_pages(mem, blocks.clone())
    );
}

/// A prefetch returns before the data is read and still reads all of a range larger than one
/// `MADV_WILLNEED` reads (8 MiB on the development VMs: a single call left the rest unread).
#[test]
fn prefetch_reads_a_large_range_whole() {
    let src = FileSource::new(16, 3);
    let mem = BlockMemory::new(BLK, 16, true).unwrap();
    mem.ensure_mapped(0..16, &src).unwrap();
    mem.prefetch(0..16 * BLK).unwrap();
    until_resident(&mem, 0..16);
    for b in 0..16 {
        assert_eq!(mem.read_block(b), fill(b, src.seed), "block {b}");
    }
}

/// Read-ahead never makes pages look written, and what was written survives it: discard
/// restores the stored bytes, install switches to a new version.
#[test]
fn prefetch_keeps_written_pages_exact() {
    let src = FileSource::new(4, 10);
    let mem = BlockMemory::new(BLK, 4, true).unwrap();
    mem.ensure_mapped(0..4, &src).unwrap();
    mem.write_into(1, 5 * PAGE + 7, &[0xAB; 3]).unwrap();
    mem.write_into(2, 0, &[0xCD; 2 * PAGE]).unwrap();
    mem.prefetch(0..4 * BLK).unwrap();
    until_resident(&mem, 0..4);
    let written = mem.written_pages().unwrap();
    assert_eq!(written.len(), 2, "{written:?}");
    assert_eq!(written[&1], vec![5 * PAGE..6 * PAGE]);
    assert_eq!(written[&2], vec![0..2 * PAGE]);
    let mut expected = fill(1, 10);
    expected[5 * PAGE + 7..5 * PAGE + 10].fill(0xAB);
    assert_eq!(mem.read_block(1), expected);
    mem.discard(&[1, 2]).unwrap();
    assert!(mem.written_pages().unwrap().is_empty());
    for b in 0..4 {
        assert_eq!(mem.read_block(b), fill(b, 10), "block {b} after discard");
    }
    // A new version installed after a prefetch shows, and a prefetch of it reads it.
    let newer = FileSource::new(4, 50);
    mem.install(3, newer.backing(3).unwrap()).unwrap();
    mem.prefetch(3 * BLK..4 * BLK).unwrap();
    until_resident(&mem, 3..4);
    assert_eq!(mem.read_block(3), fill(3, 50));
}

fn row(i: u64, cols: u64) -> Vec<f32> {
    (0..cols)
        .map(|c| (i % 1021) as f32 + c as f32 / 1024.0)
        .collect()
}

/// Small views (read ahead exactly) and large ones (left to the faults) of a local store read
/// what was committed; a prefetch before an abort or a commit changes neither outcome.
#[test]
fn views_and_prefetches_of_a_stored_array_read_the_right_bytes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("db");
    let (rows, cols) = (4096u64, 1024u64); // 16 MiB of 4 KiB rows
    {
        let db = Database::open(path.to_str().unwrap()).unwrap();
        let conn = db.connect().unwrap();
        let mut a = conn.create::<f32>("a", &[rows, cols], Order::C).unwrap();
        {
            let mut v = a.view_mut::<f32>().unwrap();
            for i in 0..rows {
                let r = row(i, cols);
                v.slice_mut(s![i as usize, ..])
                    .iter_mut()
                    .zip(r)
                    .for_each(|(x, y)| *x = y);
            }
        }
        conn.commit().unwrap();
        db.close();
    }
    let db = Database::open(path.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.array("a").unwrap();
    for i in [4095u64, 0, 1777, 1, 2048, 3000] {
        let v = a.slice::<f32, _>(s![i as usize, ..]).unwrap();
        assert_eq!(v.to_vec(), row(i, cols), "row {i}");
    }
    let part = a.slice::<f32, _>(s![100..900, ..]).unwrap();
    assert_eq!(part.row(799).to_vec(), row(899, cols));
    drop(part);
    // A prefetch, then writes that are aborted: the stored rows show again.
    a.prefetch(0..rows).unwrap();
    a.view_mut::<f32>()
        .unwrap()
        .slice_mut(s![10..20, ..])
        .fill(-1.0);
    conn.abort().unwrap();
    a.prefetch(0..rows).unwrap();
    assert_eq!(
        a.slice::<f32, _>(s![15, ..]).unwrap().to_vec(),
        row(15, cols)
    );
    // Writes, a prefetch, then a commit: the writes are what is stored.
    a.view_mut::<f32>().unwrap().slice_mut(s![30, ..]).fill(7.0);
    a.prefetch(0..rows).unwrap();
    conn.commit().unwrap();
    db.close();
    let db = Database::open(path.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    assert!(a
        .slice::<f32, _>(s![30, ..])
        .unwrap()
        .iter()
        .all(|&x| x == 7.0));
    assert_eq!(
        a.slice::<f32, _>(s![31, ..]).unwrap().to_vec(),
        row(31, cols)
    );
}
