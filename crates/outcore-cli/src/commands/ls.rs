//! `outcore ls STORE`: the arrays of a store.

use clap::Args;
use outcore::storage::Compression;
use serde::Serialize;

use super::Ctx;
use crate::catalog::Catalog;
use crate::error::Result;
use crate::output::{human_bytes, shape_str, Out, Table};
use crate::store::{block_stats, ratio, ratio_text, scan_bar, Access, Store};

/// Arguments of `outcore ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The store: a directory, a postgresql:// url, or mem: (a fresh in-memory store).
    pub store: String,
    /// Print JSON (a list of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print sizes as exact byte counts instead of KiB, MiB, GiB.
    #[arg(short, long)]
    pub bytes: bool,
}

/// One array as `ls --json` prints it.
#[derive(Debug, Serialize)]
pub struct ArrayRow {
    /// Name in the root namespace.
    pub name: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// NumPy dtype descriptor.
    pub dtype: String,
    /// "C" or "F".
    pub order: String,
    /// Bytes per element.
    pub itemsize: usize,
    /// Logical size in bytes.
    pub nbytes: u64,
    /// Bytes stored for its blocks at head (holes cost nothing; compressed where that
    /// helped).
    pub stored_bytes: u64,
    /// stored_bytes / nbytes; null for an empty array.
    pub ratio: Option<f64>,
    /// Blocks covering the data.
    pub blocks: u64,
    /// Blocks never written (read as zeros).
    pub holes: u64,
}

/// Runs `outcore ls`.
pub fn run(args: &LsArgs, ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let storage = store.storage();
    let head = storage.head()?;
    let catalog = Catalog::load(storage, head)?;
    let total: u64 = catalog.entries.iter().map(|e| e.meta.nblocks()).sum();
    let bar = scan_bar(&ctx.progress, total);
    let mut rows = Vec::new();
    for entry in &catalog.entries {
        let stats = block_stats(&store.db, entry, head, &bar)?;
        rows.push(ArrayRow {
            name: entry.name.clone(),
            shape: entry.meta.shape.clone(),
            dtype: entry.meta.dtype.clone(),
            order: entry.meta.order.to_string(),
            itemsize: entry.meta.itemsize,
            nbytes: entry.meta.nbytes(),
            stored_bytes: stats.stored_bytes,
            ratio: ratio(stats.stored_bytes, entry.meta.nbytes()),
            blocks: stats.blocks,
            holes: stats.holes,
        });
    }
    bar.finish_and_clear();
    let mut out = Out::new();
    if args.json {
        out.json(&rows)?;
        return out.flush();
    }
    let size = |n: u64| {
        if args.bytes {
            n.to_string()
        } else {
            human_bytes(n)
        }
    };
    let mut table = Table::new(&[
        "NAME", "SHAPE", "DTYPE", "ORDER", ">SIZE", ">STORED", ">RATIO",
    ]);
    for r in &rows {
        table.row(vec![
            r.name.clone(),
            shape_str(&r.shape),
            r.dtype.clone(),
            r.order.clone(),
            size(r.nbytes),
            size(r.stored_bytes),
            r.ratio.map_or_else(|| "-".into(), ratio_text),
        ]);
    }
    table.write(&mut out)?;
    out.flush()
}
