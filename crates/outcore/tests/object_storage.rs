//! Block bodies in an S3-compatible object store (the blob layer): failures commit nothing,
//! pack deletes what nothing references (after the grace period) and keeps the rest, and a
//! database created with `blobs` remembers it. The conformance suite runs on these stores too
//! (`storage_conformance.rs`, `local_index_s3` and `pg_index_s3`). Needs the test S3 server
//! (scripts/s3-test-server.sh); skipped loudly without one.

use std::sync::Arc;
use std::time::Duration;

mod common;

use outcore::array::Order;
use outcore::db::{Database, DbOptions};
use outcore::storage::{
    BlobOptions, BlobStorage, CommitRequest, Key, LocalStorage, Oid, Storage, Tid, TxnMeta, Write,
};
use outcore::Error;

fn store_one(s: &dyn Storage, base: Tid, key: Key, data: Vec<u8>) -> outcore::Result<Tid> {
    s.commit(CommitRequest {
        base,
        writes: vec![(key, Write::Store(data))],
        meta: TxnMeta::new("tester", format!("store {key}")),
    })
}

fn block(file: u64, index: u64) -> Key {
    Key::Block {
        file: Oid(file),
        index,
    }
}

/// An embedded index store in a temp dir.
fn local_index() -> (tempfile::TempDir, Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let index = LocalStorage::open(dir.path().join("index")).unwrap();
    (dir, Arc::new(index))
}

/// Child role of `failed_uploads_commit_nothing`: commits through the index store at
/// `OUTCORE_S3_CHILD` with credentials the object store refuses; prints `@error <message>`.
#[test]
fn refused_upload_child() {
    let Ok(dir) = std::env::var("OUTCORE_S3_CHILD") else {
        return;
    };
    let url = std::env::var("OUTCORE_S3_URL").unwrap();
    let index: Arc<dyn Storage> = Arc::new(LocalStorage::open(dir).unwrap());
    let s = BlobStorage::new(index.clone(), &url, BlobOptions::default()).unwrap();
    let k = block(1, 0);
    let head = index.head().unwrap();
    let err = s
        .commit(CommitRequest {
            base: head,
            writes: vec![
                (k, Write::Store(vec![8; 5000])),
                (block(1, 1), Write::Store(vec![9; 100])),
                (Key::Meta(Oid(5)), Write::Store(b"meta".to_vec())),
            ],
            meta: TxnMeta::default(),
        })
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    // Reads of a body the store cannot fetch fail too, never read zeros.
    let read = s.load(k, head).unwrap_err();
    println!("\n@error {err}\n@read {read}");
}

#[test]
fn failed_uploads_commit_nothing() {
    let Some(url) = common::s3::s3_store_url("fail") else {
        return;
    };
    let (dir, index) = local_index();
    let good = BlobStorage::new(index.clone(), &url, BlobOptions::default()).unwrap();
    let k = block(1, 0);
    let t1 = store_one(&good, Tid::ZERO, k, vec![7; 5000]).unwrap();
    // Another process commits with credentials the object store refuses (not retried: a
    // 403 is final), so every upload fails.
    let wrong_secret = format!("wrong{:08x}", rand::random::<u32>());
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "refused_upload_child", "--nocapture"])
        .env("OUTCORE_S3_CHILD", dir.path().join("index"))
        .env("OUTCORE_S3_URL", &url)
        .env("AWS_SECRET_ACCESS_KEY", &wrong_secret)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let error = text.lines().find(|l| l.starts_with("@error")).unwrap();
    assert!(error.contains("nothing was committed"), "{error}");
    let read = text.lines().find(|l| l.starts_with("@read")).unwrap();
    eprintln!("{error}\n{read}");
    assert!(
        read.contains("fetching the body of block 0 of file 1"),
        "{read}"
    );
    assert!(
        !text.contains(&wrong_secret),
        "the secret in a message: {text}"
    );
    // The index is as before: same head, same log, no new key.
    assert_eq!(index.head().unwrap(), t1);
    assert_eq!(index.log(Tid::ZERO, Tid::MAX).unwrap().len(), 1);
    assert!(index.load(Key::Meta(Oid(5)), Tid::MAX).unwrap().is_none());
    assert_eq!(good.load(k, Tid::MAX).unwrap().unwrap().data, vec![7; 5000]);
    assert!(good.load(block(1, 1), Tid::MAX).unwrap().is_none());
    assert!(good.verify().unwrap().problems.is_empty());
}

#[test]
fn a_refused_commit_leaves_no_objects() {
    let Some(url) = common::s3::s3_store_url("conflict") else {
        return;
    };
    let (_dir, index) = local_index();
    let s = BlobStorage::new(index, &url, BlobOptions::default()).unwrap();
    let k = block(1, 0);
    let t1 = store_one(&s, Tid::ZERO, k, vec![1; 4096]).unwrap();
    store_one(&s, t1, k, vec![2; 4096]).unwrap();
    assert_eq!(common::s3::list_objects(&url).len(), 2);
    let conflict = store_one(&s, t1, k, vec![3; 4096]);
    assert!(
        matches!(conflict, Err(Error::Conflict { .. })),
        "{conflict:?}"
    );
    assert_eq!(
        common::s3::list_objects(&url).len(),
        2,
        "the loser's upload is deleted"
    );
}

#[test]
fn pack_deletes_unreferenced_objects_after_the_grace_period() {
    let Some(url) = common::s3::s3_store_url("pack") else {
        return;
    };
    let (_dir, index) = local_index();
    let patient = BlobStorage::new(index.clone(), &url, BlobOptions::default()).unwrap();
    let k = block(3, 0);
    let other = block(3, 1);
    let t1 = store_one(&patient, Tid::ZERO, k, vec![1; 8192]).unwrap();
    let t2 = store_one(&patient, t1, other, vec![2; 100]).unwrap();
    let t3 = store_one(&patient, t2, k, vec![3; 8192]).unwrap();
    // A body whose commit never happened (a crash after the upload), and an object that is
    // no body at all.
    let prefix = url.split_once("//").unwrap().1.split_once('/').unwrap().1;
    let stray = format!("{prefix}/3/0/{:032x}", 0xdead_beef_u128);
    common::s3::put_object(&url, &stray, vec![4; 10]);
    let foreign = format!("{prefix}/README");
    common::s3::put_object(&url, &foreign, b"not a body".to_vec());
    let objects = common::s3::list_objects(&url);
    assert_eq!(objects.len(), 5, "{objects:?}");
    let current = [
        patient.object_path(k, t3).unwrap().unwrap(),
        patient.object_path(other, t3).unwrap().unwrap(),
    ];
    let replaced = patient.object_path(k, t1).unwrap().unwrap();

    // Younger than the grace period (an hour): kept, though the index dropped version t1.
    let stats = patient.pack(t3).unwrap();
    assert_eq!(stats.horizon, t3);
    assert_eq!(stats.versions_removed, 1);
    assert_eq!(stats.body_bytes_before, stats.body_bytes_after);
    assert_eq!(common::s3::list_objects(&url), objects);

    // Past it (grace zero): the replaced body and the stray one go; current bodies and the
    // foreign object stay.
    let hasty = BlobStorage::new(
        index,
        &url,
        BlobOptions {
            grace: Duration::ZERO,
            ..BlobOptions::default()
        },
    )
    .unwrap();
    let stats = hasty.pack(t3).unwrap();
    assert_eq!(stats.body_bytes_before - stats.body_bytes_after, 8192 + 10);
    let mut left = common::s3::list_objects(&url);
    left.sort();
    let mut expected = vec![current[0].clone(), current[1].clone(), foreign];
    expected.sort();
    assert_eq!(left, expected);
    assert!(!left.contains(&replaced) && !left.contains(&stray));
    assert_eq!(hasty.load(k, t3).unwrap().unwrap().data, vec![3; 8192]);
    assert_eq!(hasty.load(other, t3).unwrap().unwrap().data, vec![2; 100]);
    assert!(hasty.verify().unwrap().problems.is_empty());
}

#[test]
fn verify_reports_missing_objects() {
    let Some(url) = common::s3::s3_store_url("verify") else {
        return;
    };
    let (_dir, index) = local_index();
    let s = BlobStorage::new(index, &url, BlobOptions::default()).unwrap();
    let k = block(1, 0);
    let t1 = store_one(&s, Tid::ZERO, k, vec![1; 4096]).unwrap();
    let t2 = store_one(&s, t1, k, vec![2; 4096]).unwrap();
    let gone = s.object_path(k, t1).unwrap().unwrap();
    common::s3::delete_object(&url, &gone);
    let report = s.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let text = report.problems[0].to_string();
    assert!(
        text.contains("missing") && text.contains("block 0 of file 1"),
        "{text}"
    );
    let err = s.load(k, t1).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { tid, .. } if tid == t1),
        "{err}"
    );
    assert_eq!(s.load(k, t2).unwrap().unwrap().data, vec![2; 4096]);
}

#[test]
fn a_database_remembers_its_object_store() {
    let Some(url) = common::s3::s3_store_url("db") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let path = path.to_str().unwrap();
    let options = DbOptions {
        blobs: Some(url.clone()),
        ..DbOptions::default()
    };
    let db = Database::open_with(path, options).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("signal", &[300_000], Order::C).unwrap();
    a.view_mut::<f64>().unwrap().fill(1.5);
    conn.commit().unwrap();
    drop((a, conn));
    db.close();
    assert!(
        !common::s3::list_objects(&url).is_empty(),
        "bodies are objects"
    );

    // Reopened with the path alone.
    let db = Database::open(path).unwrap();
    assert!(db.storage().is_remote());
    assert!(db.storage().describe().contains(&url));
    let conn = db.connect().unwrap();
    let a = conn.array("signal").unwrap();
    assert_eq!(a.view::<f64>().unwrap().sum(), 450_000.0);
    drop((a, conn));
    db.close();

    // Another object store for it is refused, naming both.
    let elsewhere = DbOptions {
        blobs: Some(format!("{url}-other")),
        ..DbOptions::default()
    };
    let err = Database::open_with(path, elsewhere).unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
    // So is object storage for a store created without it.
    let plain = dir.path().join("plain");
    let conn = Database::open(plain.to_str().unwrap())
        .unwrap()
        .connect()
        .unwrap();
    conn.create::<u8>("x", &[10], Order::C).unwrap();
    conn.commit().unwrap();
    drop(conn);
    let later = DbOptions {
        blobs: Some(url),
        ..DbOptions::default()
    };
    let err = Database::open_with(plain.to_str().unwrap(), later).unwrap_err();
    assert!(
        err.to_string().contains("chosen when a store is created"),
        "{err}"
    );
}

#[test]
fn a_forked_child_is_refused_not_hung() {
    let Some(url) = common::s3::s3_store_url("fork") else {
        return;
    };
    let index: Arc<dyn Storage> = Arc::new(outcore::storage::MemStorage::new());
    let s = BlobStorage::new(index, &url, BlobOptions::default()).unwrap();
    let k = block(1, 0);
    let t = store_one(&s, Tid::ZERO, k, vec![5; 4096]).unwrap();
    // SAFETY: the child only reads through `s` (whose runtime threads it lacks) and exits
    // with `_exit`, running no destructors or atexit handlers of the parent's state.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let refused = matches!(s.load(k, t), Err(e) if e.to_string().contains("forked"));
        // SAFETY: ends the child at once, as above.
        unsafe { libc::_exit(if refused { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status}"
    );
    // The parent's store works on.
    assert_eq!(s.load(k, t).unwrap().unwrap().data, vec![5; 4096]);
}

#[test]
fn the_disk_cache_serves_and_maps_fetched_bodies_within_its_budget() {
    let Some(url) = common::s3::s3_store_url("cache") else {
        return;
    };
    let (_dir, index) = local_index();
    let cache = tempfile::tempdir().unwrap();
    let options = BlobOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        cache_disk_bytes: 3 * 8192,
        ..BlobOptions::default()
    };
    let s = BlobStorage::new(index, &url, options).unwrap();
    let keys: Vec<Key> = (0..5).map(|i| block(1, i)).collect();
    let mut t = Tid::ZERO;
    for (i, &k) in keys.iter().enumerate() {
        t = store_one(&s, t, k, vec![i as u8 + 1; 8192]).unwrap();
    }
    // Nothing fetched yet: nothing cached, nothing mapped.
    assert!(matches!(
        s.locate(keys[0], t).unwrap(),
        outcore::storage::Located::CopyOnly(_)
    ));
    let loaded = s.load_many(&keys, t).unwrap();
    assert!(loaded.iter().all(Option::is_some));
    s.flush_cache();
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(
        cached.iter().sum::<u64>() <= 3 * 8192 && !cached.is_empty(),
        "{cached:?}"
    );
    // With every object gone from the object store, exactly the cached bodies still read,
    // and they are mapped from the cache.
    for path in common::s3::list_objects(&url) {
        common::s3::delete_object(&url, &path);
    }
    let mut served = 0;
    for (i, &k) in keys.iter().enumerate() {
        match s.load(k, t) {
            Ok(v) => {
                assert_eq!(v.unwrap().data, vec![i as u8 + 1; 8192]);
                served += 1;
                let outcore::storage::Located::Mapped(e) = s.locate(k, t).unwrap() else {
                    panic!("block {i} is cached but not mapped");
                };
                let mut buf = vec![0; 8192];
                std::os::unix::fs::FileExt::read_exact_at(&*e.file, &mut buf, e.offset).unwrap();
                assert_eq!(buf, vec![i as u8 + 1; 8192]);
            }
            Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("missing"), "{reason}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(served, cached.len(), "every cached body, and only those");
}
