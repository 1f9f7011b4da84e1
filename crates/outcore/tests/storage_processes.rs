//! Multi-process and crash tests of the embedded store.
//!
//! The parent re-runs this test binary with `OUTCORE_CHILD=<role>` to get a child process that
//! uses the same store directory; `child_entry` is that child's main and a no-op otherwise.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outcore::storage::{CommitRequest, Key, LocalStorage, Oid, Storage, Tid, TxnMeta, Write};
use outcore::Error;

/// The oid of the counter record and of the block file the crash child writes.
const COUNTER: Key = Key::Meta(Oid(1_000_000));
const FILE: Oid = Oid(1_000_001);
const BLOCKS: u64 = 4;
const BLOCK_BYTES: usize = 256 << 10;

fn spawn_child(role: &str, dir: &Path, extra: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("OUTCORE_CHILD", role)
        .env("OUTCORE_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn child")
}

/// The child side. Prints one line per result on stdout; the parent parses lines that start
/// with `@`.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var("OUTCORE_CHILD") else {
        return;
    };
    let dir = std::env::var("OUTCORE_DIR").expect("OUTCORE_DIR");
    let store = LocalStorage::open(&dir).expect("child opens store");
    let arg = |name: &str| {
        std::env::var(name)
            .expect(name)
            .parse::<u64>()
            .expect("number")
    };
    match role.as_str() {
        "commit" => {
            let key = Key::Block {
                file: Oid(arg("OUTCORE_FILE")),
                index: 0,
            };
            let tid = store
                .commit(CommitRequest {
                    base: store.head().unwrap(),
                    writes: vec![(key, Write::Store(vec![arg("OUTCORE_BYTE") as u8; 4096]))],
                    meta: TxnMeta::new("child", "one block"),
                })
                .unwrap();
            println!("@{}", tid.0);
        }
        "stage" => {
            // Publishes one staged version, stages another, then waits to be killed.
            let key = Key::Block {
                file: Oid(arg("OUTCORE_FILE")),
                index: 0,
            };
            let published = store.stage(BLOCK_BYTES as u64).unwrap().unwrap();
            let bytes = vec![7u8; BLOCK_BYTES];
            std::os::unix::fs::FileExt::write_all_at(
                &**published.file(),
                &bytes,
                published.offset(),
            )
            .unwrap();
            let tid = store
                .commit(CommitRequest {
                    base: store.head().unwrap(),
                    writes: vec![(
                        key,
                        Write::Staged {
                            extent: published.clone(),
                            from: std::sync::Arc::new(Bytes(bytes)),
                        },
                    )],
                    meta: TxnMeta::new("child", "staged"),
                })
                .unwrap();
            let pending = store.stage(BLOCK_BYTES as u64).unwrap().unwrap();
            std::os::unix::fs::FileExt::write_all_at(
                &**pending.file(),
                &vec![9u8; BLOCK_BYTES],
                pending.offset(),
            )
            .unwrap();
            println!("@{}", tid.0);
            std::thread::sleep(Duration::from_secs(600));
        }
        "race" => {
            let key = Key::Block {
                file: Oid(arg("OUTCORE_FILE")),
                index: 0,
            };
            let go = Path::new(&dir).join("go");
            while !go.exists() {
                std::thread::sleep(Duration::from_micros(200));
            }
            let r = store.commit(CommitRequest {
                base: Tid(arg("OUTCORE_BASE")),
                writes: vec![(key, Write::Store(vec![std::process::id() as u8; 4096]))],
                meta: TxnMeta::new("child", "race"),
            });
            match r {
                Ok(t) => println!("@won {}", t.0),
                Err(Error::Conflict { .. }) => println!("@conflict"),
                Err(e) => println!("@error {e}"),
            }
        }
        "crash_loop" => crash_loop(&store),
        other => panic!("unknown child role {other}"),
    }
}

/// The payload of commit number `n` for block `i`: stamped so a reader can tell which
/// commit wrote it.
/// Bytes handed to a commit as a payload.
struct Bytes(Vec<u8>);

impl outcore::storage::Payload for Bytes {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Staging segments (`segments/s<id>.seg`) of the store in `dir`.
fn staging_segments(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('s'))
        .collect()
}

#[test]
fn a_killed_process_staged_space_is_reclaimed_by_pack_and_its_commits_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("db");
    LocalStorage::open(&dir).unwrap();
    let mut child = spawn_child("stage", &dir, &[("OUTCORE_FILE", "77".into())]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let tid = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the child died");
        if let Some((_, t)) = line.split_once('@') {
            break Tid(t.trim().parse().unwrap());
        }
    };
    // SAFETY: SIGKILL to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert_eq!(
        staging_segments(&dir).len(),
        1,
        "the child's staging segment is left"
    );

    let store = LocalStorage::open(&dir).unwrap();
    let key = Key::Block {
        file: Oid(77),
        index: 0,
    };
    assert_eq!(
        store.load(key, tid).unwrap().unwrap().data,
        vec![7u8; BLOCK_BYTES]
    );
    let left_by_the_child = staging_segments(&dir);
    store.pack(Tid::MAX).unwrap();
    let after = staging_segments(&dir);
    assert!(
        left_by_the_child.iter().all(|s| !after.contains(s)),
        "pack reclaims a dead process's staging segment: {left_by_the_child:?} -> {after:?}"
    );
    let markers: Vec<_> = std::fs::read_dir(dir.join("staging"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(markers.is_empty(), "and its marker: {markers:?}");
    assert_eq!(
        store.load(key, Tid::MAX).unwrap().unwrap().data,
        vec![7u8; BLOCK_BYTES],
        "the published staged version survives (copied by pack)"
    );
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn crash_payload(n: u64, i: u64) -> Vec<u8> {
    let mut v = vec![(n % 251) as u8; BLOCK_BYTES];
    v[..8].copy_from_slice(&n.to_le_bytes());
    v[8..16].copy_from_slice(&i.to_le_bytes());
    v
}

/// Commits forever: commit n writes the counter record = n and every block stamped with n;
/// each acknowledged commit is printed. Every 7th iteration also packs.
fn crash_loop(store: &LocalStorage) {
    loop {
        let head = store.head().unwrap();
        let n = store
            .load(COUNTER, head)
            .unwrap()
            .map_or(0, |v| u64::from_le_bytes(v.data[..8].try_into().unwrap()))
            + 1;
        let mut writes: Vec<(Key, Write)> = (0..BLOCKS)
            .map(|i| {
                (
                    Key::Block {
                        file: FILE,
                        index: i,
                    },
                    Write::Store(crash_payload(n, i)),
                )
            })
            .collect();
        writes.push((COUNTER, Write::Store(n.to_le_bytes().to_vec())));
        let tid = store
            .commit(CommitRequest {
                base: head,
                writes,
                meta: TxnMeta::new("crash", format!("commit {n}")),
            })
            .unwrap();
        println!("@{n} {}", tid.0);
        if n % 7 == 0 {
            store.pack(tid).unwrap();
        }
    }
}

/// What follows `@` on each line of a child's stdout (the harness may print before it).
fn results(child: &mut Child) -> Vec<String> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .unwrap();
    out.lines()
        .filter_map(|l| l.split_once('@').map(|(_, r)| r))
        .map(str::to_owned)
        .collect()
}

#[test]
fn another_process_commit_is_seen_at_the_next_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::open(dir.path()).unwrap();
    let file = Oid(store.new_oids(1).unwrap().start);
    let before = store.head().unwrap();
    let mut child = spawn_child(
        "commit",
        dir.path(),
        &[
            ("OUTCORE_FILE", file.0.to_string()),
            ("OUTCORE_BYTE", "77".into()),
        ],
    );
    let lines = results(&mut child);
    assert!(child.wait().unwrap().success());
    let tid = Tid(lines[0].parse().unwrap());
    let key = Key::Block { file, index: 0 };
    assert!(
        store.load(key, before).unwrap().is_none(),
        "old snapshot unchanged"
    );
    let head = store.head().unwrap();
    assert_eq!(head, tid);
    assert_eq!(store.load(key, head).unwrap().unwrap().data, vec![77; 4096]);
    let changes = store.changes(before, head).unwrap();
    assert_eq!(changes, vec![(tid, vec![key])]);
}

#[test]
fn concurrent_commits_from_two_processes_have_one_winner() {
    for round in 0..6 {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::open(dir.path()).unwrap();
        let file = Oid(store.new_oids(1).unwrap().start);
        let base = store.head().unwrap();
        let env = [
            ("OUTCORE_FILE", file.0.to_string()),
            ("OUTCORE_BASE", base.0.to_string()),
        ];
        let mut a = spawn_child("race", dir.path(), &env);
        let mut b = spawn_child("race", dir.path(), &env);
        std::thread::sleep(Duration::from_millis(150));
        std::fs::write(dir.path().join("go"), b"").unwrap();
        let mut outcomes = [results(&mut a), results(&mut b)].concat();
        assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
        outcomes.sort();
        assert_eq!(outcomes.len(), 2, "round {round}: {outcomes:?}");
        assert_eq!(outcomes[0], "conflict", "round {round}: {outcomes:?}");
        assert!(
            outcomes[1].starts_with("won "),
            "round {round}: {outcomes:?}"
        );
        let tid = Tid(outcomes[1][4..].parse().unwrap());
        assert_eq!(store.head().unwrap(), tid);
        assert_eq!(store.log(base, Tid::MAX).unwrap().len(), 1);
    }
}

/// SIGKILLs a committing (and packing) child at random moments; after each kill, every
/// acknowledged commit must be complete and no partial commit visible.
#[test]
fn killed_writer_leaves_only_complete_commits() {
    let rounds = if std::env::var_os("OUTCORE_LONG_TESTS").is_some() {
        500
    } else {
        60
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rng_state = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    let mut rand_ms = |lo: u64, hi: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        lo + rng_state % (hi - lo)
    };
    let mut last_acked = 0u64;
    let mut kills_mid_run = 0;
    for round in 0..rounds {
        let mut child = spawn_child("crash_loop", dir.path(), &[]);
        let stdout = child.stdout.take().unwrap();
        // Collect acknowledgements on a thread while the child runs.
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.split_once('@').map(|(_, r)| r.to_owned()))
                .collect::<Vec<String>>()
        });
        // Child start-up (process spawn + store open) takes a few ms; kill at a random
        // moment over a span covering many commits.
        let deadline = Instant::now() + Duration::from_millis(rand_ms(5, 120));
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: kill() sends a signal to our own child; no memory is involved.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if status.code().is_none() {
            kills_mid_run += 1;
        }
        let acked: Vec<u64> = reader
            .join()
            .unwrap()
            .iter()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        if let Some(&n) = acked.last() {
            assert!(n > last_acked, "round {round}: counter went backwards");
            last_acked = n;
        }

        let store = LocalStorage::open(dir.path()).unwrap();
        let head = store.head().unwrap();
        let n = store
            .load(COUNTER, head)
            .unwrap()
            .map_or(0, |v| u64::from_le_bytes(v.data[..8].try_into().unwrap()));
        assert!(
            n >= last_acked,
            "round {round}: acknowledged commit {last_acked} lost (found {n})"
        );
        // The last visible commit is complete: every block carries its stamp.
        for i in 0..BLOCKS {
            let key = Key::Block {
                file: FILE,
                index: i,
            };
            let got = store.load(key, head).unwrap();
            if n == 0 {
                assert!(got.is_none());
            } else {
                // Stored short (format 2): zeros follow the stored bytes.
                let mut data = got.unwrap().data;
                data.resize(BLOCK_BYTES, 0);
                assert!(
                    data == crash_payload(n, i),
                    "round {round} block {i}: not the bytes of commit {n}"
                );
            }
        }
        last_acked = n;
        // The log holds complete entries only.
        let horizon = store.pack_horizon().unwrap();
        for entry in store.log(horizon, head).unwrap() {
            assert_eq!(entry.keys.len() as u64, BLOCKS + 1, "round {round}");
        }
        let report = store.verify().unwrap();
        assert!(
            report.problems.is_empty(),
            "round {round}: {:?}",
            report.problems
        );
    }
    eprintln!("{rounds} kills ({kills_mid_run} mid-run), {last_acked} commits survived");
    assert!(last_acked > 0, "the child never committed");
    assert!(
        kills_mid_run >= rounds / 2,
        "most kills must land while the child runs"
    );
}
