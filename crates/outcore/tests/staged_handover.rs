//! Block versions staged by one process and published by another (dask workers and the
//! client that commits): the writer stages and hands over, exits; the committing process
//! adopts the references into its transaction and commits them atomically, without a copy.
//! A pack before the commit keeps what the committing process holds; a version reclaimed
//! before it was held fails the commit cleanly (nothing written), never reads as zeros.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use outcore::array::Order;
use outcore::db::Database;
use outcore::storage::{StagedRef, Tid};

const BLK: usize = 64 << 10;

fn block_bytes(b: u64) -> Vec<u8> {
    (0..BLK).map(|i| (i as u64 * 7 + b * 13) as u8).collect()
}

/// The writer: stages blocks 0..3 of the array's contents and prints their references.
#[test]
fn child_entry() {
    let Ok(dir) = std::env::var("OUTCORE_HANDOVER_DIR") else {
        return;
    };
    let db = Database::open(&dir).unwrap();
    for b in 0..3u64 {
        let r = db
            .stage_block(&block_bytes(b))
            .unwrap()
            .expect("the store stages");
        println!("\n@{b} {} {} {} {}", r.segment, r.offset, r.len, r.checksum);
    }
}

/// Runs the writer to its end and returns (block, reference) pairs.
fn staged_by_another_process(dir: &str) -> Vec<(u64, StagedRef)> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("OUTCORE_HANDOVER_DIR", dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let refs: Vec<(u64, StagedRef)> = out
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.split_once('@').map(|(_, r)| r.to_string()))
        .map(|l| {
            let f: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            (
                f[0],
                StagedRef {
                    segment: f[1] as u32,
                    offset: f[2],
                    len: f[3],
                    checksum: f[4],
                },
            )
        })
        .collect();
    assert!(child.wait().unwrap().success());
    assert_eq!(refs.len(), 3);
    refs
}

fn setup() -> (tempfile::TempDir, String, Database) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db").to_str().unwrap().to_string();
    let db = Database::open(&dir).unwrap();
    let conn = db.connect().unwrap();
    conn.create_raw("a", "|u1", 1, &[3 * BLK as u64], Order::C, BLK)
        .unwrap();
    conn.commit().unwrap();
    (tmp, dir, db)
}

#[test]
fn versions_staged_by_an_exited_process_are_adopted_and_survive_pack() {
    let (_tmp, dir, db) = setup();
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    let refs = staged_by_another_process(&dir);
    for (b, r) in &refs {
        a.adopt(*b, *r).unwrap();
    }
    // The writer is gone: without this process's holds, pack would reclaim its segment.
    db.storage().pack(Tid::MAX).unwrap();
    let other = db.connect().unwrap();
    assert!(
        other
            .array("a")
            .unwrap()
            .view::<u8>()
            .unwrap()
            .iter()
            .all(|&x| x == 0),
        "nothing is visible before the commit"
    );
    conn.commit().unwrap();
    let v = a.view::<u8>().unwrap();
    for b in 0..3 {
        assert!(
            v.as_slice().unwrap()[b * BLK..(b + 1) * BLK] == block_bytes(b as u64)[..],
            "block {b}"
        );
    }
    drop(v);
    db.storage().pack(Tid::MAX).unwrap();
    let fresh = db.connect().unwrap();
    let v = fresh.array("a").unwrap();
    assert!(v.view::<u8>().unwrap().as_slice().unwrap()[..BLK] == block_bytes(0)[..]);
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_version_reclaimed_before_it_was_held_fails_the_commit_cleanly() {
    let (_tmp, dir, db) = setup();
    let refs = staged_by_another_process(&dir);
    // Nobody holds the dead writer's segment: pack reclaims it.
    db.storage().pack(Tid::MAX).unwrap();
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    a.adopt(refs[0].0, refs[0].1).unwrap();
    let err = conn.commit().unwrap_err();
    assert!(err.to_string().contains("is gone"), "{err}");
    conn.abort().unwrap();
    assert!(
        a.view::<u8>().unwrap().iter().all(|&x| x == 0),
        "nothing was committed"
    );
}

#[test]
fn abort_drops_adopted_versions_and_other_stores_refuse_them() {
    let (_tmp, dir, db) = setup();
    let refs = staged_by_another_process(&dir);
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    a.adopt(refs[1].0, refs[1].1).unwrap();
    assert!(a.adopt(7, refs[1].1).is_err(), "past the end of the array");
    conn.abort().unwrap();
    conn.commit().unwrap();
    assert!(a.view::<u8>().unwrap().iter().all(|&x| x == 0));

    let mem = Database::open("mem:").unwrap();
    let c = mem.connect().unwrap();
    let m = c
        .create_raw("m", "|u1", 1, &[BLK as u64], Order::C, BLK)
        .unwrap();
    assert!(m.adopt(0, refs[0].1).is_err(), "a mem: store cannot adopt");
}
