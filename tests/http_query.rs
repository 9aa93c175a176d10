//! The real binary: SQL over HTTP in every format, each decoded by a reader we did not
//! write (pyarrow for Arrow/Parquet, Python's json and csv modules), and the same answer
//! from DuckDB reading talo's own Parquet files.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn every_format_decodes_in_foreign_readers() {
    let dir = tempfile::tempdir().unwrap();
    let talo = Talo::start_ready(dir.path(), &[]);
    let mut body = String::new();
    for i in 0..300i64 {
        body.push_str(&format!(
            "env,building=b{},room=r{} temp={},co2={}i,occupied={} {}\n",
            i % 3,
            i % 10,
            20.0 + (i % 11) as f64 / 2.0,
            400 + i,
            i % 2 == 0,
            1_764_028_800 + i * 10
        ));
    }
    let (s, t) = post(
        &talo.url("/api/v1/write?db=house&precision=s"),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(s, 204, "{t}");
    let sql = "SELECT building, room, time, temp, co2, occupied FROM env ORDER BY time";
    for fmt in ["json", "jsonl", "csv", "arrow", "parquet"] {
        let url = talo.url(&format!(
            "/api/v1/query?db=house&format={fmt}&sql={}",
            url_encode(sql)
        ));
        let out = std::process::Command::new("curl")
            .args(["-s", "-f", "-o"])
            .arg(dir.path().join(format!("r.{fmt}")))
            .arg(&url)
            .status()
            .unwrap();
        assert!(out.success(), "curl {fmt}");
        let v = py_json(
            "result.py",
            &[fmt, dir.path().join(format!("r.{fmt}")).to_str().unwrap()],
        );
        assert_eq!(v["rows"], 300, "{fmt}: {v}");
        assert_eq!(
            v["columns"],
            serde_json::json!(["building", "room", "time", "temp", "co2", "occupied"]),
            "{fmt}"
        );
        let first = &v["first"];
        assert_eq!(first["building"], "b0", "{fmt}: {v}");
        assert_eq!(first["co2"], "400", "{fmt}: {v}");
        if fmt == "arrow" || fmt == "parquet" {
            assert_eq!(v["types"][2], "timestamp[ns, tz=UTC]", "{fmt}");
            assert_eq!(v["types"][3], "double");
            assert_eq!(v["types"][4], "int64");
            assert_eq!(v["types"][5], "bool");
        }
    }
    // the OpenAPI document passes a validator we did not write
    let v = py_json("openapi_check.py", &[&talo.url("")]);
    assert_eq!(v["valid"], true);

    // the same aggregate from talo's SQL and from DuckDB over talo's Parquet files
    let (s, before) = get(&talo.url(&format!(
        "/api/v1/query?db=house&sql={}",
        url_encode("SELECT count(*) AS n, sum(co2) AS s, avg(temp) AS a FROM env")
    )))
    .unwrap();
    assert_eq!(s, 200);
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert!(talo.terminate(Duration::from_secs(30)).success());
    let v = py_json(
        "segments.py",
        &[dir.path().to_str().unwrap(), "house", "env"],
    );
    assert_eq!(v["duckdb_rows"], before[0]["n"]);
    let talo = Talo::start_ready(dir.path(), &[]);
    let (_, after) = get(&talo.url(&format!(
        "/api/v1/query?db=house&sql={}",
        url_encode("SELECT count(*) AS n, sum(co2) AS s, avg(temp) AS a FROM env")
    )))
    .unwrap();
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(before, after, "answers differ between buffer and segments");
    assert_eq!(before[0]["n"], 300);
    assert_eq!(before[0]["s"], (400..700).sum::<i64>());

    // gap filling over the segments: every room reports every 100 s for 50 minutes; one
    // hour of 1-minute buckets → 60 per room, the last 10 carried forward by locf,
    // streamed as Arrow and read back by pyarrow
    let gapfill = "SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS t, room, \
                   avg(temp) AS raw, locf(avg(temp)) AS temp FROM env \
                   WHERE time >= '2025-11-25T00:00:00Z' AND time < '2025-11-25T01:00:00Z' \
                   GROUP BY t, room ORDER BY room, t";
    let file = dir.path().join("gapfill.arrow");
    let ok = std::process::Command::new("curl")
        .args(["-s", "-f", "-o"])
        .arg(&file)
        .arg(talo.url(&format!(
            "/api/v1/query?db=house&format=arrow&sql={}",
            url_encode(gapfill)
        )))
        .status()
        .unwrap();
    assert!(ok.success());
    let v = py_json("result.py", &["arrow", file.to_str().unwrap()]);
    assert_eq!(v["rows"], 600, "{v}");
    assert_eq!(
        v["columns"],
        serde_json::json!(["t", "room", "raw", "temp"])
    );
    let (s, rows) = get(&talo.url(&format!(
        "/api/v1/query?db=house&sql={}",
        url_encode(&format!(
            "SELECT count(*) AS gaps, count(temp) AS carried FROM ({gapfill}) WHERE raw IS NULL"
        ))
    )))
    .unwrap();
    assert_eq!(s, 200, "{rows}");
    let rows: serde_json::Value = serde_json::from_str(&rows).unwrap();
    // 300 readings fill 300 of the 600 (room, minute) buckets; every gap after a
    // room's first reading is carried (room r_k first reports in minute 0 or 1)
    assert_eq!(rows[0]["gaps"], 300, "{rows}");
    assert!(rows[0]["carried"].as_i64().unwrap() >= 290, "{rows}");
}

/// Hostile and malformed requests generated from talo's own OpenAPI document
/// (schemathesis: coverage of every parameter's edge values, then random fuzzing) get
/// no 5xx, only documented statuses and content types, JSON errors shaped as
/// documented; the server stays up and the data written before is all still there.
/// Once without tokens, then with tokens configured, sending a valid and a wrong one.
#[test]
fn api_fuzzed_from_its_openapi_document() {
    const TOKEN: &str = "fuzz-token-0123456789abcdef";
    const WRONG: &str = "Authorization: Bearer wrong-token-0000000000000";
    let dir = tempfile::tempdir().unwrap();
    let open = Talo::start_ready(&dir.path().join("open"), &[]);
    let secured_dir = dir.path().join("secured");
    std::fs::create_dir_all(&secured_dir).unwrap();
    let secured = Talo::start_with_config(
        &secured_dir,
        &format!(
            "[[tokens]]\nname = \"rw\"\ntoken = \"{TOKEN}\"\ndatabases = [\"default\", \"fuzz_guard\"]\npermissions = [\"read\", \"write\"]\n"
        ),
        &[],
    );
    let body: String = (0..200i64)
        .map(|i| format!("env,room=r{} temp={} {}\n", i % 7, i, 1_764_028_800 + i))
        .collect();
    let auth = format!("Authorization: Bearer {TOKEN}");
    let runs: [(&Talo, Option<&str>); 3] = [
        (&open, None),
        (&secured, Some(WRONG)),
        (&secured, Some(auth.as_str())),
    ];
    for (talo, header) in runs {
        let curl_auth = header.map(|h| vec!["-H", h]).unwrap_or_default();
        // data the fuzzing must leave alone, and a database for /api/v1/tables and the
        // queries to find
        for (db, lines) in [("fuzz_guard", body.as_str()), ("default", "env temp=1 1\n")] {
            let url = talo.url(&format!("/api/v1/write?db={db}&precision=s"));
            let mut args = curl_auth.clone();
            args.extend(["--data-binary", lines, url.as_str()]);
            let want = if header == Some(WRONG) { "401" } else { "204" };
            assert_eq!(curl_status(&args), want, "{db}");
        }
        let mut args = vec![talo.url(""), "30".to_string()];
        args.extend(header.map(str::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = py_json("api_fuzz.py", &args);
        assert_eq!(
            v["ok"],
            true,
            "{header:?}: {}",
            v["tail"].as_str().unwrap_or("")
        );
        assert!(v["cases"].as_u64().unwrap() >= 200, "{v}");

        let out = std::process::Command::new("curl")
            .args(["-s", "-f", "-G"])
            .args(&curl_auth)
            .arg(talo.url("/api/v1/query"))
            .args(["--data-urlencode", "db=fuzz_guard"])
            .args([
                "--data-urlencode",
                "sql=SELECT count(*) AS n, sum(temp) AS s FROM env",
            ])
            .output()
            .unwrap();
        if header == Some(WRONG) {
            // the wrong token reads nothing; the valid one, next, checks the data
            assert!(!out.status.success());
            continue;
        }
        assert!(out.status.success(), "{header:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["n"], 200, "{v}");
        assert_eq!(v[0]["s"].as_f64(), Some(19900.0), "{v}");
    }
    let (s, _) = get(&open.url("/health")).unwrap();
    assert_eq!(s, 200);
}
