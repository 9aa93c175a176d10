//! InfluxDB line protocol.
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, one point per
//! line, as specified by InfluxDB: backslash escapes for `,` `=` and space in names and
//! tag values (and `,` and space in measurements); field values are floats (`1`, `-1.5e3`),
//! signed (`1i`) or unsigned (`1u`) integers, double-quoted strings (escapes `\"` and
//! `\\`) or booleans (`t`, `T`, `true`, `True`, `TRUE` and the same for false); the
//! timestamp is optional (server time is used). Blank lines and `#` comments are
//! skipped; `\r\n` line ends are accepted.

use std::borrow::Cow;

use talo_engine::{BatchBuilder, FieldValue};

/// Longest accepted string field value, in bytes (as InfluxDB).
pub const MAX_STRING_FIELD: usize = 64 * 1024;

/// Timestamp unit of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// Parse the `precision` query parameter (v1, v2 and v3 spellings).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "n" | "ns" | "nanosecond" => Precision::Nanoseconds,
            "u" | "us" | "µ" | "µs" | "microsecond" => Precision::Microseconds,
            "ms" | "millisecond" => Precision::Milliseconds,
            "s" | "second" => Precision::Seconds,
            "m" | "minute" => Precision::Minutes,
            "h" | "hour" => Precision::Hours,
            _ => return None,
        })
    }

    fn nanos(self) -> i64 {
        match self {
            Precision::Nanoseconds => 1,
            Precision::Microseconds => 1_000,
            Precision::Milliseconds => 1_000_000,
            Precision::Seconds => 1_000_000_000,
            Precision::Minutes => 60_000_000_000,
            Precision::Hours => 3_600_000_000_000,
        }
    }

    /// Convert a timestamp in this unit to nanoseconds; `None` when out of range.
    pub fn to_nanos(self, t: i64) -> Option<i64> {
        t.checked_mul(self.nanos())
    }
}

/// A field value as written in line protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum LpValue<'a> {
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    String(Cow<'a, str>),
}

impl LpValue<'_> {
    /// The engine's view of the value.
    pub fn as_field(&self) -> FieldValue<'_> {
        match self {
            LpValue::F64(x) => FieldValue::F64(*x),
            LpValue::I64(x) => FieldValue::I64(*x),
            LpValue::U64(x) => FieldValue::U64(*x),
            LpValue::Bool(x) => FieldValue::Bool(*x),
            LpValue::String(s) => FieldValue::String(s),
        }
    }
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine<'a> {
    pub measurement: Cow<'a, str>,
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub fields: Vec<(Cow<'a, str>, LpValue<'a>)>,
    /// In the write's precision, not yet converted.
    pub timestamp: Option<i64>,
}

/// A line that was not stored: 1-based line number and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

mod parser;
pub use parser::parse_lines;

/// Parse `body` and push every good line into `builder`. Lines without a timestamp get
/// `default_time` (ns). Returns the rejected lines (parse errors and rows the builder
/// refused) in line order.
pub fn write_lines(
    body: &[u8],
    precision: Precision,
    default_time: i64,
    builder: &mut BatchBuilder,
) -> Vec<LineError> {
    let mut errors = Vec::new();
    let mut lines = parser::Lines::new(body);
    let mut parsed = ParsedLine {
        measurement: Cow::Borrowed(""),
        tags: Vec::new(),
        fields: Vec::new(),
        timestamp: None,
    };
    // the borrowed views handed to the builder; their buffers are recycled line to line
    let mut tag_buf: Vec<(&str, &str)> = Vec::new();
    let mut field_buf: Vec<(&str, FieldValue<'_>)> = Vec::new();
    while let Some(item) = lines.next_into(&mut parsed) {
        let line_no = match item {
            Ok(n) => n,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let time = match parsed.timestamp {
            None => default_time,
            Some(t) => match precision.to_nanos(t) {
                Some(ns) => ns,
                None => {
                    errors.push(LineError {
                        line: line_no,
                        reason: format!(
                            "{}: timestamp {t} is out of range for precision {precision:?}",
                            crate::decode::BAD_TIME
                        ),
                    });
                    continue;
                }
            },
        };
        let mut tags = recycle(std::mem::take(&mut tag_buf));
        tags.extend(parsed.tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        let mut fields = recycle(std::mem::take(&mut field_buf));
        fields.extend(
            parsed
                .fields
                .iter()
                .map(|(k, v)| (k.as_ref(), v.as_field())),
        );
        if let Err(reason) =
            builder.push_row(&parsed.measurement, &tags, &fields, time, line_no as u32)
        {
            errors.push(LineError {
                line: line_no,
                reason,
            });
        }
        tag_buf = recycle(tags);
        field_buf = recycle(fields);
    }
    errors
}

/// An empty vector of another element type that keeps `v`'s allocation: the standard
/// library collects a `map` of a vector's own `into_iter` in place when the layouts
/// match, as they do here (the types differ only in lifetimes), and `v` is empty first,
/// so the closure never runs.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

#[cfg(test)]
mod tests;
