//! zarr and HDF5 for `outcore import` / `outcore export`, done by the Python package.
//!
//! A `.zarr` directory or an `.h5`/`.hdf5` file (optionally `FILE.h5:/group/ds`) is converted
//! by `outcore.convert` of the outcore Python package, where zarr-python and h5py do the
//! format work — the same code as `outcore.from_zarr`/`to_zarr`/`from_hdf5`/`to_hdf5`, so the
//! command and the Python API write identical files and read each other's attributes. The
//! interpreter is `$OUTCORE_PYTHON`, else `python3` on the PATH. It reports on stdout, one
//! JSON object a line: `{"progress": [done, total]}`, then `{"done": {...}}` or
//! `{"error": "...", "exit": code}`; its stderr is the user's.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use indicatif::ProgressBar;
use serde_json::Value;

use crate::commands::Ctx;
use crate::error::{exit, CliError, Result};
use crate::output::{human_bytes, shape_str, Out};

/// Runs `outcore.convert` with the arguments after `-c`, and reports an `ImportError` of
/// outcore itself as an error record naming what to install.
const BOOTSTRAP: &str = r#"
import json, sys
try:
    from outcore import convert
except ImportError as e:
    py = sys.executable
    print(json.dumps({"error": f"{py} cannot import outcore.convert ({e}): install it with "
                      f"`{py} -m pip install 'outcore[zarr,hdf5]'`", "exit": 1,
                      "missing": True}), flush=True)
    sys.exit(1)
sys.exit(convert.main(["--json", *sys.argv[1:]]))
"#;

/// The formats converted through Python.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A zarr (v2 or v3) array: a directory.
    Zarr,
    /// An HDF5 dataset: a file, with the dataset after a `:` or in `--dataset`.
    Hdf5,
}

/// The format `path` names: `FILE.h5`/`FILE.hdf5` (with or without `:/dataset`), a directory
/// ending in `.zarr`, or — when `existing_dir_is_zarr`, for reading — any directory. `None`:
/// a `.npy` file, done natively.
pub fn format_of(path: &Path, existing_dir_is_zarr: bool) -> Option<Format> {
    let text = path.to_string_lossy().to_lowercase();
    let hdf5 = [".h5", ".hdf5"].iter().any(|ext| {
        text.match_indices(ext).any(|(i, _)| {
            let rest = &text[i + ext.len()..];
            rest.is_empty() || rest.starts_with(':')
        })
    });
    if hdf5 {
        Some(Format::Hdf5)
    } else if text.trim_end_matches('/').ends_with(".zarr")
        || (existing_dir_is_zarr && path.is_dir())
    {
        Some(Format::Zarr)
    } else {
        None
    }
}

/// The interpreter: `$OUTCORE_PYTHON` if set and not empty, else `python3`.
fn python() -> OsString {
    std::env::var_os("OUTCORE_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// What the converter said last.
#[derive(Default)]
struct Outcome {
    done: Option<Value>,
    error: Option<(String, i64, bool)>,
}

/// Runs `python -m outcore.convert ARGS` (`args[0]` is `import` or `export`), showing its
/// progress as a bar; returns its `done` record.
pub fn run(args: &[OsString], ctx: &Ctx) -> Result<Value> {
    let py = python();
    let shown = py.to_string_lossy().into_owned();
    let mut child = Command::new(&py)
        .arg("-c")
        .arg(BOOTSTRAP)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CliError::runtime(format!(
                "cannot run the Python interpreter {shown:?} ({e}): zarr and HDF5 files are \
                 converted by the outcore Python package; set OUTCORE_PYTHON to a Python with \
                 `pip install 'outcore[zarr,hdf5]'`"
            ))
        })?;
    let verb = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut outcome = Outcome::default();
    let mut bar: Option<ProgressBar> = None;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| {
                CliError::runtime(format!(
                    "reading the output of {shown} -m outcore.convert: {e}"
                ))
            })?;
            read_record(&line, &mut outcome, &mut bar, ctx, &verb);
        }
    }
    let status = child
        .wait()
        .map_err(|e| CliError::runtime(format!("waiting for {shown}: {e}")))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match (outcome.error, outcome.done) {
        (Some((message, code, missing)), _) => {
            let message = if missing {
                format!(
                    "{message} (outcore runs {shown} for zarr and HDF5 files; set \
                     OUTCORE_PYTHON to choose another interpreter)"
                )
            } else {
                message
            };
            Err(match code as i32 {
                exit::USAGE => CliError::Usage(message),
                exit::CONFLICT => CliError::Conflict(message),
                _ => CliError::Runtime(message),
            })
        }
        (None, Some(done)) if status.success() => Ok(done),
        _ => Err(CliError::runtime(format!(
            "{shown} -m outcore.convert {verb} failed ({status}); its messages are above"
        ))),
    }
}

/// Takes in one line of the converter's output; lines that are not its records (something
/// else printing to stdout) are passed on to stderr.
fn read_record(
    line: &str,
    outcome: &mut Outcome,
    bar: &mut Option<ProgressBar>,
    ctx: &Ctx,
    verb: &str,
) {
    let record: Value = match serde_json::from_str(line) {
        Ok(Value::Object(map)) => Value::Object(map),
        _ => {
            let _ = writeln!(std::io::stderr(), "{line}");
            return;
        }
    };
    if let Some([done, total]) = record["progress"].as_array().map(Vec::as_slice) {
        let (done, total) = (done.as_u64().unwrap_or(0), total.as_u64().unwrap_or(0));
        bar.get_or_insert_with(|| ctx.progress.bytes(total, verb))
            .set_position(done);
    } else if let Some(message) = record["error"].as_str() {
        let code = record["exit"].as_i64().unwrap_or(exit::RUNTIME.into());
        let missing = record["missing"].as_bool().unwrap_or(false);
        outcome.error = Some((message.to_string(), code, missing));
    } else if !record["done"].is_null() {
        outcome.done = Some(record["done"].clone());
    }
}

/// Prints the one-line summary of a conversion, like the `.npy` import and export:
/// `imported A: shape (3, 4) dtype <f8 order C, 96 B from a.zarr (tid ...)`.
pub fn print_done(verb: &str, name: &str, done: &Value) -> Result<()> {
    let shape: Vec<u64> = done["shape"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let text = |key: &str| done[key].as_str().unwrap_or("?").to_string();
    let place = if verb == "import" {
        format!("from {} (tid {})", text("source"), text("tid"))
    } else {
        format!("to {}", text("target"))
    };
    let mut out = Out::new();
    out.line(format!(
        "{verb}ed {name}: shape {} dtype {} order {}, {} {place}",
        shape_str(&shape),
        text("dtype"),
        text("order"),
        human_bytes(done["nbytes"].as_u64().unwrap_or(0)),
    ))?;
    out.flush()
}

/// `--flag value` as arguments, when `value` is given.
pub fn option(args: &mut Vec<OsString>, flag: &str, value: Option<impl AsRef<OsStr>>) {
    if let Some(value) = value {
        args.push(flag.into());
        args.push(value.as_ref().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_name() {
        let f = |p: &str| format_of(Path::new(p), false);
        assert_eq!(f("a.zarr"), Some(Format::Zarr));
        assert_eq!(f("dir/a.ZARR/"), Some(Format::Zarr));
        assert_eq!(f("a.h5"), Some(Format::Hdf5));
        assert_eq!(f("a.HDF5:/grp/ds"), Some(Format::Hdf5));
        assert_eq!(f("x.h5py/a.h5:ds"), Some(Format::Hdf5));
        assert_eq!(f("a.npy"), None);
        assert_eq!(f("a.h5x"), None);
        assert_eq!(f("."), None);
        assert_eq!(format_of(Path::new("."), true), Some(Format::Zarr));
    }
}
