//! Security basics: private file modes, read-only opens never write.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use outcore::array::Order;
use outcore::db::{Database, DbOptions};

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

fn make(dir: &Path) {
    let db = Database::open(dir.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let mut a = conn.create::<f64>("a", &[1 << 20], Order::C).unwrap();
    a.view_mut::<f64>().unwrap().fill(2.0);
    conn.commit().unwrap();
}

#[test]
fn store_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    make(&dir);
    let mut paths = vec![dir.clone()];
    walk(&dir, &mut paths);
    for p in paths {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
        } else if name != "lock.mdb" {
            // LMDB's lock file is shared memory for readers of other processes; the rest is
            // data and must be private.
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }
    }
}

#[test]
fn read_only_open_never_writes_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    make(&dir);
    let mut files = Vec::new();
    walk(&dir, &mut files);
    let data: Vec<_> = files
        .into_iter()
        .filter(|p| p.is_file() && !p.ends_with("lock.mdb"))
        .collect();
    let before: Vec<(i64, i64, u64)> = data
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).unwrap();
            (m.mtime(), m.mtime_nsec(), m.len())
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let db = Database::open_with(
        dir.to_str().unwrap(),
        DbOptions {
            readonly: true,
            ..DbOptions::default()
        },
    )
    .unwrap();
    let conn = db.connect().unwrap();
    let a = conn.array("a").unwrap();
    assert_eq!(a.view::<f64>().unwrap().sum(), 2.0 * (1 << 20) as f64);
    assert!(conn.create::<f64>("b", &[1], Order::C).is_err());
    conn.commit().unwrap(); // nothing to commit: no write
    conn.abort().unwrap();
    drop((a, conn, db));
    let after: Vec<(i64, i64, u64)> = data
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).unwrap();
            (m.mtime(), m.mtime_nsec(), m.len())
        })
        .collect();
    assert_eq!(before, after, "{data:?}");
}
