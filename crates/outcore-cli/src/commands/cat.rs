//! `outcore cat STORE NAME[INDEX]`: print part of a numeric array.
//!
//! The index uses NumPy's basic-indexing syntax (integers, negative integers,
//! `start:stop:step`, `...`). Values print NumPy-style in nested brackets (not column-aligned),
//! each in its shortest round-trip form; `--json` prints nested JSON lists.

use clap::Args;
use outcore::storage::Compression;

use super::Ctx;
use crate::catalog::Catalog;
use crate::dtype::{Dtype, Scalar};
use crate::error::{CliError, Result};
use crate::output::Out;
use crate::rawio::Mapped;
use crate::slice::{parse_target, resolve, AxisSel, Target};
use crate::store::{Access, Store};

/// Arguments of `outcore cat`.
#[derive(Debug, Args)]
pub struct CatArgs {
    /// The store: a directory, a postgresql:// url, or mem: (a fresh in-memory store).
    pub store: String,
    /// The array and what to print: NAME (all of it), NAME[2:10, ::2], NAME[-1], NAME[..., 0].
    /// Quote it for the shell.
    #[arg(value_parser = parse_target)]
    pub target: Target,
    /// Print JSON (nested lists; nan, inf and -inf as strings) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `outcore cat`.
pub fn run(args: &CatArgs, _ctx: &Ctx) -> Result<()> {
    let store = Store::open(&args.store, Access::Existing, Compression::None)?;
    let conn = store.db.connect()?;
    let at = conn.tid()?;
    let catalog = Catalog::load(store.storage(), at)?;
    let name = &args.target.name;
    let meta = catalog.get(name, &store.url)?.meta.clone();
    let scalar = Dtype::parse(&meta.dtype)
        .ok()
        .filter(|d| d.itemsize == meta.itemsize)
        .and_then(|d| d.scalar)
        .ok_or_else(|| {
            CliError::runtime(format!(
                "cat prints numeric arrays only (bool, int, uint, float); {name:?} has dtype {} \
                 (use `outcore export` to get its data)",
                meta.dtype
            ))
        })?;
    let sel = resolve(&args.target.items, &meta.shape)
        .map_err(|e| CliError::runtime(format!("{name}: {e}")))?;
    let strides = meta.strides_bytes();
    let array = conn.array(name)?;

    // Map the part of the major axis the selection touches, and read what it selects.
    let (lo, hi, step) = if meta.shape.is_empty() {
        (0, 0, 1)
    } else {
        let major = sel[meta.major_axis()];
        match major.bounds() {
            None => (0, 0, 0), // nothing selected
            Some((lo, hi)) => (
                lo,
                hi,
                match major {
                    AxisSel::Range { step, .. } => step.unsigned_abs(),
                    AxisSel::Index(_) => 1,
                },
            ),
        }
    };
    let stride = if meta.shape.is_empty() {
        meta.nbytes()
    } else {
        meta.major_stride_bytes()
    };
    let mapped = if step == 0 || stride == 0 {
        None
    } else {
        let mapped = Mapped::new(&array, lo * stride..(hi + 1) * stride, false)?;
        if step == 1 || (hi + 1 - lo) * stride <= 64 << 20 {
            array.load(lo..hi + 1)?;
        } else {
            let mut i = lo;
            while i <= hi {
                array.load(i..i + 1)?;
                i += step;
            }
        }
        Some(mapped)
    };

    let base: u64 = sel
        .iter()
        .zip(&strides)
        .filter_map(|(s, &st)| match s {
            AxisSel::Index(i) => Some(i * st as u64),
            AxisSel::Range { .. } => None,
        })
        .sum();
    let axes: Vec<(AxisSel, u64)> = sel
        .iter()
        .zip(&strides)
        .filter(|(s, _)| matches!(s, AxisSel::Range { .. }))
        .map(|(s, &st)| (*s, st as u64))
        .collect();
    let printer = Printer {
        mapped: mapped.as_ref(),
        scalar,
        axes: &axes,
        json: args.json,
    };
    let mut out = Out::new();
    printer.print(&mut out, 0, base)?;
    out.line("")?;
    out.flush()
}

/// Prints the selected elements recursively, one nesting level per kept axis.
struct Printer<'a> {
    mapped: Option<&'a Mapped<'a>>,
    scalar: Scalar,
    axes: &'a [(AxisSel, u64)],
    json: bool,
}

impl Printer<'_> {
    fn print(&self, out: &mut Out, depth: usize, offset: u64) -> Result<()> {
        let n = self.axes.len();
        if depth == n {
            let mapped = self
                .mapped
                .ok_or_else(|| CliError::runtime("element outside the mapped range"))?;
            let value = self.scalar.decode(mapped.at(offset, self.scalar.size)?);
            return out.text(&if self.json {
                value.json()
            } else {
                value.text()
            });
        }
        let (sel, stride) = self.axes[depth];
        let len = match sel {
            AxisSel::Range { len, .. } => len,
            AxisSel::Index(_) => 1,
        };
        let separator = if self.json {
            ",".to_string()
        } else if depth + 1 == n {
            " ".to_string()
        } else {
            format!("{}{}", "\n".repeat(n - 1 - depth), " ".repeat(depth + 1))
        };
        out.text("[")?;
        for k in 0..len {
            if k > 0 {
                out.text(&separator)?;
            }
            self.print(out, depth + 1, offset + sel.at(k) * stride)?;
        }
        out.text("]")
    }
}
