//! SenML (RFC 8428), JSON representation.
//!
//! Records are resolved as the RFC says: base name + name, base time + time (a resolved
//! time below 2^28 s is relative to now), base value + value, base fields carrying over
//! to the following records. Mapping to rows: the resolved base name becomes tag
//! `device` (when there is one), the record's own name the field name (`value` when
//! empty); `v` is a float field, `vb` a boolean, `vs` and `vd` strings, `s` a float field
//! `<name>_sum`. Records of the same device and time form one row.

use serde_json::{Map, Value};

use crate::decode::{DecodedRow, OwnedValue};

/// Times below this (seconds) are relative to now (RFC 8428 §4.5.3).
const RELATIVE_LIMIT: f64 = 268_435_456.0;

/// Whether a JSON array looks like SenML (its first record has SenML keys).
pub(crate) fn looks_like_senml(payload: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Array(a)) => a.first().and_then(Value::as_object).is_some_and(|o| {
            (o.contains_key("n") || o.contains_key("bn"))
                && ["v", "vs", "vb", "vd", "s", "bv"]
                    .iter()
                    .any(|k| o.contains_key(*k))
        }),
        _ => false,
    }
}

fn num(o: &Map<String, Value>, k: &str, i: usize) -> Result<Option<f64>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| format!("record {i}: {k} out of range")),
        Some(_) => Err(format!("record {i}: {k} must be a number")),
    }
}

fn text<'a>(o: &'a Map<String, Value>, k: &str, i: usize) -> Result<Option<&'a str>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("record {i}: {k} must be a string")),
    }
}

/// Decode a SenML pack; `now_s` is the arrival time in seconds for relative times.
pub(crate) fn decode_senml_at(payload: &[u8], now_s: f64) -> Result<Vec<DecodedRow>, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("invalid SenML JSON: {e}"))?;
    let Value::Array(records) = v else {
        return Err("SenML must be a JSON array of records".into());
    };
    if records.is_empty() {
        return Err("empty SenML pack".into());
    }
    let mut bn = String::new();
    let mut bt = 0.0;
    let mut bv = 0.0;
    let mut bs = 0.0;
    let mut rows: Vec<DecodedRow> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let o = r
            .as_object()
            .ok_or_else(|| format!("record {i} is not an object"))?;
        if let Some(b) = text(o, "bn", i)? {
            bn = b.to_string();
        }
        if let Some(b) = num(o, "bt", i)? {
            bt = b;
        }
        if let Some(b) = num(o, "bv", i)? {
            bv = b;
        }
        if let Some(b) = num(o, "bs", i)? {
            bs = b;
        }
        let n = text(o, "n", i)?.unwrap_or("");
        let field = if n.is_empty() { "value" } else { n };
        let mut t = bt + num(o, "t", i)?.unwrap_or(0.0);
        if t < RELATIVE_LIMIT {
            t += now_s;
        }
        let time = crate::decode::epoch_to_nanos(t)
            .ok_or_else(|| format!("record {i}: {}: out of range", crate::decode::BAD_TIME))?;
        let mut values = Vec::new();
        if let Some(v) = num(o, "v", i)? {
            values.push((field.to_string(), OwnedValue::F64(bv + v)));
        }
        match o.get("vb") {
            None => {}
            Some(Value::Bool(b)) => values.push((field.to_string(), OwnedValue::Bool(*b))),
            Some(_) => return Err(format!("record {i}: vb must be a boolean")),
        }
        for k in ["vs", "vd"] {
            if let Some(s) = text(o, k, i)? {
                values.push((field.to_string(), OwnedValue::String(s.to_string())));
            }
        }
        if let Some(s) = num(o, "s", i)? {
            values.push((format!("{field}_sum"), OwnedValue::F64(bs + s)));
        }
        if values.is_empty() {
            if o.keys().all(|k| k.starts_with('b')) {
                continue; // a record with base fields only
            }
            return Err(format!("record {i} has no value (v, vb, vs, vd or s)"));
        }
        let tags = if bn.is_empty() {
            Vec::new()
        } else {
            vec![("device".to_string(), bn.clone())]
        };
        match rows
            .iter_mut()
            .find(|row| row.time == Some(time) && row.tags == tags)
        {
            Some(row) => {
                for (k, v) in values {
                    match row.fields.iter_mut().find(|(fk, _)| *fk == k) {
                        Some(f) => f.1 = v,
                        None => row.fields.push((k, v)),
                    }
                }
            }
            None => rows.push(DecodedRow {
                table: None,
                tags,
                fields: values,
                time: Some(time),
            }),
        }
    }
    if rows.is_empty() {
        return Err("SenML pack without values".into());
    }
    Ok(rows)
}

/// Decode a SenML pack relative to the current time.
pub(crate) fn decode_senml(payload: &[u8]) -> Result<Vec<DecodedRow>, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    decode_senml_at(payload, now)
}
