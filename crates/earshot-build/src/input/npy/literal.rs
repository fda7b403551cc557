//! The Python literals a `.npy` header is written in (numpy reads it with
//! `ast.literal_eval`): strings, integers, booleans, `None`, tuples, lists and dicts.
//!
//! The header comes from the file, so the parser is written for hostile input: nesting is
//! limited to [`MAX_NESTING`] levels (recursion would otherwise follow the input's depth
//! until the stack overflows), and every error says where the header went wrong.

/// Deepest nesting of tuples, lists and dicts accepted. Plain arrays need 2 levels (the
/// dict and the shape tuple); a structured dtype adds 2 per nested record, so 64 leaves
/// ample room for any dtype numpy writes while bounding the recursion.
pub const MAX_NESTING: usize = 64;

/// A Python literal as found in a `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub enum PyLiteral {
    Str(String),
    Int(i128),
    Bool(bool),
    None,
    Tuple(Vec<PyLiteral>),
    List(Vec<PyLiteral>),
    Dict(Vec<(PyLiteral, PyLiteral)>),
}

impl PyLiteral {
    /// The literal as Python would print it (for messages).
    pub fn repr(&self) -> String {
        match self {
            PyLiteral::Str(s) => format!("'{s}'"),
            PyLiteral::Int(i) => i.to_string(),
            PyLiteral::Bool(true) => "True".into(),
            PyLiteral::Bool(false) => "False".into(),
            PyLiteral::None => "None".into(),
            PyLiteral::Tuple(items) => {
                let inner: Vec<String> = items.iter().map(PyLiteral::repr).collect();
                if items.len() == 1 {
                    format!("({},)", inner[0])
                } else {
                    format!("({})", inner.join(", "))
                }
            }
            PyLiteral::List(items) => {
                let inner: Vec<String> = items.iter().map(PyLiteral::repr).collect();
                format!("[{}]", inner.join(", "))
            }
            PyLiteral::Dict(items) => {
                let inner: Vec<String> = items
                    .iter()
                    .map(|(k, v)| format!("{}: {}", k.repr(), v.repr()))
                    .collect();
                format!("{{{}}}", inner.join(", "))
            }
        }
    }
}

/// Parses a header that must be one dict literal; returns its (key, value) pairs in order.
pub fn parse_dict(header: &[u8]) -> Result<Vec<(PyLiteral, PyLiteral)>, String> {
    let mut p = Parser {
        s: header,
        pos: 0,
        depth: 0,
    };
    let v = p.value()?;
    if p.peek().is_some() {
        return Err(format!(
            "unexpected text after the header dict at offset {}",
            p.pos
        ));
    }
    match v {
        PyLiteral::Dict(items) => Ok(items),
        other => Err(format!("header is {} instead of a dict", other.repr())),
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    /// Containers currently open around `pos`.
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected '{}' at offset {} of the header",
                c as char, self.pos
            ))
        }
    }

    fn value(&mut self) -> Result<PyLiteral, String> {
        match self.peek() {
            None => Err("header ends unexpectedly".into()),
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(open @ (b'(' | b'[' | b'{')) => {
                if self.depth == MAX_NESTING {
                    return Err(format!(
                        "the header nests deeper than {MAX_NESTING} levels at offset {}",
                        self.pos
                    ));
                }
                self.pos += 1;
                self.depth += 1;
                let container = match open {
                    b'(' => self.tuple(),
                    b'[' => Ok(PyLiteral::List(self.seq(b']')?.0)),
                    _ => self.dict(),
                };
                self.depth -= 1;
                container
            }
            Some(c) if c == b'-' || c == b'+' || c.is_ascii_digit() => self.int(),
            Some(c) if c.is_ascii_alphabetic() => self.word(),
            Some(c) => Err(format!(
                "unexpected character '{}' at offset {} of the header",
                c as char, self.pos
            )),
        }
    }

    /// A quoted string; `pos` is at the opening quote `q`.
    fn string(&mut self, q: u8) -> Result<PyLiteral, String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.pos) {
                None => return Err("unterminated string in header".into()),
                Some(&c) if c == q => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    if let Some(&c) = self.s.get(self.pos + 1) {
                        out.push(c);
                    }
                    self.pos += 2;
                }
                Some(&c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        Ok(PyLiteral::Str(String::from_utf8_lossy(&out).into_owned()))
    }

    /// After `(`: a tuple, or a parenthesised expression (one item, no comma).
    fn tuple(&mut self) -> Result<PyLiteral, String> {
        let (items, comma) = self.seq(b')')?;
        if items.len() == 1 && !comma {
            Ok(items.into_iter().next().expect("one item"))
        } else {
            Ok(PyLiteral::Tuple(items))
        }
    }

    /// Items up to `close`, with optional trailing comma. Returns (items, had_comma).
    fn seq(&mut self, close: u8) -> Result<(Vec<PyLiteral>, bool), String> {
        let mut items = Vec::new();
        let mut comma = false;
        loop {
            if self.peek() == Some(close) {
                self.pos += 1;
                return Ok((items, comma));
            }
            items.push(self.value()?);
            comma = false;
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    comma = true;
                }
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "malformed sequence at offset {} of the header",
                        self.pos
                    ))
                }
            }
        }
    }

    /// After `{`: `key: value` pairs up to `}`.
    fn dict(&mut self) -> Result<PyLiteral, String> {
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(PyLiteral::Dict(items));
            }
            let k = self.value()?;
            self.expect(b':')?;
            let v = self.value()?;
            items.push((k, v));
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => {
                    return Err(format!(
                        "malformed dict at offset {} of the header",
                        self.pos
                    ))
                }
            }
        }
    }

    fn int(&mut self) -> Result<PyLiteral, String> {
        let start = self.pos;
        self.pos += 1;
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        let n: i128 = text
            .parse()
            .map_err(|_| format!("bad integer '{text}' in header"))?;
        // Python 2 long suffix.
        if matches!(self.s.get(self.pos), Some(b'L' | b'l')) {
            self.pos += 1;
        }
        Ok(PyLiteral::Int(n))
    }

    /// `True`, `False` or `None`; any other word is refused.
    fn word(&mut self) -> Result<PyLiteral, String> {
        let start = self.pos;
        while self.pos < self.s.len()
            && (self.s[self.pos].is_ascii_alphanumeric() || self.s[self.pos] == b'_')
        {
            self.pos += 1;
        }
        match &self.s[start..self.pos] {
            b"True" => Ok(PyLiteral::Bool(true)),
            b"False" => Ok(PyLiteral::Bool(false)),
            b"None" => Ok(PyLiteral::None),
            other => Err(format!(
                "unexpected word '{}' in header",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_numpy_writes() {
        let dict = parse_dict(b"{'descr': [('a', '<f4')], 'shape': (3L, 4), 'x': None}").unwrap();
        assert_eq!(dict.len(), 3);
        assert_eq!(
            dict[1].1,
            PyLiteral::Tuple(vec![PyLiteral::Int(3), PyLiteral::Int(4)])
        );
        assert_eq!(PyLiteral::Tuple(vec![PyLiteral::Int(5)]).repr(), "(5,)");
        assert!(parse_dict(b"{'a': 1").is_err());

        let dict = parse_dict(b"{\"k\": (1,), 'e': (), 'p': (7), 'b': True, 'n': -2}").unwrap();
        let values: Vec<String> = dict.iter().map(|(_, v)| v.repr()).collect();
        assert_eq!(values, ["(1,)", "()", "7", "True", "-2"]);
        let escaped = parse_dict(br"{'a\'b': 1}").unwrap();
        assert_eq!(escaped[0].0, PyLiteral::Str("a'b".into()));
    }

    #[test]
    fn nesting_is_limited() {
        let nested = |depth: usize| {
            let mut s = "{'x': ".to_string();
            s.push_str(&"[".repeat(depth - 1));
            s.push_str(&"]".repeat(depth - 1));
            s.push('}');
            s
        };
        // Exactly at the limit (the dict counts as one level) parses.
        assert!(parse_dict(nested(MAX_NESTING).as_bytes()).is_ok());
        assert_eq!(
            parse_dict(nested(MAX_NESTING + 1).as_bytes()).unwrap_err(),
            // The dict opens at offset 0 and the lists from offset 6: the last one overflows.
            format!(
                "the header nests deeper than {MAX_NESTING} levels at offset {}",
                6 + MAX_NESTING - 1
            )
        );
        // Far deeper than the stack would survive without the limit.
        let deep = format!("{}1{}", "(".repeat(1_000_000), ")".repeat(1_000_000));
        assert!(parse_dict(deep.as_bytes())
            .unwrap_err()
            .starts_with("the header nests deeper than 64 levels"));
        // Closed containers free their level: many shallow siblings are fine.
        let wide = format!("{{'x': [{}]}}", "(1, 2), ".repeat(10_000));
        assert!(parse_dict(wide.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "header ends unexpectedly"),
            (b"{'descr': '<f4", "unterminated string in header"),
            (b"{'descr': '<f4\\", "unterminated string in header"),
            (b"[1, 2]", "header is [1, 2] instead of a dict"),
            (b"'text'", "header is 'text' instead of a dict"),
            (
                b"{'a': 1} x",
                "unexpected text after the header dict at offset 9",
            ),
            (b"{'a' 1}", "expected ':' at offset 5 of the header"),
            (
                b"{'a': 1 'b': 2}",
                "malformed dict at offset 8 of the header",
            ),
            (
                b"{'a': (1 2)}",
                "malformed sequence at offset 9 of the header",
            ),
            (b"{'a': x}", "unexpected word 'x' in header"),
            (
                b"{'a': @}",
                "unexpected character '@' at offset 6 of the header",
            ),
            (b"{'a': -}", "bad integer '-' in header"),
            (
                b"{'a': 1701411834604692317316873037158841057280}",
                "bad integer '1701411834604692317316873037158841057280' in header",
            ),
        ];
        for (header, message) in cases {
            assert_eq!(
                parse_dict(header).unwrap_err(),
                *message,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }
}
