//! NumPy dtype descriptors as outcore stores them (`dtype.str` such as `<f8`, or the repr of
//! the `.npy` descr list for structured dtypes): element size, and decoding of numeric scalars.

use crate::pyliteral::{self, Value};

/// What kind of number a simple dtype holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `b1`.
    Bool,
    /// `i1`, `i2`, `i4`, `i8`.
    Int,
    /// `u1`, `u2`, `u4`, `u8`.
    UInt,
    /// `f2`, `f4`, `f8`.
    Float,
}

/// A numeric element type that `outcore cat` can print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scalar {
    /// The kind of number.
    pub kind: Kind,
    /// Bytes per element.
    pub size: usize,
    /// True for big-endian (`>`) data.
    pub big_endian: bool,
}

/// A parsed dtype descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dtype {
    /// The descriptor in its canonical text form (what outcore stores).
    pub descr: String,
    /// The `.npy` header value for `descr`: a string, or the list of a structured dtype.
    pub value: Value,
    /// Bytes per element.
    pub itemsize: usize,
    /// Set for dtypes `cat` can print.
    pub scalar: Option<Scalar>,
}

impl Dtype {
    /// Parses a descriptor stored in array metadata.
    pub fn parse(descr: &str) -> Result<Dtype, String> {
        let value = if descr.trim_start().starts_with('[') {
            pyliteral::parse(descr)
                .map_err(|e| format!("dtype {descr:?} is not a NumPy descriptor: {e}"))?
        } else {
            Value::Str(descr.to_string())
        };
        Dtype::from_value(value)
    }

    /// The dtype of a `.npy` header's `descr` value.
    pub fn from_value(value: Value) -> Result<Dtype, String> {
        let itemsize = itemsize_of(&value)?;
        if itemsize == 0 {
            return Err(format!(
                "dtype {} has no bytes per element; outcore cannot store it",
                value.repr()
            ));
        }
        let (descr, scalar) = match &value {
            Value::Str(s) => (s.clone(), scalar_of(s)),
            other => (other.repr(), None),
        };
        Ok(Dtype {
            descr,
            value,
            itemsize,
            scalar,
        })
    }
}

/// Splits a typestr such as `<f8`, `|S10`, `<M8[ns]` into byte order, kind and count.
fn split_typestr(s: &str) -> Result<(char, char, usize), String> {
    let bad = || format!("{s:?} is not a NumPy type string");
    let mut chars = s.chars();
    let first = chars.next().ok_or_else(bad)?;
    let (order, rest) = if "<>|=".contains(first) {
        (first, &s[1..])
    } else {
        ('|', s)
    };
    let mut rest_chars = rest.chars();
    let kind = rest_chars.next().ok_or_else(bad)?;
    let tail = rest_chars.as_str();
    let digits_end = tail
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(tail.len());
    let (digits, unit) = tail.split_at(digits_end);
    if !(unit.is_empty()
        || (matches!(kind, 'M' | 'm') && unit.starts_with('[') && unit.ends_with(']')))
    {
        return Err(bad());
    }
    let count = if digits.is_empty() {
        match kind {
            'b' | '?' => 1,
            _ => return Err(bad()),
        }
    } else {
        digits.parse::<usize>().map_err(|_| bad())?
    };
    Ok((order, kind, count))
}

/// Bytes per element of a simple typestr.
fn typestr_size(s: &str) -> Result<usize, String> {
    // Object typestrs (`|O`) have no element size, so check them before parsing one.
    if s.trim_start_matches(['<', '>', '|', '=']).starts_with('O') {
        return Err(format!(
            "dtype {s:?} holds Python objects (an object array): objects are pointers into \
             one process's memory and cannot be stored; convert the data to fixed-size types \
             (numbers, 'S' or 'U' strings, structured) first"
        ));
    }
    let (_, kind, count) = split_typestr(s)?;
    match kind {
        'b' | '?' | 'i' | 'u' | 'f' | 'c' | 'V' | 'S' | 'a' | 'M' | 'm' => Ok(count),
        'U' => count
            .checked_mul(4)
            .ok_or_else(|| format!("dtype {s:?} is too large")),
        _ => Err(format!("{s:?} is not a NumPy type string")),
    }
}

/// Bytes per element of a descr value (string or structured list).
fn itemsize_of(value: &Value) -> Result<usize, String> {
    match value {
        Value::Str(s) => typestr_size(s),
        Value::List(fields) => {
            let mut total: usize = 0;
            for field in fields {
                total = total
                    .checked_add(field_size(field)?)
                    .ok_or("structured dtype too large")?;
            }
            Ok(total)
        }
        other => Err(format!("{} is not a dtype descriptor", other.repr())),
    }
}

/// Bytes of one field `(name, format[, shape])` of a structured descr.
fn field_size(field: &Value) -> Result<usize, String> {
    let bad = || format!("{} is not a structured dtype field", field.repr());
    let Value::Tuple(parts) = field else {
        return Err(bad());
    };
    let (name, format, shape) = match parts.as_slice() {
        [n, f] => (n, f, None),
        [n, f, s] => (n, f, Some(s)),
        _ => return Err(bad()),
    };
    match name {
        Value::Str(_) => {}
        Value::Tuple(t) if t.len() == 2 && t.iter().all(|v| matches!(v, Value::Str(_))) => {}
        _ => return Err(bad()),
    }
    let size = itemsize_of(format)?;
    let count: u64 = match shape {
        None => 1,
        Some(Value::Int(n)) => u64::try_from(*n).map_err(|_| bad())?,
        Some(Value::Tuple(dims)) => dims.iter().try_fold(1u64, |acc, d| match d {
            Value::Int(n) => u64::try_from(*n)
                .ok()
                .and_then(|n| acc.checked_mul(n))
                .ok_or_else(bad),
            _ => Err(bad()),
        })?,
        Some(_) => return Err(bad()),
    };
    usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(size))
        .ok_or_else(|| "structured dtype too large".to_string())
}

/// The printable numeric scalar of a simple typestr, if it is one.
fn scalar_of(s: &str) -> Option<Scalar> {
    let (order, kind, size) = split_typestr(s).ok()?;
    let kind = match (kind, size) {
        ('b' | '?', 1) => Kind::Bool,
        ('i', 1 | 2 | 4 | 8) => Kind::Int,
        ('u', 1 | 2 | 4 | 8) => Kind::UInt,
        ('f', 2 | 4 | 8) => Kind::Float,
        _ => return None,
    };
    let big_endian = match order {
        '>' => true,
        '=' => cfg!(target_endian = "big"),
        _ => false,
    };
    Some(Scalar {
        kind,
        size,
        big_endian,
    })
}

/// One decoded element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A float (f2 and f4 are widened exactly), with its original size for printing.
    Float(f64, usize),
}

impl Scalar {
    /// Decodes one element from `bytes` (exactly `self.size` long).
    pub fn decode(&self, bytes: &[u8]) -> Number {
        let mut buf = [0u8; 8];
        let n = self.size.min(8).min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        if self.big_endian {
            buf[..n].reverse();
        }
        let raw = u64::from_le_bytes(buf);
        let bits = 8 * n as u32;
        match self.kind {
            Kind::Bool => Number::Bool(raw != 0),
            Kind::UInt => Number::UInt(raw),
            Kind::Int => {
                let shift = 64 - bits.max(8);
                Number::Int(((raw << shift) as i64) >> shift)
            }
            Kind::Float => Number::Float(
                match n {
                    2 => f16_to_f64(raw as u16),
                    4 => f64::from(f32::from_bits(raw as u32)),
                    _ => f64::from_bits(raw),
                },
                n,
            ),
        }
    }
}

/// IEEE 754 half precision to double (exact).
fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        0x1f if frac == 0.0 => sign * f64::INFINITY,
        0x1f => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

impl Number {
    /// The element as text: `True`/`False`, integers, floats in shortest round-trip form
    /// (`nan`, `inf`, `-inf` for the special values).
    pub fn text(&self) -> String {
        match *self {
            Number::Bool(b) => if b { "True" } else { "False" }.into(),
            Number::Int(i) => i.to_string(),
            Number::UInt(u) => u.to_string(),
            Number::Float(f, size) => float_text(f, size),
        }
    }

    /// The element as a JSON value: `true`/`false`, numbers, and the strings `"nan"`,
    /// `"inf"`, `"-inf"` for the values JSON cannot hold.
    pub fn json(&self) -> String {
        match *self {
            Number::Bool(b) => b.to_string(),
            Number::Float(f, size) if !f.is_finite() => format!("\"{}\"", float_text(f, size)),
            other => other.text(),
        }
    }
}

fn float_text(f: f64, size: usize) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else if size == 4 {
        format!("{:?}", f as f32)
    } else {
        format!("{f:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itemsizes() {
        for (d, n) in [
            ("<f8", 8),
            ("|b1", 1),
            ("<U10", 40),
            ("|S5", 5),
            ("<M8[ns]", 8),
            ("|V16", 16),
            ("<c16", 16),
            ("[('a', '<i4'), ('b', '>f8', (2, 3))]", 52),
            (
                "[(('title', 'x'), '<u2'), ('n', [('p', '|i1'), ('q', '<f4')], 2)]",
                12,
            ),
        ] {
            assert_eq!(Dtype::parse(d).unwrap().itemsize, n, "{d}");
        }
        for bad in [
            "|O",
            "<f",
            "x8",
            "<f8x",
            "[('a')]",
            "[1]",
            "|V0",
            "[('a', '|O')]",
        ] {
            assert!(Dtype::parse(bad).is_err(), "{bad}");
        }
        let s = Dtype::parse("[(\"a\", '<i4')]").unwrap();
        assert_eq!(s.descr, "[('a', '<i4')]");
        assert!(s.scalar.is_none());
    }

    #[test]
    fn decoding() {
        let f8 = Dtype::parse("<f8").unwrap().scalar.unwrap();
        assert_eq!(f8.decode(&1.5f64.to_le_bytes()).text(), "1.5");
        let be = Dtype::parse(">i4").unwrap().scalar.unwrap();
        assert_eq!(be.decode(&(-3i32).to_be_bytes()).text(), "-3");
        let i1 = Dtype::parse("|i1").unwrap().scalar.unwrap();
        assert_eq!(i1.decode(&[0xff]).text(), "-1");
        let u8_ = Dtype::parse("<u8").unwrap().scalar.unwrap();
        assert_eq!(
            u8_.decode(&u64::MAX.to_le_bytes()).text(),
            u64::MAX.to_string()
        );
        let b = Dtype::parse("|b1").unwrap().scalar.unwrap();
        assert_eq!(b.decode(&[1]).text(), "True");
        let f4 = Dtype::parse("<f4").unwrap().scalar.unwrap();
        assert_eq!(f4.decode(&0.1f32.to_le_bytes()).text(), "0.1");
        let f2 = Dtype::parse("<f2").unwrap().scalar.unwrap();
        assert_eq!(f2.decode(&0x3e00u16.to_le_bytes()).text(), "1.5");
        assert_eq!(f2.decode(&0xfc00u16.to_le_bytes()).json(), "\"-inf\"");
        assert_eq!(f8.decode(&f64::NAN.to_le_bytes()).text(), "nan");
        assert!(Dtype::parse("<c8").unwrap().scalar.is_none());
    }
}
