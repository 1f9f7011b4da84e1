//! Memory-layer benchmark: reading and committing outcore arrays against a raw file, side by
//! side in one run.
//!
//! What it measures (all variants take turns within each round; medians are reported):
//!
//! 1. **Full scan** of a `--gib` GiB (default 4) `f64` array. outcore: `Database::open(dir)`,
//!    `conn.create::<f64>("a", &[n], Order::C)`, filled with non-zero data through `slice_mut`
//!    in 64 MiB transactions (one `commit` each), then read through `a.view::<f64>()`.
//!    Baseline: a raw file with the same bytes, `mmap(PROT_READ, MAP_PRIVATE)` whole. Both
//!    sums run the very same function (ndarray `ArrayView1::sum` over the contiguous view).
//!    Both are measured twice:
//!    * **warm mapping**: one mapping (one connection) reused; one untimed pass first, so the
//!      page cache holds the data and the page tables are populated. This is pure read speed.
//!    * **first touch**: a fresh mapping every round (baseline: open + `mmap` + sum + `munmap`;
//!      outcore: `db.connect()` + `conn.array("a")` + `view` + sum + drop of the connection).
//!      The data is still in the page cache, but every page is faulted into new page tables.
//! 2. **Commit** of a fully rewritten `--commit-gib` GiB (default 1) `f64` array. outcore:
//!    every element `+= 1.0` through `view_mut`, then `conn.commit()`; throughput is array
//!    bytes / (rewrite + commit), and commit alone is reported too. Baselines, each with its
//!    own copy of the data, rewritten with the same `+= 1.0` function:
//!    * **pwrite-append** (the reference for the ratios): a heap buffer, written with `pwrite`
//!      in 2 MiB chunks at the end of one growing file, plus one `fdatasync`. Like outcore's
//!      append-only segments it allocates new disk blocks every round.
//!    * **pwrite-overwrite**: the same, over the previous version (no block allocation).
//!    * **mmap-shared**: a raw file `mmap(MAP_SHARED)`, rewritten in place, plus `fdatasync`.
//!
//!    One untimed warm-up round of every variant comes first, then `--rounds` rounds as the
//!    machine gives memory, then (unless `--prewarm-gib 0`) the same rounds again with
//!    `--prewarm-gib` GiB (default 4) of anonymous memory touched and freed right before every
//!    variant's turn. That second table exists because on a VM with free page reporting
//!    (e.g. Firecracker's `page_reporting`), memory freed a few seconds ago has gone back to
//!    the host, and its first touch costs a host fault per page: allocation-heavy code pays
//!    several seconds per GiB that bare metal would not.
//!
//! 3. **Fault-filled scan** of a `--fault-gib` GiB (default 4) `f64` array in an lz4-compressed
//!    in-memory store (`mem:`) with a 1 GiB RAM budget: its blocks cannot be mapped, so they
//!    are fetched and decoded on first touch through userfaultfd. Against an in-RAM `Vec<f64>`
//!    sum and the store's own fetch + decode (`storage.load` block by block); plus the fault
//!    latency per 2 MiB block and the peak memory during the scan. Details in `fault.rs`.
//!
//! `--parts` picks the parts (default all); RESULTS.md keeps the sections of the other parts
//! from its previous version, with the run they came from.
//!
//! Every pass is verified: the data are small integers (`i % 1009 + 1`, plus 1 per rewrite),
//! so every f64 sum is exact and must equal the closed-form expectation, and one element per
//! 2 MiB block (at a varying offset) is checked too. At the end a fresh connection re-reads
//! the committed array. The benchmark fails rather than report a pass that read garbage.
//!
//! Throughputs are decimal (GB/s = 10^9 B/s). The tables are printed and written to
//! `bench/vm/RESULTS.md` with the date and the machine (nproc, `uname -r`, CPU model).
//! Everything is written into a fresh directory under `--dir` (default `/var/tmp`), removed at
//! the end. It needs the larger of 2 × `--gib` and (4 × rounds + 5) × `--commit-gib` GiB of
//! disk, and enough RAM to keep 2 × `--gib` GiB in the page cache plus about 6 ×
//! `--commit-gib` GiB of buffers and private pages. The fault-filled part uses no disk and
//! about `--fault-gib` + 1.1 GiB of RAM (the in-RAM baseline plus the budget).
//!
//! Run it with:
//!
//! ```text
//! cargo run --release -p outcore-bench-vm -- [--gib N]
//! # all options: --parts scan,commit,fault|all (all)  --gib N (4)  --commit-gib N (1)
//! #              --fault-gib N (4)  --rounds N (7)  --dir PATH (/var/tmp)
//! #              --prewarm-gib N (4; 0 skips the second commit table)
//! ```

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ndarray::{s, ArrayView1, ArrayViewMut1};
use outcore::array::Order;
use outcore::db::{BigArray, Connection, Database};
use outcore_bench_common::{
    add_one, as_bytes, elems_for, expected_sum, fill, machine, median, secs, sum1, utc_now, value,
    verdict, verify, view1, BoxResult, BLOCK_ELEMS,
};

mod fault;

/// Targets of the issue: scan ≥ 0.9× the raw mmap, commit ≥ 0.7× the raw pwrite.
const SCAN_TARGET: f64 = 0.9;
const COMMIT_TARGET: f64 = 0.7;

const USAGE: &str =
    "usage: outcore-bench-vm [--parts LIST] [--gib N] [--commit-gib N] [--fault-gib N]
                         [--rounds N] [--dir PATH] [--prewarm-gib N]

  --parts LIST     comma-separated parts to run: scan, commit, fault, or all (default all);
                   RESULTS.md keeps the sections of the parts not run from its previous version
  --gib N          size of the scanned array in GiB (default 4; fractions allowed)
  --commit-gib N   size of the rewritten-and-committed array in GiB (default 1)
  --rounds N       timed rounds per measurement, median reported (default 7, at least 3)
  --dir PATH       where to create the temporary benchmark directory (default /var/tmp)
  --prewarm-gib N  the commit part is measured a second time, with N GiB of anonymous memory
                   touched and freed before every variant's turn (default 4; 0: skip)
  --fault-gib N    size of the fault-filled (lz4, mem:) array in GiB (default 4)";

/// Which parts run.
#[derive(Clone, Copy)]
struct Parts {
    scan: bool,
    commit: bool,
    fault: bool,
}

impl Parts {
    fn parse(list: &str) -> BoxResult<Self> {
        let mut p = Parts {
            scan: false,
            commit: false,
            fault: false,
        };
        for name in list.split(',').map(str::trim) {
            match name {
                "scan" => p.scan = true,
                "commit" => p.commit = true,
                "fault" => p.fault = true,
                "all" => {
                    p = Parts {
                        scan: true,
                        commit: true,
                        fault: true,
                    }
                }
                other => return Err(format!("unknown part {other:?}\n\n{USAGE}").into()),
            }
        }
        Ok(p)
    }

    fn names(&self) -> String {
        let mut v = Vec::new();
        for (on, name) in [
            (self.scan, "scan"),
            (self.commit, "commit"),
            (self.fault, "fault"),
        ] {
            if on {
                v.push(name);
            }
        }
        v.join(",")
    }
}

struct Args {
    parts: Parts,
    gib: f64,
    commit_gib: f64,
    rounds: usize,
    dir: PathBuf,
    prewarm_gib: f64,
    fault_gib: f64,
}

fn parse_args() -> BoxResult<Args> {
    let mut args = Args {
        parts: Parts::parse("all")?,
        gib: 4.0,
        commit_gib: 1.0,
        rounds: 7,
        dir: PathBuf::from("/var/tmp"),
        prewarm_gib: 4.0,
        fault_gib: 4.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match a.as_str() {
            "--parts" => args.parts = Parts::parse(&value("--parts")?)?,
            "--gib" => args.gib = value("--gib")?.parse()?,
            "--fault-gib" => args.fault_gib = value("--fault-gib")?.parse()?,
            "--commit-gib" => args.commit_gib = value("--commit-gib")?.parse()?,
            "--rounds" => args.rounds = value("--rounds")?.parse()?,
            "--dir" => args.dir = PathBuf::from(value("--dir")?),
            "--prewarm-gib" => args.prewarm_gib = value("--prewarm-gib")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }
    if args.rounds < 3 {
        return Err(format!("--rounds must be at least 3\n\n{USAGE}").into());
    }
    if !(args.prewarm_gib.is_finite() && args.prewarm_gib >= 0.0) {
        return Err(format!("--prewarm-gib must be 0 or more\n\n{USAGE}").into());
    }
    if args.parts.names().is_empty() {
        return Err(format!("--parts names no part\n\n{USAGE}").into());
    }
    for (name, gib) in [
        ("--gib", args.gib),
        ("--commit-gib", args.commit_gib),
        ("--fault-gib", args.fault_gib),
    ] {
        if !(gib.is_finite() && gib > 0.0) {
            return Err(format!("{name} must be a positive number\n\n{USAGE}").into());
        }
    }
    Ok(args)
}

/// This process's resource use so far: minor page faults and CPU time (user + system).
#[derive(Clone, Copy)]
struct Usage {
    faults: u64,
    cpu: Duration,
}

fn usage() -> Usage {
    // SAFETY: getrusage only writes the struct we pass; all-zero is a valid `rusage`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, writable `rusage`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Usage {
            faults: 0,
            cpu: Duration::ZERO,
        };
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Usage {
        faults: ru.ru_minflt as u64,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
    }
}

fn minor_faults() -> u64 {
    usage().faults
}

/// A whole-file mapping: `PROT_READ, MAP_PRIVATE` or `PROT_READ|PROT_WRITE, MAP_SHARED`.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

impl Mapping {
    fn new(file: &File, len: usize, shared_writable: bool) -> BoxResult<Self> {
        Self::at(file, 0, len, shared_writable)
    }

    /// Maps `len` bytes at `offset` (a multiple of the page size).
    fn at(file: &File, offset: u64, len: usize, shared_writable: bool) -> BoxResult<Self> {
        let (prot, flags) = if shared_writable {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
        } else {
            (libc::PROT_READ, libc::MAP_PRIVATE)
        };
        let offset = libc::off_t::try_from(offset)?;
        // SAFETY: a fresh mapping at a kernel-chosen address of a file we own; it replaces
        // nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags,
                file.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()).into());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).ok_or("mmap returned null")?,
            len,
            writable: shared_writable,
        })
    }

    fn view(&self) -> ArrayView1<'_, f64> {
        // SAFETY: `len` bytes are mapped readable at `ptr` (page-aligned, so f64-aligned) for
        // as long as `self` lives; the file is never truncated while mapped, and nothing
        // writes it except through `view_mut`, which needs `&mut self`.
        let s =
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<f64>(), self.len / 8) };
        ArrayView1::from(s)
    }

    fn view_mut(&mut self) -> ArrayViewMut1<'_, f64> {
        assert!(self.writable, "view_mut of a read-only mapping");
        // SAFETY: as in `view`; the mapping is writable (checked above: MAP_SHARED,
        // PROT_WRITE) and `&mut self` makes this the only view.
        let s = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<f64>(), self.len / 8)
        };
        ArrayViewMut1::from(s)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; every view borrowed `self`, so none outlives it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Writes `n` elements of data (after `plus` rewrites) to a new file, durably.
fn write_raw_file(path: &Path, n: u64, plus: u64) -> BoxResult<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut buf = vec![0f64; BLOCK_ELEMS as usize];
    let mut at = 0;
    while at < n {
        let len = BLOCK_ELEMS.min(n - at);
        for (j, x) in buf[..len as usize].iter_mut().enumerate() {
            *x = value(at + j as u64, plus);
        }
        file.write_all_at(as_bytes(&buf[..len as usize]), at * 8)?;
        at += len;
    }
    file.sync_data()?;
    Ok(file)
}

/// The shortest of `xs`.
fn best(xs: &[Duration]) -> Duration {
    xs.iter().copied().min().unwrap_or_default()
}

/// One scan variant's timed passes.
#[derive(Default)]
struct Scan {
    times: Vec<Duration>,
    faults: Vec<u64>,
    /// First touch only: from the start to the view being ready, and from the end of the
    /// sum to the end (unmapping, closing).
    setup: Vec<Duration>,
    teardown: Vec<Duration>,
}

/// Points inside a timed pass: view ready, sum done.
#[derive(Default)]
struct Marks {
    ready: Option<Instant>,
    summed: Option<Instant>,
}

impl Scan {
    fn time(&mut self, f: impl FnOnce(&mut Marks) -> BoxResult<()>) -> BoxResult<()> {
        let mut marks = Marks::default();
        let f0 = minor_faults();
        let t0 = Instant::now();
        f(&mut marks)?;
        let t1 = Instant::now();
        self.times.push(t1 - t0);
        self.faults.push(minor_faults() - f0);
        if let (Some(ready), Some(summed)) = (marks.ready, marks.summed) {
            self.setup.push(ready - t0);
            self.teardown.push(t1 - summed);
        }
        Ok(())
    }
}

struct ScanResults {
    bytes: u64,
    warm_raw: Scan,
    warm_outcore: Scan,
    first_raw: Scan,
    first_outcore: Scan,
    fill: Duration,
}

fn scan_part(root: &Path, gib: f64, rounds: usize) -> BoxResult<ScanResults> {
    let n = elems_for(gib * f64::from(1u32 << 30));
    let bytes = n * 8;
    println!(
        "scan: {n} f64 ({:.2} GiB)",
        bytes as f64 / f64::from(1u32 << 30)
    );
    let db_path = root.join("scan.outcore");
    let db = Database::open(db_path.to_str().ok_or("non-UTF-8 path")?)?;
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
    let raw_path = root.join("scan.raw");
    drop(write_raw_file(&raw_path, n, 0)?);

    // Warm mapping: one mapping each, one untimed pass, then alternating timed passes.
    let raw_file = File::open(&raw_path)?;
    let raw_map = Mapping::new(&raw_file, bytes as usize, false)?;
    let conn = db.connect()?;
    let a = conn.array("a")?;
    let s = sum1(raw_map.view());
    verify(raw_map.view(), s, 0, "raw warm-up")?;
    let s = sum1(view1(&a)?.view());
    verify(view1(&a)?.view(), s, 0, "outcore warm-up")?;
    let (mut warm_raw, mut warm_outcore) = (Scan::default(), Scan::default());
    let raw_pass = |scan: &mut Scan| {
        let mut sum = 0.0;
        scan.time(|_| {
            sum = std::hint::black_box(sum1(raw_map.view()));
            Ok(())
        })?;
        verify(raw_map.view(), sum, 0, "raw warm pass")
    };
    let outcore_pass = |scan: &mut Scan| -> BoxResult<()> {
        let mut sum = 0.0;
        scan.time(|_| {
            sum = std::hint::black_box(sum1(view1(&a)?.view()));
            Ok(())
        })?;
        verify(view1(&a)?.view(), sum, 0, "outcore warm pass")
    };
    for r in 0..rounds {
        if r % 2 == 0 {
            raw_pass(&mut warm_raw)?;
            outcore_pass(&mut warm_outcore)?;
        } else {
            outcore_pass(&mut warm_outcore)?;
            raw_pass(&mut warm_raw)?;
        }
    }
    drop(a);
    drop(conn);
    drop(raw_map);
    drop(raw_file);

    // First touch: a fresh mapping (connection) per pass; the page cache stays warm.
    let (mut first_raw, mut first_outcore) = (Scan::default(), Scan::default());
    let raw_pass = |scan: &mut Scan| -> BoxResult<()> {
        let mut sum = 0.0;
        scan.time(|marks| {
            let file = File::open(&raw_path)?;
            let map = Mapping::new(&file, bytes as usize, false)?;
            let v = map.view();
            marks.ready = Some(Instant::now());
            sum = std::hint::black_box(sum1(v));
            marks.summed = Some(Instant::now());
            Ok(())
        })?;
        let file = File::open(&raw_path)?;
        verify(
            Mapping::new(&file, bytes as usize, false)?.view(),
            sum,
            0,
            "raw first-touch pass",
        )
    };
    let outcore_pass = |scan: &mut Scan| -> BoxResult<()> {
        let mut sum = 0.0;
        scan.time(|marks| {
            let conn = db.connect()?;
            let a = conn.array("a")?;
            let v = view1(&a)?;
            marks.ready = Some(Instant::now());
            sum = std::hint::black_box(sum1(v.view()));
            marks.summed = Some(Instant::now());
            Ok(())
        })?;
        let conn = db.connect()?;
        let a = conn.array("a")?;
        let v = view1(&a)?;
        verify(v.view(), sum, 0, "outcore first-touch pass")
    };
    for r in 0..rounds {
        if r % 2 == 0 {
            raw_pass(&mut first_raw)?;
            outcore_pass(&mut first_outcore)?;
        } else {
            outcore_pass(&mut first_outcore)?;
            raw_pass(&mut first_raw)?;
        }
    }
    Ok(ScanResults {
        bytes,
        warm_raw,
        warm_outcore,
        first_raw,
        first_outcore,
        fill: fill_time,
    })
}

/// One commit variant's timed rounds: rewrite time and write (commit) time.
#[derive(Default)]
struct Commit {
    rewrite: Vec<Duration>,
    write: Vec<Duration>,
    total: Vec<Duration>,
    rewrite_faults: Vec<u64>,
    /// CPU time (user + system) of the process during the write / commit.
    write_cpu: Vec<Duration>,
    /// outcore only: the dirty-page scan alone (`Connection::is_dirty`), untimed otherwise.
    scan: Vec<Duration>,
}

impl Commit {
    /// Records one round; `u0`, `u1`: usage before and after the rewrite, `u2`, `u3`: before
    /// and after the write.
    fn push(&mut self, rewrite: Duration, write: Duration, u: [Usage; 4]) {
        self.write_cpu.push(u[3].cpu - u[2].cpu);
        let faults = u[1].faults - u[0].faults;
        self.rewrite.push(rewrite);
        self.write.push(write);
        self.total.push(rewrite + write);
        self.rewrite_faults.push(faults);
    }
}

/// The commit variants, in report order.
const PWRITE_APPEND: usize = 0;
const PWRITE_OVERWRITE: usize = 1;
const MMAP_SHARED: usize = 2;
const OUTCORE: usize = 3;
const VARIANTS: usize = 4;

struct CommitResults {
    bytes: u64,
    /// The rounds as the machine gives memory.
    plain: [Commit; VARIANTS],
    /// The rounds with memory pre-touched before each variant, if `--prewarm-gib` > 0.
    prewarmed: Option<[Commit; VARIANTS]>,
    /// Times to touch the `--prewarm-gib` GiB of fresh memory.
    prewarm_times: Vec<Duration>,
    prewarm_bytes: u64,
}

/// Touches `bytes` of fresh anonymous memory (one write per page), then frees it; returns
/// the time the touching took. On a VM with free page reporting, memory freed a while ago
/// has gone back to the host and the first touch of it is slow; right after this, the
/// kernel's free lists hold pages the host backs again.
fn prewarm(bytes: u64) -> Duration {
    if bytes == 0 {
        return Duration::ZERO;
    }
    let t0 = Instant::now();
    let mut v = vec![0u8; bytes as usize];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::hint::black_box(&mut v);
    t0.elapsed()
}

/// A `pwrite` baseline: a heap buffer `+= 1`, then written in 2 MiB chunks to `file` (at its
/// end if `append`, like outcore's append-only segments, else over the previous version),
/// then one `fdatasync`.
struct PwriteVariant {
    what: &'static str,
    buf: Vec<f64>,
    plus: u64,
    file: File,
    append: bool,
    tail: u64,
}

impl PwriteVariant {
    fn round(&mut self, m: &mut Commit) -> BoxResult<()> {
        let u0 = usage();
        let t0 = Instant::now();
        add_one(ArrayViewMut1::from(&mut self.buf[..]));
        let rewrite = t0.elapsed();
        let u1 = usage();
        self.plus += 1;
        let at = if self.append { self.tail } else { 0 };
        let u2 = usage();
        let t1 = Instant::now();
        for (i, chunk) in self.buf.chunks(BLOCK_ELEMS as usize).enumerate() {
            self.file
                .write_all_at(as_bytes(chunk), at + i as u64 * BLOCK_ELEMS * 8)?;
        }
        self.file.sync_data()?;
        let write = t1.elapsed();
        m.push(rewrite, write, [u0, u1, u2, usage()]);
        let len = self.buf.len() * 8;
        if self.append {
            self.tail += len as u64;
        }
        // Verify the buffer and what the file holds now.
        let buf = ArrayView1::from(&self.buf[..]);
        verify(buf.view(), sum1(buf.view()), self.plus, self.what)?;
        let map = Mapping::at(&self.file, at, len, false)?;
        verify(map.view(), sum1(map.view()), self.plus, self.what)
    }
}

/// The `mmap(MAP_SHARED)` baseline: `+= 1` in place, then `fdatasync`.
struct MmapVariant {
    map: Mapping,
    file: File,
    plus: u64,
}

impl MmapVariant {
    fn round(&mut self, m: &mut Commit) -> BoxResult<()> {
        let u0 = usage();
        let t0 = Instant::now();
        add_one(self.map.view_mut());
        let rewrite = t0.elapsed();
        let u1 = usage();
        let u2 = usage();
        let t1 = Instant::now();
        self.file.sync_data()?;
        let write = t1.elapsed();
        m.push(rewrite, write, [u0, u1, u2, usage()]);
        self.plus += 1;
        let v = self.map.view();
        verify(v.view(), sum1(v), self.plus, "mmap-shared file")
    }
}

/// outcore: `view_mut` `+= 1`, then `commit`.
struct OutcoreVariant {
    conn: Connection,
    b: BigArray,
    plus: u64,
}

impl OutcoreVariant {
    fn round(&mut self, m: &mut Commit) -> BoxResult<()> {
        let u0 = usage();
        let t0 = Instant::now();
        add_one(self.b.slice_mut::<f64, _>(s![..])?.view_mut());
        let rewrite = t0.elapsed();
        let u1 = usage();
        // Diagnostic, outside the timed spans: the cost of finding the written pages.
        let ts = Instant::now();
        if !self.conn.is_dirty()? {
            return Err("outcore: the rewrite left the array clean".into());
        }
        m.scan.push(ts.elapsed());
        let u2 = usage();
        let t1 = Instant::now();
        self.conn.commit()?;
        let write = t1.elapsed();
        m.push(rewrite, write, [u0, u1, u2, usage()]);
        self.plus += 1;
        if self.conn.is_dirty()? {
            return Err("outcore: dirty after commit".into());
        }
        let v = view1(&self.b)?;
        verify(
            v.view(),
            sum1(v.view()),
            self.plus,
            "outcore committed array",
        )
    }
}

fn commit_part(root: &Path, gib: f64, rounds: usize, prewarm_gib: f64) -> BoxResult<CommitResults> {
    let n = elems_for(gib * f64::from(1u32 << 30));
    let bytes = n * 8;
    println!(
        "commit: {n} f64 ({:.2} GiB)",
        bytes as f64 / f64::from(1u32 << 30)
    );
    let db_path = root.join("commit.outcore");
    let db = Database::open(db_path.to_str().ok_or("non-UTF-8 path")?)?;
    let conn = db.connect()?;
    let mut b = conn.create::<f64>("b", &[n], Order::C)?;
    fill(&conn, &mut b, n)?;
    let mut outcore = OutcoreVariant { conn, b, plus: 0 };
    let map_file = write_raw_file(&root.join("commit-mmap.raw"), n, 0)?;
    let mut mmap = MmapVariant {
        map: Mapping::new(&map_file, bytes as usize, true)?,
        file: map_file,
        plus: 0,
    };
    let mut append = PwriteVariant {
        what: "pwrite-append file",
        buf: (0..n).map(|i| value(i, 0)).collect(),
        plus: 0,
        file: OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(root.join("commit-append.raw"))?,
        append: true,
        tail: 0,
    };
    let mut overwrite = PwriteVariant {
        what: "pwrite-overwrite file",
        buf: (0..n).map(|i| value(i, 0)).collect(),
        plus: 0,
        file: write_raw_file(&root.join("commit-overwrite.raw"), n, 0)?,
        append: false,
        tail: 0,
    };
    // Round 0 is the untimed warm-up; the order rotates every round. Then the same rounds
    // again with memory pre-touched before each variant's turn, if asked.
    let prewarm_bytes = (prewarm_gib * f64::from(1u32 << 30)) as u64 / 4096 * 4096;
    let mut warmup: [Commit; VARIANTS] = Default::default();
    let mut plain: [Commit; VARIANTS] = Default::default();
    let mut prewarmed: [Commit; VARIANTS] = Default::default();
    let mut prewarm_times = Vec::new();
    let phases: &[bool] = if prewarm_bytes > 0 {
        &[false, true]
    } else {
        &[false]
    };
    for &pre in phases {
        if pre {
            println!(
                "  again, touching {:.1} GiB of fresh memory before each variant:",
                prewarm_gib
            );
        }
        for r in usize::from(pre)..=rounds {
            let m = match (r, pre) {
                (0, _) => &mut warmup,
                (_, false) => &mut plain,
                (_, true) => &mut prewarmed,
            };
            for k in 0..VARIANTS {
                if pre {
                    prewarm_times.push(prewarm(prewarm_bytes));
                }
                match (r + k) % VARIANTS {
                    PWRITE_APPEND => append.round(&mut m[PWRITE_APPEND])?,
                    PWRITE_OVERWRITE => overwrite.round(&mut m[PWRITE_OVERWRITE])?,
                    MMAP_SHARED => mmap.round(&mut m[MMAP_SHARED])?,
                    _ => outcore.round(&mut m[OUTCORE])?,
                }
            }
            let last = |v: &[Duration]| v.last().map_or(0.0, |d| secs(*d));
            println!(
                "  round {r}{}: outcore rewrite {:.3} s + commit {:.3} s (CPU {:.3} s); pwrite \
                 append {:.3} s, overwrite {:.3} s; mmap rewrite {:.3} s + fdatasync {:.3} s",
                if r == 0 { " (warm-up)" } else { "" },
                last(&m[OUTCORE].rewrite),
                last(&m[OUTCORE].write),
                last(&m[OUTCORE].write_cpu),
                last(&m[PWRITE_APPEND].write),
                last(&m[PWRITE_OVERWRITE].write),
                last(&m[MMAP_SHARED].rewrite),
                last(&m[MMAP_SHARED].write),
            );
        }
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
        plain,
        prewarmed: (prewarm_bytes > 0).then_some(prewarmed),
        prewarm_times,
        prewarm_bytes,
    })
}

/// Removes the benchmark directory when dropped, also on error.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("warning: could not remove {}: {e}", self.0.display());
        }
    }
}

/// The command line that reproduces this run.
fn command(args: &Args) -> String {
    format!(
        "cargo run --release -p outcore-bench-vm -- --parts {} --gib {} --commit-gib {} \
         --rounds {} --prewarm-gib {} --fault-gib {}",
        args.parts.names(),
        args.gib,
        args.commit_gib,
        args.rounds,
        args.prewarm_gib,
        args.fault_gib
    )
}

/// The sections of a previous RESULTS.md, to keep those of parts not run now.
#[derive(Default)]
struct Previous {
    /// Section text by number ('1', '2', '3'), heading included.
    sections: std::collections::HashMap<char, String>,
    /// Bullets of the targets list by section number.
    targets: std::collections::HashMap<char, String>,
    /// Where each section came from: "DATE, `COMMAND`".
    provenance: std::collections::HashMap<char, String>,
}

const SECTION_NOTE: &str = "* section ";

impl Previous {
    fn parse(text: &str) -> Self {
        let mut p = Previous::default();
        let (mut date, mut cmd) = (String::new(), String::new());
        let mut section: Option<char> = None;
        let mut bullet: Option<char> = None;
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                section = if h.starts_with("Targets") {
                    Some('T')
                } else {
                    h.chars().next().filter(char::is_ascii_digit)
                };
                if section == Some('T') {
                    continue;
                }
            }
            match section {
                None => {
                    if let Some(d) = line.strip_suffix(", machine:") {
                        date = d.to_string();
                    } else if let Some(rest) = line.strip_prefix("Produced by `") {
                        cmd = rest.split('`').next().unwrap_or_default().to_string();
                    } else if let Some(rest) = line.strip_prefix(SECTION_NOTE) {
                        if let (Some(k), Some((_, from))) =
                            (rest.chars().next(), rest.split_once(": run of "))
                        {
                            p.provenance.insert(k, from.to_string());
                        }
                    }
                }
                Some('T') => {
                    if line.starts_with("* ") {
                        bullet = if line.starts_with("* scan") {
                            Some('1')
                        } else if line.starts_with("* commit") {
                            Some('2')
                        } else if line.starts_with("* fault") || line.starts_with("* peak") {
                            Some('3')
                        } else {
                            None
                        };
                    }
                    if let Some(b) = bullet.filter(|_| !line.trim().is_empty()) {
                        let t = p.targets.entry(b).or_default();
                        t.push_str(line);
                        t.push('\n');
                    }
                }
                Some(k) => {
                    let t = p.sections.entry(k).or_default();
                    t.push_str(line);
                    t.push('\n');
                }
            }
        }
        for k in p.sections.keys() {
            if !p.provenance.contains_key(k) {
                p.provenance.insert(*k, format!("{date}, `{cmd}`"));
            }
        }
        p
    }
}

/// The whole RESULTS.md: the parts run now, plus the sections of `previous` for the others.
fn report(
    args: &Args,
    scan: Option<&ScanResults>,
    commit: Option<&CommitResults>,
    fault: Option<&fault::FaultResults>,
    previous: &Previous,
) -> String {
    let parts: [(char, Option<(String, String)>); 3] = [
        ('1', scan.map(scan_section)),
        ('2', commit.map(commit_section)),
        ('3', fault.map(fault::fault_section)),
    ];
    let mut out = String::new();
    let _ = writeln!(out, "# VM benchmark results\n");
    let _ = writeln!(out, "{}, machine:\n", utc_now());
    for l in machine(Some(&args.dir)) {
        let _ = writeln!(out, "* {l}");
    }
    let _ = writeln!(
        out,
        "\nProduced by `{}`. Medians of {} rounds; the variants alternate within each round. \
         GB/s are decimal (10^9 B/s).\n",
        command(args),
        args.rounds
    );
    let kept: Vec<char> = parts
        .iter()
        .filter(|(k, p)| p.is_none() && previous.sections.contains_key(k))
        .map(|(k, _)| *k)
        .collect();
    if !kept.is_empty() {
        let _ = writeln!(
            out,
            "Sections not re-run by this command, kept from the previous RESULTS.md:\n"
        );
        for k in &kept {
            let _ = writeln!(
                out,
                "{SECTION_NOTE}{k}: run of {}",
                previous.provenance.get(k).map_or("?", String::as_str)
            );
        }
        let _ = writeln!(out);
    }
    let mut targets = String::new();
    for (k, part) in &parts {
        match part {
            Some((text, t)) => {
                out.push_str(text);
                targets.push_str(t);
            }
            None => {
                if let Some(text) = previous.sections.get(k) {
                    out.push_str(text);
                    targets.push_str(previous.targets.get(k).map_or("", String::as_str));
                }
            }
        }
    }
    let _ = writeln!(out, "## Targets\n");
    out.push_str(&targets);
    out
}

/// Section 1 and its lines for the targets list.
fn scan_section(scan: &ScanResults) -> (String, String) {
    let gbps = |bytes: u64, d: Duration| bytes as f64 / secs(d) / 1e9;
    let mut out = String::new();
    let mut targets = String::new();
    let sb = scan.bytes;
    let _ = writeln!(
        out,
        "## 1. Full scan: sum of a {:.2} GiB f64 array\n",
        sb as f64 / f64::from(1u32 << 30)
    );
    let _ = writeln!(
        out,
        "Both sides run the same `ArrayView1::sum`; the page cache holds the data in both \
         modes.\n\n\
         * **warm mapping**: one mapping / connection reused, one untimed pass before; no page \
         faults: pure read speed.\n\
         * **first touch**: a fresh `mmap` / fresh connection per pass (open, map, sum, unmap / \
         drop included); every page is faulted into new page tables.\n"
    );
    let _ = writeln!(
        out,
        "| mode | variant | median s | GB/s | × baseline | minor faults / pass |\n\
         |---|---|---:|---:|---:|---:|"
    );
    let rows = [
        (
            "warm mapping",
            "raw file, mmap + sum (baseline)",
            &scan.warm_raw,
            &scan.warm_raw,
        ),
        (
            "warm mapping",
            "outcore `a.view()` + sum",
            &scan.warm_outcore,
            &scan.warm_raw,
        ),
        (
            "first touch",
            "raw file, mmap + sum (baseline)",
            &scan.first_raw,
            &scan.first_raw,
        ),
        (
            "first touch",
            "outcore `connect` + `view()` + sum",
            &scan.first_outcore,
            &scan.first_raw,
        ),
    ];
    for (mode, name, m, base) in rows {
        let t = median(m.times.clone());
        let tb = median(base.times.clone());
        let _ = writeln!(
            out,
            "| {mode} | {name} | {:.3} | {:.2} | {:.2} | {} |",
            secs(t),
            gbps(sb, t),
            secs(tb) / secs(t),
            median(m.faults.clone())
        );
    }
    let warm_ratio =
        secs(median(scan.warm_raw.times.clone())) / secs(median(scan.warm_outcore.times.clone()));
    let first_ratio =
        secs(median(scan.first_raw.times.clone())) / secs(median(scan.first_outcore.times.clone()));
    let st = |m: &Scan| {
        (
            secs(median(m.setup.clone())) * 1e3,
            secs(median(m.teardown.clone())) * 1e3,
        )
    };
    let (rs, rt) = st(&scan.first_raw);
    let (os, ot) = st(&scan.first_outcore);
    let _ = writeln!(
        out,
        "\nFirst touch, inside the timed pass (medians): raw open + mmap {rs:.2} ms, munmap + \
         close {rt:.2} ms; outcore `connect` + `array` + `view` {os:.2} ms, drop of view, array \
         and connection {ot:.2} ms."
    );
    let _ = writeln!(
        out,
        "\n(Setup, untimed in the table: outcore fill through `slice_mut` in 64 MiB \
         transactions took {:.2} s, {:.0} MB/s.)\n",
        secs(scan.fill),
        sb as f64 / secs(scan.fill) / 1e6
    );

    let _ = writeln!(
        targets,
        "* scan, warm mapping: outcore / raw mmap = {warm_ratio:.2}× (target ≥ {SCAN_TARGET}×) \
         — {}",
        verdict(warm_ratio, SCAN_TARGET)
    );
    let _ = writeln!(
        targets,
        "* scan, first touch (informational): outcore / raw mmap = {first_ratio:.2}×"
    );
    (out, targets)
}

/// Section 2 and its lines for the targets list.
fn commit_section(commit: &CommitResults) -> (String, String) {
    let gbps = |bytes: u64, d: Duration| bytes as f64 / secs(d) / 1e9;
    let mut out = String::new();
    let mut targets = String::new();
    let cb = commit.bytes;
    let _ = writeln!(
        out,
        "## 2. Commit of a fully rewritten {:.2} GiB f64 array\n",
        cb as f64 / f64::from(1u32 << 30)
    );
    let _ = writeln!(
        out,
        "Every element `+= 1.0` (same function everywhere), then made durable. One untimed \
         warm-up round first. The baseline appends, as outcore's append-only segments do: both \
         allocate new disk blocks every round (overwriting allocated blocks is much faster on \
         this thin-provisioned VM disk, so that variant is for reference only).\n"
    );
    let _ = writeln!(
        out,
        "On this VM the commit numbers swing by up to 3× from round to round and run to run \
         (memory given back to the host and re-faulted, DAMON, thin-provisioned disk); the \
         per-round times are printed on stdout. The best round of each variant is shown \
         as well.\n"
    );
    let mut ratios = Vec::new();
    let mut tables = vec![("2a. As the machine gives memory", &commit.plain)];
    if let Some(pre) = &commit.prewarmed {
        tables.push(("2b. Fresh memory pre-touched before each variant", pre));
    }
    for (title, ms) in tables {
        let _ = writeln!(out, "### {title}\n");
        if std::ptr::eq(ms, &commit.plain) {
            let _ = writeln!(
                out,
                "Memory the process allocates may have been handed back to the host (free page \
                 reporting) and then costs a host fault per page on first touch.\n"
            );
        } else {
            let _ = writeln!(
                out,
                "The same rounds again, with {:.1} GiB of anonymous memory touched and freed \
                 just before every variant's turn (untimed; median {:.2} GB/s to touch it), so \
                 that fresh pages are host-backed, as on bare metal.\n",
                commit.prewarm_bytes as f64 / f64::from(1u32 << 30),
                commit.prewarm_bytes as f64 / secs(median(commit.prewarm_times.clone())) / 1e9
            );
        }
        let _ = writeln!(
            out,
            "| variant | rewrite s | write / commit s | total s | total GB/s | write / commit \
             alone GB/s | best total s | minor faults in rewrite | CPU s in write / commit |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let names = [
            (
                PWRITE_APPEND,
                "raw file (baseline): heap buffer += 1; pwrite 2 MiB chunks appended to one \
                 growing file + fdatasync",
            ),
            (
                PWRITE_OVERWRITE,
                "raw file: heap buffer += 1; pwrite 2 MiB chunks over the previous version + \
                 fdatasync",
            ),
            (
                MMAP_SHARED,
                "raw file: mmap(MAP_SHARED) += 1 in place + fdatasync",
            ),
            (OUTCORE, "outcore: `view_mut()` += 1; `conn.commit()`"),
        ];
        for (i, name) in names {
            let m = &ms[i];
            let (rw, wr, tot) = (
                median(m.rewrite.clone()),
                median(m.write.clone()),
                median(m.total.clone()),
            );
            let _ = writeln!(
                out,
                "| {name} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.3} | {} | {:.3} |",
                secs(rw),
                secs(wr),
                secs(tot),
                gbps(cb, tot),
                gbps(cb, wr),
                secs(best(&m.total)),
                median(m.rewrite_faults.clone()),
                secs(median(m.write_cpu.clone()))
            );
        }
        let med = |i: usize, f: fn(&Commit) -> &Vec<Duration>| secs(median(f(&ms[i]).clone()));
        let append_write = med(PWRITE_APPEND, |m| &m.write);
        let oc_total = med(OUTCORE, |m| &m.total);
        let _ = writeln!(
            out,
            "\noutcore's dirty-page scan alone (`Connection::is_dirty`, a `PAGEMAP_SCAN` of the \
             array, outside the columns above): median {:.4} s.\n",
            secs(median(ms[OUTCORE].scan.clone()))
        );
        let list = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.2}", secs(*d)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "Per round, in order (s): outcore rewrite + commit {}; raw pwrite-append + \
             fdatasync {}.\n",
            list(&ms[OUTCORE].total),
            list(&ms[PWRITE_APPEND].write)
        );
        ratios.push((
            title,
            append_write / oc_total,
            append_write / med(OUTCORE, |m| &m.write),
            med(PWRITE_OVERWRITE, |m| &m.write) / oc_total,
            med(PWRITE_APPEND, |m| &m.total) / oc_total,
            med(MMAP_SHARED, |m| &m.total) / oc_total,
            secs(best(&ms[PWRITE_APPEND].write)) / secs(best(&ms[OUTCORE].total)),
            secs(best(&ms[PWRITE_APPEND].write)) / secs(best(&ms[OUTCORE].write)),
        ));
    }

    for (title, total, alone, overwrite, heap, mmap, best_total, best_alone) in ratios {
        let _ = writeln!(
            targets,
            "* commit, {}:",
            title.to_lowercase().split_once(' ').map_or(title, |t| t.1)
        );
        let _ = writeln!(
            targets,
            "  * outcore (rewrite + commit) / raw pwrite-append + fdatasync = {total:.2}× \
             (target ≥ {COMMIT_TARGET}×) — {}",
            verdict(total, COMMIT_TARGET)
        );
        let _ = writeln!(
            targets,
            "  * outcore `commit` alone / raw pwrite-append + fdatasync = {alone:.2}× \
             (target ≥ {COMMIT_TARGET}×) — {}",
            verdict(alone, COMMIT_TARGET)
        );
        let _ = writeln!(
            targets,
            "  * informational, outcore (rewrite + commit) against: raw pwrite-overwrite + \
             fdatasync {overwrite:.2}×; raw heap rewrite + pwrite-append + fdatasync {heap:.2}×; \
             raw mmap(MAP_SHARED) rewrite + fdatasync {mmap:.2}×"
        );
        let _ = writeln!(
            targets,
            "  * best round against best round (less exposed to the VM's noise): \
             outcore (rewrite + commit) / raw pwrite-append + fdatasync {best_total:.2}×; \
             outcore `commit` alone {best_alone:.2}×"
        );
    }
    (out, targets)
}

fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
    let previous = Previous::parse(&std::fs::read_to_string(&results).unwrap_or_default());
    let (mut scan, mut commit) = (None, None);
    if args.parts.scan || args.parts.commit {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let root = args
            .dir
            .join(format!("outcore-bench-vm-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        let tmp = TempDir(root.clone());
        if args.parts.scan {
            let scan_dir = root.join("scan");
            std::fs::create_dir(&scan_dir)?;
            scan = Some(scan_part(&scan_dir, args.gib, args.rounds)?);
            // Free the scan data (disk and page cache) before the commit part.
            std::fs::remove_dir_all(&scan_dir)?;
        }
        if args.parts.commit {
            let commit_dir = root.join("commit");
            std::fs::create_dir(&commit_dir)?;
            commit = Some(commit_part(
                &commit_dir,
                args.commit_gib,
                args.rounds,
                args.prewarm_gib,
            )?);
        }
        drop(tmp);
    }
    let fault = if args.parts.fault {
        Some(fault::fault_part(args.fault_gib, args.rounds)?)
    } else {
        None
    };

    let text = report(
        &args,
        scan.as_ref(),
        commit.as_ref(),
        fault.as_ref(),
        &previous,
    );
    println!("\n{text}");
    std::fs::write(&results, &text)?;
    println!("written to {}", results.display());
    Ok(())
}
