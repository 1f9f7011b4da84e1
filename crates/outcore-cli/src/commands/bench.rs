//! `outcore bench`: a quick self-benchmark (a few seconds at the default size).
//!
//! One float64 array of `--mib` MiB is written to a temporary outcore store and the same
//! bytes to a raw file in `--dir`. Then, taking turns, each variant is timed `--rounds` times
//! (medians are printed):
//!
//! * **write**: the array filled through views in 64 MiB transactions, vs `write` + `fdatasync`
//!   of the file;
//! * **scan, warm mapping**: the sum of all elements through one view kept from an untimed
//!   pass, vs one `mmap` of the file kept likewise (the page cache holds both);
//! * **scan, first touch**: a fresh connection (or a fresh `mmap`) for every pass, so mapping
//!   and page faults are timed too;
//! * **first write fault**: one store per 4 KiB page over up to 64 MiB of a fresh view (a
//!   copy-on-write fault each), vs the same on a fresh private `mmap`; the time per page.
//!
//! Every sum is checked against its closed form. The temporary directory is removed at the end.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use outcore::array::Order;
use outcore::storage::{Compression, TxnMeta};

use super::Ctx;
use crate::error::{CliError, IoContext, Result};
use crate::output::{human_bytes, Out, Table};
use crate::rawmap::RawMap;
use crate::store::{commit, user, Access, Store};

/// Arguments of `outcore bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Directory for the temporary store and file (default: the system's temp directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Array size in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub mib: u64,
    /// Timed passes per variant (the median is printed).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
}

/// Removes the benchmark's directory when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Value of element `i`: small integers, so every sum is exact.
fn value(i: u64) -> f64 {
    (i % 1000) as f64
}

/// The exact sum of `value(0..n)`.
fn expected_sum(n: u64) -> f64 {
    let (cycles, rest) = (n / 1000, n % 1000);
    (cycles * 499_500 + rest * rest.saturating_sub(1) / 2) as f64
}

/// The scan kernel both variants use.
fn sum(xs: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = xs.chunks_exact(4);
    let rest: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + rest
}

/// Adds 1 to the first element of each of `pages` pages (`per_page` elements apart).
fn touch_pages(data: &mut [f64], per_page: usize, pages: usize) {
    for x in data.iter_mut().step_by(per_page).take(pages) {
        *x += 1.0;
    }
}

fn check(what: &str, got: f64, n: u64) -> Result<()> {
    if got == expected_sum(n) {
        Ok(())
    } else {
        Err(CliError::runtime(format!(
            "bench: {what} summed to {got}, expected {}",
            expected_sum(n)
        )))
    }
}

/// The median of `xs` (upper middle). Not `outcore_bench_common::median`: the CLI ships to
/// users and must not depend on the bench crates, which are not published.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Seconds taken by `f`.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t0 = Instant::now();
    let v = f()?;
    Ok((t0.elapsed().as_secs_f64(), v))
}

/// Runs `outcore bench`.
pub fn run(args: &BenchArgs, ctx: &Ctx) -> Result<()> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = TempDir(base.join(format!("outcore-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).context(|| format!("creating {}", dir.0.display()))?;
    let bytes = args.mib << 20;
    let n = bytes / 8;
    let rounds = args.rounds as usize;
    let spinner = ctx.progress.spinner("bench: writing");

    // Write: raw file.
    let raw_path = dir.0.join("raw.f64");
    let (raw_write, ()) = timed(|| {
        let mut f =
            File::create(&raw_path).context(|| format!("creating {}", raw_path.display()))?;
        let mut buf: Vec<u8> = Vec::with_capacity(8 << 20);
        for start in (0..n).step_by(1 << 20) {
            buf.clear();
            for i in start..(start + (1 << 20)).min(n) {
                buf.extend_from_slice(&value(i).to_ne_bytes());
            }
            f.write_all(&buf)
                .context(|| format!("writing {}", raw_path.display()))?;
        }
        f.sync_data()
            .context(|| format!("writing {}", raw_path.display()))
    })?;
    // Write: outcore.
    let url = dir.0.join("store").display().to_string();
    let store = Store::open(&url, Access::Create, Compression::None)?;
    let (oc_write, ()) = timed(|| {
        let conn = store.db.connect()?;
        let mut a = conn.create::<f64>("bench", &[n], Order::C)?;
        let step = (64u64 << 20) / 8;
        for start in (0..n).step_by(step as usize) {
            let stop = (start + step).min(n);
            let mut v = a.slice_mut::<f64, _>(ndarray::s![start as isize..stop as isize])?;
            for (k, x) in v.iter_mut().enumerate() {
                *x = value(start + k as u64);
            }
            drop(v); // views go before the commit
            commit(
                &conn,
                TxnMeta::new(user(), format!("bench {start}..{stop}")),
            )?;
        }
        Ok(())
    })?;
    let raw_file = File::open(&raw_path).context(|| format!("opening {}", raw_path.display()))?;
    let len = usize::try_from(bytes).map_err(|_| CliError::runtime("size too large"))?;

    // Scans with a warm mapping.
    spinner.set_message("bench: scanning");
    let conn = store.db.connect()?;
    let array = conn.array("bench")?;
    let view = array.view::<f64>()?;
    let oc_data = view
        .as_slice()
        .ok_or_else(|| CliError::runtime("bench array is not contiguous"))?;
    let raw_map = RawMap::new(&raw_file, len, false)?;
    check("outcore view", sum(oc_data), n)?;
    check("raw mmap", sum(raw_map.f64s()), n)?;
    let (mut oc_warm, mut raw_warm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (t, s) = timed(|| Ok(sum(oc_data)))?;
        check("outcore view", s, n)?;
        oc_warm.push(t);
        let (t, s) = timed(|| Ok(sum(raw_map.f64s())))?;
        check("raw mmap", s, n)?;
        raw_warm.push(t);
    }
    drop(view);
    drop(raw_map);

    // Scans with fresh mappings.
    let (mut oc_cold, mut raw_cold) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (t, s) = timed(|| {
            let conn = store.db.connect()?;
            let array = conn.array("bench")?;
            let view = array.view::<f64>()?;
            Ok(view.as_slice().map(sum).unwrap_or(f64::NAN))
        })?;
        check("outcore view", s, n)?;
        oc_cold.push(t);
        let (t, s) = timed(|| Ok(sum(RawMap::new(&raw_file, len, false)?.f64s())))?;
        check("raw mmap", s, n)?;
        raw_cold.push(t);
    }

    // First-write faults: one store per page of fresh mappings.
    spinner.set_message("bench: write faults");
    let touch = len.min(64 << 20);
    let pages = (touch / 4096).max(1);
    let per_page = 4096 / 8;
    let (mut oc_fault, mut raw_fault) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let conn = store.db.connect()?;
        let mut array = conn.array("bench")?;
        {
            // Mapping happens here, untimed: only the faults are timed.
            let mut v = array.view_mut::<f64>()?;
            let data = v
                .as_slice_mut()
                .ok_or_else(|| CliError::runtime("bench array is not contiguous"))?;
            let (t, ()) = timed(|| {
                touch_pages(data, per_page, pages);
                Ok(())
            })?;
            oc_fault.push(t / pages as f64);
        }
        conn.abort()?;
        let mut map = RawMap::new(&raw_file, len, true)?;
        let data = map.f64s_mut();
        let (t, ()) = timed(|| {
            touch_pages(data, per_page, pages);
            Ok(())
        })?;
        raw_fault.push(t / pages as f64);
    }
    spinner.finish_and_clear();

    let gbps = |secs: f64| bytes as f64 / secs / 1e9;
    let mut table = Table::new(&["", ">OUTCORE", ">RAW FILE", ">OUTCORE/RAW"]);
    let mut rate_row = |name: &str, oc: f64, raw: f64| {
        table.row(vec![
            name.to_string(),
            format!("{:.2} GB/s", gbps(oc)),
            format!("{:.2} GB/s", gbps(raw)),
            format!("{:.2}", raw / oc),
        ]);
    };
    rate_row("write (+ commit / fdatasync)", oc_write, raw_write);
    rate_row("scan, warm mapping", median(oc_warm), median(raw_warm));
    rate_row("scan, first touch", median(oc_cold), median(raw_cold));
    let (of, rf) = (median(oc_fault), median(raw_fault));
    table.row(vec![
        "first write fault, per 4 KiB page".into(),
        format!("{:.2} µs", of * 1e6),
        format!("{:.2} µs", rf * 1e6),
        format!("{:.2}", of / rf),
    ]);
    let mut out = Out::new();
    out.line(format!(
        "outcore bench: {} of float64 in {} ({} rounds, medians; write faults over {})",
        human_bytes(bytes),
        dir.0.display(),
        rounds,
        human_bytes(touch as u64)
    ))?;
    table.write(&mut out)?;
    out.line("throughput: higher is better; fault time: lower is better")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_form() {
        for n in [0u64, 1, 2, 999, 1000, 1001, 123_457] {
            let direct: f64 = (0..n).map(value).sum();
            assert_eq!(expected_sum(n), direct, "{n}");
            let xs: Vec<f64> = (0..n).map(value).collect();
            assert_eq!(sum(&xs), direct);
        }
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
