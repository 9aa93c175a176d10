//! The query scan path: the dashboard queries through talo's query executor (catalog,
//! `SegmentTable` over buffer ∪ segments with time pruning and the metadata cache, the
//! dedup check, the query runtime) against stock DataFusion reading the very same
//! Parquet segment files (`read_parquet`, DataFusion's defaults), in one run.
//!
//! Run: `cargo bench --bench query_scan` (1000 sensors × 8 h every 10 s = 2.88 M rows,
//! flushed and compacted, so both sides read the same settled files). Each query's
//! answer is checked equal on both sides before it is timed.

#[path = "workload.rs"]
mod workload;

use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use talo_engine::{Catalog, Engine, EngineConfig, WalSync};
use talo_query::{Auth, QueryConfig, QueryExecutor};
use workload::{INTERVAL_NS, START_NS, Workload};

const SENSORS: usize = 1_000;
const STEPS: usize = 8 * 360;

/// RFC 3339 UTC time of `ns` (whole seconds), as SQL literals take it.
fn iso(ns: i64) -> String {
    let t = arrow::temporal_conversions::timestamp_ns_to_datetime(ns).expect("time in range");
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn queries() -> Vec<(&'static str, String)> {
    let end = START_NS + STEPS as i64 * INTERVAL_NS;
    let last_hour = iso(end - 3_600_000_000_000);
    let start = iso(START_NS);
    vec![
        (
            "last value per sensor (last hour)",
            format!(
                "SELECT sensor, last_value(temperature ORDER BY time) AS v FROM env \
                 WHERE time >= '{last_hour}' GROUP BY sensor ORDER BY sensor"
            ),
        ),
        (
            "one sensor hourly",
            format!(
                "SELECT date_bin(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env \
                 WHERE sensor = 's000007' AND time >= '{start}' GROUP BY h ORDER BY h"
            ),
        ),
        (
            "5-min max per building",
            format!(
                "SELECT building, date_bin(INTERVAL '5 minutes', time) AS b, max(co2) AS v \
                 FROM env WHERE time >= '{start}' GROUP BY building, b ORDER BY building, b"
            ),
        ),
        (
            "all buildings hourly",
            format!(
                "SELECT building, date_bin(INTERVAL '1 hour', time) AS h, avg(temperature) AS v \
                 FROM env WHERE time >= '{start}' GROUP BY building, h ORDER BY building, h"
            ),
        ),
    ]
}

/// Rows as text, for comparing the two sides' answers.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default();
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("formatter"))
            .collect();
        for i in 0..b.num_rows() {
            let cells: Vec<String> = fmts.iter().map(|f| f.value(i).to_string()).collect();
            out.push(cells.join("|"));
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_path_buf(),
        wal_sync: WalSync::None,
        compaction: talo_engine::CompactionConfig {
            interval: None,
            ..Default::default()
        },
        ..EngineConfig::default()
    })
    .expect("open");
    let mut w = Workload::new(SENSORS, 7);
    let catalog = Arc::new(Catalog::new());
    for _ in 0..STEPS {
        engine
            .write_blocking(w.batch("bench", Arc::clone(&catalog)))
            .expect("write");
    }
    engine.flush_blocking().expect("flush");
    while engine.compact_blocking().expect("compact") > 0 {}
    let snapshot = engine.snapshot();
    let files: Vec<String> = snapshot
        .segments
        .iter()
        .map(|s| dir.path().join(&s.path).to_string_lossy().into_owned())
        .collect();
    eprintln!("{} rows in {} segment files", SENSORS * STEPS, files.len());

    let qcfg = QueryConfig::default();
    let threads = qcfg.threads;
    let executor = QueryExecutor::new(qcfg).expect("query runtime");
    let who = Auth::default()
        .principal(&axum::http::HeaderMap::new(), None)
        .expect("auth off");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(threads));
    rt.block_on(async {
        let df = ctx
            .read_parquet(files.clone(), ParquetReadOptions::default())
            .await
            .expect("read_parquet");
        ctx.register_table("env", df.into_view()).expect("register");
    });

    let talo = |sql: &str| {
        rt.block_on(executor.run(&engine, &who, "bench", sql))
            .expect("talo query")
            .batches
    };
    let stock = |sql: &str| {
        rt.block_on(async { ctx.sql(sql).await?.collect().await })
            .expect("datafusion query")
    };

    let mut g = c.benchmark_group("query_scan");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(10));
    for (name, sql) in queries() {
        let (a, b) = (rows(&talo(&sql)), rows(&stock(&sql)));
        assert!(!a.is_empty(), "{name}: no rows");
        assert_eq!(a, b, "{name}: talo and DataFusion disagree");
        g.bench_function(format!("{name}/talo"), |bch| bch.iter(|| talo(&sql)));
        g.bench_function(format!("{name}/datafusion_parquet"), |bch| {
            bch.iter(|| stock(&sql))
        });
    }
    g.finish();
    engine.halt();
}

criterion_group!(benches, bench);
criterion_main!(benches);
