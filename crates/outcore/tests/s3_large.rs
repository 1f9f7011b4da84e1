//! An array larger than the disk cache's budget, with its bodies in an object store: scanned
//! and rewritten correctly, the cache directory within its budget throughout. 1 GiB through
//! a 128 MiB cache by default (the 4 GiB through 512 MiB has the same ratio; set
//! `OUTCORE_S3_LARGE_MIB` to change the array's size). Own test binary: it moves gigabytes.
//!
//! Needs the test S3 server (scripts/s3-test-server.sh).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outcore::array::Order;
use outcore::db::{Database, DbOptions};

/// Bytes of the regular files in `dir` (the cache's bodies and temporary files).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Bytes of the files under `dir` this process maps although they were deleted (evicted
/// bodies still mapped by a view): disk space the cache's budget does not see.
fn mapped_deleted_bytes(dir: &Path) -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dir = dir.to_str().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for line in maps.lines() {
        let Some(at) = line.find(dir) else { continue };
        let path = &line[at..];
        let Some(path) = path.strip_suffix(" (deleted)") else {
            continue;
        };
        if seen.insert(path.to_owned()) {
            // The body's length is in its name's object, gone; its mappings' extents say it.
            let range = line.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            total += u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
        }
    }
    total
}

/// Samples the cache directory's size every few milliseconds until dropped; the largest seen.
struct Watcher {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(dir: PathBuf) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, max) = (stop.clone(), max.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    max.fetch_max(dir_bytes(&dir), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Watcher {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn max(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.max.load(Ordering::Relaxed)
    }
}

/// Opens the store at `path` with the disk cache in `cache` of `budget` bytes.
fn open(path: &str, url: &str, cache: &Path, budget: u64) -> Database {
    let options = DbOptions {
        blobs: Some(url.to_owned()),
        cache_dir: Some(cache.to_path_buf()),
        cache_disk_bytes: Some(budget),
        ..DbOptions::default()
    };
    Database::open_with(path, options).unwrap()
}

/// Checks every element of the array "big" is `f(i)`, reading it all through one view.
fn scan(db: &Database, f: impl Fn(u64) -> u64) {
    let conn = db.connect().unwrap();
    let a = conn.array("big").unwrap();
    let view = a.view::<u64>().unwrap();
    for (i, &x) in view.iter().enumerate() {
        if x != f(i as u64) {
            panic!("element {i}: {x}, expected {}", f(i as u64));
        }
    }
}

#[test]
fn an_array_larger_than_the_disk_cache_is_scanned_and_rewritten() {
    let Some(url) = common::s3::s3_store_url("large") else {
        return;
    };
    let mib: u64 = std::env::var("OUTCORE_S3_LARGE_MIB")
        .map(|s| s.parse().expect("OUTCORE_S3_LARGE_MIB: a number of MiB"))
        .unwrap_or(1024);
    let budget = (mib << 20) / 8;
    let n = (mib << 20) / 8;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let path = path.to_str().unwrap();
    let cache = tmp.path().join("cache");

    let db = open(path, &url, &cache, budget);
    let conn = db.connect().unwrap();
    let mut a = conn.create::<u64>("big", &[n], Order::C).unwrap();
    for (i, x) in a.view_mut::<u64>().unwrap().iter_mut().enumerate() {
        *x = i as u64;
    }
    conn.commit().unwrap();
    drop((a, conn));
    db.close();

    // Scanned through the cache (every body fetched, most evicted again), then rewritten.
    let watch = Watcher::start(cache.clone());
    let db = open(path, &url, &cache, budget);
    scan(&db, |i| i);
    let conn = db.connect().unwrap();
    let mut a = conn.array("big").unwrap();
    for x in a.view_mut::<u64>().unwrap().iter_mut() {
        *x = *x * 3 + 1;
    }
    conn.commit().unwrap();
    drop((a, conn));
    db.close();
    let db = open(path, &url, &cache, budget);
    scan(&db, |i| i * 3 + 1);
    let leaked = mapped_deleted_bytes(&cache);
    db.close();
    let max = watch.max();
    // Room is made before a body is written, so even bodies being written count.
    eprintln!("{mib} MiB through a {} MiB cache: the directory held at most {} MiB; {} MiB of evicted bodies still mapped at the end", budget >> 20, max >> 20, leaked >> 20);
    assert!(max <= budget, "{max} > {budget}");
    assert!(dir_bytes(&cache) <= budget);
    assert!(
        leaked <= budget,
        "{leaked} bytes of evicted bodies still mapped"
    );
}

#[test]
fn large_bodies_go_up_in_parts_and_come_down_in_ranges() {
    use outcore::storage::{
        BlobOptions, BlobStorage, CommitRequest, Key, MemStorage, Oid, Storage, Tid, TxnMeta, Write,
    };
    let Some(url) = common::s3::s3_store_url("parts") else {
        return;
    };
    let index: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let s = BlobStorage::new(index, &url, BlobOptions::default()).unwrap();
    let (big, small) = (
        Key::Block {
            file: Oid(1),
            index: 0,
        },
        Key::Block {
            file: Oid(1),
            index: 1,
        },
    );
    // 40 MiB and a bit (5 parts of 8 MiB and a short one), every 8 bytes different.
    let body: Vec<u8> = (0..(40u64 << 20) / 8 + 3)
        .flat_map(|i| (i * 0x9e37_79b9_7f4a_7c15).to_le_bytes())
        .collect();
    let t = s
        .commit(CommitRequest {
            base: Tid::ZERO,
            writes: vec![
                (big, Write::Store(body.clone())),
                (small, Write::Store(vec![5; 1 << 20])),
            ],
            meta: TxnMeta::default(),
        })
        .unwrap();
    let path = s.object_path(big, t).unwrap().unwrap();
    let etag = common::s3::etag(&url, &path);
    assert!(
        etag.trim_matches('"').ends_with("-6"),
        "not uploaded in 6 parts: {etag}"
    );
    let small_etag = common::s3::etag(&url, &s.object_path(small, t).unwrap().unwrap());
    assert!(
        !small_etag.contains('-'),
        "a small body is one PUT: {small_etag}"
    );
    assert!(
        s.load(big, t).unwrap().unwrap().data == body,
        "ranged fetch differs"
    );
    assert!(s.verify().unwrap().problems.is_empty());
    // An object shorter than its pointer says, or damaged inside one range: corrupt.
    common::s3::damage_object(&url, &path, (17 << 20) + 5);
    let err = s.load(big, t).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    common::s3::put_object(&url, &path, body[..body.len() - 4096].to_vec());
    let err = s.load(big, t).unwrap_err();
    assert!(matches!(err, outcore::Error::Corrupt { .. }), "{err:?}");
    eprintln!("{err}");
}

#[test]
fn sequential_loads_read_ahead_and_check_what_they_read() {
    use outcore::storage::{
        BlobOptions, BlobStorage, CommitRequest, Key, MemStorage, Oid, Storage, Tid, TxnMeta, Write,
    };
    let Some(url) = common::s3::s3_store_url("ahead") else {
        return;
    };
    let index: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let s = BlobStorage::new(index, &url, BlobOptions::default()).unwrap();
    let key = |index| Key::Block {
        file: Oid(4),
        index,
    };
    let body = |i: u64| vec![i as u8 + 1; 100_000 + i as usize];
    let t = s
        .commit(CommitRequest {
            base: Tid::ZERO,
            writes: (0..24)
                .filter(|&i| i != 7) // a hole among them
                .map(|i| (key(i), Write::Store(body(i))))
                .collect(),
            meta: TxnMeta::default(),
        })
        .unwrap();
    // Damaged before the scan: the body read ahead is checked like any other.
    common::s3::damage_object(&url, &s.object_path(key(12), t).unwrap().unwrap(), 99);
    for round in 0..2 {
        for i in 0..24 {
            match (i, s.load(key(i), t)) {
                (7, got) => assert!(got.unwrap().is_none(), "a hole"),
                (12, got) => {
                    let err = got.unwrap_err();
                    assert!(err.to_string().contains("checksum"), "{err}");
                }
                (i, got) => assert!(
                    got.unwrap().unwrap().data == body(i),
                    "round {round}, block {i}"
                ),
            }
        }
    }
    // Out of order and repeated loads read right too.
    for i in [20, 3, 21, 3, 22, 23, 0] {
        assert!(
            s.load(key(i), t).unwrap().unwrap().data == body(i),
            "block {i}"
        );
    }
}
