//! Where each series' rows lie in a segment file: a sparse series index.
//!
//! A segment's rows are sorted by series (the tags) then time, so the rows of one series
//! are one run. [`SeriesRuns`] keeps, per file, each run's tag values and first row; a
//! filter on tags alone is then evaluated once per run instead of once per row, and the
//! scan reads exactly the rows of the runs that pass (a `RowSelection` handed to the
//! Parquet reader with the file), nothing of a file where none passes.
//!
//! Without it, DataFusion's Parquet opener found a sensor's rows by the row groups'
//! statistics and the page index (a pruning predicate built and evaluated per file per
//! query), then decoded the tag column of the pages left (up to 20,000 rows, many
//! series) to filter them row by row: for a one-sensor query most of the scan's work.
//!
//! The runs are computed from the file's tag columns by a background task the first
//! time a query could use them (a query never waits: until they are there it scans as
//! before), kept while the segment exists, within a memory budget. Nothing assumes the
//! file is sorted: a file whose runs are short (unsorted, or a series per few rows) is
//! marked not worth indexing and scanned as before.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, RecordBatchReader, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use datafusion::physical_expr::PhysicalExpr;
use talo_engine::model::tag_columns;
use talo_engine::{SegmentMeta, Snapshot};

use crate::lastpoint::conform;
use crate::runs::run_starts;

/// Rows decoded at a time while computing a file's runs.
const BATCH_ROWS: usize = 64 * 1024;

/// A file is indexed only where its runs average at least this many rows: below it the
/// per-run evaluation saves little and the index would hold a good part of the file.
const MIN_ROWS_PER_RUN: u64 = 32;

/// The runs of rows with equal tags in one segment file.
#[derive(Debug)]
pub(crate) struct SeriesRuns {
    /// One row per run: the run's tag values, in the file's schema (tag columns only;
    /// string dictionaries rebuilt to hold the runs' values alone).
    tags: RecordBatch,
    /// The first row of each run, then the file's row count.
    bounds: Vec<u64>,
    /// The file's Arrow schema, as the Parquet reader derives it from the footer: a scan
    /// handed it (`PartitionedFile::with_arrow_schema`) does not decode the footer's
    /// embedded schema again at every open (~4 % of a one-sensor query's CPU).
    pub(crate) file_schema: SchemaRef,
}

impl SeriesRuns {
    /// The rows of the file for which `predicate` holds, as a selection of the whole file,
    /// and how many rows it selects (0: no row of the file passes). `predicate` is
    /// evaluated over `tag_schema` (the table's tag columns, in its current types): a tag
    /// the file predates is NULL in every run, as it is in every row.
    pub(crate) fn select(
        &self,
        predicate: &Arc<dyn PhysicalExpr>,
        tag_schema: &SchemaRef,
    ) -> Result<(RowSelection, u64)> {
        let runs = conform(&self.tags, tag_schema)?;
        let passed = predicate.evaluate(&runs)?.into_array(runs.num_rows())?;
        let Some(passed) = passed.as_boolean_opt() else {
            return Err(DataFusionError::Internal(format!(
                "a tag filter evaluated to {}, not booleans",
                passed.data_type()
            )));
        };
        let mut selectors: Vec<RowSelector> = Vec::new();
        let mut selected = 0u64;
        for (i, w) in self.bounds.windows(2).enumerate() {
            let rows = (w[1] - w[0]) as usize;
            // NULL (unknown) does not pass a filter
            let pass = passed.is_valid(i) && passed.value(i);
            if pass {
                selected += rows as u64;
            }
            match selectors.last_mut() {
                Some(last) if last.skip != pass => last.row_count += rows,
                _ => selectors.push(if pass {
                    RowSelector::select(rows)
                } else {
                    RowSelector::skip(rows)
                }),
            }
        }
        Ok((RowSelection::from(selectors), selected))
    }

    /// Memory held.
    fn size(&self) -> usize {
        self.tags.get_array_memory_size() + self.bounds.len() * 8
    }
}

/// The runs of equal tags in the segment file at `path`; `None` where the file has no
/// tags or its runs are too short to be worth keeping (see [`MIN_ROWS_PER_RUN`]).
pub(crate) fn series_runs_of_file(path: &Path) -> Result<Option<SeriesRuns>> {
    let file = std::fs::File::open(path)
        .map_err(|e| DataFusionError::Execution(format!("{}: {e}", path.display())))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let file_schema = Arc::clone(builder.schema());
    let total = builder.metadata().file_metadata().num_rows() as u64;
    let tags = tag_columns(builder.schema());
    if tags.is_empty() {
        return Ok(None);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), tags.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()?;
    let schema = reader.schema();
    let most = (total / MIN_ROWS_PER_RUN).max(1);
    let mut firsts = Vec::new();
    let mut bounds = Vec::new();
    let mut at = 0u64;
    for batch in reader {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let starts = run_starts(batch.columns())?;
        bounds.extend(starts.iter().map(|&s| at + s as u64));
        if bounds.len() as u64 > most {
            return Ok(None);
        }
        let rows = UInt32Array::from_iter_values(starts.iter().map(|&s| s as u32));
        firsts.push(take_record_batch(&batch, &rows)?);
        at += batch.num_rows() as u64;
    }
    if at != total {
        return Err(DataFusionError::Execution(format!(
            "{}: read {at} rows of {total}",
            path.display()
        )));
    }
    bounds.push(total);
    let firsts = concat_batches(&schema, &firsts)?;
    Ok(Some(SeriesRuns {
        tags: compact(&firsts)?,
        bounds,
        file_schema,
    }))
}

/// `batch` with each dictionary column rebuilt from its values (the taken rows of a
/// decoded batch still share the whole column chunk's dictionary).
fn compact(batch: &RecordBatch) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Dictionary(_, value) => {
                let plain = cast(c, value)?;
                Ok(cast(&plain, c.data_type())?)
            }
            _ => Ok(Arc::clone(c)),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// The tag columns of `schema`, as [`SeriesRuns::select`] evaluates filters over them.
pub(crate) fn tag_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = tag_columns(schema)
        .into_iter()
        .map(|i| schema.field(i).clone())
        .collect();
    Arc::new(Schema::new(fields))
}

enum Entry {
    /// A task is computing it.
    Pending,
    /// Computed: `None` where the file is not indexed (no tags, short runs, over the
    /// budget, unreadable).
    Done(Option<Arc<SeriesRuns>>),
}

#[derive(Default)]
struct Kept {
    /// by table, then by segment path
    tables: HashMap<(String, String), HashMap<String, Entry>>,
    bytes: usize,
}

/// Each segment's [`SeriesRuns`], shared by an executor's queries.
pub(crate) struct SeriesIndex {
    inner: Mutex<Kept>,
    budget: usize,
}

impl std::fmt::Debug for SeriesIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (files, bytes) = self.kept();
        f.debug_struct("SeriesIndex")
            .field("files", &files)
            .field("bytes", &bytes)
            .field("budget", &self.budget)
            .finish()
    }
}

impl SeriesIndex {
    /// An index holding at most `budget` bytes of runs (0: none, every scan as before).
    pub(crate) fn new(budget: usize) -> Self {
        SeriesIndex {
            inner: Mutex::default(),
            budget,
        }
    }

    /// The runs of every segment of `segs`, or `None` if some are not computed yet
    /// (a task is started for each: the caller scans as it would without) or not
    /// indexed.
    pub(crate) fn runs(
        self: &Arc<Self>,
        data_dir: &Path,
        segs: &[&SegmentMeta],
    ) -> Option<Vec<Arc<SeriesRuns>>> {
        if self.budget == 0 || segs.is_empty() {
            return None;
        }
        let mut found = Vec::with_capacity(segs.len());
        let mut missing = Vec::new();
        {
            let mut kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            // the segments of one scan are of one table
            let (db, name) = (&segs[0].db, &segs[0].table);
            if segs.iter().any(|s| s.db != *db || s.table != *name) {
                return None;
            }
            let t = kept.tables.entry((db.clone(), name.clone())).or_default();
            for s in segs {
                match t.get(&s.path) {
                    Some(Entry::Done(Some(r))) => found.push(Arc::clone(r)),
                    Some(Entry::Done(None)) | Some(Entry::Pending) => {}
                    None => {
                        t.insert(s.path.clone(), Entry::Pending);
                        missing.push((s.db.clone(), s.table.clone(), s.path.clone()));
                    }
                }
            }
        }
        if !missing.is_empty() {
            self.compute(data_dir, missing);
        }
        (found.len() == segs.len()).then_some(found)
    }

    /// Starts computing the runs of every segment of `snapshot` not yet indexed, in one
    /// background task: the executor's tick calls it whenever the segments change (at
    /// startup — the index is not persisted — and after flushes and merges), so that a
    /// dashboard's queries neither pay for it nor run beside its computation, nor plan
    /// without the runs. A scan that finds a segment not asked for yet starts it too.
    pub(crate) fn warm_all(self: &Arc<Self>, snapshot: &Snapshot, data_dir: &Path) {
        if self.budget == 0 {
            return;
        }
        let mut missing = Vec::new();
        {
            let mut kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            for s in snapshot.segments.iter() {
                let t = kept
                    .tables
                    .entry((s.db.clone(), s.table.clone()))
                    .or_default();
                if !t.contains_key(&s.path) {
                    t.insert(s.path.clone(), Entry::Pending);
                    missing.push((s.db.clone(), s.table.clone(), s.path.clone()));
                }
            }
        }
        if !missing.is_empty() {
            self.compute(data_dir, missing);
        }
    }

    /// Computes the runs of `missing` (db, table, path) one after another in a blocking
    /// task of the current runtime (none: they stay pending until a later call).
    fn compute(self: &Arc<Self>, data_dir: &Path, missing: Vec<(String, String, String)>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let mut kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            for (db, table, path) in missing {
                if let Some(t) = kept.tables.get_mut(&(db, table)) {
                    t.remove(&path);
                }
            }
            return;
        };
        let (this, dir) = (Arc::clone(self), data_dir.to_path_buf());
        rt.spawn_blocking(move || {
            for (db, table, path) in missing {
                let runs = match series_runs_of_file(&dir.join(&path)) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(segment = %path, error = %e, "series runs not computed");
                        None
                    }
                };
                this.admit(&db, &table, &path, runs);
            }
        });
    }

    /// Records computed runs, if the segment is still pending (not dropped by `retain`
    /// meanwhile) and they fit the budget.
    fn admit(&self, db: &str, table: &str, path: &str, runs: Option<SeriesRuns>) {
        let mut kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Kept { tables, bytes } = &mut *kept;
        let Some(entry) = tables
            .get_mut(&(db.to_string(), table.to_string()))
            .and_then(|t| t.get_mut(path))
        else {
            return;
        };
        let runs = runs.filter(|r| *bytes + r.size() <= self.budget);
        if let Some(r) = &runs {
            *bytes += r.size();
        }
        *entry = Entry::Done(runs.map(Arc::new));
    }

    /// Forgets the segments that are not in `snapshot` (compacted away, expired), and
    /// tables with none left.
    pub(crate) fn retain_live(&self, snapshot: &Snapshot) {
        let live: HashSet<&str> = snapshot.segments.iter().map(|s| s.path.as_str()).collect();
        let mut kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Kept { tables, bytes } = &mut *kept;
        for segments in tables.values_mut() {
            segments.retain(|path, entry| {
                let alive = live.contains(path.as_str());
                if !alive && let Entry::Done(Some(r)) = entry {
                    *bytes = bytes.saturating_sub(r.size());
                }
                alive
            });
        }
        tables.retain(|_, segments| !segments.is_empty());
    }

    /// Whether every segment of `segs` (of one table) has been looked at: its runs are
    /// kept or it is not indexed. `false` while one is computing or was never asked for.
    pub(crate) fn settled(&self, segs: &[&SegmentMeta]) -> bool {
        if self.budget == 0 {
            return true;
        }
        let Some(first) = segs.first() else {
            return true;
        };
        let kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = kept.tables.get(&(first.db.clone(), first.table.clone())) else {
            return false;
        };
        segs.iter()
            .all(|s| matches!(t.get(&s.path), Some(Entry::Done(_))))
    }

    /// Segment files whose runs are kept, and their bytes.
    pub(crate) fn kept(&self) -> (usize, usize) {
        let kept = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let n = kept
            .tables
            .values()
            .flat_map(|t| t.values())
            .filter(|e| matches!(e, Entry::Done(Some(_))))
            .count();
        (n, kept.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{DictionaryArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Int32Type;
    use datafusion::common::DFSchema;
    use datafusion::execution::context::SessionContext;
    use datafusion::logical_expr::{col, lit};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    fn dict(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(
            values
                .iter()
                .copied()
                .collect::<DictionaryArray<Int32Type>>(),
        )
    }

    /// A file of rows (room, floor, v) in `batches` row groups, as written.
    fn write(path: &Path, rows: &[(&str, Option<&str>, i64)], row_group: usize) {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "room",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new(
                "floor",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("v", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                dict(&rows.iter().map(|r| Some(r.0)).collect::<Vec<_>>()),
                dict(&rows.iter().map(|r| r.1).collect::<Vec<_>>()),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(row_group))
            .build();
        let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props))
            .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    /// The selected row numbers of `sel` over `n` rows.
    fn rows(sel: &RowSelection, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        for s in sel.iter() {
            if !s.skip {
                out.extend(at..at + s.row_count);
            }
            at += s.row_count;
        }
        assert_eq!(at, n, "the selection covers the file");
        out
    }

    fn predicate(e: datafusion::logical_expr::Expr, schema: &SchemaRef) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(Arc::clone(schema)).unwrap();
        SessionContext::new()
            .state()
            .create_physical_expr(e, &df)
            .unwrap()
    }

    type Row<'a> = (&'a str, Option<&'a str>, i64);

    #[test]
    fn runs_select_exactly_the_rows_a_tag_filter_passes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.parquet");
        // runs of 40 rows (the minimum average is 32), across row group edges (50 rows)
        let mut data = Vec::new();
        for (room, floor) in [
            ("a", Some("1")),
            ("b", None),
            ("c", Some("2")),
            ("a", Some("2")),
        ] {
            data.extend((0..40).map(|i| (room, floor, i)));
        }
        write(&path, &data, 50);
        let runs = series_runs_of_file(&path).unwrap().expect("indexed");
        assert_eq!(runs.bounds, vec![0, 40, 80, 120, 160]);
        // the table has a tag the file predates, and its tags as dictionaries
        let table = Arc::new(Schema::new(vec![
            runs.tags
                .schema()
                .field(0)
                .as_ref()
                .clone()
                .with_name("building"),
            runs.tags.schema().field(0).clone(),
            runs.tags.schema().field(1).clone(),
        ]));
        let tags = tag_schema(&table);
        let want = |f: &dyn Fn(&Row) -> bool| -> Vec<usize> {
            (0..data.len()).filter(|&i| f(&data[i])).collect()
        };
        let cases: Vec<(datafusion::logical_expr::Expr, Vec<usize>)> = vec![
            (col("room").eq(lit("a")), want(&|r| r.0 == "a")),
            (col("room").not_eq(lit("a")), want(&|r| r.0 != "a")),
            (col("floor").is_null(), want(&|r| r.1.is_none())),
            // NULL floor: unknown, not passed
            (col("floor").not_eq(lit("1")), want(&|r| r.1 == Some("2"))),
            (
                col("room").eq(lit("a")).and(col("floor").eq(lit("2"))),
                want(&|r| r.0 == "a" && r.1 == Some("2")),
            ),
            (col("room").like(lit("%z%")), vec![]),
            (col("building").is_null(), want(&|_| true)),
            (col("building").eq(lit("x")), vec![]),
        ];
        for (e, expected) in cases {
            let p = predicate(e.clone(), &tags);
            let (sel, n) = runs.select(&p, &tags).unwrap();
            assert_eq!(rows(&sel, data.len()), expected, "{e}");
            assert_eq!(n as usize, expected.len(), "{e}");
        }
        // the dictionaries hold the runs' values only
        let rooms = runs.tags.column(0).as_dictionary::<Int32Type>();
        assert_eq!(rooms.values().len(), 3);
        let _: &StringArray = rooms.values().as_string();
    }

    fn meta(id: u64, path: &str) -> SegmentMeta {
        SegmentMeta {
            id,
            db: "d".into(),
            table: "t".into(),
            partition: 0,
            path: path.into(),
            min_time: 0,
            max_time: 1,
            rows: 1,
            bytes: 1,
            seq: None,
        }
    }

    /// Until every file of a scan has its runs there are none for the scan; a file that
    /// is not indexed does not keep the others from being computed, and a segment gone
    /// from the snapshot is forgotten with its bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_are_computed_in_the_background_and_forgotten_with_their_segment() {
        let d = tempfile::tempdir().unwrap();
        let long: Vec<_> = ["a", "b"]
            .into_iter()
            .flat_map(|room| (0..40).map(move |i| (room, Some("1"), i)))
            .collect();
        write(&d.path().join("long.parquet"), &long, 50);
        let short: Vec<_> = (0..100)
            .map(|i| (["a", "b"][i % 2], None, i as i64))
            .collect();
        write(&d.path().join("short.parquet"), &short, 50);
        let (l, s) = (meta(1, "long.parquet"), meta(2, "short.parquet"));
        let index = Arc::new(SeriesIndex::new(1 << 20));
        let wait = |n: usize| {
            let index = Arc::clone(&index);
            async move {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while index
                    .inner
                    .lock()
                    .unwrap()
                    .tables
                    .values()
                    .flat_map(|t| t.values())
                    .filter(|e| matches!(e, Entry::Done(_)))
                    .count()
                    < n
                {
                    assert!(std::time::Instant::now() < deadline, "runs not computed");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        assert!(index.runs(d.path(), &[&s]).is_none());
        wait(1).await;
        assert!(
            index.runs(d.path(), &[&s]).is_none(),
            "short runs: not indexed"
        );
        assert!(index.runs(d.path(), &[&s, &l]).is_none());
        wait(2).await;
        assert_eq!(index.kept().0, 1);
        assert!(index.runs(d.path(), &[&s, &l]).is_none());
        let runs = index.runs(d.path(), &[&l]).expect("indexed");
        assert_eq!(runs[0].bounds, vec![0, 40, 80]);
        assert!(index.kept().1 > 0);

        // after a restart: every segment of the snapshot, without a scan asking
        let fresh = Arc::new(SeriesIndex::new(1 << 20));
        let all = Snapshot {
            catalog: Arc::default(),
            generations: Vec::new(),
            segments: Arc::new(vec![Arc::new(l.clone()), Arc::new(s.clone())]),
            retention: Arc::default(),
        };
        fresh.warm_all(&all, d.path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fresh.kept().0 < 1 {
            assert!(std::time::Instant::now() < deadline, "not warmed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(fresh.runs(d.path(), &[&l]).is_some());

        let snapshot = |segments: Vec<Arc<SegmentMeta>>| Snapshot {
            catalog: Arc::default(),
            generations: Vec::new(),
            segments: Arc::new(segments),
            retention: Arc::default(),
        };
        index.retain_live(&snapshot(vec![Arc::new(l.clone())]));
        assert_eq!(index.kept().0, 1);
        index.retain_live(&snapshot(Vec::new()));
        assert_eq!(index.kept(), (0, 0));
    }

    #[test]
    fn short_runs_and_files_without_tags_are_not_indexed() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.parquet");
        let data: Vec<_> = (0..200)
            .map(|i| (["a", "b"][i % 2], Some("1"), i as i64))
            .collect();
        write(&path, &data, 64);
        assert!(series_runs_of_file(&path).unwrap().is_none());

        let plain = d.path().join("p.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..100))],
        )
        .unwrap();
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(&plain).unwrap(), schema, None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert!(series_runs_of_file(&plain).unwrap().is_none());
    }
}
