//! The data model: names, column roles and types, field values, time partitions.
//!
//! A table's Arrow schema is `time` first, then tag columns (dictionary-encoded
//! strings), then field columns. The role of a column is given by its Arrow type:
//! `Dictionary(Int32, Utf8)` is a tag, `Timestamp(ns, "UTC")` named `time` is the time,
//! everything else (`Float64`, `Int64`, `UInt64`, `Boolean`, `Utf8`) is a field.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Name of the time column of every table.
pub const TIME_COLUMN: &str = "time";
/// Longest database name, in bytes.
pub const MAX_DB_NAME: usize = 64;
/// Longest table or column name, in bytes.
pub const MAX_NAME: usize = 128;
/// Nanoseconds in a second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The type of a field column. A field never changes type once created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    F64,
    I64,
    U64,
    Bool,
    String,
}

impl FieldType {
    /// The Arrow type used to store this field.
    pub fn data_type(self) -> DataType {
        match self {
            FieldType::F64 => DataType::Float64,
            FieldType::I64 => DataType::Int64,
            FieldType::U64 => DataType::UInt64,
            FieldType::Bool => DataType::Boolean,
            FieldType::String => DataType::Utf8,
        }
    }

    /// The field type stored in an Arrow column, if it is one.
    pub fn from_data_type(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Float64 => FieldType::F64,
            DataType::Int64 => FieldType::I64,
            DataType::UInt64 => FieldType::U64,
            DataType::Boolean => FieldType::Bool,
            DataType::Utf8 => FieldType::String,
            _ => return None,
        })
    }

    /// Lower-case name used in messages and the catalog API.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::F64 => "float",
            FieldType::I64 => "integer",
            FieldType::U64 => "unsigned",
            FieldType::Bool => "boolean",
            FieldType::String => "string",
        }
    }
}

/// What a column is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// The time column.
    Time,
    /// A tag: a string that identifies a series.
    Tag,
    /// A field of the given type.
    Field(FieldType),
}

impl ColumnType {
    /// The Arrow type of this column.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Time => time_data_type(),
            ColumnType::Tag => tag_data_type(),
            ColumnType::Field(f) => f.data_type(),
        }
    }

    /// The column type for an Arrow type, if talo stores that type.
    pub fn from_data_type(name: &str, dt: &DataType) -> Option<Self> {
        if *dt == time_data_type() && name == TIME_COLUMN {
            Some(ColumnType::Time)
        } else if *dt == tag_data_type() {
            Some(ColumnType::Tag)
        } else {
            FieldType::from_data_type(dt).map(ColumnType::Field)
        }
    }

    /// Name used in messages and the catalog API.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Time => "time",
            ColumnType::Tag => "tag",
            ColumnType::Field(f) => f.name(),
        }
    }
}

/// Arrow type of the `time` column.
pub fn time_data_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// Indices of the tag columns of `schema`, in schema order.
pub fn tag_columns(schema: &Schema) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            ColumnType::from_data_type(f.name(), f.data_type()) == Some(ColumnType::Tag)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Arrow type of a tag column.
pub fn tag_data_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// One field value of a row being written.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    String(&'a str),
}

impl FieldValue<'_> {
    /// The type this value would create or must match.
    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValue::F64(_) => FieldType::F64,
            FieldValue::I64(_) => FieldType::I64,
            FieldValue::U64(_) => FieldType::U64,
            FieldValue::Bool(_) => FieldType::Bool,
            FieldValue::String(_) => FieldType::String,
        }
    }
}

/// Check a database name: it is a SQL schema name and a directory name.
pub fn validate_db_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: truncate_for_message(name),
            reason,
        })
    };
    if name.is_empty() {
        return bad("database name is empty");
    }
    if name.len() > MAX_DB_NAME {
        return bad("database name is longer than 64 bytes");
    }
    if name.starts_with('_') {
        return bad("database names starting with '_' are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad("database names may contain only ASCII letters, digits, '_' and '-'");
    }
    Ok(())
}

/// Check a table name. Tables come from measurements and MQTT topic levels, so most
/// characters are allowed; on disk the name is percent-encoded (see [`path_component`]).
pub fn validate_table_name(name: &str) -> Result<()> {
    validate_general_name(name, "table")
}

/// Check a tag or field name.
pub fn validate_column_name(name: &str) -> Result<()> {
    validate_general_name(name, "column")?;
    if name == TIME_COLUMN {
        return Err(Error::InvalidName {
            name: name.into(),
            reason: "'time' is reserved for the timestamp",
        });
    }
    Ok(())
}

fn validate_general_name(name: &str, what: &'static str) -> Result<()> {
    let reason = if name.is_empty() {
        Some(if what == "table" {
            "table name is empty"
        } else {
            "column name is empty"
        })
    } else if name.len() > MAX_NAME {
        Some("name is longer than 128 bytes")
    } else if name.chars().any(|c| c.is_control()) {
        Some("name contains a control character")
    } else if name == "." || name == ".." {
        Some("name may not be '.' or '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: truncate_for_message(name),
            reason,
        }),
        None => Ok(()),
    }
}

fn truncate_for_message(name: &str) -> String {
    let mut end = name.len().min(80);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].escape_debug().to_string()
}

/// Encode a validated name as one safe path component: ASCII letters, digits, `_` and `-`
/// stay, every other byte becomes `%XX`. The result never contains `/`, `.` or NUL, so it
/// can never leave its parent directory.
pub fn path_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Start (ns) of the partition that holds `time`, for partitions of `width` ns.
/// Saturates at `i64::MIN` for times in the partial partition at the very start of the
/// representable range.
pub fn partition_start(time: i64, width: i64) -> i64 {
    time.checked_sub(time.rem_euclid(width)).unwrap_or(i64::MIN)
}

/// A name for a partition start, `YYYY-MM-DD` when day-aligned, else `YYYY-MM-DDTHH-MM-SS`.
pub fn partition_name(start: i64) -> String {
    let secs = start.div_euclid(NANOS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if rem == 0 {
        format!("{y:04}-{m:02}-{d:02}")
    } else {
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Build the Arrow schema for columns given in storage order.
pub fn schema_for(columns: &[(String, ColumnType)]) -> SchemaRef {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, ty)| Field::new(name, ty.data_type(), *ty != ColumnType::Time))
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_names() {
        for ok in ["default", "house", "toe-2", "a_b"] {
            validate_db_name(ok).unwrap();
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            "..",
            "a/b",
            "/etc",
            "a\0b",
            "_system",
            "a.b",
            "ä",
            long.as_str(),
        ] {
            assert!(validate_db_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn table_names_cannot_escape() {
        let long = "t".repeat(129);
        for bad in ["", ".", "..", "a\0b", "a\nb", long.as_str()] {
            assert!(validate_table_name(bad).is_err(), "{bad:?} accepted");
        }
        for name in ["../../etc/passwd", "/abs", "a/b", "..x", "wohnzimmer-ä"] {
            validate_table_name(name).unwrap();
            let c = path_component(name);
            assert!(
                !c.contains('/') && !c.contains('.') && !c.contains('\0'),
                "{c}"
            );
        }
        assert!(validate_column_name("time").is_err());
    }

    #[test]
    fn partitions() {
        let day = 86_400 * NANOS_PER_SEC;
        assert_eq!(partition_start(day + 5, day), day);
        assert_eq!(partition_start(-1, day), -day);
        assert_eq!(partition_name(0), "1970-01-01");
        assert_eq!(partition_name(-day), "1969-12-31");
        // 2026-11-25T00:00:00Z
        assert_eq!(partition_name(1_764_028_800 * NANOS_PER_SEC), "2025-11-25");
        assert_eq!(partition_name(3600 * NANOS_PER_SEC), "1970-01-01T01-00-00");
    }
}
