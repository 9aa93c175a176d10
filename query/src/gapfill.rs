//! Gap filling for dashboards: `date_bin_gapfill`, `locf` and `interpolate`, with the
//! semantics InfluxDB 3 gives them.
//!
//! ```sql
//! SELECT date_bin_gapfill(INTERVAL '5 minutes', time) AS t, room,
//!        avg(temperature)                AS raw,     -- NULL in empty buckets
//!        locf(avg(temperature))          AS carried, -- last value carried forward
//!        interpolate(avg(co2))           AS line     -- linear between neighbours
//! FROM env
//! WHERE time >= now() - INTERVAL '6 hours' AND time < now()
//! GROUP BY t, room ORDER BY room, t
//! ```
//!
//! How: the three names are registered as functions so that SQL plans. An optimizer
//! rule ([`GapFillRule`], run before DataFusion's own, while the WHERE filter still sits
//! under the aggregate) finds an `Aggregate` grouped by
//! `date_bin_gapfill(stride, time[, origin])`, replaces that with `date_bin` (same
//! output name) and puts a [`GapFill`] node over it; the time range comes from the
//! `time` bounds ANDed into the WHERE clause (a lower bound is required, the upper one
//! defaults to now()). In the projection above, `locf(x)` / `interpolate(x)` become `x`
//! and tell the node how to fill column `x`. The node runs as [`GapFillExec`]: its input
//! (one row per group and non-empty bucket) arrives sorted by the other group columns
//! then time; it emits every bucket of the range for every group seen, under the
//! query's memory pool and an output-size cap. Any of the three functions left in a
//! plan (used anywhere else) fails with a message saying where it may be used.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, DataFusionError, Result, ScalarValue};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::{Alias, ScalarFunction};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, ColumnarValue, Expr, Extension, LogicalPlan, Operator, Projection,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, Volatility,
};
use datafusion::optimizer::simplify_expressions::{ExprSimplifier, SimplifyContext};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::{EquivalenceProperties, LexRequirement, PhysicalSortRequirement};
use datafusion::physical_expr_common::sort_expr::OrderingRequirements;
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PhysicalExpr,
    PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

const GAPFILL: &str = "date_bin_gapfill";
const LOCF: &str = "locf";
const INTERPOLATE: &str = "interpolate";
/// Most rows one gap-filled aggregate may produce.
pub(crate) const MAX_GAPFILL_ROWS: usize = 10_000_000;

// ---- the SQL functions ---------------------------------------------------------------

/// `date_bin_gapfill(stride, time[, origin])`: `date_bin`'s signature and type; only
/// valid as a GROUP BY expression (the rule replaces it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct GapFillFn {
    signature: Signature,
}

impl ScalarUDFImpl for GapFillFn {
    fn name(&self) -> &str {
        GAPFILL
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        datafusion::functions::datetime::date_bin().return_type(arg_types)
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Err(DataFusionError::Plan(format!(
            "{GAPFILL}() is only valid as a GROUP BY expression of an aggregate query with a time range in WHERE (time >= ... [AND time < ...])"
        )))
    }
}

/// `locf(aggregate)` and `interpolate(aggregate)`: markers, identity on their type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FillFn {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for FillFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Err(DataFusionError::Plan(format!(
            "{}() is only valid around an aggregate in the SELECT list of a query grouped by {GAPFILL}()",
            self.name
        )))
    }
}

/// The three functions, to register on a session.
pub(crate) fn functions() -> Vec<ScalarUDF> {
    let date_bin = datafusion::functions::datetime::date_bin();
    let mut out = vec![ScalarUDF::new_from_impl(GapFillFn {
        signature: date_bin.signature().clone(),
    })];
    for name in [LOCF, INTERPOLATE] {
        out.push(ScalarUDF::new_from_impl(FillFn {
            name,
            signature: Signature::any(1, Volatility::Immutable),
        }));
    }
    out
}

// ---- the logical node ----------------------------------------------------------------

/// How one aggregate column is filled in buckets without a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) enum Fill {
    Null,
    /// Last non-null value of the group carried forward.
    Locf,
    /// Linear between the previous and next non-null values (NULL outside them).
    Interpolate,
}

/// Fill every bucket of `[first, last]` (bucket starts, ns) for each group of `input`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GapFill {
    input: LogicalPlan,
    /// The bucket column (output of the grouped `date_bin`).
    time: Column,
    /// The other group columns (the series).
    groups: Vec<Column>,
    /// Non-default fills by column.
    fills: Vec<(Column, Fill)>,
    stride: i64,
    first: i64,
    last: i64,
    /// The input's, with every filled column nullable (gaps are NULL).
    schema: DFSchemaRef,
}

impl GapFill {
    /// Set the input (and the schema that follows from it).
    fn with_input(mut self, input: LogicalPlan) -> Result<Self> {
        let keep = |q: Option<&datafusion::common::TableReference>, f: &str| {
            let c = Column::new(q.cloned(), f);
            c == self.time || self.groups.contains(&c)
        };
        let fields = input
            .schema()
            .iter()
            .map(|(q, f)| {
                let f = if keep(q, f.name()) {
                    Arc::clone(f)
                } else {
                    Arc::new(f.as_ref().clone().with_nullable(true))
                };
                (q.cloned(), f)
            })
            .collect();
        self.schema = Arc::new(datafusion::common::DFSchema::new_with_metadata(
            fields,
            input.schema().metadata().clone(),
        )?);
        self.input = input;
        Ok(self)
    }
}

/// `schema` with every field but `keep`'s nullable.
fn nullable_except(
    schema: &datafusion::arrow::datatypes::Schema,
    keep: &[usize],
) -> datafusion::arrow::datatypes::SchemaRef {
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if keep.contains(&i) {
                Arc::clone(f)
            } else {
                Arc::new(f.as_ref().clone().with_nullable(true))
            }
        })
        .collect();
    Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

impl Hash for GapFill {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.time.hash(state);
        self.groups.hash(state);
        self.fills.hash(state);
        (self.stride, self.first, self.last).hash(state);
    }
}

impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self.stride, self.first, self.last)
            .partial_cmp(&(other.stride, other.first, other.last))
            .filter(|o| o.is_ne() || self == other)
    }
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
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
        write!(
            f,
            "GapFill: time={}, groups=[{}], stride={}ns, buckets={}..={}",
            self.time,
            self.groups
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.stride,
            self.first,
            self.last
        )?;
        for (c, fill) in &self.fills {
            write!(f, ", {c}: {fill:?}")?;
        }
        Ok(())
    }
    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("GapFill needs one input".into()))?;
        self.clone().with_input(input)
    }
}

// ---- the rewrite ---------------------------------------------------------------------

/// Turns `date_bin_gapfill` aggregates into `date_bin` + [`GapFill`] (see module doc).
#[derive(Debug, Default)]
pub(crate) struct GapFillRule;

impl OptimizerRule for GapFillRule {
    fn name(&self) -> &str {
        "talo_gapfill"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let start = config.query_execution_start_time();
        plan.transform_up(|node| match node {
            LogicalPlan::Aggregate(a) if a.group_expr.iter().any(is_gapfill_call) => {
                rewrite_aggregate(a, start).map(Transformed::yes)
            }
            LogicalPlan::Projection(p) if p.expr.iter().any(has_fill_call) => {
                rewrite_projection(p).map(Transformed::yes)
            }
            other => Ok(Transformed::no(other)),
        })
    }
}

fn is_call(e: &Expr, name: &str) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == name)
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(Alias { expr, .. }) => unalias(expr),
        e => e,
    }
}

fn is_gapfill_call(e: &Expr) -> bool {
    is_call(unalias(e), GAPFILL)
}

fn has_fill_call(e: &Expr) -> bool {
    e.exists(|e| Ok(is_call(e, LOCF) || is_call(e, INTERPOLATE)))
        .unwrap_or(false)
}

fn plan_err(msg: impl Into<String>) -> DataFusionError {
    DataFusionError::Plan(msg.into())
}

fn rewrite_aggregate(a: Aggregate, start: Option<DateTime<Utc>>) -> Result<LogicalPlan> {
    let now = start.and_then(|t| t.timestamp_nanos_opt()).unwrap_or(0);
    if a.group_expr.iter().filter(|e| is_gapfill_call(e)).count() > 1 {
        return Err(plan_err(format!("only one {GAPFILL}() per GROUP BY")));
    }
    if matches!(a.group_expr.first(), Some(Expr::GroupingSet(_))) {
        return Err(plan_err(format!(
            "{GAPFILL}() does not work with GROUPING SETS, CUBE or ROLLUP"
        )));
    }
    let pos = a
        .group_expr
        .iter()
        .position(is_gapfill_call)
        .ok_or_else(|| DataFusionError::Internal("no gapfill call".into()))?;
    let Expr::ScalarFunction(call) = unalias(&a.group_expr[pos]).clone() else {
        return Err(DataFusionError::Internal("gapfill call expected".into()));
    };
    let args: Vec<Expr> = call.args.iter().map(|e| fold(e, start)).collect();
    let (stride, origin) = bin_params(&args)?;
    let time_col = match call.args.get(1).map(unwrap_casts) {
        Some(Expr::Column(c)) => c.clone(),
        _ => {
            return Err(plan_err(format!(
                "{GAPFILL}(stride, time): the second argument must be the time column"
            )));
        }
    };
    let (lo, hi) = time_range(&a.input, &time_col, start)?;
    let hi = hi.unwrap_or(now.saturating_add(1));
    let Some(lo) = lo else {
        return Err(plan_err(format!(
            "{GAPFILL}() needs a lower bound on {} in WHERE (e.g. {} >= now() - INTERVAL '1 day')",
            time_col.name, time_col.name
        )));
    };
    if hi <= lo {
        return Err(plan_err(format!(
            "{GAPFILL}(): the time range in WHERE is empty"
        )));
    }
    // in i128: hostile bounds and origins near the ends of the i64 range must not wrap
    let bin = |t: i64| {
        let (t, o, s) = (i128::from(t), i128::from(origin), i128::from(stride));
        i64::try_from(o + (t - o).div_euclid(s) * s).ok()
    };
    let (Some(first), Some(last)) = (bin(lo), bin(hi - 1)) else {
        return Err(plan_err(format!(
            "{GAPFILL}(): the time range is out of bounds"
        )));
    };
    let buckets = (i128::from(last) - i128::from(first)) / i128::from(stride) + 1;
    if buckets as u128 > MAX_GAPFILL_ROWS as u128 {
        return Err(plan_err(format!(
            "{GAPFILL}(): {buckets} buckets per series is more than {MAX_GAPFILL_ROWS}; widen the interval or narrow the time range"
        )));
    }
    // same output name as before, so everything above still resolves
    let out_name = a.schema.field(pos).name().clone();
    let mut group_expr = a.group_expr.clone();
    let date_bin = crate::datebin::date_bin();
    group_expr[pos] = Expr::ScalarFunction(ScalarFunction::new_udf(date_bin, call.args.clone()))
        .alias(out_name.clone());
    let agg = LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::clone(&a.input),
        group_expr,
        a.aggr_expr.clone(),
    )?);
    let schema = Arc::clone(agg.schema());
    let n_groups = a.group_expr.len();
    let cols: Vec<Column> = schema.columns();
    let time = cols[pos].clone();
    let groups = cols[..n_groups]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != pos)
        .map(|(_, c)| c.clone())
        .collect();
    let node = GapFill {
        input: LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
            produce_one_row: false,
            schema: Arc::clone(&schema),
        }),
        time,
        groups,
        fills: Vec::new(),
        stride,
        first,
        last,
        schema: Arc::clone(&schema),
    }
    .with_input(agg)?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    }))
}

/// Stride and origin (ns) of a `date_bin_gapfill` call, from literal arguments.
fn bin_params(args: &[Expr]) -> Result<(i64, i64)> {
    let stride = match args.first().map(unwrap_casts) {
        Some(Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _)) => {
            if v.months != 0 {
                return Err(plan_err(format!(
                    "{GAPFILL}(): the interval must be fixed (days, hours, minutes, ...), not months or years"
                )));
            }
            i64::from(v.days)
                .checked_mul(86_400_000_000_000)
                .and_then(|d| d.checked_add(v.nanoseconds))
                .ok_or_else(|| plan_err(format!("{GAPFILL}(): the interval is too long")))?
        }
        Some(Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _)) => {
            i64::from(v.days) * 86_400_000_000_000 + i64::from(v.milliseconds) * 1_000_000 // fits: i32 days
        }
        _ => {
            return Err(plan_err(format!(
                "{GAPFILL}(): the first argument must be a constant interval"
            )));
        }
    };
    if stride <= 0 {
        return Err(plan_err(format!(
            "{GAPFILL}(): the interval must be positive"
        )));
    }
    let origin = match args.get(2).map(unwrap_casts) {
        None => 0,
        Some(Expr::Literal(v, _)) => timestamp_ns(v)
            .ok_or_else(|| plan_err(format!("{GAPFILL}(): the origin must be a timestamp")))?,
        Some(_) => {
            return Err(plan_err(format!(
                "{GAPFILL}(): the origin must be a constant timestamp"
            )));
        }
    };
    Ok((stride, origin))
}

/// `e` folded to a literal if it is a constant expression (e.g. `now() - INTERVAL '1
/// hour'`, a string cast to a timestamp): this rule runs before DataFusion's own
/// simplification, while the filters still sit right under the aggregate.
fn fold(e: &Expr, start: Option<DateTime<Utc>>) -> Expr {
    if matches!(e, Expr::Literal(..)) || !e.column_refs().is_empty() {
        return e.clone();
    }
    let ctx = SimplifyContext::builder()
        .with_query_execution_start_time(start)
        .build();
    ExprSimplifier::new(ctx)
        .simplify(e.clone())
        .unwrap_or_else(|_| e.clone())
}

fn unwrap_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => unwrap_casts(&c.expr),
        Expr::TryCast(c) => unwrap_casts(&c.expr),
        Expr::Alias(a) => unwrap_casts(&a.expr),
        e => e,
    }
}

fn timestamp_ns(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(*t),
        ScalarValue::TimestampMicrosecond(Some(t), _) => t.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(t), _) => t.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1_000_000_000),
        _ => None,
    }
}

/// `[lo, hi)` (ns) from the bounds on `time` ANDed into the filters under `plan`
/// (Filter nodes and filters pushed into the scan, following single-input nodes).
fn time_range(
    plan: &LogicalPlan,
    time: &Column,
    start: Option<DateTime<Utc>>,
) -> Result<(Option<i64>, Option<i64>)> {
    let (mut lo, mut hi): (Option<i64>, Option<i64>) = (None, None);
    let mut bound = |e: &Expr| {
        let mut visit = |col: &Expr, op: Operator, lit: &Expr| {
            let Expr::Column(c) = unwrap_casts(col) else {
                return;
            };
            let folded = fold(lit, start);
            let Expr::Literal(v, _) = unwrap_casts(&folded) else {
                return;
            };
            if c.name != time.name
                || (c.relation.is_some() && time.relation.is_some() && c.relation != time.relation)
            {
                return;
            }
            let Some(t) = timestamp_ns(v) else { return };
            match op {
                Operator::GtEq => lo = Some(lo.map_or(t, |l| l.max(t))),
                Operator::Gt => {
                    lo = Some(lo.map_or(t.saturating_add(1), |l| l.max(t.saturating_add(1))))
                }
                Operator::Lt => hi = Some(hi.map_or(t, |h| h.min(t))),
                Operator::LtEq => {
                    hi = Some(hi.map_or(t.saturating_add(1), |h| h.min(t.saturating_add(1))))
                }
                _ => {}
            }
        };
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                visit(left, *op, right);
                if let Some(swapped) = op.swap() {
                    visit(right, swapped, left);
                }
            }
            Expr::Between(b) if !b.negated => {
                visit(&b.expr, Operator::GtEq, &b.low);
                visit(&b.expr, Operator::LtEq, &b.high);
            }
            _ => {}
        }
    };
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Filter(f) => split_conjunction(&f.predicate)
                .into_iter()
                .for_each(&mut bound),
            LogicalPlan::TableScan(s) => {
                for f in &s.filters {
                    split_conjunction(f).into_iter().for_each(&mut bound);
                }
            }
            _ => {}
        }
        match node.inputs().as_slice() {
            [only]
                if matches!(
                    node,
                    LogicalPlan::Filter(_)
                        | LogicalPlan::Projection(_)
                        | LogicalPlan::TableScan(_)
                        | LogicalPlan::SubqueryAlias(_)
                ) =>
            {
                node = only
            }
            _ => break,
        }
    }
    Ok((lo, hi))
}

fn rewrite_projection(p: Projection) -> Result<LogicalPlan> {
    // Each `locf(x)` / `interpolate(x)` reads its own copy of aggregate `x` (named like
    // the call), so `x`, `locf(x)` and `interpolate(x)` can sit side by side.
    let mut wanted: Vec<(Column, Fill, String)> = Vec::new();
    let mut exprs = Vec::with_capacity(p.expr.len());
    for (i, e) in p.expr.iter().enumerate() {
        let name = p.schema.field(i).name().clone();
        let t = e.clone().transform_up(|e| {
            let Expr::ScalarFunction(f) = &e else {
                return Ok(Transformed::no(e));
            };
            let kind = match f.func.name() {
                LOCF => Fill::Locf,
                INTERPOLATE => Fill::Interpolate,
                _ => return Ok(Transformed::no(e)),
            };
            match f.args.as_slice() {
                [Expr::Column(c)] => {
                    let copy = format!("{}({})", f.func.name(), c.name);
                    if !wanted.iter().any(|(_, _, n)| *n == copy) {
                        wanted.push((c.clone(), kind, copy.clone()));
                    }
                    Ok(Transformed::new(
                        Expr::Column(Column::new_unqualified(copy)),
                        true,
                        TreeNodeRecursion::Jump,
                    ))
                }
                _ => Err(plan_err(format!(
                    "{}() takes one aggregate of the query, e.g. {}(avg(temperature))",
                    f.func.name(),
                    f.func.name()
                ))),
            }
        })?;
        exprs.push(if !t.transformed {
            e.clone()
        } else if let Expr::Alias(_) = e {
            t.data
        } else {
            t.data.alias(name)
        });
    }
    let input = set_fills(Arc::unwrap_or_clone(p.input), &wanted)?;
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(input),
    )?))
}

/// Add the copies of the aggregates in `wanted` (source column, fill, copy's name) to
/// the aggregate under the GapFill under `plan` (through HAVING filters), with their
/// fills.
fn set_fills(plan: LogicalPlan, wanted: &[(Column, Fill, String)]) -> Result<LogicalPlan> {
    match plan {
        LogicalPlan::Extension(ext) => {
            let Some(g) = ext.node.as_any().downcast_ref::<GapFill>() else {
                return Err(no_gapfill());
            };
            let mut g = g.clone();
            let LogicalPlan::Aggregate(agg) = &g.input else {
                return Err(no_gapfill());
            };
            let n_groups = agg.group_expr.len();
            let mut aggr_expr = agg.aggr_expr.clone();
            for (c, fill, copy) in wanted {
                let idx = agg.schema.index_of_column(c).map_err(|_| no_gapfill())?;
                if idx < n_groups {
                    return Err(plan_err(
                        "locf() and interpolate() apply to aggregates, not to GROUP BY columns",
                    ));
                }
                aggr_expr.push(unalias(&agg.aggr_expr[idx - n_groups]).clone().alias(copy));
                g.fills.push((Column::new_unqualified(copy), *fill));
            }
            let agg = LogicalPlan::Aggregate(Aggregate::try_new(
                Arc::clone(&agg.input),
                agg.group_expr.clone(),
                aggr_expr,
            )?);
            let g = g.with_input(agg)?;
            Ok(LogicalPlan::Extension(Extension { node: Arc::new(g) }))
        }
        LogicalPlan::Filter(mut f) => {
            f.input = Arc::new(set_fills(Arc::unwrap_or_clone(f.input), wanted)?);
            Ok(LogicalPlan::Filter(f))
        }
        _ => Err(no_gapfill()),
    }
}

fn no_gapfill() -> DataFusionError {
    plan_err(format!(
        "locf() and interpolate() take an aggregate of a query grouped by {GAPFILL}()"
    ))
}

// ---- physical planning ---------------------------------------------------------------

/// DataFusion's planner plus [`GapFill`] nodes.
#[derive(Debug, Default)]
pub(crate) struct TaloQueryPlanner;

#[async_trait]
impl QueryPlanner for TaloQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(GapFillPlanner),
            Arc::new(crate::runs::RunFoldPlanner),
        ])
        .create_physical_plan(logical_plan, session)
        .await
    }
}

struct GapFillPlanner;

#[async_trait]
impl ExtensionPlanner for GapFillPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(g) = node.as_any().downcast_ref::<GapFill>() else {
            return Ok(None);
        };
        let input = Arc::clone(&physical_inputs[0]);
        let schema = g.input.schema();
        let idx = |c: &Column| schema.index_of_column(c);
        let mut fills = vec![Fill::Null; schema.fields().len()];
        for (c, f) in &g.fills {
            fills[idx(c)?] = *f;
        }
        let groups = g.groups.iter().map(idx).collect::<Result<Vec<_>>>()?;
        Ok(Some(Arc::new(GapFillExec::new(
            input,
            groups,
            idx(&g.time)?,
            fills,
            (g.stride, g.first, g.last),
        )?)))
    }
}

/// Executes [`GapFill`]: collects its (small, aggregated) input, emits every bucket.
#[derive(Debug, Clone)]
pub(crate) struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    groups: Vec<usize>,
    time: usize,
    fills: Vec<Fill>,
    stride: i64,
    first: i64,
    last: i64,
    props: Arc<PlanProperties>,
}

impl GapFillExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        groups: Vec<usize>,
        time: usize,
        fills: Vec<Fill>,
        (stride, first, last): (i64, i64, i64),
    ) -> Result<Self> {
        let keep: Vec<usize> = groups.iter().copied().chain([time]).collect();
        let schema = nullable_except(&input.schema(), &keep);
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(GapFillExec {
            input,
            groups,
            time,
            fills,
            stride,
            first,
            last,
            props,
        })
    }

    fn sort_requirement(&self) -> Option<OrderingRequirements> {
        let schema = self.input.schema();
        let opts = SortOptions {
            descending: false,
            nulls_first: true,
        };
        let reqs = self
            .groups
            .iter()
            .chain(std::iter::once(&self.time))
            .map(|&i| {
                let e: Arc<dyn PhysicalExpr> = Arc::new(
                    datafusion::physical_expr::expressions::Column::new(schema.field(i).name(), i),
                );
                PhysicalSortRequirement::new(e, Some(opts))
            });
        LexRequirement::new(reqs).map(OrderingRequirements::new)
    }
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "GapFillExec: time={}, groups={:?}, stride={}ns, buckets={}..={}, fills={:?}",
            self.time, self.groups, self.stride, self.first, self.last, self.fills
        )
    }
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &str {
        "GapFillExec"
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
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }
    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![self.sort_requirement()]
    }
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = crate::runs::only_child(children, "GapFillExec")?;
        Ok(Arc::new(GapFillExec::new(
            input,
            self.groups.clone(),
            self.time,
            self.fills.clone(),
            (self.stride, self.first, self.last),
        )?))
    }
    /// With the properties kept where they hold (`reset_plan_states` of a kept plan), so
    /// that the operators above keep theirs too.
    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        crate::runs::replace_only_child(self, children, options, |p| &mut p.input)
    }
    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "GapFillExec has one partition, not {partition}"
            )));
        }
        let schema = Arc::clone(self.props.eq_properties.schema());
        let in_schema = self.input.schema();
        let mut input = self.input.execute(0, Arc::clone(&ctx))?;
        let spec = Spec {
            groups: self.groups.clone(),
            time: self.time,
            fills: self.fills.clone(),
            stride: self.stride,
            first: self.first,
            last: self.last,
        };
        let out_schema = Arc::clone(&schema);
        let fut = async move {
            use futures::StreamExt;
            let reservation = MemoryConsumer::new("GapFill").register(ctx.memory_pool());
            let mut batches = Vec::new();
            while let Some(b) = input.next().await {
                let b = b?;
                reservation.try_grow(b.get_array_memory_size())?;
                batches.push(b);
            }
            let all = concat_batches(&in_schema, &batches)?;
            drop(batches);
            let out = spec.fill(&all, &out_schema, &mut |bytes| reservation.try_grow(bytes))?;
            Ok(out)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(fut),
        )))
    }
}

// ---- the filling itself --------------------------------------------------------------

struct Spec {
    groups: Vec<usize>,
    time: usize,
    fills: Vec<Fill>,
    stride: i64,
    first: i64,
    last: i64,
}

impl Spec {
    /// `input`: one row per (group, bucket), sorted by group then bucket.
    fn fill(
        &self,
        input: &RecordBatch,
        out_schema: &datafusion::arrow::datatypes::SchemaRef,
        reserve: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<RecordBatch> {
        let n = input.num_rows();
        let time_type = input.schema().field(self.time).data_type().clone();
        let times_ns = cast(
            input.column(self.time),
            &DataType::Timestamp(TimeUnit::Nanosecond, None),
        )?;
        let times = times_ns
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .ok_or_else(|| DataFusionError::Internal("bucket column is not a timestamp".into()))?;
        // group boundaries
        let mut starts = vec![0usize];
        if !self.groups.is_empty() && n > 0 {
            let fields = self
                .groups
                .iter()
                .map(|&i| SortField::new(input.schema().field(i).data_type().clone()))
                .collect();
            let conv = RowConverter::new(fields)?;
            let cols: Vec<ArrayRef> = self
                .groups
                .iter()
                .map(|&i| Arc::clone(input.column(i)))
                .collect();
            let rows = conv.convert_columns(&cols)?;
            starts.extend((1..n).filter(|&i| rows.row(i) != rows.row(i - 1)));
        }
        if n == 0 {
            starts.clear();
        }
        let buckets = ((self.last - self.first) / self.stride + 1) as usize;
        let total = buckets.saturating_mul(starts.len());
        if total > MAX_GAPFILL_ROWS {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "gap filling would produce {total} rows (more than {MAX_GAPFILL_ROWS}); widen the interval or narrow the time range"
            )));
        }
        reserve(total * (8 + 4 * input.num_columns()))?;
        // per output row: its time, the input row of its bucket (if any), its group's first row
        let mut out_time = Vec::with_capacity(total);
        let mut src: Vec<Option<u32>> = Vec::with_capacity(total);
        let mut group_row = Vec::with_capacity(total);
        let mut group_of = Vec::with_capacity(total);
        for (g, &s) in starts.iter().enumerate() {
            let e = starts.get(g + 1).copied().unwrap_or(n);
            let mut j = s;
            let mut emit = |t: i64, row: Option<usize>| {
                out_time.push(t);
                src.push(row.map(|r| r as u32));
                group_row.push(s as u32);
                group_of.push(g);
            };
            // rows before the range (cannot happen when the WHERE bounds hold) pass through
            while j < e && (times.is_null(j) || times.value(j) < self.first) {
                emit(
                    if times.is_null(j) {
                        i64::MIN
                    } else {
                        times.value(j)
                    },
                    Some(j),
                );
                j += 1;
            }
            let mut t = self.first;
            while t <= self.last {
                if j < e && times.value(j) == t {
                    emit(t, Some(j));
                    j += 1;
                } else {
                    emit(t, None);
                }
                // rows between buckets (another origin) pass through in order
                while j < e && times.value(j) < t.saturating_add(self.stride) && times.value(j) > t
                {
                    emit(times.value(j), Some(j));
                    j += 1;
                }
                t = match t.checked_add(self.stride) {
                    Some(next) => next,
                    None => break,
                };
            }
            while j < e {
                emit(times.value(j), Some(j));
                j += 1;
            }
        }
        let group_idx = UInt32Array::from(group_row);
        let src_idx = UInt32Array::from(src.clone());
        let mut columns = Vec::with_capacity(input.num_columns());
        for (ci, col) in input.columns().iter().enumerate() {
            let out = if ci == self.time {
                let t = TimestampNanosecondArray::from(out_time.clone());
                cast(&t, &time_type)?
            } else if self.groups.contains(&ci) {
                take(col.as_ref(), &group_idx, None)?
            } else {
                match self.fills[ci] {
                    Fill::Null => take(col.as_ref(), &src_idx, None)?,
                    Fill::Locf => {
                        let mut last: Option<u32> = None;
                        let mut prev_group = usize::MAX;
                        let idx: UInt32Array = src
                            .iter()
                            .zip(&group_of)
                            .map(|(r, &g)| {
                                if g != prev_group {
                                    last = None;
                                    prev_group = g;
                                }
                                if let Some(r) = r
                                    && col.is_valid(*r as usize)
                                {
                                    last = Some(*r);
                                }
                                last
                            })
                            .collect();
                        take(col.as_ref(), &idx, None)?
                    }
                    Fill::Interpolate => interpolate(col, &src, &group_of, &out_time)?,
                }
            };
            columns.push(out);
        }
        Ok(RecordBatch::try_new(Arc::clone(out_schema), columns)?)
    }
}

/// Linear interpolation of a numeric column between the non-null values around each
/// gap, per group; NULL before the first and after the last value of a group.
fn interpolate(
    col: &ArrayRef,
    src: &[Option<u32>],
    group_of: &[usize],
    times: &[i64],
) -> Result<ArrayRef> {
    let ty = col.data_type().clone();
    if !ty.is_numeric() {
        return Err(DataFusionError::Plan(format!(
            "interpolate() needs a numeric aggregate, not {ty}"
        )));
    }
    let f = cast(col, &DataType::Float64)?;
    let f = f
        .as_any()
        .downcast_ref::<Float64Array>()
        .ok_or_else(|| DataFusionError::Internal("cast to Float64 failed".into()))?;
    let value = |i: usize| src[i].and_then(|r| f.is_valid(r as usize).then(|| f.value(r as usize)));
    let n = src.len();
    let mut out: Vec<Option<f64>> = vec![None; n];
    let mut i = 0;
    while i < n {
        let g = group_of[i];
        let mut e = i;
        while e < n && group_of[e] == g {
            e += 1;
        }
        let mut prev: Option<(i64, f64)> = None;
        let mut k = i;
        while k < e {
            if let Some(v) = value(k) {
                out[k] = Some(v);
                prev = Some((times[k], v));
                k += 1;
                continue;
            }
            // a gap: find the next value of the group
            let mut m = k;
            while m < e && value(m).is_none() {
                m += 1;
            }
            if let (Some((t0, v0)), true) = (prev, m < e) {
                let (t1, v1) = (times[m], value(m).unwrap_or(v0));
                for (q, slot) in out.iter_mut().enumerate().take(m).skip(k) {
                    let frac = (times[q] - t0) as f64 / (t1 - t0) as f64;
                    *slot = Some(v0 + (v1 - v0) * frac);
                }
            }
            k = m;
        }
        i = e;
    }
    let arr = Float64Array::from(out);
    let arr = if ty.is_integer() {
        // round, not truncate, on the way back to an integer column
        let rounded: Float64Array = arr.iter().map(|v| v.map(f64::round)).collect();
        cast(&rounded, &ty)?
    } else {
        cast(&arr, &ty)?
    };
    Ok(arr)
}
