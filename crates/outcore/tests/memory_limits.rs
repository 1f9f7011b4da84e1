//! Arrays bigger than the memory limit: a child process in a cgroup (v1) limited to 1 GiB
//! writes and then reads a 4 GiB array (16 GiB with `OUTCORE_LONG_TESTS`); clean data is page
//! cache the kernel reclaims, so it completes and anonymous memory stays small. Written in
//! transactions of 64 MiB, and in one transaction through one view (new data is written into
//! staged space of the store: page cache the kernel writes back and reclaims, not anonymous
//! memory).

mod common;
use common::status_kb;

use std::path::PathBuf;
use std::process::Command;

use outcore::array::Order;
use outcore::db::Database;

const LIMIT: u64 = 1 << 30;

/// This process's cgroup-v1 memory directory, if the controller is mounted and writable.
fn memory_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))?;
    let dir = PathBuf::from("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'));
    dir.join("memory.limit_in_bytes").exists().then_some(dir)
}

#[test]
fn child_entry() {
    let Ok(dir) = std::env::var("OUTCORE_CGROUP_CHILD") else {
        return;
    };
    let gib: u64 = std::env::var("OUTCORE_GIB").unwrap().parse().unwrap();
    let n = gib << 27; // f64 elements
    let db = Database::open(&dir).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("big", &[n], Order::C).unwrap();
    conn.commit().unwrap();
    let chunk = 8u64 << 20; // 64 MiB of f64 per transaction
    if std::env::var_os("OUTCORE_ONE_TXN").is_some() {
        a.view_mut::<f64>().unwrap().fill(1.0);
        conn.commit().unwrap();
    }
    let mut start = 0;
    while start < n && std::env::var_os("OUTCORE_ONE_TXN").is_none() {
        let end = (start + chunk).min(n);
        a.slice_mut::<f64, _>(ndarray::s![start as isize..end as isize])
            .unwrap()
            .fill(1.0);
        conn.commit().unwrap();
        start = end;
    }
    drop(a);
    let reader = db.connect().unwrap();
    let a = reader.array("big").unwrap();
    let anon_before = status_kb("RssAnon:");
    let mut anon_peak = anon_before;
    let mut sum = 0.0;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        sum += a
            .slice::<f64, _>(ndarray::s![start as isize..end as isize])
            .unwrap()
            .sum();
        anon_peak = anon_peak.max(status_kb("RssAnon:"));
        start = end;
    }
    println!("\n@sum {sum} anon_growth_kb {}", anon_peak - anon_before);
}

#[test]
fn array_four_times_the_memory_limit() {
    four_times_the_memory_limit(false);
}

#[test]
fn one_transaction_of_new_data_four_times_the_memory_limit() {
    four_times_the_memory_limit(true);
}

fn four_times_the_memory_limit(one_transaction: bool) {
    // Without a writable cgroup-v1 memory controller (not root, cgroup v2 only) the limit
    // cannot be set: say so loudly rather than pretend.
    let Some(parent) = memory_cgroup() else {
        eprintln!("SKIPPED: no cgroup-v1 memory controller in this environment");
        return;
    };
    let gib: u64 = if std::env::var_os("OUTCORE_LONG_TESTS").is_some() {
        16
    } else {
        4
    };
    let group = parent.join(format!(
        "outcore-test-{}-{}",
        std::process::id(),
        u8::from(one_transaction)
    ));
    if let Err(e) = std::fs::create_dir_all(&group)
        .and_then(|_| std::fs::write(group.join("memory.limit_in_bytes"), LIMIT.to_string()))
    {
        eprintln!(
            "SKIPPED: cannot create a memory cgroup under {}: {e}",
            parent.display()
        );
        return;
    }
    let data = tempfile::tempdir_in("/var/tmp").unwrap();
    let exe = std::env::current_exe().unwrap();
    let procs = group.join("cgroup.procs");
    // The child joins the cgroup before it starts (shell `exec` keeps the pid).
    let mut child = Command::new("sh");
    if one_transaction {
        child.env("OUTCORE_ONE_TXN", "1");
    }
    let out = child
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {} --exact child_entry --nocapture",
            procs.display(),
            exe.display()
        ))
        .env("OUTCORE_CGROUP_CHILD", data.path().join("db"))
        .env("OUTCORE_GIB", gib.to_string())
        .output()
        .unwrap();
    let peak: u64 = std::fs::read_to_string(group.join("memory.max_usage_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::fs::remove_dir(&group);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed ({:?}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once('@').map(|(_, r)| r.to_string()))
        .unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    let sum: f64 = fields[1].parse().unwrap();
    let growth_kb: u64 = fields[3].parse().unwrap();
    eprintln!(
        "{gib} GiB in a 1 GiB cgroup (one transaction: {one_transaction}): peak {} MiB, \
         anon growth while reading {} MiB",
        peak >> 20,
        growth_kb >> 10
    );
    assert_eq!(sum, (gib << 27) as f64);
    assert!(peak <= LIMIT);
    assert!(
        growth_kb < 100 * 1024,
        "anonymous memory grew by {growth_kb} kB while reading"
    );
}
