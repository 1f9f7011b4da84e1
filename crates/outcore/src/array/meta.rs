//! Persistent array metadata: dtype descriptor, shape, order, block size, block file.

use std::fmt;
use std::str::FromStr;

use crate::storage::{Key, Oid, Version};
use crate::{Error, Result};

/// Memory order of an N-d array.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// Row-major: the last axis varies fastest; the major (growable) axis is axis 0.
    #[default]
    C,
    /// Column-major: the first axis varies fastest; the major axis is the last one.
    F,
}

impl FromStr for Order {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "C" => Ok(Order::C),
            "F" => Ok(Order::F),
            other => Err(Error::InvalidArgument(format!(
                "order must be \"C\" or \"F\", not {other:?}"
            ))),
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::C => "C",
            Order::F => "F",
        })
    }
}

/// The largest block size: 1 GiB.
pub const MAX_BLKSIZE: u64 = 1 << 30;

/// The default block size: 2 MiB.
pub const DEFAULT_BLKSIZE: usize = 2 << 20;

/// Everything persistent about an array except its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayMeta {
    /// The dtype descriptor, a string that round-trips the element type (NumPy's `dtype.str`
    /// or `repr(dtype.descr)` for structured types). Opaque to the core.
    pub dtype: String,
    /// Bytes per element.
    pub itemsize: usize,
    /// The shape.
    pub shape: Vec<u64>,
    /// C or F order.
    pub order: Order,
    /// Bytes per block (a positive multiple of 4096).
    pub blksize: usize,
    /// The block file holding the data.
    pub file: Oid,
    /// User attributes: one line of text, opaque to the core (the Python layer stores a JSON
    /// object: units, dims, ...); `None` when the array has none. Optional in the record so
    /// that records written before attributes existed stay readable.
    pub attrs: Option<String>,
}

impl ArrayMeta {
    /// Validates a new array's parameters.
    pub fn new(
        dtype: impl Into<String>,
        itemsize: usize,
        shape: &[u64],
        order: Order,
        blksize: usize,
        file: Oid,
    ) -> Result<Self> {
        let meta = ArrayMeta {
            dtype: dtype.into(),
            itemsize,
            shape: shape.to_vec(),
            order,
            blksize,
            file,
            attrs: None,
        };
        meta.validate()?;
        Ok(meta)
    }

    /// This metadata with the user attributes `attrs` (validated: one line).
    pub fn with_attrs(mut self, attrs: Option<String>) -> Result<Self> {
        self.attrs = attrs;
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<()> {
        if self.itemsize == 0 {
            return Err(Error::InvalidShape("element size must be positive".into()));
        }
        if self.dtype.contains('\n') {
            return Err(Error::InvalidArgument(
                "dtype descriptor has a newline".into(),
            ));
        }
        if self.attrs.as_deref().is_some_and(|a| a.contains('\n')) {
            return Err(Error::InvalidArgument(
                "array attributes have a newline".into(),
            ));
        }
        if self.blksize == 0 || self.blksize % 4096 != 0 || self.blksize as u64 > MAX_BLKSIZE {
            return Err(Error::InvalidArgument(format!(
                "block size {} is not a positive multiple of 4096 up to {MAX_BLKSIZE}",
                self.blksize
            )));
        }
        self.checked_nbytes()?;
        Ok(())
    }

    fn checked_nbytes(&self) -> Result<u64> {
        let mut n = self.itemsize as u64;
        for &d in &self.shape {
            n = n.checked_mul(d).ok_or_else(|| {
                Error::InvalidShape(format!("shape {:?} is too large", self.shape))
            })?;
        }
        // Byte offsets must fit NumPy's (and ndarray's) signed index type.
        if n > i64::MAX as u64 {
            return Err(Error::InvalidShape(format!(
                "shape {:?} is too large ({n} bytes)",
                self.shape
            )));
        }
        Ok(n)
    }

    /// Total bytes of data.
    pub fn nbytes(&self) -> u64 {
        self.checked_nbytes().unwrap_or(u64::MAX)
    }

    /// Number of blocks holding data.
    pub fn nblocks(&self) -> u64 {
        self.nbytes().div_ceil(self.blksize as u64)
    }

    /// The growable axis: 0 for C order, the last for F.
    pub fn major_axis(&self) -> usize {
        match self.order {
            Order::C => 0,
            Order::F => self.shape.len().saturating_sub(1),
        }
    }

    /// Bytes between consecutive indices of the major axis.
    pub fn major_stride_bytes(&self) -> u64 {
        let major = self.major_axis();
        self.shape
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != major)
            .map(|(_, &d)| d)
            .product::<u64>()
            * self.itemsize as u64
    }

    /// Byte strides of each axis.
    pub fn strides_bytes(&self) -> Vec<isize> {
        let mut strides = vec![0isize; self.shape.len()];
        let mut step = self.itemsize as isize;
        let axes: Vec<usize> = match self.order {
            Order::C => (0..self.shape.len()).rev().collect(),
            Order::F => (0..self.shape.len()).collect(),
        };
        for a in axes {
            strides[a] = step;
            step = step.saturating_mul(self.shape[a].max(1) as isize);
        }
        strides
    }

    /// Serialises to the record stored under the array's metadata key (the `attrs=` line
    /// only when there are attributes, so arrays without them keep the older record).
    pub fn encode(&self) -> Vec<u8> {
        let shape: Vec<String> = self.shape.iter().map(u64::to_string).collect();
        let mut text = format!(
            "outcore-array 1\nitemsize={}\nshape={}\norder={}\nblksize={}\nfile={}\ndtype={}",
            self.itemsize,
            shape.join(","),
            self.order,
            self.blksize,
            self.file.0,
            self.dtype
        );
        if let Some(attrs) = &self.attrs {
            text.push_str("\nattrs=");
            text.push_str(attrs);
        }
        text.into_bytes()
    }

    /// Parses a record written by [`ArrayMeta::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::InvalidArgument(format!("bad array metadata: {why}"));
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.splitn(8, '\n');
        if lines.next() != Some("outcore-array 1") {
            return Err(bad("unknown header"));
        }
        let mut field = |name: &str| -> Result<&str> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix('='))
                .ok_or_else(|| bad(name))
        };
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad("number"));
        let itemsize = num(field("itemsize")?)? as usize;
        let shape_text = field("shape")?;
        let shape = if shape_text.is_empty() {
            Vec::new()
        } else {
            shape_text
                .split(',')
                .map(num)
                .collect::<Result<Vec<u64>>>()?
        };
        let order = field("order")?.parse()?;
        let blksize = num(field("blksize")?)? as usize;
        let file = Oid(num(field("file")?)?);
        let dtype = field("dtype")?.to_string();
        // Optional: records written before attributes existed end at the dtype line.
        let attrs = match lines.next() {
            None => None,
            Some(line) => Some(
                line.strip_prefix("attrs=")
                    .ok_or_else(|| bad("attrs"))?
                    .to_string(),
            ),
        };
        let meta = ArrayMeta {
            dtype,
            itemsize,
            shape,
            order,
            blksize,
            file,
            attrs,
        };
        meta.validate()?;
        Ok(meta)
    }

    /// [`ArrayMeta::decode`] of `version`, the stored metadata record of array `oid`: a
    /// stored record that does not decode is damaged data ([`Error::Corrupt`]), not a bad
    /// argument.
    pub(crate) fn decode_stored(oid: Oid, version: &Version) -> Result<Self> {
        Self::decode(&version.data).map_err(|e| Error::Corrupt {
            key: Key::Meta(oid),
            tid: version.tid,
            reason: e.message(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_geometry() {
        let m = ArrayMeta::new(
            "[('a', '<i4'), ('b', '>f8')]",
            12,
            &[3, 4, 5],
            Order::F,
            8192,
            Oid(9),
        )
        .unwrap();
        assert_eq!(ArrayMeta::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.nbytes(), 720);
        assert_eq!(m.nblocks(), 1);
        assert_eq!(m.major_axis(), 2);
        assert_eq!(m.major_stride_bytes(), 144);
        assert_eq!(m.strides_bytes(), vec![12, 36, 144]);
        let c = ArrayMeta::new("<f8", 8, &[3, 4], Order::C, 4096, Oid(1)).unwrap();
        assert_eq!(c.strides_bytes(), vec![32, 8]);
        let scalar = ArrayMeta::new("<f8", 8, &[], Order::C, 4096, Oid(1)).unwrap();
        assert_eq!(ArrayMeta::decode(&scalar.encode()).unwrap(), scalar);
        assert!(ArrayMeta::new("<f8", 8, &[u64::MAX, 2], Order::C, 4096, Oid(1)).is_err());
        assert!(ArrayMeta::new("<f8", 8, &[1], Order::C, 1000, Oid(1)).is_err());
        assert!(ArrayMeta::decode(b"garbage").is_err());
    }

    #[test]
    fn attrs_are_optional_and_round_trip() {
        let plain = ArrayMeta::new("<f8", 8, &[3], Order::C, 4096, Oid(2)).unwrap();
        // A record without the line (as written before attributes existed) still reads.
        let old = b"outcore-array 1\nitemsize=8\nshape=3\norder=C\nblksize=4096\nfile=2\ndtype=<f8";
        assert_eq!(ArrayMeta::decode(old).unwrap(), plain);
        assert_eq!(plain.encode(), old.to_vec());
        let with = plain.with_attrs(Some(r#"{"units": "m"}"#.into())).unwrap();
        assert!(with
            .encode()
            .ends_with(b"\ndtype=<f8\nattrs={\"units\": \"m\"}"));
        assert_eq!(ArrayMeta::decode(&with.encode()).unwrap(), with);
        let empty = with.clone().with_attrs(Some(String::new())).unwrap();
        assert_eq!(ArrayMeta::decode(&empty.encode()).unwrap(), empty);
        assert!(with.clone().with_attrs(Some("a\nb".into())).is_err());
        let mut bad = old.to_vec();
        bad.extend_from_slice(b"\nunits=m");
        assert!(ArrayMeta::decode(&bad).is_err());
    }
}
