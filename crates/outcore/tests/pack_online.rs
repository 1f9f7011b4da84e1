//! Pack is online: commits made while it copies complete at once, and what they wrote
//! (appended to the very segment pack is about to delete) survives the switch. Pack pauses
//! after its copy through the internal `OUTCORE_PACK_PAUSE` hook, so the test needs no timing.

use std::sync::Arc;

use outcore::storage::{CommitRequest, Key, LocalStorage, Oid, Storage, Tid, TxnMeta, Write};

fn store(s: &dyn Storage, base: Tid, key: Key, byte: u8) -> Tid {
    s.commit(CommitRequest {
        base,
        writes: vec![(key, Write::Store(vec![byte; 8192]))],
        meta: TxnMeta::default(),
    })
    .unwrap()
}

#[test]
fn commits_go_on_while_pack_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::open(tmp.path().join("db")).unwrap());
    let file = Oid(s.new_oids(1).unwrap().start);
    let key = |index| Key::Block { file, index };
    let mut tid = Tid::ZERO;
    for round in 0..3u8 {
        for index in 0..4 {
            tid = store(&*s, tid, key(index), round * 10 + index as u8);
        }
    }
    let pause = tmp.path().join("pause");
    std::fs::write(&pause, b"").unwrap();
    std::env::set_var("OUTCORE_PACK_PAUSE", &pause);
    let packer = {
        let s = s.clone();
        std::thread::spawn(move || s.pack(Tid::MAX).unwrap())
    };
    let copied = tmp.path().join("pause.copied");
    while !copied.exists() {
        std::thread::yield_now();
    }
    // Pack has copied everything and waits: these commits do not wait for it.
    let t1 = store(&*s, tid, key(0), 100);
    let t2 = store(&*s, t1, key(9), 109);
    std::fs::remove_file(&pause).unwrap();
    let stats = packer.join().unwrap();
    std::env::remove_var("OUTCORE_PACK_PAUSE");

    assert_eq!(
        stats.versions_removed, 8,
        "two old versions of each of 4 blocks"
    );
    assert_eq!(s.load(key(0), t2).unwrap().unwrap().data, vec![100; 8192]);
    assert_eq!(s.load(key(9), t2).unwrap().unwrap().data, vec![109; 8192]);
    for index in 1..4 {
        assert_eq!(
            s.load(key(index), t2).unwrap().unwrap().data,
            vec![20 + index as u8; 8192]
        );
    }
    // And once more, with nothing in between: everything still reads back.
    s.pack(Tid::MAX).unwrap();
    assert_eq!(
        s.load(key(0), Tid::MAX).unwrap().unwrap().data,
        vec![100; 8192]
    );
    assert_eq!(
        s.load(key(9), Tid::MAX).unwrap().unwrap().data,
        vec![109; 8192]
    );
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let t3 = store(&*s, t2, key(1), 201);
    assert_eq!(s.load(key(1), t3).unwrap().unwrap().data, vec![201; 8192]);
}
