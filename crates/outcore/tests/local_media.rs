//! Read-only opens of the embedded store on media this process cannot write: a read-only bind
//! mount, a read-only filesystem, and a tree that belongs to another user. Mounting needs root;
//! without it the tests say so and skip.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use outcore::array::Order;
use outcore::db::{Database, DbOptions};
use outcore::storage::{LocalOptions, LocalStorage, Storage, Tid};
use outcore::Error;

mod common;
use common::Mount;

/// Serialises the tests of this file: a process forked by one test (`mount`, a child reader)
/// holds copies of every descriptor another test has open at that moment, which makes
/// `remount,ro` and `umount` of that test's mount fail as busy.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn readonly() -> DbOptions {
    DbOptions {
        readonly: true,
        ..DbOptions::default()
    }
}

/// Writes array "a" (3 blocks of 2 MiB, each filled with its number + 1) in two commits into
/// a new store at `dir`; returns the tid of the first commit.
fn populate(dir: &Path) -> Tid {
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<u8>("a", &[2 << 20], Order::C).unwrap();
    a.view_mut::<u8>().unwrap().fill(1);
    let first = conn.commit().unwrap();
    for v in 2u8..=3 {
        a.append(ndarray::Array1::from_elem(2 << 20, v).view().into_dyn())
            .unwrap();
    }
    conn.commit().unwrap();
    first
}

/// Reads the store at `dir` read-only and checks what `populate` wrote, including time travel.
fn check_readonly(dir: &Path, first: Tid) {
    let db = Database::open_with(dir.to_str().unwrap(), readonly()).unwrap();
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    let v = a.view::<u8>().unwrap();
    assert_eq!(v.len(), 6 << 20);
    for (i, want) in [1u8, 2, 3].into_iter().enumerate() {
        assert_eq!(v[i << 21], want);
        assert_eq!(v[((i + 1) << 21) - 1], want);
    }
    let old = db.connect_at(first).unwrap();
    assert_eq!(old.array("a").unwrap().shape().unwrap(), vec![2 << 20]);
    assert_eq!(db.history(10).unwrap().len(), 2);
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Changes are refused with a clear error, not an LMDB one.
    let err = db.storage().new_oids(1).unwrap_err();
    assert!(matches!(err, Error::ReadOnly(_)), "{err}");
    let err = db.storage().pack(Tid::MAX).unwrap_err();
    assert!(matches!(err, Error::ReadOnly(_)), "{err}");
}

#[test]
fn readonly_bind_mount_opens_and_reads() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let first = populate(&store);
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let Some(mount) = Mount::new(&["--bind", store.to_str().unwrap()], &ro) else {
        eprintln!("SKIPPED: cannot bind-mount (needs root)");
        return;
    };
    mount.remount_ro(true);
    assert!(
        std::fs::write(ro.join("probe"), b"x").is_err(),
        "mount is read-only"
    );
    check_readonly(&ro, first);
    drop(mount);
}

#[test]
fn readonly_filesystem_opens_and_reads() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let Some(mount) = Mount::new(&["-t", "tmpfs", "-o", "size=32m", "tmpfs"], &mnt) else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    };
    let store = mnt.join("store");
    let first = populate(&store);
    mount.remount_ro(false);
    check_readonly(&store, first);
    // The storage layer alone, as the command-line tool opens it.
    let s = LocalStorage::open_with(
        &store,
        LocalOptions {
            create: false,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    assert!(s.head().unwrap() > first);
    drop(s);
    drop(mount);
}

/// The user the other-user test runs its reader as.
const NOBODY: u32 = 65534;

/// Child half of `other_users_store_opens_readonly`: runs only when the parent asks.
#[test]
fn child_reads_other_users_store() {
    let Ok(dir) = std::env::var("OUTCORE_TEST_FOREIGN_STORE") else {
        return;
    };
    let first = Tid(std::env::var("OUTCORE_TEST_FIRST_TID")
        .unwrap()
        .parse()
        .unwrap());
    check_readonly(Path::new(&dir), first);
}

#[test]
fn other_users_store_opens_readonly() {
    let _serial = serial();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to run a reader as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let first = populate(&store);
    // Readable by everyone, writable by its owner (root) only.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ok = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&store)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // The reader runs a copy of this test binary from the world-readable temporary
    // directory: the checkout it was built in may not be reachable by that user.
    let exe = tmp.path().join("reader");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&exe)
        .args(["--exact", "child_reads_other_users_store", "--nocapture"])
        .env("OUTCORE_TEST_FOREIGN_STORE", &store)
        .env("OUTCORE_TEST_FIRST_TID", first.0.to_string())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "reader as uid {NOBODY} failed:\n{text}"
    );
    assert!(text.contains("1 passed"), "{text}");
}

/// A reader through a read-only mount holds no lease, so another process's view of the store
/// (here: a writable handle) may pack away its snapshot: its reads then fail with
/// `SnapshotTooOld` instead of returning what the pack left (zeros, here).
#[test]
fn unleased_reader_sees_history_packed_not_wrong_data() {
    let _serial = serial();
    use outcore::storage::{CommitRequest, Key, Oid, TxnMeta, Write};
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let rw = LocalStorage::open(&store).unwrap();
    let key = Key::Block {
        file: Oid(rw.new_oids(1).unwrap().start),
        index: 0,
    };
    let commit = |v: u8| {
        rw.commit(CommitRequest {
            base: rw.head().unwrap(),
            writes: vec![(key, Write::Store(vec![v; 8192]))],
            meta: TxnMeta::new("test", "a version"),
        })
        .unwrap()
    };
    let t1 = commit(1);
    let ro_dir = tmp.path().join("ro");
    std::fs::create_dir(&ro_dir).unwrap();
    let Some(mount) = Mount::new(&["--bind", store.to_str().unwrap()], &ro_dir) else {
        eprintln!("SKIPPED: cannot bind-mount (needs root)");
        return;
    };
    mount.remount_ro(true);
    let ro = LocalStorage::open_with(
        &ro_dir,
        LocalOptions {
            create: false,
            ..LocalOptions::default()
        },
    )
    .unwrap();
    let lease = ro.acquire_lease(t1).unwrap();
    ro.renew_lease(lease, t1).unwrap();
    assert_eq!(ro.load(key, t1).unwrap().unwrap().data[0], 1);
    let t2 = commit(2);
    rw.pack(Tid::MAX).unwrap();
    match ro.load(key, t1) {
        Err(Error::SnapshotTooOld {
            horizon: packed,
            requested,
        }) => {
            assert_eq!((packed, requested), (t2, t1));
        }
        other => panic!("expected SnapshotTooOld, got {other:?}"),
    }
    assert_eq!(ro.load(key, t2).unwrap().unwrap().data[0], 2);
    ro.release_lease(lease);
    drop(ro);
    drop(mount);
}
