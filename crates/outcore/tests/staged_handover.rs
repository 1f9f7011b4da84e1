//! Block bodies staged by one process and published by another (dask workers and the client
//! that commits), on every store that can: the embedded store, PostgreSQL, and object
//! storage over either index. The writer stages and hands over, exits (or is killed); the
//! committing process holds the references and publishes them atomically, without a copy.
//! A pack before the commit keeps what the committing process holds; a body nothing holds is
//! reclaimed by pack, and then fails the commit cleanly (nothing written), never reads as
//! zeros. PostgreSQL and S3 cases need the test servers (scripts/pg-test-server.sh,
//! scripts/s3-test-server.sh); skipped loudly without them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

mod common;

use outcore::array::Order;
use outcore::db::Database;
use outcore::storage::{
    BlobOptions, BlobStorage, CommitRequest, Compression, Key, LocalStorage, Oid, PgOptions,
    PgStorage, StagedPlace, StagedRef, Storage, Tid, TxnMeta, Write,
};
use outcore::Error;

const BLK: usize = 64 << 10;

/// PostgreSQL stores here use a short lease timeout, so a killed writer's lease expires soon.
const LEASE_SECS: u64 = 3;

fn block_bytes(b: u64) -> Vec<u8> {
    (0..BLK)
        .map(|i| (i as u64 * 7 + b * 13 + 1) as u8)
        .collect()
}

fn block(file: Oid, index: u64) -> Key {
    Key::Block { file, index }
}

/// Opens the store `spec` names: `local:DIR`, `pg:URL`, or `s3:BUCKET_URL|INDEX_SPEC`, whose
/// pack deletes unreferenced objects after `grace`.
fn open(spec: &str, grace: Duration) -> Arc<dyn Storage> {
    let (kind, rest) = spec.split_once(':').unwrap();
    match kind {
        "local" => Arc::new(LocalStorage::open(rest).unwrap()),
        "pg" => Arc::new(PgStorage::open(rest).unwrap()),
        "s3" => {
            let (url, index) = rest.split_once('|').unwrap();
            let options = BlobOptions {
                grace,
                ..BlobOptions::default()
            };
            Arc::new(BlobStorage::new(open(index, grace), url, options).unwrap())
        }
        _ => panic!("bad spec {spec}"),
    }
}

/// The writer: stages blocks 0..3 of file `OUTCORE_STAGE_FILE` into the store
/// `OUTCORE_STAGE_SPEC`, prints their references, and exits — or with `OUTCORE_STAGE_HANG`
/// waits to be killed.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var("OUTCORE_STAGE_SPEC") else {
        return;
    };
    let file = Oid(std::env::var("OUTCORE_STAGE_FILE")
        .unwrap()
        .parse()
        .unwrap());
    let store = open(&spec, BlobOptions::default().grace);
    for b in 0..3u64 {
        let r = store
            .stage_body(block(file, b), &block_bytes(b))
            .unwrap()
            .expect("the store stages");
        let hex: String = r.to_bytes().iter().map(|x| format!("{x:02x}")).collect();
        println!("\n@{b} {hex}");
    }
    println!("\n@staged");
    if std::env::var_os("OUTCORE_STAGE_HANG").is_some() {
        loop {
            std::thread::park();
        }
    }
}

/// Runs the writer on `spec` for file `file`: its references once it staged them, and the
/// process if it was told to wait (`hang`), else after it ended.
fn staged_elsewhere(spec: &str, file: Oid, hang: bool) -> (Vec<StagedRef>, Option<Child>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("OUTCORE_STAGE_SPEC", spec)
        .env("OUTCORE_STAGE_FILE", file.0.to_string())
        .stdout(Stdio::piped());
    if hang {
        cmd.env("OUTCORE_STAGE_HANG", "1");
    }
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut refs = Vec::new();
    for line in out.lines().map_while(Result::ok) {
        // A waiting writer says nothing more; one that ends is read to its end.
        if line.starts_with("@staged") && hang {
            break;
        }
        let Some((_, hex)) = line.strip_prefix('@').and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        refs.push(StagedRef::from_bytes(&bytes).unwrap());
    }
    assert_eq!(refs.len(), 3, "the writer staged three blocks");
    if hang {
        return (refs, Some(child));
    }
    assert!(child.wait().unwrap().success());
    (refs, None)
}

/// One store under test: how to open it, the store, and one whose pack reclaims at once
/// (grace 0 for object storage; the same store otherwise).
struct Fixture {
    spec: String,
    store: Arc<dyn Storage>,
    eager: Arc<dyn Storage>,
    kind: Kind,
    _tmp: tempfile::TempDir,
}

#[derive(PartialEq)]
enum Kind {
    Local,
    Pg,
    S3,
}

fn local() -> Option<Fixture> {
    let tmp = tempfile::tempdir().unwrap();
    let spec = format!("local:{}", tmp.path().join("db").display());
    let store = open(&spec, Duration::ZERO);
    Some(Fixture {
        spec,
        eager: store.clone(),
        store,
        kind: Kind::Local,
        _tmp: tmp,
    })
}

fn pg_spec(name: &str) -> Option<String> {
    let base = common::pg_server()?;
    let url = common::store_url(&base, &format!("staged_{name}"));
    Some(format!("pg:{url}&lease_timeout={LEASE_SECS}"))
}

/// A PostgreSQL store; created with `compression` (staged bodies are encoded like any).
fn pg(name: &str, compression: Compression) -> Option<Fixture> {
    let spec = pg_spec(name)?;
    let url = spec.strip_prefix("pg:").unwrap();
    let options = PgOptions {
        compression,
        ..PgOptions::default()
    };
    drop(PgStorage::open_with(url, options).unwrap());
    let store = open(&spec, Duration::ZERO);
    Some(Fixture {
        spec,
        eager: store.clone(),
        store,
        kind: Kind::Pg,
        _tmp: tempfile::tempdir().unwrap(),
    })
}

fn s3(name: &str, over_pg: bool) -> Option<Fixture> {
    let url = common::s3::s3_store_url(name)?;
    let tmp = tempfile::tempdir().unwrap();
    let index = if over_pg {
        pg_spec(name)?
    } else {
        format!("local:{}", tmp.path().join("index").display())
    };
    let spec = format!("s3:{url}|{index}");
    let store = open(&spec, BlobOptions::default().grace);
    let eager: Arc<dyn Storage> = Arc::new(
        BlobStorage::new(
            open(&index, Duration::ZERO),
            &url,
            BlobOptions {
                grace: Duration::ZERO,
                ..BlobOptions::default()
            },
        )
        .unwrap(),
    );
    Some(Fixture {
        spec,
        store,
        eager,
        kind: Kind::S3,
        _tmp: tmp,
    })
}

fn commit(s: &dyn Storage, base: Tid, writes: Vec<(Key, Write)>) -> outcore::Result<Tid> {
    s.commit(CommitRequest {
        base,
        writes,
        meta: TxnMeta::new("tester", "staged"),
    })
}

/// Publishes `refs` in one commit at `base`, holding them first (as `BigArray::adopt` does).
fn publish(s: &dyn Storage, base: Tid, refs: &[StagedRef]) -> outcore::Result<Tid> {
    let holds = refs
        .iter()
        .map(|r| s.hold_staged(r))
        .collect::<outcore::Result<Vec<_>>>()?;
    let writes = refs.iter().map(|r| (r.key, Write::Adopt(*r))).collect();
    let done = commit(s, base, writes);
    drop(holds);
    done
}

fn loaded(s: &dyn Storage, key: Key) -> Option<Vec<u8>> {
    s.load(key, Tid::MAX).unwrap().map(|v| {
        let mut d = v.data;
        d.resize(BLK, 0);
        d
    })
}

fn assert_gone(f: &Fixture, r: &StagedRef) {
    let head = f.store.head().unwrap();
    let before = loaded(&*f.store, r.key);
    let err = publish(&*f.store, head, std::slice::from_ref(r)).unwrap_err();
    assert!(err.to_string().contains("is gone"), "{err}");
    assert_eq!(f.store.head().unwrap(), head, "nothing was committed");
    assert!(loaded(&*f.store, r.key) == before);
}

/// Staged, the writer gone, held here across a pack, published at once: visible only after
/// the commit, intact, and kept by later packs.
fn published_after_the_writer_exited(f: Fixture) {
    let file = Oid(f.store.new_oids(1).unwrap().start);
    let (refs, _) = staged_elsewhere(&f.spec, file, false);
    let holds: Vec<_> = refs
        .iter()
        .map(|r| f.store.hold_staged(r).unwrap())
        .collect();
    // The writer is gone: without this process's holds, pack would reclaim its bodies.
    f.store.pack(Tid::MAX).unwrap();
    for r in &refs {
        assert!(
            loaded(&*f.store, r.key).is_none(),
            "nothing visible before the commit"
        );
    }
    let writes = refs.iter().map(|r| (r.key, Write::Adopt(*r))).collect();
    let tid = commit(&*f.store, f.store.head().unwrap(), writes).unwrap();
    drop(holds);
    let log = f
        .store
        .log(tid.0.checked_sub(1).map_or(Tid::ZERO, Tid), tid);
    assert_eq!(
        log.unwrap()[0].keys.len(),
        3,
        "one commit publishes all three"
    );
    f.eager.pack(Tid::MAX).unwrap();
    for (b, r) in refs.iter().enumerate() {
        assert!(
            loaded(&*f.store, r.key) == Some(block_bytes(b as u64)),
            "block {b}"
        );
    }
    let report = f.store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    if f.kind == Kind::Pg {
        // Published once: the staged row is consumed by the commit.
        assert_gone(&f, &refs[0]);
    }
}

/// Staged by a process that is then killed, never held: the next pack (after the writer's
/// lease expired, or the grace period) reclaims the bodies.
fn staged_by_a_killed_process_is_reclaimed(f: Fixture) {
    let file = Oid(f.store.new_oids(1).unwrap().start);
    let (refs, child) = staged_elsewhere(&f.spec, file, true);
    let mut child = child.unwrap();
    // SAFETY: kill(2) of our own child with a plain signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    if f.kind == Kind::Pg {
        // Until then the killed writer's lease still counts as live.
        std::thread::sleep(Duration::from_secs(LEASE_SECS + 1));
    }
    let stats = f.eager.pack(Tid::MAX).unwrap();
    match f.kind {
        Kind::Pg => assert_eq!(
            (stats.body_bytes_before > 0, stats.body_bytes_after),
            (true, 0),
            "the staged bodies were the only ones"
        ),
        Kind::S3 => assert_eq!(stats.body_bytes_after, 0, "the staged objects are deleted"),
        Kind::Local => {
            let dir = f.spec.strip_prefix("local:").unwrap();
            let left: Vec<_> = std::fs::read_dir(format!("{dir}/segments"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.starts_with('s'))
                .collect();
            assert!(left.is_empty(), "staging segments left: {left:?}");
        }
    }
    for r in &refs {
        assert_gone(&f, r);
    }
}

/// A staged body adopted for a block another commit changed first: the commit conflicts
/// and writes nothing; once the hold is dropped (the transaction aborted), pack reclaims it.
fn a_conflicting_commit_publishes_nothing(f: Fixture) {
    let file = Oid(f.store.new_oids(1).unwrap().start);
    let key = block(file, 0);
    let t1 = commit(
        &*f.store,
        Tid::ZERO,
        vec![(key, Write::Store(vec![1; BLK]))],
    )
    .unwrap();
    let (refs, _) = staged_elsewhere(&f.spec, file, false);
    let hold = f.store.hold_staged(&refs[0]).unwrap();
    let t2 = commit(&*f.store, t1, vec![(key, Write::Store(vec![2; BLK]))]).unwrap();
    let err = commit(&*f.store, t1, vec![(key, Write::Adopt(refs[0]))]).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert_eq!(f.store.head().unwrap(), t2);
    assert!(loaded(&*f.store, key) == Some(vec![2; BLK]));
    // The transaction ends: nothing holds the body any more (the writer handed it over).
    drop(hold);
    f.eager.pack(Tid::MAX).unwrap();
    assert_gone(&f, &refs[0]);
    assert!(loaded(&*f.store, key) == Some(vec![2; BLK]));
}

/// A reference is bound to its block and its store: anything else is refused with a clear
/// error, nothing written.
fn references_for_another_block_or_store_are_refused(f: Fixture) {
    let file = Oid(f.store.new_oids(1).unwrap().start);
    let r = f
        .store
        .stage_body(block(file, 0), &block_bytes(0))
        .unwrap()
        .expect("the store stages");
    let head = f.store.head().unwrap();
    let wrong_block = commit(&*f.store, head, vec![(block(file, 1), Write::Adopt(r))]);
    let e = wrong_block.unwrap_err().to_string();
    assert!(e.contains("staged for another block"), "{e}");
    let other_place = match r.place {
        StagedPlace::Row(_) => StagedPlace::Object(5),
        _ => StagedPlace::Row(5),
    };
    let foreign = StagedRef {
        place: other_place,
        ..r
    };
    let e = f.store.hold_staged(&foreign).unwrap_err().to_string();
    assert!(e.contains("was not staged by"), "{e}");
    let e = commit(&*f.store, head, vec![(r.key, Write::Adopt(foreign))]).unwrap_err();
    assert!(e.to_string().contains("was not staged by"), "{e}");
    assert_eq!(f.store.head().unwrap(), head);
    publish(&*f.store, head, &[r]).unwrap();
    assert!(loaded(&*f.store, r.key) == Some(block_bytes(0)));
}

macro_rules! on_every_store {
    ($($test:ident),*) => {
        mod embedded {
            $(#[test] fn $test() { super::$test(super::local().unwrap()) })*
        }
        mod postgres {
            use outcore::storage::Compression;
            $(#[test] fn $test() {
                if let Some(f) = super::pg(stringify!($test), Compression::None) {
                    super::$test(f)
                }
            })*
        }
        mod postgres_zstd {
            use outcore::storage::Compression;
            $(#[test] fn $test() {
                let name = concat!("z_", stringify!($test));
                if let Some(f) = super::pg(name, Compression::Zstd) { super::$test(f) }
            })*
        }
        mod local_index_s3 {
            $(#[test] fn $test() {
                if let Some(f) = super::s3(stringify!($test), false) { super::$test(f) }
            })*
        }
        mod pg_index_s3 {
            $(#[test] fn $test() {
                if let Some(f) = super::s3(stringify!($test), true) { super::$test(f) }
            })*
        }
    };
}

on_every_store!(
    published_after_the_writer_exited,
    staged_by_a_killed_process_is_reclaimed,
    a_conflicting_commit_publishes_nothing,
    references_for_another_block_or_store_are_refused
);

/// Through the database API: `adopt` checks the block, and `mem:` stores cannot stage.
#[test]
fn adopt_checks_the_block_and_mem_stores_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let db = Database::open(tmp.path().join("db").to_str().unwrap()).unwrap();
    let conn = db.connect().unwrap();
    let a = conn
        .create_raw("a", "|u1", 1, &[3 * BLK as u64], Order::C, BLK)
        .unwrap();
    conn.commit().unwrap();
    let file = a.meta().unwrap().file;
    let r = db.stage_block(file, 1, &block_bytes(1)).unwrap().unwrap();
    let e = a.adopt(0, r).unwrap_err().to_string();
    assert!(e.contains("staged for another block"), "{e}");
    assert!(a.adopt(7, r).is_err(), "past the end of the array");
    a.adopt(1, r).unwrap();
    conn.abort().unwrap();
    conn.commit().unwrap();
    assert!(
        a.view::<u8>().unwrap().iter().all(|&x| x == 0),
        "abort dropped it"
    );
    a.adopt(1, r).unwrap();
    conn.commit().unwrap();
    assert!(a.view::<u8>().unwrap().as_slice().unwrap()[BLK..2 * BLK] == block_bytes(1)[..]);

    let mem = Database::open("mem:").unwrap();
    assert!(mem.stage_block(file, 0, &block_bytes(0)).unwrap().is_none());
    let c = mem.connect().unwrap();
    let m = c
        .create_raw("m", "|u1", 1, &[BLK as u64], Order::C, BLK)
        .unwrap();
    let mr = StagedRef {
        key: block(m.meta().unwrap().file, 0),
        ..r
    };
    assert!(m.adopt(0, mr).is_err(), "a mem: store cannot adopt");
}
