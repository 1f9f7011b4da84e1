//! What the Rust benchmarks share: the data every benchmark writes and checks, the scan and
//! rewrite kernels (one copy, so every variant runs the same machine code), and timing and
//! report helpers.

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ndarray::{s, ArrayView1, ArrayViewMut1, Ix1};
use outcore::db::{BigArray, Connection, View};

/// Errors of the benchmarks: reported, never recovered from.
pub type BoxResult<T> = Result<T, Box<dyn Error>>;

/// f64 elements in one 2 MiB block.
pub const BLOCK_ELEMS: u64 = (2 << 20) / 8;
/// Elements per fill transaction (64 MiB).
pub const FILL_ELEMS: u64 = (64 << 20) / 8;
/// The data repeats every `PERIOD` elements.
pub const PERIOD: u64 = 1009;

/// Element `i` after `plus` rewrites.
pub fn value(i: u64, plus: u64) -> f64 {
    (i % PERIOD + 1 + plus) as f64
}

/// The exact sum of `n` elements after `plus` rewrites (checked to be exact in f64).
pub fn expected_sum(n: u64, plus: u64) -> BoxResult<f64> {
    let (full, rem) = (n / PERIOD, n % PERIOD);
    let s = u128::from(full) * u128::from(PERIOD * (PERIOD + 1) / 2)
        + u128::from(rem * (rem + 1) / 2)
        + u128::from(plus) * u128::from(n);
    if s >= 1 << 53 {
        return Err(format!("array too large for an exact f64 checksum ({s})").into());
    }
    Ok(s as f64)
}

/// Elements of an array of `bytes` bytes (a size from the command line, hence f64), rounded
/// down to whole 2 MiB blocks (at least one).
pub fn elems_for(bytes: f64) -> u64 {
    ((bytes as u64) / 8 / BLOCK_ELEMS).max(1) * BLOCK_ELEMS
}

/// The offset (in elements) checked in block `b`: varies from block to block.
pub fn probe(b: u64) -> u64 {
    (b * 7919) % BLOCK_ELEMS
}

/// Checks a view of the data after `plus` rewrites: its `sum` is exact, and one element per
/// block (at [`probe`]'s offset) holds its [`value`].
pub fn verify(v: ArrayView1<'_, f64>, sum: f64, plus: u64, what: &str) -> BoxResult<()> {
    let n = v.len() as u64;
    let expected = expected_sum(n, plus)?;
    if sum != expected {
        return Err(format!("{what}: sum {sum}, expected {expected}").into());
    }
    for b in 0..n.div_ceil(BLOCK_ELEMS) {
        let i = (b * BLOCK_ELEMS + probe(b)).min(n - 1);
        let got = v[i as usize];
        if got != value(i, plus) {
            return Err(
                format!("{what}: element {i} is {got}, expected {}", value(i, plus)).into(),
            );
        }
    }
    Ok(())
}

/// The sum every scan uses: ndarray's `sum` over a contiguous 1-d view (an unrolled loop over
/// the slice). Not inlined, so that every variant runs the same machine code.
#[inline(never)]
pub fn sum1(v: ArrayView1<'_, f64>) -> f64 {
    v.sum()
}

/// The rewrite every commit variant uses: `+= 1.0` on a contiguous 1-d view.
#[inline(never)]
pub fn add_one(mut v: ArrayViewMut1<'_, f64>) {
    v += 1.0;
}

/// The bytes of `v`.
pub fn as_bytes(v: &[f64]) -> &[u8] {
    // SAFETY: f64 has no padding and any byte is a valid u8; same memory, same lifetime.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Fills array `a` of `n` elements with the data, 64 MiB per transaction.
pub fn fill(conn: &Connection, a: &mut BigArray, n: u64) -> BoxResult<()> {
    let mut at = 0;
    while at < n {
        let end = (at + FILL_ELEMS).min(n);
        {
            let mut v = a.slice_mut::<f64, _>(s![at as usize..end as usize])?;
            let slice = v.as_slice_mut().ok_or("slice_mut view is not contiguous")?;
            for (j, x) in slice.iter_mut().enumerate() {
                *x = value(at + j as u64, 0);
            }
        } // the view goes before the commit
        conn.commit()?;
        at = end;
    }
    Ok(())
}

/// The whole (1-d) array as a view; `.view()` of it is an `ArrayView1`.
pub fn view1(a: &BigArray) -> BoxResult<View<'_, f64, Ix1>> {
    Ok(a.slice::<f64, _>(s![..])?)
}

/// A duration in seconds.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((s / 86_400) as i64, s % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// "PASS" if `ratio` reaches `target`, else "FAIL".
pub fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio >= target {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The median of `xs` (the upper middle element of an even count). Panics on empty input or
/// NaN.
pub fn median<T: Copy + PartialOrd>(xs: impl AsRef<[T]>) -> T {
    let mut xs = xs.as_ref().to_vec();
    xs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    xs[xs.len() / 2]
}

/// Nearest-rank percentile `p` (0..=1) of `xs`. Panics on empty input or NaN.
pub fn percentile<T: Copy + PartialOrd>(xs: impl AsRef<[T]>, p: f64) -> T {
    let mut xs = xs.as_ref().to_vec();
    xs.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let rank = ((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// How outcore serves the memory of views in this process, for a report: whether faults are
/// filled through userfaultfd, and the cache budget from `OUTCORE_CACHE_BYTES`.
pub fn outcore_memory() -> String {
    let uffd = match outcore::vm::fault_filling_unavailable() {
        None => "available (blocks fetched on first touch)".to_string(),
        Some(why) => format!("unavailable ({why}): blocks fetched when views are made"),
    };
    let budget = std::env::var("OUTCORE_CACHE_BYTES").unwrap_or_else(|_| "default".into());
    format!("outcore fault-filled memory (userfaultfd): {uffd}; OUTCORE_CACHE_BYTES: {budget}")
}

/// The machine a report was made on: cores, kernel, CPU, memory, transparent huge pages,
/// and with `dir` the file system holding it.
pub fn machine(dir: Option<&std::path::Path>) -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_string();
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
    let thp = read("/sys/kernel/mm/transparent_hugepage/enabled")
        .trim()
        .to_string();
    let mut out = vec![
        format!("nproc: {nproc}"),
        format!("kernel: {kernel}"),
        format!("cpu: {model}"),
        format!("memory: {mem_gib:.1} GiB"),
        format!("transparent hugepages: {thp}"),
    ];
    if let Some(dir) = dir {
        // The mount with the longest mount point that contains `dir`.
        let fs = read("/proc/self/mounts")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && dir.starts_with(f[1]))
                    .then(|| (f[1].len(), f[2].to_string(), f[0].to_string()))
            })
            .max_by_key(|m| m.0)
            .map_or("unknown".to_string(), |(_, t, d)| format!("{t} on {d}"));
        out.push(format!("benchmark dir: {} ({fs})", dir.display()));
    }
    out
}
