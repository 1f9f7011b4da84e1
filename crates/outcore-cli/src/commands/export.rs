//! `outcore export STORE NAME FILE`: an array becomes a `.npy` file, a `.zarr` array or an
//! HDF5 dataset, streamed. zarr and HDF5 are written by the Python package (see
//! [`crate::convert`]); the rest of this comment is about `.npy` files.
//!
//! Everything is read from one snapshot (the head when the command starts), in parts of about
//! 64 MiB, each through a fresh read-only connection at that snapshot so that memory stays
//! bounded (mapped pages of finished parts are released, also for compressed stores). The
//! file is written under a temporary name in the target directory and renamed into place at
//! the end: an interrupted export leaves no partial FILE.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use outcore::array::Order;
use outcore::storage::Compression;

use super::Ctx;
use crate::catalog::Catalog;
use crate::convert::{self, Format};
use crate::dtype::Dtype;
use crate::error::{CliError, IoContext, Result};
use crate::npy;
use crate::output::{human_bytes, shape_str, Out};
use crate::rawio::{chunks, Mapped};
use crate::store::{Access, Store};

/// Arguments of `outcore export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The store: a directory, a postgresql:// url, or mem: (a fresh in-memory store).
    pub store: String,
    /// The array's name.
    pub name: String,
    /// The file to write: FILE.npy (replaced if it exists), DIR.zarr, FILE.h5 or
    /// FILE.h5:/group/dataset (added to an existing HDF5 file); zarr and HDF5 need Python
    /// with outcore and zarr or h5py ($OUTCORE_PYTHON, else python3).
    pub file: PathBuf,
    /// The dataset inside the HDF5 file (default: the array's name).
    #[arg(long, value_name = "PATH")]
    pub dataset: Option<String>,
    /// The zarr format version of a .zarr target: 2 or 3.
    #[arg(long, value_name = "2|3", value_parser = clap::value_parser!(u8).range(2..=3))]
    pub zarr_format: Option<u8>,
    /// Replace an existing .zarr target or HDF5 dataset (a .npy file is always replaced).
    #[arg(short, long)]
    pub force: bool,
}

/// Removes the temporary file unless the export completed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// NumPy marks data as Fortran-ordered only when it is not also C-contiguous: at least two
/// axes longer than one (and some data).
fn fortran_flag(order: Order, shape: &[u64]) -> bool {
    order == Order::F && shape.iter().filter(|&&d| d != 1).count() > 1 && !shape.contains(&0)
}

/// Runs `outcore export`.
pub fn run(args: &ExportArgs, ctx: &Ctx) -> Result<()> {
    let format = convert::format_of(&args.file, false);
    if format != Some(Format::Hdf5) && args.dataset.is_some() {
        return Err(CliError::Usage(format!(
            "--dataset applies to HDF5 files (.h5, .hdf5), not {}",
            args.file.display()
        )));
    }
    if format != Some(Format::Zarr) && args.zarr_format.is_some() {
        return Err(CliError::Usage(format!(
            "--zarr-format applies to .zarr targets, not {}",
            args.file.display()
        )));
    }
    match format {
        Some(_) => run_converted(args, ctx),
        None => run_npy(args, ctx),
    }
}

/// Exports to a zarr array or HDF5 dataset through `outcore.convert`.
fn run_converted(args: &ExportArgs, ctx: &Ctx) -> Result<()> {
    let mut argv: Vec<OsString> = vec![
        "export".into(),
        args.store.clone().into(),
        args.name.clone().into(),
        args.file.clone().into(),
    ];
    convert::option(&mut argv, "--dataset", args.dataset.as_ref());
    convert::option(
        &mut argv,
        "--zarr-format",
        args.zarr_format.map(|f| f.to_string()),
    );
    if args.force {
        argv.push("--force".into());
    }
    let done = convert::run(&argv, ctx)?;
    convert::print_done("export", &args.name, &done)
}

/// Exports to a `.npy` file.
fn run_npy(args: &ExportArgs, ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let at = store.storage().head()?;
    let catalog = Catalog::load(store.storage(), at)?;
    let meta = catalog.get(&args.name, &store.url)?.meta.clone();
    let dtype = Dtype::parse(&meta.dtype)
        .map_err(|e| CliError::runtime(format!("cannot export {:?} to .npy: {e}", args.name)))?;
    if dtype.itemsize != meta.itemsize {
        return Err(CliError::runtime(format!(
            "cannot export {:?}: its dtype {} has {} bytes per element, the array {}",
            args.name, meta.dtype, dtype.itemsize, meta.itemsize
        )));
    }
    let path = args.file.display().to_string();
    let dir = args
        .file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = args
        .file
        .file_name()
        .ok_or_else(|| CliError::runtime(format!("{path} is not a file name")))?;
    let mut temp = TempFile {
        path: dir.join(format!(
            ".{}.outcore-export-{}",
            file_name.to_string_lossy(),
            std::process::id()
        )),
        keep: false,
    };
    let mut w = BufWriter::with_capacity(
        1 << 20,
        File::create(&temp.path)
            .context(|| format!("creating a temporary file in {}", dir.display()))?,
    );
    let writing = || format!("writing {path}");
    w.write_all(&npy::header_bytes(
        &dtype,
        fortran_flag(meta.order, &meta.shape),
        &meta.shape,
    ))
    .context(writing)?;
    let nbytes = meta.nbytes();
    let bar = ctx.progress.bytes(nbytes, "export");
    for part in chunks(nbytes, meta.blksize) {
        let conn = store.db.connect_at(at)?;
        let array = conn.array(&args.name)?;
        let mapped = Mapped::new(&array, part.clone(), true)?;
        w.write_all(mapped.bytes()).context(writing)?;
        bar.inc(part.end - part.start);
    }
    let file = w
        .into_inner()
        .map_err(|e| CliError::runtime(format!("writing {path}: {}", e.error())))?;
    file.sync_all().context(writing)?;
    drop(file);
    std::fs::rename(&temp.path, &args.file).context(writing)?;
    temp.keep = true;
    bar.finish_and_clear();
    let mut out = Out::new();
    out.line(format!(
        "exported {}: shape {} dtype {} order {}, {} to {path}",
        args.name,
        shape_str(&meta.shape),
        meta.dtype,
        meta.order,
        human_bytes(nbytes)
    ))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_flag_like_numpy() {
        assert!(fortran_flag(Order::F, &[3, 4]));
        assert!(!fortran_flag(Order::C, &[3, 4]));
        assert!(!fortran_flag(Order::F, &[5]));
        assert!(!fortran_flag(Order::F, &[1, 5]));
        assert!(!fortran_flag(Order::F, &[]));
        assert!(!fortran_flag(Order::F, &[0, 5]));
    }
}
