//! Writing results: standard output with broken-pipe handling, tables, sizes, shapes, JSON.

use std::io::{BufWriter, Stdout, Write};

use serde::Serialize;

use crate::error::{CliError, IoContext, Result};

/// Buffered standard output; write errors become [`CliError`]s (a closed pipe stops quietly).
pub struct Out {
    inner: BufWriter<Stdout>,
}

impl Out {
    /// Standard output, buffered.
    pub fn new() -> Self {
        Out {
            inner: BufWriter::with_capacity(64 << 10, std::io::stdout()),
        }
    }

    /// Writes `text` followed by a newline.
    pub fn line(&mut self, text: impl AsRef<str>) -> Result<()> {
        let w = &mut self.inner;
        w.write_all(text.as_ref().as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .context(|| "writing to standard output".into())
    }

    /// Writes `text` as is.
    pub fn text(&mut self, text: &str) -> Result<()> {
        self.inner
            .write_all(text.as_bytes())
            .context(|| "writing to standard output".into())
    }

    /// Writes `value` as pretty-printed JSON and a newline.
    pub fn json<T: Serialize>(&mut self, value: &T) -> Result<()> {
        serde_json::to_writer_pretty(&mut self.inner, value).map_err(|e| {
            if e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe) {
                CliError::BrokenPipe
            } else {
                CliError::runtime(format!("writing JSON: {e}"))
            }
        })?;
        self.line("")
    }

    /// Flushes the buffer.
    pub fn flush(&mut self) -> Result<()> {
        self.inner
            .flush()
            .context(|| "writing to standard output".into())
    }
}

impl Default for Out {
    fn default() -> Self {
        Out::new()
    }
}

/// A text table: a header and rows, columns padded to their widest cell.
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles; a title starting with `>` is right-aligned
    /// (numbers), the `>` is not printed.
    pub fn new(titles: &[&str]) -> Self {
        Table {
            header: titles
                .iter()
                .map(|t| t.trim_start_matches('>').to_string())
                .collect(),
            right: titles.iter().map(|t| t.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Writes the table, two spaces between columns, no trailing spaces.
    pub fn write(&self, out: &mut Out) -> Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < row.len() {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.line(line.trim_end())?;
        }
        Ok(())
    }
}

/// A byte count for humans: `512 B`, `1.5 KiB`, `2.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A shape as a Python tuple: `()`, `(5,)`, `(3, 4)`.
pub fn shape_str(shape: &[u64]) -> String {
    match shape {
        [] => "()".into(),
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shapes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        assert_eq!(shape_str(&[]), "()");
        assert_eq!(shape_str(&[5]), "(5,)");
        assert_eq!(shape_str(&[3, 4]), "(3, 4)");
    }
}
