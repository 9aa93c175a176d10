//! One row per point where copies can exist: the buffer, and segments whose time ranges
//! overlap the buffer or each other.
//!
//! Every segment is sorted by series then time with one row per point, so the copies
//! are merged as a stream: [`DedupExec`] reads each overlapping segment (and each part
//! of one, if DataFusion splits a file) as a sorted input and feeds them to the engine's
//! [`SortedMerge`] — the merge compaction uses — in precedence order, with the buffer's
//! rows (filtered, then sorted and deduplicated in memory) as the newest input. Memory
//! holds about one batch per input plus the buffer's matching rows, however many rows
//! the segments hold; a hash aggregate over (tags, time), which this replaces, held
//! every row of every overlapping segment and failed a day-long query with 413.
//!
//! Only filters on tags and time are applied below the merge (they keep or drop every
//! copy of a point alike); a filter on a field must see the merged row, so DataFusion
//! applies every filter again above.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::datasource::TableType;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PhysicalExpr, PlanProperties,
};
use futures::StreamExt;
use talo_engine::SegmentMeta;
use talo_engine::buffer::{Chunk, align_batch};
use talo_engine::merge::{MergeStep, SortedMerge};
use talo_engine::model::{TIME_COLUMN, tag_columns};
use talo_engine::segment::sort_dedup;

use crate::lastpoint::LatestRows;
use crate::scan::{SegmentTable, TimeBounds};

fn external(e: talo_engine::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A table whose buffer or some of whose segments may hold copies of the same point.
#[derive(Debug)]
pub(crate) struct DedupTable {
    /// The table's current schema.
    pub(crate) schema: SchemaRef,
    pub(crate) data_dir: PathBuf,
    /// Segments that overlap nothing: read as they are, in parallel.
    pub(crate) clean: Vec<Arc<SegmentMeta>>,
    /// Segments that overlap each other or the buffer.
    pub(crate) dirty: Vec<Arc<SegmentMeta>>,
    /// The buffer, oldest first (newer than every segment).
    pub(crate) buffer: Vec<Chunk>,
    /// Where only each series' latest rows matter: those of the clean segments.
    pub(crate) latest: Option<Arc<LatestRows>>,
}

impl DedupTable {
    /// Tag columns and time: what identifies a point.
    fn key_columns(&self) -> Vec<usize> {
        let mut keys = tag_columns(&self.schema);
        keys.extend(self.schema.index_of(TIME_COLUMN).ok());
        keys
    }
}

#[async_trait]
impl TableProvider for DedupTable {
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
        // used below the merge only where safe (module docs); always applied again above
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let wanted = projection.unwrap_or(&all);
        let keys = self.key_columns();
        // the merge needs the keys whatever the query reads
        let mut inner: Vec<usize> = wanted.iter().chain(&keys).copied().collect();
        inner.sort_unstable();
        inner.dedup();
        let inner_schema = Arc::new(self.schema.project(&inner)?);
        let out_proj: Vec<usize> = wanted
            .iter()
            .map(|p| inner.binary_search(p).unwrap_or_default())
            .collect();

        let key_names: HashSet<&str> = keys
            .iter()
            .map(|&i| self.schema.field(i).name().as_str())
            .collect();
        let key_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                !f.is_volatile()
                    && f.column_refs()
                        .iter()
                        .all(|c| key_names.contains(c.name.as_str()))
            })
            .cloned()
            .collect();
        let bounds = TimeBounds::from_filters(&key_filters);

        let mut dirty: Vec<&Arc<SegmentMeta>> = self
            .dirty
            .iter()
            .filter(|s| bounds.overlaps(s.min_time, s.max_time))
            .collect();
        dirty.sort_by_key(|s| s.precedence());
        let mut inputs = Vec::with_capacity(dirty.len());
        let mut segment_ids = Vec::with_capacity(dirty.len());
        for seg in dirty {
            let one = SegmentTable {
                schema: Arc::clone(&self.schema),
                data_dir: self.data_dir.clone(),
                segments: vec![Arc::clone(seg)],
                latest: None,
            };
            inputs.push(one.scan(state, Some(&inner), &key_filters, None).await?);
            segment_ids.push(seg.id);
        }
        let chunks: Vec<RecordBatch> = self
            .buffer
            .iter()
            .filter(|c| bounds.overlaps(c.min_time, c.max_time))
            .map(|c| c.batch.clone())
            .collect();
        let predicate = match conjunction(key_filters) {
            Some(p) if !chunks.is_empty() => {
                let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
                Some(state.create_physical_expr(p, &df_schema)?)
            }
            _ => None,
        };
        let buffer = Arc::new(BufferInput {
            table_schema: Arc::clone(&self.schema),
            chunks,
            predicate,
            inner,
        });
        let dedup: Arc<dyn ExecutionPlan> = Arc::new(DedupExec::new(
            inner_schema,
            out_proj,
            inputs,
            segment_ids,
            buffer,
        )?);
        if self.clean.is_empty() {
            return Ok(dedup);
        }
        let clean = SegmentTable {
            schema: Arc::clone(&self.schema),
            data_dir: self.data_dir.clone(),
            segments: self.clean.clone(),
            latest: self.latest.clone(),
        }
        .scan(state, projection, filters, limit)
        .await?;
        UnionExec::try_new(vec![clean, dedup])
    }
}

/// The buffer's rows for one query: the chunks that may match, the filter on tags and
/// time, and the columns the merge reads.
#[derive(Debug)]
struct BufferInput {
    table_schema: SchemaRef,
    chunks: Vec<RecordBatch>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    /// Columns of the table schema the merge reads.
    inner: Vec<usize>,
}

impl BufferInput {
    fn rows(&self) -> usize {
        self.chunks.iter().map(RecordBatch::num_rows).sum()
    }

    /// The matching rows, sorted by series then time, one per point (last write wins).
    fn sorted(&self, reservation: &MemoryReservation) -> Result<Option<RecordBatch>> {
        if self.chunks.is_empty() {
            return Ok(None);
        }
        let mut kept = Vec::with_capacity(self.chunks.len());
        for c in &self.chunks {
            let aligned = align_batch(c, &self.table_schema).map_err(external)?;
            let matching = match &self.predicate {
                None => aligned,
                Some(p) => {
                    let mask = p.evaluate(&aligned)?.into_array(aligned.num_rows())?;
                    filter_record_batch(&aligned, mask.as_boolean())?
                }
            };
            if matching.num_rows() > 0 {
                let projected = matching.project(&self.inner)?;
                reservation.try_grow(projected.get_array_memory_size())?;
                kept.push(projected);
            }
        }
        let Some(first) = kept.first() else {
            return Ok(None);
        };
        let all = concat_batches(&first.schema(), &kept)?;
        drop(kept);
        reservation.try_grow(all.get_array_memory_size())?;
        Ok(Some(sort_dedup(&all).map_err(external)?))
    }
}

/// The streaming merge of overlapping sources (module docs). One output partition.
#[derive(Debug)]
pub(crate) struct DedupExec {
    inner_schema: SchemaRef,
    out_proj: Vec<usize>,
    inputs: Vec<Arc<dyn ExecutionPlan>>,
    segment_ids: Vec<u64>,
    buffer: Arc<BufferInput>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl DedupExec {
    fn new(
        inner_schema: SchemaRef,
        out_proj: Vec<usize>,
        inputs: Vec<Arc<dyn ExecutionPlan>>,
        segment_ids: Vec<u64>,
        buffer: Arc<BufferInput>,
    ) -> Result<Self> {
        let out_schema = Arc::new(inner_schema.project(&out_proj)?);
        let props = PlanProperties::new(
            EquivalenceProperties::new(out_schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(DedupExec {
            inner_schema,
            out_proj,
            inputs,
            segment_ids,
            buffer,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for DedupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DedupExec: overlapping_segments={:?}, buffer_rows={}",
            self.segment_ids,
            self.buffer.rows()
        )
    }
}

/// One input of the merge while it runs.
enum Source {
    Stream(SendableRecordBatchStream),
    /// The buffer: sorted when first needed, then ended.
    Buffer(Option<Arc<BufferInput>>),
}

struct Running {
    merge: SortedMerge,
    sources: Vec<Source>,
    out_proj: Vec<usize>,
    reservation: MemoryReservation,
    rows_in: Count,
    rows_out: Count,
}

impl Running {
    async fn next(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            match self.merge.step().map_err(external)? {
                MergeStep::Need(i) => {
                    let batch = match &mut self.sources[i] {
                        Source::Stream(s) => s.next().await.transpose()?,
                        Source::Buffer(b) => match b.take() {
                            Some(b) => b.sorted(&self.reservation)?,
                            None => None,
                        },
                    };
                    if let Some(b) = &batch {
                        self.rows_in.add(b.num_rows());
                    }
                    self.merge.push(i, batch).map_err(external)?;
                }
                MergeStep::Rows(b) => {
                    self.rows_out.add(b.num_rows());
                    return Ok(Some(b.project(&self.out_proj)?));
                }
                MergeStep::Done => {
                    self.reservation.free();
                    return Ok(None);
                }
            }
        }
    }
}

impl ExecutionPlan for DedupExec {
    fn name(&self) -> &str {
        "DedupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().collect()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        match &self.buffer.predicate {
            Some(p) => f(p),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.inputs.len()]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(DedupExec::new(
            Arc::clone(&self.inner_schema),
            self.out_proj.clone(),
            children,
            self.segment_ids.clone(),
            Arc::clone(&self.buffer),
        )?))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "DedupExec has one partition, not {partition}"
            )));
        }
        // Every partition of every input is a sorted run of its own: the segment scan
        // may cut one large file into contiguous ranges (`scan::file_groups`, each still
        // sorted), never interleave them. Parts of one segment share its
        // precedence and never a point, so they go to the merge side by side.
        let mut sources = Vec::new();
        for input in &self.inputs {
            for p in 0..input.output_partitioning().partition_count() {
                sources.push(Source::Stream(input.execute(p, Arc::clone(&ctx))?));
            }
        }
        if !self.buffer.chunks.is_empty() {
            sources.push(Source::Buffer(Some(Arc::clone(&self.buffer))));
        }
        let running = Running {
            merge: SortedMerge::new(Arc::clone(&self.inner_schema), sources.len())
                .map_err(external)?,
            sources,
            out_proj: self.out_proj.clone(),
            reservation: MemoryConsumer::new("DedupExec").register(ctx.memory_pool()),
            rows_in: MetricBuilder::new(&self.metrics).counter("rows_in", partition),
            rows_out: MetricBuilder::new(&self.metrics).output_rows(partition),
        };
        let stream = futures::stream::try_unfold(running, |mut r| async move {
            Ok(r.next().await?.map(|b| (b, r)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}
