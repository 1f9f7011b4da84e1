//! Arrays bigger than the memory limit: a child process in a cgroup (v1) limited to 1 GiB
//! writes and then reads a 4 GiB array (16 GiB with `OUTCORE_LONG_TESTS`); clean data is page
//! cache the kernel reclaims, so it completes and anonymous memory stays small. Written in
//! transactions of 64 MiB, and in one transaction through one view (new data is written into
//! staged space of the store: page cache the kernel writes back and reclaims, not anonymous
//! memory). Then rewritten in one transaction, committed or aborted: the rewrites are private
//! memory until the spill thread moves them to staged space (the default dirty budget is a
//! quarter of the cgroup's limit).

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

/// What the child does: write the array in 64 MiB transactions (`chunks`), in one
/// transaction (`one`), or in one and then rewrite all of it in one more transaction that
/// commits (`rewrite`) or aborts (`rewrite-abort`; the store's disk usage after the abort is
/// reported against before the rewrite).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Chunks,
    One,
    Rewrite,
    RewriteAbort,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Chunks => "chunks",
            Mode::One => "one",
            Mode::Rewrite => "rewrite",
            Mode::RewriteAbort => "rewrite-abort",
        }
    }
}

/// Bytes allocated on disk under `dir`.
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            disk_usage(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

#[test]
fn child_entry() {
    let Ok(dir) = std::env::var("OUTCORE_CGROUP_CHILD") else {
        return;
    };
    let gib: u64 = std::env::var("OUTCORE_GIB").unwrap().parse().unwrap();
    let mode = std::env::var("OUTCORE_MODE").unwrap();
    let n = gib << 27; // f64 elements
    let db = Database::open(&dir).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("big", &[n], Order::C).unwrap();
    conn.commit().unwrap();
    let chunk = 8u64 << 20; // 64 MiB of f64 per transaction
    if mode == "chunks" {
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            a.slice_mut::<f64, _>(ndarray::s![start as isize..end as isize])
                .unwrap()
                .fill(1.0);
            conn.commit().unwrap();
            start = end;
        }
    } else {
        a.view_mut::<f64>().unwrap().fill(1.0);
        conn.commit().unwrap();
    }
    if mode.starts_with("rewrite") {
        // Existing data, rewritten in one transaction: private memory until the spill
        // thread moves it to staged space.
        let before = disk_usage(std::path::Path::new(&dir));
        a.view_mut::<f64>().unwrap().fill(2.0);
        if mode == "rewrite" {
            conn.commit().unwrap();
        } else {
            conn.abort().unwrap();
            let after = disk_usage(std::path::Path::new(&dir));
            println!("\n@disk_growth_kb {}", after.saturating_sub(before) >> 10);
        }
    }
    drop(a);
    drop(conn);
    let db = Database::open(&dir).unwrap();
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
    four_times_the_memory_limit(Mode::Chunks);
}

#[test]
fn one_transaction_of_new_data_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::One);
}

#[test]
fn one_transaction_rewriting_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::Rewrite);
}

#[test]
fn aborted_rewrite_four_times_the_memory_limit_gives_the_space_back() {
    four_times_the_memory_limit(Mode::RewriteAbort);
}

fn four_times_the_memory_limit(mode: Mode) {
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
        mode.name()
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
    let out = Command::new("sh")
        .env("OUTCORE_MODE", mode.name())
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
    let field = |name: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.iter()
                    .position(|x| *x == name)
                    .map(|i| f[i + 1].parse::<f64>().unwrap() as u64)
            })
            .unwrap_or_else(|| panic!("{name} missing in: {stdout}"))
    };
    let sum = field("@sum");
    let growth_kb = field("anon_growth_kb");
    eprintln!(
        "{gib} GiB in a 1 GiB cgroup ({}): peak {} MiB, anon growth while reading {} MiB",
        mode.name(),
        peak >> 20,
        growth_kb >> 10
    );
    let value = if mode == Mode::Rewrite { 2 } else { 1 };
    assert_eq!(sum, value * (gib << 27));
    assert!(peak <= LIMIT);
    assert!(
        growth_kb < 100 * 1024,
        "anonymous memory grew by {growth_kb} kB while reading"
    );
    if mode == Mode::RewriteAbort {
        let disk_kb = field("@disk_growth_kb");
        assert!(
            disk_kb < 64 * 1024,
            "the aborted rewrite left {disk_kb} kB on disk"
        );
    }
}
