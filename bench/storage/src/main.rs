//! Storage benchmark: outcore's embedded store against a raw file and against LMDB with the
//! block bodies inside, side by side in one run.
//!
//! What it measures, on `--total-mib` (default 2048) of incompressible 2 MiB blocks (64
//! distinct random buffers reused, each block stamped with its index in its first 8 bytes),
//! written in durable commits of 64 blocks:
//!
//! * **raw file (baseline)**: `write_all_at` appends to one plain file, `fdatasync` after every
//!   64 blocks; reads are `read_exact_at` (pread) into one reusable 2 MiB buffer.
//! * **outcore LocalStorage**: one `CommitRequest` of 64 `Key::Block` writes per commit
//!   (`base` = head); reads are `Storage::load(key, head)` (copy-out, checksum verified).
//! * **LMDB, bodies inside** (the rejected design): heed, one `Database<Bytes, Bytes>` keyed
//!   by the big-endian block index, 64 puts per write transaction; reads copy the `get` slice
//!   into one reusable 2 MiB buffer.
//! * **mapped reads**: `mmap(MAP_PRIVATE, PROT_READ)` of each block and a sum of every 8-byte
//!   word, once over the raw file's blocks and once over the extents `Storage::locate` returns
//!   (same loop, so the two are directly comparable).
//!
//! The variants take turns, so that all see the same conditions (on a VM the disk's speed
//! changes over time, e.g. with the host's rate limiting): writes go commit by commit in a
//! rotating order, each variant's time summed. Reads are warm: one untimed sequential pass per
//! reader first, then `--passes` (default 3) rounds in which every reader does one sequential
//! and one random-permutation pass (rotating order); the medians are reported. Every block
//! read back has its stamp checked, and every mapped pass must produce the expected word sum.
//! Throughputs are decimal: MB/s = 10^6 B/s, GB/s = 10^9 B/s.
//!
//! The table is printed and written to `bench/storage/RESULTS.md`. Everything is written into
//! a fresh directory under `--dir` (default `/var/tmp`), removed at the end.
//!
//! Run it with:
//!
//! ```text
//! cargo run --release -p outcore-bench-storage -- [--total-mib N] [--dir PATH] [--passes N]
//! ```

use std::error::Error;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, WithoutTls};
use outcore::storage::{
    CommitRequest, Key, LocalStorage, Located, Oid, Storage, Tid, TxnMeta, Write,
};
use outcore_bench_common::{machine, median, secs, utc_now};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};

type BoxResult<T> = Result<T, Box<dyn Error>>;

/// Block size: 2 MiB.
const BLOCK: usize = 2 << 20;
/// Blocks per durable commit.
const COMMIT_BLOCKS: u64 = 64;
/// Distinct random buffers the blocks are made of.
const DISTINCT: usize = 64;
/// LMDB map size for the bodies-inside variant.
const LMDB_MAP_SIZE: usize = 64 << 30;
/// The issue's targets: outcore write and warm read at least this fraction of the raw file.
const TARGET: f64 = 0.8;

const USAGE: &str = "usage: outcore-bench-storage [--total-mib N] [--dir PATH] [--passes N]

  --total-mib N   data written per variant, in MiB (default 2048; rounded down to 2 MiB blocks)
  --dir PATH      where to create the temporary benchmark directory (default /var/tmp)
  --passes N      timed passes per read measurement, median reported (default 3)";

struct Args {
    total_mib: u64,
    dir: PathBuf,
    passes: usize,
}

fn parse_args() -> BoxResult<Args> {
    let mut args = Args {
        total_mib: 2048,
        dir: PathBuf::from("/var/tmp"),
        passes: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--total-mib" => args.total_mib = value("--total-mib")?.parse()?,
            "--dir" => args.dir = PathBuf::from(value("--dir")?),
            "--passes" => args.passes = value("--passes")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}").into()),
        }
    }
    if args.total_mib < 2 || args.passes == 0 {
        return Err(format!("--total-mib must be >= 2 and --passes >= 1\n\n{USAGE}").into());
    }
    Ok(args)
}

/// The benchmark data: `DISTINCT` random 2 MiB buffers; block `i` is buffer `i % DISTINCT`
/// with `i` stamped (little-endian) into its first 8 bytes.
struct Data {
    bufs: Vec<Vec<u8>>,
}

impl Data {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(0x6f75_7463_6f72_6521);
        let bufs = (0..DISTINCT)
            .map(|_| {
                let mut b = vec![0u8; BLOCK];
                rng.fill_bytes(&mut b);
                b
            })
            .collect();
        Data { bufs }
    }

    /// Block `i`'s bytes (stamps the shared buffer in place: no copy).
    fn block(&mut self, i: u64) -> &[u8] {
        let b = &mut self.bufs[(i % DISTINCT as u64) as usize];
        b[..8].copy_from_slice(&i.to_le_bytes());
        b
    }

    /// The wrapping sum of every 8-byte word of every block, what a mapped pass must find.
    fn expected_sum(&mut self, blocks: u64) -> u64 {
        (0..blocks).fold(0u64, |acc, i| acc.wrapping_add(sum_words(self.block(i))))
    }
}

/// Fails unless `bytes` is block `i` (its stamp) and has the block size.
fn check_stamp(bytes: &[u8], i: u64, what: &str) -> BoxResult<()> {
    if bytes.len() != BLOCK {
        return Err(format!("{what}: block {i} has {} bytes, not {BLOCK}", bytes.len()).into());
    }
    let stamp = u64::from_le_bytes(bytes[..8].try_into()?);
    if stamp != i {
        return Err(format!("{what}: block {i} carries stamp {stamp}").into());
    }
    Ok(())
}

/// The wrapping sum of every 8-byte (little-endian) word of `bytes`.
fn sum_words(bytes: &[u8]) -> u64 {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        .fold(0u64, u64::wrapping_add)
}

/// Maps `len` bytes of `file` at `offset` (MAP_PRIVATE, PROT_READ), checks the stamp of block
/// `i`, sums every word, unmaps. The same loop for the raw file and for outcore extents.
fn map_and_sum(file: &File, offset: u64, len: usize, i: u64, what: &str) -> BoxResult<u64> {
    let offset_t = libc::off_t::try_from(offset)?;
    // SAFETY: a fresh read-only private mapping of an open descriptor; nothing else aliases it
    // mutably, and it is unmapped below before the slice goes out of scope.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            offset_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!(
            "{what}: mmap of block {i}: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    // SAFETY: `ptr` maps `len` readable bytes until the munmap below.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    let checked = check_stamp(bytes, i, what);
    let sum = sum_words(bytes);
    // SAFETY: unmapping exactly the mapping made above; `bytes` is not used afterwards.
    unsafe { libc::munmap(ptr, len) };
    checked.map(|()| sum)
}

/// A store under test, written in durable commits.
trait Writer {
    /// Writes blocks `start..end` durably as one commit.
    fn commit(&mut self, data: &mut Data, start: u64, end: u64) -> BoxResult<()>;
}

/// One way of reading the blocks back.
trait Reader {
    /// Reads (and checks) every block in `indices`, in that order.
    fn pass(&mut self, indices: &[u64]) -> BoxResult<()>;
}

/// The raw-file baseline: append + fdatasync per commit, pread back into one buffer.
struct RawFile {
    file: File,
    buf: Vec<u8>,
}

impl Writer for RawFile {
    fn commit(&mut self, data: &mut Data, start: u64, end: u64) -> BoxResult<()> {
        for i in start..end {
            self.file.write_all_at(data.block(i), i * BLOCK as u64)?;
        }
        self.file.sync_data()?;
        Ok(())
    }
}

impl Reader for RawFile {
    fn pass(&mut self, indices: &[u64]) -> BoxResult<()> {
        for &i in indices {
            self.file.read_exact_at(&mut self.buf, i * BLOCK as u64)?;
            check_stamp(&self.buf, i, "raw pread")?;
        }
        Ok(())
    }
}

/// outcore's LocalStorage: one `CommitRequest` per commit, `load` back.
struct Outcore {
    store: LocalStorage,
    file: Oid,
    /// Time spent building the owned `Write::Store` vectors (the API takes `Vec<u8>`).
    building: Duration,
    /// Time spent in `commit`.
    committing: Duration,
    commits: u64,
}

impl Writer for Outcore {
    fn commit(&mut self, data: &mut Data, start: u64, end: u64) -> BoxResult<()> {
        let file = self.file;
        let tb = Instant::now();
        let writes = (start..end)
            .map(|index| {
                let key = Key::Block { file, index };
                (key, Write::Store(data.block(index).to_vec()))
            })
            .collect();
        let tc = Instant::now();
        self.store.commit(CommitRequest {
            base: self.store.head()?,
            writes,
            meta: TxnMeta::new("bench", format!("blocks {start}..{end}")),
        })?;
        self.committing += tc.elapsed();
        self.building += tc - tb;
        self.commits += 1;
        Ok(())
    }
}

/// `Storage::load` at a fixed snapshot: copy-out, checksum verified.
#[derive(Clone)]
struct OutcoreLoad {
    store: LocalStorage,
    file: Oid,
    head: Tid,
}

impl Reader for OutcoreLoad {
    fn pass(&mut self, indices: &[u64]) -> BoxResult<()> {
        for &index in indices {
            let v = self
                .store
                .load(
                    Key::Block {
                        file: self.file,
                        index,
                    },
                    self.head,
                )?
                .ok_or_else(|| format!("outcore: block {index} missing"))?;
            check_stamp(&v.data, index, "outcore load")?;
        }
        Ok(())
    }
}

/// The rejected design: block bodies as LMDB values, copied out of `get` into one buffer.
struct Lmdb {
    env: Env<WithoutTls>,
    db: Database<Bytes, Bytes>,
    buf: Vec<u8>,
}

impl Lmdb {
    fn open(path: &Path) -> BoxResult<Self> {
        std::fs::create_dir(path)?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(LMDB_MAP_SIZE);
        // SAFETY: a fresh directory, opened once by this process and written only through
        // LMDB.
        let env = unsafe { options.open(path) }?;
        let mut wtxn = env.write_txn()?;
        let db = env.create_database(&mut wtxn, None)?;
        wtxn.commit()?;
        Ok(Lmdb {
            env,
            db,
            buf: vec![0u8; BLOCK],
        })
    }
}

impl Writer for Lmdb {
    fn commit(&mut self, data: &mut Data, start: u64, end: u64) -> BoxResult<()> {
        let mut wtxn = self.env.write_txn()?;
        for i in start..end {
            self.db
                .put(&mut wtxn, &i.to_be_bytes()[..], data.block(i))?;
        }
        wtxn.commit()?;
        Ok(())
    }
}

impl Reader for Lmdb {
    fn pass(&mut self, indices: &[u64]) -> BoxResult<()> {
        for &i in indices {
            let rtxn = self.env.read_txn()?;
            let v = self
                .db
                .get(&rtxn, &i.to_be_bytes()[..])?
                .ok_or_else(|| format!("lmdb: block {i} missing"))?;
            if v.len() != BLOCK {
                return Err(format!("lmdb: block {i} has {} bytes", v.len()).into());
            }
            self.buf.copy_from_slice(v);
            drop(rtxn);
            check_stamp(&self.buf, i, "lmdb get")?;
        }
        Ok(())
    }
}

/// mmap + sum over the raw file's blocks.
struct RawMmap {
    file: File,
    expected: u64,
}

impl Reader for RawMmap {
    fn pass(&mut self, indices: &[u64]) -> BoxResult<()> {
        let mut sum = 0u64;
        for &i in indices {
            let s = map_and_sum(&self.file, i * BLOCK as u64, BLOCK, i, "raw mmap")?;
            sum = sum.wrapping_add(s);
        }
        check_sum(std::hint::black_box(sum), self.expected, "raw mmap")
    }
}

/// `Storage::locate`, then mmap + sum over the extent (the same loop as [`RawMmap`]).
struct OutcoreMmap {
    load: OutcoreLoad,
    expected: u64,
}

impl Reader for OutcoreMmap {
    fn pass(&mut self, indices: &[u64]) -> BoxResult<()> {
        let OutcoreLoad { store, file, head } = &self.load;
        let mut sum = 0u64;
        for &index in indices {
            let key = Key::Block { file: *file, index };
            let Located::Mapped(extent) = store.locate(key, *head)? else {
                return Err(format!("outcore: block {index} is not mappable").into());
            };
            let len = usize::try_from(extent.len)?;
            let s = map_and_sum(&extent.file, extent.offset, len, index, "outcore mmap")?;
            sum = sum.wrapping_add(s);
        }
        check_sum(std::hint::black_box(sum), self.expected, "outcore mmap")
    }
}

/// Writes `blocks` blocks into every writer, taking turns commit by commit (the order rotates
/// each round) so all of them see the same disk conditions. Returns each writer's total time.
fn write_interleaved(
    writers: &mut [&mut dyn Writer],
    data: &mut Data,
    blocks: u64,
) -> BoxResult<Vec<Duration>> {
    let mut totals = vec![Duration::ZERO; writers.len()];
    let mut start = 0;
    let mut round = 0;
    while start < blocks {
        let end = (start + COMMIT_BLOCKS).min(blocks);
        for k in 0..writers.len() {
            let w = (round + k) % writers.len();
            let t = Instant::now();
            writers[w].commit(data, start, end)?;
            totals[w] += t.elapsed();
        }
        start = end;
        round += 1;
    }
    Ok(totals)
}

/// Sequential and random read times of one reader (medians).
#[derive(Clone, Copy)]
struct ReadTimes {
    seq: Duration,
    random: Duration,
}

/// One untimed sequential warm-up pass per reader, then `passes` rounds in which every
/// reader does one sequential and one random pass (the order rotates each round), so host
/// noise hits all readers alike. Returns the medians.
fn read_interleaved(
    readers: &mut [&mut dyn Reader],
    seq: &[u64],
    random: &[u64],
    passes: usize,
) -> BoxResult<Vec<ReadTimes>> {
    for r in readers.iter_mut() {
        r.pass(seq)?;
    }
    let mut times = vec![(Vec::new(), Vec::new()); readers.len()];
    for round in 0..passes {
        for k in 0..readers.len() {
            let i = (round + k) % readers.len();
            let t = Instant::now();
            readers[i].pass(seq)?;
            times[i].0.push(t.elapsed());
            let t = Instant::now();
            readers[i].pass(random)?;
            times[i].1.push(t.elapsed());
        }
    }
    Ok(times
        .into_iter()
        .map(|(s, r)| ReadTimes {
            seq: median(s),
            random: median(r),
        })
        .collect())
}

/// One row of the results.
struct Measured {
    name: &'static str,
    write: Option<Duration>,
    read: ReadTimes,
}

fn check_sum(sum: u64, expected: u64, what: &str) -> BoxResult<()> {
    if sum != expected {
        return Err(format!("{what}: word sum {sum:016x}, expected {expected:016x}").into());
    }
    Ok(())
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

/// The directory the benchmark directory was created in.
fn root_parent(root: &Path) -> &Path {
    root.parent().unwrap_or(root)
}

/// The results as a markdown table plus the target verdicts.
fn report(rows: &[Measured], bytes: u64, raw_mmap: &Measured) -> String {
    let base = &rows[0];
    let mbps = |d: Duration| bytes as f64 / secs(d) / 1e6;
    let gbps = |d: Duration| bytes as f64 / secs(d) / 1e9;
    // A ratio of throughputs is the inverse ratio of times.
    let ratio = |base: Duration, d: Duration| secs(base) / secs(d);
    let mut out = String::new();
    out.push_str(
        "| variant | write MB/s | seq read GB/s | random read GB/s | write × raw \
         | seq read × raw pread | random read × raw pread |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let (w, wr) = match (r.write, base.write) {
            (Some(w), Some(bw)) => (format!("{:.0}", mbps(w)), format!("{:.2}", ratio(bw, w))),
            _ => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {w} | {:.2} | {:.2} | {wr} | {:.2} | {:.2} |",
            r.name,
            gbps(r.read.seq),
            gbps(r.read.random),
            ratio(base.read.seq, r.read.seq),
            ratio(base.read.random, r.read.random),
        );
    }
    let outcore = rows
        .iter()
        .find(|r| r.name.starts_with("outcore LocalStorage"))
        .expect("outcore row");
    let mapped = rows
        .iter()
        .find(|r| r.name.starts_with("outcore locate"))
        .expect("mapped row");
    let _ = writeln!(
        out,
        "\nMapped, same loop: outcore locate+mmap+sum vs raw mmap+sum: \
         seq {:.2}×, random {:.2}×.",
        ratio(raw_mmap.read.seq, mapped.read.seq),
        ratio(raw_mmap.read.random, mapped.read.random),
    );
    let verdict = |r: f64| if r >= TARGET { "PASS" } else { "FAIL" };
    let w = ratio(
        base.write.expect("raw write"),
        outcore.write.expect("outcore write"),
    );
    let load_worst =
        ratio(base.read.seq, outcore.read.seq).min(ratio(base.read.random, outcore.read.random));
    let map_worst =
        ratio(base.read.seq, mapped.read.seq).min(ratio(base.read.random, mapped.read.random));
    let _ = writeln!(
        out,
        "\nIssue targets (outcore vs raw file):\n\n\
         * write >= {TARGET}× raw: {w:.2}× — {}\n\
         * warm read >= {TARGET}× raw pread, copy-out `load` (worse of seq/random): \
         {load_worst:.2}× — {}\n\
         * warm read >= {TARGET}× raw pread, mapped `locate`+mmap+sum (worse of seq/random): \
         {map_worst:.2}× — {}",
        verdict(w),
        verdict(load_worst),
        verdict(map_worst),
    );
    out
}

fn main() -> BoxResult<()> {
    let args = parse_args()?;
    let blocks = args.total_mib / 2;
    let bytes = blocks * BLOCK as u64;
    std::fs::create_dir_all(&args.dir)?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let root = args.dir.canonicalize()?.join(format!(
        "outcore-bench-storage-{}-{stamp}",
        std::process::id()
    ));
    std::fs::create_dir(&root)?;
    let tmp = TempDir(root);

    let when = utc_now();
    let machine = machine(Some(root_parent(&tmp.0)));
    println!("outcore storage benchmark, {when}");
    for line in &machine {
        println!("  {line}");
    }
    println!(
        "  data: {} MiB per variant = {blocks} blocks of 2 MiB (incompressible), \
         {COMMIT_BLOCKS} blocks per durable commit; {} timed read rounds (median)\n",
        bytes >> 20,
        args.passes
    );

    let mut data = Data::new();
    let expected = data.expected_sum(blocks);
    let seq: Vec<u64> = (0..blocks).collect();
    let mut random = seq.clone();
    random.shuffle(&mut StdRng::seed_from_u64(42));

    let mut raw = RawFile {
        file: OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(tmp.0.join("blocks.raw"))?,
        buf: vec![0u8; BLOCK],
    };
    let store = LocalStorage::open(tmp.0.join("outcore"))?;
    let mut outcore = Outcore {
        file: Oid(store.new_oids(1)?.start),
        store,
        building: Duration::ZERO,
        committing: Duration::ZERO,
        commits: 0,
    };
    let mut lmdb = Lmdb::open(&tmp.0.join("lmdb"))?;

    println!("writing (the three variants take turns, commit by commit) ...");
    let writes = write_interleaved(&mut [&mut raw, &mut outcore, &mut lmdb], &mut data, blocks)?;

    println!(
        "reading (warm-up pass, then {} rounds of every reader) ...\n",
        args.passes
    );
    let mut load = OutcoreLoad {
        head: outcore.store.head()?,
        store: outcore.store.clone(),
        file: outcore.file,
    };
    let mut raw_mmap = RawMmap {
        file: raw.file.try_clone()?,
        expected,
    };
    let mut outcore_mmap = OutcoreMmap {
        load: load.clone(),
        expected,
    };
    let reads = read_interleaved(
        &mut [
            &mut raw,
            &mut load,
            &mut lmdb,
            &mut raw_mmap,
            &mut outcore_mmap,
        ],
        &seq,
        &random,
        args.passes,
    )?;
    let detail = (outcore.building, outcore.committing, outcore.commits);
    drop((raw, outcore, lmdb, load, raw_mmap, outcore_mmap));

    let names = [
        "raw file (baseline), pread",
        "outcore LocalStorage, load",
        "LMDB, bodies inside (rejected)",
        "raw file, mmap + sum",
        "outcore locate, mmap + sum",
    ];
    let rows: Vec<Measured> = names
        .iter()
        .zip(&reads)
        .enumerate()
        .map(|(i, (name, read))| Measured {
            name,
            write: writes.get(i).copied(),
            read: *read,
        })
        .collect();
    let mut table = report(&rows, bytes, &rows[3]);
    let _ = writeln!(
        table,
        "\noutcore write breakdown: {:.2} s building the owned `Write::Store` vectors \
         (copying 2 MiB each), {:.2} s in `commit` ({:.1} ms per {COMMIT_BLOCKS}-block commit).",
        secs(detail.0),
        secs(detail.1),
        secs(detail.1) * 1e3 / detail.2.max(1) as f64,
    );
    println!("{table}");

    let mut md = format!("# Storage benchmark results\n\n{when}, machine:\n\n");
    for line in &machine {
        let _ = writeln!(md, "* {line}");
    }
    let _ = writeln!(
        md,
        "\n{} MiB per variant, {blocks} incompressible 2 MiB blocks, {COMMIT_BLOCKS} blocks \
         per durable commit; warm reads, median of {} rounds. MB/s and GB/s are decimal.\n\
         Produced by `cargo run --release -p outcore-bench-storage -- --total-mib {} \
         --passes {}`.\n",
        bytes >> 20,
        args.passes,
        args.total_mib,
        args.passes
    );
    md.push_str(&table);
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md");
    std::fs::write(&results, md)?;
    println!("written to {}", results.display());
    drop(tmp);
    Ok(())
}
