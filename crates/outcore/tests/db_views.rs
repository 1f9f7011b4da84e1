//! The safe view API keeps views apart: two views of one array of which one is mutable never
//! coexist, and memory never changes under a live view (the view book of each connection).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

/// Returns once thread `tid` of this process is asleep (blocked waiting for the view book:
/// it does nothing else that sleeps) or `finished()`; no timing involved.
fn until_asleep_or(tid: i32, finished: impl Fn() -> bool) {
    loop {
        if finished() {
            return;
        }
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        if state.is_some_and(|s| s.starts_with('S')) {
            return;
        }
        std::thread::yield_now();
    }
}

#[test]
fn mutable_views_of_two_clones_in_one_thread_are_an_error() {
    let db = Database::open("mem:").unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("a", &[100], Order::C).unwrap();
    let mut b = a.clone();
    let mut va = a.view_mut::<f64>().unwrap();
    va[3] = 1.0;
    let err = b.view_mut::<f64>().unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("alive in this thread")),
        "{err}"
    );
    assert!(
        b.view::<f64>().is_err(),
        "no shared view next to a mutable one"
    );
    assert_eq!(va[3], 1.0);
    drop(va);
    // Shared views of clones coexist; a mutable one waits for them (an error in this thread).
    let (v1, v2) = (a.view::<f64>().unwrap(), b.view::<f64>().unwrap());
    assert_eq!(v1[3] + v2[3], 2.0);
    assert!(a.clone().view_mut::<f64>().is_err());
    assert!(a.resize(&[5]).is_err(), "resize under a view");
    drop((v1, v2));
    b.view_mut::<f64>().unwrap()[3] = 2.0;
    a.resize(&[5]).unwrap();
}

#[test]
fn a_mutable_view_in_another_thread_waits_for_the_first_to_drop() {
    let db = Database::open("mem:").unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("a", &[100], Order::C).unwrap();
    let mut b = a.clone();
    let dropped = AtomicBool::new(false);
    let (trying_tx, trying_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let mut va = a.view_mut::<f64>().unwrap();
        va[0] = 1.0;
        let waiter = s.spawn(|| {
            // SAFETY: gettid has no preconditions.
            trying_tx.send(unsafe { libc::gettid() }).unwrap();
            let mut vb = b.view_mut::<f64>().unwrap();
            assert!(
                dropped.load(Ordering::SeqCst),
                "got a mutable view while another was alive"
            );
            assert_eq!(vb[0], 2.0, "the first view's last write");
            vb[0] = 3.0;
        });
        let tid = trying_rx.recv().unwrap();
        until_asleep_or(tid, || waiter.is_finished());
        // The other thread waits for the view (or, wrongly, got one): the first view stays
        // valid and ours.
        va[0] = 2.0;
        assert_eq!(va[0], 2.0);
        dropped.store(true, Ordering::SeqCst);
        drop(va);
        waiter.join().unwrap();
    });
    assert_eq!(a.view::<f64>().unwrap()[0], 3.0);
}

#[test]
fn boundaries_under_a_view_of_this_thread_are_errors_and_change_nothing() {
    let db = Database::open("mem:").unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("a", &[100], Order::C).unwrap();
    conn.commit().unwrap();
    // Another connection commits: this one's boundaries would re-map the block.
    let other = db.connect().unwrap();
    other.array("a").unwrap().view_mut::<f64>().unwrap()[7] = 5.0;
    other.commit().unwrap();

    let v = a.view::<f64>().unwrap();
    let sp = conn.savepoint().unwrap(); // reads only: fine next to a shared view
    for (what, r) in [
        ("commit", conn.commit().map(|_| ())),
        ("abort", conn.abort()),
        ("begin", conn.begin()),
        ("discard", conn.discard()),
        ("roll back", conn.rollback(&sp)),
        ("close", conn.close()),
    ] {
        let err = r.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m)
                if m.contains("array oid") && m.contains("drop it first")),
            "{what}: {err}"
        );
        assert_eq!(v[7], 0.0, "{what} changed the memory under the view");
    }
    drop(v);
    conn.begin().unwrap();
    assert_eq!(a.view::<f64>().unwrap()[7], 5.0);

    let mut w = a.view_mut::<f64>().unwrap();
    w[8] = 1.0;
    assert!(
        conn.savepoint().is_err(),
        "a savepoint reads what `w` writes"
    );
    drop(w);
    conn.commit().unwrap();
}

#[test]
fn a_commit_in_another_thread_waits_for_the_view() {
    let db = Database::open("mem:").unwrap();
    let conn = db.connect().unwrap();
    let a = conn.create::<f64>("a", &[100], Order::C).unwrap();
    conn.commit().unwrap();
    let other = db.connect().unwrap();
    other.array("a").unwrap().view_mut::<f64>().unwrap()[7] = 5.0;
    other.commit().unwrap();

    let dropped = AtomicBool::new(false);
    let (committing_tx, committing_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let v = a.view::<f64>().unwrap();
        let committer = s.spawn(|| {
            // SAFETY: gettid has no preconditions.
            committing_tx.send(unsafe { libc::gettid() }).unwrap();
            conn.commit().unwrap();
            assert!(
                dropped.load(Ordering::SeqCst),
                "the commit ran while the view was alive"
            );
        });
        let tid = committing_rx.recv().unwrap();
        until_asleep_or(tid, || committer.is_finished());
        // The commit waits in the other thread (or, wrongly, ran): it must not have re-mapped
        // the memory under `v`.
        assert_eq!(v[7], 0.0);
        dropped.store(true, Ordering::SeqCst);
        drop(v);
        committer.join().unwrap();
    });
    assert_eq!(a.view::<f64>().unwrap()[7], 5.0, "the commit moved on");
}
