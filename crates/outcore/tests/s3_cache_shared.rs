//! The default disk cache (under `$XDG_CACHE_HOME/outcore`, one directory per object store)
//! shared by two processes of a node reading the same array at once, each evicting bodies
//! the other may have mapped; `cache_disk_bytes = 0` turns it off.
//!
//! Needs the test S3 server (scripts/s3-test-server.sh).

mod common;

use std::path::Path;
use std::process::Command;

use outcore::array::Order;
use outcore::db::{Database, DbOptions};

/// Elements of the array: 48 MiB of u64, 24 blocks.
const N: u64 = 6 << 20;
/// The cache budget of the readers: a third of the array.
const BUDGET: u64 = 16 << 20;

fn options(budget: u64) -> DbOptions {
    DbOptions {
        cache_disk_bytes: Some(budget),
        ..DbOptions::default()
    }
}

/// Child role: opens the store `OUTCORE_SHARED_CHILD` with the default cache directory and
/// `OUTCORE_SHARED_BUDGET`, and checks every element, four times over.
#[test]
fn reader_child() {
    let Ok(path) = std::env::var("OUTCORE_SHARED_CHILD") else {
        return;
    };
    let budget: u64 = std::env::var("OUTCORE_SHARED_BUDGET")
        .unwrap()
        .parse()
        .unwrap();
    for _ in 0..4 {
        let db = Database::open_with(&path, options(budget)).unwrap();
        let conn = db.connect().unwrap();
        let a = conn.array("a").unwrap();
        for (i, &x) in a.view::<u64>().unwrap().iter().enumerate() {
            assert_eq!(x, i as u64 * 7, "element {i}");
        }
        drop((a, conn));
        db.close();
    }
}

/// Runs `n` reader children at once with cache home `xdg` and `budget`; all must succeed.
fn readers(path: &str, xdg: &Path, budget: u64, n: usize) {
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "reader_child", "--nocapture"])
                .env("OUTCORE_SHARED_CHILD", path)
                .env("OUTCORE_SHARED_BUDGET", budget.to_string())
                .env("XDG_CACHE_HOME", xdg)
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a reader failed");
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn two_processes_share_the_default_disk_cache() {
    let Some(url) = common::s3::s3_store_url("shared") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let path = path.to_str().unwrap();
    let create = DbOptions {
        blobs: Some(url),
        ..options(0)
    };
    let db = Database::open_with(path, create).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<u64>("a", &[N], Order::C).unwrap();
    for (i, x) in a.view_mut::<u64>().unwrap().iter_mut().enumerate() {
        *x = i as u64 * 7;
    }
    conn.commit().unwrap();
    drop((a, conn));
    db.close();

    // Off: no directory made.
    let off = tmp.path().join("xdg-off");
    readers(path, &off, 0, 1);
    assert!(!off.join("outcore").exists());

    // Two readers at once on one default directory, for this store only.
    let xdg = tmp.path().join("xdg");
    readers(path, &xdg, BUDGET, 2);
    let dirs: Vec<_> = std::fs::read_dir(xdg.join("outcore"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let name = dirs[0].file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("outcore-test-"), "{name}");
    let held = dir_bytes(&dirs[0]);
    // Each process makes room before it writes, but cannot see the body the other is
    // writing at that moment: over by at most one block.
    assert!(held > 0 && held <= BUDGET + (2 << 20), "{held}");
}
