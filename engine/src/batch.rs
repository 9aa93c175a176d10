//! Columnar write batches and the row-at-a-time builder that decoders fill.
//!
//! A decoder pushes rows (table, tags, fields, time) into a [`BatchBuilder`]; each row
//! is checked (names, types against the catalog and the rows before it, finite floats)
//! and either appended to its table's Arrow builders or rejected with a reason. The
//! result is a [`WriteBatch`]: one Arrow `RecordBatch` per table, ready for the WAL.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    StringDictionaryBuilder, TimestampNanosecondArray, UInt64Builder,
};
use arrow::datatypes::{Int32Type, SchemaRef};
use arrow::record_batch::RecordBatch;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::model::{
    ColumnType, FieldType, FieldValue, TIME_COLUMN, schema_for, validate_column_name,
    validate_db_name, validate_table_name,
};

/// Rows for one table in columnar form.
#[derive(Debug, Clone)]
pub struct TableWrite {
    /// Table name (validated).
    pub table: String,
    /// `time` first, then tags and fields; column roles follow from their Arrow types.
    pub batch: RecordBatch,
    /// For each row, the caller's identifier (e.g. its line number), used to report rows
    /// the writer has to reject after all.
    pub row_ids: Vec<u32>,
}

/// A set of rows for one database, written atomically to the WAL.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    pub db: String,
    pub tables: Vec<TableWrite>,
}

impl WriteBatch {
    /// Total number of rows.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|t| t.batch.num_rows()).sum()
    }

    /// Build a write batch from ready columnar data: each `RecordBatch` must have a
    /// non-null `time` column of `Timestamp(ns, UTC)` and only tag/field columns.
    pub fn from_record_batches(db: &str, tables: Vec<(String, RecordBatch)>) -> Result<Self> {
        validate_db_name(db)?;
        let mut out = Vec::with_capacity(tables.len());
        for (table, batch) in tables {
            validate_table_name(&table)?;
            let schema = batch.schema();
            let mut has_time = false;
            for f in schema.fields() {
                match ColumnType::from_data_type(f.name(), f.data_type()) {
                    Some(ColumnType::Time) => {
                        has_time = true;
                        if batch
                            .column_by_name(TIME_COLUMN)
                            .is_some_and(|c| c.null_count() > 0)
                        {
                            return Err(Error::Config(format!(
                                "table {table}: the time column may not contain nulls"
                            )));
                        }
                    }
                    Some(ColumnType::Field(FieldType::F64)) | Some(_) => {
                        validate_column_name(f.name())?;
                    }
                    None => {
                        return Err(Error::Config(format!(
                            "table {table}: column {} has unsupported type {}",
                            f.name(),
                            f.data_type()
                        )));
                    }
                }
            }
            if !has_time {
                return Err(Error::Config(format!(
                    "table {table}: missing `time` column of type Timestamp(ns, UTC)"
                )));
            }
            let row_ids = (0..batch.num_rows() as u32).collect();
            out.push(TableWrite {
                table,
                batch,
                row_ids,
            });
        }
        Ok(WriteBatch {
            db: db.to_string(),
            tables: out,
        })
    }
}

/// A row the engine did not store, with the caller's identifier and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub row_id: u32,
    pub reason: String,
}

enum Column {
    Tag(StringDictionaryBuilder<Int32Type>),
    F64(Float64Builder),
    I64(Int64Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl Column {
    fn new(ty: ColumnType) -> Self {
        match ty {
            ColumnType::Tag | ColumnType::Time => Column::Tag(StringDictionaryBuilder::new()),
            ColumnType::Field(FieldType::F64) => Column::F64(Float64Builder::new()),
            ColumnType::Field(FieldType::I64) => Column::I64(Int64Builder::new()),
            ColumnType::Field(FieldType::U64) => Column::U64(UInt64Builder::new()),
            ColumnType::Field(FieldType::Bool) => Column::Bool(BooleanBuilder::new()),
            ColumnType::Field(FieldType::String) => Column::Str(StringBuilder::new()),
        }
    }

    fn builder(&mut self) -> &mut dyn ArrayBuilder {
        match self {
            Column::Tag(b) => b,
            Column::F64(b) => b,
            Column::I64(b) => b,
            Column::U64(b) => b,
            Column::Bool(b) => b,
            Column::Str(b) => b,
        }
    }

    fn pad_to(&mut self, len: usize) {
        let have = self.builder().len();
        if have < len {
            let n = len - have;
            match self {
                Column::Tag(b) => b.append_nulls(n),
                Column::F64(b) => b.append_nulls(n),
                Column::I64(b) => b.append_nulls(n),
                Column::U64(b) => b.append_nulls(n),
                Column::Bool(b) => b.append_nulls(n),
                Column::Str(b) => b.append_nulls(n),
            }
        }
    }

    fn push_field(&mut self, v: &FieldValue<'_>) {
        match (self, v) {
            (Column::F64(b), FieldValue::F64(x)) => b.append_value(*x),
            (Column::I64(b), FieldValue::I64(x)) => b.append_value(*x),
            (Column::U64(b), FieldValue::U64(x)) => b.append_value(*x),
            (Column::Bool(b), FieldValue::Bool(x)) => b.append_value(*x),
            (Column::Str(b), FieldValue::String(x)) => b.append_value(x),
            // Types were checked before appending; keep lengths consistent regardless.
            (c, _) => {
                let len = c.builder().len() + 1;
                c.pad_to(len);
            }
        }
    }
}

struct TableBuilder {
    time: Vec<i64>,
    row_ids: Vec<u32>,
    names: Vec<String>,
    types: Vec<ColumnType>,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
}

impl TableBuilder {
    fn new() -> Self {
        TableBuilder {
            time: Vec::new(),
            row_ids: Vec::new(),
            names: Vec::new(),
            types: Vec::new(),
            columns: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The slot of column `name`, created with type `ty` if new.
    fn slot(&mut self, name: &str, ty: ColumnType) -> usize {
        match self.index.get(name) {
            Some(&i) => i,
            None => {
                let i = self.columns.len();
                self.names.push(name.to_string());
                self.types.push(ty);
                self.columns.push(Column::new(ty));
                self.index.insert(name.to_string(), i);
                i
            }
        }
    }

    fn finish(mut self, table: String) -> Result<TableWrite> {
        let len = self.time.len();
        let mut cols: Vec<(String, ColumnType)> = vec![(TIME_COLUMN.to_string(), ColumnType::Time)];
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(
            TimestampNanosecondArray::from(std::mem::take(&mut self.time)).with_timezone("UTC"),
        )];
        for ((name, ty), mut col) in self.names.into_iter().zip(self.types).zip(self.columns) {
            col.pad_to(len);
            arrays.push(col.builder().finish());
            cols.push((name, ty));
        }
        let schema: SchemaRef = schema_for(&cols);
        let batch = RecordBatch::try_new(schema, arrays)?;
        Ok(TableWrite {
            table,
            batch,
            row_ids: self.row_ids,
        })
    }
}

/// Builds a [`WriteBatch`] row by row, rejecting bad rows with a reason.
pub struct BatchBuilder {
    db: String,
    catalog: Arc<Catalog>,
    tables: Vec<(String, TableBuilder)>,
    table_index: HashMap<String, usize>,
    rows: usize,
    /// The shape of the last accepted row: rows of line protocol and of one MQTT route
    /// mostly repeat it, and a row with the same table, tag keys and field keys/types in
    /// the same order skips the name checks and lookups (see [`BatchBuilder::push_row`]).
    shape: Option<Shape>,
}

/// Table, keys and resolved column slots of an accepted row.
struct Shape {
    table: String,
    table_slot: usize,
    tags: Vec<(String, usize)>,
    fields: Vec<(String, FieldType, usize)>,
}

impl Shape {
    fn matches(
        &self,
        table: &str,
        tags: &[(&str, &str)],
        fields: &[(&str, FieldValue<'_>)],
    ) -> bool {
        self.table == table
            && self.tags.len() == tags.len()
            && self.fields.len() == fields.len()
            && self.tags.iter().zip(tags).all(|((n, _), (k, _))| n == k)
            && self
                .fields
                .iter()
                .zip(fields)
                .all(|((n, t, _), (k, v))| n == k && *t == v.field_type())
    }
}

impl std::fmt::Debug for BatchBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuilder")
            .field("db", &self.db)
            .field("tables", &self.tables.len())
            .field("rows", &self.rows)
            .finish()
    }
}

impl BatchBuilder {
    /// A builder for database `db`, checking types against `catalog`.
    pub fn new(db: &str, catalog: Arc<Catalog>) -> Result<Self> {
        validate_db_name(db)?;
        Ok(BatchBuilder {
            db: db.to_string(),
            catalog,
            tables: Vec::new(),
            table_index: HashMap::new(),
            rows: 0,
            shape: None,
        })
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The database the rows go to.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// The type a column has in the catalog or earlier in this batch.
    fn known_type(&self, table: &str, column: &str) -> Option<ColumnType> {
        if let Some(&ti) = self.table_index.get(table) {
            let tb = &self.tables[ti].1;
            if let Some(&ci) = tb.index.get(column) {
                return Some(tb.types[ci]);
            }
        }
        self.catalog
            .table(&self.db, table)
            .and_then(|t| t.column_type(column))
    }

    /// Check and append one row. `row_id` identifies the row to the caller (e.g. a line
    /// number) in rejections reported later by the writer. On error nothing is appended
    /// and the reason is returned.
    pub fn push_row(
        &mut self,
        table: &str,
        tags: &[(&str, &str)],
        fields: &[(&str, FieldValue<'_>)],
        time: i64,
        row_id: u32,
    ) -> Result<(), String> {
        if let Some(shape) = &self.shape
            && shape.matches(table, tags, fields)
        {
            // names, duplicates and types were checked for this shape: only the values
            if let Some((k, x)) = fields.iter().find_map(|(k, v)| match v {
                FieldValue::F64(x) if !x.is_finite() => Some((k, x)),
                _ => None,
            }) {
                return Err(format!(
                    "table {table}, field {k:?}: non-finite float {x} is not stored"
                ));
            }
            let tb = &mut self.tables[shape.table_slot].1;
            let row = tb.time.len();
            for ((_, slot), (_, v)) in shape.tags.iter().zip(tags) {
                if v.is_empty() {
                    continue; // an empty tag value is the same as no tag
                }
                let col = &mut tb.columns[*slot];
                col.pad_to(row);
                if let Column::Tag(b) = col {
                    b.append_value(v);
                }
            }
            for ((_, _, slot), (_, v)) in shape.fields.iter().zip(fields) {
                let col = &mut tb.columns[*slot];
                col.pad_to(row);
                col.push_field(v);
            }
            tb.time.push(time);
            tb.row_ids.push(row_id);
            self.rows += 1;
            return Ok(());
        }
        if !self.table_index.contains_key(table) {
            validate_table_name(table).map_err(|e| e.to_string())?;
        }
        if fields.is_empty() {
            return Err(format!("table {table}: a row needs at least one field"));
        }
        for (i, (k, _)) in tags.iter().enumerate() {
            if tags[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(format!("table {table}: duplicate tag {k:?}"));
            }
            self.check_column(table, k, ColumnType::Tag)?;
        }
        for (i, (k, v)) in fields.iter().enumerate() {
            if fields[..i].iter().any(|(k2, _)| k2 == k) {
                return Err(format!("table {table}: duplicate field {k:?}"));
            }
            if tags.iter().any(|(t, _)| t == k) {
                return Err(format!("table {table}: {k:?} is both a tag and a field"));
            }
            if let FieldValue::F64(x) = v
                && !x.is_finite()
            {
                return Err(format!(
                    "table {table}, field {k:?}: non-finite float {x} is not stored"
                ));
            }
            self.check_column(table, k, ColumnType::Field(v.field_type()))?;
        }

        let ti = match self.table_index.get(table) {
            Some(&i) => i,
            None => {
                self.tables.push((table.to_string(), TableBuilder::new()));
                self.table_index
                    .insert(table.to_string(), self.tables.len() - 1);
                self.tables.len() - 1
            }
        };
        let tb = &mut self.tables[ti].1;
        let row = tb.time.len();
        let mut shape = Shape {
            table: table.to_string(),
            table_slot: ti,
            tags: Vec::with_capacity(tags.len()),
            fields: Vec::with_capacity(fields.len()),
        };
        for (k, v) in tags {
            let slot = tb.slot(k, ColumnType::Tag);
            shape.tags.push((k.to_string(), slot));
            if v.is_empty() {
                continue; // an empty tag value is the same as no tag
            }
            let col = &mut tb.columns[slot];
            col.pad_to(row);
            if let Column::Tag(b) = col {
                b.append_value(v);
            }
        }
        for (k, v) in fields {
            let slot = tb.slot(k, ColumnType::Field(v.field_type()));
            shape.fields.push((k.to_string(), v.field_type(), slot));
            let col = &mut tb.columns[slot];
            col.pad_to(row);
            col.push_field(v);
        }
        tb.time.push(time);
        tb.row_ids.push(row_id);
        self.rows += 1;
        self.shape = Some(shape);
        Ok(())
    }

    fn check_column(&self, table: &str, column: &str, want: ColumnType) -> Result<(), String> {
        match self.known_type(table, column) {
            Some(have) if have == want => Ok(()),
            Some(have) => Err(conflict_reason(table, column, have, want)),
            None => validate_column_name(column).map_err(|e| e.to_string()),
        }
    }

    /// The finished batch.
    pub fn finish(self) -> Result<WriteBatch> {
        let tables = self
            .tables
            .into_iter()
            .filter(|(_, tb)| !tb.time.is_empty())
            .map(|(name, tb)| tb.finish(name))
            .collect::<Result<Vec<_>>>()?;
        Ok(WriteBatch {
            db: self.db,
            tables,
        })
    }
}

/// Every type-conflict reason contains this (callers classify rejections by it).
pub const TYPE_CONFLICT: &str = "type conflict";

/// The message for a column written with another type than it has.
pub fn conflict_reason(table: &str, column: &str, have: ColumnType, got: ColumnType) -> String {
    format!(
        "table {table}, column {column:?}: {TYPE_CONFLICT}, column is {} but the write has {}",
        have.name(),
        got.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sparse_columns_and_rejects_conflicts() {
        let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
        b.push_row(
            "env",
            &[("room", "a")],
            &[("t", FieldValue::F64(1.0))],
            10,
            1,
        )
        .unwrap();
        b.push_row("env", &[], &[("h", FieldValue::I64(5))], 20, 2)
            .unwrap();
        let err = b
            .push_row("env", &[], &[("t", FieldValue::I64(5))], 30, 3)
            .unwrap_err();
        assert!(
            err.contains("column \"t\"") && err.contains("float") && err.contains("integer"),
            "{err}"
        );
        let err = b
            .push_row("env", &[], &[("t", FieldValue::F64(f64::NAN))], 30, 4)
            .unwrap_err();
        assert!(err.contains("non-finite"), "{err}");
        assert!(b.push_row("env", &[], &[], 30, 5).is_err());
        assert!(
            b.push_row("..", &[], &[("x", FieldValue::Bool(true))], 30, 6)
                .is_err()
        );
        assert!(
            b.push_row(
                "env",
                &[("room", "x")],
                &[("room", FieldValue::Bool(true))],
                30,
                7
            )
            .is_err()
        );
        let wb = b.finish().unwrap();
        assert_eq!(wb.rows(), 2);
        let t = &wb.tables[0];
        assert_eq!(t.row_ids, vec![1, 2]);
        assert_eq!(t.batch.num_columns(), 4);
        assert_eq!(t.batch.column_by_name("h").unwrap().null_count(), 1);
        assert_eq!(t.batch.column_by_name("room").unwrap().null_count(), 1);
    }

    /// Rows repeating the previous row's shape take the fast path; it must still reject
    /// bad values, keep empty tags null, and hand every other shape to the full checks.
    #[test]
    fn repeated_shapes_are_checked_like_any_row() {
        let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
        let row = |b: &mut BatchBuilder, room: &str, t: f64, time: i64, id: u32| {
            b.push_row(
                "m",
                &[("room", room)],
                &[("t", FieldValue::F64(t))],
                time,
                id,
            )
        };
        row(&mut b, "a", 1.0, 1, 1).unwrap();
        row(&mut b, "b", 2.0, 2, 2).unwrap(); // same shape
        assert!(
            row(&mut b, "c", f64::NAN, 3, 3)
                .unwrap_err()
                .contains("non-finite")
        );
        row(&mut b, "", 4.0, 4, 4).unwrap(); // empty tag: null
        // same keys, other type: not the same shape, so the type conflict is found
        let err = b
            .push_row("m", &[("room", "d")], &[("t", FieldValue::I64(5))], 5, 5)
            .unwrap_err();
        assert!(err.contains(TYPE_CONFLICT), "{err}");
        // another table, then back to the first shape
        b.push_row("n", &[], &[("x", FieldValue::Bool(true))], 6, 6)
            .unwrap();
        row(&mut b, "e", 7.0, 7, 7).unwrap();
        // a new field after the shape: slow path, column added and padded
        b.push_row(
            "m",
            &[("room", "f")],
            &[("t", FieldValue::F64(8.0)), ("h", FieldValue::I64(1))],
            8,
            8,
        )
        .unwrap();
        let wb = b.finish().unwrap();
        let m = wb.tables.iter().find(|t| t.table == "m").unwrap();
        assert_eq!(m.row_ids, vec![1, 2, 4, 7, 8]);
        assert_eq!(m.batch.column_by_name("room").unwrap().null_count(), 1);
        assert_eq!(m.batch.column_by_name("h").unwrap().null_count(), 4);
        let t = m
            .batch
            .column_by_name("t")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Float64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(t, vec![1.0, 2.0, 4.0, 7.0, 8.0]);
    }
}
