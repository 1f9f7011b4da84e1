//! Kernel mappings running out (`vm.max_map_count`): a writer that rewrites scattered blocks
//! of a mapped array while a view of all of it stays open fragments its mappings. Before, the
//! process reached the limit: the re-mapping after a commit failed, the snapshot stayed behind,
//! and the next commit was a false conflict against the writer's own last commit, with stale
//! views. Now memory whose file extents exceed a budget (a quarter of the limit) fetches its
//! blocks on touch instead, in a few mappings.
//!
//! The test lowers `vm.max_map_count` (a system-wide setting; root only, restored at the end)
//! so the limit is reached in seconds; this binary holds this one test, so no other test of
//! this process runs meanwhile.

use std::collections::BTreeMap;

use outcore::array::Order;
use outcore::db::Database;
use rand::{Rng, SeedableRng};

const SYSCTL: &str = "/proc/sys/vm/max_map_count";
const LIMIT: usize = 16_384;
/// 128 MiB of 4 KiB blocks: 32,768 blocks, twice the lowered limit.
const BLK: usize = 4096;
const NBLOCKS: u64 = 32_768;
const PER_BLOCK: u64 = (BLK / 8) as u64;

/// Restores the system-wide limit when dropped (also when the test fails).
struct MapCountGuard(String);

impl Drop for MapCountGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// The value stored at element `i` of block `b` after `version` rewrites of that block.
fn value(b: u64, i: u64, version: u64) -> u64 {
    (b << 32) | (version << 16) | (i & 0xffff)
}

#[test]
fn scattered_rewrites_with_an_open_view_never_run_out_of_mappings() {
    let Ok(saved) = std::fs::read_to_string(SYSCTL) else {
        eprintln!("SKIPPED: {SYSCTL} is not readable");
        return;
    };
    if std::fs::write(SYSCTL, LIMIT.to_string()).is_err() {
        eprintln!("SKIPPED: lowering {SYSCTL} needs root");
        return;
    }
    let _restore = MapCountGuard(saved.trim().to_string());

    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().to_str().unwrap()).unwrap();
    let writer = db.connect().unwrap();
    let n = NBLOCKS * PER_BLOCK;
    let mut a = writer
        .create_raw("A", "<u8", 8, &[n], Order::C, BLK)
        .unwrap();
    {
        let mut v = a.view_mut::<u64>().unwrap();
        for (k, x) in v.iter_mut().enumerate() {
            let k = k as u64;
            *x = value(k / PER_BLOCK, k % PER_BLOCK, 0);
        }
    }
    writer.commit().unwrap();
    // A view of the whole array stays open across every commit below (raw views are what
    // other languages hold; they are not guarded by the view book).
    let open_view = a.raw_view(0..n).unwrap();
    let read_open = |k: u64| -> u64 {
        // SAFETY: `open_view` maps all `n` elements of the array and keeps its memory
        // reserved; this thread writes through no other view meanwhile.
        unsafe { std::ptr::read_volatile(open_view.ptr.cast::<u64>().add(k as usize)) }
    };
    let mut versions: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut peak = mappings();
    for round in 1..=20u64 {
        for _ in 0..2000 {
            let b = rng.gen_range(0..NBLOCKS);
            *versions.entry(b).or_default() = round;
            let lo = (b * PER_BLOCK) as isize;
            let mut v = a
                .slice_mut::<u64, _>(ndarray::s![lo..lo + PER_BLOCK as isize])
                .unwrap();
            for (i, x) in v.iter_mut().enumerate() {
                *x = value(b, i as u64, round);
            }
        }
        // Never a (false) conflict: nobody else writes.
        writer
            .commit()
            .unwrap_or_else(|e| panic!("commit {round}: {e}"));
        peak = peak.max(mappings());
        // The open view shows the committed state.
        for b in (0..NBLOCKS)
            .step_by(97)
            .chain(versions.keys().copied().take(50))
        {
            let version = versions.get(&b).copied().unwrap_or(0);
            for i in [0, PER_BLOCK - 1] {
                assert_eq!(
                    read_open(b * PER_BLOCK + i),
                    value(b, i, version),
                    "round {round}: block {b} element {i} through the open view"
                );
            }
        }
    }
    assert!(
        peak < LIMIT,
        "{peak} kernel mappings at the peak (limit {LIMIT})"
    );
    // A whole-array scan through a new view, and a reader in chunks, see every version.
    let check_all = |get: &dyn Fn(u64) -> u64| {
        for b in 0..NBLOCKS {
            let version = versions.get(&b).copied().unwrap_or(0);
            assert_eq!(get(b * PER_BLOCK + 7), value(b, 7, version), "block {b}");
        }
    };
    {
        let v = a.view::<u64>().unwrap();
        check_all(&|k| v[k as usize]);
    }
    let reader = db.connect().unwrap();
    let r = reader.array("A").unwrap();
    let chunk = 1024 * PER_BLOCK;
    let mut seen = vec![0u64; n as usize];
    for start in (0..n).step_by(chunk as usize) {
        let v = r
            .slice::<u64, _>(ndarray::s![start as isize..(start + chunk) as isize])
            .unwrap();
        seen[start as usize..(start + chunk) as usize].copy_from_slice(v.as_slice().unwrap());
    }
    check_all(&|k| seen[k as usize]);
    // And the writer still commits.
    a.slice_mut::<u64, _>(ndarray::s![0..1]).unwrap()[0] = 42;
    writer.commit().unwrap();
    assert_eq!(read_open(0), 42);
    assert!(mappings() < LIMIT);
}
