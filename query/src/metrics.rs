//! `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use talo_engine::metrics::{Histogram, LATENCY_BUCKETS};

use crate::AppState;

/// Counters of the HTTP layer.
#[derive(Debug, Default)]
pub(crate) struct HttpMetrics {
    pub(crate) write_requests: AtomicU64,
    pub(crate) write_lines_rejected: AtomicU64,
    pub(crate) write_latency: Histogram,
    pub(crate) queries_ok: AtomicU64,
    pub(crate) queries_invalid: AtomicU64,
    pub(crate) queries_failed: AtomicU64,
    pub(crate) queries_refused: AtomicU64,
    pub(crate) query_latency: Histogram,
    /// Per database: (rows written, lines rejected) through the HTTP write endpoints.
    per_db: std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

impl HttpMetrics {
    /// Count a write request's outcome for its database.
    pub(crate) fn record_write(&self, db: &str, written: usize, rejected: usize) {
        self.write_lines_rejected
            .fetch_add(rejected as u64, Ordering::Relaxed);
        if let Ok(mut m) = self.per_db.lock() {
            let e = m.entry(db.to_string()).or_default();
            e.0 += written as u64;
            e.1 += rejected as u64;
        }
    }

    pub(crate) fn observe_query<T>(
        &self,
        r: &Result<T, crate::executor::QueryError>,
        took: std::time::Duration,
    ) {
        use crate::executor::QueryError as E;
        let c = match r {
            Ok(_) => &self.queries_ok,
            Err(E::Invalid(_) | E::NotAllowed(_) | E::Forbidden(_)) => &self.queries_invalid,
            Err(E::Busy(_)) => &self.queries_refused,
            Err(_) => &self.queries_failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.query_latency.observe(took);
    }
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, count, sum) = h.read();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (b, c) in LATENCY_BUCKETS.iter().zip(buckets) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
    );
}

pub(crate) async fn metrics(
    State(s): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, crate::ApiError> {
    s.config.auth.principal(&headers, None)?;
    let mut out = String::new();
    let h = &s.http_metrics;
    counter(
        &mut out,
        "talo_http_write_requests_total",
        "Write requests received.",
        h.write_requests.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "talo_http_write_lines_rejected_total",
        "Lines rejected by the parser or the engine.",
        h.write_lines_rejected.load(Ordering::Relaxed),
    );
    if let Ok(m) = h.per_db.lock() {
        // database names are [A-Za-z0-9_-]: safe as label values
        let _ = writeln!(
            out,
            "# HELP talo_db_rows_written_total Rows written over HTTP, per database.\n# TYPE talo_db_rows_written_total counter"
        );
        for (db, (w, _)) in m.iter() {
            let _ = writeln!(out, "talo_db_rows_written_total{{db=\"{db}\"}} {w}");
        }
        let _ = writeln!(
            out,
            "# HELP talo_db_lines_rejected_total Lines rejected over HTTP, per database.\n# TYPE talo_db_lines_rejected_total counter"
        );
        for (db, (_, r)) in m.iter() {
            let _ = writeln!(out, "talo_db_lines_rejected_total{{db=\"{db}\"}} {r}");
        }
    }
    histogram(
        &mut out,
        "talo_http_write_seconds",
        "Write request latency until durable.",
        &h.write_latency,
    );
    let _ = writeln!(
        out,
        "# HELP talo_queries_total SQL queries answered, by outcome (invalid: bad SQL, not read-only or not permitted; refused: over the concurrency limit; failed: timeout, memory limit, execution error).\n# TYPE talo_queries_total counter"
    );
    for (status, c) in [
        ("ok", &h.queries_ok),
        ("invalid", &h.queries_invalid),
        ("failed", &h.queries_failed),
        ("refused", &h.queries_refused),
    ] {
        let _ = writeln!(
            out,
            "talo_queries_total{{status=\"{status}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    histogram(
        &mut out,
        "talo_query_seconds",
        "SQL query latency until the result (or its first batch) is ready.",
        &h.query_latency,
    );
    let plans = s.executor.plan_cache_stats();
    counter(
        &mut out,
        "talo_query_plan_cache_hits_total",
        "Queries that reused a cached optimized plan.",
        plans.hits,
    );
    counter(
        &mut out,
        "talo_query_plan_cache_misses_total",
        "Queries planned from their SQL (no reusable cached plan).",
        plans.misses,
    );
    gauge(
        &mut out,
        "talo_query_plan_cache_entries",
        "Optimized plans held by the plan cache.",
        plans.entries as u64,
    );
    counter(
        &mut out,
        "talo_query_physical_plan_reuses_total",
        "Queries that ran a kept physical plan (same SQL, same segments read).",
        plans.physical_reuses,
    );
    counter(
        &mut out,
        "talo_query_physical_plannings_total",
        "Passes of the physical planner (one per query planned physically, two where a plan reading few rows is planned again in one partition).",
        plans.physical_plannings,
    );
    counter(
        &mut out,
        "talo_query_inline_runs_total",
        "Queries run where they were asked, without the hand-off to the query runtime (kept physical plans reading few rows).",
        s.executor.inline_runs(),
    );
    let (segments, bytes) = s.executor.latest_rows_kept();
    gauge(
        &mut out,
        "talo_query_latest_rows_segments",
        "Settled segments whose latest row per series is kept for last-value queries.",
        segments as u64,
    );
    gauge(
        &mut out,
        "talo_query_latest_rows_bytes",
        "Memory held by those kept latest rows.",
        bytes as u64,
    );
    let (segments, bytes) = s.executor.series_runs_kept();
    gauge(
        &mut out,
        "talo_query_series_index_segments",
        "Segments whose series runs are kept, so that tag filters select rows by run.",
        segments as u64,
    );
    gauge(
        &mut out,
        "talo_query_series_index_bytes",
        "Memory held by those series runs.",
        bytes as u64,
    );
    gauge(
        &mut out,
        "talo_query_open_segment_files",
        "Segment files kept open across queries.",
        s.executor.open_segment_files() as u64,
    );
    if let Some(e) = s.engine.get() {
        let m = e.metrics();
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "talo_rows_written_total",
            "Rows made durable.",
            r(&m.rows_written),
        );
        counter(
            &mut out,
            "talo_rows_rejected_total",
            "Rows refused by the engine.",
            r(&m.rows_rejected),
        );
        counter(
            &mut out,
            "talo_write_errors_total",
            "Writes that failed (WAL unavailable).",
            r(&m.write_errors),
        );
        counter(
            &mut out,
            "talo_wal_bytes_total",
            "Bytes appended to the WAL.",
            r(&m.wal_bytes),
        );
        histogram(
            &mut out,
            "talo_wal_fsync_seconds",
            "WAL group append + fsync latency.",
            &m.wal_fsync,
        );
        counter(
            &mut out,
            "talo_wal_tail_cuts_total",
            "Torn/corrupt WAL tails cut at startup.",
            r(&m.wal_tail_cuts),
        );
        counter(
            &mut out,
            "talo_flushes_total",
            "Buffer flushes to segments.",
            r(&m.flushes),
        );
        counter(
            &mut out,
            "talo_flush_errors_total",
            "Failed flush attempts.",
            r(&m.flush_errors),
        );
        counter(
            &mut out,
            "talo_backpressure_waits_total",
            "Write groups delayed by a full buffer.",
            r(&m.backpressure_waits),
        );
        let snap = e.snapshot();
        gauge(
            &mut out,
            "talo_buffer_bytes",
            "Bytes held in the write buffer.",
            snap.buffered_bytes() as u64,
        );
        gauge(
            &mut out,
            "talo_buffer_rows",
            "Rows held in the write buffer.",
            snap.buffered_rows() as u64,
        );
        counter(
            &mut out,
            "talo_compactions_total",
            "Compaction merges done.",
            r(&m.compactions),
        );
        counter(
            &mut out,
            "talo_compacted_segments_total",
            "Segments replaced by compaction.",
            r(&m.compacted_segments),
        );
        counter(
            &mut out,
            "talo_compaction_rows_total",
            "Rows read by compaction merges.",
            r(&m.compaction_rows_in),
        );
        counter(
            &mut out,
            "talo_compaction_read_bytes_total",
            "Segment bytes read by compaction merges.",
            r(&m.compaction_bytes_in),
        );
        counter(
            &mut out,
            "talo_compaction_written_bytes_total",
            "Segment bytes written by compaction merges.",
            r(&m.compaction_bytes_out),
        );
        let _ = writeln!(
            out,
            "# HELP talo_compaction_seconds_total Time spent in compaction merges.\n# TYPE talo_compaction_seconds_total counter\ntalo_compaction_seconds_total {}",
            r(&m.compaction_nanos) as f64 / 1e9
        );
        counter(
            &mut out,
            "talo_compaction_errors_total",
            "Failed compaction attempts (retried).",
            r(&m.compaction_errors),
        );
        gauge(
            &mut out,
            "talo_segments",
            "Published segments.",
            snap.segments.len() as u64,
        );
        gauge(
            &mut out,
            "talo_segment_bytes",
            "Bytes in published segments.",
            snap.segments.iter().map(|s| s.bytes).sum(),
        );
    }
    let sources: Vec<crate::MetricsSource> = s
        .extra_metrics
        .0
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    for source in sources {
        source(&mut out);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
