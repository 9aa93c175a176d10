//! Parquet segments: sorting, last-write-wins deduplication and encoding.
//!
//! A segment holds the rows of one (database, table, partition), sorted by the tag
//! columns (the series) then `time`, with at most one row per point. Encodings are
//! chosen per column for sensor data: dictionary + RLE for tags, delta for timestamps
//! and integers, byte-stream-split for floats, all zstd-compressed; page statistics and
//! the page index are written so that readers can prune by time.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::model::{ColumnType, TIME_COLUMN};

/// How segments are encoded.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    /// zstd level (1..=22).
    pub zstd_level: i32,
    /// Rows per row group.
    pub row_group_rows: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            zstd_level: 3,
            row_group_rows: 256 * 1024,
        }
    }
}

/// Indices of the columns that identify a point: tags (in schema order) then time.
fn key_columns(batch: &RecordBatch) -> Vec<usize> {
    let schema = batch.schema();
    let mut keys: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            ColumnType::from_data_type(f.name(), f.data_type()) == Some(ColumnType::Tag)
        })
        .map(|(i, _)| i)
        .collect();
    if let Ok(t) = schema.index_of(TIME_COLUMN) {
        keys.push(t);
    }
    keys
}

/// Sort rows by series then time and merge rows of the same point: for each field the
/// last non-null value in arrival order wins (rows are in arrival order on input).
pub fn sort_dedup(batch: &RecordBatch) -> Result<RecordBatch> {
    let n = batch.num_rows();
    if n == 0 {
        return Ok(batch.clone());
    }
    let keys = key_columns(batch);
    let fields: Vec<SortField> = keys
        .iter()
        .map(|&i| SortField::new(batch.schema().field(i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let key_arrays: Vec<ArrayRef> = keys.iter().map(|&i| Arc::clone(batch.column(i))).collect();
    let rows = converter.convert_columns(&key_arrays)?;
    let mut order: Vec<u32> = (0..n as u32).collect();
    // stable: rows of the same point keep their arrival order
    order.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));

    // group boundaries: start index (into `order`) of each distinct point
    let mut starts: Vec<usize> = Vec::with_capacity(n);
    starts.push(0);
    for i in 1..n {
        if rows.row(order[i] as usize) != rows.row(order[i - 1] as usize) {
            starts.push(i);
        }
    }
    let sorted_idx = UInt32Array::from(order.clone());
    if starts.len() == n {
        let columns = batch
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &sorted_idx, None))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(RecordBatch::try_new(batch.schema(), columns)?);
    }

    let mut columns = Vec::with_capacity(batch.num_columns());
    for (ci, col) in batch.columns().iter().enumerate() {
        let is_key = keys.contains(&ci);
        let mut idx = Vec::with_capacity(starts.len());
        for (g, &s) in starts.iter().enumerate() {
            let e = starts.get(g + 1).copied().unwrap_or(n);
            let pick = if is_key {
                order[s]
            } else {
                // last non-null in arrival order; the last row if all are null
                (s..e)
                    .rev()
                    .map(|i| order[i])
                    .find(|&r| col.is_valid(r as usize))
                    .unwrap_or(order[e - 1])
            };
            idx.push(pick);
        }
        columns.push(take(col.as_ref(), &UInt32Array::from(idx), None)?);
    }
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Writer properties for a batch's schema.
fn writer_properties(batch: &RecordBatch, opts: &SegmentOptions) -> Result<WriterProperties> {
    let schema = batch.schema();
    let level = ZstdLevel::try_new(opts.zstd_level)?;
    let sorting: Vec<SortingColumn> = key_columns(batch)
        .into_iter()
        .map(|i| SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: true,
        })
        .collect();
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(opts.row_group_rows))
        .set_sorting_columns(Some(sorting))
        .set_created_by(format!("talo {}", env!("CARGO_PKG_VERSION")));
    for f in schema.fields() {
        let path = ColumnPath::from(f.name().as_str());
        match f.data_type() {
            DataType::Timestamp(_, _) | DataType::Int64 | DataType::UInt64 => {
                b = b
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
            }
            DataType::Float64 => {
                b = b
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, Encoding::BYTE_STREAM_SPLIT);
            }
            _ => {}
        }
    }
    Ok(b.build())
}

/// Write `batch` (already sorted and deduplicated) as a Parquet file published
/// atomically at `path`. Returns the file size.
pub fn write_parquet(path: &Path, batch: &RecordBatch, opts: &SegmentOptions) -> Result<u64> {
    if let Some(parent) = path.parent() {
        fsutil::create_dir_all_durably(parent)?;
    }
    let tmp: PathBuf = fsutil::tmp_path(path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .at(&tmp)?;
    let props = writer_properties(batch, opts)?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    writer.write(batch)?;
    let file = writer.into_inner()?;
    fail::fail_point!("segment::before_fsync", |_| Err(crate::Error::Io {
        path: tmp.clone(),
        source: std::io::Error::other("failpoint segment::before_fsync"),
    }));
    file.sync_all().at(&tmp)?;
    let size = file.metadata().at(&tmp)?.len();
    drop(file);
    fail::fail_point!("segment::before_rename", |_| Err(crate::Error::Io {
        path: tmp.clone(),
        source: std::io::Error::other("failpoint segment::before_rename"),
    }));
    fsutil::rename_durably(&tmp, path)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use crate::catalog::Catalog;
    use crate::model::FieldValue;
    use arrow::array::{Float64Array, Int64Array, TimestampNanosecondArray};

    #[test]
    fn sort_and_last_write_wins_per_field() {
        let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
        let rows: &[(&str, i64, Option<f64>, Option<i64>)] = &[
            ("b", 20, Some(1.0), Some(1)),
            ("a", 10, Some(2.0), None),
            ("b", 20, None, Some(7)), // same point: only i overwritten
            ("a", 5, Some(3.0), Some(3)),
            ("b", 20, Some(9.0), None), // same point: only f overwritten
        ];
        for (i, (s, t, f, n)) in rows.iter().enumerate() {
            let mut fields = Vec::new();
            if let Some(f) = f {
                fields.push(("f", FieldValue::F64(*f)));
            }
            if let Some(n) = n {
                fields.push(("i", FieldValue::I64(*n)));
            }
            b.push_row("t", &[("s", s)], &fields, *t, i as u32).unwrap();
        }
        let wb = b.finish().unwrap();
        let out = sort_dedup(&wb.tables[0].batch).unwrap();
        assert_eq!(out.num_rows(), 3);
        let time = out
            .column_by_name("time")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        assert_eq!(time.values().to_vec(), vec![5, 10, 20]);
        let f = out
            .column_by_name("f")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(f.values().to_vec(), vec![3.0, 2.0, 9.0]);
        let i = out
            .column_by_name("i")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!((i.value(0), i.is_null(1), i.value(2)), (3, true, 7));
    }
}
