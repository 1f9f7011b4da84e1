//! The NumPy `.npy` format, versions 1.0, 2.0 and 3.0: the header (magic, version, header
//! length, and a Python dict with `descr`, `fortran_order` and `shape`). The data that follows
//! is the raw element bytes in C or Fortran order, streamed by the callers.
//!
//! Headers are written exactly as `numpy.save` writes them (same dict text, the spare space
//! NumPy leaves for growing the shape, 64-byte alignment, the lowest version that can hold the
//! header), so a file exported by `outcore` is byte for byte what NumPy would write.
//!
//! A crate was not used: the header is a few dozen lines, and the crates on offer parse
//! `descr` into their own type systems, while outcore must pass it through unchanged
//! (structured dtypes included).

use std::io::Read;

use crate::dtype::Dtype;
use crate::pyliteral::{self, Value};

/// The 6 bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest header accepted when reading (NumPy's own headers are far smaller).
const MAX_HEADER: usize = 16 << 20;

/// NumPy leaves room for the growable axis to reach this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// The header of a `.npy` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The element type.
    pub dtype: Dtype,
    /// True if the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array's shape.
    pub shape: Vec<u64>,
    /// Where the data starts in the file.
    pub data_offset: u64,
}

impl Header {
    /// Bytes of data the header announces (`None` on overflow).
    pub fn data_bytes(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.dtype.itemsize as u64, |acc, &d| acc.checked_mul(d))
    }
}

/// Reads and checks the header at the start of `r`, leaving `r` at the first data byte.
pub fn read_header<R: Read>(r: &mut R) -> Result<Header, String> {
    let mut prefix = [0u8; 8];
    r.read_exact(&mut prefix)
        .map_err(|_| "not a .npy file (too short)".to_string())?;
    if &prefix[..6] != MAGIC {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (major, minor) = (prefix[6], prefix[7]);
    let len_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let mut len_buf = [0u8; 4];
    r.read_exact(&mut len_buf[..len_bytes])
        .map_err(|_| "truncated .npy header".to_string())?;
    let len = u32::from_le_bytes(len_buf) as usize;
    if len > MAX_HEADER {
        return Err(format!(".npy header of {len} bytes is too large"));
    }
    let mut raw = vec![0u8; len];
    r.read_exact(&mut raw)
        .map_err(|_| "truncated .npy header".to_string())?;
    let text: String = if major == 3 {
        String::from_utf8(raw).map_err(|_| ".npy header is not UTF-8".to_string())?
    } else {
        raw.iter().map(|&b| char::from(b)).collect() // latin-1
    };
    let dict = pyliteral::parse(&text).map_err(|e| format!("bad .npy header: {e}"))?;
    if !matches!(dict, Value::Dict(_)) {
        return Err("bad .npy header: not a dict".into());
    }
    let field = |name: &str| {
        dict.get(name)
            .ok_or_else(|| format!("bad .npy header: no {name:?} key"))
    };
    let descr = field("descr")?.clone();
    let fortran_order = match field("fortran_order")? {
        Value::Bool(b) => *b,
        other => {
            return Err(format!(
                "bad .npy header: fortran_order is {}",
                other.repr()
            ))
        }
    };
    let shape = match field("shape")? {
        Value::Tuple(dims) => dims
            .iter()
            .map(|d| match d {
                Value::Int(n) => u64::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| "bad .npy header: shape is not a tuple of sizes".to_string())?,
        other => return Err(format!("bad .npy header: shape is {}", other.repr())),
    };
    let dtype = Dtype::from_value(descr)?;
    let header = Header {
        dtype,
        fortran_order,
        shape,
        data_offset: (8 + len_bytes + len) as u64,
    };
    if header.data_bytes().is_none() {
        return Err(format!("shape {:?} is too large", header.shape));
    }
    Ok(header)
}

/// The complete header (magic through the final newline) NumPy writes for an array of
/// `dtype`, `shape` and order.
pub fn header_bytes(dtype: &Dtype, fortran_order: bool, shape: &[u64]) -> Vec<u8> {
    let shape_repr = Value::Tuple(shape.iter().map(|&d| Value::Int(i128::from(d))).collect());
    let mut dict = format!(
        "{{'descr': {}, 'fortran_order': {}, 'shape': {}, }}",
        dtype.value.repr(),
        if fortran_order { "True" } else { "False" },
        shape_repr.repr()
    );
    if !shape.is_empty() {
        let growth = if fortran_order {
            shape[shape.len() - 1]
        } else {
            shape[0]
        };
        let digits = growth.to_string().len();
        dict.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits)));
    }
    let latin1: Option<Vec<u8>> = dict.chars().map(|c| u8::try_from(c as u32).ok()).collect();
    let (body, wide, major) = match latin1 {
        Some(bytes) if bytes.len() + 1 + 64 <= 0xffff => (bytes, false, 1),
        Some(bytes) => (bytes, true, 2),
        None => (dict.into_bytes(), true, 3),
    };
    let prefix = if wide { 12 } else { 10 };
    let hlen = body.len() + 1;
    let pad = 64 - (prefix + hlen) % 64;
    let total_len = hlen + pad;
    let mut out = Vec::with_capacity(prefix + total_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[major, 0]);
    if wide {
        out.extend_from_slice(&(total_len as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(total_len as u16).to_le_bytes());
    }
    out.extend_from_slice(&body);
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_identical_header() {
        // np.save(f, np.zeros((3, 4))) writes exactly this header (128 bytes).
        let h = header_bytes(&Dtype::parse("<f8").unwrap(), false, &[3, 4]);
        let mut expected = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        expected.extend_from_slice(b"{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }");
        expected.resize(127, b' ');
        expected.push(b'\n');
        assert_eq!(h, expected);
        let back = read_header(&mut &h[..]).unwrap();
        assert_eq!(back.shape, vec![3, 4]);
        assert_eq!(back.data_offset, 128);
        assert_eq!(back.dtype.descr, "<f8");
        assert!(!back.fortran_order);
    }

    #[test]
    fn versions_and_errors() {
        let s = Dtype::parse("[('\u{1f600}', '<i4')]").unwrap();
        let h = header_bytes(&s, true, &[2, 5]);
        assert_eq!(&h[6..8], &[3, 0]);
        assert_eq!(h.len() % 64, 0);
        let back = read_header(&mut &h[..]).unwrap();
        assert_eq!(back.dtype, s);
        assert!(back.fortran_order);
        for bad in [
            &b"PK\x03\x04"[..],
            &b"\x93NUMPY\x09\x00\x10\x00"[..],
            &b"\x93NUMPY\x01\x00\x10\x00{}"[..],
        ] {
            assert!(read_header(&mut &bad[..]).is_err());
        }
        let mut no_shape = b"\x93NUMPY\x01\x00\x22\x00".to_vec();
        no_shape.extend_from_slice(b"{'descr': '<f8', 'fortran_order': 0}");
        assert!(read_header(&mut &no_shape[..]).is_err());
    }
}
