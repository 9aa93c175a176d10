//! Dashboard aggregates over runs: `GROUP BY tags, date_bin(..., time)` folds each run
//! of consecutive rows with the same keys into one row before the hash aggregate.
//!
//! Segments are sorted by series then time, so the rows a dashboard query groups by tag
//! and time bucket arrive in long runs with equal keys (a sensor's 30 readings of one
//! 5-minute bucket, say). DataFusion's hash aggregate hashes and looks up every row; for
//! a day of a thousand sensors that is 8.6 M lookups of a (dictionary string, time) key,
//! which was most of such a query's time (`perf`; numbers in `benches/README.md`).
//!
//! [`RunsRule`] rewrites an `Aggregate` whose keys are all tag columns (dictionaries) or
//! `date_bin(<literal>, <timestamp column>[, <literal>])`, and whose aggregates are all
//! plain `min`, `max`, `sum`, `count` or `avg` of one numeric value (no DISTINCT,
//! FILTER or ORDER BY), or `first_value`/`last_value(<any value> ORDER BY <non-null
//! time>)` (the dashboard's "last reading per sensor"), into
//!
//! ```text
//! Projection: original names; avg = sum(s) / sum(c)
//!   Aggregate: keys; min(p) / max(p) / sum(p) of the partials,
//!              last_value(p ORDER BY picked time) of the picks
//!     RunFold: one row per run of equal keys, with the run's partials
//!       Projection: keys, aggregated values
//!         <the aggregate's input>
//! ```
//!
//! [`RunFoldExec`] finds, per batch, where any key changes from one row to the next and
//! folds each run's values: min, max, sum (wrapping, as DataFusion's), count of non-null
//! values, and for `avg` the sum as a double (NULL where the run has no value, so that an
//! all-NULL group still averages to NULL); for `first_value`/`last_value` the value at
//! the run's earliest/latest time and that time. The answer is the same whatever the input's
//! order — a run is only ever a subset of a group, and a group split over several runs
//! (batch boundaries, interleaved series, the buffer's unsorted rows) is merged by the
//! aggregate above — only how much it saves depends on the order. Up to the order of a
//! floating-point sum, which DataFusion's partitioned aggregate does not fix either.
//!
//! A `date_bin` key with a fixed stride over a nanosecond time column (the dashboard's
//! time bucket) is not computed below the fold: the projection passes the times and
//! [`RunFoldExec`] bins them itself ([`Bin`]): within a run of the other keys, the next
//! run starts at the first row whose time leaves the bucket of the run before (two
//! comparisons a row, the bucket's division once a run), and only each run's bucket is
//! produced. Computing and comparing a bucket for every row was a fifth of a 5-minute-max
//! query's CPU. Where a time is NULL or could overflow, the batch is binned row by row as
//! `date_bin` does (DataFusion's code for those rows) and its runs found the plain way.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Array, PrimitiveArray, RecordBatch,
    UInt32Array,
};
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{
    ArrowNativeTypeOp, DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampNanosecondType, UInt64Type,
};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef, DataFusionError, Result, ScalarValue};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions_aggregate::expr_fn::{max, min, sum};
use datafusion::logical_expr::expr::{
    AggregateFunction, AggregateFunctionParams, Alias, NullTreatment,
};
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, ExprSchemable, Extension, LogicalPlan, Projection,
    UserDefinedLogicalNode, UserDefinedLogicalNodeCore, cast as cast_expr,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{
    ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PhysicalExpr,
    PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;

use crate::datebin::Binner;

/// What [`RunFoldExec`] computes of each run for one value column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) enum Part {
    Min,
    Max,
    /// Wrapping for integers, as DataFusion's `sum`.
    Sum,
    /// Non-null values (`Int64`).
    Count,
    /// The values' sum as a double, NULL if the run has none (`avg`'s numerator).
    FloatSum,
    /// The value at the run's latest (or earliest) `time` (an input column of
    /// non-null timestamps or integers), NULL or not: `last_value`/`first_value`'s
    /// partial. Of equal latest times the later row is taken, of equal earliest the
    /// earlier (DataFusion leaves ties open too).
    Pick {
        time: usize,
        latest: bool,
    },
}

/// A key whose input column holds the times themselves, binned by [`RunFoldExec`] as
/// `date_bin(stride, time, origin)` would (fixed stride, nanoseconds): a new run starts
/// where a time leaves the bucket of the row before, which is found without computing
/// every row's bucket (a series' rows arrive in time order, ~30 to a 5-minute bucket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) struct Bin {
    key: usize,
    stride: i64,
    origin: i64,
}

// ---- the logical node ----------------------------------------------------------------

/// One row per run of equal keys (see the module docs). The input's first `keys`
/// columns are the keys; each part folds one of the columns after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunFold {
    input: LogicalPlan,
    keys: usize,
    /// keys binned here (their input column holds the times)
    bins: Vec<Bin>,
    /// (what, which input column)
    parts: Vec<(Part, usize)>,
    schema: DFSchemaRef,
}

const KEY: &str = "__run_k";
const PART: &str = "__run_p";
const VALUE: &str = "__run_v";
const TIME: &str = "__run_t";
const FOLDED: &str = "__run_a";

impl RunFold {
    fn try_new(
        input: LogicalPlan,
        keys: usize,
        bins: Vec<Bin>,
        parts: Vec<(Part, usize)>,
    ) -> Result<Self> {
        let in_schema = input.schema();
        let mut fields: Vec<Field> = (0..keys)
            .map(|i| {
                let f = in_schema.field(i).as_ref().clone();
                // a bucket: the time's type, NULL where DataFusion's date_bin overflows
                if bins.iter().any(|b| b.key == i) {
                    f.with_nullable(true)
                } else {
                    f
                }
            })
            .collect();
        for (j, (part, col)) in parts.iter().enumerate() {
            let name = format!("{PART}{j}");
            fields.push(match part {
                Part::Min | Part::Max | Part::Sum | Part::Pick { .. } => {
                    Field::new(name, in_schema.field(*col).data_type().clone(), true)
                }
                Part::Count => Field::new(name, DataType::Int64, false),
                Part::FloatSum => Field::new(name, DataType::Float64, true),
            });
        }
        let schema = Arc::new(DFSchema::try_from(Schema::new(fields))?);
        Ok(RunFold {
            input,
            keys,
            bins,
            parts,
            schema,
        })
    }
}

impl Hash for RunFold {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.keys.hash(state);
        self.bins.hash(state);
        self.parts.hash(state);
    }
}

impl PartialOrd for RunFold {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.keys, &self.bins, &self.parts)
            .partial_cmp(&(other.keys, &other.bins, &other.parts))
            .filter(|o| o.is_ne() || self == other)
    }
}

impl UserDefinedLogicalNodeCore for RunFold {
    fn name(&self) -> &str {
        "RunFold"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RunFold: keys={}, parts={:?}", self.keys, self.parts)?;
        fmt_bins(f, &self.bins)
    }
    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("RunFold needs one input".into()))?;
        RunFold::try_new(input, self.keys, self.bins.clone(), self.parts.clone())
    }
}

fn fmt_bins(f: &mut fmt::Formatter, bins: &[Bin]) -> fmt::Result {
    for b in bins {
        write!(
            f,
            ", key {} binned by {} ns from {}",
            b.key, b.stride, b.origin
        )?;
    }
    Ok(())
}

// ---- the rewrite ---------------------------------------------------------------------

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct RunsRule;

impl OptimizerRule for RunsRule {
    fn name(&self) -> &str {
        "talo_run_fold"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        match plan {
            LogicalPlan::Aggregate(a) => match fold_plan(&a)? {
                Some(p) => Ok(Transformed::yes(p)),
                None => Ok(Transformed::no(LogicalPlan::Aggregate(a))),
            },
            other => Ok(Transformed::no(other)),
        }
    }
}

/// A key whose equal values come in runs: a tag, or a time bucket.
fn is_run_key(e: &Expr, input: &DFSchema) -> Result<bool> {
    // `time_bucket(...)` arrives as `date_bin(...) AS "time_bucket(...)"`
    Ok(match unaliased(e) {
        Expr::Column(_) => matches!(e.get_type(input)?, DataType::Dictionary(_, _)),
        Expr::ScalarFunction(f) if f.func.name() == "date_bin" => {
            f.args.len() >= 2
                && matches!(f.args[1], Expr::Column(_))
                && matches!(f.args[1].get_type(input)?, DataType::Timestamp(_, _))
                && f.args
                    .iter()
                    .enumerate()
                    .all(|(i, a)| i == 1 || matches!(a, Expr::Literal(..)))
        }
        _ => false,
    })
}

/// `date_bin(<fixed stride>, <nanosecond time column>[, <nanosecond origin>])`: the
/// time, the stride and the origin, for [`RunFoldExec`] to bin itself.
fn binnable(e: &Expr, input: &DFSchema) -> Result<Option<(Expr, i64, i64)>> {
    let e = unaliased(e);
    let Expr::ScalarFunction(f) = e else {
        return Ok(None);
    };
    if f.func.name() != "date_bin" || f.args.len() > 3 {
        return Ok(None);
    }
    let (Some(Expr::Literal(stride, _)), Some(time @ Expr::Column(_))) =
        (f.args.first(), f.args.get(1))
    else {
        return Ok(None);
    };
    let Some(stride) = crate::datebin::fixed_stride(&ColumnarValue::Scalar(stride.clone())) else {
        return Ok(None);
    };
    if !matches!(
        time.get_type(input)?,
        DataType::Timestamp(TimeUnit::Nanosecond, _)
    ) || !matches!(
        e.get_type(input)?,
        DataType::Timestamp(TimeUnit::Nanosecond, _)
    ) {
        return Ok(None);
    }
    let origin = match f.args.get(2) {
        None => 0,
        Some(Expr::Literal(ScalarValue::TimestampNanosecond(Some(o), _), _)) => *o,
        Some(_) => return Ok(None),
    };
    Ok(Some((time.clone(), stride, origin)))
}

/// `e` without the aliases around it.
pub(crate) fn unaliased(mut e: &Expr) -> &Expr {
    while let Expr::Alias(Alias { expr, .. }) = e {
        e = expr;
    }
    e
}

fn is_foldable_number(t: &DataType) -> bool {
    matches!(t, DataType::Float64 | DataType::Int64 | DataType::UInt64)
}

/// `avg`'s parts: the numerator, then the count.
const AVG: &[Part] = &[Part::FloatSum, Part::Count];

/// How one aggregate is folded.
enum Fold {
    /// Parts of one value, merged by `min`/`max`/`sum` (`avg`: sum over count).
    Plain(&'static [Part], Expr),
    /// `first_value`/`last_value(value ORDER BY time)`: each run's value at its first
    /// (or last) time and that time, merged by the same aggregate ordered by that time.
    /// (`agg` has one argument, the value, and one ordering, the time.)
    Pick {
        agg: AggregateFunction,
        latest: bool,
    },
}

/// How one aggregate folds, or `None` if it cannot.
fn parts_of(e: &Expr, input: &DFSchema) -> Result<Option<Fold>> {
    let e = match e {
        Expr::Alias(Alias { expr, .. }) => expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(agg) = e else {
        return Ok(None);
    };
    let AggregateFunctionParams {
        args,
        distinct,
        filter,
        order_by,
        null_treatment,
    } = &agg.params;
    if *distinct || filter.is_some() || args.len() != 1 {
        return Ok(None);
    }
    let name = agg.func.name();
    if name == "first_value" || name == "last_value" {
        // by one non-null time (a NULL has no place among the runs' picks), NULL
        // values included (IGNORE NULLS would need the latest non-null value instead)
        let [sort] = order_by.as_slice() else {
            return Ok(None);
        };
        let by_time = matches!(
            sort.expr.get_type(input)?,
            DataType::Timestamp(_, _) | DataType::Int64
        ) && !sort.expr.nullable(input)?;
        if !by_time || matches!(null_treatment, Some(NullTreatment::IgnoreNulls)) {
            return Ok(None);
        }
        return Ok(Some(Fold::Pick {
            agg: agg.clone(),
            latest: (name == "last_value") == sort.asc,
        }));
    }
    if !order_by.is_empty() {
        return Ok(None);
    }
    let parts: &'static [Part] = match name {
        "min" => &[Part::Min],
        "max" => &[Part::Max],
        "sum" => &[Part::Sum],
        "count" => &[Part::Count],
        "avg" => AVG,
        _ => return Ok(None),
    };
    if parts != [Part::Count] && !is_foldable_number(&args[0].get_type(input)?) {
        return Ok(None);
    }
    Ok(Some(Fold::Plain(parts, args[0].clone())))
}

/// `agg` over a [`RunFold`] (module docs), or `None` where it does not apply.
fn fold_plan(agg: &Aggregate) -> Result<Option<LogicalPlan>> {
    if agg.group_expr.is_empty() {
        return Ok(None);
    }
    if let LogicalPlan::Extension(Extension { node }) = agg.input.as_ref()
        && node.as_any().is::<RunFold>()
    {
        return Ok(None);
    }
    let input_schema = agg.input.schema();
    for k in &agg.group_expr {
        if !is_run_key(k, input_schema)? {
            return Ok(None);
        }
    }
    let mut folded = Vec::with_capacity(agg.aggr_expr.len());
    for a in &agg.aggr_expr {
        match parts_of(a, input_schema)? {
            Some(p) => folded.push(p),
            None => return Ok(None),
        }
    }
    // below the fold: the keys, then each aggregate's argument
    let keys = agg.group_expr.len();
    let mut below: Vec<Expr> = Vec::with_capacity(keys + folded.len());
    let mut bins = Vec::new();
    for (i, k) in agg.group_expr.iter().enumerate() {
        let k = match binnable(k, input_schema)? {
            Some((time, stride, origin)) => {
                bins.push(Bin {
                    key: i,
                    stride,
                    origin,
                });
                time
            }
            None => unaliased(k).clone(),
        };
        below.push(k.alias(format!("{KEY}{i}")));
    }
    let mut parts = Vec::new();
    // per aggregate: the indexes of its parts
    let mut uses: Vec<Vec<usize>> = Vec::new();
    for (j, f) in folded.iter().enumerate() {
        let col = below.len();
        match f {
            Fold::Plain(wanted, arg) => {
                below.push(arg.clone().alias(format!("{VALUE}{j}")));
                uses.push(
                    wanted
                        .iter()
                        .map(|p| {
                            parts.push((*p, col));
                            parts.len() - 1
                        })
                        .collect(),
                );
            }
            Fold::Pick { agg, latest } => {
                let (value, time) = (&agg.params.args[0], &agg.params.order_by[0].expr);
                below.push(value.clone().alias(format!("{VALUE}{j}")));
                below.push(time.clone().alias(format!("{TIME}{j}")));
                // the picked value, then the picked time (by which the runs merge)
                let pick = Part::Pick {
                    time: col + 1,
                    latest: *latest,
                };
                parts.push((pick, col));
                parts.push((pick, col + 1));
                uses.push(vec![parts.len() - 2, parts.len() - 1]);
            }
        }
    }
    let projection = Projection::try_new(below, Arc::clone(&agg.input))?;
    let fold = RunFold::try_new(
        LogicalPlan::Projection(projection),
        keys,
        bins,
        parts.clone(),
    )?;
    let fold = LogicalPlan::Extension(Extension {
        node: Arc::new(fold),
    });
    // above: merge the runs of each group
    let group: Vec<Expr> = (0..keys)
        .map(|i| Expr::Column(Column::from_name(format!("{KEY}{i}"))))
        .collect();
    let part_col = |m: usize| Expr::Column(Column::from_name(format!("{PART}{m}")));
    let mut merged: Vec<Expr> = Vec::with_capacity(parts.len());
    for (f, used) in folded.iter().zip(&uses) {
        match f {
            Fold::Plain(..) => merged.extend(used.iter().map(|&m| {
                let e = match parts[m].0 {
                    Part::Min => min(part_col(m)),
                    Part::Max => max(part_col(m)),
                    _ => sum(part_col(m)),
                };
                e.alias(format!("{FOLDED}{m}"))
            })),
            Fold::Pick { agg, .. } => {
                // the same aggregate, same direction, over the picks and their times
                let mut agg = agg.clone();
                agg.params.args = vec![part_col(used[0])];
                for s in &mut agg.params.order_by {
                    s.expr = part_col(used[1]);
                }
                merged.push(Expr::AggregateFunction(agg).alias(format!("{FOLDED}{}", used[0])));
            }
        }
    }
    let merged = Aggregate::try_new(Arc::new(fold), group, merged)?;
    // and the original names and types on top
    let original = &agg.schema;
    let folded_col = |m: usize| Expr::Column(Column::from_name(format!("{FOLDED}{m}")));
    let mut out = Vec::with_capacity(original.fields().len());
    for (i, (q, f)) in original.iter().enumerate() {
        let e = if i < keys {
            Expr::Column(Column::from_name(format!("{KEY}{i}")))
        } else {
            let j = i - keys;
            let Some(used) = uses.get(j) else {
                // an output the rewrite does not know (e.g. a grouping id): leave it
                return Ok(None);
            };
            if matches!(folded[j], Fold::Plain(AVG, _)) {
                cast_expr(folded_col(used[0]), DataType::Float64)
                    / cast_expr(folded_col(used[1]), DataType::Float64)
            } else {
                folded_col(used[0])
            }
        };
        let e = if e.get_type(&merged.schema)? == *f.data_type() {
            e
        } else {
            cast_expr(e, f.data_type().clone())
        };
        out.push(e.alias_qualified(q.cloned(), f.name()));
    }
    let top = Projection::try_new(out, Arc::new(LogicalPlan::Aggregate(merged)))?;
    Ok(Some(LogicalPlan::Projection(top)))
}

// ---- the physical side ---------------------------------------------------------------

/// Plans [`RunFold`] nodes.
pub(crate) struct RunFoldPlanner;

#[async_trait]
impl ExtensionPlanner for RunFoldPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(r) = node.as_any().downcast_ref::<RunFold>() else {
            return Ok(None);
        };
        let schema: SchemaRef = Arc::new(r.schema.as_arrow().clone());
        Ok(Some(Arc::new(RunFoldExec::new(
            Arc::clone(&physical_inputs[0]),
            r.keys,
            r.bins.clone(),
            r.parts.clone(),
            schema,
        ))))
    }
}

/// Executes [`RunFold`], batch by batch, partition by partition.
#[derive(Debug, Clone)]
pub(crate) struct RunFoldExec {
    input: Arc<dyn ExecutionPlan>,
    keys: usize,
    bins: Vec<Bin>,
    parts: Vec<(Part, usize)>,
    props: Arc<PlanProperties>,
}

impl RunFoldExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        keys: usize,
        bins: Vec<Bin>,
        parts: Vec<(Part, usize)>,
        schema: SchemaRef,
    ) -> Self {
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            input.boundedness(),
        ));
        RunFoldExec {
            input,
            keys,
            bins,
            parts,
            props,
        }
    }
}

impl DisplayAs for RunFoldExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RunFoldExec: keys={}, parts={:?}", self.keys, self.parts)?;
        fmt_bins(f, &self.bins)
    }
}

impl ExecutionPlan for RunFoldExec {
    fn name(&self) -> &str {
        "RunFoldExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = only_child(children, "RunFoldExec")?;
        Ok(Arc::new(RunFoldExec::new(
            input,
            self.keys,
            self.bins.clone(),
            self.parts.clone(),
            Arc::clone(self.props.eq_properties.schema()),
        )))
    }
    /// With the properties kept where they hold (`reset_plan_states` of a kept plan):
    /// recomputing them here made every operator above recompute its own (equivalences,
    /// orderings: ~6 % of a one-sensor query's CPU).
    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        replace_only_child(self, children, options, |p| &mut p.input)
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = Arc::clone(self.props.eq_properties.schema());
        let (keys, bins, parts) = (self.keys, self.bins.clone(), self.parts.clone());
        let out_schema = Arc::clone(&schema);
        let stream = self.input.execute(partition, ctx)?.map(move |b| {
            let b = b?;
            fold_batch(&b, &b.columns()[..keys], &bins, &parts, &out_schema)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// The one child of an operator `name` that takes one.
pub(crate) fn only_child(
    mut children: Vec<Arc<dyn ExecutionPlan>>,
    name: &str,
) -> Result<Arc<dyn ExecutionPlan>> {
    match (children.pop(), children.is_empty()) {
        (Some(child), true) => Ok(child),
        _ => Err(DataFusionError::Internal(format!("{name} needs one child"))),
    }
}

/// `plan` (an operator with one child, its `input`) over `children`: where `options` say
/// the child's properties hold (`reset_plan_states`), a copy keeping its own computed
/// properties, so the operators above keep theirs too; else planned anew.
pub(crate) fn replace_only_child<T: ExecutionPlan + Clone + 'static>(
    plan: Arc<T>,
    children: Vec<Arc<dyn ExecutionPlan>>,
    options: ReplaceChildrenOptions,
    input: impl FnOnce(&mut T) -> &mut Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if !matches!(options.children_properties, ChildrenPropertiesMode::Keep) {
        #[expect(deprecated)]
        return plan.with_new_children(children);
    }
    let mut next = (*plan).clone();
    *input(&mut next) = only_child(children, plan.name())?;
    Ok(Arc::new(next))
}

/// The first row of every run of equal keys (binned keys by their bucket), and the keys
/// of each run.
fn runs(keys: &[ArrayRef], bins: &[Bin]) -> Result<(Vec<usize>, Vec<ArrayRef>)> {
    if let [bin] = bins
        && let Some(found) = binned_runs(keys, bin)?
    {
        return Ok(found);
    }
    runs_of_bucket_arrays(keys, bins)
}

/// [`runs`] the plain way: every binned key's buckets computed as `date_bin` does, then
/// runs of equal keys.
fn runs_of_bucket_arrays(keys: &[ArrayRef], bins: &[Bin]) -> Result<(Vec<usize>, Vec<ArrayRef>)> {
    let mut keys = keys.to_vec();
    for b in bins {
        keys[b.key] = crate::datebin::binned(&keys[b.key], b.stride, b.origin)?;
    }
    let starts = run_starts(&keys)?;
    let idx = UInt32Array::from_iter_values(starts.iter().map(|&i| i as u32));
    let cols = keys
        .iter()
        .map(|k| take(k.as_ref(), &idx, None).map_err(DataFusionError::from))
        .collect::<Result<_>>()?;
    Ok((starts, cols))
}

/// [`runs`] with one binned key, without a bucket per row: within each run of the other
/// keys, a run starts at a row whose time leaves the bucket of the run before (two
/// comparisons a row; the division only once a run). `None` where a time is NULL or
/// could overflow (`date_bin` makes such a row NULL): the plain way then.
fn binned_runs(keys: &[ArrayRef], bin: &Bin) -> Result<Option<(Vec<usize>, Vec<ArrayRef>)>> {
    let Some(times) = keys[bin.key].as_primitive_opt::<TimestampNanosecondType>() else {
        return Ok(None);
    };
    let n = times.len();
    if n == 0 || times.null_count() > 0 {
        return Ok(None);
    }
    let others: Vec<ArrayRef> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != bin.key)
        .map(|(_, k)| Arc::clone(k))
        .collect();
    let outer = if others.is_empty() {
        vec![0]
    } else {
        run_starts(&others)?
    };
    let binner = Binner::new(bin.stride, bin.origin);
    let t = times.values();
    let mut starts = Vec::with_capacity(outer.len() * 2);
    let mut buckets = Vec::with_capacity(outer.len() * 2);
    for (s, e) in run_bounds(&outer, n) {
        let mut i = s;
        while i < e {
            let Some((bucket, lo, hi)) = binner.bucket(t[i]) else {
                return Ok(None);
            };
            starts.push(i);
            buckets.push(bucket);
            i = bucket_end(t, i + 1, e, lo, hi);
        }
    }
    let idx = UInt32Array::from_iter_values(starts.iter().map(|&i| i as u32));
    let buckets: ArrayRef = Arc::new(
        PrimitiveArray::<TimestampNanosecondType>::new(buckets.into(), None)
            .with_data_type(times.data_type().clone()),
    );
    let mut cols = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        cols.push(if i == bin.key {
            Arc::clone(&buckets)
        } else {
            take(k.as_ref(), &idx, None)?
        });
    }
    Ok(Some((starts, cols)))
}

/// The first row of `t[from..end]` outside `[lo, hi]` (`lo <= hi`), or `end`.
///
/// A series' rows come in time order, ~30 to a 5-minute bucket: eight rows are tested at
/// a time with no branch between them (one unsigned comparison each: `x - lo` wraps past
/// `hi - lo` for a time below `lo`), which the compiler turns into vector compares; the
/// chunk holding the end, and the last few rows, one by one. One row at a time this was
/// a third of the fold's samples in a 5-minute-max query (`perf annotate`).
#[inline]
fn bucket_end(t: &[i64], from: usize, end: usize, lo: i64, hi: i64) -> usize {
    const CHUNK: usize = 8;
    let width = hi.wrapping_sub(lo) as u64;
    let inside = |x: i64| x.wrapping_sub(lo) as u64 <= width;
    let mut i = from;
    while i + CHUNK <= end && all_of(&t[i..i + CHUNK], inside) {
        i += CHUNK;
    }
    while i < end && inside(t[i]) {
        i += 1;
    }
    i
}

/// Whether `holds` is true of every value of `v`, asked of all of them: no early exit,
/// so no branch per value, and the compiler vectorises the test (`Iterator::all` stops
/// at the first false and stays one value at a time).
#[inline]
fn all_of<T: Copy>(v: &[T], holds: impl Fn(T) -> bool) -> bool {
    v.iter().fold(true, |all, &x| all & holds(x))
}

/// Where any of `keys` differs from the row before: the first row of every run.
pub(crate) fn run_starts(keys: &[ArrayRef]) -> Result<Vec<usize>> {
    let n = keys.first().map_or(0, |k| k.len());
    if n == 0 {
        return Ok(Vec::new());
    }
    // bit i: row i + 1 differs from row i in some key
    let mut changed = vec![0u64; (n - 1).div_ceil(64)];
    for k in keys {
        // a dictionary's equal keys are equal values (unequal keys may still be equal
        // values: that only splits a run, which the aggregate above merges again)
        let k = match k.as_any_dictionary_opt() {
            Some(d) => d.keys().slice(0, n),
            None => Arc::clone(k),
        };
        let data = k.to_data();
        let t = data.data_type();
        // integer-like values without NULLs compare as their bits; anything else (a
        // NULL slot holds an arbitrary value) by arrow's `distinct`
        let plain = k.null_count() == 0
            && (t.is_integer()
                || matches!(
                    t,
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
                ));
        match t.primitive_width() {
            Some(8) if plain => mark_changes(data.buffer::<u64>(0), &mut changed),
            Some(4) if plain => mark_changes(data.buffer::<u32>(0), &mut changed),
            Some(2) if plain => mark_changes(data.buffer::<u16>(0), &mut changed),
            Some(1) if plain => mark_changes(data.buffer::<u8>(0), &mut changed),
            _ => {
                let d = distinct(&k.slice(1, n - 1), &k.slice(0, n - 1))?;
                // `distinct` leaves no NULLs; the values are the answer
                for i in d.values().set_indices() {
                    changed[i / 64] |= 1 << (i % 64);
                }
            }
        }
    }
    let mut starts = vec![0];
    for (w, &word) in changed.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            starts.push(w * 64 + bits.trailing_zeros() as usize + 1);
            bits &= bits - 1;
        }
    }
    Ok(starts)
}

/// Sets bit i of `changed` where `v[i + 1] != v[i]`.
fn mark_changes<T: Copy + PartialEq>(v: &[T], changed: &mut [u64]) {
    for (w, word) in changed.iter_mut().enumerate() {
        let base = w * 64;
        let end = (base + 64).min(v.len() - 1);
        // a tag mostly holds over many words (a building over a thousand series' rows):
        // one pass without branches finds a word where nothing changes, and only the
        // others are compared row by row (each row alone was 5 % of a 5-minute-max
        // query's CPU, `perf`)
        let first = v[base];
        if all_of(&v[base + 1..=end], |x| x == first) {
            continue;
        }
        let mut bits = 0u64;
        for i in base..end {
            bits |= u64::from(v[i + 1] != v[i]) << (i - base);
        }
        *word |= bits;
    }
}

/// (first, end) of every run.
fn run_bounds(starts: &[usize], n: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    starts
        .iter()
        .copied()
        .zip(starts.iter().skip(1).copied().chain(std::iter::once(n)))
}

/// Each run's values folded (min, max or sum).
fn fold_runs<T: ArrowPrimitiveType>(
    values: &PrimitiveArray<T>,
    starts: &[usize],
    part: Part,
) -> ArrayRef {
    // how two values combine; an incomparable (NaN) value wins, as in DataFusion's
    // min/max: `!(x <= a)` is "greater or incomparable" in one comparison (a conditional
    // move; matching on `partial_cmp` built an `Ordering` per value, the hottest loop of
    // a 5-minute-max query by `perf annotate`). One loop per part, so that the part is
    // not looked at for every value.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let out = match part {
        Part::Sum => fold_each(values, starts, |a: T::Native, x| a.add_wrapping(x)),
        Part::Max => fold_each(
            values,
            starts,
            |a: T::Native, x| if !(x <= a) { x } else { a },
        ),
        Part::Min => fold_each(
            values,
            starts,
            |a: T::Native, x| if !(x >= a) { x } else { a },
        ),
        Part::Count | Part::FloatSum | Part::Pick { .. } => {
            unreachable!("folded by fold_column or fold_batch")
        }
    };
    Arc::new(out.with_data_type(values.data_type().clone()))
}

/// Each run's non-null values combined by `combine`; NULL for a run without any.
fn fold_each<T: ArrowPrimitiveType>(
    values: &PrimitiveArray<T>,
    starts: &[usize],
    combine: impl Fn(T::Native, T::Native) -> T::Native,
) -> PrimitiveArray<T> {
    let bounds = run_bounds(starts, values.len());
    let v = values.values();
    if values.null_count() == 0 {
        // every run has a first value: no NULLs to skip or to return
        let mut folded = Vec::with_capacity(starts.len());
        for (s, e) in bounds {
            folded.push(v[s + 1..e].iter().fold(v[s], |a, &x| combine(a, x)));
        }
        PrimitiveArray::new(folded.into(), None)
    } else {
        bounds
            .map(|(s, e)| {
                (s..e)
                    .filter(|&i| values.is_valid(i))
                    .map(|i| v[i])
                    .reduce(&combine)
            })
            .collect()
    }
}

/// One part of every run of `col`.
fn fold_column(col: &ArrayRef, starts: &[usize], part: Part) -> Result<ArrayRef> {
    if part == Part::FloatSum {
        let f = cast(col, &DataType::Float64)?;
        let f = f.as_primitive::<Float64Type>();
        let sums = fold_runs(f, starts, Part::Sum);
        return Ok(sums);
    }
    if part == Part::Count {
        // only validity matters, whatever the type
        let counts: Int64Array = run_bounds(starts, col.len())
            .map(|(s, e)| {
                Some(if col.null_count() == 0 {
                    (e - s) as i64
                } else {
                    (s..e).filter(|&i| col.is_valid(i)).count() as i64
                })
            })
            .collect();
        return Ok(Arc::new(counts));
    }
    Ok(match col.data_type() {
        DataType::Float64 => fold_runs(col.as_primitive::<Float64Type>(), starts, part),
        DataType::Int64 => fold_runs(col.as_primitive::<Int64Type>(), starts, part),
        DataType::UInt64 => fold_runs(col.as_primitive::<UInt64Type>(), starts, part),
        other => {
            return Err(DataFusionError::Internal(format!(
                "RunFold cannot fold {other}"
            )));
        }
    })
}

fn fold_batch(
    b: &RecordBatch,
    keys: &[ArrayRef],
    bins: &[Bin],
    parts: &[(Part, usize)],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let (starts, mut cols) = runs(keys, bins)?;
    cols.reserve(parts.len());
    // the rows picked for each (time column, direction), found once per batch
    let mut picked: Vec<((usize, bool), UInt32Array)> = Vec::new();
    for (part, col) in parts {
        let folded = match *part {
            Part::Pick { time, latest } => {
                let rows = match picked.iter().find(|(k, _)| *k == (time, latest)) {
                    Some((_, rows)) => rows.clone(),
                    None => {
                        let rows = pick_rows(b.column(time), &starts, latest)?;
                        picked.push(((time, latest), rows.clone()));
                        rows
                    }
                };
                take(b.column(*col).as_ref(), &rows, None)?
            }
            part => fold_column(b.column(*col), &starts, part)?,
        };
        cols.push(folded);
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), cols)?)
}

/// The row of each run with the latest (or earliest) `time`; of equal latest times the
/// later row, of equal earliest the earlier.
pub(crate) fn pick_rows(time: &ArrayRef, starts: &[usize], latest: bool) -> Result<UInt32Array> {
    // timestamps are 64-bit integers: the cast only relabels the buffer
    let t = cast(time, &DataType::Int64)?;
    if t.null_count() > 0 {
        return Err(DataFusionError::Internal(
            "RunFold: NULL in a non-null order column".into(),
        ));
    }
    let t = t.as_primitive::<Int64Type>().values();
    Ok(run_bounds(starts, t.len())
        .map(|(s, e)| {
            let mut best = s;
            for i in s + 1..e {
                if (latest && t[i] >= t[best]) || (!latest && t[i] < t[best]) {
                    best = i;
                }
            }
            best as u32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{DictionaryArray, Float64Array, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{Int32Type, TimestampNanosecondType};

    #[test]
    fn runs_start_where_any_key_changes() {
        let tag: DictionaryArray<Int32Type> = vec![
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            None,
            None,
            Some("a"),
        ]
        .into_iter()
        .collect();
        let time = TimestampNanosecondArray::from(vec![1, 1, 1, 2, 2, 2, 2]);
        let keys: Vec<ArrayRef> = vec![Arc::new(tag), Arc::new(time)];
        assert_eq!(run_starts(&keys).unwrap(), vec![0, 2, 3, 4, 6]);
        assert_eq!(run_starts(&[]).unwrap(), Vec::<usize>::new());
    }

    proptest::proptest! {
        /// Over word boundaries, with NULLs (a NULL slot whose hidden value equals its
        /// neighbour's must still start a run) and keys of every width: the same starts
        /// as comparing the rows' values one by one.
        #[test]
        fn run_starts_match_row_by_row(
            spans in proptest::collection::vec(((0u8..3, proptest::option::weighted(0.8, 0i64..3), 0i32..2), 1usize..150), 1..40),
        ) {
            // rows in spans of equal keys, some longer than a word of 64 rows (where
            // nothing changes within a word, `mark_changes` skips it)
            let rows: Vec<_> = spans.iter().flat_map(|&(r, n)| std::iter::repeat_n(r, n)).collect();
            let small: ArrayRef = Arc::new(datafusion::arrow::array::UInt8Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            ));
            // NULLs over hidden values equal to the neighbours' (0)
            let nullable: ArrayRef = Arc::new(Int64Array::new(
                rows.iter().map(|r| r.1.unwrap_or(0)).collect(),
                Some(rows.iter().map(|r| r.1.is_some()).collect()),
            ));
            let tag: DictionaryArray<Int32Type> =
                rows.iter().map(|r| ["x", "y"][r.2 as usize]).collect();
            let time: ArrayRef = Arc::new(TimestampNanosecondArray::from(
                rows.iter().map(|r| i64::from(r.2) * 10).collect::<Vec<_>>(),
            ));
            let keys: Vec<ArrayRef> = vec![small, nullable, Arc::new(tag), time];
            let mut want = vec![0];
            for i in 1..rows.len() {
                if rows[i] != rows[i - 1] {
                    want.push(i);
                }
            }
            proptest::prop_assert_eq!(run_starts(&keys).unwrap(), want);
        }
    }

    proptest::proptest! {
        /// A key binned while finding runs gives the runs and keys of binning every row
        /// first (`date_bin`'s own answers, DataFusion's code where a time overflows):
        /// times in order within a tag, out of order, with a tag key or without.
        #[test]
        fn binned_runs_match_binning_every_row(
            rows in proptest::collection::vec((0i32..3, -2_000i64..2_000), 1..300),
            stride in 1i64..700,
            origin in -1_000i64..1_000,
            sorted in proptest::bool::ANY,
            extreme in proptest::option::weighted(0.1, proptest::prop_oneof![proptest::strategy::Just(i64::MIN), proptest::strategy::Just(i64::MAX)]),
        ) {
            let mut rows = rows;
            if sorted {
                rows.sort_unstable();
            }
            let tz: Option<Arc<str>> = Some("UTC".into());
            let mut times: Vec<i64> = rows.iter().map(|r| r.1).collect();
            if let Some(x) = extreme {
                times[rows.len() / 2] = x;
            }
            let time: ArrayRef = Arc::new(
                TimestampNanosecondArray::from(times).with_timezone_opt(tz.clone()),
            );
            let tag: DictionaryArray<Int32Type> =
                rows.iter().map(|r| ["x", "y", "z"][r.0 as usize]).collect();
            let bin = Bin { key: 1, stride, origin };
            let keys: Vec<ArrayRef> = vec![Arc::new(tag), Arc::clone(&time)];
            let fused = binned_runs(&keys, &bin).unwrap();
            // the fused way is taken where no time could overflow (i64::MIN always could)
            proptest::prop_assert!(fused.is_some() || extreme.is_some());
            if extreme == Some(i64::MIN) {
                proptest::prop_assert!(fused.is_none());
            }
            proptest::prop_assert_eq!(runs(&keys, &[bin]).unwrap(), runs_of_bucket_arrays(&keys, &[bin]).unwrap());
            // the time alone as the key
            let alone = Bin { key: 0, stride, origin };
            let keys = vec![time];
            proptest::prop_assert_eq!(runs(&keys, &[alone]).unwrap(), runs_of_bucket_arrays(&keys, &[alone]).unwrap());
        }
    }

    #[test]
    fn a_bucket_ends_at_the_first_time_outside_it() {
        // 20 rows inside [10, 40], then one below, in the second chunk's middle
        let mut t: Vec<i64> = (0..20).map(|i| 10 + i).collect();
        t.push(9);
        t.extend([10, 11]);
        assert_eq!(bucket_end(&t, 0, t.len(), 10, 40), 20);
        assert_eq!(bucket_end(&t, 3, 17, 10, 40), 17, "stops at `end`");
        assert_eq!(bucket_end(&t, 21, t.len(), 10, 40), t.len());
        // one above the bucket, in the first chunk
        let t = [10, 40, 41, 10, 10, 10, 10, 10, 10, 10];
        assert_eq!(bucket_end(&t, 0, t.len(), 10, 40), 2);
        // the widest bucket: only i64::MIN lies below it (wrapping must not let it in)
        let (lo, hi) = (i64::MIN + 1, i64::MAX);
        let mut t = vec![lo, hi, 0, -1, 1, lo, hi, 0, 5];
        assert_eq!(bucket_end(&t, 0, t.len(), lo, hi), t.len());
        t[6] = i64::MIN;
        assert_eq!(bucket_end(&t, 0, t.len(), lo, hi), 6);
    }

    #[test]
    fn runs_fold_like_the_aggregates() {
        let starts = [0, 2, 3, 5];
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![
            Some(i64::MAX),
            Some(1),
            None,
            Some(-4),
            Some(7),
            None,
        ]));
        let col = |part| fold_column(&ints, &starts, part).unwrap();
        // the sum wraps, as DataFusion's; a run of NULLs has no min, max or sum
        assert_eq!(
            col(Part::Sum).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![Some(i64::MIN), None, Some(3), None])
        );
        assert_eq!(
            col(Part::Max).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![Some(i64::MAX), None, Some(7), None])
        );
        assert_eq!(
            col(Part::Min).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![Some(1), None, Some(-4), None])
        );
        assert_eq!(
            col(Part::Count).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![2, 0, 2, 0])
        );
        assert_eq!(
            col(Part::FloatSum).as_primitive::<Float64Type>(),
            &Float64Array::from(vec![Some(i64::MAX as f64 + 1.0), None, Some(3.0), None])
        );
        // without NULLs (the fast path), and NaN wins max and min as in DataFusion
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.5, f64::NAN, 2.0, -1.0]));
        let starts = [0, 2];
        let max = fold_column(&floats, &starts, Part::Max).unwrap();
        let max = max.as_primitive::<Float64Type>();
        assert!(max.value(0).is_nan());
        assert_eq!(max.value(1), 2.0);
        let min = fold_column(&floats, &starts, Part::Min).unwrap();
        assert!(min.as_primitive::<Float64Type>().value(0).is_nan());
        assert_eq!(min.as_primitive::<Float64Type>().value(1), -1.0);
        assert_eq!(max.null_count(), 0);
        // a NaN already folded gives way to the next value, as before (`partial_cmp`)
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![f64::NAN, 1.0, f64::NAN]));
        for part in [Part::Max, Part::Min] {
            let got = fold_column(&floats, &[0, 2], part).unwrap();
            let got = got.as_primitive::<Float64Type>();
            assert_eq!(got.value(0), 1.0, "{part:?}");
            assert!(got.value(1).is_nan(), "{part:?}");
        }
    }

    #[test]
    fn runs_pick_their_latest_and_earliest_rows() {
        let time: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![
            5, 3, 9, 9, 1, // run 0: latest 9 twice (the later row wins), earliest 1
            7, // run 1: one row
            -2, 4, -2, // run 2: earliest -2 twice (the earlier row wins)
        ]));
        let starts = [0, 5, 6];
        assert_eq!(
            pick_rows(&time, &starts, true).unwrap(),
            UInt32Array::from(vec![3, 5, 7])
        );
        assert_eq!(
            pick_rows(&time, &starts, false).unwrap(),
            UInt32Array::from(vec![4, 5, 6])
        );
        // the value picked is the row's, NULL or not
        let tag: DictionaryArray<Int32Type> = vec!["a"; 9].into_iter().collect();
        let values = Float64Array::from(vec![
            Some(0.0),
            Some(1.0),
            Some(2.0),
            None,
            Some(4.0),
            Some(5.0),
            Some(6.0),
            Some(7.0),
            Some(8.0),
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", tag.data_type().clone(), true),
            Field::new("v", DataType::Float64, true),
            Field::new("t", time.data_type().clone(), false),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(tag), Arc::new(values), Arc::clone(&time)],
        )
        .unwrap();
        let pick = Part::Pick {
            time: 2,
            latest: true,
        };
        let out_schema = Arc::new(Schema::new(vec![
            Field::new("k", schema.field(0).data_type().clone(), true),
            Field::new("p0", DataType::Float64, true),
            Field::new("p1", time.data_type().clone(), true),
        ]));
        let out = fold_batch(
            &b,
            &b.columns()[..1],
            &[],
            &[(pick, 1), (pick, 2)],
            &out_schema,
        )
        .unwrap();
        // one key: one run; its latest row is the NULL at 9
        assert_eq!(out.num_rows(), 1);
        assert!(out.column(1).is_null(0));
        assert_eq!(
            out.column(2)
                .as_primitive::<TimestampNanosecondType>()
                .value(0),
            9
        );
        // a NULL time is refused rather than placed
        let with_null: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![Some(1), None]));
        assert!(pick_rows(&with_null, &[0], true).is_err());
    }
}
