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

/// Child for the page-cache test: maps and reads the whole array, says so, then waits for
/// its stdin to close.
#[test]
fn reader_child_entry() {
    let Ok(dir) = std::env::var("OUTCORE_READER_CHILD") else {
        return;
    };
    let db = Database::open(&dir).unwrap();
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    let sum = a.view::<f64>().unwrap().sum();
    println!("\n@ready {sum}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn shared_clean_kb() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Shared_Clean:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn two_processes_share_one_page_cache_copy() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let n = 32u64 << 17; // 32 MiB of f64
    let mut a = conn.create::<f64>("a", &[n], Order::C).unwrap();
    a.view_mut::<f64>().unwrap().fill(1.0);
    conn.commit().unwrap();
    assert_eq!(a.view::<f64>().unwrap().sum(), n as f64);
    let before = shared_clean_kb();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reader_child_entry", "--nocapture"])
        .env("OUTCORE_READER_CHILD", &dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("@ready ").map(|(_, s)| s.to_string()))
        .unwrap();
    assert_eq!(ready.parse::<f64>().unwrap(), n as f64);
    // The child mapped the very pages this process maps: they are now shared, one copy.
    let shared = shared_clean_kb() - before;
    drop(child.stdin.take());
    lines.for_each(drop); // let the child print to the end
    assert!(child.wait().unwrap().success());
    assert!(
        shared >= 30 * 1024,
        "only {shared} kB of the 32 MiB array became shared"
    );
}
