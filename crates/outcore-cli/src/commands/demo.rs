//! `outcore demo gen|read STORE`: the seed demo, as `python -m outcore.demo` runs it.
//!
//! `gen` creates `signalv`, a float64 array of `--worksize` MiB, and fills it with
//! 15·sin(0.2·t) in 32 MiB chunks, one commit per chunk. `read` maps the whole array as one
//! view and prints its mean and sum. Both print the process's memory use. The output lines
//! are those of the Python demo (the sum uses NumPy's pairwise summation, so the digits agree).

use std::time::Instant;

use clap::{Args, ValueEnum};
use outcore::array::Order;
use outcore::storage::{Compression, TxnMeta};

use super::Ctx;
use crate::error::{CliError, Result};
use crate::memory::memory_line;
use crate::output::Out;
use crate::store::{commit, user, Access, Store};

/// The array the demo writes and reads.
pub const ARRAY: &str = "signalv";

/// Bytes per transaction of `gen`.
const CHUNK: u64 = 32 << 20;

/// What the demo does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Create `signalv` and fill it with the signal.
    Gen,
    /// Read `signalv` back through one view: mean, sum, memory.
    Read,
}

/// Arguments of `outcore demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// gen or read.
    pub action: Action,
    /// The store: a directory (created by gen if missing), a postgresql:// url, or mem:.
    pub store: String,
    /// Size of the array gen writes, in MiB (default 2048, as the Python demo).
    #[arg(long, value_name = "MB", default_value_t = 2048,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub worksize: u64,
}

/// Runs `outcore demo`.
pub fn run(args: &DemoArgs, ctx: &Ctx) -> Result<()> {
    match args.action {
        Action::Gen => gen(args, ctx),
        Action::Read => read(args, ctx),
    }
}

fn gen(args: &DemoArgs, ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Create, Compression::None)?;
    let conn = store.db.connect()?;
    let worksize = args.worksize << 20;
    let n = worksize / 8;
    let mut signal = conn.create::<f64>(ARRAY, &[n], Order::C)?;
    commit(&conn, TxnMeta::new(user(), format!("demo: create {ARRAY}")))?;
    let per_chunk = CHUNK / 8;
    let bar = ctx.progress.bytes(worksize, "gen");
    let t0 = Instant::now();
    let mut start = 0u64;
    while start < n {
        let stop = (start + per_chunk).min(n);
        let mut view = signal.slice_mut::<f64, _>(ndarray::s![start as isize..stop as isize])?;
        for (i, x) in view.iter_mut().enumerate() {
            *x = 15.0 * ((start + i as u64) as f64 * 0.2).sin();
        }
        drop(view); // views go before the commit
        commit(
            &conn,
            TxnMeta::new(user(), format!("signal {start}..{stop}")),
        )?;
        bar.inc((stop - start) * 8);
        start = stop;
    }
    bar.finish_and_clear();
    let mut out = Out::new();
    out.line(format!(
        "gen: {n} float64 ({} MiB) in {:.2} s",
        args.worksize,
        t0.elapsed().as_secs_f64()
    ))?;
    out.line(format!("gen: {}", memory_line()))?;
    out.flush()
}

fn read(args: &DemoArgs, ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let conn = store.db.connect()?;
    let signal = conn.array(ARRAY)?;
    let spinner = ctx.progress.spinner("read");
    let t0 = Instant::now();
    let view = signal.view::<f64>()?;
    let data = view
        .as_slice()
        .ok_or_else(|| CliError::runtime(format!("{ARRAY} is not contiguous")))?;
    let total = numpy_sum(data);
    let mean = total / data.len() as f64;
    let seconds = t0.elapsed().as_secs_f64();
    spinner.finish_and_clear();
    let mut out = Out::new();
    out.line(format!(
        "read: mean {}  sum {}  in {seconds:.2} s",
        python_e(mean),
        python_e(total)
    ))?;
    out.line(format!("read: {}", memory_line()))?;
    out.flush()
}

/// NumPy's pairwise summation of a contiguous float64 array (`numpy.sum`): blocks of up to
/// 128 elements summed with 8 accumulators, larger ranges split in halves.
pub fn numpy_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(-0.0, |acc, &x| acc + x)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for block in a[8..whole].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(block) {
                *acc += x;
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[whole..] {
            res += x;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_sum(&a[..half]) + numpy_sum(&a[half..])
    }
}

/// Python's `format(x, '.6e')`: `1.234560e+01`, `nan`, `inf`.
pub fn python_e(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    let text = format!("{x:.6e}");
    match text.split_once('e') {
        Some((mantissa, exp)) => {
            let e: i32 = exp.parse().unwrap_or(0);
            format!("{mantissa}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_formatting() {
        assert_eq!(python_e(49.21596216472014), "4.921596e+01");
        assert_eq!(python_e(-0.000123), "-1.230000e-04");
        assert_eq!(python_e(0.0), "0.000000e+00");
        assert_eq!(python_e(1e300), "1.000000e+300");
        assert_eq!(python_e(f64::NAN), "nan");
    }

    #[test]
    fn numpy_pairwise_sum() {
        // numpy.sum of this 2**20-element signal prints 49.21596216472014.
        let t: Vec<f64> = (0..1u64 << 20)
            .map(|i| 15.0 * (i as f64 * 0.2).sin())
            .collect();
        assert_eq!(numpy_sum(&t), 49.21596216472014);
        assert_eq!(numpy_sum(&[]), 0.0);
        assert_eq!(numpy_sum(&[1.0; 1001]), 1001.0);
    }
}
