//! `GET/POST /api/v1/query`: SQL in, rows out as JSON, JSON lines, CSV, Arrow IPC or
//! Parquet.

use std::sync::Arc;

use arrow::array::RecordBatch;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::executor::{QueryError, QueryOutput};
use crate::{ApiError, AppState};

#[derive(Debug, Deserialize, Default)]
pub(crate) struct QueryParams {
    sql: Option<String>,
    q: Option<String>,
    db: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Jsonl,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        Ok(match s.unwrap_or("json") {
            "json" => Format::Json,
            "jsonl" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            "arrow" => Format::Arrow,
            "parquet" => Format::Parquet,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown format {other:?} (json, jsonl, csv, arrow, parquet)"
                )));
            }
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Jsonl => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

pub(crate) async fn query_get(
    State(s): State<Arc<AppState>>,
    Query(p): Query<QueryParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&s, p, &headers).await
}

/// Longest accepted SQL text (query string or body), in bytes.
const MAX_SQL_BYTES: usize = 1 << 20;

pub(crate) async fn query_post(
    State(s): State<Arc<AppState>>,
    Query(mut p): Query<QueryParams>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body: Bytes = axum::body::to_bytes(body, MAX_SQL_BYTES)
        .await
        .map_err(|_| ApiError::TooLarge(MAX_SQL_BYTES))?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        let b: QueryParams = serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        p.sql = b.sql.or(b.q).or(p.sql);
        p.db = b.db.or(p.db);
        p.format = b.format.or(p.format);
    } else if !body.is_empty() {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::BadRequest("the SQL body is not valid UTF-8".into()))?;
        p.sql = Some(text.to_string());
    }
    run(&s, p, &headers).await
}

async fn run(s: &AppState, p: QueryParams, headers: &HeaderMap) -> Result<Response, ApiError> {
    let who = s.config.auth.principal(headers, None)?;
    let engine = Arc::clone(s.engine()?);
    let format = Format::parse(p.format.as_deref())?;
    let sql = p
        .sql
        .or(p.q)
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing SQL: pass sql=... (or q=...)".into()))?;
    if sql.len() > MAX_SQL_BYTES {
        return Err(ApiError::TooLarge(MAX_SQL_BYTES));
    }
    let db = p.db.unwrap_or_else(|| "default".into());
    talo_engine::model::validate_db_name(&db)?;
    who.require(crate::Permission::Read, &db)?;
    let started = std::time::Instant::now();
    let result = s.executor.run(&engine, &who, &db, &sql).await;
    s.http_metrics.observe_query(&result, started.elapsed());
    let out = result.map_err(ApiError::from)?;
    let body = encode(&out, format).map_err(|e| {
        tracing::error!(error = %e, "encoding query result failed");
        ApiError::Internal
    })?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        body,
    )
        .into_response())
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(_) | QueryError::NotAllowed(_) => {
                ApiError::BadRequest(e.to_string())
            }
            QueryError::Forbidden(msg) => ApiError::Forbidden(msg),
            QueryError::TooMuchMemory(_) => ApiError::QueryTooLarge(e.to_string()),
            QueryError::Timeout(_) => ApiError::Timeout(e.to_string()),
            QueryError::Busy(_) => ApiError::Busy(e.to_string()),
            QueryError::Execution(msg) => {
                tracing::error!(error = %msg, "query failed");
                ApiError::QueryFailed(msg)
            }
        }
    }
}

fn encode(out: &QueryOutput, format: Format) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let batches: &[RecordBatch] = &out.batches;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::clone(&out.schema));
    let mut buf = Vec::new();
    match format {
        Format::Json => {
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(&mut buf);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            drop(w);
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
        }
        Format::Jsonl => {
            let mut w = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Csv => {
            if batches.is_empty() {
                let names: Vec<&str> = out
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                buf.extend_from_slice(names.join(",").as_bytes());
                buf.push(b'\n');
            } else {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
            }
        }
        Format::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)?;
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                .build();
            let mut w =
                parquet::arrow::ArrowWriter::try_new(&mut buf, Arc::clone(&schema), Some(props))?;
            for b in batches {
                w.write(b)?;
            }
            w.close()?;
        }
    }
    Ok(buf)
}
