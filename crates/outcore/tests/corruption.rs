//! Damaged store files: bytes flipped and files truncated behind the store's back are reported
//! as errors naming the damaged block and version — found by `verify`, by reads and by the
//! mapping path — and nothing panics or crashes.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use outcore::array::Order;
use outcore::db::Database;
use outcore::storage::{Key, LocalOptions, LocalStorage, Oid, Storage};
use outcore::Error;

const BLK: usize = 2 << 20;

/// A store with one array of 12 blocks of distinct data in small segments; returns its dir.
fn make_store() -> (tempfile::TempDir, PathBuf, Oid) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let opts = LocalOptions {
        segment_bytes: 4 * BLK as u64,
        ..LocalOptions::default()
    };
    // Kept open, so the database below shares it (and its small segment size).
    let _store = LocalStorage::open_with(&dir, opts).unwrap();
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn
        .create::<u64>("a", &[(12 * BLK / 8) as u64], Order::C)
        .unwrap();
    // Three commits of four blocks each: three segments.
    let per_commit = 4 * BLK / 8;
    for part in 0..3 {
        let mut v = a.view_mut::<u64>().unwrap();
        for i in part * per_commit..(part + 1) * per_commit {
            v[i] = i as u64 + 1;
        }
        drop(v);
        conn.commit().unwrap();
    }
    let file = a.meta().unwrap().file;
    (tmp, dir, file)
}

fn segments(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn flipped_bytes_are_found_by_verify_and_reads() {
    let (_tmp, dir, file) = make_store();
    let store = LocalStorage::open(&dir).unwrap();
    let head = store.head().unwrap();
    let tid_of = |b: u64| {
        store
            .locate(Key::Block { file, index: b }, head)
            .unwrap()
            .tid()
            .unwrap()
    };
    // Flip one byte inside five different blocks.
    let damaged: Vec<u64> = vec![0, 3, 5, 8, 11];
    for &b in &damaged {
        let key = Key::Block { file, index: b };
        let outcore::storage::Located::Mapped(e) = store.locate(key, head).unwrap() else {
            panic!("mappable");
        };
        let path = format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&*e.file)
        );
        let rw = OpenOptions::new().write(true).open(path).unwrap();
        let at = e.offset + (b * 7919) % e.len;
        let mut byte = [0u8];
        e.file.read_exact_at(&mut byte, at).unwrap();
        rw.write_all_at(&[!byte[0]], at).unwrap();
    }
    let report = store.verify().unwrap();
    let mut found: Vec<u64> = report
        .problems
        .iter()
        .map(|p| match p {
            Error::Corrupt {
                key: Key::Block { index, .. },
                tid,
                ..
            } => {
                assert_eq!(*tid, tid_of(*index));
                *index
            }
            other => panic!("unexpected problem {other}"),
        })
        .collect();
    found.sort();
    assert_eq!(found, damaged, "verify finds exactly the damaged blocks");
    for b in 0..12 {
        let r = store.load(Key::Block { file, index: b }, head);
        assert_eq!(r.is_err(), damaged.contains(&b), "block {b}: {r:?}");
    }
}

#[test]
fn truncated_segments_are_errors_not_crashes() {
    let (_tmp, dir, file) = make_store();
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "{segs:?}");
    let victim = &segs[1];
    let len = std::fs::metadata(victim).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let store = LocalStorage::open(&dir).unwrap();
    let head = store.head().unwrap();
    let report = store.verify().unwrap();
    assert!(!report.problems.is_empty());
    let mut bad = 0;
    for b in 0..12 {
        let key = Key::Block { file, index: b };
        match store.locate(key, head) {
            Ok(_) => {}
            Err(Error::Corrupt { key: k, reason, .. }) => {
                assert_eq!(k, key);
                assert!(reason.contains("truncated"), "{reason}");
                bad += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        if bad > 0 {
            assert!(store.load(key, head).is_err() || store.locate(key, head).is_ok());
        }
    }
    assert!(bad >= 1, "some block lies past the new end");
    assert_eq!(report.problems.len(), bad);
    // Through the database: mapping the damaged part is an error, the rest still reads.
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    assert!(matches!(a.view::<u64>(), Err(Error::Corrupt { .. })));
    let first = a.slice::<u64, _>(ndarray::s![0..10]).unwrap();
    assert_eq!(first[9], 10);
}

/// Damaged metadata records are damaged data, never a missing name or a bad argument: a root
/// record that does not parse, a name whose metadata record is gone, a metadata record that
/// does not parse. Each error names the record.
#[test]
fn damaged_root_and_array_records_are_corrupt() {
    use outcore::storage::{CommitRequest, MemStorage, TxnMeta, Write};
    let root = Key::Meta(Oid(0));
    let store = std::sync::Arc::new(MemStorage::new());
    let put = |key: Key, bytes: &[u8]| {
        store
            .commit(CommitRequest {
                base: store.head().unwrap(),
                writes: vec![(key, Write::Store(bytes.to_vec()))],
                meta: TxnMeta::new("test", "damage"),
            })
            .unwrap()
    };
    let db = Database::from_storage(store.clone());

    let damaged = put(root, b"not a root record");
    match db.connect() {
        Err(Error::Corrupt { key, tid, .. }) => assert_eq!((key, tid), (root, damaged)),
        other => panic!("{other:?}"),
    }

    // The root format of docs/FORMAT.md: "a" names a record that was never written, "b" one
    // that holds no array metadata.
    put(root, b"outcore-root 1\na\t5\nb\t7\n");
    let garbage = put(Key::Meta(Oid(7)), b"outcore-array 1\nitemsize=x\n");
    let conn = db.connect().unwrap();
    assert_eq!(conn.names().unwrap(), ["a", "b"]);
    match conn.array("a") {
        Err(Error::Corrupt { key, reason, .. }) => {
            assert_eq!(key, Key::Meta(Oid(5)));
            assert!(reason.contains("\"a\""), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    match conn.array("b") {
        Err(Error::Corrupt { key, tid, reason }) => {
            assert_eq!((key, tid), (Key::Meta(Oid(7)), garbage));
            assert!(reason.contains("bad array metadata"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Tools reading the names without a connection see the same.
    match outcore::db::named_arrays(&*store, conn.tid().unwrap()) {
        Err(Error::Corrupt { key, .. }) => assert_eq!(key, Key::Meta(Oid(5))),
        other => panic!("{other:?}"),
    }
}
