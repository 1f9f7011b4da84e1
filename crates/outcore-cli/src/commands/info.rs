//! `outcore info STORE NAME`: one array in detail.

use clap::Args;
use outcore::storage::{Compression, Tid};
use serde::Serialize;

use super::Ctx;
use crate::catalog::Catalog;
use crate::error::Result;
use crate::output::{human_bytes, shape_str, Out};
use crate::store::{block_stats, ratio, ratio_text, scan_bar, Access, Store};
use crate::time::{iso_utc, tid_hex};

/// Arguments of `outcore info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The store: a directory, a postgresql:// url, or mem: (a fresh in-memory store).
    pub store: String,
    /// The array's name.
    pub name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A tid with its time.
#[derive(Debug, Serialize)]
pub struct TidTime {
    /// 16 hexadecimal digits.
    pub tid: String,
    /// UTC, ISO-8601.
    pub time: String,
}

impl TidTime {
    /// `tid` as hex and time.
    pub fn new(tid: Tid) -> Self {
        TidTime {
            tid: tid_hex(tid),
            time: iso_utc(tid),
        }
    }
}

/// What `info --json` prints.
#[derive(Debug, Serialize)]
pub struct Info {
    /// Name in the root namespace.
    pub name: String,
    /// NumPy dtype descriptor.
    pub dtype: String,
    /// Bytes per element.
    pub itemsize: usize,
    /// Shape.
    pub shape: Vec<u64>,
    /// "C" or "F".
    pub order: String,
    /// Bytes per block.
    pub blksize: usize,
    /// The block file's oid.
    pub file_oid: u64,
    /// The metadata record's oid.
    pub meta_oid: u64,
    /// Logical size in bytes.
    pub nbytes: u64,
    /// Blocks covering the data.
    pub blocks: u64,
    /// Blocks never written (read as zeros, cost nothing).
    pub holes: u64,
    /// Bytes stored for the blocks at head (compressed where compression helped).
    pub stored_bytes: u64,
    /// stored_bytes / nbytes; null for an empty array.
    pub ratio: Option<f64>,
    /// The store's block compression.
    pub compression: String,
    /// The newest version among the array's blocks and metadata record.
    pub last_change: Option<TidTime>,
}

/// Runs `outcore info`.
pub fn run(args: &InfoArgs, ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let storage = store.storage();
    let head = storage.head()?;
    let catalog = Catalog::load(storage, head)?;
    let entry = catalog.get(&args.name, &store.url)?;
    let m = &entry.meta;
    let bar = scan_bar(&ctx.progress, m.nblocks());
    let stats = block_stats(&store.db, entry, head, &bar)?;
    bar.finish_and_clear();
    let nbytes = m.nbytes();
    let info = Info {
        name: entry.name.clone(),
        dtype: m.dtype.clone(),
        itemsize: m.itemsize,
        shape: m.shape.clone(),
        order: m.order.to_string(),
        blksize: m.blksize,
        file_oid: m.file.0,
        meta_oid: entry.meta_oid.0,
        nbytes,
        blocks: stats.blocks,
        holes: stats.holes,
        stored_bytes: stats.stored_bytes,
        ratio: ratio(stats.stored_bytes, nbytes),
        compression: store.compression_name(),
        last_change: stats.last_change.map(TidTime::new),
    };
    let mut out = Out::new();
    if args.json {
        out.json(&info)?;
        return out.flush();
    }
    let bytes = |n: u64| format!("{n} bytes ({})", human_bytes(n));
    let lines = [
        ("name", info.name.clone()),
        ("dtype", info.dtype.clone()),
        ("itemsize", info.itemsize.to_string()),
        ("shape", shape_str(&info.shape)),
        ("order", info.order.clone()),
        ("size", bytes(nbytes)),
        ("blksize", bytes(info.blksize as u64)),
        ("file oid", info.file_oid.to_string()),
        ("metadata oid", info.meta_oid.to_string()),
        (
            "blocks",
            format!(
                "{} ({} holes, {} stored)",
                info.blocks,
                info.holes,
                info.blocks - info.holes
            ),
        ),
        ("stored", bytes(info.stored_bytes)),
        (
            "ratio",
            info.ratio.map_or_else(
                || "n/a (empty array)".to_string(),
                |r| format!("{} (stored / logical)", ratio_text(r)),
            ),
        ),
        ("compression", info.compression.clone()),
        (
            "last change",
            info.last_change
                .as_ref()
                .map_or_else(|| "never".to_string(), |t| format!("{} {}", t.tid, t.time)),
        ),
    ];
    for (key, value) in lines {
        out.line(format!("{key:<13} {value}"))?;
    }
    out.flush()
}
