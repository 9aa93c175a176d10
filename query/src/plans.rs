//! Optimized logical plans of repeated SQL.
//!
//! Dashboards send the same SQL again and again. Parsing it, planning it and running the
//! logical optimizer was about a third of a narrow query's planning CPU (`perf`,
//! benches/README.md), and gives the same plan every time as long as nothing the plan
//! depends on has changed. What it depends on:
//!
//! - the data: never captured. Tables are [`LiveTable`]s that find the query's own
//!   snapshot when they are *scanned* (a session extension), so a cached plan reads what
//!   every new query must read;
//! - the table schemas: a cached plan records the schema of each table it reads and is
//!   used only while the current snapshot has exactly those schemas;
//! - the principal and the default database: part of the key (a plan one token could
//!   build is never handed to another);
//! - the moment it was planned: the optimizer folds `now()`, `current_date` and
//!   `current_time` into literals. A plan calling them is kept as optimized *without* a
//!   start time (DataFusion then leaves them alone) and each reuse folds them with one
//!   `SimplifyExpressions` pass at the new query's start time (which also turns `time >=
//!   now() - INTERVAL '1 hour'` into the literal bound that prunes files). Plans calling
//!   any other non-immutable function (`random()`) or holding placeholders are not kept;
//! - the catalog itself: plans reading anything but [`LiveTable`]s (`information_schema`)
//!   and `EXPLAIN`/`DESCRIBE` are not cached.
//!
//! A kept plan that does not call `now()` also keeps the *physical* plan its last query
//! made (planning it physically — the table scans, then the physical optimizer — was
//! about 0.65 ms of a one-sensor query's 1.6: `benches/README.md`). That plan holds what
//! the scans read of that query's snapshot, so it is run again only for a query whose
//! snapshot gives every scan the same inputs ([`ScanInputs`](crate::catalog::ScanInputs):
//! the same segments in the bounds, no buffered rows there, no kept latest rows, the same
//! retention cutoff, the series runs as ready as they were), each time as a fresh copy
//! (`reset_plan_states`: new operator state and metrics). Not kept: plans with dynamic
//! filters (top-k, joins, `min`/`max` without groups: a copy would keep the bound the
//! last run tightened) or recursion. After [`MAX_PHYSICAL_RUNS`] runs it is planned
//! anew: the scan's metrics set, shared by its copies, grows a little with every run.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::execution::cache::lru_queue::LruQueue;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::optimizer::{Optimizer, OptimizerConfig};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use talo_engine::Snapshot;

use crate::auth::Principal;
use crate::catalog::{LiveTable, QuerySnapshot, ScanRecord};

/// Longest SQL whose plan is kept: a bound on what one entry can hold.
const MAX_SQL_BYTES: usize = 16 << 10;

/// Runs of one kept physical plan before it is planned anew (see the module docs).
pub(crate) const MAX_PHYSICAL_RUNS: usize = 32;

/// What a cached plan is found by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PlanKey {
    pub(crate) sql: String,
    db: String,
    who: Principal,
}

impl PlanKey {
    pub(crate) fn new(sql: &str, db: &str, who: &Principal) -> Self {
        PlanKey {
            sql: sql.to_string(),
            db: db.to_string(),
            who: who.clone(),
        }
    }
}

/// An optimized logical plan and what it was planned against.
#[derive(Debug)]
pub(crate) struct CachedPlan {
    /// Optimized; with `now()`-like calls left in place where `reuse.moment`.
    pub(crate) plan: LogicalPlan,
    pub(crate) schema: SchemaRef,
    pub(crate) reuse: Reuse,
    /// The physical plan of its last query, where it may be run again.
    physical: Mutex<Option<Physical>>,
    /// Its last physical plan read few rows and was planned in one partition: the next
    /// is planned that way first (`Session::plan_physical`), not twice.
    one_partition: AtomicBool,
}

/// A physical plan and the scans it was made from.
#[derive(Debug)]
struct Physical {
    plan: Arc<dyn ExecutionPlan>,
    scans: Vec<ScanRecord>,
    runs: usize,
    /// Its scans read few rows, counted ahead, and none of its operators gives more rows
    /// than it reads (`Session::plan_physical`): it may run where it is asked, without the
    /// hand-off to the query runtime.
    few: bool,
}

/// What a plan that may be kept depends on.
#[derive(Debug, Clone)]
pub(crate) struct Reuse {
    /// (database, table, schema) of every table the plan reads.
    tables: Vec<(String, String, SchemaRef)>,
    /// It calls `now()`, `current_date` or `current_time`: keep it optimized without a
    /// start time, fold them at each reuse ([`fold_moment`]).
    pub(crate) moment: bool,
}

impl CachedPlan {
    /// A fresh copy of the physical plan made for an earlier query, where `q`'s snapshot
    /// gives each of its scans the same inputs; `None` where it must be planned (and
    /// then [`CachedPlan::keep_physical`]).
    pub(crate) fn physical(&self, q: &QuerySnapshot) -> Option<Arc<dyn ExecutionPlan>> {
        if self.reuse.moment {
            return None;
        }
        let mut slot = self.physical.lock().unwrap_or_else(|p| p.into_inner());
        let kept = slot.as_mut()?;
        if !q.gives_same_inputs(&kept.scans) {
            *slot = None;
            return None;
        }
        kept.runs += 1;
        let plan = reset_plan_states(Arc::clone(&kept.plan)).ok();
        if kept.runs >= MAX_PHYSICAL_RUNS || plan.is_none() {
            *slot = None;
        }
        plan
    }

    /// Whether a physical plan of this one may be kept at all (it does not call `now()`).
    pub(crate) fn may_keep_physical(&self) -> bool {
        !self.reuse.moment
    }

    /// Keep `plan`, made by a query whose scans were `scans` (which read few rows where
    /// `few`), where it may run again.
    pub(crate) fn keep_physical(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        scans: Vec<ScanRecord>,
        few: bool,
    ) {
        if self.reuse.moment || !replayable(plan) {
            return;
        }
        *self.physical.lock().unwrap_or_else(|p| p.into_inner()) = Some(Physical {
            plan: Arc::clone(plan),
            scans,
            runs: 0,
            few,
        });
    }

    /// Whether its last physical plan was planned in one partition (read few rows).
    pub(crate) fn planned_in_one_partition(&self) -> bool {
        self.one_partition.load(Ordering::Relaxed)
    }

    /// Note whether its physical plan was (`one`) or was not planned in one partition.
    pub(crate) fn note_one_partition(&self, one: bool) {
        self.one_partition.store(one, Ordering::Relaxed);
    }

    /// Whether it holds a physical plan whose scans read few rows.
    fn reads_few(&self) -> bool {
        let kept = self.physical.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_ref().is_some_and(|k| k.few)
    }

    /// Whether every table the plan reads still has the schema it was planned with.
    fn holds_for(&self, snapshot: &Snapshot) -> bool {
        self.reuse.tables.iter().all(|(db, table, schema)| {
            snapshot
                .catalog
                .table(db, table)
                .is_some_and(|t| t.schema() == *schema)
        })
    }
}

/// Hits and misses of the plan cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PlanCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    /// Queries that ran a kept physical plan.
    pub physical_reuses: u64,
    /// Passes of the physical planner (a query planned physically takes one, two where
    /// it is planned again in one partition or out of it).
    pub physical_plannings: u64,
}

/// Least recently used plans, at most `capacity` of them.
pub(crate) struct PlanCache {
    capacity: usize,
    entries: Mutex<LruQueue<PlanKey, Arc<CachedPlan>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    physical_reuses: AtomicU64,
    physical_plannings: AtomicU64,
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanCache")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl PlanCache {
    pub(crate) fn new(capacity: usize) -> Self {
        PlanCache {
            capacity,
            entries: Mutex::new(LruQueue::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            physical_reuses: AtomicU64::new(0),
            physical_plannings: AtomicU64::new(0),
        }
    }

    /// Whether a plan for this SQL would be kept at all.
    fn wants(&self, sql: &str) -> bool {
        self.capacity > 0 && sql.len() <= MAX_SQL_BYTES
    }

    /// The cached plan for `key` if it still holds for `snapshot`. A plan that no longer
    /// holds is dropped (it will be replaced by the caller's new one).
    pub(crate) fn get(&self, key: &PlanKey, snapshot: &Snapshot) -> Option<Arc<CachedPlan>> {
        if !self.wants(&key.sql) {
            return None;
        }
        let found = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(key).cloned() {
                Some(p) if p.holds_for(snapshot) => Some(p),
                Some(_) => {
                    entries.remove(key);
                    None
                }
                None => None,
            }
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether a plan for `key` planned as `unoptimized` may be kept, and what it
    /// depends on (see the module docs).
    pub(crate) fn reuse(&self, key: &PlanKey, unoptimized: &LogicalPlan) -> Option<Reuse> {
        if !self.wants(&key.sql) {
            return None;
        }
        reuse_of(unoptimized)
    }

    /// Keep `plan`, optimized as `reuse` says, for `key`.
    pub(crate) fn put(
        &self,
        key: PlanKey,
        reuse: Reuse,
        plan: LogicalPlan,
        schema: SchemaRef,
    ) -> Arc<CachedPlan> {
        let cached = Arc::new(CachedPlan {
            plan,
            schema,
            reuse,
            physical: Mutex::new(None),
            one_partition: AtomicBool::new(false),
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(key, Arc::clone(&cached));
        while entries.len() > self.capacity {
            entries.pop();
        }
        cached
    }

    /// The physical plan kept for `key` (tests).
    #[cfg(test)]
    pub(crate) fn kept_physical(&self, key: &PlanKey) -> Option<Arc<dyn ExecutionPlan>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let cached = entries.peek(key)?;
        let kept = cached.physical.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_ref().map(|k| Arc::clone(&k.plan))
    }

    /// Whether the plan kept for `key` holds a physical plan whose scans read few rows
    /// (not counted as a use: the query then asks [`PlanCache::get`]).
    pub(crate) fn reads_few(&self, key: &PlanKey) -> bool {
        if !self.wants(&key.sql) {
            return false;
        }
        let cached = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.peek(key).cloned()
        };
        cached.is_some_and(|c| c.reads_few())
    }

    /// Count one pass of the physical planner.
    pub(crate) fn count_physical_planning(&self) {
        self.physical_plannings.fetch_add(1, Ordering::Relaxed);
    }

    /// [`CachedPlan::physical`], counted.
    pub(crate) fn physical(
        &self,
        cached: &CachedPlan,
        q: &QuerySnapshot,
    ) -> Option<Arc<dyn ExecutionPlan>> {
        let plan = cached.physical(q);
        if plan.is_some() {
            self.physical_reuses.fetch_add(1, Ordering::Relaxed);
        }
        plan
    }

    pub(crate) fn stats(&self) -> PlanCacheStats {
        PlanCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.lock().unwrap_or_else(|e| e.into_inner()).len(),
            physical_reuses: self.physical_reuses.load(Ordering::Relaxed),
            physical_plannings: self.physical_plannings.load(Ordering::Relaxed),
        }
    }
}

/// Whether a copy of `plan` (`reset_plan_states`) runs as the plan itself would: no
/// dynamic filter (its bound, tightened by the last run, is shared by the copies) and no
/// recursion.
fn replayable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let dynamic = |e: &Arc<dyn PhysicalExpr>| {
        let mut found = false;
        let _ = e.apply(|x| {
            found = x.is::<DynamicFilterPhysicalExpr>();
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        });
        found
    };
    let mut ok = true;
    let _ = plan.apply(|node| {
        let refused = matches!(node.name(), "RecursiveQueryExec" | "WorkTableExec")
            || !node.dynamic_expressions_produced().is_empty();
        let mut in_exprs = false;
        let _ = node.apply_expressions(&mut |e| {
            in_exprs = dynamic(e);
            Ok(if in_exprs {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        });
        ok = !refused && !in_exprs;
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    ok
}

/// Functions whose value is the query's start time (or derived from it): folded into
/// literals by the optimizer when it knows the start time, left alone when it does not.
const MOMENT: &[&str] = &["now", "current_date", "current_time"];

/// What `plan` depends on, if it can be reused by a later query: see the module docs.
fn reuse_of(plan: &LogicalPlan) -> Option<Reuse> {
    if matches!(
        plan,
        LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::DescribeTable(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Copy(_)
    ) {
        return None;
    }
    let mut reuse = Reuse {
        tables: Vec::new(),
        moment: false,
    };
    let mut reusable = true;
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let live = source_as_provider(&scan.source)
                .ok()
                .and_then(|p| p.downcast_ref::<LiveTable>().map(LiveTable::key));
            match live {
                Some(t) => reuse.tables.push(t),
                None => reusable = false,
            }
        }
        if reusable {
            node.apply_expressions(|e| {
                e.apply(|e| {
                    match kind(e) {
                        Kind::Fixed => {}
                        Kind::Moment => reuse.moment = true,
                        Kind::Never => {
                            reusable = false;
                            return Ok(TreeNodeRecursion::Stop);
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })?;
        }
        Ok(if reusable {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    (walked.is_ok() && reusable).then_some(reuse)
}

enum Kind {
    /// Evaluates the same whenever it is planned.
    Fixed,
    /// The query's start time: folded at each reuse.
    Moment,
    /// Anything else that may change between plannings.
    Never,
}

/// How `e` (this node, not its children) depends on when it is planned.
fn kind(e: &Expr) -> Kind {
    match e {
        Expr::ScalarFunction(f) => match f.func.signature().volatility {
            Volatility::Immutable => Kind::Fixed,
            Volatility::Stable if MOMENT.contains(&f.func.name()) => Kind::Moment,
            _ => Kind::Never,
        },
        Expr::ScalarVariable(..) | Expr::Placeholder(_) => Kind::Never,
        _ => Kind::Fixed,
    }
}

/// `plan` with `now()`, `current_date` and `current_time` folded at `config`'s query
/// start time: the one optimizer rule that folds them, over every node and subquery.
pub(crate) fn fold_moment(
    plan: LogicalPlan,
    config: &dyn OptimizerConfig,
) -> datafusion::common::Result<LogicalPlan> {
    Optimizer::with_rules(vec![Arc::new(SimplifyExpressions::new())]).optimize(
        plan,
        config,
        |_, _| {},
    )
}
