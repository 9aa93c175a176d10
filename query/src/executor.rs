//! Running SQL: read-only, on its own runtime, under a memory pool, a timeout and a
//! concurrency limit, over one engine snapshot taken when the query starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::{
    CacheManagerConfig, CachedFileMetadataEntry, FileMetadataCache,
};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::object_store::path::Path;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use talo_engine::Engine;
use tokio::sync::Semaphore;

use crate::auth::Principal;
use crate::catalog::{QuerySnapshot, TaloCatalog};
pub use crate::plans::PlanCacheStats;
use crate::plans::{CachedPlan, PlanCache, PlanKey, fold_moment};
use crate::scan::OpenSegments;
use crate::series::SeriesIndex;

/// Name of the DataFusion catalog holding the databases.
pub const CATALOG: &str = "talo";

/// Query limits.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory one query may use for sorts, joins and aggregations. Default 512 MiB.
    pub memory_limit_bytes: usize,
    /// Longest a query may run. Default 30 s.
    pub timeout: Duration,
    /// Queries running at once; more are refused with 429. Default 8.
    pub max_concurrent: usize,
    /// Threads of the query runtime (separate from ingestion). Default: the CPU count.
    pub threads: usize,
    /// Parquet footers and page indexes kept in memory across queries, in bytes
    /// (least recently used out first). Segments are immutable, so a cached footer never
    /// goes stale. Default 64 MiB; 0 turns the cache off.
    pub metadata_cache_bytes: usize,
    /// Optimized plans of repeated SQL kept for reuse (least recently used out first;
    /// `plans.rs` says which plans qualify). Default 256; 0 turns the cache off.
    pub plan_cache_entries: usize,
    /// Where each series' rows lie in each segment file (`series.rs`), kept in memory
    /// across queries, in bytes. Default 32 MiB; 0 turns the index off.
    pub series_index_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory_limit_bytes: 512 << 20,
            timeout: Duration::from_secs(30),
            max_concurrent: 8,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            metadata_cache_bytes: 64 << 20,
            plan_cache_entries: 256,
            series_index_bytes: 32 << 20,
        }
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error("only read-only queries are allowed: {0}")]
    NotAllowed(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("query exceeded its memory limit of {0} bytes")]
    TooMuchMemory(usize),
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
    #[error("too many concurrent queries (limit {0}); retry later")]
    Busy(usize),
    #[error("query failed: {0}")]
    Execution(String),
}

/// A query result.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// A query result delivered batch by batch (see [`QueryExecutor::run_stream`]).
#[derive(Debug)]
pub struct QueryStream {
    pub schema: SchemaRef,
    /// The first batch (`None`: the result is empty).
    pub first: Option<RecordBatch>,
    /// The rest of a result run in place (`QueryExecutor::run_here`), in order.
    held: std::collections::VecDeque<RecordBatch>,
    /// The rest of a result run on the query runtime.
    rx: Option<tokio::sync::mpsc::Receiver<Result<Streamed, QueryError>>>,
}

impl QueryStream {
    /// The next batch after `first`; an `Err` ends the stream (the query failed or
    /// timed out), `None` is the end of the result.
    pub async fn next(&mut self) -> Option<Result<RecordBatch, QueryError>> {
        if let Some(b) = self.held.pop_front() {
            return Some(Ok(b));
        }
        match self.rx.as_mut()?.recv().await? {
            Ok(Streamed::Batch(b)) => Some(Ok(b)),
            Ok(Streamed::Schema(_)) => Some(Err(QueryError::Execution("schema sent twice".into()))),
            Err(e) => Some(Err(e)),
        }
    }
}

#[derive(Debug)]
enum Streamed {
    Schema(SchemaRef),
    Batch(RecordBatch),
}

/// Runs queries on a dedicated runtime.
pub struct QueryExecutor {
    config: QueryConfig,
    runtime: Option<tokio::runtime::Runtime>,
    permits: Arc<Semaphore>,
    /// Shared by every query's runtime environment (see `query_runtime`).
    metadata_cache: Arc<FileMetadataCache>,
    /// What every query's session starts from: functions, optimizer rules, planners,
    /// configuration. Built once; building it per query (registering some 300
    /// functions) was ~4 % of a narrow query's CPU (`perf`).
    template: Arc<SessionState>,
    plans: Arc<PlanCache>,
    /// Settled segments' latest rows per series (`lastpoint.rs`).
    latest: Arc<crate::lastpoint::LatestRows>,
    /// Segments' series runs (`series.rs`).
    series: Arc<SeriesIndex>,
    /// Segment files kept open across queries (`scan.rs`).
    open: Arc<OpenSegments>,
    /// Queries run on the caller's runtime (`QueryExecutor::run_here`).
    inline_runs: AtomicU64,
    /// Full session states made (`Session::state`).
    session_states: Arc<AtomicU64>,
}

impl std::fmt::Debug for QueryExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryExecutor")
            .field("config", &self.config)
            .field("running", &self.running())
            .field("metadata_cache_entries", &self.metadata_cache.len())
            .field("plan_cache", &self.plans.stats())
            .finish()
    }
}

impl Drop for QueryExecutor {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl QueryExecutor {
    /// Start the query runtime.
    ///
    /// Returns once the runtime's workers run and each has a malloc arena (glibc's) of
    /// its own where arenas are to be had: built before the server's other threads, as
    /// `talo serve` does, each worker takes a new one. glibc binds a thread to an arena
    /// at its first allocation, for good: new ones while fewer than the cap exist (two
    /// per core, `src/main.rs`), then the existing ones in turn. Two query workers that
    /// came to share one contend for its lock on every large allocation of a
    /// two-partition query: the day-long aggregates took 2.4x as long (65 vs 27 ms)
    /// after 2 server starts of 34, where other threads had allocated first
    /// (`benches/README.md`).
    pub fn new(config: QueryConfig) -> std::io::Result<Self> {
        let workers = config.threads.max(1);
        let started = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
        let on_start = Arc::clone(&started);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("talo-query")
            .on_thread_start(move || {
                // an allocation binds this thread to its arena now
                drop(std::hint::black_box(Box::new(0u64)));
                let (count, ready) = &*on_start;
                *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                ready.notify_all();
            })
            .enable_all()
            .build()?;
        {
            // (bounded: the server does not hang on a thread that does not start)
            let (count, ready) = &*started;
            let count = count.lock().unwrap_or_else(|p| p.into_inner());
            let _ = ready.wait_timeout_while(count, Duration::from_secs(5), |n| *n < workers);
        }
        let metadata_cache: Arc<FileMetadataCache> = Arc::new(
            DefaultCache::<Path, CachedFileMetadataEntry>::new(config.metadata_cache_bytes)
                .with_name("talo segment metadata"),
        );
        let template = template(&config, Arc::clone(&metadata_cache))
            .map(Arc::new)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(QueryExecutor {
            plans: Arc::new(PlanCache::new(config.plan_cache_entries)),
            latest: Arc::default(),
            series: Arc::new(SeriesIndex::new(config.series_index_bytes)),
            open: Arc::new(OpenSegments::new(OPEN_SEGMENT_FILES)),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            metadata_cache,
            config,
            runtime: Some(runtime),
            template,
            inline_runs: AtomicU64::new(0),
            session_states: Arc::default(),
        })
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.config.max_concurrent.max(1) - self.permits.available_permits()
    }

    /// The physical plan kept for `sql` run by anyone in `db` (tests).
    #[cfg(test)]
    pub(crate) fn kept_physical(&self, db: &str, sql: &str) -> Option<Arc<dyn ExecutionPlan>> {
        let key = PlanKey::new(sql, db, &Principal::everyone());
        self.plans.kept_physical(&key)
    }

    /// Hits, misses and entries of the plan cache.
    pub fn plan_cache_stats(&self) -> PlanCacheStats {
        self.plans.stats()
    }

    /// Settled segments whose latest rows per series are kept (for "last value" queries,
    /// `lastpoint.rs`), and the bytes they hold.
    pub fn latest_rows_kept(&self) -> (usize, usize) {
        self.latest.kept()
    }

    /// Segment files whose series runs are kept (`series.rs`), and the bytes they hold.
    pub fn series_runs_kept(&self) -> (usize, usize) {
        self.series.kept()
    }

    /// Keeps the latest rows of settled segments computed ahead of "last value" queries
    /// (`LatestRows::warm`), every `tick`, on the query runtime, until the executor stops;
    /// indexes the series runs of new segments (all at the first tick, after that those
    /// flushed or merged since) and forgets those of segments gone
    /// (`SeriesIndex::warm_all`, `retain_live`).
    pub fn keep_latest_rows_warm(&self, engine: Arc<Engine>, tick: Duration) {
        let Some(rt) = &self.runtime else { return };
        let latest = Arc::clone(&self.latest);
        let series = Arc::clone(&self.series);
        let open = Arc::clone(&self.open);
        // not an owner: the engine closes (and unlocks its directory) when its users drop it
        let engine = Arc::downgrade(&engine);
        rt.spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut indexed = std::sync::Weak::new();
            loop {
                every.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                let (snapshot, dir) = (engine.snapshot(), engine.config().data_dir.clone());
                drop(engine);
                series.retain_live(&snapshot);
                open.retain_live(&snapshot, &dir);
                if !std::ptr::eq(indexed.as_ptr(), Arc::as_ptr(&snapshot.segments)) {
                    // new segments (those there at startup, flushed, merged) are indexed
                    // ahead of any query: a query that finds a segment's runs not at
                    // hand scans it the slow way, and its plan is kept and run again
                    // that way (after a compaction, the first 16 one-sensor queries
                    // took 1.5-2.3 ms instead of 0.6)
                    series.warm_all(&snapshot, &dir);
                    indexed = Arc::downgrade(&snapshot.segments);
                }
                latest.warm(&snapshot, &dir).await;
            }
        });
    }

    /// Segment files kept open across queries now (`scan.rs`, `OpenSegments`).
    pub fn open_segment_files(&self) -> usize {
        self.open.len()
    }

    /// Segment footers held by the metadata cache now.
    pub fn cached_segment_footers(&self) -> usize {
        self.metadata_cache.len()
    }

    /// Cached segment footers that include the page index (so that no query has to
    /// read and decode it again).
    pub fn cached_page_indexes(&self) -> usize {
        self.metadata_cache
            .list_entries()
            .values()
            .filter(|e| {
                e.value
                    .file_metadata
                    .extra_info()
                    .get("page_index")
                    .map(String::as_str)
                    == Some("true")
            })
            .count()
    }

    /// A concurrency slot (429 when none is free) and the runtime to run on.
    fn admit(
        &self,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, &tokio::runtime::Runtime), QueryError> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| QueryError::Busy(self.config.max_concurrent))?;
        let Some(rt) = &self.runtime else {
            return Err(QueryError::Execution("query runtime stopped".into()));
        };
        Ok((permit, rt))
    }

    /// Run `sql` and hand its result over batch by batch, without holding it: the
    /// permit and the timeout cover the whole stream; the query stops when the receiver
    /// is dropped (client gone). Errors before the first batch are returned here, so
    /// callers can still answer with the right status.
    pub async fn run_stream(
        &self,
        engine: &Arc<Engine>,
        who: &Principal,
        db: &str,
        sql: &str,
    ) -> Result<QueryStream, QueryError> {
        let (permit, rt) = self.admit()?;
        let mut session = self.session(engine, who, db)?;
        let cfg = self.config.clone();
        let key = PlanKey::new(sql, db, who);
        let plans = Arc::clone(&self.plans);
        let deadline = tokio::time::Instant::now() + cfg.timeout;
        let planned = match self.run_here(&mut session, &key, deadline).await? {
            Here::Ran(out) => {
                let mut held = std::collections::VecDeque::from(out.batches);
                return Ok(QueryStream {
                    schema: out.schema,
                    first: held.pop_front(),
                    held,
                    rx: None,
                });
            }
            Here::Planned(p) => p,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Streamed, QueryError>>(2);
        rt.spawn(async move {
            let timeout = cfg.timeout;
            let produce = async {
                let planned = match planned {
                    Some(p) => p,
                    None => session.plan(&plans, key, &cfg).await?,
                };
                if tx
                    .send(Ok(Streamed::Schema(Arc::clone(&planned.schema))))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                let mut stream = session
                    .execute(&plans, &planned)
                    .await
                    .map_err(|e| classify(e, &cfg))?;
                while let Some(b) = stream.next().await {
                    let b = b.map_err(|e| classify(e, &cfg))?;
                    if tx.send(Ok(Streamed::Batch(b))).await.is_err() {
                        return Ok(()); // the reader went away: stop the query
                    }
                }
                Ok::<(), QueryError>(())
            };
            let end = match tokio::time::timeout_at(deadline, produce).await {
                Ok(r) => r,
                Err(_) => Err(QueryError::Timeout(timeout)),
            };
            // free the slot before the reader can see the end
            drop(permit);
            if let Err(e) = end {
                let _ = tx.send(Err(e)).await;
            }
            drop(tx);
        });
        let gone = || QueryError::Execution("query task ended early".into());
        let schema = match rx.recv().await {
            Some(Ok(Streamed::Schema(s))) => s,
            Some(Err(e)) => return Err(e),
            _ => return Err(gone()),
        };
        let first = match rx.recv().await {
            Some(Ok(Streamed::Batch(b))) => Some(b),
            Some(Err(e)) => return Err(e),
            None => None,
            Some(Ok(Streamed::Schema(_))) => return Err(gone()),
        };
        Ok(QueryStream {
            schema,
            first,
            held: Default::default(),
            rx: Some(rx),
        })
    }

    /// Run `sql` with `db` as the default database (in place where
    /// [`QueryExecutor::run_here`] may).
    pub async fn run(
        &self,
        engine: &Arc<Engine>,
        who: &Principal,
        db: &str,
        sql: &str,
    ) -> Result<QueryOutput, QueryError> {
        let (permit, rt) = self.admit()?;
        let mut session = self.session(engine, who, db)?;
        let cfg = self.config.clone();
        let key = PlanKey::new(sql, db, who);
        let plans = Arc::clone(&self.plans);
        let deadline = tokio::time::Instant::now() + cfg.timeout;
        let planned = match self.run_here(&mut session, &key, deadline).await? {
            Here::Ran(out) => return Ok(out),
            Here::Planned(p) => p,
        };
        let task = rt.spawn(async move {
            let _permit = permit;
            let timeout = cfg.timeout;
            let run = execute(session, plans, key, planned, cfg);
            match tokio::time::timeout_at(deadline, run).await {
                Ok(r) => r,
                Err(_) => Err(QueryError::Timeout(timeout)),
            }
        });
        task.await
            .map_err(|e| QueryError::Execution(format!("query task failed: {e}")))?
    }

    /// Run the query of `session` in place, on the caller's runtime, where its kept
    /// physical plan reads few rows (counted ahead, at most `ONE_PARTITION_ROWS`) and
    /// runs again over the same segments: handing such a query to the query runtime and
    /// back (waking a thread on each side) cost more than running it
    /// (`benches/README.md`). Otherwise nothing runs here: the query goes to the query
    /// runtime, with its logical plan where that was looked up here.
    async fn run_here(
        &self,
        session: &mut Session,
        key: &PlanKey,
        deadline: tokio::time::Instant,
    ) -> Result<Here, QueryError> {
        if !self.plans.reads_few(key) {
            return Ok(Here::Planned(None));
        }
        let cfg = &self.config;
        let here = async {
            let p = session.plan(&self.plans, key.clone(), cfg).await?;
            Ok(match session.reused(&self.plans, &p) {
                Some(physical) => Here::Ran(session.collect(p.schema, physical, cfg).await?),
                None => Here::Planned(Some(p)),
            })
        };
        let here = tokio::time::timeout_at(deadline, here)
            .await
            .map_err(|_| QueryError::Timeout(cfg.timeout))??;
        if matches!(here, Here::Ran(_)) {
            self.inline_runs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(here)
    }

    /// Queries that ran on the caller's runtime (see [`QueryExecutor::run_here`]).
    pub fn inline_runs(&self) -> u64 {
        self.inline_runs.load(Ordering::Relaxed)
    }

    /// Queries that made a full session state: those planned (see `Session`).
    pub fn session_states(&self) -> u64 {
        self.session_states.load(Ordering::Relaxed)
    }
}

/// The session every query starts from as a clone (see `QueryExecutor::template`). Its own
/// runtime environment serves planning only (object store, the shared footer cache);
/// each query executes under its own (`QueryExecutor::session`), which carries its memory limit.
fn template(
    cfg: &QueryConfig,
    metadata_cache: Arc<FileMetadataCache>,
) -> Result<SessionState, DataFusionError> {
    let mut config = SessionConfig::new()
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(CATALOG, "")
        .with_information_schema(true)
        .with_target_partitions(cfg.threads.max(1));
    // One pass of the logical optimizer. DataFusion's rules reach their fixed point in
    // one pass on dashboard queries; the default (3) ran a second pass that changed
    // nothing and hashed the whole plan after each to find that out (a quarter of the
    // optimizer's time, ~10 % of planning a small query: `perf`, benches/README.md).
    config.options_mut().optimizer.max_passes = 1;
    // Segment scans group their files themselves (`scan.rs::file_groups`): DataFusion's
    // regrouping ignores the given groups and cut one of two equal files in two, so a
    // query over two files opened three (each open builds and evaluates the pruning
    // predicate over every row group of the file).
    config.options_mut().optimizer.repartition_file_scans = false;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(query_runtime(cfg, metadata_cache)?)
        .with_default_features()
        // gap filling first: it reads the WHERE bounds before they are pushed down
        .with_optimizer_rules(
            std::iter::once(Arc::new(crate::gapfill::GapFillRule) as _)
                .chain(datafusion::optimizer::Optimizer::new().rules)
                // last: they see the aggregates and scans as the other rules leave them
                .chain(std::iter::once(
                    Arc::new(crate::lastpoint::LastPointRule) as _
                ))
                .chain(std::iter::once(Arc::new(crate::runs::RunsRule) as _))
                .collect(),
        )
        .with_query_planner(Arc::new(crate::gapfill::TaloQueryPlanner))
        .with_physical_optimizer_rule(Arc::new(crate::scan::DistinctScanPredicates))
        .build();
    let ctx = SessionContext::new_with_state(state);
    // date_bin with a fast path, aliased time_bucket (replaces DataFusion's)
    ctx.register_udf(ScalarUDF::clone(&crate::datebin::date_bin()));
    for f in crate::gapfill::functions() {
        ctx.register_udf(f);
    }
    Ok(ctx.state())
}

/// The template's runtime environment: the shared footer cache, no spilling. Each query
/// runs under a copy with a memory pool of its own (`QueryExecutor::session`); building
/// the disk manager, caches and object store registry anew per query was ~1 % of a
/// few-row query's CPU (`perf`, `benches/README.md`).
fn query_runtime(
    cfg: &QueryConfig,
    metadata_cache: Arc<FileMetadataCache>,
) -> Result<Arc<RuntimeEnv>, DataFusionError> {
    RuntimeEnvBuilder::new()
        .with_memory_limit(cfg.memory_limit_bytes, 1.0)
        // segment footers outlive the query: SegmentTable reads them through this cache
        .with_cache_manager(
            CacheManagerConfig::default()
                .with_file_metadata_cache(Some(metadata_cache))
                .with_metadata_cache_limit(cfg.metadata_cache_bytes),
        )
        // no spilling: the memory limit is a hard limit and no query writes files
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
}

/// One query's session: the template's configuration with this query's default database
/// and snapshot extension, and the runtime it executes under (its own memory pool: the
/// limit is per query). The full session state (the template with this query's catalog:
/// the engine snapshot as the principal may see it) is made only where the query is
/// planned ([`Session::state`]): a query whose kept physical plan runs again needs none,
/// and cloning the template (its maps of some 400 functions, names and all) and dropping
/// it again was ~5 % of such a query's CPU (`perf`, `benches/README.md`).
struct Session {
    template: Arc<SessionState>,
    config: SessionConfig,
    snapshot: Arc<talo_engine::Snapshot>,
    who: Principal,
    /// When the query started (what `now()` stands for), set by [`Session::plan`].
    started: Option<chrono::DateTime<chrono::Utc>>,
    state: std::sync::OnceLock<SessionState>,
    /// Counts the states made (`QueryExecutor::session_states`).
    states_made: Arc<AtomicU64>,
    runtime: Arc<RuntimeEnv>,
}

impl QueryExecutor {
    /// The session of one query over `engine`'s current snapshot.
    fn session(
        &self,
        engine: &Arc<Engine>,
        who: &Principal,
        db: &str,
    ) -> Result<Session, QueryError> {
        let snapshot = engine.snapshot();
        let data_dir = &engine.config().data_dir;
        self.open.retain_live(&snapshot, data_dir);
        let mut config = self.template.config().clone();
        config.options_mut().catalog.default_schema = db.to_string();
        config.set_extension(Arc::new(QuerySnapshot::new(
            Arc::clone(&snapshot),
            data_dir.clone(),
            talo_engine::retention::now_ns(),
            Arc::clone(&self.latest),
            Arc::clone(&self.series),
            Arc::clone(&self.open),
        )));
        // the template's disk manager, caches and object stores; a memory pool of its own
        let runtime = RuntimeEnvBuilder::from_runtime_env(self.template.runtime_env())
            .with_memory_limit(self.config.memory_limit_bytes, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        Ok(Session {
            template: Arc::clone(&self.template),
            config,
            snapshot,
            who: who.clone(),
            started: None,
            state: std::sync::OnceLock::new(),
            states_made: Arc::clone(&self.session_states),
            runtime,
        })
    }
}

impl Session {
    /// The full session state, made on first use: the template with this query's
    /// configuration, catalog and start time.
    fn state(&self) -> &SessionState {
        self.state.get_or_init(|| {
            self.states_made.fetch_add(1, Ordering::Relaxed);
            let mut state = SessionState::clone(&self.template);
            *state.config_mut() = self.config.clone();
            let catalogs = MemoryCatalogProviderList::new();
            catalogs.register_catalog(
                CATALOG.to_string(),
                Arc::new(TaloCatalog::new(
                    Arc::clone(&self.snapshot),
                    self.who.clone(),
                )),
            );
            state.register_catalog_list(Arc::new(catalogs));
            state.mark_start_execution();
            if self.started.is_some() {
                state.execution_props_mut().query_execution_start_time = self.started;
            }
            state
        })
    }

    /// This query's snapshot extension.
    fn query(&self) -> Option<Arc<QuerySnapshot>> {
        self.config.get_extension::<QuerySnapshot>()
    }

    /// The optimized logical plan of `key.sql` (read-only) and its result schema: reused
    /// from `plans` where it holds, else planned here (and kept where it may be reused).
    async fn plan(
        &mut self,
        plans: &PlanCache,
        key: PlanKey,
        cfg: &QueryConfig,
    ) -> Result<Planned, QueryError> {
        // the moment `now()` stands for, as `SessionContext::sql` would set it
        self.started = Some(chrono::Utc::now());
        if let Some(state) = self.state.get_mut() {
            state.execution_props_mut().query_execution_start_time = self.started;
        }
        let query = self.query();
        if let Some(p) = query.and_then(|q| plans.get(&key, &q.snapshot)) {
            let plan = if p.reuse.moment {
                fold_moment(p.plan.clone(), self.state()).map_err(|e| classify(e, cfg))?
            } else {
                p.plan.clone()
            };
            return Ok(Planned {
                plan,
                schema: Arc::clone(&p.schema),
                kept: Some(p),
            });
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let plan = async {
            let plan = self.state().create_logical_plan(&key.sql).await?;
            options.verify_plan(&plan)?;
            Ok::<_, DataFusionError>(plan)
        };
        let plan = plan.await.map_err(|e| classify(e, cfg))?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let reuse = plans.reuse(&key, &plan);
        if let Some(reuse) = reuse.clone().filter(|r| r.moment) {
            // optimized once with no start time, `now()` left in place: kept like that,
            // and folded for this query exactly as for every reuse. Where that cannot
            // be optimized (gap filling needs literal bounds) the plan is not kept.
            let mut timeless = self.state().clone();
            timeless.execution_props_mut().query_execution_start_time = None;
            if let Ok(kept) = timeless.optimize(&plan) {
                let p = plans.put(key, reuse, kept.clone(), Arc::clone(&schema));
                let folded = fold_moment(kept, self.state()).map_err(|e| classify(e, cfg))?;
                return Ok(Planned {
                    plan: folded,
                    schema,
                    kept: Some(p),
                });
            }
        }
        let optimized = self.state().optimize(&plan).map_err(|e| classify(e, cfg))?;
        let kept = reuse
            .filter(|r| !r.moment)
            .map(|reuse| plans.put(key, reuse, optimized.clone(), Arc::clone(&schema)));
        Ok(Planned {
            plan: optimized,
            schema,
            kept,
        })
    }

    /// The physical plan `planned`'s kept plan holds, where this query's snapshot gives
    /// it the same scans (`plans.rs`).
    fn reused(&self, plans: &PlanCache, planned: &Planned) -> Option<Arc<dyn ExecutionPlan>> {
        let query = self.query()?;
        plans.physical(planned.kept.as_ref()?, &query)
    }

    /// The physical plan `planned`'s kept plan holds ([`Session::reused`]), else
    /// `planned` planned physically ([`Session::plan_physical`]).
    async fn physical(
        &self,
        plans: &PlanCache,
        planned: &Planned,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        match self.reused(plans, planned) {
            Some(p) => Ok(p),
            None => self.plan_physical(plans, planned).await,
        }
    }

    /// [`Session::physical`], started under this query's runtime.
    async fn execute(
        &self,
        plans: &PlanCache,
        planned: &Planned,
    ) -> Result<SendableRecordBatchStream, DataFusionError> {
        self.start(self.physical(plans, planned).await?)
    }

    /// Plan `planned` physically, and keep that plan with its kept plan where it may run
    /// again.
    async fn plan_physical(
        &self,
        plans: &PlanCache,
        planned: &Planned,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let query = self.query();
        // A plan that will be kept and reads few rows (tag filters answered by the
        // series runs: one sensor over a day is 8,640 rows) is planned in one
        // partition: starting and joining two partitions (repartition, merge, their
        // tasks' hand-offs) cost more than reading that much twice as fast
        // (`benches/README.md`). Whether it reads few rows is known once it is planned,
        // so the first time it is planned twice; a kept plan is planned anew every
        // `MAX_PHYSICAL_RUNS` runs, and then in one partition at once where its last
        // plan was (and again in all only where it no longer reads few rows).
        let partitions = self.config.target_partitions();
        let keeps = planned.kept.as_ref().is_some_and(|k| k.may_keep_physical())
            && query.is_some()
            && partitions > 1;
        let mut in_one = keeps
            && planned
                .kept
                .as_ref()
                .is_some_and(|k| k.planned_in_one_partition());
        let mut physical = self.create_physical(plans, planned, in_one).await?;
        let mut scans = query.as_ref().and_then(|q| q.take_scans());
        let few = crate::scan::rows_selected(&physical).is_some_and(|n| n <= ONE_PARTITION_ROWS);
        let again = match (in_one, few) {
            (true, false) => true,
            (false, true) => keeps && scans.is_some(),
            _ => false,
        };
        if let (true, Some(q)) = (again, &query) {
            q.restart_scans();
            in_one = few;
            physical = self.create_physical(plans, planned, in_one).await?;
            scans = q.take_scans();
        }
        if let Some(kept) = &planned.kept {
            kept.note_one_partition(in_one);
        }
        if let (Some(kept), Some(scans)) = (&planned.kept, scans) {
            // run in place (`QueryExecutor::run_here`) only where few rows read means
            // little work: no operator gives more rows than it reads
            let here = few && crate::scan::rows_bounded_by_leaves(&physical);
            kept.keep_physical(&physical, scans, here);
        }
        Ok(physical)
    }

    /// `planned` planned physically, in one partition where `one`; counted in `plans`.
    async fn create_physical(
        &self,
        plans: &PlanCache,
        planned: &Planned,
        one: bool,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let single = one.then(|| {
            let mut single = self.state().clone();
            single
                .config_mut()
                .options_mut()
                .execution
                .target_partitions = 1;
            single
        });
        let state = single.as_ref().unwrap_or_else(|| self.state());
        plans.count_physical_planning();
        state
            .query_planner()
            .create_physical_plan(&planned.plan, state)
            .await
    }

    /// Start `physical` under this query's runtime.
    fn start(
        &self,
        physical: Arc<dyn ExecutionPlan>,
    ) -> Result<SendableRecordBatchStream, DataFusionError> {
        // Without the session's function registries: a physical plan holds the functions
        // it calls, and `TaskContext::from(&SessionState)` cloned four maps of every
        // registered function (and dropped them after) per query, ~4 % of a few-row
        // query's CPU (`benches/README.md`). Nothing executing looks functions up by name.
        let task = TaskContext::new(
            None,
            self.template.session_id().to_string(),
            self.config.clone(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            Arc::clone(&self.runtime),
        );
        execute_stream(physical, Arc::new(task))
    }

    /// Run `physical` (of a query whose result has `schema`) and hold its whole result.
    async fn collect(
        &self,
        schema: SchemaRef,
        physical: Arc<dyn ExecutionPlan>,
        cfg: &QueryConfig,
    ) -> Result<QueryOutput, QueryError> {
        // the result is held until it is encoded: count it against the query's memory
        // pool like every operator's state, so a huge result fails with 413 instead of
        // growing
        let reservation = MemoryConsumer::new("query result").register(&self.runtime.memory_pool);
        let mut stream = self.start(physical).map_err(|e| classify(e, cfg))?;
        let mut batches = Vec::new();
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| classify(e, cfg))?;
            reservation
                .try_grow(b.get_array_memory_size())
                .map_err(|e| classify(e, cfg))?;
            batches.push(b);
        }
        Ok(QueryOutput { schema, batches })
    }
}

/// Segment files kept open across queries, at most (`OpenSegments`): a small share of
/// the usual 1,024 descriptors a process may hold.
const OPEN_SEGMENT_FILES: usize = 256;

/// Rows up to which a kept plan reads its scans in one partition, and runs where it is
/// asked (see `Session::plan_physical`, `QueryExecutor::run`).
pub(crate) const ONE_PARTITION_ROWS: u64 = 65_536;

/// What [`QueryExecutor::run_here`] did: ran the query, or left it to the query runtime
/// (with its logical plan where that was looked up).
enum Here {
    Ran(QueryOutput),
    Planned(Option<Planned>),
}

/// A query's optimized logical plan, its result schema, and the plan cache's entry for
/// it where there is one.
struct Planned {
    plan: LogicalPlan,
    schema: SchemaRef,
    kept: Option<Arc<CachedPlan>>,
}

/// Plan `planned` (or `key` where it is not planned yet) and run it in `session`.
async fn execute(
    mut session: Session,
    plans: Arc<PlanCache>,
    key: PlanKey,
    planned: Option<Planned>,
    cfg: QueryConfig,
) -> Result<QueryOutput, QueryError> {
    let planned = match planned {
        Some(p) => p,
        None => session.plan(&plans, key, &cfg).await?,
    };
    let physical = session
        .physical(&plans, &planned)
        .await
        .map_err(|e| classify(e, &cfg))?;
    session.collect(planned.schema, physical, &cfg).await
}

fn classify(e: DataFusionError, cfg: &QueryConfig) -> QueryError {
    let root = e.find_root();
    let msg = root.to_string();
    if let Some(i) = msg.find(crate::catalog::DENIED) {
        return QueryError::Forbidden(msg[i..].to_string());
    }
    if msg.contains("not supported") && ["DDL", "DML", "Statement"].iter().any(|k| msg.contains(k))
    {
        return QueryError::NotAllowed(msg);
    }
    match root {
        DataFusionError::ResourcesExhausted(_) => QueryError::TooMuchMemory(cfg.memory_limit_bytes),
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => QueryError::Invalid(root.to_string()),
        _ => QueryError::Execution(msg),
    }
}
