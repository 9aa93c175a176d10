//! Line-protocol write endpoints: talo's own and the InfluxDB v1/v2/v3-compatible ones.
//! All answer 204 only after every stored row is durable; a body with bad lines stores
//! the good ones (unless `accept_partial=false`) and answers 400 listing each bad line.

use std::io::Read;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::json;
use talo_ingest::{LineError, Precision, write_lines};

use crate::error::Params;
use crate::{ApiError, AppState};

/// Bodies larger than this are parsed on the blocking pool, not on a runtime worker.
const INLINE_PARSE_LIMIT: usize = 256 << 10;
/// At most this many rejected lines are listed in a response.
const MAX_LISTED_ERRORS: usize = 1000;

#[derive(Debug, Deserialize, Default)]
pub(crate) struct WriteParams {
    db: Option<String>,
    bucket: Option<String>,
    precision: Option<String>,
    accept_partial: Option<bool>,
    /// InfluxDB v1 password parameter: a token.
    p: Option<String>,
}

struct WriteTarget {
    password: Option<String>,
    db: String,
    precision: Precision,
    accept_partial: bool,
}

/// Which write API a request came in through; they differ only in how the database is
/// named.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    /// `/api/v1/write?db=` (optional, `default`).
    Talo,
    /// `/write?db=` and `/api/v3/write_lp?db=` (required).
    DbRequired,
    /// `/api/v2/write?bucket=` (required; a v1-style `db/retention_policy` maps to `db`).
    Bucket,
}

fn target(endpoint: Endpoint, p: &WriteParams) -> Result<WriteTarget, ApiError> {
    let db = match endpoint {
        Endpoint::Talo => p.db.as_deref().unwrap_or("default"),
        Endpoint::DbRequired => {
            p.db.as_deref()
                .ok_or_else(|| ApiError::BadRequest("database is required (db=...)".into()))?
        }
        Endpoint::Bucket => p
            .bucket
            .as_deref()
            .map(|b| b.split('/').next().unwrap_or(b))
            .ok_or_else(|| ApiError::BadRequest("bucket is required (bucket=...)".into()))?,
    };
    let precision = match p.precision.as_deref() {
        None | Some("auto") => Precision::Nanoseconds,
        Some(s) => Precision::parse(s)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown precision {s:?}")))?,
    };
    Ok(WriteTarget {
        password: p.p.clone(),
        db: db.to_string(),
        precision,
        accept_partial: p.accept_partial.unwrap_or(true),
    })
}

/// The handler of every write endpoint.
pub(crate) async fn write(
    endpoint: Endpoint,
    State(s): State<Arc<AppState>>,
    Params(p): Params<WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = target(endpoint, &p)?;
    handle(&s, t, &headers, body).await
}

async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<Bytes, ApiError> {
    let raw = axum::body::to_bytes(body, max).await.map_err(|e| {
        let msg = e.to_string();
        if msg.contains("length limit") {
            ApiError::TooLarge(max)
        } else {
            ApiError::BadRequest(format!("could not read the request body: {msg}"))
        }
    })?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(raw);
    }
    // decode at most max+1 bytes so that a gzip bomb is caught, not expanded
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadRequest(format!("invalid gzip body: {e}")))?;
    if out.len() > max {
        return Err(ApiError::TooLarge(max));
    }
    Ok(Bytes::from(out))
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

async fn handle(
    s: &AppState,
    t: WriteTarget,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    s.http_metrics
        .write_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.config
        .auth
        .principal(headers, t.password.as_deref())?
        .require(crate::Permission::Write, &t.db)?;
    let engine = Arc::clone(s.engine()?);
    let body = read_body(body, headers, s.config.max_body_bytes).await?;
    let mut builder = engine.batch_builder(&t.db)?;
    let now = now_nanos();
    let precision = t.precision;
    let (builder, mut errors) = if body.len() > INLINE_PARSE_LIMIT {
        tokio::task::spawn_blocking(move || {
            let errors = write_lines(&body, precision, now, &mut builder);
            (builder, errors)
        })
        .await
        .map_err(|_| ApiError::Internal)?
    } else {
        let errors = write_lines(&body, precision, now, &mut builder);
        (builder, errors)
    };
    if !errors.is_empty() && !t.accept_partial {
        s.http_metrics.record_write(&t.db, 0, errors.len());
        return Ok(rejected_response(
            &errors,
            0,
            "no lines were stored (accept_partial=false)",
        ));
    }
    let outcome = engine.write(builder.finish()?).await?;
    errors.extend(outcome.rejected.into_iter().map(|r| LineError {
        line: r.row_id as usize,
        reason: r.reason,
    }));
    s.http_metrics.write_latency.observe(started.elapsed());
    s.http_metrics
        .record_write(&t.db, outcome.rows_written, errors.len());
    if errors.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    errors.sort_by_key(|e| e.line);
    Ok(rejected_response(
        &errors,
        outcome.rows_written,
        "the other lines were stored",
    ))
}

fn rejected_response(errors: &[LineError], written: usize, what: &str) -> Response {
    let listed: Vec<_> = errors
        .iter()
        .take(MAX_LISTED_ERRORS)
        .map(|e| json!({"line": e.line, "reason": e.reason}))
        .collect();
    let body = json!({
        "error": format!("{} line(s) rejected; {what}", errors.len()),
        "rows_written": written,
        "rejected": listed,
        "rejected_total": errors.len(),
    });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}
