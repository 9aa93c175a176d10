//! Parquet segments: sorting, last-write-wins deduplication and encoding.
//!
//! A segment holds the rows of one (database, table, partition), sorted by the tag
//! columns (the series) then `time`, with at most one row per point. Encodings are
//! chosen per column for sensor data: delta for timestamps, integer fields and float
//! fields that hold short decimals (stored as scaled integers, [`crate::decimal`]),
//! dictionary and RLE for tags and the other field values, all
//! zstd-compressed; page statistics and the page index are written so that readers can
//! prune by time.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, DictionaryArray, StringArray, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::decimal;
use crate::error::{IoContext, Result};
use crate::fsutil;
use crate::model::{TIME_COLUMN, tag_columns};

/// How segments are encoded.
#[derive(Debug, Clone, Copy)]
pub struct SegmentOptions {
    /// zstd level (1..=22).
    pub zstd_level: i32,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Most rows per data page.
    pub page_rows: usize,
    /// Store float fields whose values are all short decimals as scaled integers
    /// (Parquet `DECIMAL` on `INT64`, delta-encoded; lossless, see [`crate::decimal`]).
    pub decimal_floats: bool,
    /// Store integer columns (and those scaled integers) in 32 bits where a file's
    /// values fit (Parquet `INT32`; lossless, see [`crate::decimal`]).
    pub narrow_integers: bool,
}

impl SegmentOptions {
    /// The compact stored types these options allow.
    pub fn packing(&self) -> decimal::Packing {
        decimal::Packing {
            decimals: self.decimal_floats,
            narrow: self.narrow_integers,
        }
    }
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            zstd_level: 3,
            row_group_rows: 256 * 1024,
            page_rows: 20_000,
            decimal_floats: true,
            narrow_integers: true,
        }
    }
}

/// Indices of the columns that identify a point: tags (in schema order) then time.
fn key_columns(batch: &RecordBatch) -> Vec<usize> {
    key_columns_of(&batch.schema())
}

/// [`key_columns`] of a schema.
pub(crate) fn key_columns_of(schema: &SchemaRef) -> Vec<usize> {
    let mut keys = tag_columns(schema);
    if let Ok(t) = schema.index_of(TIME_COLUMN) {
        keys.push(t);
    }
    keys
}

/// Sort rows by series then time and merge rows of the same point: for each field the
/// last non-null value in arrival order wins (rows are in arrival order on input).
pub fn sort_dedup(batch: &RecordBatch) -> Result<RecordBatch> {
    sort_dedup_with(batch, false)
}

fn sort_dedup_with(batch: &RecordBatch, force_row_format: bool) -> Result<RecordBatch> {
    if batch.num_rows() == 0 {
        return Ok(batch.clone());
    }
    let order = SortedOrder::with(batch, force_row_format)?;
    order.take(batch, 0..order.len())
}

/// The sorted, deduplicated order of a batch's rows (what [`sort_dedup`] produces),
/// taken a range at a time: a flush writes the rows in slices and never holds a second,
/// sorted copy of the whole buffer.
pub(crate) struct SortedOrder {
    /// Row indices by series then time (then arrival).
    order: Vec<u32>,
    /// Positions in `order` where each distinct point starts, if any point has more
    /// than one row; `None` when every row is its own point.
    starts: Option<Vec<u32>>,
    keys: Vec<usize>,
}

impl SortedOrder {
    pub(crate) fn new(batch: &RecordBatch) -> Result<Self> {
        Self::with(batch, false)
    }

    fn with(batch: &RecordBatch, force_row_format: bool) -> Result<Self> {
        let n = batch.num_rows();
        let keys = key_columns(batch);
        // keys = tag columns then the time column
        let tag_idx = &keys[..keys.len().saturating_sub(1)];
        let time = crate::writer::time_column(batch)?;

        // order[i] = row index; same_as_prev(i) = row order[i] is the same point as order[i-1]
        let ranks = if force_row_format {
            None
        } else {
            series_ranks(batch, tag_idx)
        };
        let (order, starts) = match ranks {
            Some(series) => {
                let mut keyed: Vec<(u64, i64, u32)> = (0..n)
                    .map(|i| (series[i], time.value(i), i as u32))
                    .collect();
                drop(series);
                // the row index makes the unstable sort deterministic and keeps arrival order
                keyed.sort_unstable();
                let starts = group_starts(n, |i| {
                    keyed[i].0 == keyed[i - 1].0 && keyed[i].1 == keyed[i - 1].1
                });
                (keyed.into_iter().map(|k| k.2).collect::<Vec<u32>>(), starts)
            }
            None => {
                // too many distinct tag values to pack into 64 bits: compare row encodings
                let fields: Vec<SortField> = keys
                    .iter()
                    .map(|&i| SortField::new(batch.schema().field(i).data_type().clone()))
                    .collect();
                let converter = RowConverter::new(fields)?;
                let key_arrays: Vec<ArrayRef> =
                    keys.iter().map(|&i| Arc::clone(batch.column(i))).collect();
                let rows = converter.convert_columns(&key_arrays)?;
                let mut order: Vec<u32> = (0..n as u32).collect();
                order.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
                let starts = group_starts(n, |i| {
                    rows.row(order[i] as usize) == rows.row(order[i - 1] as usize)
                });
                (order, starts)
            }
        };
        Ok(SortedOrder {
            order,
            starts,
            keys,
        })
    }

    /// Rows of the output (distinct points).
    pub(crate) fn len(&self) -> usize {
        self.starts.as_ref().map_or(self.order.len(), Vec::len)
    }

    /// Output rows `range` of `batch` (the batch this order was computed on).
    pub(crate) fn take(
        &self,
        batch: &RecordBatch,
        range: std::ops::Range<usize>,
    ) -> Result<RecordBatch> {
        let Some(starts) = &self.starts else {
            let idx = UInt32Array::from(self.order[range].to_vec());
            let columns = batch
                .columns()
                .iter()
                .map(|c| take(c.as_ref(), &idx, None))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(RecordBatch::try_new(batch.schema(), columns)?);
        };
        let n = self.order.len();
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (ci, col) in batch.columns().iter().enumerate() {
            let is_key = self.keys.contains(&ci);
            let mut idx = Vec::with_capacity(range.len());
            for g in range.clone() {
                let s = starts[g] as usize;
                let e = starts.get(g + 1).map_or(n, |&e| e as usize);
                let pick = if is_key {
                    self.order[s]
                } else {
                    // last non-null in arrival order; the last row if all are null
                    (s..e)
                        .rev()
                        .map(|i| self.order[i])
                        .find(|&r| col.is_valid(r as usize))
                        .unwrap_or(self.order[e - 1])
                };
                idx.push(pick);
            }
            columns.push(take(col.as_ref(), &UInt32Array::from(idx), None)?);
        }
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }
}

/// Where each distinct point starts in a sorted order of `n` rows, or `None` if no row
/// repeats the point before it.
fn group_starts(n: usize, same_as_prev: impl Fn(usize) -> bool) -> Option<Vec<u32>> {
    let first_dup = (1..n).find(|&i| same_as_prev(i))?;
    let mut starts: Vec<u32> = (0..first_dup as u32).collect();
    starts.extend(
        (first_dup..n)
            .filter(|&i| !same_as_prev(i))
            .map(|i| i as u32),
    );
    Some(starts)
}

/// For each row, a u64 whose order is the order of its tag values (tag by tag, nulls
/// first), or `None` if the distinct values do not fit in 64 bits.
fn series_ranks(batch: &RecordBatch, tag_idx: &[usize]) -> Option<Vec<u64>> {
    let n = batch.num_rows();
    let mut out = vec![0u64; n];
    let mut used_bits = 0u32;
    for &ci in tag_idx {
        let dict = batch
            .column(ci)
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()?;
        let values = dict.values().as_any().downcast_ref::<StringArray>()?;
        // dense rank of each dictionary value by string order (equal strings, equal rank)
        let mut by_value: Vec<u32> = (0..values.len() as u32).collect();
        by_value.sort_unstable_by(|&a, &b| values.value(a as usize).cmp(values.value(b as usize)));
        let mut rank_of = vec![0u64; values.len()];
        let mut rank = 0u64;
        for (pos, &v) in by_value.iter().enumerate() {
            if pos == 0 || values.value(v as usize) != values.value(by_value[pos - 1] as usize) {
                rank += 1;
            }
            rank_of[v as usize] = rank; // 0 is reserved for null
        }
        let bits = 64 - rank.leading_zeros();
        used_bits += bits;
        if used_bits > 64 {
            return None;
        }
        let keys = dict.keys();
        for (i, o) in out.iter_mut().enumerate() {
            let r = if keys.is_valid(i) {
                rank_of.get(keys.value(i) as usize).copied().unwrap_or(0)
            } else {
                0
            };
            *o = if bits == 64 { r } else { (*o << bits) | r };
        }
    }
    Some(out)
}

/// Writer properties for a segment schema.
fn writer_properties(schema: &SchemaRef, opts: &SegmentOptions) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(opts.zstd_level)?;
    let sorting: Vec<SortingColumn> = key_columns_of(schema)
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
        // the writer checks the page limit every write batch: keep batches within it
        .set_write_batch_size(opts.page_rows.clamp(1, 1024))
        .set_data_page_row_count_limit(opts.page_rows)
        .set_sorting_columns(Some(sorting))
        .set_created_by(format!("talo {}", env!("CARGO_PKG_VERSION")));
    // Integer fields, timestamps and float fields stored as scaled integers (decimals,
    // crate::decimal) are delta-encoded: consecutive readings of one series (rows are
    // sorted by series then time) differ by little, so the deltas bit-pack small (co2:
    // 0.45 bytes/row against 1.13 with a dictionary; regular timestamps pack to
    // ~nothing). Floats that stay doubles keep dictionary encoding (the default): it beat
    // byte-stream-split and plain on every float column of the sensor benchmark
    // (benches/README).
    for f in schema.fields() {
        if matches!(
            f.data_type(),
            DataType::Timestamp(_, _)
                | DataType::Int64
                | DataType::UInt64
                | DataType::Int32
                | DataType::UInt32
                | DataType::Decimal64(_, _)
                | DataType::Decimal32(_, _)
        ) {
            let path = ColumnPath::from(f.name().as_str());
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    Ok(b.build())
}

/// Rows per slice when [`write_sorted`] writes a batch.
const WRITE_SLICE_ROWS: usize = 64 * 1024;

/// Sort and deduplicate `batch` (as [`sort_dedup`] does) and write it as a Parquet file
/// published atomically at `path`, a slice at a time, so that the sorted rows are never
/// all in memory beside the unsorted ones. Returns the file size and the rows written.
pub(crate) fn write_sorted(
    path: &Path,
    batch: &RecordBatch,
    opts: &SegmentOptions,
) -> Result<(u64, u64)> {
    let order = SortedOrder::new(batch)?;
    let mut w = SegmentWriter::create(path, &stored_schema(batch, opts), opts)?;
    let n = order.len();
    let mut at = 0;
    while at < n {
        let end = (at + WRITE_SLICE_ROWS).min(n);
        w.write(&order.take(batch, at..end)?)?;
        at = end;
    }
    Ok((w.finish()?, n as u64))
}

/// Write `batch` (already sorted and deduplicated) as a Parquet file published
/// atomically at `path`. Returns the file size.
pub fn write_parquet(path: &Path, batch: &RecordBatch, opts: &SegmentOptions) -> Result<u64> {
    let mut w = SegmentWriter::create(path, &stored_schema(batch, opts), opts)?;
    w.write(batch)?;
    w.finish()
}

/// The schema a segment holding `batch` is stored in: its own, with the float columns
/// that fit stored as decimals and the integers that fit in 32 bits (if `opts` allows).
fn stored_schema(batch: &RecordBatch, opts: &SegmentOptions) -> SchemaRef {
    if opts.packing().any() {
        decimal::storage_schema_of(batch, opts.packing())
    } else {
        batch.schema()
    }
}

/// The schema a segment file is stored in (read from its footer).
pub(crate) fn stored_schema_of_file(path: &Path) -> Result<SchemaRef> {
    let file = std::fs::File::open(path).at(path)?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?;
    Ok(Arc::clone(builder.schema()))
}

/// A segment written batch by batch (each sorted, deduplicated, and after the previous
/// one in key order), published atomically by [`SegmentWriter::finish`]. Until then the
/// rows live in a temp file that startup cleans up after a crash.
pub(crate) struct SegmentWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<std::fs::File>,
    /// The stored schema (float columns possibly as decimals, integers possibly in 32
    /// bits, [`crate::decimal`]).
    storage: SchemaRef,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl SegmentWriter {
    /// A writer of a segment stored as `schema`; batches written to it may hold its
    /// decimal columns as `Float64` (converted exactly, or an error).
    pub(crate) fn create(path: &Path, schema: &SchemaRef, opts: &SegmentOptions) -> Result<Self> {
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
        let props = writer_properties(schema, opts)?;
        let writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(props))?;
        Ok(SegmentWriter {
            path: path.to_path_buf(),
            tmp,
            writer,
            storage: Arc::clone(schema),
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        Ok(self.writer.write(&decimal::encode(batch, &self.storage)?)?)
    }

    /// Close, fsync and rename into place; returns the file size.
    pub(crate) fn finish(self) -> Result<u64> {
        let SegmentWriter {
            path, tmp, writer, ..
        } = self;
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
        fsutil::rename_durably(&tmp, &path)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// The packed-rank sort and the row-format sort agree, with nulls and dupes.
        #[test]
        fn fast_and_general_sort_agree(rows in proptest::collection::vec((0u8..4, 0u8..3, 0i64..6, 0i64..100), 1..80)) {
            let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
            for (i, (a, c, t, v)) in rows.iter().enumerate() {
                let av = format!("a{a}");
                let cv = format!("c{c}");
                let mut tags = vec![];
                if *a > 0 { tags.push(("a", av.as_str())); }
                if *c > 0 { tags.push(("c", cv.as_str())); }
                b.push_row("t", &tags, &[("v", FieldValue::I64(*v))], *t, i as u32).unwrap();
            }
            let batch = b.finish().unwrap().tables.remove(0).batch;
            prop_assert_eq!(sort_dedup_with(&batch, false).unwrap(), sort_dedup_with(&batch, true).unwrap());
        }
    }

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

    /// Written in slices, the file holds exactly what one `sort_dedup` gives: more rows
    /// than a slice, duplicates (partly null) straddling slice boundaries, arrival order
    /// scrambled.
    #[test]
    fn write_sorted_equals_sort_dedup() {
        let n = WRITE_SLICE_ROWS * 5 + 777;
        let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
        for i in 0..n {
            // ~n/3 distinct points, each written up to 3 times in scattered order
            let k = (i * 7919) % (n / 3);
            let sensor = format!("s{}", k % 50);
            let mut fields = vec![("i", FieldValue::I64(i as i64))];
            if i % 5 != 0 {
                fields.push(("f", FieldValue::F64(i as f64)));
            }
            b.push_row(
                "t",
                &[("sensor", &sensor)],
                &fields,
                (k / 50) as i64,
                i as u32,
            )
            .unwrap();
        }
        let batch = b.finish().unwrap().tables.remove(0).batch;
        let want = sort_dedup(&batch).unwrap();
        assert!(want.num_rows() > WRITE_SLICE_ROWS && want.num_rows() < n);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        let (bytes, rows) = write_sorted(&path, &batch, &SegmentOptions::default()).unwrap();
        assert_eq!(rows as usize, want.num_rows());
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        let got: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&path).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let got = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
        // `f` holds small whole numbers: stored as a 32-bit decimal, read back as the
        // table's double
        assert_eq!(
            got.schema().field_with_name("f").unwrap().data_type(),
            &decimal::decimal32_type(0)
        );
        let got = crate::buffer::align_batch(&got, &want.schema()).unwrap();
        assert_eq!(got.num_rows(), want.num_rows());
        for (g, w) in got.columns().iter().zip(want.columns()) {
            // compare values, not dictionary layouts
            let plain = |a: &ArrayRef| match a.data_type() {
                DataType::Dictionary(_, v) => arrow::compute::cast(a, v).unwrap(),
                _ => Arc::clone(a),
            };
            assert_eq!(&plain(g), &plain(w));
        }
    }

    /// Integer fields, time and short-decimal floats are delta-encoded, other floats
    /// dictionary-encoded, and a random-walk integer column comes out smaller than with
    /// a dictionary.
    #[test]
    fn integer_fields_are_delta_encoded() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
        let mut co2 = 600i64;
        for i in 0..50_000i64 {
            co2 += [-3, -1, 0, 1, 2][(i * 7 % 5) as usize];
            let fields = [
                ("co2", FieldValue::I64(co2)),
                ("t", FieldValue::F64(21.5)),
                ("x", FieldValue::F64(std::f64::consts::PI * i as f64)),
            ];
            b.push_row("env", &[("s", "a")], &fields, i * 10, i as u32)
                .unwrap();
        }
        let batch = sort_dedup(&b.finish().unwrap().tables.remove(0).batch).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        write_parquet(&path, &batch, &SegmentOptions::default()).unwrap();
        let r = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let rg = r.metadata().row_group(0);
        let col = |name: &str| {
            (0..rg.num_columns())
                .map(|i| rg.column(i))
                .find(|c| c.column_path().string() == name)
                .unwrap()
        };
        // values that fit are stored in 32 bits (crate::decimal), time stays 64
        for (name, physical) in [
            ("co2", parquet::basic::Type::INT32),
            ("t", parquet::basic::Type::INT32),
            ("time", parquet::basic::Type::INT64),
        ] {
            assert_eq!(col(name).column_descr().physical_type(), physical, "{name}");
        }
        for (name, delta) in [("co2", true), ("time", true), ("t", true), ("x", false)] {
            let enc = col(name).encodings().collect::<Vec<_>>();
            assert_eq!(
                enc.contains(&Encoding::DELTA_BINARY_PACKED),
                delta,
                "{name}: {enc:?}"
            );
        }
        // the same column with a dictionary is larger
        let dict = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .build();
        let mut buf = Vec::new();
        let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(dict)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let r2 = SerializedFileReader::new(bytes::Bytes::from(buf)).unwrap();
        let rg2 = r2.metadata().row_group(0);
        let dict_size = (0..rg2.num_columns())
            .map(|i| rg2.column(i))
            .find(|c| c.column_path().string() == "co2")
            .unwrap()
            .compressed_size();
        assert!(
            col("co2").compressed_size() < dict_size,
            "delta {} vs dictionary {dict_size}",
            col("co2").compressed_size()
        );
    }
}
