//! The small subset of Python literals found in `.npy` headers and dtype descriptors:
//! strings, integers, `True`/`False`/`None`, tuples, lists and dicts — parsed, and written back
//! exactly as Python's `repr` writes them.

use std::fmt::Write as _;

/// A parsed Python literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `'text'` or `"text"`.
    Str(String),
    /// An integer.
    Int(i128),
    /// `True` or `False`.
    Bool(bool),
    /// `None`.
    None,
    /// `(a, b)`.
    Tuple(Vec<Value>),
    /// `[a, b]`.
    List(Vec<Value>),
    /// `{k: v}`, in source order.
    Dict(Vec<(Value, Value)>),
}

impl Value {
    /// The value of `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Python's `repr` of the value.
    pub fn repr(&self) -> String {
        let mut out = String::new();
        self.write_repr(&mut out);
        out
    }

    fn write_repr(&self, out: &mut String) {
        match self {
            Value::Str(s) => write_str_repr(s, out),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Bool(true) => out.push_str("True"),
            Value::Bool(false) => out.push_str("False"),
            Value::None => out.push_str("None"),
            Value::Tuple(items) => {
                out.push('(');
                write_items(items, out);
                if items.len() == 1 {
                    out.push(',');
                }
                out.push(')');
            }
            Value::List(items) => {
                out.push('[');
                write_items(items, out);
                out.push(']');
            }
            Value::Dict(items) => {
                out.push('{');
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    k.write_repr(out);
                    out.push_str(": ");
                    v.write_repr(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_items(items: &[Value], out: &mut String) {
    for (i, v) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        v.write_repr(out);
    }
}

/// Python 3's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn write_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Parses one literal filling all of `text` (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Value, String> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
    };
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos != p.chars.len() {
        return Err(p.error("unexpected text after the value"));
    }
    Ok(v)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

/// Nesting deeper than this is refused (no stack overflow on hostile input).
const MAX_DEPTH: usize = 64;

impl Parser {
    fn error(&self, what: &str) -> String {
        format!("{what} at character {}", self.pos)
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.skip_ws();
        match self.peek() {
            None => Err(self.error("unexpected end")),
            Some('\'' | '"') => self.string().map(Value::Str),
            Some('u' | 'b' | 'U' | 'B')
                if matches!(self.chars.get(self.pos + 1), Some('\'' | '"')) =>
            {
                self.pos += 1;
                self.string().map(Value::Str)
            }
            Some('(') => {
                self.pos += 1;
                let (items, trailing_comma) = self.items(')', depth)?;
                if items.len() == 1 && !trailing_comma {
                    Ok(items.into_iter().next().unwrap_or(Value::None))
                } else {
                    Ok(Value::Tuple(items))
                }
            }
            Some('[') => {
                self.pos += 1;
                Ok(Value::List(self.items(']', depth)?.0))
            }
            Some('{') => {
                self.pos += 1;
                self.dict(depth)
            }
            Some(c) if c == '-' || c == '+' || c.is_ascii_digit() => self.int(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    self.pos += 1;
                }
                let word: String = self.chars[start..self.pos].iter().collect();
                match word.as_str() {
                    "True" => Ok(Value::Bool(true)),
                    "False" => Ok(Value::Bool(false)),
                    "None" => Ok(Value::None),
                    _ => {
                        self.pos = start;
                        Err(self.error(&format!("unexpected name {word:?}")))
                    }
                }
            }
            Some(c) => Err(self.error(&format!("unexpected {c:?}"))),
        }
    }

    /// Comma-separated values up to `close`; also tells whether a comma ended the list.
    fn items(&mut self, close: char, depth: usize) -> Result<(Vec<Value>, bool), String> {
        let mut items = Vec::new();
        let mut trailing_comma = false;
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, trailing_comma));
            }
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    trailing_comma = true;
                }
                Some(c) if c == close => {
                    self.pos += 1;
                    return Ok((items, false));
                }
                _ => return Err(self.error(&format!("expected ',' or {close:?}"))),
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some('}') {
                self.pos += 1;
                return Ok(Value::Dict(items));
            }
            let key = self.value(depth + 1)?;
            self.skip_ws();
            if self.peek() != Some(':') {
                return Err(self.error("expected ':'"));
            }
            self.pos += 1;
            let value = self.value(depth + 1)?;
            items.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {
                    self.pos += 1;
                    return Ok(Value::Dict(items));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn int(&mut self) -> Result<Value, String> {
        let start = self.pos;
        if matches!(self.peek(), Some('-' | '+')) {
            self.pos += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        // Python 2 wrote long integers with an `L` suffix.
        if matches!(self.peek(), Some('L' | 'l')) {
            self.pos += 1;
        }
        text.parse::<i128>()
            .map(Value::Int)
            .map_err(|_| format!("bad integer {text:?} at character {start}"))
    }

    fn string(&mut self) -> Result<String, String> {
        let quote = self.peek().ok_or_else(|| self.error("expected a string"))?;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self
                .peek()
                .ok_or_else(|| self.error("unterminated string"))?;
            self.pos += 1;
            match c {
                c if c == quote => return Ok(out),
                '\\' => {
                    let e = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match e {
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        '0' => out.push('\0'),
                        '\\' | '\'' | '"' => out.push(e),
                        'x' => out.push(self.hex_char(2)?),
                        'u' => out.push(self.hex_char(4)?),
                        'U' => out.push(self.hex_char(8)?),
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn hex_char(&mut self, n: usize) -> Result<char, String> {
        let digits: String = self.chars.iter().skip(self.pos).take(n).collect();
        if digits.len() != n {
            return Err(self.error("bad escape"));
        }
        self.pos += n;
        u32::from_str_radix(&digits, 16)
            .ok()
            .and_then(char::from_u32)
            .ok_or_else(|| self.error("bad escape"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_roundtrip() {
        let text = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }";
        let v = parse(text).unwrap();
        assert_eq!(v.get("descr"), Some(&Value::Str("<f8".into())));
        assert_eq!(v.get("fortran_order"), Some(&Value::Bool(false)));
        assert_eq!(
            v.get("shape"),
            Some(&Value::Tuple(vec![Value::Int(3), Value::Int(4)]))
        );
        assert_eq!(
            v.repr(),
            "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4)}"
        );
        assert_eq!(parse("(5,)").unwrap().repr(), "(5,)");
        assert_eq!(parse("()").unwrap().repr(), "()");
        assert_eq!(parse("(5)").unwrap(), Value::Int(5));
        assert_eq!(parse("(3L, 4L)").unwrap().repr(), "(3, 4)");
    }

    #[test]
    fn structured_descr_repr() {
        let text = "[(\"a\", '<i4'), ('b', '>f8', (2, 3)), (('t', 'c'), [('x', '|u1')])]";
        assert_eq!(
            parse(text).unwrap().repr(),
            "[('a', '<i4'), ('b', '>f8', (2, 3)), (('t', 'c'), [('x', '|u1')])]"
        );
        assert_eq!(parse(r"'it\'s'").unwrap().repr(), "\"it's\"");
        assert_eq!(parse(r"'a\nb\x01'").unwrap().repr(), r"'a\nb\x01'");
    }

    #[test]
    fn errors() {
        for bad in [
            "", "{", "{'a' 1}", "[1 2]", "'open", "foo", "1 2", "@", "'\\x1'",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&"[".repeat(1000)).is_err());
    }
}
