//! A full disk during commits: a clear error, nothing half-written, and the store works again
//! once space is freed. Uses a small tmpfs (needs root; skipped loudly otherwise).

use std::process::Command;

use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_is_a_clear_error_and_recoverable() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=40m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    }
    let _mount = Mount(mnt.clone());
    // Take most of the space with a file we can delete later.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![1u8; 24 << 20]).unwrap();

    let dir = mnt.join("db");
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<u8>("a", &[2 << 20], Order::C).unwrap();
    a.view_mut::<u8>().unwrap().fill(1);
    let first = conn.commit().unwrap();
    let mut failure = None;
    for round in 2u8..40 {
        a.append(ndarray::Array1::from_elem(2 << 20, round).view().into_dyn())
            .unwrap();
        match conn.commit() {
            Ok(_) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("the small disk filled up");
    let text = err.to_string();
    assert!(matches!(err, Error::Io { .. } | Error::Lmdb(_)), "{text}");
    assert!(
        text.contains("No space left") || text.to_lowercase().contains("space"),
        "{text}"
    );
    // Nothing of the failed commit is visible; the store verifies.
    conn.abort().unwrap();
    let shape_after_failure = a.shape().unwrap();
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(db.storage().head().unwrap() >= first);
    // Free space: commits work again and the data is right.
    std::fs::remove_file(&filler).unwrap();
    a.append(ndarray::Array1::from_elem(2 << 20, 99u8).view().into_dyn())
        .unwrap();
    conn.commit().unwrap();
    let v = a.view::<u8>().unwrap();
    assert_eq!(v.len() as u64, shape_after_failure[0] + (2 << 20));
    assert_eq!(v[0], 1);
    assert_eq!(v[v.len() - 1], 99);
    let report = db.storage().verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
