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
    let mib: u64 = std::env::var("OUTCORE_MIB").unwrap().parse().unwrap();
    let mode = std::env::var("OUTCORE_MODE").unwrap();
    let n = mib << 17; // f64 elements
    let compression = match std::env::var("OUTCORE_COMPRESSION").as_deref() {
        Ok("lz4") => outcore::storage::Compression::Lz4,
        _ => outcore::storage::Compression::None,
    };
    let url = std::env::var("OUTCORE_URL").unwrap_or_else(|_| dir.clone());
    let options = outcore::db::DbOptions {
        compression,
        ..Default::default()
    };
    let db = Database::open_with(&url, options).unwrap();
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
        // The store's directory, or nothing for PostgreSQL (scratch space is unnamed).
        let usage = || {
            if std::env::var_os("OUTCORE_URL").is_none() {
                disk_usage(std::path::Path::new(&dir))
            } else {
                0
            }
        };
        let before = usage();
        a.view_mut::<f64>().unwrap().fill(2.0);
        if mode == "rewrite" {
            conn.commit().unwrap();
        } else {
            conn.abort().unwrap();
            let after = usage();
            println!("\n@disk_growth_kb {}", after.saturating_sub(before) >> 10);
        }
    }
    drop(a);
    drop(conn);
    drop(db);
    let db = Database::open(&url).unwrap();
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

/// The store a child writes to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    /// The embedded store, uncompressed (blocks mapped; new data staged).
    Local,
    /// The embedded store with lz4 (blocks fetched on touch; spilled to scratch space): half
    /// the sizes, same ratio (a 512 MiB cgroup, 2 GiB of data).
    Lz4,
    /// PostgreSQL (blocks fetched on touch; spilled to scratch space): a quarter of the
    /// sizes, same ratio (a 256 MiB cgroup, 1 GiB of data).
    Postgres,
}

#[test]
fn array_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::Chunks, Store::Local);
}

#[test]
fn one_transaction_of_new_data_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::One, Store::Local);
}

#[test]
fn one_transaction_rewriting_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::Rewrite, Store::Local);
}

#[test]
fn aborted_rewrite_four_times_the_memory_limit_gives_the_space_back() {
    four_times_the_memory_limit(Mode::RewriteAbort, Store::Local);
}

#[test]
fn lz4_one_transaction_rewriting_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::Rewrite, Store::Lz4);
}

#[test]
fn lz4_aborted_rewrite_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::RewriteAbort, Store::Lz4);
}

#[test]
fn postgres_one_transaction_rewriting_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::Rewrite, Store::Postgres);
}

#[test]
fn postgres_aborted_rewrite_four_times_the_memory_limit() {
    four_times_the_memory_limit(Mode::RewriteAbort, Store::Postgres);
}

fn four_times_the_memory_limit(mode: Mode, store: Store) {
    // Without a writable cgroup-v1 memory controller (not root, cgroup v2 only) the limit
    // cannot be set: say so loudly rather than pretend.
    let Some(parent) = memory_cgroup() else {
        eprintln!("SKIPPED: no cgroup-v1 memory controller in this environment");
        return;
    };
    let url = match store {
        Store::Postgres => {
            let Some(base) = common::pg_server() else {
                return;
            };
            Some(common::store_url(
                &base,
                &format!("limits_{}", mode.name().replace('-', "_")),
            ))
        }
        _ => None,
    };
    let long = std::env::var_os("OUTCORE_LONG_TESTS").is_some();
    let scale = match store {
        Store::Local => 1,
        Store::Lz4 => 2,
        Store::Postgres => 4,
    };
    let limit = LIMIT / scale;
    let mib: u64 = (if long { 16 << 10 } else { 4 << 10 }) / scale;
    let group = parent.join(format!(
        "outcore-test-{}-{}-{store:?}",
        std::process::id(),
        mode.name()
    ));
    if let Err(e) = std::fs::create_dir_all(&group)
        .and_then(|_| std::fs::write(group.join("memory.limit_in_bytes"), limit.to_string()))
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
    if let Some(url) = &url {
        child.env("OUTCORE_URL", url);
    }
    if store == Store::Lz4 {
        child.env("OUTCORE_COMPRESSION", "lz4");
    }
    let out = child
        .env("OUTCORE_MODE", mode.name())
        // Fetched blocks stay within a quarter of the limit.
        .env("OUTCORE_CACHE_BYTES", (limit / 4).to_string())
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec {} --exact child_entry --nocapture",
            procs.display(),
            exe.display()
        ))
        .env("OUTCORE_CGROUP_CHILD", data.path().join("db"))
        .env("OUTCORE_MIB", mib.to_string())
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
        "{mib} MiB in a {} MiB cgroup ({}, {store:?}): peak {} MiB, anon growth while \
         reading {} MiB",
        limit >> 20,
        mode.name(),
        peak >> 20,
        growth_kb >> 10
    );
    let value = if mode == Mode::Rewrite { 2 } else { 1 };
    assert_eq!(sum, value * (mib << 17));
    // The kernel's high-water mark may pass the limit by its per-CPU charge batches.
    assert!(
        peak <= limit + (1 << 20),
        "peak {peak} bytes in a cgroup limited to {limit}"
    );
    // Mapped data is page cache; fetched blocks are anonymous memory within the cache budget.
    let allowed_kb = match store {
        Store::Local => 100 << 10,
        _ => ((limit / 4) >> 10) + (32 << 10),
    };
    assert!(
        growth_kb < allowed_kb,
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
