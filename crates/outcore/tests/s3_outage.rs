//! The S3 server killed (SIGKILL) and restarted mid-run: requests made during the outage are
//! retried within the store's retry window and succeed once the server is back; beyond the
//! window `load` raises the documented error and a commit writes nothing. In its own test
//! binary: it takes the shared test server down.
//!
//! Needs the test S3 server (scripts/s3-test-server.sh; `OUTCORE_TEST_S3_DIR` names it).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outcore::storage::{
    BlobOptions, BlobStorage, CommitRequest, Key, LocalStorage, Oid, Storage, Tid, TxnMeta, Write,
};
use outcore::Error;

/// Runs `scripts/s3-test-server.sh COMMAND DIR`.
fn server(command: &str, dir: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/s3-test-server.sh"
    );
    let ok = Command::new("bash")
        .args([script, command, dir])
        .status()
        .unwrap()
        .success();
    assert!(ok, "s3-test-server.sh {command} {dir}");
}

/// The server, killed: resumed when dropped, also when the test fails, so that later tests
/// find it.
struct Outage(String);

impl Outage {
    fn begin(dir: &str) -> Outage {
        server("kill", dir);
        Outage(dir.to_owned())
    }

    fn end(self) {
        drop(self)
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        server("resume", &self.0);
    }
}

fn block(index: u64) -> Key {
    Key::Block {
        file: Oid(1),
        index,
    }
}

fn body(index: u64, generation: u8) -> Vec<u8> {
    let mut v = vec![generation; 300_000];
    v[..8].copy_from_slice(&index.to_le_bytes());
    v
}

fn commit(s: &dyn Storage, base: Tid, generation: u8) -> outcore::Result<Tid> {
    s.commit(CommitRequest {
        base,
        writes: (0..4)
            .map(|i| (block(i), Write::Store(body(i, generation))))
            .chain([(Key::Meta(Oid(7)), Write::Store(vec![generation]))])
            .collect(),
        meta: TxnMeta::new("tester", format!("generation {generation}")),
    })
}

#[test]
fn s3_server_killed_and_restarted_mid_run() {
    let Some(url) = common::s3::s3_store_url("outage") else {
        return;
    };
    let dir = std::env::var("OUTCORE_TEST_S3_DIR").expect("set with OUTCORE_TEST_S3_URL");
    let tmp = tempfile::tempdir().unwrap();
    let index: Arc<dyn Storage> = Arc::new(LocalStorage::open(tmp.path().join("index")).unwrap());
    let window = Duration::from_secs(2);
    let hasty = BlobStorage::new(
        index.clone(),
        &url,
        BlobOptions {
            retry_window: window,
            ..BlobOptions::default()
        },
    )
    .unwrap();
    let patient = Arc::new(BlobStorage::new(index.clone(), &url, BlobOptions::default()).unwrap());
    let t1 = commit(&hasty, Tid::ZERO, 1).unwrap();
    let objects = common::s3::list_objects(&url);

    let outage = Outage::begin(&dir);
    // Beyond the window: `load` raises an I/O error naming the block, no hang, no zeros.
    let started = Instant::now();
    let err = hasty.load(block(2), t1).unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("fetching the body of block 2 of file 1"),
        "{err}"
    );
    // A hang check, not a speed check: the window plus one backoff step and a request.
    assert!(waited < window + Duration::from_secs(60), "{waited:?}");
    // A commit whose uploads fail writes nothing.
    let err = commit(&hasty, t1, 2).unwrap_err();
    assert!(err.to_string().contains("nothing was committed"), "{err}");
    assert_eq!(index.head().unwrap(), t1);
    assert_eq!(index.log(Tid::ZERO, Tid::MAX).unwrap().len(), 1);

    // Within the window: a commit and a load made during the outage wait for the server.
    let during = {
        let patient = patient.clone();
        std::thread::spawn(move || {
            let read = patient.load(block(3), t1);
            (read, commit(&*patient, t1, 3))
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    outage.end();
    let (read, committed) = during.join().unwrap();
    assert_eq!(read.unwrap().unwrap().data, body(3, 1));
    let t3 = committed.unwrap();

    // After the restart every version reads right, from a fresh client too, and the store
    // verifies clean: the failed commit left nothing behind.
    let fresh = BlobStorage::new(index.clone(), &url, BlobOptions::default()).unwrap();
    for s in [&hasty, &*patient, &fresh] {
        for i in 0..4 {
            assert_eq!(s.load(block(i), t1).unwrap().unwrap().data, body(i, 1));
            assert_eq!(s.load(block(i), t3).unwrap().unwrap().data, body(i, 3));
        }
    }
    assert_eq!(
        index.load(Key::Meta(Oid(7)), t3).unwrap().unwrap().data,
        [3]
    );
    assert_eq!(index.log(Tid::ZERO, Tid::MAX).unwrap().len(), 2);
    let report = fresh.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        common::s3::list_objects(&url).len(),
        objects.len() + 4,
        "only the bodies of the two commits"
    );
}
