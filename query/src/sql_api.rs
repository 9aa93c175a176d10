//! `GET/POST /api/v1/query`: SQL in, rows out as JSON, JSON lines, CSV, Arrow IPC or
//! Parquet.

use std::sync::Arc;

use arrow::array::RecordBatch;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::error::Params;
use crate::executor::{QueryError, QueryOutput, QueryStream};
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
    Params(p): Params<QueryParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    run(&s, p, &headers).await
}

/// Longest accepted SQL text (query string or body), in bytes.
const MAX_SQL_BYTES: usize = 1 << 20;

pub(crate) async fn query_post(
    State(s): State<Arc<AppState>>,
    Params(mut p): Params<QueryParams>,
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
    if matches!(format, Format::Jsonl | Format::Csv | Format::Arrow) {
        let result = s.executor.run_stream(&engine, &who, &db, &sql).await;
        s.http_metrics.observe_query(&result, started.elapsed());
        return Ok(stream_response(result?, format));
    }
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

/// A response that encodes and sends the result batch by batch. An error after the
/// first batch can no longer change the status: the body then ends with one
/// `{"error": ...}` line (JSON lines) or nothing more, and the transfer is aborted, so
/// a client never takes a cut result for a whole one.
fn stream_response(mut q: QueryStream, format: Format) -> Response {
    let schema = Arc::clone(&q.schema);
    let body = async_stream(move |tx| async move {
        let mut enc = match StreamEncoder::new(format, &schema) {
            Ok(e) => e,
            Err(e) => return tx.fail(e.to_string()).await,
        };
        let mut next = q.first.take().map(Ok);
        loop {
            let batch = match next.take() {
                Some(b) => b,
                None => match q.next().await {
                    Some(b) => b,
                    None => break,
                },
            };
            let bytes = match batch {
                Ok(b) => enc.write(&b),
                Err(e) => {
                    let line = if format == Format::Jsonl {
                        serde_json::json!({ "error": e.to_string() }).to_string() + "\n"
                    } else {
                        String::new()
                    };
                    tx.send(Bytes::from(line)).await;
                    return tx.fail(e.to_string()).await;
                }
            };
            match bytes {
                Ok(b) if b.is_empty() => {}
                Ok(b) => {
                    if !tx.send(b).await {
                        return; // client gone; dropping `q` stops the query
                    }
                }
                Err(e) => return tx.fail(e.to_string()).await,
            }
        }
        match enc.finish(&schema) {
            Ok(b) => {
                tx.send(b).await;
            }
            Err(e) => tx.fail(e.to_string()).await,
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// The sending half of [`async_stream`].
struct Sender(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Sender {
    /// Send a chunk; false when the client is gone.
    async fn send(&self, b: Bytes) -> bool {
        self.0.send(Ok(b)).await.is_ok()
    }
    /// End the body with an error (the transfer is aborted).
    async fn fail(&self, msg: String) {
        tracing::warn!(error = %msg, "query failed while its result was being sent");
        let _ = self.0.send(Err(std::io::Error::other(msg))).await;
    }
}

/// A body stream fed by a task.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(Sender) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(f(Sender(tx)));
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// Encodes one result incrementally.
enum StreamEncoder {
    Jsonl(arrow::json::Writer<Vec<u8>, arrow::json::writer::LineDelimited>),
    Csv { header: bool },
    Arrow(arrow::ipc::writer::StreamWriter<Vec<u8>>),
}

impl StreamEncoder {
    fn new(
        format: Format,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<Self, arrow::error::ArrowError> {
        Ok(match format {
            Format::Csv => StreamEncoder::Csv { header: true },
            Format::Arrow => StreamEncoder::Arrow(arrow::ipc::writer::StreamWriter::try_new(
                Vec::new(),
                schema,
            )?),
            _ => StreamEncoder::Jsonl(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(Vec::new()),
            ),
        })
    }

    /// Encode one batch; the bytes to send now.
    fn write(&mut self, b: &RecordBatch) -> Result<Bytes, arrow::error::ArrowError> {
        Ok(Bytes::from(match self {
            StreamEncoder::Jsonl(w) => {
                w.write(b)?;
                std::mem::take(w.get_mut())
            }
            StreamEncoder::Csv { header } => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(std::mem::replace(header, false))
                    .build(Vec::new());
                w.write(b)?;
                w.into_inner()
            }
            StreamEncoder::Arrow(w) => {
                w.write(b)?;
                std::mem::take(w.get_mut())
            }
        }))
    }

    /// The bytes that end the result.
    fn finish(
        self,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<Bytes, arrow::error::ArrowError> {
        Ok(Bytes::from(match self {
            StreamEncoder::Jsonl(mut w) => {
                w.finish()?;
                w.into_inner()
            }
            StreamEncoder::Csv { header: true } => {
                // no rows: the header alone
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                names
                    .join(",")
                    .into_bytes()
                    .into_iter()
                    .chain(*b"\n")
                    .collect()
            }
            StreamEncoder::Csv { header: false } => Vec::new(),
            StreamEncoder::Arrow(mut w) => {
                w.finish()?;
                w.into_inner()?
            }
        }))
    }
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
        // streamed by `run`; encoded whole here only if ever asked to
        Format::Jsonl | Format::Csv | Format::Arrow => {
            let mut enc = StreamEncoder::new(format, &schema)?;
            for b in batches {
                buf.extend_from_slice(&enc.write(b)?);
            }
            buf.extend_from_slice(&enc.finish(&out.schema)?);
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
