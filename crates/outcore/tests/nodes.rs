//! Many nodes on one store: OS processes appending to and updating the same arrays
//! concurrently (embedded store and PostgreSQL), and PostgreSQL clients killed mid-commit.
//! (The server-restart test is in `pg_restart.rs`, lost COMMIT replies and outages in
//! `pg_outage.rs`.) Also: readers paused past the lease timeout, and 100 processes against a
//! connection limit of 100.
//!
//! The PostgreSQL tests need `OUTCORE_TEST_PG` (scripts/test.sh starts a private server) and
//! are skipped loudly without.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outcore::array::Order;
use outcore::db::Database;
use outcore::Error;

fn spawn(role: &str, url: &str, extra: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("OUTCORE_PG_CHILD", role)
        .env("OUTCORE_PG_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

const ROUNDS: i64 = 25;

#[test]
fn child_entry() {
    let Ok(role) = std::env::var("OUTCORE_PG_CHILD") else {
        return;
    };
    let url = std::env::var("OUTCORE_PG_URL").unwrap();
    let db = Database::open(&url).unwrap();
    let conn = db.connect().unwrap();
    match role.as_str() {
        "worker" => {
            let node: i64 = std::env::var("OUTCORE_NODE").unwrap().parse().unwrap();
            let mut conflicts = 0;
            for round in 0..ROUNDS {
                loop {
                    let mut counters = conn.array("counters").unwrap();
                    let log = conn.array("log").unwrap();
                    // Everyone updates element 0 (one block) and appends to one array.
                    counters.view_mut::<i64>().unwrap()[0] += 1;
                    counters.view_mut::<i64>().unwrap()[1 + node as usize] += 1;
                    log.append(ndarray::arr1(&[node * 1000 + round]).into_dyn().view())
                        .unwrap();
                    match conn.commit() {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => {
                            conflicts += 1;
                            conn.abort().unwrap();
                        }
                        Err(e) => panic!("node {node}: {e}"),
                    }
                }
            }
            // Wait until every node is done, then read the final state.
            println!("\n@done");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            conn.begin().unwrap();
            let counters = conn.array("counters").unwrap();
            let log = conn.array("log").unwrap();
            let v = counters.view::<i64>().unwrap();
            println!(
                "\n@conflicts {conflicts} final {} {}",
                v[0],
                log.view::<i64>().unwrap().sum()
            );
        }
        "crasher" => common::stamp_forever(&conn),
        "many" => {
            let node = std::env::var("OUTCORE_NODE").unwrap();
            let a = conn.array("a").unwrap();
            let sum: i64 = a.view::<i64>().unwrap().sum();
            // Every node adds a name to the root: conflicts, retried.
            loop {
                conn.create::<i64>(&format!("c{node}"), &[4], Order::C)
                    .unwrap();
                match conn.commit() {
                    Ok(_) => break,
                    Err(Error::Conflict { .. }) => conn.abort().unwrap(),
                    Err(e) => panic!("node {node}: {e}"),
                }
            }
            println!("\n@ok {sum}");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn four_nodes_on_postgresql_lose_no_update() {
    let Some(base) = common::pg_server() else {
        return;
    };
    nodes_update_and_append_without_lost_updates(&common::store_url(&base, "nodes"));
}

#[test]
fn four_nodes_on_the_embedded_store_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    nodes_update_and_append_without_lost_updates(dir.path().join("db").to_str().unwrap());
}

const NODES: i64 = 4;

/// NODES processes each update one shared element (one block) and append to one array,
/// ROUNDS times, retrying conflicts: nothing may be lost, conflicts must be raised, and every
/// node must see the same final data.
fn nodes_update_and_append_without_lost_updates(url: &str) {
    let url = url.to_string();
    let db = Database::open(&url).unwrap();
    let conn = db.connect().unwrap();
    conn.create::<i64>("counters", &[8], Order::C).unwrap();
    conn.create::<i64>("log", &[0], Order::C).unwrap();
    conn.commit().unwrap();
    let mut children: Vec<Child> = (0..NODES)
        .map(|node| spawn("worker", &url, &[("OUTCORE_NODE", node.to_string())]))
        .collect();
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()).lines())
        .collect();
    for r in &mut readers {
        r.by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("@done"))
            .expect("a node finished its rounds");
    }
    for c in &mut children {
        drop(c.stdin.take()); // everyone is done: read the final state
    }
    let outputs: Vec<Vec<String>> = readers
        .into_iter()
        .map(|r| {
            r.map_while(Result::ok)
                .filter_map(|l| l.split_once('@').map(|(_, x)| x.to_string()))
                .collect()
        })
        .collect();
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    conn.begin().unwrap();
    let counters = conn.array("counters").unwrap();
    let v = counters.view::<i64>().unwrap();
    assert_eq!(v[0], NODES * ROUNDS, "no update lost");
    assert!(v.as_slice().unwrap()[1..=NODES as usize]
        .iter()
        .all(|&c| c == ROUNDS));
    let log = conn.array("log").unwrap();
    let mut entries: Vec<i64> = log.view::<i64>().unwrap().iter().copied().collect();
    assert_eq!(entries.len() as i64, NODES * ROUNDS, "no append lost");
    entries.sort();
    let expected: Vec<i64> = (0..NODES)
        .flat_map(|n| (0..ROUNDS).map(move |r| n * 1000 + r))
        .collect();
    assert_eq!(entries, expected);
    let log_sum: i64 = expected.iter().sum();
    let mut conflicts = 0;
    for out in &outputs {
        let f: Vec<&str> = out.last().unwrap().split(' ').collect();
        conflicts += f[1].parse::<i64>().unwrap();
        // Every node converged to the same final data.
        assert_eq!(f[3].parse::<i64>().unwrap(), NODES * ROUNDS);
        assert_eq!(f[4].parse::<i64>().unwrap(), log_sum);
    }
    eprintln!("{NODES} nodes x {ROUNDS} rounds on {url}: {conflicts} conflicts raised and retried");
    assert!(
        conflicts > 0,
        "concurrent writers of one block must conflict"
    );
}

#[test]
fn killed_clients_leave_no_partial_commit() {
    let Some(base) = common::pg_server() else {
        return;
    };
    let url = common::store_url(&base, "kill");
    let mut last = 0;
    for round in 0..12u64 {
        let mut child = spawn("crasher", &url, &[]);
        let stdout = child.stdout.take().unwrap();
        let (first_ack, acked_once) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.split_once("@ok ").map(|(_, n)| n.parse::<i64>().unwrap()))
                .inspect(|_| {
                    let _ = first_ack.send(());
                })
                .last()
        });
        // Kill mid-run: after the first acknowledged commit (however slow the machine is to
        // start the child), then a little later.
        let _ = acked_once.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 200));
        // SAFETY: sends SIGKILL to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let acked = reader.join().unwrap().unwrap_or(last);
        let n = common::check_stamps(&url);
        assert!(
            n >= acked,
            "round {round}: acknowledged commit {acked} lost (found {n})"
        );
        last = n;
    }
    assert!(last > 0);
}

/// Issue "many nodes" 1: a reader paused for longer than the lease timeout while another node
/// rewrites and packs must get `SnapshotTooOld` from every read at its snapshot — `load()`,
/// new views, the store's reads — never the zeros pack left where its snapshot held data.
#[test]
fn paused_reader_gets_snapshot_too_old_after_pack_on_postgresql() {
    let Some(base) = common::pg_server() else {
        return;
    };
    let url = common::store_url(&base, "paused");
    // The reader's heartbeat runs every 100 s, i.e. never during the test; the packing node
    // counts a lease silent for 1 s as expired: the reader is "paused" past the timeout.
    let reader_db = Database::open(&format!("{url}&lease_timeout=600")).unwrap();
    let writer_db = Database::open(&format!("{url}&lease_timeout=1")).unwrap();
    let w = writer_db.connect().unwrap();
    let n = 2u64 << 18; // two 2 MiB blocks of i64
    for name in ["a", "b"] {
        let mut a = w.create::<i64>(name, &[n], Order::C).unwrap();
        a.view_mut::<i64>().unwrap().fill(7);
    }
    w.commit().unwrap();

    let r = reader_db.connect().unwrap();
    let snapshot = r.tid().unwrap();
    let ra = r.array("a").unwrap();
    let old_view = ra.view::<i64>().unwrap();
    assert_eq!(old_view[0], 7);
    let file = ra.meta().unwrap().file;

    // Another node rewrites everything and packs with nothing kept.
    w.begin().unwrap();
    for name in ["a", "b"] {
        w.array(name).unwrap().view_mut::<i64>().unwrap().fill(8);
    }
    let rewritten = w.commit().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = writer_db
            .storage()
            .pack(outcore::storage::Tid::now())
            .unwrap();
        if stats.horizon >= rewritten {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the paused reader's lease never expired: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let too_old = |what: &str, r: outcore::Result<()>| match r {
        Err(e @ Error::SnapshotTooOld { .. }) => {
            assert!(e.is_retryable(), "{what}: {e}");
            assert!(e.to_string().contains("pack horizon"), "{what}: {e}");
        }
        other => panic!("{what} at the packed snapshot {snapshot}: {other:?}"),
    };
    // Views made now, and load(), fail instead of reading zeros.
    let rb = r.array("b").unwrap();
    too_old("a new view", rb.view::<i64>().map(drop));
    too_old("load()", rb.load(0..n));
    // The old view's blocks not fetched yet fail to load; fetched ones hold the old data.
    match ra.load(0..n) {
        Ok(()) => assert!(old_view.iter().all(|&x| x == 7)),
        Err(e) => too_old("load() of the old view", Err(e)),
    }
    let block = |index| outcore::storage::Key::Block { file, index };
    let store = reader_db.storage();
    too_old("locate", store.locate(block(1), snapshot).map(drop));
    too_old("load", store.load(block(0), snapshot).map(drop));
    too_old(
        "load_many",
        store.load_many(&[block(0), block(1)], snapshot).map(drop),
    );
    drop(old_view);
    // A new transaction reads the rewritten data.
    let r2 = reader_db.connect().unwrap();
    let v = r2.array("b").unwrap();
    assert!(v.view::<i64>().unwrap().iter().all(|&x| x == 8));
    // Issue "many nodes" 2: the paused connection itself recovers at its next boundary: it
    // moves to the newest snapshot (its log since the packed snapshot is gone, so it re-maps
    // everything), reads the new data through old handles, and commits.
    r.abort()
        .expect("the boundary moves past the packed snapshot");
    assert!(r.tid().unwrap() >= rewritten);
    assert!(ra.view::<i64>().unwrap().iter().all(|&x| x == 8));
    assert!(rb.view::<i64>().unwrap().iter().all(|&x| x == 8));
    let mut ra = ra;
    ra.view_mut::<i64>().unwrap()[0] = 9;
    r.commit().expect("no conflict: nobody else wrote since");
    w.abort().unwrap();
    assert_eq!(w.array("a").unwrap().view::<i64>().unwrap()[0], 9);
}

/// Issue "many nodes" 5: 100 processes each reading, touching and committing, against a
/// limit of 100 connections (a role's `CONNECTION LIMIT`, which refuses like a server at
/// `max_connections`: "too many clients"). Each process holds at most `pool_size` (2)
/// connections, waits for a slot when the server has none, and all 100 succeed; at the limit
/// the error shows the server's text.
#[test]
fn a_hundred_processes_within_a_hundred_connections() {
    let Some(base) = common::pg_server() else {
        return;
    };
    let role = format!("oc100_{}", std::process::id());
    let mut admin = postgres::Client::connect(&base, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN CONNECTION LIMIT 100;
             GRANT CREATE ON DATABASE postgres TO {role}"
        ))
        .unwrap();
    let (scheme, rest) = base.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let url = format!("{scheme}://{role}@{host}?outcore_schema={role}");
    {
        let db = Database::open(&url).unwrap();
        let conn = db.connect().unwrap();
        let mut a = conn.create::<i64>("a", &[2 << 18], Order::C).unwrap();
        a.view_mut::<i64>().unwrap().fill(1);
        conn.commit().unwrap();
        db.close();
    }
    let started = std::time::Instant::now();
    let mut children: Vec<Child> = (0..100)
        .map(|i| {
            let url = format!("{url}&application_name={role}_{i}");
            spawn("many", &url, &[("OUTCORE_NODE", i.to_string())])
        })
        .collect();
    // Watch the server meanwhile: the most connections any one process (and all) held.
    let (mut most_per_process, mut most_in_all) = (0i64, 0i64);
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        let rows = admin
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1
                 GROUP BY application_name",
                &[&role],
            )
            .unwrap();
        let counts: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        most_per_process = most_per_process.max(counts.iter().copied().max().unwrap_or(0));
        most_in_all = most_in_all.max(counts.iter().sum());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut ok = 0;
    for c in &mut children {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut c.stdout.take().unwrap(), &mut out).unwrap();
        if c.wait().unwrap().success() && out.contains(&format!("@ok {}", 2 << 18)) {
            ok += 1;
        }
    }
    eprintln!(
        "100 processes in {:?}: at most {most_per_process} connections per process, \
         {most_in_all} in all",
        started.elapsed()
    );
    assert_eq!(ok, 100, "every process read, touched and committed");
    assert!(
        most_per_process <= 2,
        "{most_per_process} connections in one process"
    );
    // At the limit, the error says what the server said.
    admin
        .batch_execute(&format!("ALTER ROLE {role} CONNECTION LIMIT 0"))
        .unwrap();
    let err = Database::open(&format!("{url}&outage_window=1")).unwrap_err();
    assert!(err.to_string().contains("too many connections"), "{err}");
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {role} CASCADE; REVOKE ALL ON DATABASE postgres FROM {role};
             DROP ROLE {role}"
        ))
        .unwrap();
}

/// A reader lease that expired while its process was paused, and that pack then deleted, is
/// registered again when the reader moves to a new snapshot (it used to fail with NotFound),
/// and protects that snapshot from the next pack.
#[test]
fn an_expired_lease_is_registered_again_at_the_next_snapshot() {
    use outcore::storage::{ReaderLease, Tid};
    let Some(base) = common::pg_server() else {
        return;
    };
    let url = common::store_url(&base, "release");
    let reader = Database::open(&format!("{url}&lease_timeout=600")).unwrap();
    let packer = Database::open(&format!("{url}&lease_timeout=3")).unwrap();
    let w = packer.connect().unwrap();
    w.create::<i64>("a", &[4], Order::C).unwrap();
    w.commit().unwrap();
    let mut lease = ReaderLease::at_head(reader.storage().clone()).unwrap();
    w.begin().unwrap();
    w.array("a").unwrap().view_mut::<i64>().unwrap()[0] = 1;
    let head = w.commit().unwrap();
    // Wait until pack ignores (and deletes) the silent lease.
    while packer.storage().pack(Tid::now()).unwrap().horizon < head {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lease.advance_to_head().unwrap(), head);
    w.begin().unwrap();
    w.array("a").unwrap().view_mut::<i64>().unwrap()[0] = 2;
    w.commit().unwrap();
    // The lease counts again (its heartbeat is fresh): pack stops at its snapshot.
    assert_eq!(packer.storage().pack(Tid::now()).unwrap().horizon, head);
}
