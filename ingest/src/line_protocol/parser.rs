//! The line-protocol tokenizer: a single forward pass over the body.

use std::borrow::Cow;

use super::{LineError, LpValue, MAX_STRING_FIELD, ParsedLine};

/// Parse every point in `body`, yielding `(line number, point)` or the error of a line.
/// A bad line never affects the lines after it.
pub fn parse_lines(
    body: &[u8],
) -> impl Iterator<Item = Result<(usize, ParsedLine<'_>), LineError>> {
    Lines::new(body)
}

pub(super) struct Lines<'a> {
    buf: &'a [u8],
    /// `buf` as text, when all of it is valid UTF-8 (the usual case: one check for the
    /// whole body instead of one per token; otherwise each token is checked and only
    /// lines with bad bytes are rejected).
    text: Option<&'a str>,
    pos: usize,
    /// Line number of the last line started (1-based once started).
    line: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Lines<'a> {
    pub(super) fn new(body: &'a [u8]) -> Self {
        Lines {
            buf: body,
            text: std::str::from_utf8(body).ok(),
            pos: 0,
            line: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<(usize, ParsedLine<'a>), LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut out = ParsedLine {
            measurement: Cow::Borrowed(""),
            tags: Vec::new(),
            fields: Vec::new(),
            timestamp: None,
        };
        self.next_into(&mut out)
            .map(|r| r.map(|line_no| (line_no, out)))
    }
}

impl<'a> Lines<'a> {
    /// The next point, parsed into `out` (its vectors are reused: no allocation per line
    /// once they have grown), or the error of the next bad line.
    pub(super) fn next_into(
        &mut self,
        out: &mut ParsedLine<'a>,
    ) -> Option<Result<usize, LineError>> {
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
                text: self.text,
                pos: self.pos,
                newlines: 0,
            };
            let res = cur.point(out);
            self.line += cur.newlines;
            self.pos = cur.pos;
            return Some(match res {
                Ok(()) => {
                    // consume the line end
                    if self.buf.get(self.pos) == Some(&b'\r') {
                        self.pos += 1;
                    }
                    if self.buf.get(self.pos) == Some(&b'\n') {
                        self.pos += 1;
                    }
                    Ok(line_no)
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

/// Bytes a token scan must look at: its stop bytes plus the backslash and the line
/// ends, which every scan handles. One lookup per byte instead of a search of the stops.
type Stops = [bool; 256];

const fn stops(bytes: &[u8]) -> Stops {
    let mut t = [false; 256];
    t[b'\\' as usize] = true;
    t[b'\n' as usize] = true;
    t[b'\r' as usize] = true;
    let mut i = 0;
    while i < bytes.len() {
        t[bytes[i] as usize] = true;
        i += 1;
    }
    t
}

/// Measurements, tag values and unquoted field values end at `,` or a space.
static MEASUREMENT_OR_VALUE: Stops = stops(b", ");
/// Tag and field keys end at `,`, `=` or a space.
static KEY: Stops = stops(b",= ");
/// The timestamp ends at white space.
static TIMESTAMP: Stops = stops(b" \t");
/// The rest of the line.
static REST: Stops = stops(b"");

struct Cursor<'a> {
    buf: &'a [u8],
    /// `buf` as text, when all of it is valid UTF-8.
    text: Option<&'a str>,
    pos: usize,
    newlines: usize,
}

fn utf8<'b>(b: &'b [u8], what: &str) -> PResult<&'b str> {
    std::str::from_utf8(b).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// Remove backslashes before the characters in `escapable`; other backslashes stay.
fn unescape<'a>(s: &'a str, escapable: &[u8]) -> Cow<'a, str> {
    if !s.as_bytes().contains(&b'\\') {
        return Cow::Borrowed(s);
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
    Cow::Owned(out)
}

impl<'a> Cursor<'a> {
    /// `raw` (a slice of the body) as text. When the whole body was valid UTF-8 (checked
    /// once, up front) this is a slice of it, without validating each token again.
    fn text(&self, raw: &'a [u8], what: &str) -> PResult<&'a str> {
        if let Some(text) = self.text {
            let start = (raw.as_ptr() as usize).wrapping_sub(self.buf.as_ptr() as usize);
            // tokens start and end at ASCII bytes, so this is a char boundary; `get`
            // checks it anyway and the fallback validates
            if let Some(s) = text.get(start..start.saturating_add(raw.len())) {
                return Ok(s);
            }
        }
        utf8(raw, what)
    }

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

    /// Read up to (not including) the first unescaped byte of `stops` (a [`Stops`]
    /// table), or a line end.
    fn token(&mut self, stops: &Stops) -> &'a [u8] {
        let buf = self.buf;
        let start = self.pos;
        let mut i = start;
        while i < buf.len() {
            let b = buf[i];
            if !stops[b as usize] {
                i += 1;
                continue;
            }
            match b {
                b'\\' => {
                    // an escape pair, unless the backslash ends the line or the body
                    i += if i + 1 < buf.len() && buf[i + 1] != b'\n' {
                        2
                    } else {
                        1
                    };
                }
                b'\r' => {
                    self.pos = i;
                    if self.at_line_end() {
                        break;
                    }
                    i += 1;
                }
                _ => break, // a stop byte or '\n'
            }
        }
        self.pos = i;
        &buf[start..i]
    }

    fn point(&mut self, out: &mut ParsedLine<'a>) -> PResult<()> {
        out.tags.clear();
        out.fields.clear();
        out.timestamp = None;
        let raw = self.token(&MEASUREMENT_OR_VALUE);
        if raw.is_empty() {
            return Err("missing measurement".into());
        }
        out.measurement = unescape(self.text(raw, "measurement")?, b", ");
        let tags = &mut out.tags;
        while self.peek() == Some(b',') {
            self.pos += 1;
            let key = self.token(&KEY);
            if self.peek() != Some(b'=') {
                return Err(format!(
                    "tag {:?} has no value (expected '=')",
                    String::from_utf8_lossy(key)
                ));
            }
            self.pos += 1;
            let value = self.token(&MEASUREMENT_OR_VALUE);
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
                unescape(self.text(key, "tag key")?, b",= "),
                unescape(self.text(value, "tag value")?, b",= "),
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
        let fields = &mut out.fields;
        loop {
            let key = self.token(&KEY);
            if self.peek() != Some(b'=') {
                return Err(format!(
                    "field {:?} has no value (expected '=')",
                    String::from_utf8_lossy(key)
                ));
            }
            if key.is_empty() {
                return Err("empty field key".into());
            }
            let key = unescape(self.text(key, "field key")?, b",= ");
            self.pos += 1;
            let value = self.field_value(&key)?;
            fields.push((key, value));
            if self.peek() == Some(b',') {
                self.pos += 1;
                continue;
            }
            break;
        }
        if self.peek() == Some(b' ') {
            while self.peek() == Some(b' ') {
                self.pos += 1;
            }
            if !self.at_line_end() {
                let raw = self.token(&TIMESTAMP);
                let s = self.text(raw, "timestamp")?;
                let t: i64 = s.parse().map_err(|_| format!("invalid timestamp {s:?}"))?;
                out.timestamp = Some(t);
                while matches!(self.peek(), Some(b' ' | b'\t')) {
                    self.pos += 1;
                }
            }
        }
        if !self.at_line_end() {
            let rest = self.token(&REST);
            return Err(format!(
                "unexpected text after the point: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(40)])
            ));
        }
        Ok(())
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
                unescape(self.text(raw, "string field")?, b"\"\\")
            } else {
                Cow::Borrowed(self.text(raw, "string field")?)
            };
            return Ok(LpValue::String(s));
        }
        let raw = self.token(&MEASUREMENT_OR_VALUE);
        let s = self.text(raw, "field value")?;
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
