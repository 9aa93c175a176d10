//! Rollups (downsampling): per-table rules that keep an ordinary table of per-interval
//! aggregates (`temperature_avg`, `temperature_min`, ...) of every numeric field, per series.
//!
//! Maintained continuously: the engine records the time ranges each write touches
//! (`Engine::dirty`); every tick this task takes a source table's ranges, widens them to
//! whole intervals and recomputes those intervals from the raw data with SQL over the same
//! deduplicated view queries see (buffer ∪ segments). The results are written like any
//! write; a rollup row is one point per (series, interval start), so a recomputation
//! overwrites the earlier one (last write wins). That makes late and out-of-order data
//! correct: a late point marks its old interval, which is recomputed from everything stored.
//!
//! Intervals that start before the source's retention cutoff are not recomputed (they would
//! come out partial): a rollup can keep data longer than its source.
//!
//! Crash safety: see `talo_engine::dirty` — ranges are settled only once the rollup rows
//! are durable; unsettled ones survive a crash through the WAL replay or `dirty.json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampNanosecondType, UInt64Type};
use talo_engine::Engine;
use talo_engine::model::{ColumnType, FieldType, FieldValue};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::executor::{QueryConfig, QueryExecutor};

/// An aggregate a rule applies to every numeric field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Aggregate {
    Avg,
    Min,
    Max,
    Count,
    Sum,
}

impl Aggregate {
    /// Parse `avg`, `min`, `max`, `count`, `sum`.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "avg" | "mean" => Aggregate::Avg,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            other => {
                return Err(format!(
                    "unknown aggregate {other:?} (avg, min, max, count, sum)"
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
        }
    }
}

/// One rollup: `table` holds `aggregates` of `source`'s numeric fields per `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRule {
    pub db: String,
    pub source: String,
    pub table: String,
    pub interval: Duration,
    pub aggregates: Vec<Aggregate>,
}

impl RollupRule {
    fn interval_ns(&self) -> i64 {
        i64::try_from(self.interval.as_nanos()).unwrap_or(i64::MAX)
    }

    /// Check the rule on its own and against the others (`rules`, which contains it).
    pub fn validate(&self, rules: &[RollupRule]) -> Result<(), String> {
        let what = format!("rollup {}.{}", self.db, self.table);
        talo_engine::model::validate_db_name(&self.db).map_err(|e| format!("{what}: {e}"))?;
        for name in [&self.source, &self.table] {
            talo_engine::model::validate_table_name(name).map_err(|e| format!("{what}: {e}"))?;
        }
        if self.source == self.table {
            return Err(format!(
                "{what}: the rollup table must differ from its source"
            ));
        }
        if self.interval < Duration::from_secs(1) {
            return Err(format!("{what}: interval must be at least 1s"));
        }
        if self.aggregates.is_empty() {
            return Err(format!("{what}: no aggregates"));
        }
        if rules
            .iter()
            .filter(|r| r.db == self.db && r.table == self.table)
            .count()
            > 1
        {
            return Err(format!("{what}: more than one rule writes this table"));
        }
        if rules
            .iter()
            .any(|r| r.db == self.db && r.source == self.table)
        {
            return Err(format!(
                "{what}: a rollup of a rollup is not supported (roll up the raw table)"
            ));
        }
        Ok(())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct RollupMetrics {
    pub passes: AtomicU64,
    pub rows_written: AtomicU64,
    pub errors: AtomicU64,
}

impl RollupMetrics {
    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP talo_rollup_passes_total Rollup recomputations that wrote results.\n\
             # TYPE talo_rollup_passes_total counter\n\
             talo_rollup_passes_total {}\n\
             # HELP talo_rollup_rows_written_total Rollup rows written (recomputed rows included).\n\
             # TYPE talo_rollup_rows_written_total counter\n\
             talo_rollup_rows_written_total {}\n\
             # HELP talo_rollup_errors_total Rollup recomputations that failed (retried).\n\
             # TYPE talo_rollup_errors_total counter\n\
             talo_rollup_errors_total {}",
            self.passes.load(Ordering::Relaxed),
            self.rows_written.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        );
    }
}

/// At most this much source time per SQL statement (a backfill of months runs in pieces).
const MAX_SPAN_NS: i64 = 86_400_000_000_000;

/// Keep the rollups of `rules` up to date until `cancel`; one pass every `tick`.
/// Queries run on their own executor (one thread, one at a time), so rollups never take
/// the dashboards' query slots.
pub async fn run(
    engine: Arc<Engine>,
    rules: Vec<RollupRule>,
    query: QueryConfig,
    tick: Duration,
    metrics: Arc<RollupMetrics>,
    cancel: CancellationToken,
) {
    if rules.is_empty() {
        return;
    }
    let executor = match QueryExecutor::new(QueryConfig {
        threads: 1,
        max_concurrent: 1,
        ..query
    }) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "rollups: cannot start their query runtime");
            return;
        }
    };
    // a rule whose table does not exist yet (new, or added beside a rule that has already
    // taken the source's ranges) starts with a backfill of everything the source holds
    let snapshot = engine.snapshot();
    for r in &rules {
        if snapshot.catalog.table(&r.db, &r.table).is_some() {
            continue;
        }
        if let Some((min, max)) = snapshot.table(&r.db, &r.source).and_then(|t| {
            let times = t
                .segments
                .iter()
                .map(|s| (s.min_time, s.max_time))
                .chain(t.chunks.iter().map(|c| (c.min_time, c.max_time)));
            times.reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)))
        }) {
            tracing::info!(db = %r.db, table = %r.table, source = %r.source, "rollup backfill");
            engine.dirty().mark(&r.db, &r.source, min, max);
        }
    }
    drop(snapshot);
    // rules grouped by source table: one take of its ranges serves all its rollups
    let mut by_source: BTreeMap<(String, String), Vec<RollupRule>> = BTreeMap::new();
    for r in rules {
        by_source
            .entry((r.db.clone(), r.source.clone()))
            .or_default()
            .push(r);
    }
    loop {
        for ((db, source), rules) in &by_source {
            if cancel.is_cancelled() {
                return;
            }
            let ranges = engine.dirty().take(db, source);
            if ranges.is_empty() {
                continue;
            }
            match recompute(&engine, &executor, db, source, rules, &ranges).await {
                Ok(rows) => {
                    engine.dirty().settle(db, source);
                    metrics.passes.fetch_add(1, Ordering::Relaxed);
                    metrics
                        .rows_written
                        .fetch_add(rows as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    engine.dirty().restore(db, source);
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(db = %db, source = %source, error = %e, "rollup pass failed; retrying");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// `[lo, hi)` spans of whole intervals covering the inclusive `ranges`, from `floor` on,
/// merged, and cut into pieces of at most [`MAX_SPAN_NS`] (but at least one interval).
fn spans(ranges: &[(i64, i64)], interval: i64, floor: Option<i64>) -> Vec<(i64, i64)> {
    let mut aligned: Vec<(i64, i64)> = Vec::new();
    for &(min, max) in ranges {
        let mut lo = min.div_euclid(interval).saturating_mul(interval);
        let hi = max
            .div_euclid(interval)
            .saturating_add(1)
            .saturating_mul(interval);
        if let Some(f) = floor {
            // the first interval that starts at or after the cutoff
            let first = f
                .div_euclid(interval)
                .saturating_add(i64::from(f.rem_euclid(interval) != 0))
                .saturating_mul(interval);
            lo = lo.max(first);
        }
        if lo >= hi {
            continue;
        }
        match aligned.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => aligned.push((lo, hi)),
        }
    }
    let step = (MAX_SPAN_NS / interval).max(1).saturating_mul(interval);
    let mut out = Vec::new();
    for (lo, hi) in aligned {
        let mut a = lo;
        while a < hi {
            let b = a.saturating_add(step).min(hi);
            out.push((a, b));
            a = b;
        }
    }
    out
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The rollup's SQL for `[lo, hi)`: tags, interval start as `time`, then `<field>_<agg>`.
fn rollup_sql(
    source: &str,
    tags: &[String],
    fields: &[String],
    rule: &RollupRule,
    lo: i64,
    hi: i64,
) -> String {
    let bucket = format!(
        "date_bin(INTERVAL '{} nanoseconds', \"time\", TIMESTAMP '1970-01-01T00:00:00Z')",
        rule.interval_ns()
    );
    let mut select: Vec<String> = tags.iter().map(|t| quote(t)).collect();
    select.push(format!("{bucket} AS \"time\""));
    for f in fields {
        for a in &rule.aggregates {
            select.push(format!(
                "{}({}) AS {}",
                a.name(),
                quote(f),
                quote(&format!("{f}_{}", a.name()))
            ));
        }
    }
    let mut group: Vec<String> = tags.iter().map(|t| quote(t)).collect();
    group.push(bucket);
    format!(
        "SELECT {} FROM {} WHERE \"time\" >= to_timestamp_nanos({lo}) AND \"time\" < to_timestamp_nanos({hi}) GROUP BY {}",
        select.join(", "),
        quote(source),
        group.join(", ")
    )
}

async fn recompute(
    engine: &Arc<Engine>,
    executor: &QueryExecutor,
    db: &str,
    source: &str,
    rules: &[RollupRule],
    ranges: &[(i64, i64)],
) -> Result<usize, String> {
    let catalog = engine.catalog();
    let Some(def) = catalog.table(db, source) else {
        return Ok(0);
    };
    let mut tags = Vec::new();
    let mut fields = Vec::new();
    for c in &def.columns {
        match c.ty {
            ColumnType::Tag => tags.push(c.name.clone()),
            ColumnType::Field(FieldType::F64 | FieldType::I64 | FieldType::U64) => {
                fields.push(c.name.clone())
            }
            _ => {}
        }
    }
    if fields.is_empty() {
        return Ok(0);
    }
    let cutoff = engine
        .snapshot()
        .retention
        .cutoff(db, source, talo_engine::retention::now_ns());
    let who = Principal::system();
    let mut written = 0;
    for rule in rules {
        for (lo, hi) in spans(ranges, rule.interval_ns(), cutoff) {
            let sql = rollup_sql(source, &tags, &fields, rule, lo, hi);
            let out = executor
                .run(engine, &who, db, &sql)
                .await
                .map_err(|e| format!("{}: {e}", rule.table))?;
            written += write_rows(engine, db, &rule.table, &tags, &out.batches).await?;
        }
    }
    Ok(written)
}

/// Write the result rows into the rollup table; durable when this returns.
async fn write_rows(
    engine: &Arc<Engine>,
    db: &str,
    table: &str,
    tags: &[String],
    batches: &[RecordBatch],
) -> Result<usize, String> {
    let mut builder = engine.batch_builder(db).map_err(|e| e.to_string())?;
    let mut rows = 0usize;
    for b in batches {
        let tag_cols: Vec<_> = tags
            .iter()
            .map(|t| {
                b.column_by_name(t)
                    .map(|c| cast(c, &DataType::Utf8).map_err(|e| e.to_string()))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let time = b
            .column_by_name("time")
            .ok_or("rollup result without time")?
            .as_primitive_opt::<TimestampNanosecondType>()
            .ok_or("rollup time is not a nanosecond timestamp")?;
        let schema = b.schema();
        let value_cols: Vec<(&str, &Arc<dyn Array>)> = schema
            .fields()
            .iter()
            .zip(b.columns())
            .skip(tags.len() + 1)
            .map(|(f, c)| (f.name().as_str(), c))
            .collect();
        for i in 0..b.num_rows() {
            if time.is_null(i) {
                continue;
            }
            let mut row_tags = Vec::new();
            for (name, col) in tags.iter().zip(&tag_cols) {
                if let Some(c) = col
                    && c.is_valid(i)
                {
                    row_tags.push((name.as_str(), c.as_string::<i32>().value(i)));
                }
            }
            let mut row_fields = Vec::new();
            for (name, col) in &value_cols {
                if col.is_null(i) {
                    continue;
                }
                let v = match col.data_type() {
                    DataType::Float64 => {
                        FieldValue::F64(col.as_primitive::<Float64Type>().value(i))
                    }
                    DataType::Int64 => FieldValue::I64(col.as_primitive::<Int64Type>().value(i)),
                    DataType::UInt64 => FieldValue::U64(col.as_primitive::<UInt64Type>().value(i)),
                    other => return Err(format!("{name}: unexpected aggregate type {other}")),
                };
                if let FieldValue::F64(x) = v
                    && !x.is_finite()
                {
                    continue; // a sum that overflowed f64
                }
                row_fields.push((*name, v));
            }
            if row_fields.is_empty() {
                continue;
            }
            builder
                .push_row(table, &row_tags, &row_fields, time.value(i), rows as u32)
                .map_err(|e| format!("{table}: {e}"))?;
            rows += 1;
        }
    }
    if rows == 0 {
        return Ok(0);
    }
    let batch = builder.finish().map_err(|e| e.to_string())?;
    let outcome = engine
        .submit(batch)
        .map_err(|e| e.to_string())?
        .wait()
        .await
        .map_err(|e| e.to_string())?;
    if let Some(r) = outcome.rejected.first() {
        return Err(format!(
            "{table}: {} rows refused, e.g. {r:?}",
            outcome.rejected.len()
        ));
    }
    Ok(outcome.rows_written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000_000;

    #[test]
    fn spans_cover_whole_intervals_and_merge() {
        // two ranges inside neighbouring 5-minute intervals → one span of two intervals
        let s = spans(&[(MIN, 2 * MIN), (6 * MIN, 6 * MIN)], 5 * MIN, None);
        assert_eq!(s, vec![(0, 10 * MIN)]);
        // an exact boundary belongs to the interval it starts
        let s = spans(&[(5 * MIN, 5 * MIN)], 5 * MIN, None);
        assert_eq!(s, vec![(5 * MIN, 10 * MIN)]);
        // before 1970
        let s = spans(&[(-MIN, -MIN)], 5 * MIN, None);
        assert_eq!(s, vec![(-5 * MIN, 0)]);
    }

    #[test]
    fn spans_skip_intervals_before_the_cutoff() {
        // the interval holding the cutoff would be partial: start at the next one
        let s = spans(&[(0, 20 * MIN)], 5 * MIN, Some(7 * MIN));
        assert_eq!(s, vec![(10 * MIN, 25 * MIN)]);
        assert!(spans(&[(0, MIN)], 5 * MIN, Some(7 * MIN)).is_empty());
    }

    #[test]
    fn long_spans_are_cut_into_days() {
        let day = MAX_SPAN_NS;
        let s = spans(&[(0, 3 * day - 1)], 5 * MIN, None);
        assert_eq!(s, vec![(0, day), (day, 2 * day), (2 * day, 3 * day)]);
        // an interval longer than the piece size is one piece
        let s = spans(&[(0, 1)], 7 * day, None);
        assert_eq!(s, vec![(0, 7 * day)]);
    }

    #[test]
    fn rules_are_checked() {
        let rule = RollupRule {
            db: "house".into(),
            source: "env".into(),
            table: "env_5m".into(),
            interval: Duration::from_secs(300),
            aggregates: vec![Aggregate::Avg],
        };
        assert!(rule.validate(std::slice::from_ref(&rule)).is_ok());
        let same = RollupRule {
            table: "env".into(),
            ..rule.clone()
        };
        assert!(same.validate(std::slice::from_ref(&same)).is_err());
        let twice = [rule.clone(), rule.clone()];
        assert!(rule.validate(&twice).is_err());
        let of_rollup = RollupRule {
            source: "env_5m".into(),
            table: "env_1h".into(),
            ..rule.clone()
        };
        assert!(rule.validate(&[rule.clone(), of_rollup]).is_err());
        assert!(Aggregate::parse("median").is_err());
        assert_eq!(Aggregate::parse("AVG"), Ok(Aggregate::Avg));
    }

    #[test]
    fn sql_quotes_names() {
        let rule = RollupRule {
            db: "d".into(),
            source: "s".into(),
            table: "t".into(),
            interval: Duration::from_secs(60),
            aggregates: vec![Aggregate::Max],
        };
        let sql = rollup_sql("s", &["ro\"om".into()], &["temp".into()], &rule, 0, 10);
        assert!(sql.contains("\"ro\"\"om\""), "{sql}");
        assert!(sql.contains("max(\"temp\") AS \"temp_max\""), "{sql}");
    }
}
