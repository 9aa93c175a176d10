//! The DataFusion catalog over one engine snapshot: each database is a schema, each
//! table a [`LiveTable`] that, when scanned, reads buffer ∪ segments of the query's
//! snapshot and shows one row per point.
//!
//! Deduplication (same series + time → one row; for each field the last non-null value
//! written wins) is only planned where copies can exist: the buffer, and segments whose
//! time ranges overlap the buffer or each other — a streaming merge (`dedup.rs`).
//! Segments that overlap nothing are already deduplicated by the flush and are read as
//! they are.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, ident, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use talo_engine::model::TIME_COLUMN;
use talo_engine::{Snapshot, TableSnapshot};

use crate::auth::{Permission, Principal};
use crate::dedup::DedupTable;
use crate::lastpoint::LatestRows;
use crate::scan::{SegmentTable, TimeBounds, holds_throughout, is_time_bound, on_tags_only};

/// Start of the error message for a database the token may not read.
pub(crate) const DENIED: &str = "permission denied: ";

/// The databases of a snapshot that a principal may read.
#[derive(Debug)]
pub(crate) struct TaloCatalog {
    snapshot: Arc<Snapshot>,
    who: Principal,
}

impl TaloCatalog {
    pub(crate) fn new(snapshot: Arc<Snapshot>, who: Principal) -> Self {
        TaloCatalog { snapshot, who }
    }
}

impl CatalogProvider for TaloCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.snapshot
            .catalog
            .database_names()
            .filter(|db| self.who.can(Permission::Read, db))
            .map(str::to_string)
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.snapshot.catalog.database(name)?;
        if !self.who.can(Permission::Read, name) {
            return Some(Arc::new(DeniedSchema(name.to_string())));
        }
        Some(Arc::new(DbSchema {
            db: name.to_string(),
            snapshot: Arc::clone(&self.snapshot),
        }))
    }
}

/// A database the principal may not read: naming any of its tables is an error.
#[derive(Debug)]
struct DeniedSchema(String);

#[async_trait]
impl SchemaProvider for DeniedSchema {
    fn table_names(&self) -> Vec<String> {
        Vec::new()
    }

    async fn table(&self, _name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        Err(DataFusionError::Plan(format!(
            "{DENIED}the token may not read database {:?}",
            self.0
        )))
    }

    fn table_exist(&self, _name: &str) -> bool {
        false
    }
}

#[derive(Debug)]
struct DbSchema {
    db: String,
    snapshot: Arc<Snapshot>,
}

#[async_trait]
impl SchemaProvider for DbSchema {
    fn table_names(&self) -> Vec<String> {
        self.snapshot
            .catalog
            .database(&self.db)
            .map(|d| d.tables.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        Ok(self.snapshot.catalog.table(&self.db, name).map(|t| {
            Arc::new(LiveTable {
                db: self.db.clone(),
                name: name.to_string(),
                schema: t.schema(),
                latest_only: false,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.snapshot.catalog.table(&self.db, name).is_some()
    }
}

/// What one query reads: the engine snapshot taken when it started, where segment files
/// live, and the moment that places the retention cutoffs. Carried as a session config
/// extension, so that a [`LiveTable`] finds it when it is *scanned* instead of capturing
/// a snapshot when the plan is built: a plan can then be reused by later queries
/// (`plans.rs`), each reading its own snapshot.
#[derive(Debug)]
pub(crate) struct QuerySnapshot {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) data_dir: PathBuf,
    pub(crate) now_ns: i64,
    /// Settled segments' latest rows, kept across queries.
    pub(crate) latest: Arc<LatestRows>,
    /// Segments' series runs, kept across queries.
    pub(crate) series: Arc<crate::series::SeriesIndex>,
    /// Segment files kept open across queries.
    pub(crate) open: Arc<crate::scan::OpenSegments>,
    /// What each table scan of this query read, while every scan so far could be
    /// replayed (`None` once one could not): a physical plan may then be run again by a
    /// later query whose snapshot gives the same inputs (`plans.rs`).
    pub(crate) scans: std::sync::Mutex<Option<Vec<ScanRecord>>>,
}

impl QuerySnapshot {
    /// The query's snapshot, with an empty scan log.
    pub(crate) fn new(
        snapshot: Arc<Snapshot>,
        data_dir: PathBuf,
        now_ns: i64,
        latest: Arc<LatestRows>,
        series: Arc<crate::series::SeriesIndex>,
        open: Arc<crate::scan::OpenSegments>,
    ) -> Self {
        QuerySnapshot {
            snapshot,
            data_dir,
            now_ns,
            latest,
            series,
            open,
            scans: std::sync::Mutex::new(Some(Vec::new())),
        }
    }

    /// The scans of this query, if every one of them may be replayed.
    pub(crate) fn take_scans(&self) -> Option<Vec<ScanRecord>> {
        self.scans.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// An empty scan log again, for planning the query once more.
    pub(crate) fn restart_scans(&self) {
        *self.scans.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
    }

    fn record(&self, scan: Option<ScanRecord>) {
        let mut log = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        match scan {
            Some(r) => {
                if let Some(l) = log.as_mut() {
                    l.push(r)
                }
            }
            None => *log = None,
        }
    }

    /// Whether each of `scans` would read exactly what it read before, from this
    /// snapshot.
    pub(crate) fn gives_same_inputs(&self, scans: &[ScanRecord]) -> bool {
        scans.iter().all(|r| {
            r.table
                .sources(self, &r.filters)
                .ok()
                .and_then(|(t, cut)| r.table.inputs(self, &t, cut, &r.filters))
                .is_some_and(|i| i == r.inputs)
        })
    }
}

/// One table scan of a query: the table, the filters it was given and what it read.
#[derive(Debug, Clone)]
pub(crate) struct ScanRecord {
    table: LiveTable,
    filters: Vec<Expr>,
    inputs: ScanInputs,
}

/// All that a table scan's plan depends on in the query's snapshot, where it reads no
/// buffered rows and no kept latest rows: the segments its time bounds reach into
/// (segment files never change; ids are never reused), the retention cutoff where some
/// of those reach past it (it moves with every query), and whether the segments' series
/// runs were all at hand (a plan made while they were computed does without them; it is
/// made again once they are there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanInputs {
    segments: Vec<u64>,
    cut: Option<i64>,
    runs_ready: bool,
}

/// A table as the planner sees it: a name and a schema. Scanning it reads the query's
/// [`QuerySnapshot`]: buffer ∪ segments (`table_provider`), rows past the retention
/// left out.
#[derive(Debug, Clone)]
pub(crate) struct LiveTable {
    db: String,
    name: String,
    schema: SchemaRef,
    /// Only each series' latest rows matter to the plan above (`lastpoint.rs`): settled
    /// segments may give those instead of all their rows.
    latest_only: bool,
}

impl LiveTable {
    /// (database, table, schema): what a plan reading this table was planned against.
    pub(crate) fn key(&self) -> (String, String, SchemaRef) {
        (self.db.clone(), self.name.clone(), Arc::clone(&self.schema))
    }

    /// This table, for a plan that needs only each series' latest rows.
    pub(crate) fn latest_only(&self) -> Self {
        LiveTable {
            latest_only: true,
            ..self.clone()
        }
    }

    pub(crate) fn is_latest_only(&self) -> bool {
        self.latest_only
    }

    /// The table in `q`'s snapshot with only the segments and buffered chunks that the
    /// time bounds among `filters` reach into, and the retention cutoff where some of
    /// those reach past it. The rest cannot give a row: leaving them out keeps them from
    /// deciding the plan (a segment overlapping only buffered rows outside the bounds
    /// is read as it is: the copies lie outside the bounds too, which are applied to
    /// every source reaching past them).
    fn sources(&self, q: &QuerySnapshot, filters: &[Expr]) -> Result<(TableSnapshot, Option<i64>)> {
        let Some(mut t) = q.snapshot.table(&self.db, &self.name) else {
            return Err(DataFusionError::Plan(format!(
                "table {}.{} no longer exists",
                self.db, self.name
            )));
        };
        if t.table.schema() != self.schema {
            // plans are reused only while the schemas hold (`plans.rs`)
            return Err(DataFusionError::Internal(format!(
                "table {}.{} changed its schema after the query was planned",
                self.db, self.name
            )));
        }
        let range = TimeBounds::from_filters(filters);
        t.segments
            .retain(|s| range.overlaps(s.min_time, s.max_time));
        t.chunks.retain(|c| range.overlaps(c.min_time, c.max_time));
        let oldest = t
            .segments
            .iter()
            .map(|s| s.min_time)
            .chain(t.chunks.iter().map(|c| c.min_time))
            .min();
        let cut = q
            .snapshot
            .retention
            .cutoff(&self.db, &self.name, q.now_ns)
            .filter(|&cut| oldest.is_some_and(|o| o < cut));
        Ok((t, cut))
    }

    /// What a scan of `t` (as [`LiveTable::sources`] gives it) depends on, where it can
    /// be replayed: not where it reads buffered rows (they change with every write) or
    /// kept latest rows (filled as queries ask).
    fn inputs(
        &self,
        q: &QuerySnapshot,
        t: &TableSnapshot,
        cut: Option<i64>,
        filters: &[Expr],
    ) -> Option<ScanInputs> {
        if self.latest_only || !t.chunks.is_empty() {
            return None;
        }
        let segments: Vec<&talo_engine::SegmentMeta> = t.segments.iter().map(|s| &**s).collect();
        let runs_ready =
            filters.iter().any(|f| on_tags_only(&self.schema, f)) && q.series.settled(&segments);
        Some(ScanInputs {
            segments: segments.iter().map(|s| s.id).collect(),
            cut,
            runs_ready,
        })
    }
}

#[async_trait]
impl TableProvider for LiveTable {
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
        // Bounds on time are exact: `scan` applies them where a file or buffer chunk
        // reaches past them, and nowhere else (a day's query over a day's files compared
        // every row's time twice for nothing: ~8 % of its CPU, `perf`). Filters on tags
        // are exact too: `scan` applies them, over clean segments while decoding
        // (`SegmentTable::scan_exact`), so the plan above has nothing left to push down.
        // Every other filter prunes below and is applied again above, as both providers
        // say.
        Ok(filters
            .iter()
            .map(|f| {
                if is_time_bound(f) || on_tags_only(&self.schema, f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(q) = state.config().get_extension::<QuerySnapshot>() else {
            return Err(DataFusionError::Internal(
                "a talo table was scanned outside a query".into(),
            ));
        };
        let (t, cut) = self.sources(&q, filters)?;
        let inputs = self.inputs(&q, &t, cut, filters);
        q.record(inputs.map(|inputs| ScanRecord {
            table: self.clone(),
            filters: filters.to_vec(),
            inputs,
        }));
        // the time bounds (exact, see above) that some file or chunk the scan reads
        // reaches past
        let sources = t
            .segments
            .iter()
            .map(|s| (s.min_time, s.max_time))
            .chain(t.chunks.iter().map(|c| (c.min_time, c.max_time)))
            .collect::<Vec<_>>();
        let mut keep: Vec<Expr> = filters
            .iter()
            .filter(|f| is_time_bound(f))
            .filter(|f| !sources.iter().all(|&(lo, hi)| holds_throughout(f, lo, hi)))
            .chain(filters.iter().filter(|f| on_tags_only(&self.schema, f)))
            .cloned()
            .collect();
        // rows past the retention are never returned, even before their files are gone
        if let Some(cut) = cut {
            keep.push(
                ident(TIME_COLUMN).gt_eq(lit(ScalarValue::TimestampNanosecond(
                    Some(cut),
                    Some("UTC".into()),
                ))),
            );
        }
        let latest = self.latest_only.then(|| {
            // every segment of the table, not only those in the bounds: the others' rows
            // stay kept for other queries
            if let Some(all) = q.snapshot.table(&self.db, &self.name) {
                q.latest.retain(&self.db, &self.name, &all.segments);
            }
            Arc::clone(&q.latest)
        });
        let provider = table_provider(t, &q.data_dir, latest)?;
        if let Some(segments) = provider.downcast_ref::<SegmentTable>()
            && let Some(scan) = segments
                .scan_exact(state, projection, filters, &keep, limit)
                .await?
        {
            return Ok(scan);
        }
        let Some(predicate) = conjunction(keep.iter().cloned()) else {
            return provider.scan(state, projection, filters, limit).await;
        };
        filtered(&*provider, state, projection, filters, &keep, predicate).await
    }
}

/// Scan `provider` and keep only the rows for which `predicate`, the conjunction of
/// `keep`, holds (the query's exact filters: time bounds, tags, and the retention
/// cutoff). They prune like any filter and are applied to the rows above the scan.
async fn filtered(
    provider: &dyn TableProvider,
    state: &dyn Session,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    keep: &[Expr],
    predicate: Expr,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = provider.schema();
    // the filter needs its columns even where the query does not read them
    let mut columns = projection.cloned();
    let mut added = Vec::new();
    if let Some(c) = columns.as_mut() {
        for name in keep.iter().flat_map(|k| k.column_refs()) {
            let i = schema.index_of(&name.name)?;
            if !c.contains(&i) {
                c.push(i);
                added.push(name.name.clone());
            }
        }
    }
    let mut all = filters.to_vec();
    all.extend(keep.iter().filter(|k| !filters.contains(k)).cloned());
    // no limit below the filter: it could stop the scan before the rows that pass (the
    // query's limit stays above)
    let scan = provider.scan(state, columns.as_ref(), &all, None).await?;
    let scanned = scan.schema();
    let predicate =
        state.create_physical_expr(predicate, &DFSchema::try_from(Arc::clone(&scanned))?)?;
    let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, scan)?);
    if added.is_empty() {
        return Ok(filtered);
    }
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = scanned
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !added.contains(f.name()))
        .map(|(i, f)| {
            (
                Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>,
                f.name().clone(),
            )
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, filtered)?))
}

/// Build the provider for one table of the snapshot.
pub(crate) fn table_provider(
    t: TableSnapshot,
    data_dir: &std::path::Path,
    latest: Option<Arc<LatestRows>>,
) -> Result<Arc<dyn TableProvider>> {
    let schema = t.table.schema();
    let buffer_range = t
        .chunks
        .iter()
        .map(|c| (c.min_time, c.max_time))
        .reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
    let (clean, dirty) = split_overlapping(&t.segments, buffer_range);
    if t.chunks.is_empty() && dirty.is_empty() {
        return Ok(Arc::new(SegmentTable {
            schema,
            data_dir: data_dir.to_path_buf(),
            segments: clean,
            latest,
        }));
    }

    Ok(Arc::new(DedupTable {
        schema,
        data_dir: data_dir.to_path_buf(),
        clean,
        dirty,
        buffer: t.chunks,
        latest,
    }))
}

/// Split segments into those that overlap nothing (no copies possible) and the rest.
/// Sorting by start time makes this O(n log n): a segment overlaps another exactly when
/// it starts before the latest end seen so far, or the next one starts before it ends.
type Segments = Vec<Arc<talo_engine::SegmentMeta>>;

fn split_overlapping(
    segments: &[Arc<talo_engine::SegmentMeta>],
    buffer_range: Option<(i64, i64)>,
) -> (Segments, Segments) {
    let mut sorted: Vec<&Arc<talo_engine::SegmentMeta>> = segments.iter().collect();
    sorted.sort_by_key(|s| (s.min_time, s.max_time));
    let mut clean = Vec::new();
    let mut dirty = Vec::new();
    let mut max_end_before = i64::MIN;
    for (i, s) in sorted.iter().enumerate() {
        let overlaps_previous = i > 0 && s.min_time <= max_end_before;
        let overlaps_next = sorted.get(i + 1).is_some_and(|n| n.min_time <= s.max_time);
        let overlaps_buffer =
            buffer_range.is_some_and(|(lo, hi)| s.min_time <= hi && s.max_time >= lo);
        max_end_before = max_end_before.max(s.max_time);
        if overlaps_previous || overlaps_next || overlaps_buffer {
            dirty.push(Arc::clone(s));
        } else {
            clean.push(Arc::clone(s));
        }
    }
    (clean, dirty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: u64, min_time: i64, max_time: i64) -> Arc<talo_engine::SegmentMeta> {
        Arc::new(talo_engine::SegmentMeta {
            id,
            db: "d".into(),
            table: "t".into(),
            partition: 0,
            path: String::new(),
            min_time,
            max_time,
            rows: 1,
            bytes: 1,
            seq: None,
        })
    }

    #[test]
    fn only_segments_that_overlap_something_are_deduplicated() {
        let segs = vec![
            seg(3, 40, 50),
            seg(1, 0, 10),
            seg(2, 10, 15),
            seg(4, 20, 30),
            seg(5, 60, 70),
        ];
        let ids = |v: &Segments| {
            let mut i: Vec<u64> = v.iter().map(|s| s.id).collect();
            i.sort();
            i
        };
        let (clean, dirty) = split_overlapping(&segs, Some((45, 55)));
        assert_eq!(ids(&clean), vec![4, 5]);
        assert_eq!(ids(&dirty), vec![1, 2, 3]);
        let (clean, dirty) = split_overlapping(&segs, None);
        assert_eq!(ids(&clean), vec![3, 4, 5]);
        assert_eq!(ids(&dirty), vec![1, 2]);
        // one long segment spanning later short ones
        let segs = vec![
            seg(1, 0, 100),
            seg(2, 10, 20),
            seg(3, 30, 40),
            seg(4, 200, 300),
        ];
        let (clean, dirty) = split_overlapping(&segs, None);
        assert_eq!((ids(&clean), ids(&dirty)), (vec![4], vec![1, 2, 3]));
    }
}
