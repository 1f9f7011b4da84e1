//! The seed demo in Rust: generate a big signal array in 32 MiB transactions, then read it
//! back through one view of the whole array, printing memory use.
//!
//! `cargo run --release --example demo -- [--worksize=MB] (gen|read) <path or mem:>`

use std::time::Instant;

use outcore::array::Order;
use outcore::db::Database;
use outcore::storage::TxnMeta;

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn memory_line() -> String {
    format!(
        "VIRT {}  RSS {}  (anonymous {}, file {})",
        status("VmSize:"),
        status("VmRSS:"),
        status("RssAnon:"),
        status("RssFile:")
    )
}

fn main() -> outcore::Result<()> {
    let mut worksize_mb: u64 = 512;
    let mut positional = Vec::new();
    for arg in std::env::args().skip(1) {
        if let Some(v) = arg.strip_prefix("--worksize=") {
            worksize_mb = v.parse().map_err(|_| {
                outcore::Error::InvalidArgument(format!("--worksize takes megabytes, not {v:?}"))
            })?;
        } else {
            positional.push(arg);
        }
    }
    let [command, url] = positional.as_slice() else {
        eprintln!("usage: demo [--worksize=MB] (gen|read) <path>");
        std::process::exit(2);
    };
    let db = Database::open(url)?;
    let conn = db.connect()?;
    let t0 = Instant::now();
    match command.as_str() {
        "gen" => {
            let n = worksize_mb << 17; // float64 elements
            let mut signal = conn.create::<f64>("signalv", &[n], Order::C)?;
            conn.commit()?;
            let chunk = 4u64 << 20; // 32 MiB of float64
            let mut start = 0;
            while start < n {
                let end = (start + chunk).min(n);
                let mut view =
                    signal.slice_mut::<f64, _>(ndarray::s![start as isize..end as isize])?;
                for (i, x) in view.iter_mut().enumerate() {
                    *x = 15.0 * (0.2 * (start + i as u64) as f64).sin();
                }
                drop(view); // views go before the commit
                conn.commit_with(TxnMeta::new("demo", format!("signal {start}..{end}")))?;
                start = end;
                eprint!("\rgen: {:5.1} %", 100.0 * end as f64 / n as f64);
            }
            eprintln!();
            println!(
                "gen: {n} float64 in {:.2} s; {}",
                t0.elapsed().as_secs_f64(),
                memory_line()
            );
        }
        "read" => {
            let signal = conn.array("signalv")?;
            let view = signal.view::<f64>()?;
            let sum = view.sum();
            let mean = sum / view.len().max(1) as f64;
            println!(
                "read: mean {mean:.6e}  sum {sum:.6e}  in {:.2} s; {}",
                t0.elapsed().as_secs_f64(),
                memory_line()
            );
        }
        other => {
            eprintln!("unknown command {other:?}: use gen or read");
            std::process::exit(2);
        }
    }
    Ok(())
}
