//! The storage conformance suite: every backend must pass every test here.
//!
//! Generic tests take a fresh store from a fixture; the `conformance!` macro instantiates them
//! per backend. Multi-process and crash tests of the local store are in `storage_processes.rs`.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

mod common;

use outcore::storage::{
    BlobOptions, BlobStorage, CommitRequest, Compression, Key, LocalOptions, LocalStorage, Located,
    MemStorage, Oid, PgOptions, PgStorage, ReaderLease, Storage, Tid, TxnMeta, Write,
};
use outcore::Error;

/// A fresh store plus whatever keeps it alive (a temp dir).
struct Fixture {
    store: Arc<dyn Storage>,
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL stores: url and schema, to damage data behind the store's back.
    pg: Option<(String, String)>,
    /// For stores with block bodies in an object store: the store and its `s3://` url.
    blobs: Option<(Arc<BlobStorage>, String)>,
    /// A temp dir for the disk cache of such a store.
    _cache: Option<tempfile::TempDir>,
}

impl Fixture {
    /// True if block versions can be mapped from files.
    fn mappable(&self) -> bool {
        self.pg.is_none() && self.blobs.is_none()
    }

    /// True if the store keeps small changes as page deltas (format v2); the object stores
    /// keep every version whole.
    fn deltas(&self) -> bool {
        self.blobs.is_none()
    }

    /// Flips one bit of the stored bytes of `key` at `tid`, behind the store's back.
    fn corrupt(&self, key: Key, tid: Tid) {
        if let Some((store, url)) = &self.blobs {
            let path = store.object_path(key, tid).unwrap().expect("a body object");
            common::s3::damage_object(url, &path, 100);
            return;
        }
        if let Some((url, schema)) = &self.pg {
            let Key::Block { file, index } = key else {
                panic!("blocks only")
            };
            let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
            let n = c
                .execute(
                    &format!(
                        "UPDATE {schema}.outcore_data SET bytes =
                           set_byte(bytes, 100, get_byte(bytes, 100) # 32)
                         WHERE id = (SELECT data_id FROM {schema}.outcore_obj
                                     WHERE tag = 1 AND oid = $1 AND idx = $2 AND tid = $3)"
                    ),
                    &[&(file.0 as i64), &(index as i64), &(tid.0 as i64)],
                )
                .unwrap();
            assert_eq!(n, 1);
            return;
        }
        let Located::Mapped(extent) = self.store.locate(key, tid).unwrap() else {
            panic!("raw block must be mappable");
        };
        let path = format!("/proc/self/fd/{}", extent.file.as_raw_fd());
        let rw = OpenOptions::new().write(true).open(path).unwrap();
        let mut b = [0u8];
        extent
            .file
            .read_exact_at(&mut b, extent.offset + 100)
            .unwrap();
        rw.write_all_at(&[b[0] ^ 0x20], extent.offset + 100)
            .unwrap();
    }
}

impl Fixture {
    /// For PostgreSQL stores: the `outcore_obj` rows of block `key`, oldest first, as (tid,
    /// stored as a delta, raw length); `None` for other stores.
    fn pg_versions(&self, key: Key) -> Option<Vec<(Tid, bool, u64)>> {
        let (url, schema) = self.pg.as_ref()?;
        let Key::Block { file, index } = key else {
            panic!("blocks only")
        };
        let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
        let rows = c
            .query(
                &format!(
                    "SELECT tid, runs IS NOT NULL, raw_len FROM {schema}.outcore_obj
                     WHERE tag = 1 AND oid = $1 AND idx = $2 ORDER BY tid"
                ),
                &[&(file.0 as i64), &(index as i64)],
            )
            .unwrap();
        Some(
            rows.iter()
                .map(|r| {
                    (
                        Tid(r.get::<_, i64>(0) as u64),
                        r.get(1),
                        r.get::<_, i64>(2) as u64,
                    )
                })
                .collect(),
        )
    }
}

fn mem() -> Option<Fixture> {
    Some(Fixture {
        store: Arc::new(MemStorage::new()),
        _dir: None,
        pg: None,
        blobs: None,
        _cache: None,
    })
}

fn mem_lz4() -> Option<Fixture> {
    Some(Fixture {
        store: Arc::new(MemStorage::with_compression(Compression::Lz4)),
        _dir: None,
        pg: None,
        blobs: None,
        _cache: None,
    })
}

fn local_with(compression: Compression) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = LocalOptions {
        compression,
        segment_bytes: 1 << 20, // small, so tests cross segment boundaries
        ..LocalOptions::default()
    };
    let store = LocalStorage::open_with(dir.path().join("store"), options).expect("open");
    Some(Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
        pg: None,
        blobs: None,
        _cache: None,
    })
}

fn local() -> Option<Fixture> {
    local_with(Compression::None)
}

fn local_zstd() -> Option<Fixture> {
    local_with(Compression::Zstd)
}

/// A fresh store in its own schema of the test PostgreSQL server (`OUTCORE_TEST_PG`, set by
/// scripts/test.sh); `None` (test skipped, loudly) without one.
fn pg_with(compression: Compression) -> Option<Fixture> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let url = common::pg_server()?;
    let schema = format!(
        "conf_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let options = PgOptions {
        schema: schema.clone(),
        compression,
        ..PgOptions::default()
    };
    Some(Fixture {
        store: Arc::new(PgStorage::open_with(&url, options).expect("open PostgreSQL store")),
        _dir: None,
        pg: Some((url, schema)),
        blobs: None,
        _cache: None,
    })
}

fn pg() -> Option<Fixture> {
    pg_with(Compression::None)
}

fn pg_lz4() -> Option<Fixture> {
    pg_with(Compression::Lz4)
}

/// `index` (a fixture of an empty store) as the index of a store whose block bodies live
/// under a fresh prefix of the test S3 server; `None` (test skipped, loudly) without one.
/// Grace period zero: pack deletes unreferenced objects at once (no commit runs meanwhile).
/// `cached`: with a disk cache of 1 MiB (so tests evict from it), whose bodies are mapped.
fn blobs_over(index: Option<Fixture>, cached: bool) -> Option<Fixture> {
    let index = index?;
    let url = common::s3::s3_store_url("conf")?;
    let cache = cached.then(|| tempfile::tempdir().expect("temp dir"));
    let options = BlobOptions {
        grace: Duration::ZERO,
        cache_dir: cache.as_ref().map(|d| d.path().to_path_buf()),
        cache_disk_bytes: 1 << 20,
        ..BlobOptions::default()
    };
    let store = Arc::new(BlobStorage::new(index.store, &url, options).expect("blob store"));
    Some(Fixture {
        store: store.clone(),
        _dir: index._dir,
        pg: None,
        blobs: Some((store, url)),
        _cache: cache,
    })
}

fn block(file: Oid, index: u64) -> Key {
    Key::Block { file, index }
}

fn store_one(s: &dyn Storage, base: Tid, key: Key, data: Vec<u8>) -> outcore::Result<Tid> {
    s.commit(CommitRequest {
        base,
        writes: vec![(key, Write::Store(data))],
        meta: TxnMeta::new("tester", format!("store {key}")),
    })
}

fn fresh_file(s: &dyn Storage) -> Oid {
    Oid(s.new_oids(1).unwrap().start)
}

/// Incompressible bytes (xorshift), different per `seed`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Bytes that compress well but differ per `seed`.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8))
        .collect()
}

// ---------------------------------------------------------------- generic tests

fn empty_store(s: &dyn Storage) {
    assert_eq!(s.head().unwrap(), Tid::ZERO);
    let f = fresh_file(s);
    assert!(s.load(block(f, 0), Tid::MAX).unwrap().is_none());
    assert!(matches!(
        s.locate(block(f, 0), Tid::MAX).unwrap(),
        Located::Absent
    ));
    assert!(s.log(Tid::ZERO, Tid::MAX).unwrap().is_empty());
}

fn snapshot_reads(s: &dyn Storage) {
    let f = fresh_file(s);
    let k = block(f, 3);
    let t1 = store_one(s, s.head().unwrap(), k, pattern(1, 8192)).unwrap();
    let t2 = store_one(s, t1, k, pattern(2, 8192)).unwrap();
    assert!(t2 > t1);
    assert_eq!(s.load(k, t1).unwrap().unwrap().data, pattern(1, 8192));
    assert_eq!(s.load(k, Tid(t2.0 - 1)).unwrap().unwrap().tid, t1);
    let v2 = s.load(k, t2).unwrap().unwrap();
    assert_eq!((v2.tid, v2.data), (t2, pattern(2, 8192)));
    assert_eq!(s.load(k, Tid::MAX).unwrap().unwrap().tid, t2);
    assert!(
        s.load(k, Tid(t1.0 - 1)).unwrap().is_none(),
        "before the first commit"
    );
    // Metadata records are versioned the same way.
    let m = Key::Meta(fresh_file(s));
    let t3 = store_one(s, t2, m, b"meta v1".to_vec()).unwrap();
    assert_eq!(s.load(m, t3).unwrap().unwrap().data, b"meta v1");
    assert!(s.load(m, t2).unwrap().is_none());
}

fn holes_and_deletes(s: &dyn Storage) {
    let f = fresh_file(s);
    let t1 = store_one(s, Tid::ZERO, block(f, 5), pattern(5, 4096)).unwrap();
    for i in [0, 4, 6, u64::MAX] {
        assert!(
            s.load(block(f, i), t1).unwrap().is_none(),
            "block {i} is a hole"
        );
    }
    let t2 = s
        .commit(CommitRequest {
            base: t1,
            writes: vec![(block(f, 5), Write::Delete)],
            meta: TxnMeta::default(),
        })
        .unwrap();
    assert!(s.load(block(f, 5), t2).unwrap().is_none());
    assert!(matches!(
        s.locate(block(f, 5), t2).unwrap(),
        Located::Absent
    ));
    assert_eq!(
        s.load(block(f, 5), t1).unwrap().unwrap().data,
        pattern(5, 4096)
    );
    // A deleted key can be written again.
    let t3 = store_one(s, t2, block(f, 5), pattern(6, 100)).unwrap();
    assert_eq!(
        s.load(block(f, 5), t3).unwrap().unwrap().data,
        pattern(6, 100)
    );
}

fn conflict_on_same_key(s: &dyn Storage) {
    let f = fresh_file(s);
    let base = store_one(s, Tid::ZERO, block(f, 0), pattern(0, 4096)).unwrap();
    let winner = store_one(s, base, block(f, 0), pattern(1, 4096)).unwrap();
    let log_before = s.log(Tid::ZERO, Tid::MAX).unwrap().len();
    let other = block(f, 1);
    let err = s
        .commit(CommitRequest {
            base,
            writes: vec![
                (other, Write::Store(pattern(9, 4096))),
                (block(f, 0), Write::Store(pattern(2, 4096))),
            ],
            meta: TxnMeta::default(),
        })
        .unwrap_err();
    match err {
        Error::Conflict {
            key,
            base: b,
            committed,
        } => {
            assert_eq!((key, b, committed), (block(f, 0), base, winner));
        }
        e => panic!("expected a conflict, got {e}"),
    }
    assert!(Error::Conflict {
        key: other,
        base,
        committed: winner
    }
    .is_retryable());
    // Nothing of the losing commit is visible.
    assert_eq!(s.head().unwrap(), winner);
    assert!(s.load(other, Tid::MAX).unwrap().is_none());
    assert_eq!(s.log(Tid::ZERO, Tid::MAX).unwrap().len(), log_before);
    assert_eq!(
        s.load(block(f, 0), Tid::MAX).unwrap().unwrap().data,
        pattern(1, 4096)
    );
    // Deleting counts as writing.
    let err = s
        .commit(CommitRequest {
            base,
            writes: vec![(block(f, 0), Write::Delete)],
            meta: TxnMeta::default(),
        })
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }));
    // Retrying from the new head succeeds.
    store_one(s, winner, block(f, 0), pattern(3, 4096)).unwrap();
}

fn disjoint_keys_never_conflict(s: &dyn Storage) {
    let f = fresh_file(s);
    let base = s.head().unwrap();
    for i in 0..20 {
        store_one(s, base, block(f, i), pattern(i as u8, 4096)).unwrap();
    }
    let g = fresh_file(s);
    store_one(s, base, Key::Meta(g), b"x".to_vec()).unwrap();
}

fn tids_increase_and_track_time(s: &dyn Storage) {
    let f = fresh_file(s);
    let mut last = s.head().unwrap();
    let start = Tid::now();
    for i in 0..50 {
        let t = store_one(s, last, block(f, i % 3), vec![i as u8; 10]).unwrap();
        assert!(t > last, "tid {t} after {last}");
        assert_eq!(s.head().unwrap(), t);
        last = t;
    }
    assert!(last >= start);
    let age = Tid::now()
        .time()
        .duration_since(last.time())
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "tids are timestamps");
}

fn commit_log_is_complete(s: &dyn Storage) {
    let f = fresh_file(s);
    let mut tids = Vec::new();
    let mut base = s.head().unwrap();
    for i in 0..10u64 {
        let keys: Vec<Key> = (0..=i % 3).map(|j| block(f, i * 10 + j)).collect();
        let t = s
            .commit(CommitRequest {
                base,
                writes: keys
                    .iter()
                    .rev()
                    .map(|k| (*k, Write::Store(vec![1; 64])))
                    .collect(),
                meta: TxnMeta::new(format!("user{i}"), format!("commit {i}")),
            })
            .unwrap();
        tids.push((t, keys));
        base = t;
    }
    let log = s.log(Tid::ZERO, Tid::MAX).unwrap();
    assert_eq!(log.len(), 10);
    for (i, (entry, (tid, keys))) in log.iter().zip(&tids).enumerate() {
        assert_eq!(entry.tid, *tid);
        assert_eq!(&entry.keys, keys, "keys of commit {i}, in key order");
        assert_eq!(entry.user, format!("user{i}"));
        assert_eq!(entry.description, format!("commit {i}"));
    }
    let changes = s.changes(tids[2].0, tids[5].0).unwrap();
    let got: Vec<Tid> = changes.iter().map(|c| c.0).collect();
    assert_eq!(got, vec![tids[3].0, tids[4].0, tids[5].0]);
    assert!(s.changes(tids[5].0, tids[5].0).unwrap().is_empty());
}

fn load_many_matches_load(s: &dyn Storage) {
    let f = fresh_file(s);
    let mut base = s.head().unwrap();
    for i in [0u64, 2, 3, 7] {
        base = store_one(s, base, block(f, i), noise(i, 5000 + i as usize)).unwrap();
    }
    let t = s
        .commit(CommitRequest {
            base,
            writes: vec![(block(f, 3), Write::Delete)],
            meta: TxnMeta::default(),
        })
        .unwrap();
    let keys: Vec<Key> = (0..9).rev().map(|i| block(f, i)).collect();
    for at in [base, t] {
        let many = s.load_many(&keys, at).unwrap();
        let one: Vec<_> = keys.iter().map(|&k| s.load(k, at).unwrap()).collect();
        assert_eq!(many, one);
        // load_into decodes the same bytes into a caller's buffer.
        for (&k, v) in keys.iter().zip(&one) {
            let mut buf = vec![0xEE; 8192];
            let n = s.load_into(k, at, &mut buf).unwrap();
            assert_eq!(n, v.as_ref().map(|v| v.data.len()), "{k}");
            if let Some(v) = v {
                assert_eq!(&buf[..v.data.len()], &v.data[..], "{k}");
                let mut small = vec![0u8; v.data.len() - 1];
                assert!(
                    s.load_into(k, at, &mut small).is_err(),
                    "{k}: too small a buffer"
                );
            }
        }
    }
    assert!(s.load_many(&[], t).unwrap().is_empty());
    // The blocks holding data: block 3 was deleted at t.
    assert_eq!(s.block_indices(f, base).unwrap(), vec![0, 2, 3, 7]);
    assert_eq!(s.block_indices(f, t).unwrap(), vec![0, 2, 7]);
    assert!(s.block_indices(fresh_file(s), t).unwrap().is_empty());
}

fn new_oids_are_unique(s: &dyn Storage) {
    let a = s.new_oids(10).unwrap();
    let b = s.new_oids(1).unwrap();
    let c = s.new_oids(5).unwrap();
    assert_eq!(a.end - a.start, 10);
    assert!(a.end <= b.start && b.end <= c.start);
    assert!(a.start > 0, "oid 0 is reserved");
}

fn located_extents_hold_the_bytes(fx: &Fixture) {
    let s = &*fx.store;
    let f = fresh_file(s);
    let data = noise(3, 3 * 4096 + 123);
    let t = store_one(s, Tid::ZERO, block(f, 0), data.clone()).unwrap();
    store_one(s, t, block(f, 1), vec![9; 5000]).unwrap();
    match s.locate(block(f, 0), t).unwrap() {
        Located::Mapped(e) => {
            assert!(fx.mappable());
            assert_eq!(e.offset % 4096, 0, "page aligned");
            assert_eq!(e.len, data.len() as u64);
            assert_eq!(e.tid, t);
            let mut buf = vec![0u8; data.len()];
            e.file.read_exact_at(&mut buf, e.offset).unwrap();
            assert_eq!(buf, data);
        }
        Located::CopyOnly(tid) if !fx.mappable() => {
            assert_eq!(tid, t);
            assert_eq!(s.load(block(f, 0), t).unwrap().unwrap().data, data);
        }
        // Incompressible data is stored raw even in compressed stores.
        other => panic!("expected a mappable extent, got {other:?}"),
    }
    assert!(matches!(s.locate(block(f, 2), t).unwrap(), Located::Absent));
}

fn compressible_blocks(fx: &Fixture, compressed: bool) {
    let s = &*fx.store;
    let f = fresh_file(s);
    let data = vec![42u8; 1 << 20];
    let t = store_one(s, Tid::ZERO, block(f, 0), data.clone()).unwrap();
    assert_eq!(s.load(block(f, 0), t).unwrap().unwrap().data, data);
    if let Some((blobs, _)) = &fx.blobs {
        // Fetched bodies are cached by a background thread.
        blobs.flush_cache();
    }
    let located = s.locate(block(f, 0), t).unwrap();
    if fx._cache.is_some() {
        // Loaded, so in the disk cache, and mapped from there.
        let Located::Mapped(e) = located else {
            panic!("a cached body is mapped: {located:?}")
        };
        assert_eq!((e.offset, e.len, e.tid), (0, data.len() as u64, t));
        let mut buf = vec![0u8; data.len()];
        e.file.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf == data);
    } else if compressed || !fx.mappable() {
        assert!(
            matches!(located, Located::CopyOnly(x) if x == t),
            "{located:?}"
        );
    } else {
        assert!(matches!(located, Located::Mapped(_)), "{located:?}");
    }
}

/// Bytes held by a block source standing in for array memory.
struct Held(Vec<u8>);

impl outcore::storage::Payload for Held {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The bytes of `key` at `at`, through `load` (zero-padded to `len`) and, where the store
/// maps, through `locate` (pieces or an extent read from their files).
fn read_block(fx: &Fixture, key: Key, at: Tid, len: usize) -> Vec<u8> {
    let s = &*fx.store;
    let mut loaded = s.load(key, at).unwrap().map(|v| v.data).unwrap_or_default();
    assert!(
        loaded.len() <= len,
        "{} bytes loaded of a {len}-byte block",
        loaded.len()
    );
    loaded.resize(len, 0);
    let mut into = vec![0xAAu8; len];
    let n = s.load_into(key, at, &mut into).unwrap().unwrap_or(0);
    into[n..].fill(0);
    assert!(into == loaded, "load_into and load disagree at {at}");
    let mut mapped = vec![0u8; len];
    match s.locate(key, at).unwrap() {
        Located::Mapped(e) => e
            .file
            .read_exact_at(&mut mapped[..e.len as usize], e.offset)
            .unwrap(),
        Located::Pieces { pieces, .. } => {
            for p in pieces {
                let (at, n) = (p.at as usize, p.len as usize);
                p.file
                    .read_exact_at(&mut mapped[at..at + n], p.offset)
                    .unwrap();
            }
        }
        Located::Absent | Located::CopyOnly(_) => return loaded,
    }
    assert!(
        mapped == loaded,
        "the located pieces and load disagree at {at}"
    );
    loaded
}

/// Format v2: blocks are stored short and small changes as page deltas; every read path
/// composes the same bytes at every snapshot, before and after pack, and the store grows by
/// the changed pages, not by whole blocks.
fn page_deltas(fx: &Fixture) {
    const PAGES: usize = 64;
    const LEN: usize = PAGES * 4096;
    let s = &*fx.store;
    let f = fresh_file(s);
    let k = block(f, 0);
    // 40 pages of data, 24 of zeros: stored short.
    let mut current = noise(7, LEN);
    current[40 * 4096..].fill(0);
    let mut tid = s
        .commit(CommitRequest {
            base: s.head().unwrap(),
            writes: vec![(k, Write::StoreFrom(Arc::new(Held(current.clone()))))],
            meta: TxnMeta::default(),
        })
        .unwrap();
    let mut history = vec![(tid, current.clone())];
    // 40 commits changing one or two pages each (some past the stored end).
    for i in 0..40u32 {
        let first = (i * 7) % 62;
        let pages = if i % 5 == 0 {
            first..first + 2
        } else {
            first..first + 1
        };
        let fresh = noise(100 + u64::from(i), pages.len() * 4096);
        current[pages.start as usize * 4096..pages.end as usize * 4096].copy_from_slice(&fresh);
        tid = s
            .commit(CommitRequest {
                base: tid,
                writes: vec![(
                    k,
                    Write::Pages {
                        pages: vec![pages],
                        from: Arc::new(Held(current.clone())),
                    },
                )],
                meta: TxnMeta::default(),
            })
            .unwrap();
        history.push((tid, current.clone()));
    }
    let absent = block(f, 1);
    for (at, expected) in &history {
        assert!(read_block(fx, k, *at, LEN) == *expected, "version at {at}");
        // Batched reads compose the same (short) bytes; a key asked for twice is read twice.
        let many = s.load_many(&[k, absent, k], *at).unwrap();
        let one = s.load(k, *at).unwrap();
        assert!(many == [one.clone(), None, one], "load_many at {at}");
    }
    if let Some(rows) = fx.pg_versions(k) {
        // The first version is stored short, most of the others as deltas (one or two pages).
        assert_eq!(rows.len(), history.len());
        assert_eq!((rows[0].1, rows[0].2), (false, 40 * 4096), "{rows:?}");
        let deltas: Vec<_> = rows.iter().filter(|r| r.1).collect();
        assert!(deltas.len() >= 30, "{rows:?}");
        assert!(deltas.iter().all(|r| r.2 <= 2 * 4096), "{rows:?}");
    }
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Stored: one short whole version (40 pages), and per chain of deltas at most
    // CHAIN_FACTOR (2) × a whole version before the next whole one.
    let stats = s.pack(Tid::ZERO).unwrap();
    let whole_versions = 41 * LEN as u64;
    assert!(
        !fx.deltas() || stats.body_bytes_before < whole_versions / 4,
        "41 versions of a {LEN}-byte block take {} bytes",
        stats.body_bytes_before
    );
    // Pack at the middle of the history (no lease holds it back): what stays readable reads
    // the same, and the block's newest version is whole again.
    let middle = history[20].0;
    s.pack(middle).unwrap();
    for (at, expected) in history.iter().filter(|(at, _)| *at >= middle) {
        assert!(
            read_block(fx, k, *at, LEN) == *expected,
            "version at {at} after pack"
        );
    }
    let located = s.locate(k, tid).unwrap();
    assert!(
        !matches!(located, Located::Pieces { .. }),
        "pack folds the newest version into one extent: {located:?}"
    );
    if let Some(rows) = fx.pg_versions(k) {
        // The version kept at the horizon (whose base pack removed) and the newest one are
        // whole again; the deltas between them stay.
        let kept = rows.first().unwrap();
        assert!(kept.0 <= middle && !kept.1, "{rows:?}");
        assert!(!rows.last().unwrap().1, "{rows:?}");
        assert!(rows.iter().any(|r| r.1), "{rows:?}");
    }
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // A conflicting delta (stale base) is refused like any write.
    let stale = s.commit(CommitRequest {
        base: history[0].0,
        writes: vec![(
            k,
            Write::Pages {
                pages: std::iter::once(0..1).collect(),
                from: Arc::new(Held(current.clone())),
            },
        )],
        meta: TxnMeta::default(),
    });
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    // Pages outside the block are bad input, not a panic.
    let bad = s.commit(CommitRequest {
        base: tid,
        writes: vec![(
            k,
            Write::Pages {
                pages: std::iter::once(60..70).collect(),
                from: Arc::new(Held(current.clone())),
            },
        )],
        meta: TxnMeta::default(),
    });
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");
    // A damaged delta is reported by verify and refused by reads, never composed.
    if fx.pg.is_some() {
        current[5 * 4096] ^= 1;
        let damaged = s
            .commit(CommitRequest {
                base: tid,
                writes: vec![(
                    k,
                    Write::Pages {
                        pages: std::iter::once(5..6).collect(),
                        from: Arc::new(Held(current.clone())),
                    },
                )],
                meta: TxnMeta::default(),
            })
            .unwrap();
        assert!(fx.pg_versions(k).unwrap().last().unwrap().1, "a delta");
        fx.corrupt(k, damaged);
        let report = s.verify().unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|e| matches!(e, Error::Corrupt { tid, .. } if *tid == damaged)),
            "{:?}",
            report.problems
        );
        assert!(matches!(s.load(k, damaged), Err(Error::Corrupt { .. })));
        let mut out = vec![0u8; LEN];
        assert!(matches!(
            s.load_into(k, damaged, &mut out),
            Err(Error::Corrupt { .. })
        ));
    }
}

/// Allocated bytes of a file (holes take none).
fn allocated(file: &std::fs::File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().unwrap().blocks() * 512
}

/// Versions written ahead into staged space: published by a commit without a copy (the
/// version is the staged extent), given back when dropped unpublished, kept staged across a
/// refused commit, and still readable after pack. Stores that cannot stage say so.
fn staged_versions(fx: &Fixture) {
    let s = &*fx.store;
    let Some(extent) = s.stage(64 * 1024).unwrap() else {
        return;
    };
    assert!(s.stage(1000).is_err(), "staged space is whole pages");
    let f = fresh_file(s);
    let k = block(f, 0);
    let data = noise(11, 40 * 1024);
    extent.file().write_all_at(&data, extent.offset()).unwrap();
    let held = Arc::new(Held(extent_bytes(&extent)));
    let base = s.head().unwrap();
    // Someone else writes the block first: the staged write conflicts and stays staged.
    let theirs = store_one(s, base, k, vec![1; 4096]).unwrap();
    let refused = s.commit(CommitRequest {
        base,
        writes: vec![(
            k,
            Write::Staged {
                extent: extent.clone(),
                from: held.clone(),
            },
        )],
        meta: TxnMeta::default(),
    });
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    assert!(!extent.is_published());
    let tid = s
        .commit(CommitRequest {
            base: theirs,
            writes: vec![(
                k,
                Write::Staged {
                    extent: extent.clone(),
                    from: held,
                },
            )],
            meta: TxnMeta::default(),
        })
        .unwrap();
    assert!(extent.is_published());
    assert_eq!(s.load(k, tid).unwrap().unwrap().data, data, "stored short");
    assert!(
        allocated(extent.file()) < 64 * 1024,
        "the staged space past the version is given back: {} bytes allocated",
        allocated(extent.file())
    );
    match s.locate(k, tid).unwrap() {
        Located::Mapped(e) => {
            assert_eq!(
                e.offset,
                extent.offset(),
                "the staged extent is the version"
            );
            assert_eq!(e.len, data.len() as u64);
        }
        other => panic!("a published staged version is mapped: {other:?}"),
    }
    drop(extent); // published: the space stays
    assert_eq!(s.load(k, tid).unwrap().unwrap().data, data);

    // Dropped unpublished: the space is given back.
    let gone = s.stage(256 * 1024).unwrap().unwrap();
    gone.file()
        .write_all_at(&noise(12, 256 * 1024), gone.offset())
        .unwrap();
    let file = gone.file().clone();
    let before = allocated(&file);
    drop(gone);
    assert!(
        allocated(&file) + 200 * 1024 <= before,
        "dropping staged space frees it: {before} -> {}",
        allocated(&file)
    );

    s.pack(Tid::MAX).unwrap();
    assert_eq!(s.load(k, tid).unwrap().unwrap().data, data, "after pack");
    let report = s.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// The bytes of a staged extent, read back from its file.
fn extent_bytes(extent: &outcore::storage::StagedExtent) -> Vec<u8> {
    let mut out = vec![0u8; extent.len() as usize];
    extent
        .file()
        .read_exact_at(&mut out, extent.offset())
        .unwrap();
    out
}

fn pack_respects_leases(s: Arc<dyn Storage>) {
    let f = fresh_file(&*s);
    let k = block(f, 0);
    let gone = block(f, 1);
    let t1 = store_one(&*s, Tid::ZERO, k, pattern(1, 4096)).unwrap();
    let t1b = store_one(&*s, t1, gone, pattern(7, 4096)).unwrap();
    let reader = ReaderLease::at_head(s.clone()).unwrap();
    assert_eq!(reader.tid(), t1b);
    let t2 = store_one(&*s, t1b, k, pattern(2, 4096)).unwrap();
    let t3 = s
        .commit(CommitRequest {
            base: t2,
            writes: vec![(gone, Write::Delete)],
            meta: TxnMeta::default(),
        })
        .unwrap();
    let stats = s.pack(t3).unwrap();
    assert_eq!(stats.horizon, t1b, "the live reader holds the horizon back");
    assert_eq!(s.load(k, t1b).unwrap().unwrap().data, pattern(1, 4096));
    assert_eq!(s.load(gone, t1b).unwrap().unwrap().data, pattern(7, 4096));
    drop(reader);
    let stats = s.pack(t3).unwrap();
    assert_eq!(stats.horizon, t3);
    assert!(stats.versions_removed >= 3, "{stats:?}");
    assert!(stats.body_bytes_after < stats.body_bytes_before);
    assert_eq!(s.load(k, t3).unwrap().unwrap().data, pattern(2, 4096));
    // Snapshots older than the horizon whose version pack removed fail loudly on every read
    // path, never show a hole (zeros) instead.
    reads_fail_below_horizon(&*s, k, t1, t3);
    reads_fail_below_horizon(&*s, gone, t1b, t3);
    // A version pack kept is still exactly what an older snapshot saw: served.
    assert_eq!(
        s.load(k, Tid(t3.0 - 1)).unwrap().unwrap().data,
        pattern(2, 4096)
    );
    // Listings cannot tell: every snapshot below the horizon fails.
    assert!(matches!(
        s.block_indices(k_file(k), Tid(t3.0 - 1)),
        Err(Error::SnapshotTooOld { .. })
    ));
    assert_eq!(s.block_indices(k_file(k), t3).unwrap(), vec![0]);
    assert_eq!(s.pack_horizon().unwrap(), t3);
    assert!(matches!(
        ReaderLease::at(s.clone(), t1),
        Err(Error::SnapshotTooOld { .. })
    ));
    assert!(matches!(s.log(t1, t3), Err(Error::SnapshotTooOld { .. })));
    // The store keeps working after pack: commits, reads, conflicts.
    let t4 = store_one(&*s, t3, k, pattern(4, 4096)).unwrap();
    assert_eq!(s.load(k, t4).unwrap().unwrap().data, pattern(4, 4096));
    assert!(store_one(&*s, t3, k, pattern(5, 4096)).is_err());
    assert_eq!(s.log(t3, t4).unwrap().len(), 1);
    assert!(s.verify().unwrap().problems.is_empty());
}

fn k_file(key: Key) -> Oid {
    match key {
        Key::Block { file, .. } => file,
        Key::Meta(oid) => oid,
    }
}

/// Every read of `key` at `at`, older than the pack horizon `horizon`, fails with
/// `SnapshotTooOld` naming both.
fn reads_fail_below_horizon(s: &dyn Storage, key: Key, at: Tid, horizon: Tid) {
    let too_old = |what: &str, r: outcore::Result<()>| match r {
        Err(Error::SnapshotTooOld {
            requested,
            horizon: h,
        }) => {
            assert_eq!((requested, h), (at, horizon), "{what}");
        }
        other => panic!("{what} of {key} at {at} below the horizon {horizon}: {other:?}"),
    };
    too_old("load", s.load(key, at).map(drop));
    too_old("load_into", s.load_into(key, at, &mut [0; 8192]).map(drop));
    too_old("locate", s.locate(key, at).map(drop));
    too_old("load_many", s.load_many(&[key, key], at).map(drop));
    too_old("block_indices", s.block_indices(k_file(key), at).map(drop));
    let e = s.load(key, at).unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("pack horizon"), "{e}");
}

fn checksum_mismatch_detected(fx: &Fixture) {
    let s = &*fx.store;
    let f = fresh_file(s);
    let data = noise(4, 8192);
    let t = store_one(s, Tid::ZERO, block(f, 2), data).unwrap();
    fx.corrupt(block(f, 2), t);
    match s.load(block(f, 2), t) {
        Err(Error::Corrupt { key, tid, .. }) => assert_eq!((key, tid), (block(f, 2), t)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let report = s.verify().unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].to_string().contains("block 2 of file"));
}

fn concurrent_threads_commit(s: Arc<dyn Storage>) {
    let f = fresh_file(&*s);
    let base = s.head().unwrap();
    let results: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                // Pairs of threads race for one key each.
                scope.spawn(move || {
                    store_one(&*s, base, block(f, i / 2), vec![i as u8; 4096]).is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for pair in results.chunks(2) {
        assert_eq!(
            pair.iter().filter(|ok| **ok).count(),
            1,
            "exactly one winner per key"
        );
    }
}

/// One module of `#[test]`s per backend, named `$backend`, each taking a fresh store from
/// `$fixture` (skipping when it is `None`). `compressed`: the backend compresses blocks.
macro_rules! conformance {
    ($backend:ident, $fixture:expr, compressed = $compressed:expr) => {
        mod $backend {
            use super::*;
            // Each entry is a generic test and its arguments, from the fixture `fx`.
            conformance!(@tests $fixture, fx;
                empty_store(&*fx.store),
                snapshot_reads(&*fx.store),
                holes_and_deletes(&*fx.store),
                conflict_on_same_key(&*fx.store),
                disjoint_keys_never_conflict(&*fx.store),
                tids_increase_and_track_time(&*fx.store),
                commit_log_is_complete(&*fx.store),
                load_many_matches_load(&*fx.store),
                new_oids_are_unique(&*fx.store),
                located_extents_hold_the_bytes(&fx),
                compressible_blocks(&fx, $compressed),
                page_deltas(&fx),
                staged_versions(&fx),
                pack_respects_leases(fx.store.clone()),
                checksum_mismatch_detected(&fx),
                concurrent_threads_commit(fx.store.clone()),
            );
        }
    };
    // `$fx` is passed in so that the binding here and the arguments above are the same name.
    (@tests $fixture:expr, $fx:ident; $( $name:ident ( $( $arg:expr ),* ) ),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let Some($fx) = $fixture else { return };
                super::$name($( $arg ),*)
            }
        )*
    };
}

conformance!(mem_store, mem(), compressed = false);
conformance!(mem_store_lz4, mem_lz4(), compressed = true);
conformance!(local_store, local(), compressed = false);
conformance!(local_store_zstd, local_zstd(), compressed = true);
conformance!(pg_store, pg(), compressed = false);
conformance!(pg_store_lz4, pg_lz4(), compressed = true);
conformance!(
    local_index_s3,
    blobs_over(local(), false),
    compressed = false
);
conformance!(pg_index_s3, blobs_over(pg(), false), compressed = false);
conformance!(
    local_index_s3_cached,
    blobs_over(local(), true),
    compressed = false
);
conformance!(
    pg_index_s3_cached,
    blobs_over(pg(), true),
    compressed = false
);
