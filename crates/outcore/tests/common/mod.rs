//! Helpers shared by the integration tests (each test crate uses some of them).
#![allow(dead_code)]

pub mod proxy;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Something mounted by a test; unmounted when dropped, also when the test fails.
pub struct Mount(PathBuf);

impl Mount {
    /// Runs `mount ARGS... target` and guards `target`, or `None` if mounting is impossible
    /// (not root).
    pub fn new(args: &[&str], target: &Path) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Mount(target.to_path_buf()))
    }

    /// Makes this mount read-only (`remount,ro`; `bind` for a bind mount).
    pub fn remount_ro(&self, bind: bool) {
        let opts = if bind {
            "remount,bind,ro"
        } else {
            "remount,ro"
        };
        let ok = Command::new("mount")
            .args(["-o", opts])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remounting {} read-only", self.0.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (memory the process has not given back yet): detach it now, the
            // kernel frees it when the last user is gone.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// True if fault-filled memory (userfaultfd) works here; says why not otherwise.
pub fn uffd_available() -> bool {
    match outcore::vm::fault_filling_unavailable() {
        None => true,
        Some(why) => {
            eprintln!("SKIPPED: userfaultfd unusable here: {why}");
            false
        }
    }
}

/// A `kB` field of `/proc/self/status` (e.g. `"RssAnon:"`).
pub fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A test server url with a store in its own schema `name_<pid>`.
pub fn store_url(base: &str, name: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}outcore_schema={name}_{}", std::process::id())
}

/// The test PostgreSQL server's url, or `None` (and a loud skip message) without one.
pub fn pg_server() -> Option<String> {
    let url = std::env::var("OUTCORE_TEST_PG").ok();
    if url.is_none() {
        pg_missing("OUTCORE_TEST_PG is not set (scripts/test.sh starts a server)");
    }
    url
}

/// Says that a PostgreSQL test cannot run and why: a loud skip, or a failure where the test
/// command promised a server (`OUTCORE_REQUIRE_PG`, set by scripts/test.sh), so that a broken
/// server set-up never passes as green.
pub fn pg_missing(why: &str) {
    if std::env::var_os("OUTCORE_REQUIRE_PG").is_some() {
        panic!("{why}, but OUTCORE_REQUIRE_PG says this run has a PostgreSQL server");
    }
    eprintln!("SKIPPED: {why}");
}

/// Commits forever on array "stamps" (created if missing): commit n writes n into four blocks;
/// prints `@ok n` after each success and `@error ...` after each failure (then retries).
pub fn stamp_forever(conn: &outcore::db::Connection) -> ! {
    use outcore::array::Order;
    let mut a = match conn.array("stamps") {
        Ok(a) => a,
        Err(_) => {
            let a = conn.create::<i64>("stamps", &[4 << 18], Order::C).unwrap();
            conn.commit().unwrap();
            a
        }
    };
    loop {
        let r = (|| -> outcore::Result<i64> {
            conn.begin()?;
            let mut v = a.view_mut::<i64>()?;
            let n = v[0] + 1;
            for block in 0..4 {
                v[block << 18] = n;
                v[(block << 18) + 7] = n;
            }
            drop(v);
            conn.commit()?;
            Ok(n)
        })();
        match r {
            Ok(n) => println!("\n@ok {n}"),
            Err(e) => {
                println!("\n@error {e}");
                let _ = conn.abort();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        a = conn.array("stamps").unwrap_or(a);
    }
}

/// Checks that the last visible `stamp_forever` commit is complete; returns its number.
pub fn check_stamps(url: &str) -> i64 {
    let db = outcore::db::Database::open(url).unwrap();
    let conn = db.connect().unwrap();
    let Ok(a) = conn.array("stamps") else {
        return 0;
    };
    let v = a.view::<i64>().unwrap();
    let n = v[0];
    for block in 0..4usize {
        assert_eq!(v[block << 18], n, "block {block} of commit {n}");
        assert_eq!(v[(block << 18) + 7], n);
    }
    n
}
