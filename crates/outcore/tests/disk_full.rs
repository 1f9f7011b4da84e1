//! A full disk during commits: a clear error, nothing half-written, and the store works again
//! once space is freed. Uses a small tmpfs (needs root; skipped loudly otherwise).

use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

mod common;
use common::Mount;

/// Serialises the tests of this file: a process forked by one test (`mount`) holds copies of
/// every descriptor the other has open at that moment, which would keep the space of a
/// deleted file in use and the mount busy.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn disk_full_is_a_clear_error_and_recoverable() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mount) = Mount::new(&["-t", "tmpfs", "-o", "size=40m", "tmpfs"], &mnt) else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    };
    // Take most of the space with a file we can delete later.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 24 << 20]).unwrap();

    let dir = mnt.join("db");
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<u8>("a", &[2 << 20], Order::C).unwrap();
    a.view_mut::<u8>().unwrap().fill(1);
    let first = conn.commit().unwrap();
    let mut failure = None;
    for round in 2u8..40 {
        a.append(ndarray::Array1::from_elem(2 << 20, round).view().into_dyn())
            .unwrap();
        let free = free_bytes(&mnt);
        match conn.commit() {
            Ok(_) => {}
            Err(e) => {
                // The failed commit gave back the space its block bodies took.
                assert!(free_bytes(&mnt) >= free, "{e}");
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("the small disk filled up");
    let text = err.to_string();
    assert!(
        match &err {
            Error::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            Error::Index(ie) => ie.os_error_kind() == Some(std::io::ErrorKind::StorageFull),
            _ => false,
        },
        "{text}"
    );
    assert!(
        text.contains("No space left") || text.to_lowercase().contains("space"),
        "{text}"
    );
    // Nothing of the failed commit is visible; the store verifies.
    conn.abort().unwrap();
    let shape_after_failure = a.shape().unwrap();
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(db.storage().head().unwrap() >= first);
    // Free space: commits work again and the data is right.
    std::fs::remove_file(&filler).unwrap();
    a.append(ndarray::Array1::from_elem(2 << 20, 99u8).view().into_dyn())
        .unwrap();
    conn.commit().unwrap();
    let v = a.view::<u8>().unwrap();
    assert_eq!(v.len() as u64, shape_after_failure[0] + (2 << 20));
    assert_eq!(v[0], 1);
    assert_eq!(v[v.len() - 1], 99);
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Bytes free for unprivileged writers on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail * st.f_frsize
}

/// Writes `path` until the filesystem refuses more.
fn fill_up(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        while f.write_all(&vec![7u8; chunk]).is_ok() {}
    }
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn says_no_space(err: &Error) -> bool {
    err.to_string()
        .to_lowercase()
        .contains("no space left on device")
}

#[test]
fn failed_pack_leaves_nothing_and_readonly_open_needs_no_space() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mount) = Mount::new(&["-t", "tmpfs", "-o", "size=64m", "tmpfs"], &mnt) else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    };
    let dir = mnt.join("db");
    let url = dir.to_str().unwrap();
    // 8 blocks of 2 MiB, then one of them rewritten: pack must copy 16 MiB of live bodies.
    let db = Database::open(url).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<u8>("a", &[16 << 20], Order::C).unwrap();
    for (i, mut chunk) in a
        .view_mut::<u8>()
        .unwrap()
        .exact_chunks_mut(ndarray::IxDyn(&[2 << 20]))
        .into_iter()
        .enumerate()
    {
        chunk.fill(i as u8 + 1);
    }
    conn.commit().unwrap();
    a.view_mut::<u8>().unwrap()[0] = 100;
    conn.commit().unwrap();
    drop(a);
    let check = |db: &Database| {
        let conn = db.connect().unwrap();
        let a = conn.array("a").unwrap();
        let v = a.view::<u8>().unwrap();
        assert_eq!(v[0], 100);
        for i in 0..8usize {
            assert_eq!(v[(i << 21) + 1], i as u8 + 1);
            assert_eq!(v[((i + 1) << 21) - 1], i as u8 + 1);
        }
        let report = db.storage().verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    };

    // Leave 8 MiB free: pack runs out of space half-way through copying.
    let free = free_bytes(&mnt);
    std::fs::write(mnt.join("filler"), vec![1u8; (free - (8 << 20)) as usize]).unwrap();
    let before = free_bytes(&mnt);
    let segments_before = segment_files(&dir);
    for attempt in 0..2 {
        let err = db.storage().pack(outcore::storage::Tid::MAX).unwrap_err();
        assert!(says_no_space(&err), "attempt {attempt}: {err}");
        assert_eq!(segment_files(&dir), segments_before, "attempt {attempt}");
        assert!(
            free_bytes(&mnt) >= before,
            "attempt {attempt}: pack left its output"
        );
        check(&db);
    }

    // The disk completely full: a read-only open still works.
    drop(conn);
    drop(db);
    std::fs::write(mnt.join("spare"), vec![1u8; 64 << 10]).unwrap();
    fill_up(&mnt.join("filler2"));
    let ro = Database::open_with(
        url,
        outcore::db::DbOptions {
            readonly: true,
            ..Default::default()
        },
    )
    .unwrap();
    check(&ro);
    drop(ro);

    // An index write cut short by the full disk says so too (LMDB reports a short write
    // as EIO), and so does one that finds no space at all.
    std::fs::remove_file(mnt.join("spare")).unwrap();
    let db = Database::open(url).unwrap();
    let s = db.storage();
    let oid = outcore::storage::Oid(s.new_oids(1).unwrap().start);
    for round in 0..2 {
        let err = s
            .commit(outcore::storage::CommitRequest {
                base: s.head().unwrap(),
                writes: vec![(
                    outcore::storage::Key::Meta(oid),
                    outcore::storage::Write::Store(vec![round + 1; 1 << 20]),
                )],
                meta: outcore::storage::TxnMeta::new("test", "a big record"),
            })
            .unwrap_err();
        assert!(says_no_space(&err), "round {round}: {err}");
    }

    // With space again, pack works and keeps the data.
    std::fs::remove_file(mnt.join("filler2")).unwrap();
    std::fs::remove_file(mnt.join("filler")).unwrap();
    let stats = db.storage().pack(outcore::storage::Tid::MAX).unwrap();
    assert!(stats.versions_removed >= 1);
    check(&db);
}

#[test]
fn full_index_says_so() {
    use outcore::storage::{CommitRequest, Key, LocalOptions, LocalStorage, Oid, Storage};
    let tmp = tempfile::tempdir().unwrap();
    let s = LocalStorage::open_with(
        tmp.path().join("db"),
        LocalOptions {
            map_size: 1 << 20,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let err = s
        .commit(CommitRequest {
            base: s.head().unwrap(),
            writes: vec![(
                Key::Meta(Oid(1)),
                outcore::storage::Write::Store(vec![1; 2 << 20]),
            )],
            meta: outcore::storage::TxnMeta::new("test", "too big for the index"),
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("index") && text.contains("is full"), "{text}");
    assert!(text.contains("map_size"), "{text}");
    // The store is intact and takes what fits.
    let oids = s.new_oids(1).unwrap();
    assert!(oids.start >= 1);
    assert!(s.verify().unwrap().problems.is_empty());
}
