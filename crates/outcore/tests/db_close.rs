//! Closing releases at once what a connection or database holds (reader leases, store files),
//! even while objects referencing them live on.

use std::path::Path;

use outcore::array::Order;
use outcore::db::{Database, DbOptions};
use outcore::storage::{Compression, Tid};
use outcore::Error;

const N: u64 = 1 << 20; // 8 MiB of f64: 4 blocks

/// Files of this process open under `dir`.
fn open_files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .collect()
}

fn write_all(db: &Database, value: f64) {
    let conn = db.connect().unwrap();
    let mut a = match conn.array("a") {
        Ok(a) => a,
        Err(_) => conn.create::<f64>("a", &[N], Order::C).unwrap(),
    };
    a.view_mut::<f64>().unwrap().fill(value);
    conn.commit().unwrap();
    conn.close().unwrap();
}

#[test]
fn a_closed_connection_no_longer_pins_history() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("db").to_str().unwrap()).unwrap();
    write_all(&db, 1.0);
    // A reader reads, then is closed while it (and an array of it) stays referenced.
    let reader = db.connect().unwrap();
    let array = reader.array("a").unwrap();
    assert_eq!(array.view::<f64>().unwrap().sum(), N as f64);
    reader.close().unwrap();
    write_all(&db, 2.0);
    let stats = db.storage().pack(Tid::MAX).unwrap();
    assert!(
        stats.body_bytes_after < stats.body_bytes_before,
        "pack freed nothing: the closed reader still pins the first version ({stats:?})"
    );
    drop((array, reader));
}

#[test]
fn a_closed_database_closes_its_files_and_views_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(dir.path().join("db").to_str().unwrap()).unwrap();
    write_all(&db, 3.0);
    let conn = db.connect().unwrap(); // deliberately left open
    let array = conn.array("a").unwrap();
    let view = array.raw_view(0..N).unwrap();
    assert!(!open_files_under(dir.path()).is_empty());
    db.close();
    assert_eq!(
        open_files_under(dir.path()),
        Vec::<std::path::PathBuf>::new()
    );
    // SAFETY: `view.keepalive` keeps the reservation mapped; the array has N f64s.
    let data = unsafe { std::slice::from_raw_parts(view.ptr as *const f64, N as usize) };
    assert!(data.iter().all(|&x| x == 3.0), "views outlive the store");
    assert!(matches!(conn.commit(), Err(Error::Closed(_))));
    assert!(matches!(db.connect(), Err(Error::Closed(_))));
    db.close();
    // Another open of the same store works while the closed one's objects still live.
    let again = Database::open(dir.path().join("db").to_str().unwrap()).unwrap();
    assert_eq!(
        again
            .connect()
            .unwrap()
            .array("a")
            .unwrap()
            .shape()
            .unwrap(),
        vec![N]
    );
    drop((view, array, conn));
}

#[test]
fn untouched_views_of_a_closed_compressed_store_survive_pack() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let options = DbOptions {
        compression: Compression::Lz4,
        ..DbOptions::default()
    };
    let db = Database::open_with(path.to_str().unwrap(), options).unwrap();
    write_all(&db, 1.0);
    let reader = db.connect().unwrap();
    let array = reader.array("a").unwrap();
    // Compressed blocks are fetched on first touch: nothing is read yet.
    let view = array.raw_view(0..N).unwrap();
    reader.close().unwrap();
    db.close();
    let other = Database::open(path.to_str().unwrap()).unwrap();
    write_all(&other, 2.0);
    other.storage().pack(Tid::MAX).unwrap();
    // SAFETY: `view.keepalive` keeps the reservation mapped; the array has N f64s.
    let data = unsafe { std::slice::from_raw_parts(view.ptr as *const f64, N as usize) };
    assert!(
        data.iter().all(|&x| x == 1.0),
        "the view still reads its snapshot"
    );
    // Released once the view is gone (when the fetch workers let go of its memory, which
    // may be a moment later: checked without them in the unit tests of ClosableStorage).
    drop((view, array, reader));
}
