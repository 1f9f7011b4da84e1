//! NumPy basic-indexing syntax for `outcore cat`: `NAME[2:10, ::2]`, `NAME[-1]`,
//! `NAME[..., 0]`. Parsing ([`parse_target`]) checks syntax only; [`resolve`] checks the
//! indices against a shape with NumPy's rules (slices clamp, integers must be in range).

/// One comma-separated item between the brackets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// An integer: selects one index and drops the axis.
    Index(i64),
    /// `start:stop:step`, each part optional.
    Slice {
        /// First index (default: the start in the step's direction).
        start: Option<i64>,
        /// End, exclusive (default: past the end in the step's direction).
        stop: Option<i64>,
        /// Step (default 1, never 0).
        step: Option<i64>,
    },
    /// `...`: as many full slices as needed.
    Ellipsis,
}

/// What `cat` was asked for: an array name and its index items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The array name.
    pub name: String,
    /// The index items; empty means the whole array.
    pub items: Vec<Item>,
}

/// Parses `NAME` or `NAME[ITEMS]` (names holding `[` or `]` cannot be used here).
pub fn parse_target(text: &str) -> Result<Target, String> {
    if text.is_empty() {
        return Err("empty array name".into());
    }
    if !text.contains(['[', ']']) {
        return Ok(Target {
            name: text.to_string(),
            items: Vec::new(),
        });
    }
    let inner = text
        .strip_suffix(']')
        .ok_or_else(|| format!("{text:?}: expected NAME or NAME[INDEX] ending in ']'"))?;
    let open = inner
        .find('[')
        .ok_or_else(|| format!("{text:?}: ']' without '['"))?;
    let (name, index) = (&inner[..open], &inner[open + 1..]);
    if name.is_empty() {
        return Err(format!("{text:?}: no array name before '['"));
    }
    let items = parse_items(index).map_err(|e| format!("bad index in {text:?}: {e}"))?;
    Ok(Target {
        name: name.to_string(),
        items,
    })
}

/// Parses the text between the brackets.
pub fn parse_items(text: &str) -> Result<Vec<Item>, String> {
    if text.trim().is_empty() {
        return Err("empty index (use NAME or NAME[...] for the whole array)".into());
    }
    let mut items = Vec::new();
    let parts: Vec<&str> = text.split(',').collect();
    for (i, part) in parts.iter().enumerate() {
        let part = part.trim();
        if part.is_empty() {
            // A trailing comma, as in `A[1,]`, is allowed.
            if i + 1 == parts.len() && i > 0 {
                continue;
            }
            return Err("empty item between commas".into());
        }
        items.push(parse_item(part)?);
    }
    if items.iter().filter(|i| **i == Item::Ellipsis).count() > 1 {
        return Err("an index can only have a single ellipsis ('...')".into());
    }
    Ok(items)
}

fn parse_item(part: &str) -> Result<Item, String> {
    if part == "..." {
        return Ok(Item::Ellipsis);
    }
    if part == "None" || part == "np.newaxis" || part == "newaxis" {
        return Err("new axes (None) are not supported".into());
    }
    if !part.contains(':') {
        return parse_int(part).map(Item::Index);
    }
    let fields: Vec<&str> = part.split(':').collect();
    if fields.len() > 3 {
        return Err(format!("{part:?} has more than two ':'"));
    }
    let opt = |i: usize| -> Result<Option<i64>, String> {
        match fields.get(i).map(|s| s.trim()) {
            None | Some("") => Ok(None),
            Some(s) => parse_int(s).map(Some),
        }
    };
    let step = opt(2)?;
    if step == Some(0) {
        return Err("slice step cannot be zero".into());
    }
    Ok(Item::Slice {
        start: opt(0)?,
        stop: opt(1)?,
        step,
    })
}

fn parse_int(s: &str) -> Result<i64, String> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "{s:?} is not an integer, a slice (start:stop:step) or '...'"
        ));
    }
    s.parse::<i64>()
        .map_err(|_| format!("{s:?} is too large for an index"))
}

/// The selection on one axis of the array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AxisSel {
    /// One index; the axis is dropped from the result.
    Index(u64),
    /// `len` indices `start, start + step, ...` (all in range); the axis stays.
    Range {
        /// First index.
        start: u64,
        /// Distance between indices (never 0).
        step: i64,
        /// Number of indices.
        len: u64,
    },
}

impl AxisSel {
    /// The `k`-th selected index (for `Index`, the index itself).
    pub fn at(&self, k: u64) -> u64 {
        match *self {
            AxisSel::Index(i) => i,
            AxisSel::Range { start, step, .. } => (start as i128 + k as i128 * step as i128) as u64,
        }
    }

    /// The smallest and largest selected index, `None` if nothing is selected.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        match *self {
            AxisSel::Index(i) => Some((i, i)),
            AxisSel::Range { len: 0, .. } => None,
            AxisSel::Range { len, .. } => {
                let (a, b) = (self.at(0), self.at(len - 1));
                Some((a.min(b), a.max(b)))
            }
        }
    }
}

/// Applies `items` to an array of `shape` with NumPy's rules: one selection per axis.
pub fn resolve(items: &[Item], shape: &[u64]) -> Result<Vec<AxisSel>, String> {
    let explicit = items.iter().filter(|i| **i != Item::Ellipsis).count();
    if explicit > shape.len() {
        return Err(format!(
            "too many indices for array: array is {}-dimensional, but {explicit} were indexed",
            shape.len()
        ));
    }
    let full = Item::Slice {
        start: None,
        stop: None,
        step: None,
    };
    let mut expanded: Vec<Item> = Vec::with_capacity(shape.len());
    for item in items {
        if *item == Item::Ellipsis {
            expanded.extend(std::iter::repeat_n(full, shape.len() - explicit));
        } else {
            expanded.push(*item);
        }
    }
    expanded.resize(shape.len(), full);
    expanded
        .iter()
        .zip(shape)
        .enumerate()
        .map(|(axis, (item, &n))| resolve_axis(*item, n, axis))
        .collect()
}

fn resolve_axis(item: Item, n: u64, axis: usize) -> Result<AxisSel, String> {
    let len = i128::from(n);
    match item {
        Item::Index(i) => {
            let i = i128::from(i);
            let j = if i < 0 { i + len } else { i };
            if j < 0 || j >= len {
                return Err(format!(
                    "index {i} is out of bounds for axis {axis} with size {n}"
                ));
            }
            Ok(AxisSel::Index(j as u64))
        }
        Item::Slice { start, stop, step } => {
            let step = i128::from(step.unwrap_or(1));
            let norm = |v: i64| {
                let v = i128::from(v);
                if v < 0 {
                    v + len
                } else {
                    v
                }
            };
            // Python's slice.indices().
            let (start, stop) = if step > 0 {
                (
                    start.map_or(0, |v| norm(v).clamp(0, len)),
                    stop.map_or(len, |v| norm(v).clamp(0, len)),
                )
            } else {
                (
                    start.map_or(len - 1, |v| norm(v).clamp(-1, len - 1)),
                    stop.map_or(-1, |v| norm(v).clamp(-1, len - 1)),
                )
            };
            let count = if step > 0 && stop > start {
                (stop - start + step - 1) / step
            } else if step < 0 && start > stop {
                (start - stop + (-step) - 1) / (-step)
            } else {
                0
            };
            Ok(AxisSel::Range {
                start: if count == 0 { 0 } else { start as u64 },
                step: step as i64,
                len: count as u64,
            })
        }
        Item::Ellipsis => unreachable!("ellipsis expanded by resolve"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indices(item: &str, n: u64) -> Result<Vec<u64>, String> {
        let items = parse_items(item)?;
        let sel = resolve(&items, &[n])?;
        Ok(match sel[0] {
            AxisSel::Index(i) => vec![i],
            s @ AxisSel::Range { len, .. } => (0..len).map(|k| s.at(k)).collect(),
        })
    }

    #[test]
    fn python_slice_rules() {
        let py = |v: &[u64]| v.to_vec();
        assert_eq!(indices("2:5", 10).unwrap(), py(&[2, 3, 4]));
        assert_eq!(indices("::3", 10).unwrap(), py(&[0, 3, 6, 9]));
        assert_eq!(indices("::-3", 10).unwrap(), py(&[9, 6, 3, 0]));
        assert_eq!(indices("-3:", 10).unwrap(), py(&[7, 8, 9]));
        assert_eq!(indices("8:2:-2", 10).unwrap(), py(&[8, 6, 4]));
        assert_eq!(indices("-100:100", 3).unwrap(), py(&[0, 1, 2]));
        assert_eq!(indices("5:2", 10).unwrap(), py(&[]));
        assert_eq!(indices("100::-1", 3).unwrap(), py(&[2, 1, 0]));
        assert_eq!(indices(":-100:-1", 3).unwrap(), py(&[2, 1, 0]));
        assert_eq!(indices("::-1", 0).unwrap(), py(&[]));
        assert_eq!(indices("-1", 10).unwrap(), py(&[9]));
        assert!(indices("10", 10).is_err());
        assert!(indices("-11", 10).is_err());
        assert!(indices("::0", 10).is_err());
    }

    #[test]
    fn targets_and_ellipsis() {
        let t = parse_target("A[2:10, ::2]").unwrap();
        assert_eq!(t.name, "A");
        assert_eq!(t.items.len(), 2);
        assert_eq!(parse_target("B").unwrap().items, vec![]);
        assert_eq!(parse_target("B[...]").unwrap().items, vec![Item::Ellipsis]);
        let sel = resolve(&parse_items("..., 1").unwrap(), &[2, 3, 4]).unwrap();
        assert_eq!(sel[2], AxisSel::Index(1));
        assert!(matches!(sel[0], AxisSel::Range { len: 2, .. }));
        assert!(resolve(&parse_items("0, 0, 0").unwrap(), &[2, 3]).is_err());
        assert_eq!(resolve(&parse_items("...").unwrap(), &[]).unwrap(), vec![]);
        for bad in [
            "A[",
            "A]",
            "[1]",
            "A[]",
            "A[1,,2]",
            "A[x]",
            "A[1:2:3:4]",
            "A[..., ...]",
            "A[None]",
            "A[99999999999999999999]",
            "A[1.5]",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_target("A[1,]").unwrap().items, vec![Item::Index(1)]);
    }
}
