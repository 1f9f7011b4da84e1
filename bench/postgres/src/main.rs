//! PostgreSQL-store benchmark: outcore arrays stored in PostgreSQL (`PgStorage`) against raw
//! SQL over the `postgres` crate, side by side in one run.
//!
//! Everything goes to fresh schemas (`outcore_bench_<pid>_scan`, `_commit`, `_inval`) of the
//! database at `--url` (default `$OUTCORE_TEST_PG`), selected with the `?outcore_schema=NAME`
//! url parameter; they are dropped (`DROP SCHEMA … CASCADE`) at the end, also after an error.
//! outcore's store is opened as `PgStorage::open(url)` wrapped in a thin pass-through
//! [`Storage`] that counts calls and their wall time (a few `Instant::now()` per call, nothing
//! else), so the reports can say where the time goes; `Database::from_storage` then opens it
//! exactly as `Database::open(url)` would.
//!
//! What it measures (all variants of a part take turns within every round, the order rotates
//! from round to round, one untimed warm-up round first, medians of `--rounds` rounds):
//!
//! 1. **Scan** of a `--gib` GiB (default 2) `f64` array. Setup (untimed): `conn.create::<f64>`,
//!    filled through `slice_mut` in 64 MiB transactions. Then per round:
//!    * **outcore**: a fresh connection (`db.connect()`), `conn.array("a")`, `a.view::<f64>()`
//!      and ndarray's `sum` (block by block, 2 MiB slices of the view), then the drop of
//!      view, array and connection. With fault-filled memory (userfaultfd, the default where
//!      the kernel allows it) the view maps nothing and the sum's first touch of each block
//!      has it fetched (`load`, 4 worker threads, read-ahead), clean blocks beyond the cache
//!      budget (`OUTCORE_CACHE_BYTES`, default 1 GiB) being dropped again; without it,
//!      `view()` fetches every block with `load_many` and decodes it into memory.
//!    * **raw, 1 connection** (the baseline): `SELECT bytes FROM <schema>.outcore_data` over
//!      one connection, streamed row by row (`query_raw`), every row summed as f64.
//!    * **raw, `--parallel` connections** (default 4, as many as outcore's pool): the same
//!      SELECT split by `id % P` over P connections in P threads.
//!
//!    All connections (outcore's pool and the raw clients) are opened before the timed rounds.
//! 2. **Commit throughput**: a `--commit-mib` MiB (default 512) `f64` array rewritten
//!    (every element `+= 1.0`) and committed, against a heap buffer rewritten the same way and
//!    INSERTed as 2 MiB `bytea` rows (prepared statement) into a table whose column is
//!    `STORAGE EXTERNAL` (as outcore's `outcore_data`), in one transaction. Reported:
//!    rewrite + commit and commit alone, in MB/s; outcore's commit split into the store's
//!    `commit` (the SQL transaction) and the rest.
//! 3. **Invalidation latency** between two nodes: node A is this process (one `Database`),
//!    node B is a second OS process (this binary with `--node-b`, its own `Database`), on a
//!    one-block array. Per trial A changes one element and commits; B reports when it sees
//!    the change. Latencies are CLOCK_MONOTONIC differences across the two processes, from
//!    the return of A's `commit()` (and from its start). Three modes take turns trial by trial:
//!    * **poll**: B loops `conn.begin()` + reading the element until it sees the new value;
//!    * **listen**: B waits for the `NOTIFY outcore` every outcore commit sends (on its own
//!      `postgres::Client` that ran `LISTEN outcore`), then `begin()` + read;
//!    * **raw NOTIFY → LISTEN** (reference): A runs `NOTIFY outcore_bench, '<k>'` on a plain
//!      client, B's listening client receives it.
//!
//!    Before the trials B measures the cost of one `begin()` with nothing new (poll cost),
//!    alone and with the read, and counts the store calls each makes.
//!
//! Every pass is verified, so that garbage cannot be measured: the data are small integers
//! (`i % 1009 + 1`, plus 1 per rewrite), so every f64 sum is exact and must equal its closed
//! form; outcore views are checked at one element per 2 MiB block (at varying offsets); raw
//! rows are checked for length, for their first element (the sum of first elements over all
//! rows is known) and for one element per row against the row's first one; the raw commit is
//! read back with `substring` at one element per row; outcore's committed array is read back
//! by a fresh connection at the end. Invalidation trials write a fresh value each time.
//!
//! Throughputs are decimal (GB/s = 10^9 B/s). CPU times: "client" is this process
//! (`getrusage`), "machine" is the busy time of all CPUs (`/proc/stat`), i.e. client +
//! PostgreSQL server + anything else running. The tables are printed and, when all three
//! parts ran, written to `bench/postgres/RESULTS.md` with the date, the machine and the
//! server's version and settings.
//!
//! Run it with:
//!
//! ```text
//! eval "$(scripts/pg-test-server.sh start)"
//! cargo run --release -p outcore-bench-postgres -- [--gib N]
//! scripts/pg-test-server.sh stop "$OUTCORE_TEST_PG_DIR"
//! # all options: --url URL ($OUTCORE_TEST_PG)  --gib N (2)  --commit-mib N (512)
//! #   --rounds N (7, at least 5)  --parallel N (4)  --trials N (100)  --poll-iters N (500)
//! #   --parts scan,commit,inval (all)
//! ```

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::ops::Range;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{s, ArrayView1, ArrayViewMut1};
use outcore::array::Order;
use outcore::db::{BigArray, Connection, Database};
use outcore::storage::{
    CommitRequest, Key, Located, Oid, PackStats, PgStorage, Storage, Tid, TxnInfo, VerifyReport,
    Version,
};
use outcore_bench_common::{
    add_one, as_bytes, elems_for, expected_sum, fill, machine, median, outcore_memory, percentile,
    probe, secs, sum1, utc_now, value, verdict, verify, view1, BoxResult, BLOCK_ELEMS, PERIOD,
};
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

const BLOCK_BYTES: usize = 2 << 20;
/// Targets: scan ≥ 0.7× the raw single-connection SELECT.
const SCAN_TARGET: f64 = 0.7;

const USAGE: &str =
    "usage: outcore-bench-postgres [--url URL] [--gib N] [--commit-mib N] [--rounds N]
                              [--parallel N] [--trials N] [--poll-iters N] [--parts LIST]

  --url URL         PostgreSQL url (default $OUTCORE_TEST_PG); fresh schemas are created in
                    its database and dropped at the end
  --gib N           size of the scanned array in GiB (default 2; fractions allowed)
  --commit-mib N    size of the rewritten-and-committed array in MiB (default 512)
  --rounds N        timed rounds per measurement, median reported (default 7, at least 5)
  --parallel N      connections of the parallel raw scan (default 4, outcore's pool size)
  --trials N        invalidation trials per mode (default 100)
  --poll-iters N    begin() calls timed for the poll cost (default 500)
  --parts LIST      comma-separated subset of scan,commit,inval (default all; RESULTS.md is
                    written only when all three run)";

struct Args {
    url: String,
    gib: f64,
    commit_mib: f64,
    rounds: usize,
    parallel: usize,
    trials: usize,
    poll_iters: usize,
    parts: Vec<String>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> BoxResult<Args> {
    let mut args = Args {
        url: std::env::var("OUTCORE_TEST_PG").unwrap_or_default(),
        gib: 2.0,
        commit_mib: 512.0,
        rounds: 7,
        parallel: 4,
        trials: 100,
        poll_iters: 500,
        parts: vec!["scan".into(), "commit".into(), "inval".into()],
    };
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match a.as_str() {
            "--url" => args.url = value("--url")?,
            "--gib" => args.gib = value("--gib")?.parse()?,
            "--commit-mib" => args.commit_mib = value("--commit-mib")?.parse()?,
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--parallel" => args.parallel = value("--parallel")?.parse()?,
            "--trials" => args.trials = value("--trials")?.parse()?,
            "--poll-iters" => args.poll_iters = value("--poll-iters")?.parse()?,
            "--parts" => {
                args.parts = value("--parts")?
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .collect();
                if let Some(p) = args
                    .parts
                    .iter()
                    .find(|p| !["scan", "commit", "inval"].contains(&p.as_str()))
                {
                    return Err(format!("unknown part {p:?}\n\n{USAGE}").into());
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }
    if args.url.is_empty() {
        return Err(format!("no --url and no $OUTCORE_TEST_PG\n\n{USAGE}").into());
    }
    if args.rounds < 5 {
        return Err(format!("--rounds must be at least 5\n\n{USAGE}").into());
    }
    if args.parallel == 0 || args.trials < 2 || args.poll_iters < 2 {
        return Err(
            format!("--parallel must be ≥ 1, --trials and --poll-iters ≥ 2\n\n{USAGE}").into(),
        );
    }
    for (name, x) in [("--gib", args.gib), ("--commit-mib", args.commit_mib)] {
        if !(x.is_finite() && x > 0.0) {
            return Err(format!("{name} must be a positive number\n\n{USAGE}").into());
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// Data, checks, statistics.

/// The sum the raw scans use: little-endian f64s of a byte slice (rows of the `postgres` crate
/// are not 8-byte aligned), eight accumulators like ndarray's unrolled sum.
#[inline(never)]
fn sum_bytes(b: &[u8]) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += f64::from_le_bytes(c[j * 8..j * 8 + 8].try_into().expect("8 bytes"));
        }
    }
    let mut tail = 0.0;
    for c in chunks.remainder().chunks_exact(8) {
        tail += f64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    acc.iter().sum::<f64>() + tail
}

/// The f64 at element `i` of a byte slice.
fn f64_at(b: &[u8], i: usize) -> f64 {
    f64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time used so far: this process (user + system, all threads) and the whole machine
/// (busy time of all CPUs from `/proc/stat`).
#[derive(Clone, Copy)]
struct Cpu {
    process: Duration,
    machine: Duration,
}

fn cpu() -> Cpu {
    // SAFETY: getrusage only writes the struct we pass; all-zero is a valid `rusage`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, writable `rusage`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    let process = if rc == 0 {
        tv(ru.ru_utime) + tv(ru.ru_stime)
    } else {
        Duration::ZERO
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            let f: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq (steal is the host's, not ours)
            (f.len() >= 7).then(|| f[0] + f[1] + f[2] + f[5] + f[6])
        })
        .map_or(Duration::ZERO, |ticks| {
            Duration::from_secs_f64(ticks as f64 / hz)
        });
    Cpu { process, machine }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(o.process),
            machine: self.machine.saturating_sub(o.machine),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A pass-through store that counts calls and their wall time.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Head,
    NewOids,
    Load,
    Locate,
    Commit,
    Log,
    Changes,
    AcquireLease,
    RenewLease,
    ReleaseLease,
    PackHorizon,
    LoadMany,
    BlockIndices,
    /// `load` of a block (fault-filled memory fetches blocks one by one with `load`).
    LoadBlock,
}

const OPS: [(Op, &str); 14] = [
    (Op::Head, "head"),
    (Op::NewOids, "new_oids"),
    (Op::Load, "load"),
    (Op::Locate, "locate"),
    (Op::Commit, "commit"),
    (Op::Log, "log"),
    (Op::Changes, "changes"),
    (Op::AcquireLease, "acquire_lease"),
    (Op::RenewLease, "renew_lease"),
    (Op::ReleaseLease, "release_lease"),
    (Op::PackHorizon, "pack_horizon"),
    (Op::LoadMany, "load_many"),
    (Op::BlockIndices, "block_indices"),
    (Op::LoadBlock, "load (block)"),
];

#[derive(Debug)]
struct Timed {
    inner: PgStorage,
    calls: [AtomicU64; OPS.len()],
    nanos: [AtomicU64; OPS.len()],
    /// Block bytes returned by `load` and `load_many`.
    loaded: AtomicU64,
    /// [`mono_ns`] when the last `commit` returned (durable and visible to other nodes).
    committed_at: AtomicU64,
}

/// Counters of a [`Timed`] store at one moment; subtract two for an interval.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    calls: [u64; OPS.len()],
    nanos: [u64; OPS.len()],
    loaded: u64,
}

impl Stats {
    fn calls(&self, op: Op) -> u64 {
        self.calls[op as usize]
    }

    fn time(&self, op: Op) -> Duration {
        Duration::from_nanos(self.nanos[op as usize])
    }

    /// Time in block fetches (`load` of blocks and `load_many`), summed over threads.
    fn fetch_time(&self) -> Duration {
        self.time(Op::LoadBlock) + self.time(Op::LoadMany)
    }

    fn fetch_calls(&self) -> u64 {
        self.calls(Op::LoadBlock) + self.calls(Op::LoadMany)
    }

    /// "name × calls" for every op called, e.g. `head 1, renew_lease 1`.
    fn call_list(&self, per: u64) -> String {
        let parts: Vec<String> = OPS
            .iter()
            .filter(|(op, _)| self.calls(*op) > 0)
            .map(|(op, name)| {
                let c = self.calls(*op) as f64 / per.max(1) as f64;
                if c.fract() == 0.0 {
                    format!("{name} {c}")
                } else {
                    format!("{name} {c:.2}")
                }
            })
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

impl std::ops::Sub for Stats {
    type Output = Stats;
    fn sub(self, o: Stats) -> Stats {
        let mut r = Stats::default();
        for i in 0..OPS.len() {
            r.calls[i] = self.calls[i] - o.calls[i];
            r.nanos[i] = self.nanos[i] - o.nanos[i];
        }
        r.loaded = self.loaded - o.loaded;
        r
    }
}

impl Timed {
    fn new(inner: PgStorage) -> Self {
        Timed {
            inner,
            calls: Default::default(),
            nanos: Default::default(),
            loaded: AtomicU64::new(0),
            committed_at: AtomicU64::new(0),
        }
    }

    fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for i in 0..OPS.len() {
            s.calls[i] = self.calls[i].load(Ordering::Relaxed);
            s.nanos[i] = self.nanos[i].load(Ordering::Relaxed);
        }
        s.loaded = self.loaded.load(Ordering::Relaxed);
        s
    }

    fn time<R>(&self, op: Op, f: impl FnOnce() -> R) -> R {
        let t0 = Instant::now();
        let r = f();
        self.nanos[op as usize].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
        r
    }
}

impl Storage for Timed {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn head(&self) -> outcore::Result<Tid> {
        self.time(Op::Head, || self.inner.head())
    }
    fn new_oids(&self, n: u64) -> outcore::Result<Range<u64>> {
        self.time(Op::NewOids, || self.inner.new_oids(n))
    }
    fn load(&self, key: Key, at: Tid) -> outcore::Result<Option<Version>> {
        if !key.is_block() {
            return self.time(Op::Load, || self.inner.load(key, at));
        }
        let r = self.time(Op::LoadBlock, || self.inner.load(key, at))?;
        let n = r.as_ref().map_or(0, |v| v.data.len());
        self.loaded.fetch_add(n as u64, Ordering::Relaxed);
        Ok(r)
    }
    fn block_indices(&self, file: Oid, at: Tid) -> outcore::Result<Vec<u64>> {
        self.time(Op::BlockIndices, || self.inner.block_indices(file, at))
    }
    fn locate(&self, key: Key, at: Tid) -> outcore::Result<Located> {
        self.time(Op::Locate, || self.inner.locate(key, at))
    }
    fn commit(&self, req: CommitRequest) -> outcore::Result<Tid> {
        let r = self.time(Op::Commit, || self.inner.commit(req));
        self.committed_at.store(mono_ns(), Ordering::Relaxed);
        r
    }
    fn log(&self, after: Tid, upto: Tid) -> outcore::Result<Vec<TxnInfo>> {
        self.time(Op::Log, || self.inner.log(after, upto))
    }
    fn acquire_lease(&self, at: Tid) -> outcore::Result<u64> {
        self.time(Op::AcquireLease, || self.inner.acquire_lease(at))
    }
    fn renew_lease(&self, id: u64, at: Tid) -> outcore::Result<()> {
        self.time(Op::RenewLease, || self.inner.renew_lease(id, at))
    }
    fn release_lease(&self, id: u64) {
        self.time(Op::ReleaseLease, || self.inner.release_lease(id))
    }
    fn pack_horizon(&self) -> outcore::Result<Tid> {
        self.time(Op::PackHorizon, || self.inner.pack_horizon())
    }
    fn pack(&self, upto: Tid) -> outcore::Result<PackStats> {
        self.inner.pack(upto)
    }
    fn verify(&self) -> outcore::Result<VerifyReport> {
        self.inner.verify()
    }
    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }
    fn load_many(&self, keys: &[Key], at: Tid) -> outcore::Result<Vec<Option<Version>>> {
        let r = self.time(Op::LoadMany, || self.inner.load_many(keys, at))?;
        let n: usize = r.iter().flatten().map(|v| v.data.len()).sum();
        self.loaded.fetch_add(n as u64, Ordering::Relaxed);
        Ok(r)
    }
    fn changes(&self, after: Tid, upto: Tid) -> outcore::Result<Vec<(Tid, Vec<Key>)>> {
        self.time(Op::Changes, || self.inner.changes(after, upto))
    }
}

/// Opens outcore's database at `url` through a [`Timed`] store.
fn open_timed(url: &str) -> BoxResult<(Database, Arc<Timed>)> {
    let timed = Arc::new(Timed::new(PgStorage::open(url)?));
    Ok((Database::from_storage(timed.clone()), timed))
}

// ---------------------------------------------------------------------------------------------
// Schemas.

/// `base` with `?outcore_schema=schema` (or `&…`) appended.
fn outcore_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}outcore_schema={schema}")
}

/// The benchmark's schemas; dropped (`DROP SCHEMA … CASCADE`) when this is dropped.
struct Schemas {
    base_url: String,
    names: Vec<String>,
}

impl Schemas {
    fn drop_all(&mut self) -> BoxResult<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        let mut c = Client::connect(&self.base_url, NoTls)?;
        for name in std::mem::take(&mut self.names) {
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))?;
        }
        Ok(())
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        if let Err(e) = self.drop_all() {
            eprintln!("warning: could not drop the benchmark schemas: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: scan.

/// One scan variant's timed passes.
#[derive(Default)]
struct Scan {
    times: Vec<Duration>,
    cpu: Vec<Cpu>,
    /// outcore only: connect + array, view, sum, drop; block fetches (`load` of blocks and
    /// `load_many`: time summed over threads, calls) and bytes fetched.
    connect: Vec<Duration>,
    view: Vec<Duration>,
    sum: Vec<Duration>,
    teardown: Vec<Duration>,
    load_many: Vec<Duration>,
    load_many_calls: Vec<u64>,
    fetched: Vec<u64>,
}

struct ScanResults {
    bytes: u64,
    rows: u64,
    fill: Duration,
    outcore: Scan,
    raw: Scan,
    parallel: Scan,
}

/// What a raw scan read.
#[derive(Default)]
struct RawRead {
    rows: u64,
    bytes: u64,
    sum: f64,
    first_sum: f64,
}

/// Streams `sql` (one bytea column of 2 MiB rows) and sums it; checks each row's length and
/// one element against the row's first one.
fn raw_scan(client: &mut Client, sql: &str) -> BoxResult<RawRead> {
    let mut r = RawRead::default();
    let mut rows = client.query_raw(sql, std::iter::empty::<i64>())?;
    while let Some(row) = rows.next()? {
        let b: &[u8] = row.try_get(0)?;
        if b.len() != BLOCK_BYTES {
            return Err(format!("raw scan: a row of {} bytes", b.len()).into());
        }
        r.sum += sum_bytes(b);
        let first = f64_at(b, 0);
        let k = probe(r.rows + 1);
        let expected = ((first as u64 - 1 + k) % PERIOD + 1) as f64;
        if f64_at(b, k as usize) != expected {
            return Err(format!("raw scan: element {k} of a row is not {expected}").into());
        }
        r.first_sum += first;
        r.rows += 1;
        r.bytes += b.len() as u64;
    }
    Ok(r)
}

/// Checks a raw scan's totals against the array of `n` elements.
fn check_raw(r: &RawRead, n: u64, what: &str) -> BoxResult<()> {
    let blocks = n / BLOCK_ELEMS;
    let first: f64 = (0..blocks).map(|b| value(b * BLOCK_ELEMS, 0)).sum();
    if r.rows != blocks || r.bytes != n * 8 {
        return Err(format!(
            "{what}: {} rows / {} bytes, expected {blocks}",
            r.rows, r.bytes
        )
        .into());
    }
    if r.sum != expected_sum(n, 0)? || r.first_sum != first {
        return Err(format!(
            "{what}: sum {} (first elements {}), expected {} ({first})",
            r.sum,
            r.first_sum,
            expected_sum(n, 0)?
        )
        .into());
    }
    Ok(())
}

fn scan_part(args: &Args, base: &str, schema: &str) -> BoxResult<ScanResults> {
    let n = elems_for(args.gib * f64::from(1u32 << 30));
    let bytes = n * 8;
    println!(
        "scan: {n} f64 ({:.2} GiB) in schema {schema}",
        bytes as f64 / f64::from(1u32 << 30)
    );
    let (db, timed) = open_timed(&outcore_url(base, schema))?;
    let t0 = Instant::now();
    {
        let conn = db.connect()?;
        let mut a = conn.create::<f64>("a", &[n], Order::C)?;
        fill(&conn, &mut a, n)?;
    }
    let fill_time = t0.elapsed();
    println!(
        "  outcore fill: {:.2} s ({:.0} MB/s, 64 MiB transactions)",
        secs(fill_time),
        bytes as f64 / secs(fill_time) / 1e6
    );
    let mut single = Client::connect(base, NoTls)?;
    let rows: i64 = single
        .query_one(&format!("SELECT count(*) FROM {schema}.outcore_data"), &[])?
        .get(0);
    if rows as u64 != n / BLOCK_ELEMS {
        return Err(format!("{rows} rows in outcore_data, expected {}", n / BLOCK_ELEMS).into());
    }
    let mut parallel: Vec<Client> = (0..args.parallel)
        .map(|_| Client::connect(base, NoTls))
        .collect::<Result<_, _>>()?;
    let single_sql = format!("SELECT bytes FROM {schema}.outcore_data");
    let p = args.parallel;

    let outcore_pass = |m: &mut Scan| -> BoxResult<()> {
        let (s0, c0) = (timed.stats(), cpu());
        let t0 = Instant::now();
        let conn = db.connect()?;
        let a = conn.array("a")?;
        let t1 = Instant::now();
        let v = view1(&a)?;
        let t2 = Instant::now();
        // Block by block, each block's sampled element checked while it is in memory (with
        // fault-filled memory, blocks beyond the cache budget are dropped again).
        let mut sum = 0.0;
        for (b, block) in v.exact_chunks(BLOCK_ELEMS as usize).into_iter().enumerate() {
            sum += sum1(block);
            let i = b as u64 * BLOCK_ELEMS + probe(b as u64);
            if block[probe(b as u64) as usize] != value(i, 0) {
                return Err(format!("outcore scan: element {i} is wrong").into());
            }
        }
        let sum = std::hint::black_box(sum);
        let t3 = Instant::now();
        if sum != expected_sum(n, 0)? {
            return Err(
                format!("outcore scan: sum {sum}, expected {}", expected_sum(n, 0)?).into(),
            );
        }
        let t4 = Instant::now();
        drop(v);
        drop(a);
        drop(conn);
        let t5 = Instant::now();
        let (s1, c1) = (timed.stats(), cpu());
        let d = s1 - s0;
        if d.loaded < bytes {
            return Err(format!("outcore scan fetched {} bytes, not {bytes}", d.loaded).into());
        }
        m.fetched.push(d.loaded);
        m.times.push((t5 - t0) - (t4 - t3));
        m.cpu.push(c1 - c0);
        m.connect.push(t1 - t0);
        m.view.push(t2 - t1);
        m.sum.push(t3 - t2);
        m.teardown.push(t5 - t4);
        m.load_many.push(d.fetch_time());
        m.load_many_calls.push(d.fetch_calls());
        Ok(())
    };
    let mut raw_pass = |m: &mut Scan| -> BoxResult<()> {
        let c0 = cpu();
        let t0 = Instant::now();
        let r = raw_scan(&mut single, &single_sql)?;
        let t = t0.elapsed();
        m.cpu.push(cpu() - c0);
        m.times.push(t);
        check_raw(&r, n, "raw scan, 1 connection")
    };
    let mut parallel_pass = |m: &mut Scan| -> BoxResult<()> {
        let c0 = cpu();
        let t0 = Instant::now();
        let parts: Vec<Result<RawRead, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = parallel
                .iter_mut()
                .enumerate()
                .map(|(k, c)| {
                    let sql =
                        format!("SELECT bytes FROM {schema}.outcore_data WHERE id % {p} = {k}");
                    scope.spawn(move || raw_scan(c, &sql).map_err(|e| e.to_string()))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("scan thread panicked".to_string()))
                })
                .collect()
        });
        let t = t0.elapsed();
        m.cpu.push(cpu() - c0);
        m.times.push(t);
        let mut total = RawRead::default();
        for part in parts {
            let part = part?;
            total.rows += part.rows;
            total.bytes += part.bytes;
            total.sum += part.sum;
            total.first_sum += part.first_sum;
        }
        check_raw(&total, n, "raw scan, parallel")
    };

    let (mut outcore, mut raw, mut par) = (Scan::default(), Scan::default(), Scan::default());
    // Round 0 is an untimed warm-up of every variant.
    let mut warm = (Scan::default(), Scan::default(), Scan::default());
    for r in 0..=args.rounds {
        let (o, w, q) = if r == 0 {
            (&mut warm.0, &mut warm.1, &mut warm.2)
        } else {
            (&mut outcore, &mut raw, &mut par)
        };
        for k in 0..3 {
            match (r + k) % 3 {
                0 => outcore_pass(o)?,
                1 => raw_pass(w)?,
                _ => parallel_pass(q)?,
            }
        }
        let last = |m: &Scan| m.times.last().map_or(0.0, |d| secs(*d));
        println!(
            "  round {r}{}: outcore {:.3} s (view {:.3} s, sum {:.3} s, in fetches {:.3} s, drop \
             {:.3} s); raw 1 conn {:.3} s; raw {p} conns {:.3} s",
            if r == 0 { " (warm-up)" } else { "" },
            last(o),
            o.view.last().map_or(0.0, |d| secs(*d)),
            o.sum.last().map_or(0.0, |d| secs(*d)),
            o.load_many.last().map_or(0.0, |d| secs(*d)),
            o.teardown.last().map_or(0.0, |d| secs(*d)),
            last(w),
            last(q),
        );
    }
    Ok(ScanResults {
        bytes,
        rows: rows as u64,
        fill: fill_time,
        outcore,
        raw,
        parallel: par,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 2: commit throughput.

#[derive(Default)]
struct Commit {
    rewrite: Vec<Duration>,
    write: Vec<Duration>,
    total: Vec<Duration>,
    cpu: Vec<Cpu>,
    /// outcore only: the store's `commit` and the block fetches inside `conn.commit()`.
    store_commit: Vec<Duration>,
    load_many: Vec<Duration>,
    reloaded: Vec<u64>,
    /// Bytes the untimed verification read after the commit fetched from the store.
    refetched_after: Vec<u64>,
    /// Bytes fetched from the store during the (timed) rewrite.
    rewrite_fetched: Vec<u64>,
}

struct CommitResults {
    bytes: u64,
    outcore: Commit,
    raw: Commit,
}

struct OutcoreCommit<'a> {
    conn: Connection,
    b: BigArray,
    timed: &'a Timed,
    plus: u64,
}

impl OutcoreCommit<'_> {
    fn round(&mut self, m: &mut Commit) -> BoxResult<()> {
        let sr = self.timed.stats();
        let t0 = Instant::now();
        add_one(self.b.slice_mut::<f64, _>(s![..])?.view_mut());
        let rewrite = t0.elapsed();
        m.rewrite_fetched.push((self.timed.stats() - sr).loaded);
        let (s0, c0) = (self.timed.stats(), cpu());
        let t1 = Instant::now();
        self.conn.commit()?;
        let write = t1.elapsed();
        let (s1, c1) = (self.timed.stats(), cpu());
        self.plus += 1;
        let d = s1 - s0;
        if d.calls(Op::Commit) != 1 {
            return Err("outcore: conn.commit() did not commit".into());
        }
        m.rewrite.push(rewrite);
        m.write.push(write);
        m.total.push(rewrite + write);
        m.cpu.push(c1 - c0);
        m.store_commit.push(d.time(Op::Commit));
        m.load_many.push(d.fetch_time());
        m.reloaded.push(d.loaded);
        let s2 = self.timed.stats();
        let v = view1(&self.b)?;
        verify(
            v.view(),
            sum1(v.view()),
            self.plus,
            "outcore committed array",
        )?;
        m.refetched_after.push((self.timed.stats() - s2).loaded);
        Ok(())
    }
}

struct RawCommit {
    client: Client,
    table: String,
    buf: Vec<f64>,
    plus: u64,
}

impl RawCommit {
    fn round(&mut self, m: &mut Commit) -> BoxResult<()> {
        let t0 = Instant::now();
        add_one(ArrayViewMut1::from(&mut self.buf[..]));
        let rewrite = t0.elapsed();
        self.plus += 1;
        let round = self.plus as i32;
        let c0 = cpu();
        let t1 = Instant::now();
        let mut tx = self.client.transaction()?;
        let insert = tx.prepare(&format!(
            "INSERT INTO {} (round, idx, bytes) VALUES ($1, $2, $3)",
            self.table
        ))?;
        for (i, chunk) in self.buf.chunks(BLOCK_ELEMS as usize).enumerate() {
            tx.execute(&insert, &[&round, &(i as i32), &as_bytes(chunk)])?;
        }
        tx.commit()?;
        let write = t1.elapsed();
        m.cpu.push(cpu() - c0);
        m.rewrite.push(rewrite);
        m.write.push(write);
        m.total.push(rewrite + write);
        // Verify the buffer, then what the table holds: every row, one element each.
        let buf = ArrayView1::from(&self.buf[..]);
        verify(buf.view(), sum1(buf.view()), self.plus, "raw commit buffer")?;
        let blocks = self.buf.len() as u64 / BLOCK_ELEMS;
        let rows = self.client.query(
            &format!(
                "SELECT idx, octet_length(bytes),
                        substring(bytes FROM ((idx::bigint * 7919 % {BLOCK_ELEMS}) * 8 + 1)::int FOR 8)
                 FROM {} WHERE round = $1",
                self.table
            ),
            &[&round],
        )?;
        if rows.len() as u64 != blocks {
            return Err(format!("raw commit: {} rows, expected {blocks}", rows.len()).into());
        }
        for row in rows {
            let (idx, len, x): (i32, i32, &[u8]) = (row.get(0), row.get(1), row.get(2));
            let i = idx as u64 * BLOCK_ELEMS + probe(idx as u64);
            if len as usize != BLOCK_BYTES || f64_at(x, 0) != value(i, self.plus) {
                return Err(format!("raw commit: row {idx} does not hold the data").into());
            }
        }
        Ok(())
    }
}

fn commit_part(args: &Args, base: &str, schema: &str) -> BoxResult<CommitResults> {
    let n = elems_for(args.commit_mib * f64::from(1u32 << 20));
    let bytes = n * 8;
    println!(
        "commit: {n} f64 ({:.0} MiB) in schema {schema}",
        bytes as f64 / f64::from(1u32 << 20)
    );
    let (db, timed) = open_timed(&outcore_url(base, schema))?;
    let conn = db.connect()?;
    let mut b = conn.create::<f64>("b", &[n], Order::C)?;
    fill(&conn, &mut b, n)?;
    let mut outcore = OutcoreCommit {
        conn,
        b,
        timed: &timed,
        plus: 0,
    };
    let table = format!("{schema}.raw_blocks");
    let mut client = Client::connect(base, NoTls)?;
    client.batch_execute(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, round int NOT NULL, idx int NOT NULL,
                               bytes bytea NOT NULL);
         ALTER TABLE {table} ALTER COLUMN bytes SET STORAGE EXTERNAL"
    ))?;
    let mut raw = RawCommit {
        client,
        table,
        buf: (0..n).map(|i| value(i, 0)).collect(),
        plus: 0,
    };
    let (mut mo, mut mr) = (Commit::default(), Commit::default());
    let (mut wo, mut wr) = (Commit::default(), Commit::default());
    for r in 0..=args.rounds {
        let (o, w) = if r == 0 {
            (&mut wo, &mut wr)
        } else {
            (&mut mo, &mut mr)
        };
        if r % 2 == 0 {
            outcore.round(o)?;
            raw.round(w)?;
        } else {
            raw.round(w)?;
            outcore.round(o)?;
        }
        let last = |v: &[Duration]| v.last().map_or(0.0, |d| secs(*d));
        println!(
            "  round {r}{}: outcore rewrite {:.3} s + commit {:.3} s (store commit {:.3} s, \
             fetches {:.3} s); raw rewrite {:.3} s + INSERT {:.3} s",
            if r == 0 { " (warm-up)" } else { "" },
            last(&o.rewrite),
            last(&o.write),
            last(&o.store_commit),
            last(&o.load_many),
            last(&w.rewrite),
            last(&w.write),
        );
    }
    // A fresh connection must read the last committed version.
    let plus = outcore.plus;
    drop(outcore);
    let conn = db.connect()?;
    let b = conn.array("b")?;
    let v = view1(&b)?;
    verify(
        v.view(),
        sum1(v.view()),
        plus,
        "outcore array re-read by a fresh connection",
    )?;
    Ok(CommitResults {
        bytes,
        outcore: mo,
        raw: mr,
    })
}

// ---------------------------------------------------------------------------------------------
// Part 3: invalidation latency between two processes.

const MODES: [&str; 3] = ["poll", "listen", "notify"];
/// The channel of the raw NOTIFY → LISTEN reference.
const CHANNEL: &str = "outcore_bench";

/// Node B: a second process, driven over stdin/stdout by node A.
///
/// Commands: `pollcost N`, `poll K`, `listen K`, `notify K`, `quit`. It answers `hello` once
/// ready, `ready` when it is waiting for a trial's change, `seen K T_NS COUNT` when it saw it
/// (COUNT: begin() calls), `cost …` lines, or `error MESSAGE`.
fn node_b(url: &str) -> BoxResult<()> {
    let (db, timed) = open_timed(url)?;
    let conn = db.connect()?;
    let a = conn.array("c")?;
    let (base, _) = PgStorage::split_schema(url);
    let mut listener = Client::connect(&base, NoTls)?;
    listener.batch_execute(&format!("LISTEN outcore; LISTEN {CHANNEL}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "hello")?;
    out.flush()?;
    let read = |conn: &Connection| -> BoxResult<f64> {
        conn.begin()?;
        Ok(a.slice::<f64, _>(s![0..1])?[0])
    };
    let timeout = Duration::from_secs(30);
    // The last `begin()` + read (ns) and its store calls since `s0`: head + renew_lease,
    // changes, load_many.
    let split = |total: u64, s0: Stats| {
        let d = timed.stats() - s0;
        format!(
            "{total} {} {} {}",
            (d.time(Op::Head) + d.time(Op::RenewLease)).as_nanos(),
            d.time(Op::Changes).as_nanos(),
            d.fetch_time().as_nanos()
        )
    };
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let (cmd, arg) = (words.next().unwrap_or(""), words.next().unwrap_or("0"));
        let k: f64 = arg.parse()?;
        let drain = |l: &mut Client| -> BoxResult<()> {
            let mut pending = l.notifications();
            let mut it = pending.iter();
            while it.next()?.is_some() {}
            Ok(())
        };
        match cmd {
            "pollcost" => {
                let iters = k as usize;
                for _ in 0..10 {
                    conn.begin()?;
                }
                let mut begin = Vec::with_capacity(iters);
                let s0 = timed.stats();
                for _ in 0..iters {
                    let t = mono_ns();
                    conn.begin()?;
                    begin.push(mono_ns() - t);
                }
                let calls = (timed.stats() - s0).call_list(iters as u64);
                let mut with_read = Vec::with_capacity(iters);
                for _ in 0..iters {
                    let t = mono_ns();
                    std::hint::black_box(read(&conn)?);
                    with_read.push(mono_ns() - t);
                }
                let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
                writeln!(out, "cost begin {}", list(&begin))?;
                writeln!(out, "cost read {}", list(&with_read))?;
                writeln!(out, "cost calls {calls}")?;
            }
            "poll" => {
                writeln!(out, "ready")?;
                out.flush()?;
                let t0 = Instant::now();
                let mut polls = 0u64;
                loop {
                    let (s0, t) = (timed.stats(), mono_ns());
                    let v = read(&conn)?;
                    polls += 1;
                    if v == k {
                        let now = mono_ns();
                        writeln!(out, "seen {k} {now} {polls} {}", split(now - t, s0))?;
                        break;
                    }
                    if t0.elapsed() > timeout {
                        writeln!(out, "error poll: value {k} not seen within {timeout:?}")?;
                        break;
                    }
                }
            }
            "listen" | "notify" => {
                drain(&mut listener)?;
                writeln!(out, "ready")?;
                out.flush()?;
                let mut wakeups = 0u64;
                let seen = loop {
                    let mut notes = listener.notifications();
                    let Some(note) = notes.timeout_iter(timeout).next()? else {
                        break None;
                    };
                    let t = mono_ns();
                    if cmd == "notify" {
                        if note.channel() == CHANNEL && note.payload() == arg {
                            break Some((t, "0 0 0 0".to_string()));
                        }
                        continue;
                    }
                    if note.channel() != "outcore" {
                        continue;
                    }
                    wakeups += 1;
                    let s0 = timed.stats();
                    if read(&conn)? == k {
                        let now = mono_ns();
                        break Some((now, split(now - t, s0)));
                    }
                };
                match seen {
                    Some((t, sp)) => writeln!(out, "seen {k} {t} {wakeups} {sp}")?,
                    None => writeln!(out, "error {cmd}: {k} not seen within {timeout:?}")?,
                }
            }
            "quit" => break,
            other => writeln!(out, "error unknown command {other:?}")?,
        }
        out.flush()?;
    }
    Ok(())
}

/// Node B as seen from node A; killed if still running when dropped.
struct NodeB {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NodeB {
    fn spawn(url: &str) -> BoxResult<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--node-b", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut b = NodeB {
            child,
            stdin,
            stdout,
        };
        b.expect("hello")?;
        Ok(b)
    }

    fn send(&mut self, line: &str) -> BoxResult<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn line(&mut self) -> BoxResult<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            return Err("node B exited".into());
        }
        let l = l.trim_end().to_string();
        if let Some(e) = l.strip_prefix("error ") {
            return Err(format!("node B: {e}").into());
        }
        Ok(l)
    }

    fn expect(&mut self, what: &str) -> BoxResult<()> {
        let l = self.line()?;
        if l != what {
            return Err(format!("node B said {l:?}, expected {what:?}").into());
        }
        Ok(())
    }
}

impl Drop for NodeB {
    fn drop(&mut self) {
        let _ = self.send("quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One mode's trials.
#[derive(Default)]
struct Trials {
    /// To B seeing the change (ms): from the return of the store's `commit` in A (the data is
    /// durable and visible; for the raw mode: NOTIFY returned), from the return of A's
    /// `conn.commit()` and from its start.
    from_visible: Vec<f64>,
    from_return: Vec<f64>,
    from_start: Vec<f64>,
    /// A's commit (or NOTIFY) call.
    commit: Vec<f64>,
    /// begin() calls (poll) or wake-ups (listen) B needed.
    count: Vec<u64>,
    /// B's `begin()` + read that saw the change (ms): total, in head + renew_lease, in
    /// changes, in load_many.
    last_read: Vec<[f64; 4]>,
}

struct InvalResults {
    trials: usize,
    modes: [Trials; 3],
    begin_ns: Vec<u64>,
    read_ns: Vec<u64>,
    calls: String,
    /// A's commits (ms): the store's `commit` alone, and the store calls of one commit.
    store_commit: Vec<f64>,
    commit_calls: String,
    /// References on a plain client (ms): one-row UPDATE + COMMIT, 2 MiB INSERT + COMMIT.
    raw_update: Vec<f64>,
    raw_insert: Vec<f64>,
}

fn inval_part(args: &Args, base: &str, schema: &str) -> BoxResult<InvalResults> {
    let url = outcore_url(base, schema);
    println!("invalidation: a one-block array in schema {schema}, node B a second process");
    let (db, timed) = open_timed(&url)?;
    let conn = db.connect()?;
    let mut c = conn.create::<f64>("c", &[BLOCK_ELEMS], Order::C)?;
    fill(&conn, &mut c, BLOCK_ELEMS)?;
    let mut notifier = Client::connect(base, NoTls)?;

    // References for A's commit: the smallest durable transactions on a plain client.
    notifier.batch_execute(&format!(
        "CREATE TABLE {schema}.raw_small (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO {schema}.raw_small VALUES (1, 0);
         CREATE TABLE {schema}.raw_block (id bigserial PRIMARY KEY, bytes bytea NOT NULL);
         ALTER TABLE {schema}.raw_block ALTER COLUMN bytes SET STORAGE EXTERNAL"
    ))?;
    let block: Vec<f64> = (0..BLOCK_ELEMS).map(|i| value(i, 0)).collect();
    let update = notifier.prepare(&format!(
        "UPDATE {schema}.raw_small SET v = v + 1 WHERE id = 1"
    ))?;
    let insert = notifier.prepare(&format!(
        "INSERT INTO {schema}.raw_block (bytes) VALUES ($1)"
    ))?;
    let (mut raw_update, mut raw_insert) = (Vec::new(), Vec::new());
    for t in 0..args.trials {
        for j in 0..2 {
            let t0 = Instant::now();
            if (t + j) % 2 == 0 {
                notifier.execute(&update, &[])?;
                raw_update.push(secs(t0.elapsed()) * 1e3);
            } else {
                notifier.execute(&insert, &[&as_bytes(&block)])?;
                raw_insert.push(secs(t0.elapsed()) * 1e3);
            }
        }
    }
    let mut b = NodeB::spawn(&url)?;

    b.send(&format!("pollcost {}", args.poll_iters))?;
    let mut costs: Vec<Vec<u64>> = Vec::new();
    let mut calls = String::new();
    for _ in 0..3 {
        let l = b.line()?;
        let rest = l.strip_prefix("cost ").ok_or("bad pollcost answer")?;
        if let Some(c) = rest.strip_prefix("calls ") {
            calls = c.to_string();
        } else {
            let mut w = rest.split_whitespace();
            w.next();
            costs.push(w.map(str::parse).collect::<Result<_, _>>()?);
        }
    }
    if costs.len() != 2 {
        return Err("bad pollcost answer".into());
    }
    println!(
        "  poll cost: begin() {:.0} µs, begin() + read {:.0} µs (medians); store calls per \
         begin(): {calls}",
        median(&costs[0]) as f64 / 1e3,
        median(&costs[1]) as f64 / 1e3
    );

    let mut modes: [Trials; 3] = Default::default();
    let (mut store_commit, mut commit_calls) = (Vec::new(), String::new());
    let mut k = 1.0f64;
    for t in 0..args.trials {
        for j in 0..3 {
            let m = (t + j) % 3;
            k += 1.0;
            if k == value(0, 0) {
                k += 1.0;
            }
            b.send(&format!("{} {k}", MODES[m]))?;
            b.expect("ready")?;
            // B is polling / waiting; commit at a varying moment of its loop.
            std::thread::sleep(Duration::from_millis(5 + ((t * 37 + j * 11) % 20) as u64));
            let (start, visible, ret) = if m == 2 {
                let start = mono_ns();
                notifier.batch_execute(&format!("NOTIFY {CHANNEL}, '{k}'"))?;
                let ret = mono_ns();
                (start, ret, ret)
            } else {
                c.slice_mut::<f64, _>(s![0..1])?[0] = k;
                let s0 = timed.stats();
                let start = mono_ns();
                conn.commit()?;
                let ret = mono_ns();
                let d = timed.stats() - s0;
                store_commit.push(secs(d.time(Op::Commit)) * 1e3);
                if commit_calls.is_empty() {
                    commit_calls = d.call_list(1);
                }
                (start, timed.committed_at.load(Ordering::Relaxed), ret)
            };
            let l = b.line()?;
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() != 8 || w[0] != "seen" || w[1].parse::<f64>()? != k {
                return Err(format!("node B said {l:?}, expected seen {k}").into());
            }
            let seen: u64 = w[2].parse()?;
            let tr = &mut modes[m];
            tr.from_visible.push((seen as f64 - visible as f64) / 1e6);
            tr.from_return.push((seen as f64 - ret as f64) / 1e6);
            tr.from_start.push((seen as f64 - start as f64) / 1e6);
            tr.commit.push((ret - start) as f64 / 1e6);
            tr.count.push(w[3].parse()?);
            let ms = |x: &str| -> BoxResult<f64> { Ok(x.parse::<f64>()? / 1e6) };
            tr.last_read
                .push([ms(w[4])?, ms(w[5])?, ms(w[6])?, ms(w[7])?]);
        }
    }
    println!(
        "  medians from the commit being visible: poll {:.2} ms, listen {:.2} ms, raw NOTIFY \
         {:.2} ms",
        median(&modes[0].from_visible),
        median(&modes[1].from_visible),
        median(&modes[2].from_visible)
    );
    drop(b);
    Ok(InvalResults {
        trials: args.trials,
        modes,
        begin_ns: costs.remove(0),
        read_ns: costs.remove(0),
        calls,
        store_commit,
        commit_calls,
        raw_update,
        raw_insert,
    })
}

// ---------------------------------------------------------------------------------------------
// Report.

/// The server's version and the settings that matter here.
fn server_info(base: &str) -> BoxResult<Vec<String>> {
    let mut c = Client::connect(base, NoTls)?;
    let mut lines = vec![format!(
        "PostgreSQL: {}",
        c.query_one("SELECT version()", &[])?.get::<_, String>(0)
    )];
    let mut settings = Vec::new();
    for name in [
        "shared_buffers",
        "max_wal_size",
        "wal_level",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_compression",
    ] {
        let v: String = c.query_one(&format!("SHOW {name}"), &[])?.get(0);
        settings.push(format!("{name}={v}"));
    }
    lines.push(format!("server settings: {}", settings.join(", ")));
    let host = base
        .rsplit_once('@')
        .map_or(base, |(_, h)| h)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let data_dir = c
        .query_one("SHOW data_directory", &[])
        .ok()
        .map(|r| r.get::<_, String>(0));
    let fs = data_dir.as_deref().map(|d| {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && Path::new(d).starts_with(f[1]))
                    .then(|| (f[1].len(), format!("{} on {}", f[2], f[0])))
            })
            .max_by_key(|m| m.0)
            .map_or_else(|| "unknown".to_string(), |m| m.1)
    });
    lines.push(format!(
        "server at {host} (same machine, TCP loopback); data directory {} ({})",
        data_dir.as_deref().unwrap_or("unknown"),
        fs.unwrap_or_else(|| "unknown".into())
    ));
    Ok(lines)
}

fn med_s(xs: &[Duration]) -> f64 {
    secs(median(xs))
}

fn report_scan(out: &mut String, args: &Args, s: &ScanResults) {
    let gib = s.bytes as f64 / f64::from(1u32 << 30);
    let _ = writeln!(out, "## 1. Scan of a {gib:.2} GiB f64 array\n");
    let _ = writeln!(
        out,
        "{} blocks of 2 MiB, one `outcore_data` row each. outcore: fresh `db.connect()` + \
         `conn.array` + `a.view::<f64>()` + ndarray `sum` (2 MiB slice by slice; this is \
         when fault-filled memory fetches the blocks) + drop. Raw: \
         `SELECT bytes FROM <schema>.outcore_data` streamed over one connection, or split by \
         `id % {p}` over {p} connections in threads, every row summed as f64. All \
         connections are open before the rounds. Wall time of the whole pass; CPU seconds \
         per pass.\n",
        s.rows,
        p = args.parallel
    );
    let _ = writeln!(
        out,
        "| variant | median s | GB/s | × raw 1 conn | × raw {} conns | client CPU s | machine \
         CPU s |\n|---|---:|---:|---:|---:|---:|---:|",
        args.parallel
    );
    let (raw, par) = (med_s(&s.raw.times), med_s(&s.parallel.times));
    for (name, m) in [
        ("raw SELECT, 1 connection (baseline)", &s.raw),
        (
            &*format!("raw SELECT, {} connections", args.parallel),
            &s.parallel,
        ),
        ("outcore `connect` + `view()` + sum + drop", &s.outcore),
    ] {
        let t = med_s(&m.times);
        let _ = writeln!(
            out,
            "| {name} | {t:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.bytes as f64 / t / 1e9,
            raw / t,
            par / t,
            secs(median(m.cpu.iter().map(|c| c.process).collect::<Vec<_>>())),
            secs(median(m.cpu.iter().map(|c| c.machine).collect::<Vec<_>>())),
        );
    }
    let o = &s.outcore;
    let _ = writeln!(
        out,
        "\noutcore pass, medians: `connect` + `array` {:.1} ms; `view()` {:.3} s; `sum` \
         {:.3} s; drop {:.3} s. Block fetches (`load` of blocks + `load_many`): {} calls, \
         {:.3} s summed over the fetching threads, {:.0} MiB fetched for a {:.0} MiB array.",
        med_s(&o.connect) * 1e3,
        med_s(&o.view),
        med_s(&o.sum),
        med_s(&o.teardown),
        median(&o.load_many_calls),
        med_s(&o.load_many),
        median(&o.fetched) as f64 / f64::from(1u32 << 20),
        s.bytes as f64 / f64::from(1u32 << 20),
    );
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", secs(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "\nPer round (s): outcore {}; raw 1 conn {}; raw {} conns {}.",
        list(&o.times),
        list(&s.raw.times),
        args.parallel,
        list(&s.parallel.times)
    );
    let _ = writeln!(
        out,
        "\n(Setup, untimed: outcore fill through `slice_mut` in 64 MiB transactions took \
         {:.2} s, {:.0} MB/s.)\n",
        secs(s.fill),
        s.bytes as f64 / secs(s.fill) / 1e6
    );
}

fn report_commit(out: &mut String, c: &CommitResults) {
    let mib = c.bytes as f64 / f64::from(1u32 << 20);
    let _ = writeln!(
        out,
        "## 2. Commit of a fully rewritten {mib:.0} MiB f64 array\n"
    );
    let _ = writeln!(
        out,
        "Every element `+= 1.0` (same function on both sides), then made durable. outcore: \
         `view_mut()` += 1, `conn.commit()`. Raw: a heap buffer += 1, then one transaction \
         of {} prepared `INSERT`s of 2 MiB `bytea` rows into a `STORAGE EXTERNAL` table, \
         `COMMIT`. One untimed warm-up round first. MB/s are the array's bytes / time.\n",
        c.bytes / BLOCK_BYTES as u64
    );
    let _ = writeln!(
        out,
        "| variant | rewrite s | commit s | total s | total MB/s | commit alone MB/s | client \
         CPU s in commit | machine CPU s in commit |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, m) in [
        (
            "raw: heap += 1; INSERT 2 MiB rows, one transaction (baseline)",
            &c.raw,
        ),
        ("outcore: `view_mut()` += 1; `conn.commit()`", &c.outcore),
    ] {
        let (rw, wr, tot) = (med_s(&m.rewrite), med_s(&m.write), med_s(&m.total));
        let _ = writeln!(
            out,
            "| {name} | {rw:.3} | {wr:.3} | {tot:.3} | {:.0} | {:.0} | {:.2} | {:.2} |",
            c.bytes as f64 / tot / 1e6,
            c.bytes as f64 / wr / 1e6,
            secs(median(m.cpu.iter().map(|c| c.process).collect::<Vec<_>>())),
            secs(median(m.cpu.iter().map(|c| c.machine).collect::<Vec<_>>())),
        );
    }
    let o = &c.outcore;
    let _ = writeln!(
        out,
        "\nInside outcore's `conn.commit()` (medians): the store's `commit` (encode, INSERT \
         bodies, lock, index, log, NOTIFY, COMMIT) {:.3} s; block fetches {:.3} s ({:.0} MiB); \
         the rest (finding the written pages, moving to the new snapshot, invalidation) \
         {:.3} s. The untimed read-back of the array after each commit fetched {:.0} MiB from \
         the store: the connection's own commit comes back through the commit log as a \
         change, and the blocks it has just written are fetched again. The timed rewrite \
         fetched {:.0} MiB (median).",
        med_s(&o.store_commit),
        med_s(&o.load_many),
        median(&o.reloaded) as f64 / f64::from(1u32 << 20),
        median(
            o.write
                .iter()
                .zip(o.store_commit.iter().zip(&o.load_many))
                .map(|(w, (s, l))| secs(w.saturating_sub(*s + *l)))
                .collect::<Vec<_>>()
        ),
        median(&o.refetched_after) as f64 / f64::from(1u32 << 20),
        median(&o.rewrite_fetched) as f64 / f64::from(1u32 << 20),
    );
    let list = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", secs(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "\nPer round, in order (s): outcore rewrite + commit {}; raw rewrite + INSERT {}.\n",
        list(&o.total),
        list(&c.raw.total)
    );
}

fn report_inval(out: &mut String, r: &InvalResults) {
    let _ = writeln!(out, "## 3. Invalidation latency between two processes\n");
    let _ = writeln!(
        out,
        "Node A (this process) and node B (a second process, its own `Database`) share a \
         one-block (2 MiB) array. Per trial A writes a new value into element 0 and commits; \
         B reports when it reads it. {} trials per mode, the modes alternate trial by trial, \
         A commits 5–24 ms after B is ready. Latency = the moment B has read the new value \
         minus a moment in A, CLOCK_MONOTONIC in both processes: **visible**: the store's \
         `commit` returned in A (the transaction is durable and visible to every node; raw \
         mode: `NOTIFY` returned); **return**: A's `conn.commit()` returned (it then also \
         moved A to the new snapshot, so B can be first: negative values); **start**: A \
         called `conn.commit()`. p99 is nearest-rank.\n",
        r.trials
    );
    let _ = writeln!(
        out,
        "| mode | median ms from visible | p99 | median ms from return | p99 | median ms \
         from start | p99 | A's `commit()` / NOTIFY median ms | B's `begin()` calls (poll) / \
         wake-ups (listen), median |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let names = [
        "poll: B loops `begin()` + read",
        "listen: B waits for `NOTIFY outcore`, then `begin()` + read",
        "raw `NOTIFY` → `LISTEN` (postgres crate, reference)",
    ];
    for (name, t) in names.iter().zip(&r.modes) {
        let count = if std::ptr::eq(t, &r.modes[2]) {
            "–".to_string()
        } else {
            median(&t.count).to_string()
        };
        let _ = writeln!(
            out,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {count} |",
            median(&t.from_visible),
            percentile(&t.from_visible, 0.99),
            median(&t.from_return),
            percentile(&t.from_return, 0.99),
            median(&t.from_start),
            percentile(&t.from_start, 0.99),
            median(&t.commit),
        );
    }
    let _ = writeln!(out);
    for (name, t) in [("poll", &r.modes[0]), ("listen", &r.modes[1])] {
        let col = |i: usize| median(t.last_read.iter().map(|x| x[i]).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "* {name}: B's `begin()` + read that saw the change took {:.2} ms (median): head + \
             renew_lease {:.2} ms, changes (log) {:.2} ms, fetching the changed 2 MiB \
             block {:.2} ms, the rest (invalidation, install, read) {:.2} ms.",
            col(0),
            col(1),
            col(2),
            col(3),
            col(0) - col(1) - col(2) - col(3)
        );
    }
    let us = |v: &[u64], p: f64| percentile(v, p) as f64 / 1e3;
    let _ = writeln!(
        out,
        "\nPoll cost in node B with nothing new ({} calls each, A idle): one `begin()` \
         median {:.0} µs, p99 {:.0} µs; `begin()` + reading the element median {:.0} µs, \
         p99 {:.0} µs. Store calls per `begin()`: {}.\n",
        r.begin_ns.len(),
        us(&r.begin_ns, 0.5),
        us(&r.begin_ns, 0.99),
        us(&r.read_ns, 0.5),
        us(&r.read_ns, 0.99),
        r.calls
    );
    let commits: Vec<f64> = r.modes[0]
        .commit
        .iter()
        .chain(&r.modes[1].commit)
        .copied()
        .collect();
    let _ = writeln!(
        out,
        "A's one-element commit, median {:.2} ms (p99 {:.2}): the store's `commit` (one 2 \
         MiB body, index rows, log, NOTIFY, COMMIT) {:.2} ms, the rest \
         (moving to the new snapshot: head, lease, log, invalidation) \
         {:.2} ms; store calls of one commit: {}. For reference on a plain client, medians of \
         {} each: `UPDATE` of one small row + COMMIT {:.2} ms (p99 {:.2}); `INSERT` of one \
         2 MiB `bytea` row + COMMIT {:.2} ms (p99 {:.2}).\n",
        median(&commits),
        percentile(&commits, 0.99),
        median(&r.store_commit),
        median(&commits) - median(&r.store_commit),
        r.commit_calls,
        r.raw_update.len(),
        median(&r.raw_update),
        percentile(&r.raw_update, 0.99),
        median(&r.raw_insert),
        percentile(&r.raw_insert, 0.99),
    );
}

/// The load averages (1, 5, 15 minutes) from `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(", ")
}

fn report(
    args: &Args,
    base: &str,
    load_before: &str,
    scan: Option<&ScanResults>,
    commit: Option<&CommitResults>,
    inval: Option<&InvalResults>,
) -> BoxResult<String> {
    let mut out = String::new();
    let _ = writeln!(out, "# PostgreSQL benchmark results\n");
    let _ = writeln!(out, "{}, machine:\n", utc_now());
    let lines = std::iter::once(outcore_memory()).chain(machine(None));
    for l in lines.chain(server_info(base)?) {
        let _ = writeln!(out, "* {l}");
    }
    let _ = writeln!(
        out,
        "* load average (1, 5, 15 min) before the run: {load_before}; after: {} (other jobs \
         share the CPUs)",
        loadavg()
    );
    let _ = writeln!(
        out,
        "\nProduced by `cargo run --release -p outcore-bench-postgres -- --gib {} --commit-mib \
         {} --rounds {} --parallel {} --trials {} --poll-iters {}` against a server started by \
         `scripts/pg-test-server.sh`. Medians of {} rounds; the variants alternate within \
         each round, one untimed warm-up round first. GB/s and MB/s are decimal. Client and \
         server share the machine's CPUs.\n",
        args.gib,
        args.commit_mib,
        args.rounds,
        args.parallel,
        args.trials,
        args.poll_iters,
        args.rounds
    );
    if let Some(s) = scan {
        report_scan(&mut out, args, s);
    }
    if let Some(c) = commit {
        report_commit(&mut out, c);
    }
    if let Some(i) = inval {
        report_inval(&mut out, i);
    }
    let _ = writeln!(out, "## Targets\n");
    if let Some(s) = scan {
        let o = med_s(&s.outcore.times);
        let single = med_s(&s.raw.times) / o;
        let par = med_s(&s.parallel.times) / o;
        let _ = writeln!(
            out,
            "* scan: outcore / raw SELECT over 1 connection = {single:.2}× (target ≥ \
             {SCAN_TARGET}×) — {}",
            verdict(single, SCAN_TARGET)
        );
        let _ = writeln!(
            out,
            "* scan, informational: outcore / raw SELECT over {} connections = {par:.2}×",
            args.parallel
        );
    }
    if let Some(c) = commit {
        let total = med_s(&c.raw.total) / med_s(&c.outcore.total);
        let alone = med_s(&c.raw.write) / med_s(&c.outcore.write);
        let _ = writeln!(
            out,
            "* commit (no target set): outcore / raw INSERT = {total:.2}× (rewrite + commit), \
             {alone:.2}× (commit alone)"
        );
    }
    if let Some(i) = inval {
        let _ = writeln!(
            out,
            "* invalidation (no target set): from the commit being visible to node B reading \
             the new value, median {:.2} ms polling (p99 {:.2}), {:.2} ms on NOTIFY (p99 \
             {:.2}), against {:.2} ms (p99 {:.2}) for a raw NOTIFY → LISTEN",
            median(&i.modes[0].from_visible),
            percentile(&i.modes[0].from_visible, 0.99),
            median(&i.modes[1].from_visible),
            percentile(&i.modes[1].from_visible, 0.99),
            median(&i.modes[2].from_visible),
            percentile(&i.modes[2].from_visible, 0.99)
        );
    }
    Ok(out)
}

fn main() -> BoxResult<()> {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("--node-b") {
        argv.next();
        let url = argv.next().ok_or("--node-b needs a url")?;
        return node_b(&url).inspect_err(|e| {
            println!("error {e}");
        });
    }
    let args = parse_args(argv)?;
    let load_before = loadavg();
    let (base, _) = PgStorage::split_schema(&args.url);
    let prefix = format!("outcore_bench_{}", std::process::id());
    let mut schemas = Schemas {
        base_url: base.clone(),
        names: Vec::new(),
    };
    let want = |p: &str| args.parts.iter().any(|x| x == p);
    let mut scan = None;
    let mut commit = None;
    let mut inval = None;
    for part in ["scan", "commit", "inval"] {
        if !want(part) {
            continue;
        }
        let schema = format!("{prefix}_{part}");
        schemas.names.push(schema.clone());
        match part {
            "scan" => scan = Some(scan_part(&args, &base, &schema)?),
            "commit" => commit = Some(commit_part(&args, &base, &schema)?),
            _ => inval = Some(inval_part(&args, &base, &schema)?),
        }
        // Free the part's data (and the server's disk) before the next part.
        let mut c = Client::connect(&base, NoTls)?;
        c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))?;
        schemas.names.retain(|n| *n != schema);
    }
    schemas.drop_all()?;
    let text = report(
        &args,
        &base,
        &load_before,
        scan.as_ref(),
        commit.as_ref(),
        inval.as_ref(),
    )?;
    println!("\n{text}");
    if scan.is_some() && commit.is_some() && inval.is_some() {
        let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
        std::fs::write(&results, &text)?;
        println!("written to {}", results.display());
    }
    Ok(())
}
