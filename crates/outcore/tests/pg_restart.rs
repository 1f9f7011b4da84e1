//! A PostgreSQL server restart in the middle of a run: clients report errors, reconnect and
//! continue. In its own test binary so that no other test shares the server meanwhile.
//!
//! Needs `OUTCORE_TEST_PG` and `OUTCORE_TEST_PG_CTL` (scripts/test.sh sets both).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outcore::db::Database;

fn spawn(url: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("OUTCORE_PG_CHILD", "restarter")
        .env("OUTCORE_PG_URL", url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The child: commits forever (see `common::stamp_forever`).
#[test]
fn child_entry() {
    if std::env::var("OUTCORE_PG_CHILD").is_err() {
        return;
    }
    let url = std::env::var("OUTCORE_PG_URL").unwrap();
    let db = Database::open(&url).unwrap();
    let conn = db.connect().unwrap();
    common::stamp_forever(&conn);
}

#[test]
fn server_restart_mid_run_clients_reconnect() {
    let Some(base) = common::pg_server() else {
        return;
    };
    let Ok(ctl) = std::env::var("OUTCORE_TEST_PG_CTL") else {
        common::pg_missing("OUTCORE_TEST_PG_CTL is not set");
        return;
    };
    let url = common::store_url(&base, "restart");
    let mut child = spawn(&url);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, r)) = l.split_once('@') {
                let _ = tx.send(r.to_string());
            }
        }
    });
    let wait_for_ok = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no successful commit {what}"));
            if let Some(n) = line.strip_prefix("ok ") {
                return n.parse::<i64>().unwrap();
            }
        }
    };
    let before = wait_for_ok("before the restart");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{ctl} -m fast restart"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl restart failed");
    // Drain what happened during the restart, then require progress after it.
    let after = loop {
        let n = wait_for_ok("after the restart");
        if n > before + 2 {
            break n;
        }
    };
    // SAFETY: sends SIGKILL to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(common::check_stamps(&url) >= after);
}
