//! Running SQL: read-only, on its own runtime, under a memory pool, a timeout and a
//! concurrency limit, over one engine snapshot taken when the query starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::functions::datetime::date_bin;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use talo_engine::Engine;
use tokio::sync::Semaphore;

use crate::auth::Principal;
use crate::catalog::TaloCatalog;

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

/// Runs queries on a dedicated runtime.
#[derive(Debug)]
pub struct QueryExecutor {
    config: QueryConfig,
    runtime: Option<tokio::runtime::Runtime>,
    permits: Arc<Semaphore>,
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
    pub fn new(config: QueryConfig) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("talo-query")
            .enable_all()
            .build()?;
        Ok(QueryExecutor {
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            config,
            runtime: Some(runtime),
        })
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.config.max_concurrent.max(1) - self.permits.available_permits()
    }

    /// Run `sql` with `db` as the default database.
    pub async fn run(
        &self,
        engine: &Arc<Engine>,
        who: &Principal,
        db: &str,
        sql: &str,
    ) -> Result<QueryOutput, QueryError> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| QueryError::Busy(self.config.max_concurrent))?;
        let Some(rt) = &self.runtime else {
            return Err(QueryError::Execution("query runtime stopped".into()));
        };
        let snapshot = engine.snapshot();
        let data_dir = engine.config().data_dir.clone();
        let cfg = self.config.clone();
        let db = db.to_string();
        let sql = sql.to_string();
        let who = who.clone();
        let task = rt.spawn(async move {
            let _permit = permit;
            let timeout = cfg.timeout;
            match tokio::time::timeout(
                timeout,
                execute(snapshot, data_dir, who, cfg.clone(), db, sql),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(QueryError::Timeout(timeout)),
            }
        });
        task.await
            .map_err(|e| QueryError::Execution(format!("query task failed: {e}")))?
    }
}

fn context(
    snapshot: Arc<talo_engine::Snapshot>,
    data_dir: PathBuf,
    who: Principal,
    cfg: &QueryConfig,
    db: &str,
) -> Result<SessionContext, DataFusionError> {
    let config = SessionConfig::new()
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(CATALOG, db)
        .with_information_schema(true)
        .with_target_partitions(cfg.threads.max(1));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(cfg.memory_limit_bytes, 1.0)
        // no spilling: the memory limit is a hard limit and no query writes files
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_catalog(CATALOG, Arc::new(TaloCatalog::new(snapshot, data_dir, who)));
    ctx.register_udf(ScalarUDF::clone(&date_bin()).with_aliases(["time_bucket"]));
    Ok(ctx)
}

async fn execute(
    snapshot: Arc<talo_engine::Snapshot>,
    data_dir: PathBuf,
    who: Principal,
    cfg: QueryConfig,
    db: String,
    sql: String,
) -> Result<QueryOutput, QueryError> {
    let ctx = context(snapshot, data_dir, who, &cfg, &db)
        .map_err(|e| QueryError::Execution(e.to_string()))?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(&sql, options)
        .await
        .map_err(|e| classify(e, &cfg))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(|e| classify(e, &cfg))?;
    Ok(QueryOutput { schema, batches })
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
