//! Payload decoders for MQTT messages: JSON, SenML, a plain value, line protocol, and
//! `auto`. Each is a pure function from bytes to rows plus, for what it cannot use, the
//! reason. Where a row's table, tags and time come from when the payload does not say
//! is the caller's (the route's) business: see [`MessageContext`].

use std::borrow::Cow;

use serde_json::Value;
use talo_engine::{BatchBuilder, FieldValue};

use crate::line_protocol::{LpValue, Precision, parse_lines};

/// Largest payload a decoder accepts.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Start of every reason about a time that cannot be used (see [`classify`]).
pub const BAD_TIME: &str = "bad time";

/// The payload formats a route can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Senml,
    Line,
    Value,
    Auto,
}

impl Format {
    /// Parse a route's `format`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "json" => Format::Json,
            "senml" => Format::Senml,
            "line" | "lp" | "line-protocol" => Format::Line,
            "value" => Format::Value,
            "auto" => Format::Auto,
            _ => return None,
        })
    }
}

/// An owned field value.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedValue {
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    String(String),
}

impl From<LpValue<'_>> for OwnedValue {
    fn from(v: LpValue<'_>) -> Self {
        match v {
            LpValue::F64(x) => OwnedValue::F64(x),
            LpValue::I64(x) => OwnedValue::I64(x),
            LpValue::U64(x) => OwnedValue::U64(x),
            LpValue::Bool(x) => OwnedValue::Bool(x),
            LpValue::String(s) => OwnedValue::String(Cow::into_owned(s)),
        }
    }
}

impl OwnedValue {
    fn as_field(&self) -> FieldValue<'_> {
        match self {
            OwnedValue::F64(x) => FieldValue::F64(*x),
            OwnedValue::I64(x) => FieldValue::I64(*x),
            OwnedValue::U64(x) => FieldValue::U64(*x),
            OwnedValue::Bool(x) => FieldValue::Bool(*x),
            OwnedValue::String(s) => FieldValue::String(s),
        }
    }
}

/// One decoded row. `table` and `time` are `None` when the payload does not give them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodedRow {
    pub table: Option<String>,
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, OwnedValue)>,
    pub time: Option<i64>,
}

/// What the message's route provides.
#[derive(Debug, Clone)]
pub struct MessageContext<'a> {
    /// Table when the payload names none.
    pub table: &'a str,
    /// Tags from the topic.
    pub tags: &'a [(String, String)],
    /// Arrival time (ns), used when the payload has no time.
    pub arrival_ns: i64,
}

/// [`decode`] for MQTT messages: the reason of a refusal comes with its kind, for the
/// per-reason counters and `_rejected`.
pub fn decode_message(
    format: Format,
    payload: &[u8],
) -> Result<Vec<DecodedRow>, (crate::metrics::Reason, String)> {
    use crate::metrics::Reason;
    if payload.len() > MAX_PAYLOAD {
        return Err((
            Reason::Oversized,
            format!(
                "payload of {} bytes is larger than {MAX_PAYLOAD}",
                payload.len()
            ),
        ));
    }
    if let Err(e) = std::str::from_utf8(payload) {
        return Err((Reason::Utf8, format!("payload is not UTF-8 text: {e}")));
    }
    decode(format, payload).map_err(|msg| {
        let kind = if msg.contains(BAD_TIME) {
            Reason::TimeRange
        } else {
            Reason::Decode
        };
        (kind, msg)
    })
}

/// Decode a payload into rows; an `Err` rejects the whole payload with a reason.
pub fn decode(format: Format, payload: &[u8]) -> Result<Vec<DecodedRow>, String> {
    if payload.len() > MAX_PAYLOAD {
        return Err(format!(
            "payload of {} bytes is larger than {MAX_PAYLOAD}",
            payload.len()
        ));
    }
    match format {
        Format::Json => decode_json(payload),
        Format::Senml => crate::senml::decode_senml(payload),
        Format::Line => decode_line(payload),
        Format::Value => decode_value(payload),
        Format::Auto => {
            let trimmed = payload.trim_ascii();
            match trimmed.first() {
                Some(b'{') => decode_json(payload),
                Some(b'[') => {
                    if crate::senml::looks_like_senml(trimmed) {
                        crate::senml::decode_senml(payload)
                    } else {
                        decode_json(payload)
                    }
                }
                _ => decode_value(payload).or_else(|_| decode_line(payload)),
            }
        }
    }
}

/// Push decoded rows into a builder with the route's defaults. Returns the number of
/// rows stored and the reasons of those refused.
pub fn push_rows(
    rows: &[DecodedRow],
    ctx: &MessageContext<'_>,
    builder: &mut BatchBuilder,
    row_id: u32,
) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut errors = Vec::new();
    for r in rows {
        let mut tags: Vec<(&str, &str)> = ctx
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (k, v) in &r.tags {
            match tags.iter_mut().find(|(tk, _)| *tk == k.as_str()) {
                Some(t) => t.1 = v.as_str(),
                None => tags.push((k.as_str(), v.as_str())),
            }
        }
        let fields: Vec<(&str, FieldValue<'_>)> = r
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_field()))
            .collect();
        let table = r.table.as_deref().unwrap_or(ctx.table);
        match builder.push_row(
            table,
            &tags,
            &fields,
            r.time.unwrap_or(ctx.arrival_ns),
            row_id,
        ) {
            Ok(()) => ok += 1,
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

/// Nanoseconds per unit of an epoch number of this magnitude (s, ms, us or ns).
fn epoch_unit(magnitude: f64) -> i64 {
    if magnitude < 1e11 {
        1_000_000_000
    } else if magnitude < 1e14 {
        1_000_000
    } else if magnitude < 1e17 {
        1_000
    } else {
        1
    }
}

/// Integer epoch → ns, guessing the unit by magnitude (s, ms, us, ns). Exact.
pub fn epoch_int_to_nanos(x: i64) -> Option<i64> {
    x.checked_mul(epoch_unit(x.unsigned_abs() as f64))
}

/// Fractional epoch → ns, guessing the unit by magnitude; sub-microsecond digits of a
/// float are noise, so the fraction is rounded to the microsecond.
pub fn epoch_to_nanos(x: f64) -> Option<i64> {
    if !x.is_finite() || x.abs() >= 9.2e18 {
        return None;
    }
    let unit = epoch_unit(x.abs());
    let whole = x.trunc();
    let frac_us = ((x - whole) * unit as f64 / 1_000.0).round() as i64;
    (whole as i64)
        .checked_mul(unit)?
        .checked_add(frac_us * 1_000)
}

/// RFC 3339 text → ns.
pub fn rfc3339_to_nanos(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .timestamp_nanos_opt()
}

const TIME_KEYS: [&str; 3] = ["ts", "time", "timestamp"];

fn json_time(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map_or_else(|| n.as_f64().and_then(epoch_to_nanos), epoch_int_to_nanos)
            .ok_or_else(|| format!("{BAD_TIME}: {n} is out of range")),
        Value::String(s) => rfc3339_to_nanos(s)
            .or_else(|| s.parse::<i64>().ok().and_then(epoch_int_to_nanos))
            .or_else(|| s.parse::<f64>().ok().and_then(epoch_to_nanos))
            .ok_or_else(|| format!("{BAD_TIME}: {s:?} is neither RFC 3339 nor an epoch number")),
        other => Err(format!(
            "{BAD_TIME}: must be a string or number, not {other}"
        )),
    }
}

fn flatten(
    prefix: &str,
    v: &Value,
    out: &mut Vec<(String, OwnedValue)>,
    depth: usize,
) -> Result<(), String> {
    if depth > 16 {
        return Err("JSON nested deeper than 16 levels".into());
    }
    match v {
        Value::Null => {}
        Value::Bool(b) => out.push((prefix.to_string(), OwnedValue::Bool(*b))),
        // all JSON numbers are floats: a sensor that sends 21 and then 21.5 must not
        // hit a type conflict
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => out.push((prefix.to_string(), OwnedValue::F64(x))),
            _ => return Err(format!("field {prefix:?}: number out of range")),
        },
        Value::String(s) => out.push((prefix.to_string(), OwnedValue::String(s.clone()))),
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out, depth + 1)?;
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), v, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn json_row(obj: &serde_json::Map<String, Value>) -> Result<DecodedRow, String> {
    let mut row = DecodedRow::default();
    for (k, v) in obj {
        if TIME_KEYS.contains(&k.as_str()) {
            if row.time.is_some() {
                return Err("more than one of ts/time/timestamp".into());
            }
            row.time = Some(json_time(v)?);
            continue;
        }
        flatten(k, v, &mut row.fields, 0)?;
    }
    if row.fields.is_empty() {
        return Err("the object has no field values".into());
    }
    Ok(row)
}

/// JSON: an object of fields, or an array of such objects.
pub fn decode_json(payload: &[u8]) -> Result<Vec<DecodedRow>, String> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    match v {
        Value::Object(m) => Ok(vec![json_row(&m)?]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, it)| match it {
                Value::Object(m) => json_row(m).map_err(|e| format!("item {i}: {e}")),
                _ => Err(format!("item {i} is not an object")),
            })
            .collect(),
        _ => Err("JSON payload must be an object or an array of objects".into()),
    }
}

/// A plain value: a number, `true`/`false`, `on`/`off`; stored as field `value`.
pub fn decode_value(payload: &[u8]) -> Result<Vec<DecodedRow>, String> {
    let s = std::str::from_utf8(payload)
        .map_err(|_| "payload is not valid UTF-8".to_string())?
        .trim();
    let v = match s.to_ascii_lowercase().as_str() {
        "true" | "on" => OwnedValue::Bool(true),
        "false" | "off" => OwnedValue::Bool(false),
        _ => match s.parse::<f64>() {
            Ok(x)
                if x.is_finite()
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
            {
                OwnedValue::F64(x)
            }
            _ => return Err(format!("not a plain value: {:?}", &s[..s.len().min(40)])),
        },
    };
    Ok(vec![DecodedRow {
        fields: vec![("value".into(), v)],
        ..Default::default()
    }])
}

/// Line protocol (nanosecond timestamps); every line must parse.
pub fn decode_line(payload: &[u8]) -> Result<Vec<DecodedRow>, String> {
    let mut rows = Vec::new();
    for item in parse_lines(payload) {
        let (_, p) = item.map_err(|e| format!("line {}: {}", e.line, e.reason))?;
        rows.push(DecodedRow {
            table: Some(p.measurement.into_owned()),
            tags: p
                .tags
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            fields: p
                .fields
                .into_iter()
                .map(|(k, v)| (k.into_owned(), OwnedValue::from(v)))
                .collect(),
            time: p
                .timestamp
                .map(|t| Precision::Nanoseconds.to_nanos(t).unwrap_or(t)),
        });
    }
    if rows.is_empty() {
        return Err("no line-protocol point in the payload".into());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests;
