//! Root changes merge by name: two transactions that create or remove *different* names both
//! commit (the root is one record, which conflicted before); the same name changed by both,
//! or an array one removes while the other writes it, still conflicts.

use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

fn stores() -> Vec<(tempfile::TempDir, Database)> {
    let dir = tempfile::tempdir().unwrap();
    let local = Database::open(dir.path().join("db").to_str().unwrap()).unwrap();
    let mem_dir = tempfile::tempdir().unwrap();
    vec![(dir, local), (mem_dir, Database::open("mem:").unwrap())]
}

#[test]
fn different_names_created_concurrently_both_commit() {
    for (_dir, db) in stores() {
        let (c1, c2) = (db.connect().unwrap(), db.connect().unwrap());
        let mut a = c1.create::<f64>("a", &[10], Order::C).unwrap();
        let mut b = c2.create::<f64>("b", &[10], Order::C).unwrap();
        a.view_mut::<f64>().unwrap().fill(1.0);
        b.view_mut::<f64>().unwrap().fill(2.0);
        c1.commit().unwrap();
        c2.commit().expect("a different name does not conflict");
        let c3 = db.connect().unwrap();
        assert_eq!(c3.names().unwrap(), vec!["a", "b"]);
        assert_eq!(c3.array("a").unwrap().view::<f64>().unwrap().sum(), 10.0);
        assert_eq!(c3.array("b").unwrap().view::<f64>().unwrap().sum(), 20.0);
        // Both connections see both names after their boundary.
        assert_eq!(c1.names().unwrap(), vec!["a"]);
        c1.abort().unwrap();
        assert_eq!(c1.names().unwrap(), vec!["a", "b"]);
        assert_eq!(c2.names().unwrap(), vec!["a", "b"]);
    }
}

#[test]
fn removing_one_name_while_another_is_created_commits_both() {
    for (_dir, db) in stores() {
        let setup = db.connect().unwrap();
        setup.create::<u8>("old", &[4], Order::C).unwrap();
        setup.create::<u8>("kept", &[4], Order::C).unwrap();
        setup.commit().unwrap();
        let (c1, c2) = (db.connect().unwrap(), db.connect().unwrap());
        c1.remove("old").unwrap();
        c2.create::<u8>("new", &[4], Order::C).unwrap();
        c2.commit().unwrap();
        c1.commit()
            .expect("removing another name does not conflict");
        let c3 = db.connect().unwrap();
        assert_eq!(c3.names().unwrap(), vec!["kept", "new"]);
    }
}

#[test]
fn the_same_name_changed_by_both_conflicts() {
    for (_dir, db) in stores() {
        let (c1, c2) = (db.connect().unwrap(), db.connect().unwrap());
        c1.create::<u8>("x", &[4], Order::C).unwrap();
        c2.create::<u8>("x", &[8], Order::C).unwrap();
        c1.commit().unwrap();
        let e = c2.commit().unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e}");
        c2.abort().unwrap();
        assert_eq!(c2.array("x").unwrap().shape().unwrap(), vec![4]);
    }
}

#[test]
fn writing_an_array_another_transaction_removed_conflicts() {
    for (_dir, db) in stores() {
        let setup = db.connect().unwrap();
        setup.create::<u8>("a", &[4096 * 4], Order::C).unwrap();
        setup.commit().unwrap();
        let (c1, c2) = (db.connect().unwrap(), db.connect().unwrap());
        // c1 grows `a` (new blocks only) and adds a name; c2 removes `a`.
        let a = c1.array("a").unwrap();
        a.append(ndarray::Array1::<u8>::ones(3 << 21).view().into_dyn())
            .unwrap();
        c1.create::<u8>("other", &[4], Order::C).unwrap();
        c2.remove("a").unwrap();
        c2.commit().unwrap();
        let e = c1.commit().unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e}");
    }
}
