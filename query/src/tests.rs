//! Handler tests without a socket (`app().oneshot`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;

/// A ready server state over a fresh engine in a temp dir.
fn setup_with(http: HttpConfig, query: QueryConfig) -> (tempfile::TempDir, Arc<AppState>, Router) {
    let dir = tempfile::tempdir().unwrap();
    // compaction off: the tests lay out segments (overlapping ones included) on purpose
    let engine = Engine::open(talo_engine::EngineConfig {
        data_dir: dir.path().to_path_buf(),
        compaction: talo_engine::CompactionConfig {
            interval: None,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let state = AppState::new(http, query).unwrap();
    state.set_engine(engine);
    let app = app(Arc::clone(&state));
    (dir, state, app)
}

fn setup() -> (tempfile::TempDir, Arc<AppState>, Router) {
    setup_with(
        HttpConfig {
            max_body_bytes: 4096,
            auth: Auth::default(),
        },
        QueryConfig::default(),
    )
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&bytes).into(),
        ))
    };
    (status, v)
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).body(body.into()).unwrap()
}

#[tokio::test]
async fn not_ready_until_engine_is_set() {
    let state = AppState::new(HttpConfig::default(), QueryConfig::default()).unwrap();
    let app = app(Arc::clone(&state));
    let (s, v) = send(&app, Request::get("/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"].as_str().unwrap().contains("replayed"));
    let (s, _) = send(&app, post("/api/v1/write", "m f=1")).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = send(&app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    // the OpenAPI document names every route the router serves
    let (s, v) = send(
        &app,
        Request::get("/api/v1/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["openapi"], "3.0.3");
    for path in [
        "/api/v1/query",
        "/api/v1/write",
        "/write",
        "/api/v2/write",
        "/api/v3/write_lp",
        "/api/v1/databases",
        "/api/v1/tables",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(
            v["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn writes_partial_writes_and_catalog() {
    let (_d, state, app) = setup();
    let (s, _) = send(
        &app,
        post(
            "/api/v1/write?db=house",
            "env,room=a t=1 1\nenv,room=b t=2 2\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = send(
        &app,
        post(
            "/api/v1/write?db=house&precision=s",
            "env t=3 3\nenv t=\"x\" 4\nbroken\nenv t=5\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["rows_written"], 2);
    let lines: Vec<u64> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3]);
    assert!(
        v["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("type conflict")
    );
    // accept_partial=false stores nothing
    let (s, v) = send(
        &app,
        post(
            "/api/v3/write_lp?db=house&accept_partial=false",
            "env t=6 6\nenv t=true 7\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["rows_written"], 0);
    let snap = state.engine().unwrap().snapshot();
    assert_eq!(snap.buffered_rows(), 4);
    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("talo_db_rows_written_total{db=\"house\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("talo_db_lines_rejected_total{db=\"house\"} 3"),
        "{text}"
    );
    assert!(text.contains("talo_rows_written_total 4"), "{text}");

    let (s, v) = send(
        &app,
        Request::get("/api/v1/tables?db=house")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let cols = &v["tables"][0]["columns"];
    assert_eq!(cols[0]["name"], "time");
    assert_eq!(
        cols[1],
        serde_json::json!({"name": "room", "type": "tag", "role": "tag"})
    );
    assert_eq!(
        cols[2],
        serde_json::json!({"name": "t", "type": "float", "role": "field"})
    );
    let (s, _) = send(
        &app,
        Request::get("/api/v1/tables?db=nope")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn influx_compatible_endpoints() {
    let (_d, state, app) = setup();
    for uri in [
        "/write?db=a&precision=ms",
        "/api/v2/write?bucket=a/autogen&org=x&precision=ms",
        "/api/v3/write_lp?db=a&precision=millisecond",
    ] {
        let (s, v) = send(&app, post(uri, "cpu,host=h usage=1.5 1700000000000")).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{uri}: {v}");
    }
    let snap = state.engine().unwrap().snapshot();
    let t = snap.table("a", "cpu").unwrap();
    assert_eq!(
        t.chunks.iter().map(|c| c.batch.num_rows()).sum::<usize>(),
        3
    );
    assert_eq!(t.chunks[0].min_time, 1_700_000_000_000_000_000);
    for uri in ["/write", "/api/v2/write", "/api/v3/write_lp"] {
        let (s, v) = send(&app, post(uri, "cpu f=1")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert!(v["error"].as_str().unwrap().contains("required"));
    }
}

#[tokio::test]
async fn hostile_input() {
    let (_d, _state, app) = setup();
    // oversized body
    let (s, v) = send(&app, post("/api/v1/write?db=x", vec![b'a'; 5000])).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    // gzip bomb: small compressed, large decompressed
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![b'#'; 1 << 20]).unwrap();
    let gz = enc.finish().unwrap();
    assert!(gz.len() < 4096);
    let req = Request::post("/api/v1/write?db=x")
        .header("content-encoding", "gzip")
        .body(Body::from(gz))
        .unwrap();
    let (s, _) = send(&app, req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // not gzip at all
    let req = Request::post("/api/v1/write?db=x")
        .header("content-encoding", "gzip")
        .body(Body::from("m f=1"))
        .unwrap();
    let (s, v) = send(&app, req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("gzip"));
    // gzip that is fine
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, b"m f=1 1\n").unwrap();
    let req = Request::post("/api/v1/write?db=x")
        .header("content-encoding", "gzip")
        .body(Body::from(enc.finish().unwrap()))
        .unwrap();
    assert_eq!(send(&app, req).await.0, StatusCode::NO_CONTENT);
    // path-escaping database names, bad precision, binary garbage
    for uri in [
        "/api/v1/write?db=..",
        "/api/v1/write?db=%2Fetc",
        "/api/v1/write?db=a%00b",
        "/api/v1/write?db=x&precision=weeks",
    ] {
        let (s, v) = send(&app, post(uri, "m f=1")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
    }
    let (s, v) = send(
        &app,
        post("/api/v1/write?db=x", vec![0xffu8, 0, 1, b'\n', 0x80]),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = send(&app, Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn sql(app: &Router, db: &str, q: &str) -> (StatusCode, serde_json::Value) {
    let uri = format!("/api/v1/query?db={db}&sql={}", urlencode(q));
    send(app, Request::get(uri).body(Body::empty()).unwrap()).await
}

/// `sql` that must answer 200; the rows.
async fn sql_ok(app: &Router, db: &str, q: &str) -> serde_json::Value {
    let (s, v) = sql(app, db, q).await;
    assert_eq!(s, StatusCode::OK, "{q}: {v}");
    v
}

/// The most partitions any operator of `plan` runs in.
fn most_partitions(plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>) -> usize {
    use datafusion::common::tree_node::TreeNode;
    let mut most = 0;
    let _ = plan.apply(|node| {
        most = most.max(node.properties().output_partitioning().partition_count());
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    most
}

/// The files the Parquet scans of `plan` read, each with the Arrow schema it was handed.
fn file_schemas(
    plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Vec<(String, Option<arrow::datatypes::SchemaRef>)> {
    use datafusion::common::tree_node::TreeNode;
    use datafusion::datasource::physical_plan::ParquetSource;
    use datafusion::datasource::source::DataSourceExec;
    let mut files = Vec::new();
    let _ = plan.apply(|node| {
        if let Some((config, _)) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|e| e.downcast_to_file_source::<ParquetSource>())
        {
            for f in config.file_groups.iter().flat_map(|g| g.files()) {
                let path = f.object_meta.location.to_string();
                files.push((path, f.arrow_schema.clone()));
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    files
}

/// The body of `q`'s answer in `format`, which must be 200.
async fn answer_body(app: &Router, db: &str, format: &str, q: &str) -> axum::body::Bytes {
    let uri = format!("/api/v1/query?db={db}&format={format}&sql={}", urlencode(q));
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{q}");
    axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap()
}

/// `sql` as JSON lines, which must answer 200: one value per row.
async fn jsonl_ok(app: &Router, db: &str, q: &str) -> Vec<serde_json::Value> {
    answer_body(app, db, "jsonl", q)
        .await
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sees_buffer_and_segments_with_one_row_per_point() {
    let (_d, state, app) = setup();
    let w = |body: &'static str| post("/api/v1/write?db=house&precision=s", body);
    assert_eq!(
        send(&app, w("env,room=a t=1,h=10 100\nenv,room=b t=2 100\n"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    // same point again in the buffer: t overwritten, h kept
    assert_eq!(
        send(&app, w("env,room=a t=5 100\n")).await.0,
        StatusCode::NO_CONTENT
    );
    let v = sql_ok(&app, "house", "SELECT room, t, h FROM env ORDER BY room").await;
    assert_eq!(
        v,
        serde_json::json!([{"room":"a","t":5.0,"h":10.0},{"room":"b","t":2.0,"h":null}])
    );
    // flush, then write the same point once more: segment + buffer overlap
    state.engine().unwrap().flush().await.unwrap();
    assert_eq!(
        send(&app, w("env,room=b h=7 100\nenv,room=c t=9 200\n"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let (s, v) = sql(
        &app,
        "house",
        "SELECT room, t, h, time FROM env ORDER BY room",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    assert_eq!(
        v[1],
        serde_json::json!({"room":"b","t":2.0,"h":7.0,"time":"1970-01-01T00:01:40Z"})
    );
    // everything flushed: segments only, still one row per point
    state.engine().unwrap().flush().await.unwrap();
    let (_, v) = sql(
        &app,
        "house",
        "SELECT count(*) AS n, sum(t) AS st FROM house.env",
    )
    .await;
    assert_eq!(v, serde_json::json!([{"n": 3, "st": 16.0}]));
    // time predicates, time_bucket and date_bin
    let v = sql_ok(&app, "house", "SELECT time_bucket(INTERVAL '5 minutes', time) AS b, count(*) AS n FROM env WHERE time >= '1970-01-01T00:01:40Z' AND time < '1970-01-01T00:03:00Z' GROUP BY b ORDER BY b").await;
    assert_eq!(v, serde_json::json!([{"b":"1970-01-01T00:00:00Z","n":2}]));
    let (_, v) = sql(
        &app,
        "house",
        "SELECT count(*) AS n FROM env WHERE time > '1970-01-01T00:02:00Z'",
    )
    .await;
    assert_eq!(v, serde_json::json!([{"n": 1}]));
    // the segments' footers were kept for the next query (two segments were flushed)
    assert_eq!(state.executor.cached_segment_footers(), 2);
    // with their page indexes, which time filters use (DataFusion's opener would
    // otherwise read and decode them again for every query)
    assert_eq!(state.executor.cached_page_indexes(), 2);
}

/// The physical plan `EXPLAIN` gives for `q`.
async fn physical_plan(app: &Router, db: &str, q: &str) -> String {
    plan_text(
        &sql_ok(app, db, &format!("EXPLAIN {q}")).await,
        "physical_plan",
    )
}

/// Each row of a JSON answer as its `cols` values (JSON text) joined by spaces.
fn answer_rows(v: &serde_json::Value, cols: &[&str]) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| r[*c].to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The text of the plan of an EXPLAIN (ANALYZE) answer.
fn plan_text(v: &serde_json::Value, plan_type: &str) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .find(|r| r["plan_type"] == plan_type)
        .and_then(|r| r["plan"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The `predicate=` of each Parquet scan in an EXPLAIN answer, split into its terms.
fn scan_predicates(v: &serde_json::Value) -> Vec<Vec<String>> {
    plan_text(v, "physical_plan")
        .lines()
        .filter(|l| l.contains("file_type=parquet"))
        .filter_map(|l| {
            let p = l.split(", predicate=").nth(1)?;
            let p = p.split(", pruning_predicate=").next()?;
            Some(p.split(" AND ").map(str::to_string).collect())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_scans_prune_with_each_filter_once() {
    let (_d, state, app) = setup();
    let body = "env,room=a t=1 100\nenv,room=b t=2 100\nenv,room=a t=3 200\n";
    let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();
    // (time bounds, the terms the scan's predicate must have, rows dropped while
    // decoding, sum(t))
    let cases = [
        // bounds cutting the segment (100 s ..= 200 s) prune row groups and pages
        (
            "time >= '1970-01-01T00:02:30Z' AND time < '1970-01-01T00:05:00Z'",
            vec!["room", "time@"],
            2,
            3.0,
        ),
        // bounds holding the whole segment prune nothing: not in the predicate at all
        (
            "time >= '1970-01-01T00:01:00Z' AND time < '1970-01-01T00:05:00Z'",
            vec!["room"],
            1,
            4.0,
        ),
    ];
    for (bounds, want, dropped, sum) in cases {
        let q = format!("SELECT sum(t) AS st FROM env WHERE room = 'a' AND {bounds}");
        let v = sql_ok(&app, "house", &format!("EXPLAIN {q}")).await;
        let scans = scan_predicates(&v);
        assert_eq!(scans.len(), 1, "{v}");
        // every filter needed reaches the scan, and only once: DataFusion's filter
        // pushdown ANDs the FilterExec onto the predicate the table provider already set
        let terms = &scans[0];
        assert_eq!(terms.len(), want.len(), "{bounds}: {terms:?}");
        for w in &want {
            assert!(terms.iter().any(|t| t.contains(w)), "{bounds}: {terms:?}");
        }
        // a tag filter runs while decoding (the other columns are decoded only for the
        // rows that pass), so no FilterExec is left above the scan
        let v = sql_ok(&app, "house", &format!("EXPLAIN ANALYZE {q}")).await;
        let plan = plan_text(&v, "Plan with Metrics");
        let pruned = format!("pushdown_rows_pruned={dropped},");
        assert!(plan.contains(&pruned), "{bounds}: {plan}");
        assert!(!plan.contains("FilterExec"), "{plan}");
        let v = sql_ok(&app, "house", &q).await;
        assert_eq!(v, serde_json::json!([{"st": sum}]), "{bounds}");
    }
    // segment scans group their files themselves (`scan::file_groups`): DataFusion's
    // regrouping would cut them into byte ranges again
    let v = sql_ok(
        &app,
        "house",
        "SELECT value FROM information_schema.df_settings \
         WHERE name = 'datafusion.optimizer.repartition_file_scans'",
    )
    .await;
    assert_eq!(v, serde_json::json!([{"value": "false"}]));
}

/// Tag filters run while decoding also over files written before the tag existed: there
/// the tag reads as NULL, as everywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_while_decoding_over_files_older_than_the_tag() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    for body in [
        "env,room=a t=1 100\nenv,room=b t=2 100\n",
        "env,room=a,floor=1 t=3 200\nenv,room=b,floor=2 t=4 200\n",
    ] {
        let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        engine.flush().await.unwrap();
    }
    let cases = [
        ("floor = '1'", 3.0),
        ("floor IS NULL", 3.0),
        ("floor <> '1'", 4.0),
        ("room = 'a'", 4.0),
        ("room = 'a' AND floor IS NULL", 1.0),
        ("room = 'b' OR floor = '1'", 9.0),
    ];
    for (cond, sum) in cases {
        let q = format!("SELECT sum(t) AS st FROM env WHERE {cond}");
        let v = sql_ok(&app, "house", &format!("EXPLAIN {q}")).await;
        let plan = plan_text(&v, "physical_plan");
        assert_eq!(plan.matches("file_type=parquet").count(), 1, "{plan}");
        assert_eq!(
            plan.matches(".parquet").count(),
            2,
            "both files, one scan: {plan}"
        );
        assert!(!plan.contains("FilterExec"), "{cond}: {plan}");
        let v = sql_ok(&app, "house", &q).await;
        assert_eq!(v, serde_json::json!([{"st": sum}]), "{cond}");
    }
}

/// Filters on tags alone select rows by the segments' series runs (`series.rs`) once
/// those are computed: no predicate is left for the reader, a file where no series
/// passes is not read, and every answer is the one the row-by-row filter gave before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_select_rows_by_series_runs() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    // (room, floor, second, t): 40 points per series, an old file without floors
    let mut rows: Vec<(&str, Option<&str>, i64, i64)> = Vec::new();
    for (k, room) in ["a", "b", "c"].into_iter().enumerate() {
        rows.extend((0..40).map(|i| (room, None, 100 + i, 1000 * k as i64 + i)));
    }
    for (k, (room, floor)) in [("a", "1"), ("b", "2"), ("c", "1")].into_iter().enumerate() {
        rows.extend((0..40).map(|i| (room, Some(floor), 1000 + i, 5000 + 100 * k as i64 + i)));
    }
    for file in [&rows[..120], &rows[120..]] {
        let body: String = file
            .iter()
            .map(|(room, floor, sec, t)| match floor {
                Some(f) => format!("env,room={room},floor={f} t={t}i {sec}\n"),
                None => format!("env,room={room} t={t}i {sec}\n"),
            })
            .collect();
        let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        engine.flush().await.unwrap();
    }
    type Row<'a> = (&'a str, Option<&'a str>, i64, i64);
    type Pass = Box<dyn Fn(&Row) -> bool>;
    let cases: Vec<(&str, Pass, usize)> = vec![
        ("room = 'a'", Box::new(|r| r.0 == "a"), 2),
        ("floor = '1'", Box::new(|r| r.1 == Some("1")), 1),
        ("floor IS NULL", Box::new(|r| r.1.is_none()), 1),
        ("floor <> '1'", Box::new(|r| r.1 == Some("2")), 1),
        (
            "room IN ('b', 'c') AND floor IS NOT NULL",
            Box::new(|r| r.0 != "a" && r.1.is_some()),
            1,
        ),
        (
            "room = 'b' OR floor = '1'",
            Box::new(|r| r.0 == "b" || r.1 == Some("1")),
            2,
        ),
        ("room LIKE 'z%'", Box::new(|_| false), 0),
        (
            "room = 'c' AND time >= '1970-01-01T00:01:50Z'",
            Box::new(|r| r.0 == "c" && r.2 >= 110),
            2,
        ),
    ];
    let query = |cond: &str| format!("SELECT count(*) AS n, sum(t) AS st FROM env WHERE {cond}");
    let want = |rows: &[Row], f: &dyn Fn(&Row) -> bool| {
        let hit: Vec<&Row> = rows.iter().filter(|r| f(r)).collect();
        let st = (!hit.is_empty()).then(|| hit.iter().map(|r| r.3).sum::<i64>());
        serde_json::json!([{"n": hit.len(), "st": st}])
    };
    // the first queries scan as before (and start computing the runs)
    for (cond, f, _) in &cases {
        assert_eq!(
            sql_ok(&app, "house", &query(cond)).await,
            want(&rows, f),
            "{cond}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while state.executor.series_runs_kept().0 < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "series runs not computed"
        );
        sql_ok(&app, "house", &query("room = 'a'")).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for (cond, f, files) in &cases {
        let plan = physical_plan(&app, "house", &query(cond)).await;
        assert_eq!(plan.matches(".parquet").count(), *files, "{cond}: {plan}");
        if !cond.contains("time") {
            assert!(!plan.contains("predicate="), "{cond}: {plan}");
        }
        assert!(!plan.contains("FilterExec"), "{cond}: {plan}");
        assert_eq!(
            sql_ok(&app, "house", &query(cond)).await,
            want(&rows, f),
            "{cond}"
        );
        // planned in one partition (few rows selected) and kept: the same answer again,
        // run in place (not handed to the query runtime)
        let reuses = state.executor.plan_cache_stats().physical_reuses;
        let in_place = state.executor.inline_runs();
        assert_eq!(
            sql_ok(&app, "house", &query(cond)).await,
            want(&rows, f),
            "{cond} (again)"
        );
        assert_eq!(
            state.executor.plan_cache_stats().physical_reuses,
            reuses + 1,
            "{cond}"
        );
        assert_eq!(state.executor.inline_runs(), in_place + 1, "{cond}");
        assert_eq!(
            state
                .executor
                .kept_physical("house", &query(cond))
                .map(|p| most_partitions(&p)),
            Some(1),
            "{cond}"
        );
        // each file read by its runs is handed its Arrow schema, the one the Parquet
        // reader derives from that file (the old file has no `floor`)
        let kept = state.executor.kept_physical("house", &query(cond)).unwrap();
        let read = file_schemas(&kept);
        assert_eq!(read.len(), *files, "{cond}");
        for (path, schema) in read {
            let path = std::path::Path::new("/").join(path);
            let file = std::fs::File::open(&path).unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file);
            let want = Arc::clone(reader.unwrap().schema());
            assert_eq!(schema, Some(want), "{cond}: {}", path.display());
        }
        // streamed (JSON lines) in place too: the same rows
        let lines = jsonl_ok(&app, "house", &query(cond)).await;
        assert_eq!(serde_json::Value::Array(lines), want(&rows, f), "{cond}");
        assert_eq!(state.executor.inline_runs(), in_place + 2, "{cond}");
    }
    // a cross join of few rows may give many more: kept, but never run in place
    let join = "SELECT count(*) AS n FROM env x CROSS JOIN env y \
                WHERE x.room = 'a' AND y.room = 'a'";
    let reuses = state.executor.plan_cache_stats().physical_reuses;
    let in_place = state.executor.inline_runs();
    for _ in 0..3 {
        assert_eq!(
            sql_ok(&app, "house", join).await,
            serde_json::json!([{"n": 80 * 80}])
        );
    }
    assert_eq!(state.executor.inline_runs(), in_place);
    assert!(state.executor.plan_cache_stats().physical_reuses > reuses);
    // a rewrite of b's first point in the buffer, over the newer file: merged, by runs too
    let (s, _) = send(
        &app,
        post(
            "/api/v1/write?db=house&precision=s",
            "env,room=b,floor=2 t=7i 1000\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for r in rows.iter_mut().filter(|r| r.0 == "b" && r.2 == 1000) {
        r.3 = 7;
    }
    for (cond, f, _) in &cases {
        assert_eq!(
            sql_ok(&app, "house", &query(cond)).await,
            want(&rows, f),
            "{cond} (merged)"
        );
    }
    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("\ntalo_query_series_index_segments 2\n"),
        "{text}"
    );
}

/// Filters on tags are exact filters of the table: over clean segments the reader runs
/// them while decoding, and the plan DataFusion starts from has no filter, and no
/// projection dropping the tag, left to push down; where the buffer or overlapping
/// segments are merged (and where kept latest rows stand in for segments) the table
/// filters above its scan itself. Every answer is checked either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filters_are_applied_by_the_table() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    let body: String = (0..10)
        .flat_map(|i| {
            let t = 100 + 10 * i;
            [
                format!("env,room=a,floor=1 t={i} {t}\n"),
                format!("env,room=b,floor=2 t={} {t}\n", 100 + i),
            ]
        })
        .collect();
    let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    engine.flush().await.unwrap();
    let q = "SELECT date_bin(INTERVAL '1 minute', time) AS m, sum(t) AS st FROM env \
             WHERE room = 'a' GROUP BY m ORDER BY m";
    let v = sql_ok(&app, "house", &format!("EXPLAIN VERBOSE {q}")).await;
    let initial = plan_text(&v, "initial_physical_plan");
    assert!(!initial.contains("FilterExec"), "{initial}");
    assert!(initial.contains("predicate=room@"), "{initial}");
    assert!(!initial.contains("room@1 as room"), "{initial}");
    let want = serde_json::json!([
        {"m": "1970-01-01T00:01:00Z", "st": 1.0},
        {"m": "1970-01-01T00:02:00Z", "st": 27.0},
        {"m": "1970-01-01T00:03:00Z", "st": 17.0}
    ]);
    assert_eq!(sql_ok(&app, "house", q).await, want);

    // a rewrite of a point of room b in the buffer, over the segment: merged, then
    // filtered above; the tag is read for the filter though the query does not return it
    let (s, _) = send(
        &app,
        post(
            "/api/v1/write?db=house&precision=s",
            "env,room=b,floor=2 t=7 150\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let plan = physical_plan(&app, "house", q).await;
    assert!(plan.contains("DedupExec"), "{plan}");
    assert!(plan.contains("FilterExec"), "{plan}");
    assert_eq!(sql_ok(&app, "house", q).await, want);
    let b = "SELECT sum(t) AS st FROM env WHERE room = 'b' AND floor = '2'";
    assert_eq!(
        sql_ok(&app, "house", b).await,
        serde_json::json!([{"st": 1045.0 - 105.0 + 7.0}])
    );
    let latest = "SELECT room, last_value(t ORDER BY time) AS l FROM env WHERE floor = '1' \
                  GROUP BY room";
    assert_eq!(
        sql_ok(&app, "house", latest).await,
        serde_json::json!([{"room": "a", "l": 9.0}])
    );
}

/// A segment cut short under a running server (a failing disk, a hand at work in the
/// data directory): the query reading it gets a clear error, the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_truncated_under_the_server_fails_only_its_query() {
    let (d, state, app) = setup();
    for part in 0..7 {
        let body: String = (part * 100..part * 100 + 100)
            .map(|i| format!("env,room=r{} t={i} {}\n", i % 7, 100 + i))
            .collect();
        let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    state.engine().unwrap().flush().await.unwrap();
    let q = "SELECT room, sum(t) AS st FROM env GROUP BY room ORDER BY room";
    // the footer is read and cached by the first query
    assert_eq!(sql_ok(&app, "house", q).await.as_array().unwrap().len(), 7);
    let files = parquet_files(d.path());
    let [file] = files.as_slice() else {
        panic!("one segment expected: {files:?}");
    };
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.set_len(64).unwrap();
    let (s, v) = sql(&app, "house", q).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{v}");
    let msg = v.to_string();
    assert!(
        msg.contains(&format!("reading {}", file.display())),
        "{msg}"
    );
    assert_eq!(
        sql_ok(&app, "house", "SELECT 1 AS one").await,
        serde_json::json!([{"one": 1}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_run_while_decoding_where_time_bounds_cut_a_segment() {
    let (_d, state, app) = setup();
    let body: String = (0..=10)
        .flat_map(|i| {
            let t = 100 + 10 * i;
            [
                format!("env,room=a t={i} {t}\n"),
                format!("env,room=b t={i} {t}\n"),
            ]
        })
        .collect();
    let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();

    // bounds cutting the segment (100 s ..= 200 s): the rows before 150 s are dropped
    // while decoding, and no FilterExec is left above the scan
    let cut = "SELECT count(*) AS n, sum(t) AS st FROM env WHERE time >= '1970-01-01T00:02:30Z'";
    let v = sql_ok(&app, "house", &format!("EXPLAIN ANALYZE {cut}")).await;
    let plan = plan_text(&v, "Plan with Metrics");
    assert!(plan.contains("pushdown_rows_pruned=10,"), "{plan}");
    assert!(plan.contains("pushdown_rows_matched=12,"), "{plan}");
    assert!(!plan.contains("FilterExec"), "{plan}");
    let v = sql_ok(&app, "house", cut).await;
    assert_eq!(v, serde_json::json!([{"n": 12, "st": 90.0}]));

    // bounds holding the whole segment: the filter drops nothing, so it is not run at
    // all (neither while decoding nor above: time bounds are exact filters of the table)
    let whole = "SELECT count(*) AS n FROM env WHERE time >= '1970-01-01T00:01:00Z'";
    let v = sql_ok(&app, "house", &format!("EXPLAIN ANALYZE {whole}")).await;
    let plan = plan_text(&v, "Plan with Metrics");
    assert!(!plan.contains("FilterExec"), "{plan}");
    assert!(plan.contains("pushdown_rows_matched=0,"), "{plan}");
    assert!(!plan.contains("predicate="), "{plan}");
    let v = sql_ok(&app, "house", whole).await;
    assert_eq!(v, serde_json::json!([{"n": 22}]));
}

/// Time bounds are exact filters of the table: applied only where a file or buffer chunk
/// the scan reads reaches past them. Every answer is checked, also for a plan reused
/// after a write made a source reach past a bound that held before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_bounds_are_applied_only_where_a_source_reaches_past_them() {
    let (_d, state, app) = setup();
    // a segment over 100 s ..= 200 s (t = 0..=10), then buffered rows at 300 s and 310 s
    let body: String = (0..=10)
        .map(|i| format!("env,room=a t={i} {}\n", 100 + 10 * i))
        .collect();
    let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();
    let body = "env,room=a t=30 300\nenv,room=a t=31 310\n";
    let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    let ts = |s: u32| format!("'1970-01-01T00:{:02}:{:02}Z'", s / 60, s % 60);
    // (where clause, filter needed, sum(t))
    let cases = [
        // the segment holds, the buffer's chunk lies past it: skipped by the scan
        (format!("time < {}", ts(250)), false, 55.0),
        (
            format!("time >= {} AND time <= {}", ts(100), ts(310)),
            false,
            116.0,
        ),
        (format!("{} <= time", ts(100)), false, 116.0),
        (
            format!("time BETWEEN {} AND {}", ts(0), ts(400)),
            false,
            116.0,
        ),
        // cut through the segment, through the chunk, or an exact point
        (format!("time > {}", ts(150)), true, 101.0),
        (format!("time < {}", ts(305)), true, 85.0),
        (
            format!("time BETWEEN {} AND {}", ts(150), ts(250)),
            true,
            45.0,
        ),
        (format!("time = {}", ts(150)), true, 5.0),
        (format!("{} > time", ts(120)), true, 1.0),
    ];
    for (cond, needed, sum) in &cases {
        let q = format!("SELECT sum(t) AS st FROM env WHERE {cond}");
        let plan = physical_plan(&app, "house", &q).await;
        // above the scan, or by the reader where the scan reads segments alone (the
        // chunk out of the bounds is not read)
        let applied = plan.contains("FilterExec") || plan.contains("predicate=");
        assert_eq!(applied, *needed, "{cond}: {plan}");
        let v = sql_ok(&app, "house", &q).await;
        assert_eq!(v, serde_json::json!([{"st": sum}]), "{cond}");
        // the time column is not asked for, yet filtered by where needed
        let q = format!("SELECT t FROM env WHERE {cond} ORDER BY t");
        let rows = sql_ok(&app, "house", &q).await;
        let got: f64 = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["t"].as_f64().unwrap())
            .sum();
        assert_eq!(got, *sum, "{cond}");
    }
    // a limit stays above the filter: three rows, all within the bounds
    let q = format!("SELECT t FROM env WHERE time > {} LIMIT 3", ts(170));
    let v = sql_ok(&app, "house", &q).await;
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    assert!(rows.iter().all(|r| r["t"].as_f64().unwrap() > 7.0), "{v}");

    // planned (and kept) while every source held the bound; reused after a chunk that
    // reaches past it arrived: the reused plan filters it
    let q = format!("SELECT count(*) AS n FROM env WHERE time < {}", ts(400));
    let before = state.executor.plan_cache_stats();
    assert_eq!(
        sql_ok(&app, "house", &q).await,
        serde_json::json!([{"n": 13}])
    );
    let body = "env,room=a t=39 390\nenv,room=a t=50 500\n";
    let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        sql_ok(&app, "house", &q).await,
        serde_json::json!([{"n": 14}])
    );
    assert_eq!(
        plan_cache_delta(&state, before),
        (1, 1),
        "planned once, reused once"
    );
}

/// The `.parquet` files under `dir`.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

/// The Arrow type each `.parquet` file under `dir` stores column `col` as.
fn stored_types(dir: &std::path::Path, col: &str) -> Vec<String> {
    let mut out = parquet_files(dir)
        .into_iter()
        .map(|p| {
            let r =
                datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(&p).unwrap(),
                )
                .unwrap();
            r.schema()
                .field_with_name(col)
                .unwrap()
                .data_type()
                .to_string()
        })
        .collect::<Vec<_>>();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floats_stored_as_decimals_read_back_exactly() {
    let (d, state, app) = setup();
    let w = |body: &'static str| post("/api/v1/write?db=house&precision=s", body);
    // two segments: t at 2 places in one, 1 place in the other; x never a short decimal
    let first = "env,room=a t=21.37,x=0.30000000000000004 100\nenv,room=a t=21.56,x=1 110\nenv,room=b t=-0.07,x=2 100\n";
    assert_eq!(send(&app, w(first)).await.0, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();
    let second = "env,room=a t=22.1,x=1.2345678901234567 120\nenv,room=b t=1e-6,x=5 130\n";
    assert_eq!(send(&app, w(second)).await.0, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();
    assert_eq!(
        stored_types(d.path(), "t"),
        ["Decimal32(9, 2)", "Decimal32(9, 6)"]
    );
    assert_eq!(stored_types(d.path(), "x"), ["Float64", "Float64"]);

    // the table's type and every value come back unchanged
    let v = sql_ok(
        &app,
        "house",
        "SELECT room, t, x FROM env ORDER BY room, time",
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!([
            {"room":"a","t":21.37,"x":0.30000000000000004},
            {"room":"a","t":21.56,"x":1.0},
            {"room":"a","t":22.1,"x":1.2345678901234567},
            {"room":"b","t":-0.07,"x":2.0},
            {"room":"b","t":1e-6,"x":5.0},
        ])
    );
    let v = sql_ok(
        &app,
        "house",
        "SELECT arrow_typeof(t) AS ty FROM env LIMIT 1",
    )
    .await;
    assert_eq!(v, serde_json::json!([{"ty": "Float64"}]));
    // comparisons keep double semantics: a literal between two decimals of the column
    // is not rounded to the column's places (21.555 would round to 21.56)
    for (q, want) in [
        ("t > 21.555", 2),
        ("t >= 21.56", 2),
        ("t = 21.37", 1),
        ("t < 21.375", 3),
        ("t = 0.000001", 1),
    ] {
        let v = sql_ok(
            &app,
            "house",
            &format!("SELECT count(*) AS n FROM env WHERE {q}"),
        )
        .await;
        assert_eq!(v, serde_json::json!([{"n": want}]), "{q}");
        // the same filter run while decoding (time bounds cut the first segment)
        let cut = format!(
            "SELECT count(*) AS n FROM env WHERE {q} AND time >= '1970-01-01T00:01:40Z' AND time < '1970-01-01T00:02:05Z'"
        );
        let all = sql_ok(
            &app,
            "house",
            &format!("SELECT count(*) AS n FROM env WHERE {q} AND time < '1970-01-01T00:02:05Z'"),
        )
        .await;
        assert_eq!(sql_ok(&app, "house", &cut).await, all, "{cut}");
    }
    let v = sql_ok(&app, "house", "SELECT max(t) AS hi, min(t) AS lo FROM env").await;
    assert_eq!(v, serde_json::json!([{"hi": 22.1, "lo": -0.07}]));
    // statistics still prune through the cast: the first segment (max 21.56) is skipped
    let q = "SELECT count(*) AS n FROM env WHERE t > 22.0";
    let v = sql_ok(&app, "house", &format!("EXPLAIN ANALYZE {q}")).await;
    let plan = plan_text(&v, "Plan with Metrics");
    assert!(
        plan.contains("row_groups_pruned_statistics=2 total → 1 matched"),
        "{plan}"
    );
    assert_eq!(
        sql_ok(&app, "house", q).await,
        serde_json::json!([{"n": 1}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_and_post_bodies() {
    let (_d, _state, app) = setup();
    assert_eq!(
        send(&app, post("/api/v1/write?db=x", "m,k=v f=1.5,i=2i 1000\n"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let req = |fmt: &str| {
        Request::get(format!(
            "/api/v1/query?db=x&format={fmt}&q=SELECT%20k,f,i%20FROM%20m"
        ))
        .body(Body::empty())
        .unwrap()
    };
    let resp = app.clone().oneshot(req("csv")).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(&body[..], b"k,f,i\nv,1.5,2\n");
    let resp = app.clone().oneshot(req("jsonl")).await.unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(&body[..], b"{\"k\":\"v\",\"f\":1.5,\"i\":2}\n");
    for fmt in ["arrow", "parquet"] {
        let resp = app.clone().oneshot(req(fmt)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(body.len() > 50, "{fmt}");
    }
    let (s, _) = send(&app, req("xml")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // POST JSON and POST text/plain
    let r = Request::post("/api/v1/query")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"sql":"SELECT count(*) AS n FROM m","db":"x"}"#,
        ))
        .unwrap();
    assert_eq!(send(&app, r).await.1, serde_json::json!([{"n":1}]));
    let r = Request::post("/api/v1/query?db=x")
        .header("content-type", "text/plain")
        .body(Body::from("SELECT count(*) AS n FROM m"))
        .unwrap();
    assert_eq!(send(&app, r).await.1, serde_json::json!([{"n":1}]));
    // empty results still have their shape
    let (_, v) = sql(&app, "x", "SELECT k FROM m WHERE f > 100").await;
    assert_eq!(v, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_is_refused_and_touches_no_file() {
    let (dir, _state, app) = setup();
    assert_eq!(
        send(&app, post("/api/v1/write?db=x", "m f=1 1\n")).await.0,
        StatusCode::NO_CONTENT
    );
    let target = dir.path().join("stolen.csv");
    let t = target.display();
    for q in [
        format!("COPY (SELECT * FROM m) TO '{t}'"),
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        "INSERT INTO m VALUES (1)".to_string(),
        "DROP TABLE m".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "SELECT 1; SELECT 2".to_string(),
        "SELECT * FROM '/etc/passwd'".to_string(),
        "SELECT * FROM read_parquet('/etc/passwd')".to_string(),
        "CREATE TABLE t AS SELECT 1".to_string(),
        "SELEC nonsense".to_string(),
        "SELECT * FROM nope".to_string(),
    ] {
        let (s, v) = sql(&app, "x", &q).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(v["error"].is_string(), "{q}");
    }
    assert!(!target.exists());
    let (s, _) = sql(&app, "..", "SELECT 1").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = sql(&app, "x", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// Segments whose time ranges overlap (writers sending interleaved times) and a buffer
/// overlapping them are merged as a stream: a query over all of them returns one row per
/// point, last write wins per field, under a memory limit far below what holding every
/// point at once (the hash aggregate this replaced) needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_segments_are_deduplicated_in_bounded_memory() {
    let (_dir, state, app) = setup_with(
        HttpConfig::default(),
        QueryConfig {
            memory_limit_bytes: 2 << 20,
            ..Default::default()
        },
    );
    const SENSORS: i64 = 100;
    const TIMES: i64 = 1000;
    // model: (sensor, t) -> (v, w), last non-null value per field wins
    let mut model: std::collections::BTreeMap<(i64, i64), (Option<i64>, Option<i64>)> =
        Default::default();
    let mut write = |rows: &mut dyn Iterator<Item = (i64, i64, Option<i64>, Option<i64>)>| {
        let mut body = String::new();
        for (s, t, v, w) in rows {
            let fields: Vec<String> = [v.map(|v| format!("v={v}i")), w.map(|w| format!("w={w}i"))]
                .into_iter()
                .flatten()
                .collect();
            body.push_str(&format!("t,sensor=s{s:03} {} {t}\n", fields.join(",")));
            let e = model.entry((s, t)).or_default();
            e.0 = v.or(e.0);
            e.1 = w.or(e.1);
        }
        body
    };
    // three writers' worth of interleaved times: each flush spans the whole range
    let bodies = [
        write(&mut (0..SENSORS).flat_map(|s| {
            (0..TIMES)
                .step_by(2)
                .map(move |t| (s, t, Some(s * t), None))
        })),
        write(
            &mut (0..SENSORS)
                .flat_map(|s| (0..TIMES).map(move |t| (s, t, (t % 3 == 0).then_some(-t), Some(s)))),
        ),
        write(&mut (0..SENSORS).flat_map(|s| {
            (TIMES / 2..TIMES)
                .step_by(5)
                .map(move |t| (s, t, None, Some(7)))
        })),
    ];
    let engine = state.engine().unwrap();
    for (i, body) in bodies.into_iter().enumerate() {
        let (s, v) = send(&app, post("/api/v1/write?db=d&precision=s", body)).await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        if i < 2 {
            engine.flush().await.unwrap(); // the last one stays in the buffer
        }
    }
    assert_eq!(engine.snapshot().table("d", "t").unwrap().segments.len(), 2);
    let want_n = model.len() as i64;
    let want_v: i64 = model.values().filter_map(|e| e.0).sum();
    let want_nv = model.values().filter(|e| e.0.is_some()).count() as i64;
    let want_w: i64 = model.values().filter_map(|e| e.1).sum();
    let (s, v) = sql(
        &app,
        "d",
        "SELECT count(*) AS n, sum(v) AS sv, count(v) AS nv, sum(w) AS sw FROM t",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        serde_json::json!([{"n": want_n, "sv": want_v, "nv": want_nv, "sw": want_w}])
    );
    // a filter on a tag and on time is applied below the merge; one on a field above it
    let want: i64 = model
        .iter()
        .filter(|((s, t), e)| *s == 42 && (100..=900).contains(t) && e.1 == Some(7))
        .filter_map(|(_, e)| e.0)
        .sum();
    let (s, v) = sql(
        &app,
        "d",
        "SELECT sum(v) AS sv FROM t WHERE sensor = 's042' AND time BETWEEN '1970-01-01T00:01:40Z' AND '1970-01-01T00:15:00Z' AND w = 7",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, serde_json::json!([{"sv": want}]));
    // EXPLAIN names the merge and the segments it reads
    let v = sql_ok(&app, "d", "EXPLAIN SELECT count(*) FROM t").await;
    assert!(
        v.to_string().contains("DedupExec: overlapping_segments="),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_timeout_and_concurrency() {
    let (_dir, state, app) = setup_with(
        HttpConfig::default(),
        QueryConfig {
            memory_limit_bytes: 1 << 20,
            timeout: std::time::Duration::from_secs(2),
            max_concurrent: 1,
            threads: 2,
            ..Default::default()
        },
    );
    let (s, v) = sql(
        &app,
        "default",
        "SELECT value FROM generate_series(1, 3000000) ORDER BY value DESC LIMIT 10 OFFSET 2000000",
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(v["error"].as_str().unwrap().contains("memory"), "{v}");
    // no operator holds much here, but the result itself (~8 MB) is over the limit
    let (s, v) = sql(
        &app,
        "default",
        "SELECT value FROM generate_series(1, 1000000)",
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(v["error"].as_str().unwrap().contains("memory"), "{v}");
    let (s, v) = sql(
        &app,
        "default",
        "SELECT count(*) AS n FROM generate_series(1, 1000000)",
    )
    .await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, serde_json::json!([{"n": 1000000}]))
    );
    // ... but streamed as JSON lines it is never held: all of it arrives
    let stream = |q: &str| {
        Request::get(format!(
            "/api/v1/query?db=default&format=jsonl&sql={}",
            urlencode(q)
        ))
        .body(Body::empty())
        .unwrap()
    };
    let resp = app
        .clone()
        .oneshot(stream("SELECT value FROM generate_series(1, 1000000)"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 1_000_000);
    assert_eq!(lines[999_999], b"{\"value\":1000000}");
    // an error after the first rows: 200 was sent, so the body ends in an error line
    // and the transfer is aborted
    let resp = app
        .clone()
        .oneshot(stream(
            "SELECT 10 / (value - 900000) AS x FROM generate_series(1, 1000000)",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .is_err()
    );
    let (s, v) = sql(
        &app,
        "default",
        "SELECT count(*) FROM generate_series(1, 10000000000)",
    )
    .await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT, "{v}");
    // writes go on meanwhile, and the server still answers
    let (s, v) = sql(&app, "default", "SELECT 1 AS one").await;
    assert_eq!((s, v), (StatusCode::OK, serde_json::json!([{"one": 1}])));
    // one slot: a second concurrent query is refused with 429
    let slow = {
        let app = app.clone();
        tokio::spawn(async move {
            sql(
                &app,
                "default",
                "SELECT count(*) FROM generate_series(1, 10000000000)",
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while state.executor.running() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow query never started"
        );
        tokio::task::yield_now().await;
    }
    let (s, v) = sql(&app, "default", "SELECT 1").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(slow.await.unwrap().0, StatusCode::GATEWAY_TIMEOUT);
}

fn with_tokens() -> (tempfile::TempDir, Router) {
    let tok = |name: &str, secret: &str, dbs: &[&str], perms: &[Permission]| TokenConfig {
        name: name.into(),
        token: Some(secret.into()),
        token_file: None,
        databases: dbs.iter().map(|s| s.to_string()).collect(),
        permissions: perms.to_vec(),
    };
    let auth = Auth::new(&[
        tok(
            "house-sensors",
            "house-write-secret-0001",
            &["house"],
            &[Permission::Write],
        ),
        tok(
            "house-app",
            "house-read-secret-00002",
            &["house"],
            &[Permission::Read],
        ),
        tok(
            "toe",
            "toe-readwrite-secret-03",
            &["toe"],
            &[Permission::Read, Permission::Write],
        ),
        tok(
            "analyst",
            "analyst-all-secret-0004",
            &["*"],
            &[Permission::Read],
        ),
    ])
    .unwrap();
    let (dir, _state, app) = setup_with(
        HttpConfig {
            auth,
            ..Default::default()
        },
        QueryConfig::default(),
    );
    (dir, app)
}

fn authed(method: &str, uri: &str, token: Option<&str>, body: &str) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::from(body.to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_isolate_databases() {
    let (_d, app) = with_tokens();
    const HW: &str = "house-write-secret-0001";
    const HR: &str = "house-read-secret-00002";
    const TOE: &str = "toe-readwrite-secret-03";
    const ALL: &str = "analyst-all-secret-0004";
    // health and ready need no token
    assert_eq!(
        send(&app, authed("GET", "/health", None, "")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, authed("GET", "/ready", None, "")).await.0,
        StatusCode::OK
    );
    // everything else does
    for (m, uri) in [
        ("POST", "/api/v1/write?db=house"),
        ("GET", "/api/v1/query?db=house&sql=SELECT%201"),
        ("GET", "/api/v1/databases"),
        ("GET", "/api/v1/tables?db=house"),
        ("GET", "/metrics"),
    ] {
        assert_eq!(
            send(&app, authed(m, uri, None, "env t=1 1")).await.0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
        assert_eq!(
            send(
                &app,
                authed(m, uri, Some("wrong-token-wrong-token"), "env t=1 1")
            )
            .await
            .0,
            StatusCode::UNAUTHORIZED,
            "{uri}"
        );
    }
    // writes: own database only
    assert_eq!(
        send(
            &app,
            authed("POST", "/api/v1/write?db=house", Some(HW), "env,r=a t=1 1")
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(
            &app,
            authed("POST", "/api/v1/write?db=toe", Some(HW), "env t=1 1")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(
            &app,
            authed("POST", "/api/v1/write?db=house", Some(HR), "env t=1 1")
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // "Token" scheme and the v1 p= parameter, as Influx clients send them
    let r = Request::post("/api/v2/write?bucket=toe")
        .header("authorization", format!("Token {TOE}"))
        .body(Body::from("env,r=x t=2 2"))
        .unwrap();
    assert_eq!(send(&app, r).await.0, StatusCode::NO_CONTENT);
    let r = Request::post(format!("/write?db=toe&u=any&p={TOE}"))
        .body(Body::from("env,r=y t=3 3"))
        .unwrap();
    assert_eq!(send(&app, r).await.0, StatusCode::NO_CONTENT);
    // reads
    let q = |db: &str, sql: &str| format!("/api/v1/query?db={db}&sql={}", urlencode(sql));
    assert_eq!(
        send(
            &app,
            authed(
                "GET",
                &q("house", "SELECT count(*) AS n FROM env"),
                Some(HW),
                ""
            )
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    let (s, v) = send(
        &app,
        authed(
            "GET",
            &q("house", "SELECT count(*) AS n FROM env"),
            Some(HR),
            "",
        ),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, serde_json::json!([{"n": 1}])));
    let (s, v) = send(
        &app,
        authed(
            "GET",
            &q("house", "SELECT count(*) AS n FROM toe.env"),
            Some(HR),
            "",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"].as_str().unwrap().contains("toe"), "{v}");
    assert_eq!(
        send(&app, authed("GET", &q("toe", "SELECT 1"), Some(HR), ""))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (_, v) = send(&app, authed("GET", "/api/v1/databases", Some(HR), "")).await;
    assert_eq!(v["databases"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(
        send(&app, authed("GET", "/api/v1/tables?db=toe", Some(HR), ""))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // a token that may read both joins across them
    let (s, v) = send(&app, authed("GET", &q("house", "SELECT h.t AS ht, sum(o.t) AS ot FROM house.env h CROSS JOIN toe.env o GROUP BY h.t"), Some(ALL), "")).await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, serde_json::json!([{"ht": 1.0, "ot": 5.0}]))
    );
    let (_, v) = send(&app, authed("GET", "/api/v1/databases", Some(ALL), "")).await;
    assert_eq!(v["databases"].as_array().unwrap().len(), 2, "{v}");
    // bad token configuration is refused
    assert!(
        Auth::new(&[TokenConfig {
            name: "x".into(),
            token: Some("short".into()),
            token_file: None,
            databases: vec!["a".into()],
            permissions: vec![Permission::Read]
        }])
        .is_err()
    );
}

/// Rows of a query as compact strings, e.g. `a|00:20|null|22|24`.
fn gapfill_rows(v: &serde_json::Value, cols: &[&str]) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not rows: {v}"))
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| match &r[*c] {
                    serde_json::Value::String(s) if s.len() == 20 => s[11..16].to_string(),
                    serde_json::Value::Null => "null".to_string(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_filling_with_locf_and_interpolate() {
    let (_d, _state, app) = setup();
    // 2025-11-25T00:00:00Z = 1764028800; room a: 00:00, 00:10 twice, 00:40; room b: 00:20
    let body = "env,room=a temp=20,co2=400i 1764028800\n\
                env,room=a temp=21,co2=500i 1764029400\n\
                env,room=a temp=23,co2=500i 1764029500\n\
                env,room=a temp=28,co2=701i 1764031200\n\
                env,room=b temp=5,co2=1000i 1764030000\n";
    let (s, v) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let q = "SELECT date_bin_gapfill(INTERVAL '10 minutes', time) AS t, room, avg(temp) AS raw, \
             locf(avg(temp)) AS carried, interpolate(avg(temp)) AS line, interpolate(max(co2)) AS co2 \
             FROM env WHERE time >= '2025-11-25T00:00:00Z' AND time < '2025-11-25T01:00:00Z' \
             GROUP BY t, room ORDER BY room, t";
    let v = sql_ok(&app, "house", q).await;
    assert_eq!(
        gapfill_rows(&v, &["room", "t", "raw", "carried", "line", "co2"]),
        vec![
            "a|00:00|20.0|20.0|20.0|400",
            "a|00:10|22.0|22.0|22.0|500",
            "a|00:20|null|22.0|24.0|567", // 500 + 201 / 3, rounded
            "a|00:30|null|22.0|26.0|634",
            "a|00:40|28.0|28.0|28.0|701",
            "a|00:50|null|28.0|null|null", // nothing after: no interpolation
            "b|00:00|null|null|null|null", // nothing before: no carry
            "b|00:10|null|null|null|null",
            "b|00:20|5.0|5.0|5.0|1000",
            "b|00:30|null|5.0|null|null",
            "b|00:40|null|5.0|null|null",
            "b|00:50|null|5.0|null|null",
        ]
    );
    // without other group columns, bounds given with > and <=
    let q = "SELECT date_bin_gapfill(INTERVAL '20 minutes', time) AS t, count(*) AS n \
             FROM env WHERE room = 'a' AND time > '2025-11-24T23:59:59Z' AND time <= '2025-11-25T00:59:59Z' \
             GROUP BY t ORDER BY t";
    let v = sql_ok(&app, "house", q).await;
    // (the bucket holding the lower bound, 23:59:59, starts at 23:40)
    assert_eq!(
        gapfill_rows(&v, &["t", "n"]),
        vec!["23:40|null", "00:00|3", "00:20|null", "00:40|1"]
    );
    // EXPLAIN shows the node
    let v = sql_ok(&app, "house", &format!("EXPLAIN {q}")).await;
    assert!(v.to_string().contains("GapFill"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gap_filling_errors_are_clear() {
    let (_d, _state, app) = setup();
    let (s, _) = send(
        &app,
        post(
            "/api/v1/write?db=house&precision=s",
            "env,room=a temp=20 1764028800\n",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for (q, want) in [
        (
            "SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS t, avg(temp) FROM env GROUP BY t",
            "lower bound",
        ),
        (
            "SELECT date_bin_gapfill(INTERVAL '1 month', time) AS t, avg(temp) FROM env WHERE time >= '2025-01-01T00:00:00Z' GROUP BY t",
            "fixed",
        ),
        (
            "SELECT date_bin_gapfill(INTERVAL '1 nanosecond', time) AS t, avg(temp) FROM env WHERE time >= '2025-01-01T00:00:00Z' AND time < '2026-01-01T00:00:00Z' GROUP BY t",
            "buckets per series",
        ),
        (
            "SELECT date_bin_gapfill(INTERVAL '100000000 days', time) AS t, avg(temp) FROM env WHERE time >= '2025-01-01T00:00:00Z' GROUP BY t",
            "too long",
        ),
        (
            "SELECT date_bin_gapfill(INTERVAL '1 day', time, TIMESTAMP '2262-04-01T00:00:00Z') AS t, avg(temp) FROM env WHERE time >= '1677-09-21T00:12:44Z' AND time < '1677-09-23T00:00:00Z' GROUP BY t",
            "out of bounds",
        ),
        ("SELECT locf(temp) FROM env", "locf() "),
        (
            "SELECT date_bin_gapfill(INTERVAL '1 minute', time) FROM env",
            "GROUP BY",
        ),
        (
            "SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS t, locf(avg(temp) + 1) FROM env WHERE time >= '2025-11-25T00:00:00Z' GROUP BY t",
            "takes one aggregate",
        ),
    ] {
        let (s, v) = sql(&app, "house", q).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{q}: {msg}");
    }
    // upper bound defaults to now(): a window of the last hour in 10-minute buckets
    let (s, _) = send(
        &app,
        post("/api/v1/write?db=house", "env,room=now temp=1\n"),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = sql(
        &app,
        "house",
        "SELECT date_bin_gapfill(INTERVAL '10 minutes', time) AS t, locf(max(temp)) AS m FROM env \
         WHERE room = 'now' AND time >= now() - INTERVAL '1 hour' GROUP BY t ORDER BY t",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rows = v.as_array().unwrap();
    assert!((6..=7).contains(&rows.len()), "{v}");
    assert_eq!(rows.last().unwrap()["m"], 1.0, "{v}");
}

/// The arrow IPC answer of a query: its schema and rows.
async fn arrow_answer(app: &Router, db: &str, q: &str) -> (arrow::datatypes::SchemaRef, usize) {
    let body = answer_body(app, db, "arrow", q).await;
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).unwrap();
    let schema = reader.schema();
    let rows = reader.map(|b| b.unwrap().num_rows()).sum();
    (schema, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_aggregates_fold_runs_and_keep_names_and_types() {
    let (_d, state, app) = setup();
    let w = |body: &'static str| post("/api/v1/write?db=house&precision=s", body);
    // rooms a and b over two 5-minute buckets, and a series without a room; part in a
    // segment, part (with a rewrite of a flushed point) in the buffer
    let body =
        "env,room=a t=1 0\nenv,room=a t=3 60\nenv,room=b t=10 0\nenv t=100 0\nenv,room=a t=5 300\n";
    assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();
    let body = "env,room=b t=20 310\nenv,room=a t=4 60\nenv t=200 320\n";
    assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);

    let q = "SELECT room, date_bin(INTERVAL '5 minutes', time) AS b, max(t) AS m, count(*) AS n FROM env GROUP BY room, b ORDER BY room NULLS LAST, b";
    let rows = answer_rows(&sql_ok(&app, "house", q).await, &["room", "b", "m", "n"]);
    assert_eq!(
        rows,
        [
            r#""a" "1970-01-01T00:00:00Z" 4.0 2"#,
            r#""a" "1970-01-01T00:05:00Z" 5.0 1"#,
            r#""b" "1970-01-01T00:00:00Z" 10.0 1"#,
            r#""b" "1970-01-01T00:05:00Z" 20.0 1"#,
            r#"null "1970-01-01T00:00:00Z" 100.0 1"#,
            r#"null "1970-01-01T00:05:00Z" 200.0 1"#,
        ]
    );
    // runs of equal keys were folded before the hash aggregate
    let explain = sql_ok(&app, "house", &format!("EXPLAIN {q}")).await;
    let plan = plan_text(&explain, "physical_plan");
    assert!(
        plan.contains("RunFoldExec: keys=2, parts=[(Max, 2), (Count, 3)]"),
        "{plan}"
    );
    // the time bucket is binned by the fold itself (no date_bin below it)
    assert!(
        plan.contains("key 1 binned by 300000000000 ns from 0"),
        "{plan}"
    );
    // with an origin, and as time_bucket (an alias: the key arrives as `date_bin(..) AS
    // "time_bucket(..)"`, which was left to the hash aggregate alone before): the
    // buckets start 2 minutes past
    let q2 = "SELECT room, time_bucket(INTERVAL '5 minutes', time, TIMESTAMP '1970-01-01T00:02:00Z') AS b, max(t) AS m FROM env GROUP BY room, b ORDER BY room NULLS LAST, b";
    let rows = answer_rows(&sql_ok(&app, "house", q2).await, &["room", "b", "m"]);
    assert_eq!(
        rows,
        [
            r#""a" "1969-12-31T23:57:00Z" 4.0"#,
            r#""a" "1970-01-01T00:02:00Z" 5.0"#,
            r#""b" "1969-12-31T23:57:00Z" 10.0"#,
            r#""b" "1970-01-01T00:02:00Z" 20.0"#,
            r#"null "1969-12-31T23:57:00Z" 100.0"#,
            r#"null "1970-01-01T00:02:00Z" 200.0"#,
        ]
    );
    let plan = physical_plan(&app, "house", q2).await;
    assert!(
        plan.contains("key 1 binned by 300000000000 ns from 120000000000"),
        "{plan}"
    );
    // the result keeps the tag's type
    let (schema, n) = arrow_answer(&app, "house", q).await;
    assert_eq!(n, 6);
    assert_eq!(
        schema.field_with_name("room").unwrap().data_type(),
        &arrow::datatypes::DataType::Dictionary(
            Box::new(arrow::datatypes::DataType::Int32),
            Box::new(arrow::datatypes::DataType::Utf8)
        )
    );
    // the tag used above the aggregate: HAVING, an expression, DISTINCT, a join
    let v = sql_ok(&app, "house", "SELECT upper(room) AS r, sum(t) AS s FROM env GROUP BY room HAVING room IS DISTINCT FROM 'b' ORDER BY r").await;
    assert_eq!(
        v,
        serde_json::json!([{"r":"A","s":10.0},{"r":null,"s":300.0}])
    );
    let v = sql_ok(
        &app,
        "house",
        "SELECT DISTINCT room FROM env WHERE room IS NOT NULL ORDER BY room",
    )
    .await;
    assert_eq!(v, serde_json::json!([{"room":"a"},{"room":"b"}]));
    let v = sql_ok(&app, "house", "SELECT x.room, x.n, y.m FROM (SELECT room, count(*) AS n FROM env GROUP BY room) x JOIN (SELECT room, max(t) AS m FROM env GROUP BY room) y ON x.room = y.room ORDER BY x.room").await;
    assert_eq!(
        v,
        serde_json::json!([{"room":"a","n":3,"m":5.0},{"room":"b","n":2,"m":20.0}])
    );
    // a group split over many runs (the buffer keeps rows as written: interleaved), and
    // a group whose values are all NULL (avg NULL, count 0); then the same from a segment
    let body = "air,room=a v=1 0\nair,room=b v=10 10\nair,room=a v=3 20\nair,room=c w=1 30\nair,room=b v=20 40\nair,room=a w=2 50\n";
    assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
    let q = "SELECT room, avg(v) AS a, count(v) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM air GROUP BY room ORDER BY room";
    let want = serde_json::json!([
        {"room":"a","a":2.0,"n":2,"s":4.0,"lo":1.0,"hi":3.0},
        {"room":"b","a":15.0,"n":2,"s":30.0,"lo":10.0,"hi":20.0},
        {"room":"c","a":null,"n":0,"s":null,"lo":null,"hi":null}
    ]);
    assert_eq!(sql_ok(&app, "house", q).await, want);
    state.engine().unwrap().flush().await.unwrap();
    assert_eq!(sql_ok(&app, "house", q).await, want);
    let plan = physical_plan(&app, "house", q).await;
    assert!(plan.contains("RunFoldExec: keys=1"), "{plan}");
    // keys that do not come in runs (a field), DISTINCT: DataFusion's aggregate alone
    for q in [
        "SELECT v, count(*) AS n FROM air GROUP BY v",
        "SELECT room, median(v) AS n FROM air GROUP BY room",
    ] {
        let plan = physical_plan(&app, "house", q).await;
        assert!(!plan.contains("RunFold"), "{q}: {plan}");
    }
    // DataFusion plans a single DISTINCT as a grouping below the count: still right
    let v = sql_ok(
        &app,
        "house",
        "SELECT room, count(DISTINCT v) AS n FROM air GROUP BY room ORDER BY room",
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!([{"room":"a","n":2},{"room":"b","n":2},{"room":"c","n":0}])
    );
    // grouping sets are left as they are, and still answer
    let v = sql_ok(
        &app,
        "house",
        "SELECT room, count(*) AS n FROM env GROUP BY ROLLUP (room) ORDER BY n",
    )
    .await;
    assert_eq!(v.as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v[3], serde_json::json!({"room": null, "n": 7}));
}

#[tokio::test]
async fn first_and_last_values_fold_over_runs() {
    let (_d, state, app) = setup();
    let w = |body: &'static str| post("/api/v1/write?db=house&precision=s", body);
    // interleaved as written (short runs in the buffer); room a's latest row has no v
    // (last_value respects NULLs), room c never has one
    let body = "air,room=a v=1 0\nair,room=b v=10 10\nair,room=a v=3 20\nair,room=c w=1 30\nair,room=b v=20 40\nair,room=a w=2 50\nair,room=b,floor=2 v=30 35\n";
    assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
    let q = "SELECT room, last_value(v ORDER BY time) AS l, first_value(v ORDER BY time) AS f, last_value(v ORDER BY time DESC) AS ld, max(v) AS m, last_value(time ORDER BY time) AS t FROM air GROUP BY room ORDER BY room";
    let want = serde_json::json!([
        {"room":"a","l":null,"f":1.0,"ld":1.0,"m":3.0,"t":"1970-01-01T00:00:50Z"},
        {"room":"b","l":20.0,"f":10.0,"ld":10.0,"m":30.0,"t":"1970-01-01T00:00:40Z"},
        {"room":"c","l":null,"f":null,"ld":null,"m":null,"t":"1970-01-01T00:00:30Z"}
    ]);
    assert_eq!(sql_ok(&app, "house", q).await, want);
    // from a segment: sorted by series, room b's two series make one run whose latest
    // row is not its last
    state.engine().unwrap().flush().await.unwrap();
    assert_eq!(sql_ok(&app, "house", q).await, want);
    let plan = physical_plan(&app, "house", q).await;
    assert!(
        plan.contains("(Pick { time: 2, latest: true }, 1), (Pick { time: 2, latest: true }, 2)")
            && plan.contains("(Pick { time: 4, latest: false }, 3)"),
        "{plan}"
    );
    // a rewrite in the buffer fills room a's latest v: segment and buffer merge first
    assert_eq!(
        send(&app, w("air,room=a v=9 50\n")).await.0,
        StatusCode::NO_CONTENT
    );
    let v = sql_ok(
        &app,
        "house",
        "SELECT room, last_value(v ORDER BY time) AS l FROM air GROUP BY room ORDER BY room",
    )
    .await;
    assert_eq!(
        v,
        serde_json::json!([{"room":"a","l":9.0},{"room":"b","l":20.0},{"room":"c","l":null}])
    );
    // IGNORE NULLS or an order without time: DataFusion's aggregate, same answers
    for (q, want) in [
        (
            "SELECT room, last_value(w ORDER BY time) IGNORE NULLS AS l FROM air GROUP BY room ORDER BY room",
            serde_json::json!([{"room":"a","l":2.0},{"room":"b","l":null},{"room":"c","l":1.0}]),
        ),
        (
            "SELECT room, last_value(v ORDER BY v) AS l FROM air GROUP BY room ORDER BY room",
            serde_json::json!([{"room":"a","l":9.0},{"room":"b","l":30.0},{"room":"c","l":null}]),
        ),
    ] {
        assert_eq!(sql_ok(&app, "house", q).await, want, "{q}");
        let plan = physical_plan(&app, "house", q).await;
        assert!(!plan.contains("RunFold"), "{q}: {plan}");
    }
}

/// Hits and misses of the plan cache since `before`.
fn plan_cache_delta(state: &AppState, before: PlanCacheStats) -> (u64, u64) {
    let now = state.executor.plan_cache_stats();
    (now.hits - before.hits, now.misses - before.misses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sql_reuses_its_plan_and_reads_each_querys_data() {
    let (_d, state, app) = setup();
    let w = |body: &'static str| post("/api/v1/write?db=house&precision=s", body);
    let write = async |body| assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
    write("env,room=a t=1 100\n").await;
    let q = "SELECT count(*) AS n, sum(t) AS s FROM env";
    let start = state.executor.plan_cache_stats();
    assert_eq!(
        sql_ok(&app, "house", q).await,
        serde_json::json!([{"n": 1, "s": 1.0}])
    );
    assert_eq!(plan_cache_delta(&state, start), (0, 1));
    // the plan is reused, the data is this query's: buffer, then segments, then both
    write("env,room=b t=2 100\n").await;
    assert_eq!(
        sql_ok(&app, "house", q).await,
        serde_json::json!([{"n": 2, "s": 3.0}])
    );
    state.engine().unwrap().flush().await.unwrap();
    assert_eq!(
        sql_ok(&app, "house", q).await,
        serde_json::json!([{"n": 2, "s": 3.0}])
    );
    write("env,room=b t=4 100\nenv,room=c t=8 200\n").await;
    assert_eq!(
        sql_ok(&app, "house", q).await,
        serde_json::json!([{"n": 3, "s": 13.0}])
    );
    assert_eq!(plan_cache_delta(&state, start), (3, 1));
    let (s, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("talo_query_plan_cache_hits_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("talo_queries_total{status=\"ok\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("talo_query_seconds_count 4"), "{metrics}");

    // a new column: the plan of `SELECT *` no longer holds and is made again
    let star = "SELECT * FROM env ORDER BY room, time";
    assert_eq!(
        sql_ok(&app, "house", star).await.as_array().unwrap().len(),
        3
    );
    let before = state.executor.plan_cache_stats();
    write("env,room=d t=16,co2=400i 300\n").await;
    let v = sql_ok(&app, "house", star).await;
    assert_eq!(v[3]["co2"], 400, "{v}");
    assert_eq!(plan_cache_delta(&state, before), (0, 1));
    assert_eq!(sql_ok(&app, "house", star).await, v);
    assert_eq!(plan_cache_delta(&state, before), (1, 1));

    // plans that depend on the catalog are never reused; those calling now() are, with
    // now() folded anew each time
    let before = state.executor.plan_cache_stats();
    for q in [
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'house'",
        "EXPLAIN SELECT count(*) FROM env",
        "SELECT count(*) AS n FROM env WHERE time <= now() AND random() >= 0",
    ] {
        sql_ok(&app, "house", q).await;
        sql_ok(&app, "house", q).await;
    }
    assert_eq!(plan_cache_delta(&state, before), (0, 6));
    for q in [
        "SELECT count(*) AS n FROM env WHERE time <= now()",
        "SELECT now() AS t",
    ] {
        sql_ok(&app, "house", q).await;
        sql_ok(&app, "house", q).await;
    }
    assert_eq!(plan_cache_delta(&state, before), (2, 8));
    // `now()` moves: two queries apart in time see two different moments
    let first = sql_ok(&app, "house", "SELECT now() AS t").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let again = sql_ok(&app, "house", "SELECT now() AS t").await;
        if again != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "now() stuck at {first}"
        );
        tokio::task::yield_now().await;
    }
    // information_schema sees a table made after the last query
    write("door,room=a open=true 100\n").await;
    let v = sql_ok(
        &app,
        "house",
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'house'",
    )
    .await;
    assert_eq!(v, serde_json::json!([{"n": 2}]));
    // the same SQL with another default database is another plan
    assert_eq!(sql_ok(&app, "house", q).await[0]["n"], 4);
    let (s, v) = sql(&app, "other", q).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_few_row_plan_is_planned_anew_in_one_partition_at_once() {
    let (_d, state, app) = setup_with(
        HttpConfig {
            max_body_bytes: 8 << 20,
            auth: Auth::default(),
        },
        QueryConfig {
            threads: 2,
            ..Default::default()
        },
    );
    let engine = state.engine().unwrap();
    let write = async |body: String| {
        let req = post("/api/v1/write?db=house&precision=s", body);
        assert_eq!(send(&app, req).await.0, StatusCode::NO_CONTENT);
    };
    let lines = |room: &str, from: i64, n: i64| {
        (from..from + n)
            .map(|t| format!("env,room={room} t={t} {t}\n"))
            .collect::<String>()
    };
    write(lines("a", 0, 100) + &lines("b", 0, 100)).await;
    engine.flush().await.unwrap();
    let q = "SELECT count(*) AS n, sum(t) AS st FROM env WHERE room = 'a'";
    let want = |n: i64| serde_json::json!([{"n": n, "st": (n * (n - 1) / 2) as f64}]);
    // queries scan files whose series runs are not at hand (and start computing them)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let runs_of = async |files: usize| {
        while state.executor.series_runs_kept().0 < files {
            assert!(
                std::time::Instant::now() < deadline,
                "series runs not computed"
            );
            assert_eq!(sql_ok(&app, "house", q).await, want(100));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    runs_of(1).await;
    let plannings = || state.executor.plan_cache_stats().physical_plannings;
    let partitions = || {
        let kept = state.executor.kept_physical("house", q);
        kept.map(|p| most_partitions(&p))
    };
    // a new segment (of room b): the kept physical plan no longer holds; once both
    // files' runs are at hand the plan reads few rows by them: planned in two
    // partitions, then again in one
    write(lines("b", 100, 10)).await;
    engine.flush().await.unwrap();
    runs_of(2).await;
    let p0 = plannings();
    assert_eq!(sql_ok(&app, "house", q).await, want(100));
    assert_eq!(plannings() - p0, 2);
    assert_eq!(partitions(), Some(1));
    // run again MAX_PHYSICAL_RUNS times, then planned anew: in one partition at once
    let runs = crate::plans::MAX_PHYSICAL_RUNS as u64;
    for _ in 0..runs {
        assert_eq!(sql_ok(&app, "house", q).await, want(100));
    }
    assert_eq!(plannings() - p0, 2);
    assert_eq!(sql_ok(&app, "house", q).await, want(100));
    assert_eq!(plannings() - p0, 3);
    assert_eq!(partitions(), Some(1));
    // more rows of room a than one partition reads: planned in one partition first,
    // then again in two
    let many = super::executor::ONE_PARTITION_ROWS as i64;
    write(lines("a", 100, many)).await;
    engine.flush().await.unwrap();
    let p1 = plannings();
    assert_eq!(sql_ok(&app, "house", q).await, want(100 + many));
    assert_eq!(plannings() - p1, 2);
    assert!(partitions().is_some_and(|n| n > 1), "{:?}", partitions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physical_plan_runs_again_only_over_the_same_segments() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    let w = |body: &'static str| post("/api/v1/write?db=house&precision=s", body);
    let write = async |body| assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
    let reuses = || state.executor.plan_cache_stats().physical_reuses;
    write("env,room=a t=1 100\nenv,room=b t=2 110\n").await;
    engine.flush().await.unwrap();
    // [0 s, 1000 s)
    let q = "SELECT room, count(*) AS n, sum(t) AS s FROM env WHERE time >= '1970-01-01T00:00:00Z' \
             AND time < '1970-01-01T00:16:40Z' GROUP BY room ORDER BY room";
    let one = serde_json::json!([{"room":"a","n":1,"s":1.0},{"room":"b","n":1,"s":2.0}]);
    assert_eq!(sql_ok(&app, "house", q).await, one);
    let r0 = reuses();
    assert_eq!(sql_ok(&app, "house", q).await, one);
    assert_eq!(sql_ok(&app, "house", q).await, one);
    assert_eq!(reuses() - r0, 2);
    // rows buffered outside the bounds change nothing the scan reads
    write("env,room=a t=100 5000\n").await;
    assert_eq!(sql_ok(&app, "house", q).await, one);
    assert_eq!(reuses() - r0, 3);
    // a new segment inside the bounds (written and flushed between two queries): planned
    // again, then run again
    write("env,room=a t=4 120\n").await;
    engine.flush().await.unwrap();
    let two = serde_json::json!([{"room":"a","n":2,"s":5.0},{"room":"b","n":1,"s":2.0}]);
    assert_eq!(sql_ok(&app, "house", q).await, two);
    assert_eq!(reuses() - r0, 3);
    assert_eq!(sql_ok(&app, "house", q).await, two);
    assert_eq!(reuses() - r0, 4);
    // rows buffered inside the bounds: planned each time while they are buffered
    write("env,room=b t=8 130\n").await;
    let three = serde_json::json!([{"room":"a","n":2,"s":5.0},{"room":"b","n":2,"s":10.0}]);
    assert_eq!(sql_ok(&app, "house", q).await, three);
    assert_eq!(sql_ok(&app, "house", q).await, three);
    assert_eq!(reuses() - r0, 4);
    engine.flush().await.unwrap();
    assert_eq!(sql_ok(&app, "house", q).await, three);
    assert_eq!(sql_ok(&app, "house", q).await, three);
    assert_eq!(reuses() - r0, 5);
    // a kept physical plan runs at most MAX_PHYSICAL_RUNS times, then is planned anew;
    // only the query that plans makes a full session state
    let (r1, s1) = (reuses(), state.executor.session_states());
    let runs = crate::plans::MAX_PHYSICAL_RUNS as u64;
    for _ in 0..runs + 2 {
        assert_eq!(sql_ok(&app, "house", q).await, three);
    }
    assert_eq!(reuses() - r1, runs + 1);
    assert_eq!(state.executor.session_states() - s1, 1);

    // top-k: its dynamic filter would carry the last run's bound: never run again
    let top = "SELECT room, t FROM env ORDER BY t DESC LIMIT 2";
    let r2 = reuses();
    for _ in 0..3 {
        assert_eq!(
            sql_ok(&app, "house", top).await,
            serde_json::json!([{"room":"a","t":100.0},{"room":"b","t":8.0}])
        );
    }
    assert_eq!(reuses(), r2);
    let (s, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let line = format!("talo_query_physical_plan_reuses_total {}", reuses());
    assert!(metrics.as_str().unwrap().contains(&line), "{metrics}");

    // a retention rule that every row is past: the cutoff is among the scan's inputs,
    // the kept plan (which has none) is not run again
    assert_eq!(sql_ok(&app, "house", q).await, three);
    engine
        .set_retention("house", None, Some(std::time::Duration::from_secs(86_400)))
        .unwrap();
    assert_eq!(sql_ok(&app, "house", q).await, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_plan_is_never_handed_to_another_token() {
    let (_d, app) = with_tokens();
    const TOE: &str = "toe-readwrite-secret-03";
    const ALL: &str = "analyst-all-secret-0004";
    const HW: &str = "house-write-secret-0001";
    for (db, token) in [("house", HW), ("toe", TOE)] {
        let r = authed(
            "POST",
            &format!("/api/v1/write?db={db}"),
            Some(token),
            "env t=1 1",
        );
        assert_eq!(send(&app, r).await.0, StatusCode::NO_CONTENT);
    }
    // the analyst may read both, toe only its own: same SQL, same default database
    let uri = format!(
        "/api/v1/query?db=toe&sql={}",
        urlencode("SELECT count(*) AS n FROM house.env")
    );
    for _ in 0..2 {
        let (s, v) = send(&app, authed("GET", &uri, Some(ALL), "")).await;
        assert_eq!((s, v), (StatusCode::OK, serde_json::json!([{"n": 1}])));
    }
    let (s, v) = send(&app, authed("GET", &uri, Some(TOE), "")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_cache_keeps_its_bound_and_can_be_turned_off() {
    let (_d, state, app) = setup_with(
        HttpConfig::default(),
        QueryConfig {
            plan_cache_entries: 2,
            ..Default::default()
        },
    );
    for i in 0..5 {
        sql_ok(&app, "house", &format!("SELECT {i} AS x")).await;
    }
    assert_eq!(state.executor.plan_cache_stats().entries, 2);
    // the least recently used went first: 3 and 4 are still there
    let before = state.executor.plan_cache_stats();
    sql_ok(&app, "house", "SELECT 4 AS x").await;
    sql_ok(&app, "house", "SELECT 3 AS x").await;
    sql_ok(&app, "house", "SELECT 0 AS x").await;
    assert_eq!(plan_cache_delta(&state, before), (2, 1));

    let (_d, state, app) = setup_with(
        HttpConfig::default(),
        QueryConfig {
            plan_cache_entries: 0,
            ..Default::default()
        },
    );
    for _ in 0..3 {
        assert_eq!(
            sql_ok(&app, "house", "SELECT 1 AS x").await,
            serde_json::json!([{"x": 1}])
        );
    }
    assert_eq!(state.executor.plan_cache_stats().entries, 0);
    assert_eq!(state.executor.plan_cache_stats().hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_plan_sees_every_write_acknowledged_before_the_query() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (_d, state, app) = setup();
    const WRITES: u64 = 300;
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (app, state, acked) = (app.clone(), Arc::clone(&state), Arc::clone(&acked));
        tokio::spawn(async move {
            for i in 0..WRITES {
                let line = format!("env,room=r{} t={i} {}\n", i % 7, i + 1);
                let r = post("/api/v1/write?db=house&precision=s", line);
                assert_eq!(send(&app, r).await.0, StatusCode::NO_CONTENT);
                acked.store(i + 1, Ordering::SeqCst);
                if i % 60 == 59 {
                    state.engine().unwrap().flush().await.unwrap();
                }
            }
        })
    };
    let q = "SELECT count(*) AS n FROM env";
    let mut last = 0;
    let mut checked = 0;
    while last < WRITES {
        let before = acked.load(Ordering::SeqCst);
        if before == 0 {
            tokio::task::yield_now().await;
            continue;
        }
        let n = sql_ok(&app, "house", q).await[0]["n"].as_u64().unwrap();
        assert!(
            n >= before,
            "{n} rows seen, {before} acknowledged before the query"
        );
        assert!(n >= last, "{n} rows seen after {last}");
        last = n;
        checked += 1;
    }
    writer.await.unwrap();
    assert!(checked > 1);
    assert!(state.executor.plan_cache_stats().hits > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_plan_folds_now_per_query_and_still_prunes_by_it() {
    let (_d, state, app) = setup();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // an old segment and a recent one
    for body in [
        "env,room=a t=1 100\nenv,room=b t=2 200\n".to_string(),
        format!("env,room=a t=4 {}\n", now_s - 600),
    ] {
        let r = post("/api/v1/write?db=house&precision=s", body);
        assert_eq!(send(&app, r).await.0, StatusCode::NO_CONTENT);
        state.engine().unwrap().flush().await.unwrap();
    }
    let q = "SELECT count(*) AS n, sum(t) AS s FROM env WHERE time >= now() - INTERVAL '1 hour'";
    let before = state.executor.plan_cache_stats();
    for _ in 0..3 {
        assert_eq!(
            sql_ok(&app, "house", q).await,
            serde_json::json!([{"n": 1, "s": 4.0}])
        );
    }
    assert_eq!(plan_cache_delta(&state, before), (2, 1));
    // the reused plans pruned by the folded bound too: the old file was never opened
    assert_eq!(state.executor.cached_segment_footers(), 1);
    // a row written now is inside the window of the next reuse
    let r = post(
        "/api/v1/write?db=house&precision=s",
        format!("env,room=b t=8 {}\n", now_s),
    );
    assert_eq!(send(&app, r).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        sql_ok(&app, "house", q).await,
        serde_json::json!([{"n": 2, "s": 12.0}])
    );
    // gap filling needs its bounds as literals when it is planned: planned every time,
    // and right every time
    let gap = "SELECT date_bin_gapfill(INTERVAL '20 minutes', time) AS b, count(*) AS n \
               FROM env WHERE time >= now() - INTERVAL '1 hour' AND time < now() + INTERVAL '1 minute' GROUP BY b";
    let before = state.executor.plan_cache_stats();
    for _ in 0..2 {
        let v = sql_ok(&app, "house", gap).await;
        let rows = v.as_array().unwrap();
        assert!((3..=5).contains(&rows.len()), "{v}");
        assert_eq!(
            rows.iter()
                .map(|r| r["n"].as_i64().unwrap_or(0))
                .sum::<i64>(),
            2,
            "{v}"
        );
    }
    assert_eq!(plan_cache_delta(&state, before), (0, 2));
}

/// `q` with its table `air` read through a subquery with a LIMIT: planned the plain way
/// (the last-point rule sees no table scan under the aggregate), for comparison.
fn plainly(q: &str) -> String {
    q.replace(
        " FROM air",
        " FROM (SELECT * FROM air LIMIT 1000000000) air",
    )
}

/// Kept-rows sources (in-memory) and Parquet files of a physical plan.
fn sources(plan: &str) -> (usize, usize) {
    let memory = plan
        .lines()
        .filter(|l| l.contains("DataSourceExec: partitions=") && l.contains("partition_sizes="))
        .count();
    let files = plan
        .lines()
        .filter(|l| l.contains("file_type=parquet"))
        .map(|l| l.matches(".parquet").count())
        .sum();
    (memory, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_values_come_from_kept_rows_and_match_a_full_scan() {
    let (_d, state, app) = setup();
    let w = |body: String| post("/api/v1/write?db=house&precision=s", body);
    // two settled segments that overlap nothing: room b has two series (floors), room
    // c stops after the first, room a's latest row has no v (last_value keeps NULLs)
    let mut first = String::new();
    for t in 0..40 {
        first += &format!(
            "air,room=a v={t} {t}\nair,room=b,floor=1 v={} {t}\n",
            100 + t
        );
        first += &format!(
            "air,room=b,floor=2 v={} {}\nair,room=c v={} {t}\n",
            200 + t,
            t + 1,
            300 + t
        );
    }
    assert_eq!(send(&app, w(first)).await.0, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();
    let mut second = String::new();
    for t in 100..130 {
        second += &format!(
            "air,room=a v={t},w=1i {t}\nair,room=b,floor=1 v={} {t}\n",
            100 + t
        );
    }
    second += "air,room=a w=2i 140\n";
    assert_eq!(send(&app, w(second)).await.0, StatusCode::NO_CONTENT);
    state.engine().unwrap().flush().await.unwrap();

    let cases = [
        // (query, kept-rows sources, Parquet files in its plan)
        (
            "SELECT room, last_value(v ORDER BY time) AS l, max(time) AS t FROM air GROUP BY room ORDER BY room",
            1,
            0,
        ),
        (
            "SELECT room, floor, first_value(v ORDER BY time DESC) AS l, last_value(w ORDER BY time) AS lw FROM air GROUP BY room, floor ORDER BY room, floor",
            1,
            0,
        ),
        (
            "SELECT last_value(v ORDER BY time) AS l, last_value(room ORDER BY time) AS r FROM air",
            1,
            0,
        ),
        // a lower bound cutting through the newer segment: its latest rows still decide
        (
            "SELECT room, last_value(v ORDER BY time) AS l FROM air WHERE time >= '1970-01-01T00:01:50Z' GROUP BY room ORDER BY room",
            1,
            0,
        ),
        (
            "SELECT room, last_value(v * 2 ORDER BY time) AS l FROM air WHERE room IN ('b', 'c') AND floor IS NOT NULL GROUP BY room ORDER BY room",
            1,
            0,
        ),
        // an upper bound cutting through the newer segment: that one is scanned
        (
            "SELECT room, last_value(v ORDER BY time) AS l FROM air WHERE time < '1970-01-01T00:01:50Z' GROUP BY room ORDER BY room",
            1,
            1,
        ),
        // an upper bound past both: kept rows only
        (
            "SELECT room, last_value(v ORDER BY time) AS l FROM air WHERE time <= '1970-01-01T00:05:00Z' GROUP BY room ORDER BY room",
            1,
            0,
        ),
        // not decided by the latest rows: scans
        (
            "SELECT room, last_value(v ORDER BY time) AS l FROM air WHERE v < 120 GROUP BY room ORDER BY room",
            0,
            2,
        ),
        (
            "SELECT room, last_value(w ORDER BY time) IGNORE NULLS AS l FROM air GROUP BY room ORDER BY room",
            0,
            2,
        ),
        (
            "SELECT room, last_value(v ORDER BY time) AS l, count(*) AS n FROM air GROUP BY room ORDER BY room",
            0,
            2,
        ),
        (
            "SELECT room, last_value(v ORDER BY v) AS l FROM air GROUP BY room ORDER BY room",
            0,
            2,
        ),
        (
            "SELECT v, last_value(room ORDER BY time) AS l FROM air GROUP BY v ORDER BY v",
            0,
            2,
        ),
    ];
    for (q, memory, files) in cases {
        let got = sql_ok(&app, "house", q).await;
        assert_eq!(got, sql_ok(&app, "house", &plainly(q)).await, "{q}");
        assert!(got.as_array().is_some_and(|a| !a.is_empty()), "{q}: {got}");
        let plan = physical_plan(&app, "house", q).await;
        assert_eq!(sources(&plan), (memory, files), "{q}: {plan}");
    }
    let v = sql_ok(&app, "house", cases[0].0).await;
    assert_eq!(
        v,
        serde_json::json!([
            {"room":"a","l":null,"t":"1970-01-01T00:02:20Z"},
            {"room":"b","l":229.0,"t":"1970-01-01T00:02:09Z"},
            {"room":"c","l":339.0,"t":"1970-01-01T00:00:39Z"}
        ])
    );
    // one row per series per segment is kept, and shown
    assert_eq!(state.executor.latest_rows_kept().0, 2);
    let (_, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("\ntalo_query_latest_rows_segments 2\n"),
        "{metrics}"
    );

    // the buffer, and a segment that overlaps it, go through the merge: a rewrite of room
    // a's latest point and a newer reading of c
    let q = cases[0].0;
    assert_eq!(
        send(&app, w("air,room=a v=7 140\nair,room=c v=1 500\n".into()))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let got = sql_ok(&app, "house", q).await;
    assert_eq!(got, sql_ok(&app, "house", &plainly(q)).await);
    assert_eq!(got[0]["l"], 7.0, "{got}");
    assert_eq!(got[2]["t"], "1970-01-01T00:08:20Z", "{got}");
    // the older segment overlaps nothing: still its kept rows
    assert_eq!(sources(&physical_plan(&app, "house", q).await), (1, 1));

    // compacted away: the merged segment's rows are computed, the old ones forgotten
    state.engine().unwrap().flush().await.unwrap();
    let engine = state.engine().unwrap();
    let merged = tokio::task::block_in_place(|| engine.compact_blocking()).unwrap();
    let got = sql_ok(&app, "house", q).await;
    assert_eq!(got, sql_ok(&app, "house", &plainly(q)).await);
    let segments = engine.snapshot().table("house", "air").unwrap().segments;
    assert!(merged > 0);
    assert_eq!(segments.len(), 1);
    assert_eq!(state.executor.latest_rows_kept().0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_values_relative_to_now_take_the_kept_rows_too() {
    // a plan kept for reuse is optimized with `now()` in place (folded per query), so
    // the rule sees `time >= now() - ...`, not a literal
    let (_d, state, app) = setup();
    let w = |body: String| post("/api/v1/write?db=house&precision=s", body);
    for t0 in [0, 100] {
        let body: String = (t0..t0 + 30)
            .map(|t| format!("air,room=a v={t} {t}\nair,room=b v={} {t}\n", t * 2))
            .collect();
        assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
        state.engine().unwrap().flush().await.unwrap();
    }
    let q = "SELECT room, last_value(v ORDER BY time) AS l FROM air WHERE time >= now() - INTERVAL '100 years' AND time < now() GROUP BY room ORDER BY room";
    let want = serde_json::json!([{"room":"a","l":129.0},{"room":"b","l":258.0}]);
    assert_eq!(sql_ok(&app, "house", q).await, want);
    assert_eq!(state.executor.latest_rows_kept().0, 2);
    let before = state.executor.plan_cache_stats();
    assert_eq!(sql_ok(&app, "house", q).await, want);
    assert_eq!(plan_cache_delta(&state, before), (1, 0));
    assert_eq!(sql_ok(&app, "house", &plainly(q)).await, want);
    // an upper bound relative to now that cuts the newer segment: scanned, right answer
    let q = "SELECT room, last_value(v ORDER BY time) AS l FROM air WHERE time >= now() - INTERVAL '100 years' AND time < now() - INTERVAL '56 years' - (now() - TIMESTAMP '1970-01-01T00:01:50Z' - INTERVAL '56 years') GROUP BY room ORDER BY room";
    let want = serde_json::json!([{"room":"a","l":109.0},{"room":"b","l":218.0}]);
    for _ in 0..2 {
        assert_eq!(sql_ok(&app, "house", q).await, want);
    }
}

/// Once a table has had a "last value" query, the latest rows of its new settled
/// segments are computed in the background, before any query asks for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_rows_of_new_segments_are_computed_before_any_query_asks() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    let w = |body: String| post("/api/v1/write?db=house&precision=s", body);
    let rows = |from: i64| -> String {
        (from..from + 10)
            .map(|t| format!("air,room=a v={t} {t}\nair,room=b v={} {t}\n", 100 + t))
            .collect()
    };
    assert_eq!(send(&app, w(rows(0))).await.0, StatusCode::NO_CONTENT);
    engine.flush().await.unwrap();
    let q = "SELECT room, last_value(v ORDER BY time) AS v FROM air GROUP BY room ORDER BY room";
    let want = |a: f64, b: f64| serde_json::json!([{"room": "a", "v": a}, {"room": "b", "v": b}]);
    assert_eq!(sql_ok(&app, "house", q).await, want(9.0, 109.0));
    assert_eq!(state.executor.latest_rows_kept().0, 1);

    // a new segment after the first: computed with no query in between
    assert_eq!(send(&app, w(rows(100))).await.0, StatusCode::NO_CONTENT);
    engine.flush().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while state.executor.latest_rows_kept().0 < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new segment's latest rows were not computed: {:?}",
            state.executor.latest_rows_kept()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // the query reads both segments' kept rows, and no file
    let plan = physical_plan(&app, "house", q).await;
    assert_eq!(sources(&plan), (1, 0), "{plan}");
    assert_eq!(sql_ok(&app, "house", q).await, want(109.0, 209.0));
}

/// Warming computes the settled segments at or after the oldest one a query asked for,
/// not older ones (late data flushed into a segment of its own, last month's files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_skips_segments_older_than_any_asked_for() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    let w = |body: String| post("/api/v1/write?db=house&precision=s", body);
    let rows = |room: &str, from: i64| -> String {
        (from..from + 10)
            .map(|t| format!("air,room={room} v={t} {t}\n"))
            .collect()
    };
    // flushed in this order: 100 s.., late data at 0 s.., then 200 s..
    for (room, from) in [("a", 100), ("z", 0), ("a", 200)] {
        assert_eq!(
            send(&app, w(rows(room, from))).await.0,
            StatusCode::NO_CONTENT
        );
        engine.flush().await.unwrap();
    }
    let snapshot = engine.snapshot();
    let segs: Vec<_> = snapshot
        .segments
        .iter()
        .filter(|s| s.table == "air")
        .cloned()
        .collect();
    assert_eq!(segs.len(), 3);
    let by_start = |t: i64| {
        Arc::clone(
            segs.iter()
                .find(|s| s.min_time == t * 1_000_000_000)
                .unwrap(),
        )
    };
    let (asked, late, newer) = (by_start(100), by_start(0), by_start(200));
    let dir = engine.config().data_dir.clone();
    let latest = Arc::new(crate::lastpoint::LatestRows::default());
    // nothing asked for this table yet: nothing to warm
    latest.warm(&snapshot, &dir).await;
    assert_eq!(latest.kept().0, 0);
    // a query asked for the segment from 100 s
    latest.of(&dir, &asked).await.unwrap().unwrap();
    latest.warm(&snapshot, &dir).await;
    assert!(latest.has(&newer), "the newer segment is computed");
    assert!(!latest.has(&late), "the older one is not");
    assert_eq!(latest.kept().0, 2);
    // a snapshot without the table (an engine that never had it): everything kept for
    // it is forgotten, its bytes too, and nothing is read for it again
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = Engine::open(talo_engine::EngineConfig {
        data_dir: empty_dir.path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    latest.warm(&empty.snapshot(), &dir).await;
    assert_eq!(latest.kept(), (0, 0));
    assert!(!latest.has(&asked) && !latest.has(&newer));
    latest.warm(&snapshot, &dir).await;
    assert_eq!(latest.kept().0, 0, "the table's horizon is forgotten too");
}

/// A kept physical plan runs again as a copy (`reset_plan_states`) whose operators keep
/// their computed properties (equivalences, orderings, partitioning), talo's own
/// operators included: recomputing them was a cost of every rerun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_plan_runs_again_without_recomputing_its_properties() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    let body = "env,room=a t=1 100\nenv,room=a t=3 200\nenv,room=b t=2 110\n";
    let (s, _) = send(&app, post("/api/v1/write?db=house&precision=s", body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    engine.flush().await.unwrap();
    let q = "SELECT room, date_bin(INTERVAL '1 hour', time) AS h, avg(t) AS a FROM env \
             WHERE time < '1970-01-02T00:00:00Z' GROUP BY room, h ORDER BY room, h";
    let want = serde_json::json!([
        {"room": "a", "h": "1970-01-01T00:00:00Z", "a": 2.0},
        {"room": "b", "h": "1970-01-01T00:00:00Z", "a": 2.0},
    ]);
    assert_eq!(sql_ok(&app, "house", q).await, want);
    let kept = state.executor.kept_physical("house", q).expect("kept");
    use datafusion::common::tree_node::TreeNode;
    let names = |p: &Arc<dyn datafusion::physical_plan::ExecutionPlan>| {
        let mut v = Vec::new();
        let _ = p.apply(|n| {
            v.push((n.name().to_string(), Arc::as_ptr(n.properties())));
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        v
    };
    let before = names(&kept);
    assert!(before.iter().any(|(n, _)| n == "RunFoldExec"), "{before:?}");
    let again = datafusion::physical_plan::execution_plan::reset_plan_states(kept).unwrap();
    let after = names(&again);
    assert_eq!(before.len(), after.len());
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert!(std::ptr::eq(*was, *is), "{name} recomputed its properties");
    }
    // and the rerun answers the same
    assert_eq!(sql_ok(&app, "house", q).await, want);
    assert_eq!(state.executor.plan_cache_stats().physical_reuses, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_files_stay_open_across_queries_while_their_segments_live() {
    let (d, state, app) = setup();
    let engine = state.engine().unwrap();
    let w = |body: String| post("/api/v1/write?db=house&precision=s", body);
    // two segments over overlapping times (rewriting the same readings), which
    // compaction merges
    for t0 in [0, 20] {
        let body: String = (t0..t0 + 30)
            .map(|t| format!("air,room=a v={t} {t}\nair,room=b v=1 {t}\n"))
            .collect();
        assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
        engine.flush().await.unwrap();
    }
    let q = "SELECT room, count(*) AS n, sum(v) AS s FROM air GROUP BY room ORDER BY room";
    let want = serde_json::json!([{"room":"a","n":50,"s":1225.0},{"room":"b","n":50,"s":50.0}]);
    // the descriptors of this process open on segment files of this test's directory
    let dir = d.path().canonicalize().unwrap();
    let segment_fds = || -> Vec<String> {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.starts_with(dir.to_str().unwrap()) && p.contains(".parquet"))
            .collect()
    };
    for _ in 0..3 {
        assert_eq!(sql_ok(&app, "house", q).await, want);
        assert_eq!(state.executor.open_segment_files(), 2);
    }
    let mut kept = segment_fds();
    kept.sort();
    kept.dedup();
    assert_eq!(kept.len(), 2, "{kept:?}");
    // compacted into one: the next query closes the two replaced files and keeps the new
    let merged = tokio::task::block_in_place(|| engine.compact_blocking()).unwrap();
    assert!(merged > 0);
    assert_eq!(sql_ok(&app, "house", q).await, want);
    assert_eq!(state.executor.open_segment_files(), 1);
    // (a background task of the engine or the executor may hold one for a moment)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let open = segment_fds();
        let stale: Vec<_> = open
            .iter()
            .filter(|p| kept.iter().any(|k| p.starts_with(k.as_str())))
            .collect();
        if stale.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still open: {stale:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (s, metrics) = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("\ntalo_query_open_segment_files 1\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_flushed_later_get_their_series_runs_without_a_query() {
    let (_d, state, app) = setup();
    let engine = state.engine().unwrap();
    let w = |body: String| post("/api/v1/write?db=house&precision=s", body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for (n, t0) in [(1, 0), (2, 100)] {
        let body: String = (t0..t0 + 40)
            .map(|t| format!("air,room=a v={t} {t}\nair,room=b v=1 {t}\n"))
            .collect();
        assert_eq!(send(&app, w(body)).await.0, StatusCode::NO_CONTENT);
        engine.flush().await.unwrap();
        // no query asks: the executor's tick indexes the new segment
        while state.executor.series_runs_kept().0 < n {
            assert!(
                std::time::Instant::now() < deadline,
                "series runs of segment {n} not computed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let q = "SELECT count(*) AS n FROM air WHERE room = 'a'";
    assert_eq!(
        sql_ok(&app, "house", q).await,
        serde_json::json!([{"n": 80}])
    );
}
