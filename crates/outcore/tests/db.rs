//! Database, transactions and BigArray, on the in-memory and the embedded store.

use ndarray::{s, Array2};
use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

/// A fresh database of each kind plus what keeps it alive.
fn databases() -> Vec<(Database, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let local = Database::open(dir.path().join("db").to_str().unwrap()).unwrap();
    vec![(Database::open("mem:").unwrap(), None), (local, Some(dir))]
}

const BLK: u64 = 2 << 20;

#[test]
fn persistence_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = Database::open(path.to_str().unwrap()).unwrap();
        let conn = db.connect().unwrap();
        let mut a = conn.create::<f64>("a", &[3, 1_000_000], Order::C).unwrap();
        a.slice_mut::<f64, _>(s![1, ..]).unwrap().fill(2.5);
        a.view_mut::<f64>().unwrap()[[2, 999_999]] = 7.0;
        conn.commit().unwrap();
    }
    let db = Database::open(path.to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    assert_eq!(conn.names().unwrap(), vec!["a".to_string()]);
    let a = conn.array("a").unwrap();
    let v = a.view::<f64>().unwrap();
    assert_eq!(v.shape(), &[3, 1_000_000]);
    assert_eq!(v.slice(s![1, ..]).sum(), 2.5e6);
    assert_eq!(v[[2, 999_999]], 7.0);
    assert_eq!(v[[0, 5]], 0.0);
    // Wrong element type is an error, not a reinterpretation.
    assert!(matches!(a.view::<f32>(), Err(Error::InvalidArgument(_))));
}

#[test]
fn abort_reverts_data_and_shape() {
    for (db, _keep) in databases() {
        let conn = db.connect().unwrap();
        let mut a = conn.create::<i64>("a", &[1000], Order::C).unwrap();
        a.view_mut::<i64>().unwrap().fill(1);
        conn.commit().unwrap();
        a.view_mut::<i64>().unwrap()[10] = 99;
        a.resize(&[5]).unwrap();
        assert!(conn.is_dirty().unwrap());
        conn.abort().unwrap();
        assert_eq!(a.shape().unwrap(), vec![1000]);
        let v = a.view::<i64>().unwrap();
        assert_eq!(v[10], 1);
        assert_eq!(v.sum(), 1000);
        assert!(!conn.is_dirty().unwrap());
        drop(v); // views go before transaction boundaries
                 // An array created in an aborted transaction is gone.
        conn.create::<u8>("tmp", &[10], Order::C).unwrap();
        conn.abort().unwrap();
        assert!(!conn.contains("tmp").unwrap());
    }
}

#[test]
fn savepoint_rollback() {
    for (db, _keep) in databases() {
        let conn = db.connect().unwrap();
        let mut a = conn.create::<u32>("a", &[4 * BLK / 4], Order::C).unwrap();
        a.view_mut::<u32>().unwrap().fill(1);
        conn.commit().unwrap();
        a.view_mut::<u32>().unwrap()[0] = 10;
        let sp = conn.savepoint().unwrap();
        a.view_mut::<u32>().unwrap()[0] = 20;
        a.view_mut::<u32>().unwrap()[3 * BLK as usize / 4] = 30;
        a.resize(&[100]).unwrap();
        conn.create::<u8>("later", &[1], Order::C).unwrap();
        conn.rollback(&sp).unwrap();
        assert!(!conn.contains("later").unwrap());
        assert_eq!(a.shape().unwrap(), vec![BLK]);
        let v = a.view::<u32>().unwrap();
        assert_eq!((v[0], v[3 * BLK as usize / 4], v[1]), (10, 1, 1));
        drop(v);
        conn.commit().unwrap();
        let other = db.connect().unwrap();
        assert_eq!(other.array("a").unwrap().view::<u32>().unwrap()[0], 10);
        conn.begin().unwrap();
        assert!(
            conn.rollback(&sp).is_err(),
            "savepoint of a finished transaction"
        );
    }
}

#[test]
fn isolation_and_visibility_between_connections() {
    for (db, _keep) in databases() {
        let c1 = db.connect().unwrap();
        let mut a1 = c1.create::<f64>("a", &[100], Order::C).unwrap();
        c1.commit().unwrap();
        let c2 = db.connect().unwrap();
        let a2 = c2.array("a").unwrap();
        let v2 = a2.view::<f64>().unwrap();
        a1.view_mut::<f64>().unwrap()[5] = 1.0;
        assert_eq!(v2[5], 0.0, "uncommitted changes are invisible");
        c1.commit().unwrap();
        assert_eq!(
            v2[5], 0.0,
            "committed changes appear only at the next transaction"
        );
        drop(v2);
        c2.begin().unwrap();
        assert_eq!(a2.view::<f64>().unwrap()[5], 1.0, "the new snapshot");
    }
}

#[test]
fn same_block_written_twice_conflicts() {
    for (db, _keep) in databases() {
        let c1 = db.connect().unwrap();
        c1.create::<f64>("a", &[100], Order::C).unwrap();
        c1.commit().unwrap();
        let c2 = db.connect().unwrap();
        let mut a1 = c1.array("a").unwrap();
        let mut a2 = c2.array("a").unwrap();
        a1.view_mut::<f64>().unwrap()[1] = 1.0;
        a2.view_mut::<f64>().unwrap()[1] = 2.0;
        c1.commit().unwrap();
        let err = c2.commit().unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(
            a2.view::<f64>().unwrap()[1],
            2.0,
            "changes kept until abort"
        );
        c2.abort().unwrap();
        assert_eq!(
            a2.view::<f64>().unwrap()[1],
            1.0,
            "after abort: the winner's data"
        );
        // Two resizes conflict too.
        a1.resize(&[200]).unwrap();
        a2.resize(&[300]).unwrap();
        c1.commit().unwrap();
        assert!(matches!(c2.commit(), Err(Error::Conflict { .. })));
        c2.abort().unwrap();
        assert_eq!(a2.shape().unwrap(), vec![200]);
    }
}

#[test]
fn append_is_seen_by_others() {
    for (db, _keep) in databases() {
        let c1 = db.connect().unwrap();
        let a = c1.create::<i32>("a", &[0, 3], Order::C).unwrap();
        c1.commit().unwrap();
        let c2 = db.connect().unwrap();
        let b = c2.array("a").unwrap();
        let rows = Array2::from_shape_fn((1000, 3), |(i, j)| (i * 3 + j) as i32);
        a.append(rows.view().into_dyn()).unwrap();
        a.append(rows.view().into_dyn()).unwrap();
        // Bad shape: clear error, nothing changes.
        let bad = Array2::<i32>::zeros((2, 4));
        assert!(matches!(
            a.append(bad.view().into_dyn()),
            Err(Error::InvalidShape(_))
        ));
        assert_eq!(a.shape().unwrap(), vec![2000, 3]);
        c1.commit().unwrap();
        c2.begin().unwrap();
        assert_eq!(b.shape().unwrap(), vec![2000, 3]);
        let v = b.view::<i32>().unwrap();
        assert_eq!(v[[1999, 2]], 2999);
        assert_eq!(v.slice(s![1000..1002, ..]), rows.slice(s![0..2, ..]));
    }
}

#[test]
fn fortran_order_grows_on_the_last_axis() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        let a = c.create::<f32>("f", &[4, 2], Order::F).unwrap();
        assert!(matches!(a.resize(&[5, 2]), Err(Error::InvalidShape(_))));
        let cols = Array2::from_shape_fn((4, 3), |(i, j)| (10 * i + j) as f32);
        a.append(cols.view().into_dyn()).unwrap();
        assert_eq!(a.shape().unwrap(), vec![4, 5]);
        let v = a.view::<f32>().unwrap();
        assert_eq!(v.slice(s![.., 2..]), cols);
        assert_eq!(v.strides(), &[1, 4]);
        drop(v);
        c.commit().unwrap();
    }
}

#[test]
fn shrink_then_grow_shows_zeros() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        let n = 3 * BLK / 8 + 100;
        let mut a = c.create::<u64>("a", &[n], Order::C).unwrap();
        a.view_mut::<u64>().unwrap().fill(5);
        c.commit().unwrap();
        a.resize(&[BLK / 8 + 7]).unwrap();
        a.resize(&[n]).unwrap();
        let check = |a: &outcore::db::BigArray| {
            let v = a.view::<u64>().unwrap();
            assert_eq!(v[(BLK / 8 + 6) as usize], 5);
            assert_eq!(v[(BLK / 8 + 7) as usize], 0);
            assert_eq!(v[(n - 1) as usize], 0);
            assert_eq!(v.sum(), 5 * (BLK / 8 + 7));
        };
        check(&a);
        c.commit().unwrap();
        check(&a);
        let other = db.connect().unwrap();
        check(&other.array("a").unwrap());
    }
}

#[test]
fn historical_views_and_readonly() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        let mut a = c.create::<i16>("a", &[10], Order::C).unwrap();
        a.view_mut::<i16>().unwrap().fill(1);
        let t1 = c.commit().unwrap();
        a.view_mut::<i16>().unwrap().fill(2);
        c.commit().unwrap();
        let old = db.connect_at(t1).unwrap();
        let mut h = old.array("a").unwrap();
        assert_eq!(h.view::<i16>().unwrap().sum(), 10);
        assert!(matches!(h.view_mut::<i16>(), Err(Error::ReadOnly(_))));
        assert!(matches!(h.resize(&[3]), Err(Error::ReadOnly(_))));
        old.begin().unwrap();
        assert_eq!(h.view::<i16>().unwrap().sum(), 10, "historical stays put");
        let hist = db.history(10).unwrap();
        assert_eq!(hist.len(), 2);
    }
}

#[test]
fn bad_input_is_an_error() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        let a = c.create::<f64>("a", &[10, 10], Order::C).unwrap();
        assert!(matches!(
            a.slice::<f64, _>(s![10, ..]),
            Err(Error::IndexOutOfBounds(_))
        ));
        assert!(matches!(
            a.slice::<f64, _>(s![.., -11]),
            Err(Error::IndexOutOfBounds(_))
        ));
        assert!(matches!(
            a.slice::<f64, _>(s![..11, ..]),
            Err(Error::IndexOutOfBounds(_))
        ));
        #[allow(clippy::reversed_empty_ranges)] // an empty slice is valid input
        let empty = a.slice::<f64, _>(s![-1, 3..1]).unwrap();
        assert_eq!(empty.len(), 0);
        drop(empty);
        assert_eq!(a.slice::<f64, _>(s![..;-3, 0]).unwrap().len(), 4);
        assert!(a.resize(&[10]).is_err());
        assert!(a.resize(&[10, 11]).is_err());
        assert!(c.create::<f64>("", &[1], Order::C).is_err());
        assert!(c.create::<f64>("x", &[u64::MAX, 4], Order::C).is_err());
        assert!(matches!(c.array("nope"), Err(Error::NotFound(_))));
        let z = c.create::<f64>("z", &[0, 5], Order::C).unwrap();
        assert_eq!(z.view::<f64>().unwrap().len(), 0);
        c.commit().unwrap();
        assert!(Database::open("").is_err());
        assert!(Database::open("http://x").is_err());
    }
}

#[test]
fn zero_blocks_are_stored_as_holes_and_views_outlive_the_connection() {
    let db = Database::open("mem:").unwrap();
    let c = db.connect().unwrap();
    let mut a = c.create::<u8>("a", &[4 * BLK], Order::C).unwrap();
    a.view_mut::<u8>().unwrap()[0] = 1;
    a.view_mut::<u8>().unwrap()[0] = 0; // written, but back to zeros
    a.view_mut::<u8>().unwrap()[(2 * BLK) as usize] = 3;
    let t = c.commit().unwrap();
    let info = db.storage().log(outcore::storage::Tid::ZERO, t).unwrap();
    let last = info.last().unwrap();
    assert_eq!(
        last.keys.len(),
        3,
        "block 2, metadata, root: block 0, written back to zeros in a new array, is no change"
    );
    let body_bytes: u64 = db.storage().pack(t).unwrap().body_bytes_after;
    assert_eq!(
        body_bytes, 4096,
        "only the non-zero block takes space, stored short: up to its last non-zero page"
    );
    let raw = a.raw_view(0..u64::MAX).unwrap();
    drop(a);
    c.close().unwrap();
    drop(c);
    // SAFETY (test): the keepalive in `raw` keeps the memory mapped.
    let byte = unsafe { *raw.ptr.add((2 * BLK) as usize) };
    assert_eq!(byte, 3);
}

#[test]
fn views_from_before_a_resize_stay_coherent() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        let a = c.create::<u8>("a", &[100], Order::C).unwrap();
        let before = a.raw_view(0..100).unwrap();
        a.resize(&[3 * BLK]).unwrap();
        let after = a.raw_view(0..3 * BLK).unwrap();
        assert_eq!(before.shape, vec![100], "the old view keeps its shape");
        assert_eq!(after.shape, vec![3 * BLK as usize]);
        assert_eq!(before.ptr, after.ptr, "both are views of one reservation");
        // SAFETY (test): both point into mapped, writable memory kept alive by keepalive.
        unsafe {
            *after.ptr.add(42) = 9;
            assert_eq!(*before.ptr.add(42), 9);
            *before.ptr.add(7) = 5;
            assert_eq!(*after.ptr.add(7), 5);
        }
        c.commit().unwrap();
        assert_eq!(a.view::<u8>().unwrap()[42], 9);
    }
}

#[test]
fn arrays_outgrowing_their_reservation_keep_old_views_coherent() {
    let options = outcore::db::DbOptions {
        reserve_bytes: Some(4 << 20),
        ..Default::default()
    };
    let db = Database::open_with("mem:", options).unwrap();
    let c = db.connect().unwrap();
    let a = c.create::<u8>("a", &[1 << 20], Order::C).unwrap();
    let old = a.raw_view(0..u64::MAX).unwrap();
    // SAFETY (test): views keep their reservation mapped; indices are inside the views.
    unsafe { *old.ptr = 1 };
    c.commit().unwrap();
    a.append(
        ndarray::Array1::<u8>::from_elem(10 << 20, 2)
            .view()
            .into_dyn(),
    )
    .unwrap();
    let new = a.raw_view(0..u64::MAX).unwrap();
    assert_ne!(old.ptr, new.ptr, "a larger reservation");
    unsafe {
        assert_eq!(*new.ptr, 1);
        assert_eq!(*new.ptr.add((11 << 20) - 1), 2);
        *new.ptr.add(5) = 5; // not seen through the old view before commit
        assert_eq!(*old.ptr.add(5), 0);
        // Written through the old view (another page): committed too. Where both views
        // wrote the same page, the newer view's page wins.
        *old.ptr.add(3 * 4096 + 7) = 7;
    }
    c.commit().unwrap();
    unsafe {
        assert_eq!(*old.ptr.add(5), 5, "old views show committed data");
        assert_eq!(
            *new.ptr.add(3 * 4096 + 7),
            7,
            "old-view writes were committed"
        );
    }
    // Another connection appends far past this connection's reservation.
    let other = db.connect().unwrap();
    let b = other.array("a").unwrap();
    b.append(
        ndarray::Array1::<u8>::from_elem(20 << 20, 3)
            .view()
            .into_dyn(),
    )
    .unwrap();
    other.commit().unwrap();
    c.begin().unwrap();
    let v = a.view::<u8>().unwrap();
    assert_eq!(v.len(), 31 << 20);
    assert_eq!(
        (v[0], v[5], v[3 * 4096 + 7], v[(31 << 20) - 1]),
        (1, 5, 7, 3)
    );
}

/// Review finding: growing past the reservation, then aborting, must show the stored data.
#[test]
fn abort_after_outgrowing_the_reservation_keeps_stored_data() {
    let options = outcore::db::DbOptions {
        reserve_bytes: Some(4 << 20),
        ..Default::default()
    };
    let db = Database::open_with("mem:", options).unwrap();
    let c = db.connect().unwrap();
    let mut a = c.create::<u8>("a", &[1 << 20], Order::C).unwrap();
    a.view_mut::<u8>().unwrap().fill(7);
    c.commit().unwrap();
    a.view_mut::<u8>().unwrap()[0] = 1;
    a.append(
        ndarray::Array1::<u8>::from_elem(10 << 20, 2)
            .view()
            .into_dyn(),
    )
    .unwrap();
    c.abort().unwrap();
    let v = a.view::<u8>().unwrap();
    assert_eq!(v.len(), 1 << 20);
    assert!(v.iter().all(|&x| x == 7), "stored data, not zeros");
    drop(v);
    a.view_mut::<u8>().unwrap()[5] = 9;
    c.commit().unwrap();
    let other = db.connect().unwrap();
    let b = other.array("a").unwrap();
    let w = b.view::<u8>().unwrap();
    assert_eq!((w[0], w[5], w[100]), (7, 9, 7));
}

/// Review finding: truncate-and-refill, then abort, must show the stored data.
#[test]
fn abort_after_shrink_and_refill_keeps_stored_data() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        let mut a = c.create::<u32>("a", &[3 * BLK / 4], Order::C).unwrap();
        a.view_mut::<u32>().unwrap().fill(3);
        c.commit().unwrap();
        let fresh = db.connect().unwrap();
        let b = fresh.array("a").unwrap();
        b.resize(&[0]).unwrap();
        b.append(ndarray::Array1::<u32>::from_elem(10, 8).view().into_dyn())
            .unwrap();
        b.resize(&[3 * BLK / 4]).unwrap();
        fresh.abort().unwrap();
        let v = b.view::<u32>().unwrap();
        assert!(v.iter().all(|&x| x == 3), "stored data after abort");
        drop(v);
        // And a rollback to before the shrink does the same.
        let sp = fresh.savepoint().unwrap();
        b.resize(&[1]).unwrap();
        b.resize(&[3 * BLK / 4]).unwrap();
        assert_eq!(b.view::<u32>().unwrap()[BLK as usize / 2], 0);
        fresh.rollback(&sp).unwrap();
        assert!(b.view::<u32>().unwrap().iter().all(|&x| x == 3));
        drop(a.view_mut::<u32>().unwrap());
    }
}

/// Review finding: arrays first opened after a savepoint are rolled back too.
#[test]
fn rollback_covers_arrays_opened_after_the_savepoint() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        c.create::<i8>("b", &[100], Order::C).unwrap();
        c.commit().unwrap();
        let c2 = db.connect().unwrap();
        let sp = c2.savepoint().unwrap();
        let mut b = c2.array("b").unwrap();
        b.view_mut::<i8>().unwrap()[3] = 5;
        c2.rollback(&sp).unwrap();
        c2.commit().unwrap();
        let check = db.connect().unwrap();
        assert_eq!(check.array("b").unwrap().view::<i8>().unwrap()[3], 0);
    }
}

/// Review finding: removed or replaced arrays are deleted, and pack reclaims their space.
#[test]
fn removed_arrays_are_reclaimed_by_pack() {
    for (db, _keep) in databases() {
        let c = db.connect().unwrap();
        let mut a = c.create::<u8>("a", &[3 * BLK], Order::C).unwrap();
        a.view_mut::<u8>().unwrap().fill(1);
        let mut keep = c.create::<u8>("keep", &[BLK], Order::C).unwrap();
        keep.view_mut::<u8>().unwrap().fill(2);
        c.commit().unwrap();
        let other = db.connect().unwrap();
        let seen = other.array("a").unwrap();
        c.remove("a").unwrap();
        // Created and removed in one transaction: never stored at all.
        let mut tmp = c.create::<u8>("tmp", &[BLK], Order::C).unwrap();
        tmp.view_mut::<u8>().unwrap().fill(3);
        c.remove("tmp").unwrap();
        let t = c.commit().unwrap();
        assert!(a.shape().is_err(), "the removed array is gone");
        other.begin().unwrap();
        assert!(seen.shape().is_err(), "other connections see the removal");
        let stats = db.storage().pack(t).unwrap();
        assert_eq!(
            stats.body_bytes_after, BLK,
            "only 'keep' remains: {stats:?}"
        );
        assert_eq!(c.names().unwrap(), vec!["keep".to_string()]);
    }
}

/// A store deleted and created anew at the same path while this process still uses the old
/// one cannot be opened (one LMDB environment per path and process): a clear error, and it
/// opens once the old one is gone.
#[test]
fn a_store_recreated_at_a_path_in_use_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let old = Database::open(path.to_str().unwrap()).unwrap();
    let conn = old.connect().unwrap();
    conn.create::<f64>("a", &[10], Order::C).unwrap();
    conn.commit().unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    let err = Database::open(path.to_str().unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("deleted and created anew")),
        "{err}"
    );
    drop(conn);
    drop(old);
    let new = Database::open(path.to_str().unwrap()).unwrap();
    assert!(new.connect().unwrap().names().unwrap().is_empty());
}
