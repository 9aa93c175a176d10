//! talo's SQL answers equal DuckDB's on the same generated sensor data, with the data
//! split between Parquet segments and the buffer and some points rewritten, then again
//! once it has settled into one segment per table.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn answers_match_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/differential.py");
    let status = std::process::Command::new(python())
        .arg(&script)
        .args(["generate", d])
        .status()
        .unwrap();
    assert!(status.success());
    let data = dir.path().join("data");
    // part 1 ends up in segments (SIGTERM flushes), part 2 in the buffer on top of them
    let talo = Talo::start_ready(&data, &[]);
    let (s, t) = post(
        &talo.url("/api/v1/write?db=house&precision=s"),
        &std::fs::read(dir.path().join("part1.lp")).unwrap(),
    )
    .unwrap();
    assert_eq!(s, 204, "{t}");
    assert!(talo.terminate(Duration::from_secs(30)).success());
    let talo = Talo::start_ready(&data, &[]);
    let (s, t) = post(
        &talo.url("/api/v1/write?db=house&precision=s"),
        &std::fs::read(dir.path().join("part2.lp")).unwrap(),
    )
    .unwrap();
    assert_eq!(s, 204, "{t}");

    compare(d, &talo);

    // settled: part 2 flushed, then each table's two segments merged into one that
    // overlaps nothing, so the latest values come from its kept latest rows
    assert!(talo.terminate(Duration::from_secs(30)).success());
    let talo = Talo::start_ready(
        &data,
        &[
            "--compaction-interval",
            "100ms",
            "--compaction-min-files",
            "2",
        ],
    );
    wait_metric(&talo, "talo_segments", |v| v == 2.0);
    assert_eq!(metric(&talo, "talo_buffer_rows"), Some(0.0));
    // the merged segments' series runs are computed in the background after the merge:
    // the queries find them at hand (as a dashboard's would a second later)
    wait_metric(&talo, "talo_query_series_index_segments", |v| v == 2.0);
    compare(d, &talo);
    assert_eq!(metric(&talo, "talo_query_latest_rows_segments"), Some(1.0));
    // each query was asked twice over unchanged segments (and, before, over the buffer:
    // never): the second ran the kept physical plan where it may: the two counts, the
    // hourly average, the 5-minute max and the room's count/sum/min over a time range
    // (its tag filter answered by the series runs, the scan takes no dynamic filter
    // from `min`); not the three "latest" queries (kept latest rows) nor the join
    // (dynamic filters)
    let reused = metric(&talo, "talo_query_physical_plan_reuses_total").unwrap();
    assert_eq!(reused, 5.0);
    // of those, the two reading few rows (one sensor's, one room's, selected by their
    // series runs) ran in place, on the HTTP runtime
    let in_place = metric(&talo, "talo_query_inline_runs_total").unwrap();
    assert_eq!(in_place, 2.0);
}

/// Every query of `differential.py` answers on `talo` as DuckDB does.
fn compare(d: &str, talo: &Talo) {
    let v = py_json("differential.py", &["compare", d, &talo.url(""), "house"]);
    let mut failed = Vec::new();
    for (name, r) in v.as_object().unwrap() {
        assert!(r["rows"].as_u64().unwrap() > 0, "{name} returned nothing");
        if r["ok"] != true {
            failed.push(format!(
                "{name}: duckdb {} talo {} again {}",
                r["duckdb"], r["talo"], r["again"]
            ));
        }
    }
    assert!(failed.is_empty(), "answers differ:\n{}", failed.join("\n"));
    assert_eq!(v.as_object().unwrap().len(), 9);
}
