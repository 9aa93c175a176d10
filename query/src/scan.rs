//! Scanning Parquet segments: a `TableProvider` over a set of segment files that skips
//! whole files by their manifest time range and hands the filters to the Parquet reader
//! for row-group and page pruning (statistics + page index).

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::catalog::Session;
use datafusion::catalog::TableProvider;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::FileSource;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::parquet::can_expr_be_pushed_down_with_schemas;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::physical_plan::{
    FileGroup, FileGroupPartitioner, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction as and_all;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::object_store::ObjectStore;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder};
use datafusion::physical_plan::union::UnionExec;
use futures::FutureExt;
use futures::future::BoxFuture;
use talo_engine::SegmentMeta;
use talo_engine::model::{TIME_COLUMN, tag_columns};

use crate::catalog::QuerySnapshot;
use crate::lastpoint::{LatestRows, conform};
use crate::series::tag_schema;
use crate::widen::SegmentExprAdapterFactory;

/// Inclusive time bounds (ns) implied by a query's filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeBounds {
    pub(crate) min: i64,
    pub(crate) max: i64,
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds {
            min: i64::MIN,
            max: i64::MAX,
        }
    }
}

impl TimeBounds {
    /// Whether `[min, max]` may hold matching rows.
    pub(crate) fn overlaps(&self, min: i64, max: i64) -> bool {
        min <= self.max && max >= self.min
    }

    /// Narrow by every conjunct of the form `time <op> literal`.
    pub(crate) fn from_filters(filters: &[Expr]) -> Self {
        let mut b = TimeBounds::default();
        for f in filters {
            b.narrow(f);
        }
        b
    }

    fn narrow(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.narrow(left);
                    self.narrow(right);
                    return;
                }
                let (op, value) = match (is_time(left), is_time(right)) {
                    (true, false) => (*op, literal_nanos(right)),
                    (false, true) => match op.swap() {
                        Some(op) => (op, literal_nanos(left)),
                        None => return,
                    },
                    _ => return,
                };
                let Some(v) = value else { return };
                match op {
                    Operator::Gt => self.min = self.min.max(v.saturating_add(1)),
                    Operator::GtEq => self.min = self.min.max(v),
                    Operator::Lt => self.max = self.max.min(v.saturating_sub(1)),
                    Operator::LtEq => self.max = self.max.min(v),
                    Operator::Eq => {
                        self.min = self.min.max(v);
                        self.max = self.max.min(v);
                    }
                    _ => {}
                }
            }
            Expr::Between(b) if !b.negated && is_time(&b.expr) => {
                if let (Some(lo), Some(hi)) = (literal_nanos(&b.low), literal_nanos(&b.high)) {
                    self.min = self.min.max(lo);
                    self.max = self.max.min(hi);
                }
            }
            _ => {}
        }
    }
}

/// A filter that is one bound on `time` against a literal: `time <op> literal` (`<`,
/// `<=`, `>`, `>=`, `=`, either side) or `time BETWEEN literal AND literal`. Whether it
/// holds for a row depends on the row's time alone, so whether it holds for every row
/// of a file or buffer chunk follows from that source's time range
/// ([`holds_throughout`]): such filters are handled exactly by the scan, which applies
/// them only where a source reaches past them.
pub(crate) fn is_time_bound(e: &Expr) -> bool {
    time_bound(e).is_some()
}

/// Whether the time bound `e` (see [`is_time_bound`]) holds for every time in
/// `[lo, hi]`; `false` for anything else.
pub(crate) fn holds_throughout(e: &Expr, lo: i64, hi: i64) -> bool {
    match time_bound(e) {
        Some(Bound::Op(Operator::Gt, v)) => lo > v,
        Some(Bound::Op(Operator::GtEq, v)) => lo >= v,
        Some(Bound::Op(Operator::Lt, v)) => hi < v,
        Some(Bound::Op(Operator::LtEq, v)) => hi <= v,
        Some(Bound::Op(Operator::Eq, v)) => lo == v && hi == v,
        Some(Bound::Between(low, high)) => lo >= low && hi <= high,
        _ => false,
    }
}

/// Whether `e` filters on tags alone: it reads at least one column, every column it reads
/// is a tag of `schema`, and it is deterministic with no subquery. Such a filter keeps or
/// drops whole series, every copy of a point alike, so it may be applied on either side
/// of the dedup merge; the table applies it exactly (`LiveTable`).
pub(crate) fn on_tags_only(schema: &Schema, e: &Expr) -> bool {
    let tags = tag_columns(schema);
    let refs = e.column_refs();
    !refs.is_empty()
        && !e.is_volatile()
        && !crate::lastpoint::has_subquery(e)
        && refs
            .iter()
            .all(|c| schema.index_of(&c.name).is_ok_and(|i| tags.contains(&i)))
}

/// Whether `e` is a lower time bound (`time > literal`, `time >= literal`): it holds for
/// a suffix of each series' rows in time order.
pub(crate) fn is_lower_bound(e: &Expr) -> bool {
    matches!(
        time_bound(e),
        Some(Bound::Op(Operator::Gt | Operator::GtEq, _))
    )
}

enum Bound {
    /// `time <op> value`
    Op(Operator, i64),
    /// `time BETWEEN low AND high`
    Between(i64, i64),
}

fn time_bound(e: &Expr) -> Option<Bound> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, v) = match (is_time(left), is_time(right)) {
                (true, false) => (*op, literal_nanos(right)?),
                (false, true) => (op.swap()?, literal_nanos(left)?),
                _ => return None,
            };
            matches!(
                op,
                Operator::Gt | Operator::GtEq | Operator::Lt | Operator::LtEq | Operator::Eq
            )
            .then_some(Bound::Op(op, v))
        }
        Expr::Between(b) if !b.negated && is_time(&b.expr) => Some(Bound::Between(
            literal_nanos(&b.low)?,
            literal_nanos(&b.high)?,
        )),
        _ => None,
    }
}

fn is_time(e: &Expr) -> bool {
    matches!(e, Expr::Column(c) if c.name == TIME_COLUMN)
}

fn literal_nanos(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => x.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000_000),
        _ => None,
    }
}

/// A set of segment files of one table.
#[derive(Debug)]
pub(crate) struct SegmentTable {
    pub(crate) schema: SchemaRef,
    pub(crate) data_dir: PathBuf,
    pub(crate) segments: Vec<Arc<SegmentMeta>>,
    /// Set where only each series' latest rows matter to the plan (`lastpoint.rs`; the
    /// filters are then on tags and time only): a segment that every time bound but
    /// lower ones holds throughout gives its kept latest rows instead of a scan.
    pub(crate) latest: Option<Arc<LatestRows>>,
}

#[async_trait]
impl TableProvider for SegmentTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // used for pruning only; DataFusion still applies every filter to the rows
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let bounds = TimeBounds::from_filters(filters);
        let selected = self.overlapping(&bounds);
        let Some(latest) = &self.latest else {
            return self.parquet(state, &bounds, &selected, projection, filters, &[], limit);
        };
        // time bounds other than lower ones are judged per segment; a filter that is
        // neither such a bound nor on tags alone (a bound `now()` was not folded into,
        // say) leaves every segment to the scan
        let on_tags = |f: &Expr| on_tags_only(&self.schema, f);
        let cutting: Vec<&Expr> = filters
            .iter()
            .filter(|f| is_time_bound(f) && !is_lower_bound(f))
            .collect();
        let judged = filters.iter().all(|f| is_time_bound(f) || on_tags(f));
        let mut kept = Vec::new();
        let mut scanned = Vec::new();
        for s in selected {
            let whole = judged
                && cutting
                    .iter()
                    .all(|f| holds_throughout(f, s.min_time, s.max_time));
            match whole {
                true => match latest.of(&self.data_dir, s).await? {
                    Some(rows) => kept.push(conform(&rows, &self.schema)?),
                    None => scanned.push(s),
                },
                false => scanned.push(s),
            }
        }
        let scan = self.parquet(state, &bounds, &scanned, projection, filters, &[], limit)?;
        if kept.is_empty() {
            return Ok(scan);
        }
        let rows: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
            &[kept],
            Arc::clone(&self.schema),
            projection.cloned(),
        )?;
        if scanned.is_empty() {
            return Ok(rows);
        }
        UnionExec::try_new(vec![scan, rows])
    }
}

impl SegmentTable {
    /// The segments whose time ranges reach into `bounds`.
    fn overlapping(&self, bounds: &TimeBounds) -> Vec<&SegmentMeta> {
        self.segments
            .iter()
            .filter(|s| bounds.overlaps(s.min_time, s.max_time))
            .map(|s| s.as_ref())
            .collect()
    }

    /// A scan that returns only rows for which every filter of `exact` holds (a subset
    /// of `filters`: tag filters, time bounds), where the Parquet reader can apply them
    /// all while decoding; `None` where it cannot (kept latest rows stand in for some
    /// segments, or a filter the reader cannot evaluate), and the caller filters above.
    ///
    /// Nothing is left for DataFusion's physical optimizer to push down then: no
    /// `FilterExec` above the scan, no projection dropping the filter's columns, no
    /// predicate to deduplicate. Those rewrites (filter pushdown, projection pushdown,
    /// `DistinctScanPredicates`) were ~0.2 ms of a one-sensor query's ~0.65 ms of
    /// physical planning (timed per rule, benches/README.md).
    pub(crate) async fn scan_exact(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        exact: &[Expr],
        limit: Option<usize>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if self.latest.is_some() {
            return Ok(None);
        }
        let bounds = TimeBounds::from_filters(filters);
        let selected = self.overlapping(&bounds);
        let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
        for e in exact {
            let physical = state.create_physical_expr(e.clone(), &df_schema)?;
            if !can_expr_be_pushed_down_with_schemas(&physical, &self.schema) {
                return Ok(None);
            }
        }
        let all: Vec<Expr> = filters
            .iter()
            .chain(exact.iter().filter(|e| !filters.contains(e)))
            .cloned()
            .collect();
        self.parquet(state, &bounds, &selected, projection, &all, exact, limit)
            .map(Some)
    }

    /// A Parquet scan of `selected` (an empty plan if there are none). With `exact`
    /// filters (see [`SegmentTable::scan_exact`]) the reader applies them while decoding.
    #[allow(clippy::too_many_arguments)]
    fn parquet(
        &self,
        state: &dyn Session,
        bounds: &TimeBounds,
        selected: &[&SegmentMeta],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        exact: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Late materialization (`pushdown_filters`: the filters run while decoding, the
        // other columns are decoded only for the rows that pass) pays where the time
        // bounds cut through a file: rows are sorted by series, so each page spans the
        // file's whole time range and the page index cannot skip the rows outside the
        // bounds ("last hour" over a 12-hour file decoded all of it). It pays too where a
        // filter is on tags: a page holds several series (up to 20,000 rows), so the
        // pages the page index keeps for one sensor held ten times its rows, all decoded
        // (and floats stored as decimals cast) before the filter dropped them. With every
        // file inside the bounds and no tag filter there is nothing to skip; there it
        // only costs.
        // Filters on tags alone are answered by the files' series runs where every file
        // has them (`series.rs`): each file then reads exactly the rows of the series
        // that pass, and those filters leave the predicate.
        let tag_filters: Vec<&Expr> = filters
            .iter()
            .filter(|f| on_tags_only(&self.schema, f))
            .collect();
        let by_runs = self.run_selections(state, selected, &tag_filters)?;
        let answered = by_runs.is_some();
        let pending = |f: &&Expr| !answered || !tag_filters.contains(f);
        let tags = tag_columns(&self.schema);
        let on_tags = filters.iter().filter(pending).any(|f| {
            f.column_refs().iter().any(|c| {
                self.schema
                    .index_of(&c.name)
                    .is_ok_and(|i| tags.contains(&i))
            })
        });
        // an exact filter that some file reaches past (a tag filter, a cutting bound,
        // the retention cutoff inside a file) must run while decoding; one that holds
        // throughout every file is not even in the predicate
        let reaches_past = |f: &Expr| {
            !selected
                .iter()
                .all(|s| holds_throughout(f, s.min_time, s.max_time))
        };
        let late = on_tags
            || exact.iter().filter(pending).any(reaches_past)
            || selected
                .iter()
                .any(|s| s.min_time < bounds.min || s.max_time > bounds.max);
        let mut paths = HashMap::with_capacity(selected.len());
        let mut runs = by_runs.map(Vec::into_iter);
        let mut files: Vec<PartitionedFile> = Vec::with_capacity(selected.len());
        for s in selected {
            let path = self.data_dir.join(&s.path);
            let mut file = PartitionedFile::new(
                path.to_string_lossy().trim_start_matches('/').to_string(),
                s.bytes,
            );
            match runs.as_mut().and_then(Iterator::next) {
                // no series of the file passes the tag filters
                Some((_, 0, _)) => continue,
                Some((selection, _, schema)) => {
                    file = file
                        .with_extension(ParquetRowSelection::new(selection))
                        .with_arrow_schema(schema)
                }
                None => {}
            }
            paths.insert(file.object_meta.location.clone(), path);
            files.push(file);
        }
        if files.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        // footers and page indexes come from the executor's cache shared across queries
        // (segment files never change once written), column bytes from the files
        // (`SegmentReaderFactory`)
        let store = state
            .runtime_env()
            .object_store(ObjectStoreUrl::local_filesystem())?;
        let metadata_cache = state.runtime_env().cache_manager.get_file_metadata_cache();
        let open = state
            .config()
            .get_extension::<QuerySnapshot>()
            .map(|q| Arc::clone(&q.open));
        let mut source = ParquetSource::new(Arc::clone(&self.schema))
            .with_parquet_file_reader_factory(Arc::new(SegmentReaderFactory {
                store,
                metadata_cache,
                paths,
                open,
            }))
            // segments carry no bloom filters: looking for them costs ~3 % of a query
            .with_bloom_filter_on_read(false)
            .with_pushdown_filters(late)
            // cheapest filter first (fewest bytes to decode)
            .with_reorder_filters(late);
        // A time bound that holds throughout every file read prunes nothing and drops no
        // row: left out of the predicate, it costs no statistics check per row group,
        // and, under late materialization, no decoding of the time column to test it.
        let needed = filters.iter().filter(pending).filter(|f| reaches_past(f));
        if let Some(predicate) = and_all(needed.cloned()) {
            let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
            let physical = state.create_physical_expr(predicate, &df_schema)?;
            source = source.with_predicate(physical);
        }
        let options = state.config().options();
        let groups = file_groups(
            files,
            options.execution.target_partitions.max(1),
            options.optimizer.repartition_file_min_size,
        );
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                // a column stored narrow is widened without arrow's checked cast
                .with_expr_adapter(Some(Arc::new(SegmentExprAdapterFactory)))
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

impl SegmentTable {
    /// Per file of `selected`, the rows where every filter of `tags` (filters on tags
    /// alone) holds, by the file's series runs, how many they are, and the file's Arrow
    /// schema (read with its runs); `None` where
    /// there are no such filters, or some file's runs are not at hand (being computed,
    /// or the file is not indexed: `series.rs`).
    fn run_selections(
        &self,
        state: &dyn Session,
        selected: &[&SegmentMeta],
        tags: &[&Expr],
    ) -> Result<Option<Vec<(RowSelection, u64, SchemaRef)>>> {
        let Some(predicate) = and_all(tags.iter().map(|e| (*e).clone())) else {
            return Ok(None);
        };
        let Some(q) = state.config().get_extension::<QuerySnapshot>() else {
            return Ok(None);
        };
        let Some(runs) = q.series.runs(&self.data_dir, selected) else {
            return Ok(None);
        };
        let tag_schema = tag_schema(&self.schema);
        let predicate =
            state.create_physical_expr(predicate, &DFSchema::try_from(Arc::clone(&tag_schema))?)?;
        runs.iter()
            .map(|r| {
                let (selection, rows) = r.select(&predicate, &tag_schema)?;
                Ok((selection, rows, Arc::clone(&r.file_schema)))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// The rows the leaves of `plan` read, where every leaf says: Parquet scans whose files
/// all carry a row selection (tag filters answered by the series runs), empty plans.
/// `None` where a leaf reads rows it cannot count ahead (a whole file, buffered rows).
pub(crate) fn rows_selected(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let mut total = Some(0u64);
    let _ = plan.apply(|node| {
        if !node.children().is_empty() {
            return Ok(TreeNodeRecursion::Continue);
        }
        let rows = if node.downcast_ref::<EmptyExec>().is_some() {
            Some(0)
        } else if let Some((config, _)) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|e| e.downcast_to_file_source::<ParquetSource>())
        {
            config
                .file_groups
                .iter()
                .flat_map(|g| g.files())
                .map(|f| {
                    f.extension::<ParquetRowSelection>()
                        .map(|s| s.selection().row_count() as u64)
                })
                .sum::<Option<u64>>()
        } else {
            None
        };
        total = total.zip(rows).map(|(a, b)| a + b);
        Ok(if total.is_some() {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    total
}

/// Whether no operator of `plan` gives more rows than its inputs read (no join, no
/// unnest, no gap filling, no table function: only those listed), so that
/// [`rows_selected`] bounds the work of the whole plan, not only of its leaves.
pub(crate) fn rows_bounded_by_leaves(plan: &Arc<dyn ExecutionPlan>) -> bool {
    const NO_MORE_ROWS: &[&str] = &[
        "DataSourceExec",
        "EmptyExec",
        "PlaceholderRowExec",
        "FilterExec",
        "ProjectionExec",
        "AggregateExec",
        "RunFoldExec",
        "SortExec",
        "SortPreservingMergeExec",
        "CoalescePartitionsExec",
        "CoalesceBatchesExec",
        "CooperativeExec",
        "RepartitionExec",
        "GlobalLimitExec",
        "LocalLimitExec",
        "UnionExec",
        "BoundedWindowAggExec",
        "WindowAggExec",
    ];
    let mut bounded = true;
    let _ = plan.apply(|node| {
        bounded = NO_MORE_ROWS.contains(&node.name());
        Ok(if bounded {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    bounded
}

/// Segment files kept open across queries: a query reading two files opened and closed
/// both (`openat` with its path walk, `close`); kept open, a one-sensor query took ~8 %
/// less server CPU (`benches/README.md`). Segments are immutable and a path is never reused for another
/// file while the server runs (segment ids only grow); an entry also remembers the
/// file's length and is opened anew where a scan expects another.
///
/// Only files of live segments are kept: [`OpenSegments::retain_live`], called with each
/// query's snapshot and on the executor's one-second tick, closes those whose segment
/// left the snapshot (compacted away, expired), so a deleted file's space is held no
/// longer than until the next query or tick. A query still reading an older snapshot
/// opens such a file for itself and does not keep it. At most `limit` files are kept;
/// past it a reader opens and closes its file as before.
#[derive(Debug)]
pub(crate) struct OpenSegments {
    kept: std::sync::Mutex<Kept>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Kept {
    /// The segment list `live` was made from (not held: a replaced segment's file is
    /// deleted once nothing holds its metadata).
    segments: std::sync::Weak<Vec<Arc<talo_engine::SegmentMeta>>>,
    /// Each live segment's file.
    live: std::collections::HashSet<PathBuf>,
    /// Open files by path, with their length.
    files: HashMap<PathBuf, (u64, Arc<std::fs::File>)>,
}

impl OpenSegments {
    /// At most `limit` files kept open (0: none).
    pub(crate) fn new(limit: usize) -> Self {
        OpenSegments {
            kept: std::sync::Mutex::default(),
            limit,
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The segment file at `path`, of `len` bytes: kept open, or opened now (and kept
    /// where it is live and fewer than `limit` are).
    pub(crate) fn open(
        &self,
        path: &std::path::Path,
        len: u64,
    ) -> std::io::Result<Arc<std::fs::File>> {
        if let Some((n, f)) = self.kept().files.get(path)
            && *n == len
        {
            return Ok(Arc::clone(f));
        }
        let f = Arc::new(std::fs::File::open(path)?);
        let n = f.metadata()?.len();
        let mut kept = self.kept();
        let room = kept.files.len() < self.limit || kept.files.contains_key(path);
        if n == len && room && kept.live.contains(path) {
            kept.files.insert(path.to_path_buf(), (n, Arc::clone(&f)));
        }
        Ok(f)
    }

    /// Closes the files of segments not in `snapshot` (under `data_dir`); nothing to
    /// do where its segment list is the one seen last.
    pub(crate) fn retain_live(&self, snapshot: &talo_engine::Snapshot, data_dir: &std::path::Path) {
        let mut kept = self.kept();
        if self.limit == 0 || std::ptr::eq(kept.segments.as_ptr(), Arc::as_ptr(&snapshot.segments))
        {
            return;
        }
        let Kept {
            segments,
            live,
            files,
        } = &mut *kept;
        live.clear();
        live.extend(snapshot.segments.iter().map(|s| data_dir.join(&s.path)));
        files.retain(|path, _| live.contains(path));
        *segments = Arc::downgrade(&snapshot.segments);
    }

    /// Files kept open now.
    pub(crate) fn len(&self) -> usize {
        self.kept().files.len()
    }
}

/// The files of one scan spread over `parts` partitions (the session's
/// `repartition_file_scans` is off: this is where scans are split). Whole files where
/// they can be balanced, each partition taking the next largest file while it has the
/// fewest bytes: a file opened once builds and evaluates its pruning predicate once.
/// Where they cannot (fewer files than partitions, or one file of more than half again a
/// partition's share), byte ranges of the total as DataFusion cuts them (each range reads
/// the row groups that start in it); under `min_size` bytes in all, one partition.
pub(crate) fn file_groups(
    mut files: Vec<PartitionedFile>,
    parts: usize,
    min_size: usize,
) -> Vec<FileGroup> {
    let size = |f: &PartitionedFile| f.object_meta.size;
    let total: u64 = files.iter().map(size).sum();
    let largest = files.iter().map(size).max().unwrap_or(0);
    let balanced = largest.saturating_mul(parts as u64) <= total.saturating_mul(3) / 2;
    if files.len() >= parts && balanced {
        files.sort_by_key(|f| std::cmp::Reverse(size(f)));
        let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); parts];
        for f in files {
            if let Some(g) = groups.iter_mut().min_by_key(|g| g.0) {
                g.0 += size(&f);
                g.1.push(f);
            }
        }
        return groups.into_iter().map(|g| FileGroup::new(g.1)).collect();
    }
    let one = [FileGroup::new(files)];
    FileGroupPartitioner::new()
        .with_target_partitions(parts)
        .with_repartition_file_min_size(min_size)
        .repartition_file_groups(&one)
        .unwrap_or_else(|| one.to_vec())
}

/// Reads segment files for DataFusion's Parquet opener: footers *with* page indexes from
/// the cache shared by all queries, column bytes with positioned reads on the calling
/// thread.
///
/// Footers: DataFusion's opener asks for the footer alone and loads the page index
/// afterwards on its own, outside the cache, so every query re-read and re-decoded the
/// page index of every file it touched (~10 % of a narrow query's CPU, `perf`). Asked
/// with the page index, the cache keeps both and the opener finds the index there.
///
/// Bytes: `object_store`'s local store hands every read to tokio's blocking pool (open
/// the file, seek, read, wake the query's task): for a narrow query that reads a few
/// pages of three columns per file, the hand-offs between threads cost more than the
/// reads. Segments are immutable files on local disk, mostly in the page cache; a
/// `pread` on the query thread is a copy. A read the page cache cannot serve blocks that
/// query thread for the disk's latency, as decoding a large page would.
#[derive(Debug)]
struct SegmentReaderFactory {
    store: Arc<dyn ObjectStore>,
    metadata_cache: Arc<FileMetadataCache>,
    /// Each file of the scan on disk, by the object-store path the scan gave it.
    paths: HashMap<ObjectPath, PathBuf>,
    /// The files kept open across queries (none: each reader opens its file).
    open: Option<Arc<OpenSegments>>,
}

impl ParquetFileReaderFactory for SegmentReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        let location = &file.object_meta.location;
        let Some(path) = self.paths.get(location) else {
            return Err(DataFusionError::Internal(format!(
                "segment {location} is not in the scan that reads it"
            )));
        };
        let bytes_scanned = MetricBuilder::new(metrics)
            .with_new_label("filename", location.to_string())
            .counter("bytes_scanned", partition_index);
        Ok(Box::new(SegmentReader {
            store: Arc::clone(&self.store),
            metadata_cache: Arc::clone(&self.metadata_cache),
            path: path.clone(),
            file,
            metadata_size_hint,
            kept: self.open.clone(),
            open: None,
            bytes_scanned,
        }))
    }
}

struct SegmentReader {
    store: Arc<dyn ObjectStore>,
    metadata_cache: Arc<FileMetadataCache>,
    path: PathBuf,
    file: PartitionedFile,
    metadata_size_hint: Option<usize>,
    /// Where the file is taken from when it is kept open across queries.
    kept: Option<Arc<OpenSegments>>,
    /// Opened (or taken from `kept`) at the first read.
    open: Option<Arc<std::fs::File>>,
    bytes_scanned: Count,
}

impl SegmentReader {
    fn read(&mut self, range: Range<u64>) -> ParquetResult<Bytes> {
        use std::os::unix::fs::FileExt;
        let failed = |e: std::io::Error| {
            ParquetError::General(format!("reading {}: {e}", self.path.display()))
        };
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|e| ParquetError::General(e.to_string()))?;
        let file = match &self.open {
            Some(f) => f,
            None => {
                let f = match &self.kept {
                    Some(kept) => kept.open(&self.path, self.file.object_meta.size),
                    None => std::fs::File::open(&self.path).map(Arc::new),
                };
                self.open.insert(f.map_err(failed)?)
            }
        };
        let mut buf = vec![0; len];
        // a range past the end (a truncated file) is an error, not a short read
        file.read_exact_at(&mut buf, range.start).map_err(failed)?;
        self.bytes_scanned.add(len);
        Ok(Bytes::from(buf))
    }
}

impl AsyncFileReader for SegmentReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        futures::future::ready(self.read(range)).boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        let read = ranges.into_iter().map(|r| self.read(r)).collect();
        futures::future::ready(read).boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            DFParquetMetadata::new(self.store.as_ref(), &self.file.object_meta)
                .with_file_metadata_cache(Some(Arc::clone(&self.metadata_cache)))
                .with_metadata_size_hint(self.metadata_size_hint)
                .with_page_index_policy(Some(PageIndexPolicy::Optional))
                .fetch_metadata()
                .await
                .map_err(|e| {
                    ParquetError::General(format!(
                        "reading the footer of {}: {e}",
                        self.path.display()
                    ))
                })
        }
        .boxed()
    }
}

/// Drops repeated conjuncts from the predicates of Parquet scans.
///
/// A segment scan gets the query's filters twice: once from `SegmentTable::scan` (so
/// that scans below the dedup merge, where DataFusion's physical filter pushdown does
/// not reach, still prune) and once more from that pushdown, which ANDs the `FilterExec`
/// above onto whatever predicate the scan already has. Every file opened then built and
/// evaluated its pruning predicate over twice the terms: statistics pruning was ~6 % of a
/// one-sensor query's CPU (`perf`), half of it for nothing. Runs after DataFusion's own
/// rules, so it sees the final predicates.
#[derive(Debug, Default)]
pub(crate) struct DistinctScanPredicates;

impl PhysicalOptimizerRule for DistinctScanPredicates {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some((config, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
                return Ok(Transformed::no(node));
            };
            let Some(predicate) = parquet.filter() else {
                return Ok(Transformed::no(node));
            };
            let terms = split_conjunction(&predicate);
            let mut distinct: Vec<&Arc<dyn PhysicalExpr>> = Vec::with_capacity(terms.len());
            for t in &terms {
                if !distinct.iter().any(|d| d == t) {
                    distinct.push(t);
                }
            }
            if distinct.len() == terms.len() {
                return Ok(Transformed::no(node));
            }
            let source = parquet.with_predicate(conjunction(distinct.into_iter().cloned()));
            let config = FileScanConfigBuilder::from(config.clone())
                .with_source(Arc::new(source))
                .build();
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
            ))
        })
        .data()
    }

    fn name(&self) -> &str {
        "distinct_scan_predicates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(sizes: &[u64]) -> Vec<PartitionedFile> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| PartitionedFile::new(format!("f{i}.parquet"), n))
            .collect()
    }

    /// Each group as its files, `name` or `name@start..end` for a byte range.
    fn shape(groups: &[FileGroup]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| {
                        let name = f.object_meta.location.to_string();
                        match &f.range {
                            Some(r) => format!("{name}@{}..{}", r.start, r.end),
                            None => name,
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn balanced_files_stay_whole_one_open_each() {
        const MB: u64 = 1 << 20;
        // two near-equal files on two partitions: one each, not cut
        let g = file_groups(files(&[12 * MB, 12 * MB + 90_000]), 2, 10 << 20);
        assert_eq!(shape(&g), [vec!["f1.parquet"], vec!["f0.parquet"]]);
        // many files: the next largest to the partition with the fewest bytes
        let g = file_groups(
            files(&[5 * MB, 3 * MB, 4 * MB, 2 * MB, 2 * MB]),
            2,
            10 << 20,
        );
        assert_eq!(
            shape(&g),
            [
                vec!["f0.parquet", "f3.parquet", "f4.parquet"],
                vec!["f2.parquet", "f1.parquet"]
            ]
        );
        // small files too (nothing to cut there)
        let g = file_groups(files(&[10, 12, 11]), 2, 10 << 20);
        assert_eq!(g.len(), 2);
        assert!(g.iter().flat_map(|g| g.iter()).all(|f| f.range.is_none()));
    }

    #[test]
    fn a_large_file_is_cut_where_whole_files_cannot_balance() {
        const MB: u64 = 1 << 20;
        // one file, two partitions: two byte ranges of it
        let g = file_groups(files(&[24 * MB]), 2, 10 << 20);
        let s = shape(&g);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(
            s.iter()
                .all(|g| g.len() == 1 && g[0].starts_with("f0.parquet@")),
            "{s:?}"
        );
        // one file much larger than the other: cut so that both partitions work
        let g = file_groups(files(&[30 * MB, 2 * MB]), 2, 10 << 20);
        let s = shape(&g);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s.concat().iter().any(|f| f.contains('@')), "{s:?}");
        // under the minimum size: one partition reads it all
        let g = file_groups(files(&[5 * MB]), 2, 10 << 20);
        assert_eq!(shape(&g), [vec!["f0.parquet"]]);
        // no files: no groups to read
        assert!(
            file_groups(Vec::new(), 2, 10 << 20)
                .iter()
                .all(|g| g.is_empty())
        );
    }
}
