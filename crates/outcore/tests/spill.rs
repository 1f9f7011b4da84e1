//! Spilling: uncommitted writes of a transaction move out of private memory into staged space
//! of the embedded store (`vm::spill_over`, run by the spill thread above the dirty budget;
//! called directly here). The written bytes must stay exactly what the program wrote — also
//! while other threads keep writing the blocks being spilled — commit must publish them,
//! abort and rollback must show the version before, and the staged space must be given back.
//!
//! One test binary: the dirty budget and the spill candidates are process-wide, so the tests
//! take a lock and never run side by side.

mod common;
use common::status_kb;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use outcore::array::Order;
use outcore::db::Database;

static SERIAL: Mutex<()> = Mutex::new(());

/// 2 MiB blocks of u64.
const PER_BLOCK: u64 = (2 << 20) / 8;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    // The spill thread would otherwise spill on its own at unexpected moments.
    outcore::vm::set_dirty_budget(u64::MAX);
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bytes allocated on disk by all segments of the store.
fn segment_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum()
}

/// Bytes allocated on disk by the staging segments of the store (`segments/s<id>.seg` with
/// ids from 2**31).
fn staged_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix('s')
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| id >= 1 << 31)
        })
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum()
}

/// A store with array "a" of `blocks` blocks of u64, element i holding i, committed.
fn store_with_array(blocks: u64) -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn
        .create::<u64>("a", &[blocks * PER_BLOCK], Order::C)
        .unwrap();
    for (i, x) in a.view_mut::<u64>().unwrap().iter_mut().enumerate() {
        *x = i as u64;
    }
    conn.commit().unwrap();
    (dir, db)
}

fn read_all(db: &Database) -> Vec<u64> {
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    let v = a.view::<u64>().unwrap();
    v.iter().copied().collect()
}

#[test]
fn spilled_writes_commit_and_free_private_memory() {
    let _s = serial();
    let blocks = 32; // 64 MiB
    let (dir, db) = store_with_array(blocks);
    let conn = db.connect().unwrap();
    let mut a = conn.array("a").unwrap();
    let anon_before = status_kb("RssAnon:");
    for x in a.view_mut::<u64>().unwrap().iter_mut() {
        *x = x.wrapping_mul(3) + 1;
    }
    let anon_written = status_kb("RssAnon:");
    assert!(
        anon_written > anon_before + 48 * 1024,
        "the writes should be private memory first: {anon_before} -> {anon_written} kB"
    );
    let left = outcore::vm::spill_over(0).unwrap();
    assert_eq!(left, 0, "every written block spills");
    let anon_spilled = status_kb("RssAnon:");
    assert!(
        anon_spilled + 48 * 1024 < anon_written,
        "spilling gives the private memory back: {anon_written} -> {anon_spilled} kB"
    );
    assert!(staged_bytes(dir.path()) >= 64 << 20);
    // The bytes read back through the view are the written ones, and writes after the
    // spill land too.
    {
        let mut v = a.view_mut::<u64>().unwrap();
        for (i, x) in v.iter().enumerate() {
            assert!(
                *x == (i as u64) * 3 + 1,
                "element {i} reads {x} after spilling"
            );
        }
        v[[5]] = 55;
    }
    conn.commit().unwrap();
    drop(a);
    drop(conn);
    let all = read_all(&db);
    for (i, x) in all.iter().enumerate() {
        let want = if i == 5 { 55 } else { i as u64 * 3 + 1 };
        assert!(*x == want, "element {i} reads {x} after commit, not {want}");
    }
    let report = db.storage().verify().unwrap();
    assert!(
        report.problems.is_empty(),
        "verify after a spilled commit: {report:?}"
    );
    drop(db);
    let db = Database::open(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(read_all(&db)[7], 22, "reopened");
}

#[test]
fn abort_after_spill_shows_the_version_before_and_frees_the_space() {
    let _s = serial();
    let (dir, db) = store_with_array(8);
    let conn = db.connect().unwrap();
    let mut a = conn.array("a").unwrap();
    // The array's first version was written into staged space too (new data), published.
    let published = staged_bytes(dir.path());
    a.view_mut::<u64>().unwrap().fill(7);
    outcore::vm::spill_over(0).unwrap();
    assert!(staged_bytes(dir.path()) >= published + (16 << 20));
    conn.abort().unwrap();
    {
        let v = a.view::<u64>().unwrap();
        for (i, x) in v.iter().enumerate() {
            assert!(*x == i as u64, "element {i} reads {x} after abort");
        }
    }
    assert!(
        // (a page of slack: the file system may keep one for a new segment's end)
        staged_bytes(dir.path()) <= published + (64 << 10),
        "the spilled space is given back at abort ({} bytes staged, {published} before)",
        staged_bytes(dir.path())
    );
    // Written again, the blocks spill again and commit.
    a.view_mut::<u64>().unwrap().fill(9);
    outcore::vm::spill_over(0).unwrap();
    conn.commit().unwrap();
    drop(a);
    assert!(read_all(&db).iter().all(|&x| x == 9));
}

#[test]
fn rollback_across_a_spill_restores_the_savepoint() {
    let _s = serial();
    let (_dir, db) = store_with_array(4);
    let conn = db.connect().unwrap();
    let mut a = conn.array("a").unwrap();
    a.view_mut::<u64>().unwrap()[[3]] = 1003;
    let sp = conn.savepoint().unwrap();
    a.view_mut::<u64>().unwrap().fill(5);
    outcore::vm::spill_over(0).unwrap();
    conn.rollback(&sp).unwrap();
    {
        let v = a.view::<u64>().unwrap();
        for (i, x) in v.iter().enumerate() {
            let want = if i == 3 { 1003 } else { i as u64 };
            assert!(
                *x == want,
                "element {i} reads {x} after rollback, not {want}"
            );
        }
    }
    conn.commit().unwrap();
    drop(a);
    let all = read_all(&db);
    assert_eq!(all[3], 1003);
    assert_eq!(all[4], 4);
}

/// A thread keeps writing elements at random places (checking that its previous write
/// there is still in place) while the blocks are spilled under it, transaction after
/// transaction. A write landing in memory a spill had already copied would be lost: the
/// writer would read an older value, and the committed array would differ from its record.
#[test]
fn writes_racing_a_spill_are_never_lost() {
    let _s = serial();
    let blocks = 16;
    let n = blocks * PER_BLOCK;
    let (_dir, db) = store_with_array(blocks);
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    // What the writer last wrote at each element (the committed value to begin with).
    let mut expected: Vec<u64> = (0..n).collect();
    for txn in 0..8u64 {
        let view = a.raw_view(0..n).unwrap();
        let addr = view.ptr as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let writer = {
            let stop = stop.clone();
            let progress = progress.clone();
            let mut expected = std::mem::take(&mut expected);
            std::thread::spawn(move || {
                let p = addr as *mut u64;
                let mut lost = 0u64;
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ txn;
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) || count < 100_000 {
                    // xorshift: positions all over the array, so writes hit blocks being
                    // spilled and parts of them already copied.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % n) as usize;
                    // SAFETY: `i < n` elements of the raw view, which `view` keeps mapped
                    // until this thread is joined; only this thread writes the array.
                    let at = unsafe { p.add(i) };
                    if unsafe { at.read_volatile() } != expected[i] {
                        lost += 1;
                    }
                    count += 1;
                    progress.store(count, Ordering::Relaxed);
                    let value = (txn << 40) | count;
                    unsafe { at.write_volatile(value) };
                    expected[i] = value;
                }
                (expected, lost)
            })
        };
        // Spill while the writer runs (each block once per transaction), once it has
        // written into every block.
        while progress.load(Ordering::Relaxed) < 10_000 {
            std::hint::spin_loop();
        }
        while outcore::vm::spill_over(0).unwrap() != 0 {}
        stop.store(true, Ordering::Relaxed);
        let (record, lost) = writer.join().unwrap();
        expected = record;
        assert_eq!(lost, 0, "transaction {txn}: writes lost while spilling");
        conn.commit().unwrap();
        drop(view);
        let v = a.view::<u64>().unwrap();
        let wrong = v.iter().zip(&expected).filter(|(x, e)| x != e).count();
        assert_eq!(wrong, 0, "transaction {txn}: elements differ after commit");
    }
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

/// The child of [`killed_while_spilling_or_committing`]: fills the array with 1, 2, 3, …, one
/// value per transaction, spilling every block before each commit, until killed.
#[test]
fn spill_crash_child() {
    let Ok(dir) = std::env::var("OUTCORE_SPILL_CHILD") else {
        return;
    };
    outcore::vm::set_dirty_budget(u64::MAX);
    let db = Database::open(&dir).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.array("a").unwrap();
    let mut value = a.view::<u64>().unwrap()[[0]];
    loop {
        value += 1;
        a.view_mut::<u64>().unwrap().fill(value);
        outcore::vm::spill_over(0).unwrap();
        conn.commit().unwrap();
    }
}

/// SIGKILL while a transaction is being spilled or committed: the store holds a whole
/// committed transaction (every element one value), `verify` is clean, and the next pack
/// reclaims every staged byte the dead process left.
#[test]
fn killed_while_spilling_or_committing() {
    let _s = serial();
    let (dir, db) = store_with_array(16);
    {
        let conn = db.connect().unwrap();
        let mut a = conn.array("a").unwrap();
        a.view_mut::<u64>().unwrap().fill(0);
        conn.commit().unwrap();
    }
    drop(db);
    let exe = std::env::current_exe().unwrap();
    let mut last = 0;
    for round in 0..6u64 {
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "spill_crash_child", "--nocapture"])
            .env("OUTCORE_SPILL_CHILD", dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150 + 97 * round));
        child.kill().unwrap();
        child.wait().unwrap();
        let db = Database::open(dir.path().to_str().unwrap()).unwrap();
        let all = read_all(&db);
        let value = all[0];
        assert!(
            all.iter().all(|&x| x == value),
            "round {round}: a transaction was half committed"
        );
        assert!(value >= last, "round {round}: committed value went back");
        last = value;
        let report = db.storage().verify().unwrap();
        assert!(report.problems.is_empty(), "round {round}: {report:?}");
    }
    assert!(last > 0, "the child never committed");
    let db = Database::open(dir.path().to_str().unwrap()).unwrap();
    db.storage().pack(outcore::storage::Tid::MAX).unwrap();
    // Pack copies the live version into fresh segments and deletes the rest: what is left
    // on disk is the array's 32 MiB (plus a little).
    let on_disk = segment_bytes(dir.path());
    assert!(
        on_disk <= (32 << 20) + (1 << 20),
        "after pack the segments hold {on_disk} bytes: staged space of the killed processes \
         was not reclaimed"
    );
    assert!(read_all(&db).iter().all(|&x| x == last));
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

/// Spilling where the store cannot stage (compressed: blocks fetched on touch; `mem:`;
/// PostgreSQL): the blocks wait in the process's scratch file, and the commit writes them to
/// the store as usual. Abort shows the version before.
fn spill_without_staging(db: Database, name: &str) {
    let blocks = 8;
    let n = blocks * PER_BLOCK;
    {
        let conn = db.connect().unwrap();
        let mut a = conn.create::<u64>("a", &[n], Order::C).unwrap();
        for (i, x) in a.view_mut::<u64>().unwrap().iter_mut().enumerate() {
            *x = i as u64;
        }
        conn.commit().unwrap();
    }
    let conn = db.connect().unwrap();
    let mut a = conn.array("a").unwrap();
    for (i, x) in a.view_mut::<u64>().unwrap().iter_mut().enumerate() {
        *x = 2 * i as u64;
    }
    assert_eq!(
        outcore::vm::spill_over(0).unwrap(),
        0,
        "{name}: all spilled"
    );
    conn.abort().unwrap();
    {
        let v = a.view::<u64>().unwrap();
        let wrong = v
            .iter()
            .enumerate()
            .filter(|(i, x)| **x != *i as u64)
            .count();
        assert_eq!(
            wrong, 0,
            "{name}: elements differ after an aborted spilled rewrite"
        );
    }
    for (i, x) in a.view_mut::<u64>().unwrap().iter_mut().enumerate() {
        *x = 3 * i as u64;
    }
    let anon_written = status_kb("RssAnon:");
    assert_eq!(
        outcore::vm::spill_over(0).unwrap(),
        0,
        "{name}: all spilled"
    );
    let anon_spilled = status_kb("RssAnon:");
    assert!(
        anon_spilled + 12 * 1024 < anon_written,
        "{name}: spilling gives the private memory back: {anon_written} -> {anon_spilled} kB"
    );
    a.view_mut::<u64>().unwrap()[[1]] = 1;
    conn.commit().unwrap();
    drop(a);
    let other = db.connect().unwrap();
    let b = other.array("a").unwrap();
    let v = b.view::<u64>().unwrap();
    let wrong = v
        .iter()
        .enumerate()
        .filter(|(i, x)| **x != if *i == 1 { 1 } else { 3 * *i as u64 })
        .count();
    assert_eq!(wrong, 0, "{name}: elements differ after a spilled commit");
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{name}: {report:?}");
}

#[test]
fn compressed_store_spills_to_scratch_space() {
    let _s = serial();
    if !common::uffd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = outcore::db::DbOptions {
        compression: outcore::storage::Compression::Lz4,
        ..Default::default()
    };
    let db = Database::open_with(dir.path().to_str().unwrap(), options).unwrap();
    spill_without_staging(db, "lz4");
}

#[test]
fn memory_store_spills_to_scratch_space() {
    let _s = serial();
    spill_without_staging(Database::open("mem:").unwrap(), "mem:");
}

#[test]
fn postgres_store_spills_to_scratch_space() {
    let _s = serial();
    let Some(base) = common::pg_server() else {
        return;
    };
    let url = common::store_url(&base, "spill");
    spill_without_staging(Database::open(&url).unwrap(), "PostgreSQL");
}

/// A fork while blocks are being spilled: the child must not inherit a block made read-only
/// by a barrier no thread of the child would lower (its writes would wait forever). Children
/// write every block and exit; each must be done within seconds.
#[test]
fn fork_during_spilling_leaves_the_child_writable_memory() {
    let _s = serial();
    let blocks = 16;
    let n = blocks * PER_BLOCK;
    let (_dir, db) = store_with_array(blocks);
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    let view = a.raw_view(0..n).unwrap();
    let p = view.ptr as *mut u64;
    for round in 0..12u64 {
        // SAFETY (all writes below): elements < n of the raw view, kept mapped by `view`.
        for i in (0..n as usize).step_by(512) {
            unsafe { p.add(i).write_volatile(round) };
        }
        let spiller = std::thread::spawn(|| outcore::vm::spill_over(0).unwrap());
        std::thread::sleep(std::time::Duration::from_micros(300 * round));
        // SAFETY: the child only writes memory and calls _exit (no locks, no allocation).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            for i in (0..n as usize).step_by(512) {
                unsafe { p.add(i).write_volatile(round + 100) };
            }
            unsafe { libc::_exit(0) };
        }
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        let mut done = false;
        for _ in 0..1000 {
            // SAFETY: waitpid on our own child, writing its status into a local.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                done = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !done {
            // SAFETY: kills and reaps our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
        }
        assert!(
            done,
            "round {round}: the forked child hung writing spilled memory"
        );
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "round {round}: child ended with status {status}"
        );
        spiller.join().unwrap();
        conn.abort().unwrap();
    }
}

/// More written windows than the write barrier has slots: a spill round throttles what it
/// can and still spills everything (it must not wait for a slot only its own end frees).
#[test]
fn many_written_arrays_spill_without_running_out_of_barriers() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let count = 80;
    for k in 0..count {
        let mut a = conn
            .create::<u64>(&format!("a{k}"), &[PER_BLOCK], Order::C)
            .unwrap();
        a.view_mut::<u64>().unwrap().fill(k);
    }
    conn.commit().unwrap();
    let mut arrays: Vec<_> = (0..count)
        .map(|k| conn.array(&format!("a{k}")).unwrap())
        .collect();
    for (k, a) in arrays.iter_mut().enumerate() {
        a.view_mut::<u64>().unwrap().fill(1000 + k as u64);
    }
    assert_eq!(outcore::vm::spill_over(0).unwrap(), 0, "everything spilled");
    conn.commit().unwrap();
    for (k, a) in arrays.iter().enumerate() {
        let v = a.view::<u64>().unwrap();
        assert!(v.iter().all(|&x| x == 1000 + k as u64), "array {k}");
    }
}
