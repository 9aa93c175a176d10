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
//! - the moment it was planned: plans whose expressions call anything but immutable
//!   functions (`now()`, `current_date`, `random()`) or hold placeholders are not cached,
//!   since the optimizer folds `now()` into a constant;
//! - the catalog itself: plans reading anything but [`LiveTable`]s (`information_schema`)
//!   and `EXPLAIN`/`DESCRIBE` are not cached.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::source_as_provider;
use datafusion::execution::cache::lru_queue::LruQueue;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use talo_engine::Snapshot;

use crate::auth::Principal;
use crate::catalog::LiveTable;

/// Longest SQL whose plan is kept: a bound on what one entry can hold.
const MAX_SQL_BYTES: usize = 16 << 10;

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
    pub(crate) plan: LogicalPlan,
    pub(crate) schema: SchemaRef,
    /// (database, table, schema) of every table the plan reads.
    tables: Vec<(String, String, SchemaRef)>,
}

impl CachedPlan {
    /// Whether every table the plan reads still has the schema it was planned with.
    fn holds_for(&self, snapshot: &Snapshot) -> bool {
        self.tables.iter().all(|(db, table, schema)| {
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
}

/// Least recently used plans, at most `capacity` of them.
pub(crate) struct PlanCache {
    capacity: usize,
    entries: Mutex<LruQueue<PlanKey, Arc<CachedPlan>>>,
    hits: AtomicU64,
    misses: AtomicU64,
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
        }
    }

    /// Whether a plan for this SQL would be kept at all.
    pub(crate) fn wants(&self, sql: &str) -> bool {
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

    /// Keep `plan` (already optimized) for `key`, if `unoptimized` — the same plan before
    /// the optimizer folded anything — may be reused.
    pub(crate) fn put(
        &self,
        key: PlanKey,
        unoptimized: &LogicalPlan,
        plan: LogicalPlan,
        schema: SchemaRef,
    ) {
        if !self.wants(&key.sql) {
            return;
        }
        let Some(tables) = reusable_tables(unoptimized) else {
            return;
        };
        let cached = Arc::new(CachedPlan {
            plan,
            schema,
            tables,
        });
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.put(key, cached);
        while entries.len() > self.capacity {
            entries.pop();
        }
    }

    pub(crate) fn stats(&self) -> PlanCacheStats {
        PlanCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.lock().unwrap_or_else(|e| e.into_inner()).len(),
        }
    }
}

/// The tables `plan` reads, if it can be reused by a later query: see the module docs.
fn reusable_tables(plan: &LogicalPlan) -> Option<Vec<(String, String, SchemaRef)>> {
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
    let mut tables = Vec::new();
    let mut reusable = true;
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let live = source_as_provider(&scan.source)
                .ok()
                .and_then(|p| p.downcast_ref::<LiveTable>().map(LiveTable::key));
            match live {
                Some(t) => tables.push(t),
                None => reusable = false,
            }
        }
        if reusable {
            node.apply_expressions(|e| {
                e.apply(|e| {
                    if !timeless(e) {
                        reusable = false;
                        return Ok(TreeNodeRecursion::Stop);
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
    (walked.is_ok() && reusable).then_some(tables)
}

/// Whether `e` (this node, not its children) evaluates the same whenever it is planned.
fn timeless(e: &Expr) -> bool {
    match e {
        Expr::ScalarFunction(f) => f.func.signature().volatility == Volatility::Immutable,
        Expr::ScalarVariable(..) | Expr::Placeholder(_) => false,
        _ => true,
    }
}
