//! Serializability checker over recorded histories.
//!
//! NODES OS processes each run TXNS transactions on one store (embedded, and PostgreSQL when
//! `OUTCORE_TEST_PG` is set). A transaction reads the version stamps of 1 to 3 random blocks
//! of a small array (so transactions overlap), writes its own stamp into each of them
//! (read-modify-write), and sometimes appends its stamp to a second array. Versions are
//! encoded in the data (each block holds the id of the transaction that wrote it, at its first,
//! middle and last element; the log's last element is the last appender), so reads are
//! observed, not assumed. Each child records per transaction its snapshot, the versions it
//! read, the keys it wrote, and its commit tid or its `Conflict` error.
//!
//! The checker then verifies that
//! * every read saw exactly the version its snapshot holds (the last commit at or before the
//!   snapshot), never a torn block, an aborted transaction's write or a later commit;
//! * no update was lost: every committed writer of a key read the version committed just
//!   before its own on that key, and the final data holds the last committed version;
//! * two committed transactions never wrote the same key concurrently (first committer wins),
//!   and every `Conflict` was caused by a committed write of one of its keys after its snapshot;
//! * the direct serialization graph (ww, wr and rw edges) is acyclic, its edges all going
//!   forward in commit order.
//!
//! outcore provides snapshot isolation (conflicts are detected on written keys only), which is
//! serializable for this read-modify-write workload. A second run lets transactions read two
//! blocks and write one; there write skew is allowed, and the run counts (and prints) the
//! transactions on serialization-graph cycles instead of asserting there are none.
//!
//! `OUTCORE_LONG_TESTS=1` runs 8 processes x 250 transactions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

/// Blocks of the shared array, elements (i64) per block.
const NB: u64 = 8;
const E: u64 = 2048;
/// The log array, as a pseudo block number in the history.
const LOG: u64 = NB;

fn long() -> bool {
    std::env::var_os("OUTCORE_LONG_TESTS").is_some()
}

fn sizes() -> (u64, u64) {
    if long() {
        (8, 250)
    } else {
        (4, 60)
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The stamp of block `b` as seen in `v`; panics on a torn block.
fn stamp(v: &ndarray::ArrayRef<i64, ndarray::IxDyn>, b: u64) -> i64 {
    let at = |i: u64| v[(b * E + i) as usize];
    let s = at(0);
    assert!(
        at(E / 2) == s && at(E - 1) == s,
        "torn block {b}: {s} {} {}",
        at(E / 2),
        at(E - 1)
    );
    s
}

fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let s: Vec<String> = items.into_iter().map(|x| x.to_string()).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(",")
    }
}

#[test]
fn child_entry() {
    let Ok(url) = std::env::var("OUTCORE_HIST_URL") else {
        return;
    };
    let node: u64 = std::env::var("OUTCORE_NODE").unwrap().parse().unwrap();
    let txns: u64 = std::env::var("OUTCORE_TXNS").unwrap().parse().unwrap();
    let skew = std::env::var_os("OUTCORE_SKEW").is_some();
    let db = Database::open(&url).unwrap();
    let conn = db.connect().unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (node + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
    for t in 0..txns {
        let uid = ((node + 1) * 1_000_000 + t + 1) as i64;
        conn.begin().unwrap();
        let snap = conn.tid().unwrap();
        let mut h = conn.array("h").unwrap();
        let log = conn.array("log").unwrap();
        // Which blocks to read, and which of them to write.
        let mut read: BTreeSet<u64> = BTreeSet::new();
        let n = if skew { 2 } else { 1 + rng.next() % 3 };
        while (read.len() as u64) < n {
            read.insert(rng.next() % NB);
        }
        let written: BTreeSet<u64> = if skew {
            let b = *read.iter().nth((rng.next() % 2) as usize).unwrap();
            BTreeSet::from([b])
        } else {
            read.clone()
        };
        let append = !skew && rng.next() % 3 == 0;
        let mut seen: Vec<(u64, i64)> = {
            let v = h.view::<i64>().unwrap();
            read.iter().map(|&b| (b, stamp(&v, b))).collect()
        };
        {
            let mut v = h.view_mut::<i64>().unwrap();
            for &b in &written {
                for i in [0, E / 2, E - 1] {
                    v[(b * E + i) as usize] = uid;
                }
            }
        }
        let mut keys: Vec<u64> = written.iter().copied().collect();
        if append {
            let l = log.view::<i64>().unwrap();
            seen.push((LOG, l.iter().last().copied().unwrap_or(0)));
            drop(l);
            log.append(ndarray::arr1(&[uid]).into_dyn().view()).unwrap();
            keys.push(LOG);
        }
        let reads = join(seen.iter().map(|(b, s)| format!("{b}:{s}")));
        match conn.commit() {
            Ok(tid) => println!(
                "\n@commit {uid} {} {} {reads} {}",
                snap.0,
                tid.0,
                join(&keys)
            ),
            Err(Error::Conflict { .. }) => {
                println!("\n@conflict {uid} {} - {reads} {}", snap.0, join(&keys));
                conn.abort().unwrap();
            }
            Err(e) => panic!("node {node}: {e}"),
        }
    }
    println!("\n@done");
}

/// One transaction of the history.
#[derive(Debug)]
struct Txn {
    uid: i64,
    snap: u64,
    /// Commit tid; `None` for a transaction that got a `Conflict`.
    tid: Option<u64>,
    reads: Vec<(u64, i64)>,
    writes: Vec<u64>,
}

fn parse(line: &str) -> Option<Txn> {
    let rest = line.split_once('@')?.1;
    let f: Vec<&str> = rest.split(' ').collect();
    if f[0] != "commit" && f[0] != "conflict" {
        return None;
    }
    fn list(s: &str) -> Vec<&str> {
        if s == "-" {
            vec![]
        } else {
            s.split(',').collect()
        }
    }
    Some(Txn {
        uid: f[1].parse().unwrap(),
        snap: f[2].parse().unwrap(),
        tid: (f[0] == "commit").then(|| f[3].parse().unwrap()),
        reads: list(f[4])
            .into_iter()
            .map(|r| {
                let (b, s) = r.split_once(':').unwrap();
                (b.parse().unwrap(), s.parse().unwrap())
            })
            .collect(),
        writes: list(f[5]).into_iter().map(|b| b.parse().unwrap()).collect(),
    })
}

struct Figures {
    txns: usize,
    commits: usize,
    conflicts: usize,
    reads: usize,
    edges: usize,
    on_cycles: usize,
    backward_rw: usize,
    /// Pairs of transactions with edges both ways (the write-skew pattern).
    two_cycles: usize,
}

/// Checks the history (see the module docs); `serializable`: assert an acyclic graph.
fn check(history: &[Txn], setup_tid: u64, final_h: &[i64], final_log: &[i64]) -> Figures {
    let committed: Vec<&Txn> = history.iter().filter(|t| t.tid.is_some()).collect();
    let by_uid: BTreeMap<i64, &Txn> = committed.iter().map(|t| (t.uid, *t)).collect();
    let tid = |uid: i64| -> u64 {
        if uid == 0 {
            setup_tid
        } else {
            by_uid[&uid].tid.unwrap()
        }
    };
    // Version chains per key: the initial version (uid 0) then the committed writers in commit
    // order.
    let mut chains: BTreeMap<u64, Vec<i64>> = (0..=LOG).map(|k| (k, vec![0])).collect();
    let mut order = committed.clone();
    order.sort_by_key(|t| t.tid);
    for w in order.windows(2) {
        assert!(w[0].tid < w[1].tid, "two commits with one tid: {w:?}");
    }
    for t in &order {
        assert!(t.tid.unwrap() > t.snap && t.snap >= setup_tid, "{t:?}");
        for &k in &t.writes {
            chains.get_mut(&k).unwrap().push(t.uid);
        }
    }
    // Reads: exactly the version of the snapshot.
    let mut reads = 0;
    for t in history {
        for &(k, seen) in &t.reads {
            reads += 1;
            assert!(
                seen == 0 || by_uid.contains_key(&seen),
                "txn {} read {seen} on key {k}, not a committed transaction",
                t.uid
            );
            let expected = *chains[&k]
                .iter()
                .rev()
                .find(|&&w| tid(w) <= t.snap)
                .unwrap();
            assert_eq!(
                seen, expected,
                "txn {} (snapshot {}) read {seen} on key {k}; its snapshot holds {expected}",
                t.uid, t.snap
            );
        }
    }
    // No lost update: each committed writer read the version just before its own (it wrote
    // only keys it read), so no committed write was overwritten unseen, and none was
    // concurrent with another committed write of the same key.
    for (&k, chain) in &chains {
        for w in chain.windows(2) {
            let t = by_uid[&w[1]];
            let read = t.reads.iter().find(|r| r.0 == k).map(|r| r.1);
            if read.is_some() {
                assert_eq!(
                    read,
                    Some(w[0]),
                    "lost update on key {k}: txn {} committed over {} without reading it",
                    t.uid,
                    w[0]
                );
            }
            assert!(
                t.snap >= tid(w[0]),
                "txns {} and {} both committed key {k} concurrently",
                w[0],
                w[1]
            );
        }
    }
    // The final data is the last version of every key; the log holds every committed append
    // once, in commit order, and nothing else.
    for b in 0..NB {
        assert_eq!(
            final_h[b as usize],
            *chains[&b].last().unwrap(),
            "block {b}"
        );
    }
    assert_eq!(final_log, &chains[&LOG][1..], "log");
    // Every conflict was caused by a commit of one of its keys after its snapshot.
    for t in history.iter().filter(|t| t.tid.is_none()) {
        assert!(
            !by_uid.contains_key(&t.uid) && final_log.iter().all(|&u| u != t.uid),
            "{t:?}"
        );
        let justified = committed
            .iter()
            .any(|c| c.tid.unwrap() > t.snap && c.writes.iter().any(|k| t.writes.contains(k)));
        assert!(justified, "conflict without a conflicting commit: {t:?}");
    }
    // The direct serialization graph.
    let mut edges: BTreeSet<(i64, i64)> = BTreeSet::new();
    for (&k, chain) in &chains {
        for w in chain.windows(2) {
            edges.insert((w[0], w[1])); // ww
        }
        for t in &committed {
            for &(rk, seen) in &t.reads {
                if rk != k {
                    continue;
                }
                edges.insert((seen, t.uid)); // wr
                let at = chain.iter().position(|&u| u == seen).unwrap();
                if let Some(&next) = chain.get(at + 1) {
                    edges.insert((t.uid, next)); // rw (anti-dependency)
                }
            }
        }
    }
    edges.retain(|(a, b)| a != b);
    let backward_rw = edges.iter().filter(|&&(a, b)| tid(a) > tid(b)).count();
    // Kahn's algorithm: what is left is on (or behind) a cycle.
    let mut indeg: BTreeMap<i64, usize> = std::iter::once(0)
        .chain(by_uid.keys().copied())
        .map(|u| (u, 0))
        .collect();
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for &(a, b) in &edges {
        *indeg.get_mut(&b).unwrap() += 1;
        out.entry(a).or_default().push(b);
    }
    let mut ready: Vec<i64> = indeg
        .iter()
        .filter(|(_, &d)| d == 0)
        .map(|(&u, _)| u)
        .collect();
    let mut done = 0;
    while let Some(u) = ready.pop() {
        done += 1;
        for &v in out.get(&u).map(Vec::as_slice).unwrap_or(&[]) {
            let d = indeg.get_mut(&v).unwrap();
            *d -= 1;
            if *d == 0 {
                ready.push(v);
            }
        }
    }
    Figures {
        txns: history.len(),
        commits: committed.len(),
        conflicts: history.len() - committed.len(),
        reads,
        edges: edges.len(),
        on_cycles: indeg.len() - done,
        backward_rw,
        two_cycles: edges
            .iter()
            .filter(|&&(a, b)| a < b && edges.contains(&(b, a)))
            .count(),
    }
}

fn spawn(url: &str, node: u64, txns: u64, skew: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("OUTCORE_HIST_URL", url)
        .env("OUTCORE_NODE", node.to_string())
        .env("OUTCORE_TXNS", txns.to_string())
        .stdout(Stdio::piped());
    if skew {
        cmd.env("OUTCORE_SKEW", "1");
    }
    cmd.spawn().unwrap()
}

/// Runs the workload on `url` and checks its history; returns the figures.
fn run(url: &str, skew: bool) -> Figures {
    let (nodes, txns) = sizes();
    let db = Database::open(url).unwrap();
    let conn = db.connect().unwrap();
    conn.create_raw("h", "<i8", 8, &[NB * E], Order::C, (E * 8) as usize)
        .unwrap();
    conn.create::<i64>("log", &[0], Order::C).unwrap();
    let setup_tid = conn.commit().unwrap().0;
    let children: Vec<Child> = (0..nodes).map(|n| spawn(url, n, txns, skew)).collect();
    let mut history = Vec::new();
    for mut c in children {
        let lines: Vec<String> = BufReader::new(c.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .collect();
        assert!(c.wait().unwrap().success(), "a child failed");
        assert!(lines.iter().any(|l| l.contains("@done")));
        history.extend(lines.iter().filter_map(|l| parse(l)));
    }
    assert_eq!(history.len() as u64, nodes * txns);
    conn.begin().unwrap();
    let h = conn.array("h").unwrap();
    let v = h.view::<i64>().unwrap();
    let final_h: Vec<i64> = (0..NB).map(|b| stamp(&v, b)).collect();
    let final_log: Vec<i64> = conn
        .array("log")
        .unwrap()
        .view::<i64>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let f = check(&history, setup_tid, &final_h, &final_log);
    eprintln!(
        "histories{} on {url}: {nodes} processes x {txns} transactions: {} commits, {} conflicts, \
         {} reads checked, {} serialization-graph edges, {} transactions on or after a cycle ({} two-transaction \
         cycles), {} rw edges against commit order",
        if skew { " (write skew allowed)" } else { "" },
        f.commits,
        f.conflicts,
        f.reads,
        f.edges,
        f.on_cycles,
        f.two_cycles,
        f.backward_rw
    );
    assert_eq!(f.txns as u64, nodes * txns);
    assert!(f.commits > 0);
    f
}

fn assert_serializable(f: &Figures) {
    assert_eq!(f.on_cycles, 0, "the serialization graph has a cycle");
    assert_eq!(f.backward_rw, 0, "an edge goes against commit order");
    assert!(f.conflicts > 0, "overlapping writers must conflict");
}

#[test]
fn read_modify_write_histories_are_serializable_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let f = run(dir.path().join("db").to_str().unwrap(), false);
    assert_serializable(&f);
}

#[test]
fn read_modify_write_histories_are_serializable_on_postgresql() {
    let Some(base) = common::pg_server() else {
        return;
    };
    let f = run(&common::store_url(&base, "histories"), false);
    assert_serializable(&f);
}

/// Snapshot isolation, not serializability: transactions that read two blocks and write one
/// may form write-skew cycles. Everything else is still checked; the cycles are counted.
#[test]
fn write_skew_is_possible_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path().join("db").to_str().unwrap(), true);
}

#[test]
fn the_checker_finds_a_lost_update_and_a_cycle() {
    // Two transactions both read the initial version of block 0 and both commit it.
    let t = |uid, snap, tid, reads: Vec<(u64, i64)>, writes: Vec<u64>| Txn {
        uid,
        snap,
        tid: Some(tid),
        reads,
        writes,
    };
    let lost = [
        t(1, 10, 11, vec![(0, 0)], vec![0]),
        t(2, 10, 12, vec![(0, 0)], vec![0]),
    ];
    let mut final_h = vec![0; NB as usize];
    final_h[0] = 2;
    let r = std::panic::catch_unwind(|| check(&lost, 10, &final_h, &[]));
    assert!(r.is_err(), "a lost update went unnoticed");
    // Write skew: each reads both blocks, writes one.
    let skew = [
        t(1, 10, 11, vec![(0, 0), (1, 0)], vec![0]),
        t(2, 10, 12, vec![(0, 0), (1, 0)], vec![1]),
    ];
    let mut final_h = vec![0; NB as usize];
    final_h[0] = 1;
    final_h[1] = 2;
    let f = check(&skew, 10, &final_h, &[]);
    assert_eq!(f.on_cycles, 2);
    assert_eq!(f.backward_rw, 1);
}
