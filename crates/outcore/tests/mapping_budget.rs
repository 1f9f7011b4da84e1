//! The mapping budget under a fragmenting history: many commits each rewriting scattered 4 KiB
//! pages leave blocks stored as a whole version with page deltas over it (format 2). A view of
//! the whole array, a scan and a further commit must still work, read exactly what was
//! written, and keep the process's kernel mappings under the budget (a quarter of
//! `vm.max_map_count`): blocks of many pieces are composed into fetched memory instead of
//! being mapped piece by piece.

use outcore::array::Order;
use outcore::db::Database;

const BLK: usize = 2 << 20;
const BLOCKS: usize = 64; // a 128 MiB array
const COMMITS: usize = 50;
const PAGES_PER_COMMIT: usize = 500; // about 8 pages of every block per commit

/// Lines of /proc/self/maps: the kernel mappings of this process.
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn scattered_page_commits_stay_within_the_mapping_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(tmp.path().join("db").to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let len = BLOCKS * BLK;
    let mut shadow = vec![0u8; len];
    let mut a = conn.create::<u8>("a", &[len as u64], Order::C).unwrap();
    {
        let mut v = a.view_mut::<u8>().unwrap();
        for (i, x) in v.iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
    }
    for (i, x) in shadow.iter_mut().enumerate() {
        *x = (i % 251) as u8;
    }
    conn.commit().unwrap();

    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    for c in 0..COMMITS {
        let mut v = a.view_mut::<u8>().unwrap();
        for _ in 0..PAGES_PER_COMMIT {
            let at = next(len / 4096) * 4096 + next(4096);
            let value = (c as u8).wrapping_mul(31).wrapping_add(7);
            v[at] = value;
            shadow[at] = value;
        }
        drop(v);
        conn.commit().unwrap();
    }

    // A fresh connection maps the whole array at the head: every block has a history of
    // scattered deltas.
    let reader = db.connect().unwrap();
    let b = reader.array("a").unwrap();
    let before = mappings();
    let view = b.view::<u8>().unwrap();
    let equal = view.as_slice().unwrap() == &shadow[..];
    let during = mappings();
    drop(view);
    eprintln!(
        "whole-array view: {} kernel mappings",
        during - before.min(during)
    );
    assert!(equal, "the scan reads exactly what was committed");
    let budget = outcore::vm::max_map_count() / 4;
    assert!(
        during - before.min(during) < budget,
        "a whole-array view took {} kernel mappings (budget {budget})",
        during - before.min(during)
    );
    assert!(
        during - before.min(during) < 8 * BLOCKS,
        "a few kernel mappings per block at most (blocks of many pieces are fetched, or the \
         window fetches everything): {} mappings for {BLOCKS} blocks",
        during - before.min(during)
    );

    // And the array still takes commits.
    let mut a = conn.array("a").unwrap();
    a.view_mut::<u8>().unwrap()[12345] = 99;
    shadow[12345] = 99;
    conn.commit().unwrap();
    reader.abort().unwrap(); // a boundary: moves to the head
    assert!(b.view::<u8>().unwrap().as_slice().unwrap() == &shadow[..]);
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
