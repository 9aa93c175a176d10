//! Streaming merge of sorted inputs in bounded memory: compaction's merge of segments,
//! and the query's deduplication of segments that overlap each other or the buffer.
//!
//! Every input is sorted by series then time with one row per point. [`SortedMerge`] is
//! fed each input's batches one at a time and repeats: the *watermark* is the smallest
//! "last key of the batch in hand" among inputs that may still deliver rows; every row
//! at or below it, from every input, can be final — no later batch holds a smaller key.
//! Those rows are concatenated in precedence order and go through `sort_dedup` (the
//! flush's own last-write-wins per field), and the result is handed out. The input that
//! defined the watermark is used up in each round, so the merge always advances, and
//! memory holds at most about one batch per input plus one output chunk, whatever the
//! inputs' sizes.
//!
//! The merge itself does no I/O: it says which input it needs next
//! ([`MergeStep::Need`]) and the driver — a blocking Parquet reader for compaction, an
//! async DataFusion stream for queries — pushes that input's next batch (or its end).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::ArrayRef;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::row::{OwnedRow, Row, RowConverter, Rows, SortField};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::buffer::align_batch;
use crate::error::{Error, IoContext, Result};
use crate::manifest::SegmentMeta;
use crate::model::TIME_COLUMN;
use crate::segment::{key_columns_of, sort_dedup};

/// What a merge produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MergeStats {
    pub rows_in: u64,
    pub rows_out: u64,
}

/// One input: the rest of the batch in hand, with that batch's keys.
#[derive(Default)]
struct Input {
    batch: Option<(RecordBatch, Rows)>,
    offset: usize,
    done: bool,
}

impl Input {
    fn remaining(&self) -> usize {
        self.batch
            .as_ref()
            .map_or(0, |(b, _)| b.num_rows() - self.offset)
    }

    fn last_key(&self) -> Option<Row<'_>> {
        let (b, rows) = self.batch.as_ref()?;
        (b.num_rows() > self.offset).then(|| rows.row(b.num_rows() - 1))
    }

    /// Take the rows in hand whose key is at most `w` (all of them when `w` is `None`).
    fn take_upto(&mut self, w: Option<&OwnedRow>) -> Option<RecordBatch> {
        let (b, rows) = self.batch.as_ref()?;
        let end = match w {
            None => b.num_rows(),
            Some(w) => {
                // first index in [offset, len) whose key is above the watermark
                let (mut lo, mut hi) = (self.offset, b.num_rows());
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if rows.row(mid) <= w.row() {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
        };
        if end == self.offset {
            return None;
        }
        let out = b.slice(self.offset, end - self.offset);
        self.offset = end;
        Some(out)
    }
}

/// Row-format keys (tags in schema order, then time) for one schema.
struct Keys {
    converter: RowConverter,
    columns: Vec<usize>,
}

impl Keys {
    fn new(schema: &SchemaRef) -> Result<Self> {
        let columns = key_columns_of(schema);
        let fields = columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        Ok(Keys {
            converter: RowConverter::new(fields)?,
            columns,
        })
    }

    fn rows(&self, b: &RecordBatch) -> Result<Rows> {
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|&i| Arc::clone(b.column(i)))
            .collect();
        Ok(self.converter.convert_columns(&cols)?)
    }
}

/// What [`SortedMerge::step`] asks for or hands out.
#[derive(Debug)]
pub enum MergeStep {
    /// Push the next batch of this input (or its end) before stepping again.
    Need(usize),
    /// Merged rows: sorted by series then time, one row per point, each after the last.
    Rows(RecordBatch),
    /// Every input is used up.
    Done,
}

/// A k-way merge with last-write-wins of inputs sorted by series then time (module docs).
/// Inputs are numbered in precedence order: where two hold the same point, for each
/// field the non-null value of the higher-numbered one wins. Inputs of equal precedence
/// (parts of one file) may take consecutive numbers: they never share a point.
pub struct SortedMerge {
    schema: SchemaRef,
    keys: Keys,
    inputs: Vec<Input>,
    prev_last: Option<OwnedRow>,
    rows_in: u64,
}

impl std::fmt::Debug for SortedMerge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SortedMerge")
            .field("schema", &self.schema)
            .field("inputs", &self.inputs.len())
            .field("rows_in", &self.rows_in)
            .finish_non_exhaustive()
    }
}

impl SortedMerge {
    /// A merge of `inputs` inputs whose batches all have (or are aligned to) `schema`,
    /// which holds the tag columns and `time`.
    pub fn new(schema: SchemaRef, inputs: usize) -> Result<Self> {
        if schema.index_of(TIME_COLUMN).is_err() {
            return Err(Error::Internal("merge schema has no time column".into()));
        }
        Ok(SortedMerge {
            keys: Keys::new(&schema)?,
            schema,
            inputs: (0..inputs).map(|_| Input::default()).collect(),
            prev_last: None,
            rows_in: 0,
        })
    }

    /// Rows taken from the inputs so far.
    pub fn rows_in(&self) -> u64 {
        self.rows_in
    }

    /// Hand input `i` its next batch, or `None` once it has no more.
    pub fn push(&mut self, i: usize, batch: Option<RecordBatch>) -> Result<()> {
        let input = self
            .inputs
            .get_mut(i)
            .ok_or_else(|| Error::Internal(format!("merge has no input {i}")))?;
        match batch {
            None => {
                input.done = true;
                input.batch = None;
            }
            Some(b) => {
                let b = align_batch(&b, &self.schema)?;
                let rows = self.keys.rows(&b)?;
                input.batch = Some((b, rows));
                input.offset = 0;
            }
        }
        Ok(())
    }

    /// The next thing to do: feed an input, take merged rows, or stop.
    pub fn step(&mut self) -> Result<MergeStep> {
        loop {
            if let Some(i) = self
                .inputs
                .iter()
                .position(|i| i.remaining() == 0 && !i.done)
            {
                return Ok(MergeStep::Need(i));
            }
            if self.inputs.iter().all(|i| i.remaining() == 0) {
                return Ok(MergeStep::Done);
            }
            // inputs not yet exhausted bound what is final; an exhausted one holds no more
            let w: Option<OwnedRow> = self
                .inputs
                .iter()
                .filter(|i| !i.done)
                .filter_map(Input::last_key)
                .min()
                .map(|r| r.owned());
            let parts: Vec<RecordBatch> = self
                .inputs
                .iter_mut()
                .filter_map(|i| i.take_upto(w.as_ref()))
                .collect();
            let chunk = concat_batches(&self.schema, &parts)?;
            drop(parts);
            self.rows_in += chunk.num_rows() as u64;
            let merged = sort_dedup(&chunk)?;
            drop(chunk);
            if merged.num_rows() == 0 {
                continue;
            }
            // each chunk must start after the previous one ended: inputs not sorted the
            // way the merge assumes would otherwise turn into duplicates
            let rows = self.keys.rows(&merged)?;
            if let Some(p) = &self.prev_last
                && rows.row(0) <= p.row()
            {
                return Err(Error::Internal(
                    "merge input not sorted by series and time".into(),
                ));
            }
            self.prev_last = Some(rows.row(merged.num_rows() - 1).owned());
            return Ok(MergeStep::Rows(merged));
        }
    }
}

/// Merge `run` (in precedence order: later segments win), handing each merged chunk to
/// `out` in key order. Returns `None` if `halt` was raised on the way (the caller drops
/// the unfinished output).
pub(crate) fn merge_segments(
    data_dir: &Path,
    run: &[Arc<SegmentMeta>],
    schema: &SchemaRef,
    out: &mut dyn FnMut(&RecordBatch) -> Result<()>,
    batch_rows: usize,
    halt: &AtomicBool,
) -> Result<Option<MergeStats>> {
    let mut readers = Vec::with_capacity(run.len());
    for s in run {
        let path = data_dir.join(&s.path);
        let file = File::open(&path).at(&path)?;
        readers.push(
            ParquetRecordBatchReaderBuilder::try_new(file)?
                .with_batch_size(batch_rows.max(1))
                .build()?,
        );
    }
    let mut merge = SortedMerge::new(Arc::clone(schema), run.len())?;
    let mut stats = MergeStats {
        rows_in: 0,
        rows_out: 0,
    };
    loop {
        if halt.load(Ordering::Acquire) {
            return Ok(None);
        }
        let merged = match merge.step() {
            Ok(MergeStep::Need(i)) => {
                let next = readers[i].next().transpose()?;
                merge.push(i, next)?;
                continue;
            }
            Ok(MergeStep::Rows(b)) => b,
            Ok(MergeStep::Done) => break,
            Err(Error::Internal(m)) => {
                return Err(Error::Internal(format!(
                    "{m} (compacting segments {:?})",
                    run.iter().map(|s| s.id).collect::<Vec<_>>()
                )));
            }
            Err(e) => return Err(e),
        };
        stats.rows_out += merged.num_rows() as u64;
        out(&merged)?;
    }
    stats.rows_in = merge.rows_in();
    Ok(Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;
    use crate::catalog::{Catalog, ColumnDef};
    use crate::model::{ColumnType, FieldValue};
    use crate::segment::{SegmentOptions, SegmentWriter, write_parquet};
    use proptest::prelude::*;

    /// Rows: (segment, sensor, optional room tag, time, optional value a, optional b).
    type Spec = Vec<(u8, u8, bool, i64, Option<i64>, Option<u8>)>;

    /// Write one segment per distinct segment number (in order: later ones win) and
    /// return them with the table schema after all of them.
    fn segments(dir: &Path, spec: &Spec) -> (Vec<Arc<SegmentMeta>>, SchemaRef, Vec<RecordBatch>) {
        // like the writer and the flush: the catalog only appends columns, and a segment
        // is sorted in the table's schema of its time
        let mut catalog = Catalog::new();
        let mut metas = Vec::new();
        let mut raw = Vec::new();
        for seg in 0..4u8 {
            let rows: Vec<_> = spec.iter().filter(|r| r.0 == seg).collect();
            if rows.is_empty() {
                continue;
            }
            let mut b = BatchBuilder::new("db", Arc::new(catalog.clone())).unwrap();
            for (i, (_, sensor, room, t, a, bb)) in rows.iter().enumerate() {
                let s = format!("s{sensor}");
                let mut tags = vec![("sensor", s.as_str())];
                if *room {
                    tags.push(("room", "r1"));
                }
                let mut fields = vec![];
                if let Some(a) = a {
                    fields.push(("a", FieldValue::I64(*a)));
                }
                if let Some(x) = bb {
                    // a second field only some segments have (schema grows)
                    fields.push(("b", FieldValue::F64(f64::from(*x))));
                }
                if fields.is_empty() {
                    fields.push(("a", FieldValue::I64(0)));
                }
                b.push_row("t", &tags, &fields, *t, i as u32).unwrap();
            }
            let wb = b.finish().unwrap();
            let cols: Vec<ColumnDef> = wb.tables[0]
                .batch
                .schema()
                .fields()
                .iter()
                .map(|f| ColumnDef {
                    name: f.name().clone(),
                    ty: ColumnType::from_data_type(f.name(), f.data_type()).unwrap(),
                })
                .collect();
            catalog.add_columns("db", "t", &cols);
            let schema = catalog.table("db", "t").unwrap().schema();
            let batch = sort_dedup(&align_batch(&wb.tables[0].batch, &schema).unwrap()).unwrap();
            let id = metas.len() as u64 + 1;
            let rel = format!("seg{id}.parquet");
            let bytes = write_parquet(&dir.join(&rel), &batch, &SegmentOptions::default()).unwrap();
            raw.push(wb.tables[0].batch.clone());
            metas.push(Arc::new(SegmentMeta {
                id,
                db: "db".into(),
                table: "t".into(),
                partition: 0,
                path: rel,
                min_time: 0,
                max_time: 0,
                rows: batch.num_rows() as u64,
                bytes,
                seq: None,
            }));
        }
        let schema = catalog.table("db", "t").unwrap().schema();
        (metas, schema, raw)
    }

    fn read_all(path: &Path) -> RecordBatch {
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
        concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The streaming merge (tiny batches, so the watermark moves often) gives exactly
        /// what merging everything in memory gives: same rows, same winners per field.
        #[test]
        fn streaming_merge_equals_in_memory_merge(
            spec in proptest::collection::vec(
                (0u8..4, 0u8..5, any::<bool>(), 0i64..30, proptest::option::of(0i64..100), proptest::option::of(0u8..9)),
                1..150),
            batch_rows in 1usize..7,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (run, schema, _) = segments(dir.path(), &spec);
            // the reference: every input aligned, concatenated in precedence order, merged
            let mut all = Vec::new();
            for s in &run {
                all.extend(crate::reader::read_segment(dir.path(), s, &schema).unwrap());
            }
            let want = sort_dedup(&concat_batches(&schema, &all).unwrap()).unwrap();

            let out = dir.path().join("out.parquet");
            let mut w = SegmentWriter::create(&out, &schema, &SegmentOptions::default()).unwrap();
            let stats = merge_segments(dir.path(), &run, &schema, &mut |b| w.write(b), batch_rows, &AtomicBool::new(false))
                .unwrap()
                .unwrap();
            w.finish().unwrap();
            let got = align_batch(&read_all(&out), &schema).unwrap();
            let want = align_batch(&want, &schema).unwrap();
            prop_assert_eq!(stats.rows_out as usize, want.num_rows());
            prop_assert_eq!(stats.rows_in, run.iter().map(|s| s.rows).sum::<u64>());
            for (g, w) in got.columns().iter().zip(want.columns()) {
                // compare values, not dictionary layouts
                let g = arrow::compute::cast(g, &arrow::datatypes::DataType::Utf8).unwrap_or_else(|_| Arc::clone(g));
                let w = arrow::compute::cast(w, &arrow::datatypes::DataType::Utf8).unwrap_or_else(|_| Arc::clone(w));
                prop_assert_eq!(g.as_ref(), w.as_ref());
            }
        }
    }

    #[test]
    fn halting_stops_the_merge() {
        let dir = tempfile::tempdir().unwrap();
        let spec: Spec = (0..100)
            .map(|i| {
                (
                    (i % 3) as u8,
                    (i % 5) as u8,
                    false,
                    i64::from(i),
                    Some(1),
                    None,
                )
            })
            .collect();
        let (run, schema, _) = segments(dir.path(), &spec);
        let out = dir.path().join("out.parquet");
        let mut w = SegmentWriter::create(&out, &schema, &SegmentOptions::default()).unwrap();
        let halted = merge_segments(
            dir.path(),
            &run,
            &schema,
            &mut |b| w.write(b),
            4,
            &AtomicBool::new(true),
        )
        .unwrap();
        assert_eq!(halted, None);
    }
}
