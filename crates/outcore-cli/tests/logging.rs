//! Warnings of the core reach stderr, filtered by `OUTCORE_LOG`.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_outcore");

#[test]
fn warnings_go_to_stderr() {
    // A bad filter is itself reported as a warning through the same path as the core's.
    let out = Command::new(BIN)
        .args(["ls", "mem:"])
        .env("OUTCORE_LOG", "outcore=loud")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("WARN") && stderr.contains("ignoring OUTCORE_LOG=\"outcore=loud\""),
        "{stderr}"
    );
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("NAME"));

    let quiet = Command::new(BIN)
        .args(["ls", "mem:"])
        .env_remove("OUTCORE_LOG")
        .output()
        .unwrap();
    assert!(quiet.status.success() && quiet.stderr.is_empty());
}
