//! The line-protocol tokenizer: a single forward pass over the body.

use std::borrow::Cow;

use super::{LineError, LpValue, MAX_STRING_FIELD, ParsedLine};

/// Parse every point in `body`, yielding `(line number, point)` or the error of a line.
/// A bad line never affects the lines after it.
pub fn parse_lines(
    body: &[u8],
) -> impl Iterator<Item = Result<(usize, ParsedLine<'_>), LineError>> {
    Lines {
        buf: body,
        pos: 0,
        line: 0,
    }
}

struct Lines<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Line number of the last line started (1-based once started).
    line: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Iterator for Lines<'a> {
    type Item = Result<(usize, ParsedLine<'a>), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pos >= self.buf.len() {
                return None;
            }
            self.line += 1;
            let line_no = self.line;
            // skip leading white space
            while self.pos < self.buf.len() && matches!(self.buf[self.pos], b' ' | b'\t') {
                self.pos += 1;
            }
            match self.buf.get(self.pos) {
                None => return None,
                Some(b'\n') => {
                    self.pos += 1;
                    continue;
                }
                Some(b'\r') if self.buf.get(self.pos + 1) == Some(&b'\n') => {
                    self.pos += 2;
                    continue;
                }
                Some(b'#') => {
                    self.skip_line();
                    continue;
                }
                _ => {}
            }
            let mut cur = Cursor {
                buf: self.buf,
                pos: self.pos,
                newlines: 0,
            };
            let res = cur.point();
            self.line += cur.newlines;
            self.pos = cur.pos;
            return Some(match res {
                Ok(p) => {
                    // consume the line end
                    if self.buf.get(self.pos) == Some(&b'\r') {
                        self.pos += 1;
                    }
                    if self.buf.get(self.pos) == Some(&b'\n') {
                        self.pos += 1;
                    }
                    Ok((line_no, p))
                }
                Err(reason) => {
                    self.skip_line();
                    Err(LineError {
                        line: line_no,
                        reason,
                    })
                }
            });
        }
    }
}

impl Lines<'_> {
    fn skip_line(&mut self) {
        match self.buf[self.pos..].iter().position(|&b| b == b'\n') {
            Some(i) => self.pos += i + 1,
            None => self.pos = self.buf.len(),
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    newlines: usize,
}

fn utf8<'b>(b: &'b [u8], what: &str) -> PResult<&'b str> {
    std::str::from_utf8(b).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Remove backslashes before the characters in `escapable`; other backslashes stay.
fn unescape<'a>(raw: &'a [u8], escapable: &[u8], what: &str) -> PResult<Cow<'a, str>> {
    let s = utf8(raw, what)?;
    if !raw.contains(&b'\\') {
        return Ok(Cow::Borrowed(s));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && n.is_ascii()
            && escapable.contains(&(n as u8))
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    Ok(Cow::Owned(out))
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn at_line_end(&self) -> bool {
        match self.peek() {
            None | Some(b'\n') => true,
            Some(b'\r') => {
                self.buf.get(self.pos + 1) == Some(&b'\n') || self.pos + 1 == self.buf.len()
            }
            _ => false,
        }
    }

    /// Read up to (not including) the first unescaped byte in `stops`, or a line end.
    fn token(&mut self, stops: &[u8]) -> &'a [u8] {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if b == b'\\' && self.pos + 1 < self.buf.len() && self.buf[self.pos + 1] != b'\n' {
                self.pos += 2;
                continue;
            }
            if stops.contains(&b) || b == b'\n' || (b == b'\r' && self.at_line_end()) {
                break;
            }
            self.pos += 1;
        }
        &self.buf[start..self.pos]
    }

    fn point(&mut self) -> PResult<ParsedLine<'a>> {
        let raw = self.token(b", ");
        if raw.is_empty() {
            return Err("missing measurement".into());
        }
        let measurement = unescape(raw, b", ", "measurement")?;
        let mut tags = Vec::new();
        while self.peek() == Some(b',') {
            self.pos += 1;
            let key = self.token(b",= ");
            if self.peek() != Some(b'=') {
                return Err(format!(
                    "tag {:?} has no value (expected '=')",
                    String::from_utf8_lossy(key)
                ));
            }
            self.pos += 1;
            let value = self.token(b", ");
            if key.is_empty() {
                return Err("empty tag key".into());
            }
            if value.is_empty() {
                return Err(format!(
                    "tag {:?} has an empty value",
                    String::from_utf8_lossy(key)
                ));
            }
            tags.push((
                unescape(key, b",= ", "tag key")?,
                unescape(value, b",= ", "tag value")?,
            ));
        }
        if self.peek() != Some(b' ') {
            return Err("missing fields (expected a space after measurement and tags)".into());
        }
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        if self.at_line_end() {
            return Err("missing fields".into());
        }
        let mut fields = Vec::new();
        loop {
            let key = self.token(b",= ");
            if self.peek() != Some(b'=') {
                return Err(format!(
                    "field {:?} has no value (expected '=')",
                    String::from_utf8_lossy(key)
                ));
            }
            if key.is_empty() {
                return Err("empty field key".into());
            }
            let key = unescape(key, b",= ", "field key")?;
            self.pos += 1;
            let value = self.field_value(&key)?;
            fields.push((key, value));
            if self.peek() == Some(b',') {
                self.pos += 1;
                continue;
            }
            break;
        }
        let mut timestamp = None;
        if self.peek() == Some(b' ') {
            while self.peek() == Some(b' ') {
                self.pos += 1;
            }
            if !self.at_line_end() {
                let raw = self.token(b" \t");
                let s = utf8(raw, "timestamp")?;
                let t: i64 = s.parse().map_err(|_| format!("invalid timestamp {s:?}"))?;
                timestamp = Some(t);
                while matches!(self.peek(), Some(b' ' | b'\t')) {
                    self.pos += 1;
                }
            }
        }
        if !self.at_line_end() {
            let rest = self.token(b"");
            return Err(format!(
                "unexpected text after the point: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(40)])
            ));
        }
        Ok(ParsedLine {
            measurement,
            tags,
            fields,
            timestamp,
        })
    }

    fn field_value(&mut self, key: &str) -> PResult<LpValue<'a>> {
        if self.peek() == Some(b'"') {
            self.pos += 1;
            let start = self.pos;
            let mut escaped = false;
            loop {
                match self.peek() {
                    None => return Err(format!("field {key:?}: unterminated string")),
                    Some(b'\\') if matches!(self.buf.get(self.pos + 1), Some(b'"' | b'\\')) => {
                        escaped = true;
                        self.pos += 2;
                    }
                    Some(b'"') => break,
                    Some(b) => {
                        if b == b'\n' {
                            self.newlines += 1;
                        }
                        self.pos += 1;
                    }
                }
            }
            let raw = &self.buf[start..self.pos];
            self.pos += 1; // closing quote
            if raw.len() > MAX_STRING_FIELD {
                return Err(format!(
                    "field {key:?}: string longer than {MAX_STRING_FIELD} bytes"
                ));
            }
            let s = if escaped {
                unescape(raw, b"\"\\", "string field")?
            } else {
                Cow::Borrowed(utf8(raw, "string field")?)
            };
            return Ok(LpValue::String(s));
        }
        let raw = self.token(b", ");
        let s = utf8(raw, "field value")?;
        parse_scalar(s).ok_or_else(|| {
            if s.is_empty() {
                format!("field {key:?} has an empty value")
            } else {
                format!("field {key:?}: invalid value {:?}", &s[..s.len().min(40)])
            }
        })
    }
}

fn parse_scalar(s: &str) -> Option<LpValue<'static>> {
    match s {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(LpValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(LpValue::Bool(false)),
        _ => {}
    }
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if let Some(n) = s.strip_suffix('i') {
        let body = n.strip_prefix('-').unwrap_or(n);
        return digits(body)
            .then(|| n.parse().ok().map(LpValue::I64))
            .flatten();
    }
    if let Some(n) = s.strip_suffix('u') {
        return digits(n)
            .then(|| n.parse().ok().map(LpValue::U64))
            .flatten();
    }
    // floats: plain decimal or scientific notation only (no "inf"/"NaN")
    let first = s.bytes().next()?;
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return None;
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(LpValue::F64(v))
}
