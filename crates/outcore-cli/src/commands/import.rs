//! `outcore import STORE NAME FILE`: a `.npy` file, a `.zarr` array or an HDF5 dataset becomes
//! an array, streamed. zarr and HDF5 are converted by the Python package (see
//! [`crate::convert`]) in one transaction; the rest of this comment is about `.npy` files.
//!
//! The data is copied in parts of about 64 MiB (whole blocks), straight from the file into
//! the array's memory, and **each part is committed as its own transaction**
//! ("import NAME (part i/n)"). Uncommitted writes are private memory until commit, so one
//! transaction for a whole file bigger than RAM is not possible; memory stays bounded by one
//! part instead. The first part's transaction creates the array with its full shape (zeros);
//! an interrupted import therefore leaves the array with the parts committed so far and zeros
//! after them — the log shows how far it got, and running the import again with `--force`
//! replaces it. A fresh connection per part keeps decoded memory bounded for compressed stores
//! too.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use clap::Args;
use outcore::array::{Order, DEFAULT_BLKSIZE};
use outcore::db::BigArray;
use outcore::storage::{Compression, Oid, TxnMeta};

use super::Ctx;
use crate::convert;
use crate::error::{CliError, IoContext, Result};
use crate::npy;
use crate::output::{human_bytes, shape_str, Out};
use crate::rawio::{chunks, Mapped};
use crate::store::{commit, user, Store};
use crate::time::tid_hex;

/// Arguments of `outcore import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The store: a directory (created if missing), a postgresql:// url, or mem:.
    pub store: String,
    /// The name to store the array under.
    pub name: String,
    /// The NumPy .npy file (format version 1, 2 or 3), a zarr v2/v3 array (DIR.zarr) or an
    /// HDF5 dataset (FILE.h5 or FILE.h5:/group/dataset); zarr and HDF5 need Python with
    /// outcore and zarr or h5py ($OUTCORE_PYTHON, else python3).
    pub file: PathBuf,
    /// The dataset inside an HDF5 file (default: the file's only dataset).
    #[arg(long, value_name = "PATH")]
    pub dataset: Option<String>,
    /// Bytes per block: a multiple of 4096; K, M, G suffixes allowed (default 2M).
    #[arg(long, value_name = "BYTES", value_parser = parse_blksize)]
    pub blksize: Option<usize>,
    /// Replace an existing array of the same name.
    #[arg(short, long)]
    pub force: bool,
    /// Block compression when the store is created: none, lz4 or zstd.
    #[arg(long, value_name = "CODEC", default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Keep block bodies in an S3-compatible object store when the store is created:
    /// s3://bucket/prefix (endpoint, region and credentials from the AWS_* environment
    /// variables). The store records it; later commands need only the store's url.
    #[arg(long, value_name = "S3_URL")]
    pub blobs: Option<String>,
}

/// Parses a block size: bytes, or a number with a K, M or G suffix (powers of 1024).
pub fn parse_blksize(text: &str) -> Result<usize, String> {
    let (digits, mult) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1usize << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (bytes, or a number with K, M or G)"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes == 0 || bytes % 4096 != 0 {
        return Err(format!(
            "block size {text} is not a positive multiple of 4096"
        ));
    }
    Ok(bytes)
}

/// Parses a compression name.
pub fn parse_compression(text: &str) -> Result<Compression, String> {
    text.parse().map_err(|e: outcore::Error| e.to_string())
}

/// Runs `outcore import`.
pub fn run(args: &ImportArgs, ctx: &Ctx) -> Result<()> {
    match convert::format_of(&args.file, true) {
        Some(_) => run_converted(args, ctx),
        None if args.dataset.is_some() => Err(CliError::Usage(format!(
            "--dataset applies to HDF5 files (.h5, .hdf5), not {}",
            args.file.display()
        ))),
        None => run_npy(args, ctx),
    }
}

/// Imports a zarr array or HDF5 dataset through `outcore.convert`.
fn run_converted(args: &ImportArgs, ctx: &Ctx) -> Result<()> {
    let mut argv: Vec<OsString> = vec![
        "import".into(),
        args.store.clone().into(),
        args.name.clone().into(),
        args.file.clone().into(),
    ];
    convert::option(&mut argv, "--dataset", args.dataset.as_ref());
    convert::option(&mut argv, "--blksize", args.blksize.map(|b| b.to_string()));
    convert::option(&mut argv, "--blobs", args.blobs.as_ref());
    if args.compression != Compression::None {
        convert::option(
            &mut argv,
            "--compression",
            Some(args.compression.to_string()),
        );
    }
    if args.force {
        argv.push("--force".into());
    }
    let done = convert::run(&argv, ctx)?;
    convert::print_done("import", &args.name, &done)
}

/// Imports a `.npy` file, part by part.
fn run_npy(args: &ImportArgs, ctx: &Ctx) -> Result<()> {
    let path = args.file.display().to_string();
    let mut file = File::open(&args.file).context(|| format!("opening {path}"))?;
    let header =
        npy::read_header(&mut file).map_err(|e| CliError::runtime(format!("{path}: {e}")))?;
    let nbytes = header
        .data_bytes()
        .ok_or_else(|| CliError::runtime(format!("{path}: shape too large")))?;
    let file_len = file.metadata().context(|| format!("reading {path}"))?.len();
    let available = file_len.saturating_sub(header.data_offset);
    if available < nbytes {
        return Err(CliError::runtime(format!(
            "{path} is truncated: its shape {} of {} needs {nbytes} data bytes, it holds {available}",
            shape_str(&header.shape),
            header.dtype.descr
        )));
    }
    file.seek(SeekFrom::Start(header.data_offset))
        .context(|| format!("reading {path}"))?;

    let store = Store::create(&args.store, args.compression, args.blobs.clone())?;
    if !args.force && store.db.connect()?.contains(&args.name)? {
        return Err(CliError::runtime(format!(
            "{} already has an array named {:?} (use --force to replace it)",
            store.url, args.name
        )));
    }
    let order = if header.fortran_order {
        Order::F
    } else {
        Order::C
    };
    let blksize = args.blksize.unwrap_or(DEFAULT_BLKSIZE);
    let parts = chunks(nbytes, blksize);
    let n = parts.len().max(1);
    let describe = |i: usize| {
        if n == 1 {
            format!("import {}", args.name)
        } else {
            format!("import {} (part {}/{n})", args.name, i + 1)
        }
    };
    let bar = ctx.progress.bytes(nbytes, "import");
    let mut file_oid: Option<Oid> = None;
    let mut last_tid = None;
    for i in 0..n {
        let conn = store.db.connect()?;
        let array: BigArray = match file_oid {
            None => conn.create_raw(
                &args.name,
                &header.dtype.descr,
                header.dtype.itemsize,
                &header.shape,
                order,
                blksize,
            )?,
            Some(oid) => {
                let array = conn.array(&args.name)?;
                if array.meta()?.file != oid {
                    return Err(CliError::Conflict(format!(
                        "array {:?} was replaced by another writer during the import; \
                         parts 1..{i} of {n} were committed to the replaced array",
                        args.name
                    )));
                }
                array
            }
        };
        file_oid = Some(array.meta()?.file);
        if let Some(range) = parts.get(i) {
            let mut mapped = Mapped::new(&array, range.clone(), false)?;
            file.read_exact(mapped.bytes_mut()?)
                .context(|| format!("reading {path}"))?;
            bar.inc(range.end - range.start);
        }
        last_tid = Some(commit(&conn, TxnMeta::new(user(), describe(i)))?);
    }
    bar.finish_and_clear();
    let mut out = Out::new();
    out.line(format!(
        "imported {}: shape {} dtype {} order {}, {} in {n} transaction{} (last tid {})",
        args.name,
        shape_str(&header.shape),
        header.dtype.descr,
        order,
        human_bytes(nbytes),
        if n == 1 { "" } else { "s" },
        last_tid.map(tid_hex).unwrap_or_default()
    ))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blksizes() {
        assert_eq!(parse_blksize("4096"), Ok(4096));
        assert_eq!(parse_blksize("64K"), Ok(65536));
        assert_eq!(parse_blksize("2M"), Ok(2 << 20));
        assert_eq!(parse_blksize("1g"), Ok(1 << 30));
        for bad in [
            "",
            "0",
            "1000",
            "K",
            "-4096",
            "4096x",
            "99999999999999999999G",
        ] {
            assert!(parse_blksize(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_compression("zstd"), Ok(Compression::Zstd));
        assert!(parse_compression("gzip").is_err());
    }
}
