//! Checking `s![...]` slices against a shape (ndarray would panic) and finding the part of
//! the major axis a slice touches (only those blocks get mapped).

use std::ops::Range;

use ndarray::SliceInfoElem;

use crate::{Error, Result};

/// Resolves a possibly negative index against `len`.
fn resolve(i: isize, len: u64) -> Option<u64> {
    if i < 0 {
        len.checked_sub(i.unsigned_abs() as u64)
    } else {
        Some(i as u64)
    }
}

/// Validates `elems` against `shape` and returns, for each array axis, the index range it
/// touches (empty range if the slice selects nothing).
pub(crate) fn touched_ranges(shape: &[u64], elems: &[SliceInfoElem]) -> Result<Vec<Range<u64>>> {
    let mut out: Vec<Range<u64>> = shape.iter().map(|&d| 0..d).collect();
    let mut axis = 0usize;
    for elem in elems {
        match *elem {
            SliceInfoElem::NewAxis => continue,
            _ if axis >= shape.len() => {
                return Err(Error::IndexOutOfBounds(format!(
                    "too many indices for an array with {} dimensions",
                    shape.len()
                )))
            }
            SliceInfoElem::Index(i) => {
                let len = shape[axis];
                let at = resolve(i, len).filter(|&x| x < len).ok_or_else(|| {
                    Error::IndexOutOfBounds(format!(
                        "index {i} is out of bounds for axis {axis} with size {len}"
                    ))
                })?;
                out[axis] = at..at + 1;
            }
            SliceInfoElem::Slice { start, end, step } => {
                let len = shape[axis];
                if step == 0 {
                    return Err(Error::InvalidArgument("slice step cannot be zero".into()));
                }
                let bad = |what: &str, v: isize| {
                    Error::IndexOutOfBounds(format!(
                        "slice {what} {v} is out of bounds for axis {axis} with size {len}"
                    ))
                };
                let s = resolve(start, len)
                    .filter(|&x| x <= len)
                    .ok_or_else(|| bad("start", start))?;
                let e = match end {
                    None => len,
                    Some(e) => resolve(e, len)
                        .filter(|&x| x <= len)
                        .ok_or_else(|| bad("end", e))?,
                };
                out[axis] = if s < e { s..e } else { s..s };
            }
        }
        axis += 1;
    }
    Ok(out)
}
