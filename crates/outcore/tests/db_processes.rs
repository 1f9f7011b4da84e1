//! Two OS processes on one embedded store: invalidation at transaction boundaries, and
//! conflicts on the same block.

use std::process::Command;

use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

#[test]
fn child_entry() {
    let Ok(dir) = std::env::var("OUTCORE_DB_CHILD") else {
        return;
    };
    let value: f64 = std::env::var("OUTCORE_VALUE").unwrap().parse().unwrap();
    let db = Database::open(&dir).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.array("a").unwrap();
    a.view_mut::<f64>().unwrap()[7] = value;
    a.append(ndarray::arr1(&[value]).into_dyn().view()).unwrap();
    conn.commit().unwrap();
}

fn run_child(dir: &std::path::Path, value: f64) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture"])
        .env("OUTCORE_DB_CHILD", dir)
        .env("OUTCORE_VALUE", value.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn other_process_commits_invalidate_and_conflict() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("a", &[100], Order::C).unwrap();
    conn.commit().unwrap();
    let view = a.view::<f64>().unwrap().to_owned();
    assert_eq!(view[7], 0.0);

    run_child(&dir, 3.0);
    assert_eq!(
        a.view::<f64>().unwrap()[7],
        0.0,
        "not before the next transaction"
    );
    assert_eq!(a.shape().unwrap(), vec![100]);
    conn.begin().unwrap();
    assert_eq!(a.view::<f64>().unwrap()[7], 3.0);
    assert_eq!(a.shape().unwrap(), vec![101]);
    assert_eq!(a.view::<f64>().unwrap()[100], 3.0);

    // Both write block 0: the child commits first, so this process loses.
    a.view_mut::<f64>().unwrap()[7] = 4.0;
    run_child(&dir, 5.0);
    assert!(matches!(conn.commit(), Err(Error::Conflict { .. })));
    conn.abort().unwrap();
    assert_eq!(a.view::<f64>().unwrap()[7], 5.0);
    assert_eq!(a.shape().unwrap(), vec![102]);
}
