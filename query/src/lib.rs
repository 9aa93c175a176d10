//! talo's query layer and HTTP API.
//!
//! In: HTTP requests — line-protocol writes, SQL queries, catalog and health requests.
//! Out: engine writes (acknowledged only once durable), query results computed by
//! DataFusion over an engine snapshot (buffer ∪ segments, one row per point), and
//! JSON/Prometheus responses. Nothing here writes files except through the engine.

pub mod auth;
mod catalog;
mod datebin;
mod dedup;
mod error;
pub mod executor;
mod gapfill;
mod lastpoint;
mod metrics;
mod openapi;
mod plans;
pub mod rollup;
mod runs;
mod scan;
mod series;
mod sql_api;
mod widen;
mod write;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use talo_engine::Engine;
use write::Endpoint;

pub use auth::{Auth, Permission, TokenConfig};
pub use error::ApiError;
use error::{Params, PathParam};
pub use executor::{PlanCacheStats, QueryConfig, QueryExecutor};

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted request body (after gzip decoding), in bytes. Default 64 MiB.
    pub max_body_bytes: usize,
    /// Tokens; none = auth off. Default none.
    pub auth: Auth,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 << 20,
            auth: Auth::default(),
        }
    }
}

/// Shared state of the handlers. The engine is set once recovery has finished; until
/// then `/ready` answers 503 and data endpoints answer 503 too.
#[derive(Debug)]
pub struct AppState {
    engine: OnceLock<Arc<Engine>>,
    config: HttpConfig,
    started: Instant,
    http_metrics: metrics::HttpMetrics,
    executor: QueryExecutor,
    /// Other components' `/metrics` text (the MQTT endpoint and subscriber).
    extra_metrics: ExtraMetrics,
}

#[derive(Default)]
struct ExtraMetrics(std::sync::Mutex<Vec<MetricsSource>>);

impl std::fmt::Debug for ExtraMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtraMetrics")
    }
}

/// Appends Prometheus text to `/metrics`.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

impl AppState {
    /// State without an engine yet; starts the query runtime.
    pub fn new(config: HttpConfig, query: QueryConfig) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(AppState {
            engine: OnceLock::new(),
            config,
            started: Instant::now(),
            http_metrics: metrics::HttpMetrics::default(),
            executor: QueryExecutor::new(query)?,
            extra_metrics: ExtraMetrics::default(),
        }))
    }

    /// Add a component's counters to `/metrics`.
    pub fn add_metrics(&self, source: MetricsSource) {
        if let Ok(mut v) = self.extra_metrics.0.lock() {
            v.push(source);
        }
    }

    /// The configured tokens (for checking MQTT credentials).
    pub fn auth(&self) -> &Auth {
        &self.config.auth
    }

    /// Hand over the recovered engine: the server becomes ready.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        if self.engine.set(Arc::clone(&engine)).is_ok() {
            self.executor
                .keep_latest_rows_warm(engine, std::time::Duration::from_secs(1));
        }
    }

    fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        self.engine.get().ok_or(ApiError::NotReady)
    }
}

/// The router with every endpoint.
pub fn app(state: Arc<AppState>) -> Router {
    // the body limit is enforced by the write handler itself (also after gunzip)
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/api/v1/query",
            get(sql_api::query_get).post(sql_api::query_post),
        )
        .route(
            "/api/v1/write",
            post(|s, q, h, b| write::write(Endpoint::Talo, s, q, h, b)),
        )
        .route(
            "/write",
            post(|s, q, h, b| write::write(Endpoint::DbRequired, s, q, h, b)),
        )
        .route(
            "/api/v2/write",
            post(|s, q, h, b| write::write(Endpoint::Bucket, s, q, h, b)),
        )
        .route(
            "/api/v3/write_lp",
            post(|s, q, h, b| write::write(Endpoint::DbRequired, s, q, h, b)),
        )
        .route("/api/v1/databases", get(databases))
        .route("/api/v1/databases/{db}", axum::routing::put(put_database))
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(openapi::document()) }),
        )
        .route("/api/v1/tables", get(tables))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "uptime_seconds": s.started.elapsed().as_secs()}))
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    match s.engine.get() {
        Some(e) => {
            let r = e.recovery_report();
            (
                StatusCode::OK,
                Json(json!({
                    "status": "ready",
                    "wal_rows_replayed": r.rows_replayed,
                    "wal_tails_cut": r.cut_tails.len(),
                })),
            )
                .into_response()
        }
        None => ApiError::NotReady.into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn databases(
    State(s): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = s.config.auth.principal(&headers, None)?;
    let catalog = s.engine()?.catalog();
    let rules = Arc::clone(&s.engine()?.snapshot().retention);
    let dbs: Vec<_> = catalog
        .database_names()
        .filter(|name| who.can(Permission::Read, name))
        .map(|name| {
            let tables = catalog.database(name).map(|d| d.tables.len()).unwrap_or(0);
            let mut v = retention_json(&rules, name);
            v["tables"] = json!(tables);
            v
        })
        .collect();
    Ok(Json(json!({ "databases": dbs })))
}

/// `{"name", "retention", "table_retention"}` of a database (durations as text).
fn retention_json(rules: &talo_engine::retention::RetentionRules, db: &str) -> serde_json::Value {
    // in the largest whole unit, as it would be written in the config ("365d", "12h")
    let fmt = |secs: u64| match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    let r = rules.databases.get(db);
    let tables: serde_json::Map<String, serde_json::Value> = r
        .map(|r| {
            r.tables
                .iter()
                .map(|(t, s)| (t.clone(), json!(fmt(*s))))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "name": db,
        "retention": r.and_then(|r| r.seconds).map(fmt),
        "table_retention": tables,
    })
}

/// `PUT /api/v1/databases/{db}` with `{"retention": "7d" | null, "tables": {"env":
/// "30d" | null}}`: change retention at runtime (write permission on the database).
async fn put_database(
    State(s): State<Arc<AppState>>,
    PathParam(db): PathParam,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let who = s.config.auth.principal(&headers, None)?;
    who.require(Permission::Write, &db)?;
    let engine = s.engine()?;
    talo_engine::model::validate_db_name(&db).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if body.len() > 64 * 1024 {
        return Err(ApiError::BadRequest("settings body over 64 KiB".into()));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::BadRequest("expected a JSON object".into()))?;
    let parse = |v: &serde_json::Value,
                 what: &str|
     -> Result<Option<std::time::Duration>, ApiError> {
        match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(t) => humantime::parse_duration(t)
                .map(Some)
                .map_err(|e| ApiError::BadRequest(format!("{what}: {e} (e.g. \"30d\", \"12h\")"))),
            _ => Err(ApiError::BadRequest(format!(
                "{what}: a duration like \"30d\" or null"
            ))),
        }
    };
    let mut changes: Vec<(Option<String>, Option<std::time::Duration>)> = Vec::new();
    for (k, v) in obj {
        match k.as_str() {
            "retention" => changes.push((None, parse(v, "retention")?)),
            "tables" => {
                let t = v.as_object().ok_or_else(|| {
                    ApiError::BadRequest("tables: an object of table -> duration".into())
                })?;
                for (name, d) in t {
                    changes.push((Some(name.clone()), parse(d, name)?));
                }
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown setting {other:?} (known: retention, tables)"
                )));
            }
        }
    }
    for (table, keep) in changes {
        engine
            .set_retention(&db, table.as_deref(), keep)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    }
    Ok(Json(retention_json(&engine.snapshot().retention, &db)))
}

#[derive(Debug, Deserialize)]
struct TablesParams {
    db: Option<String>,
}

async fn tables(
    State(s): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    Params(p): Params<TablesParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let db = p.db.unwrap_or_else(|| "default".to_string());
    s.config
        .auth
        .principal(&headers, None)?
        .require(Permission::Read, &db)?;
    let catalog = s.engine()?.catalog();
    let Some(d) = catalog.database(&db) else {
        return Err(ApiError::NotFoundMsg(format!(
            "database {db:?} does not exist"
        )));
    };
    let tables: Vec<_> = d
        .tables
        .values()
        .map(|t| {
            let columns: Vec<_> = t
                .columns
                .iter()
                .map(|c| {
                    let role = match c.ty {
                        talo_engine::ColumnType::Time => "time",
                        talo_engine::ColumnType::Tag => "tag",
                        talo_engine::ColumnType::Field(_) => "field",
                    };
                    json!({"name": c.name, "type": c.ty.name(), "role": role})
                })
                .collect();
            json!({"name": t.name, "columns": columns})
        })
        .collect();
    Ok(Json(json!({"database": db, "tables": tables})))
}

#[cfg(test)]
mod tests;

/// Serve the API on `listener` until `shutdown` completes, then finish in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
