//! Retention on the real binary: set in the config file per database with a per-table
//! override, changed at runtime with `PUT /api/v1/databases/{db}`; queries stop
//! returning expired rows at once and the expired segment files are deleted.

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

const DAY: i64 = 86_400_000_000_000;

fn put(url: &str, body: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-X", "PUT", "-H", "Content-Type: application/json"])
        .args(["-d", body, "-w", "\n%{http_code}", url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

#[test]
fn retention_from_config_and_at_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let talo = Talo::start_with_config(
        dir.path(),
        "[databases.house]\nretention = \"365d\"\n\n[databases.house.tables.env]\nretention = \"30d\"\n",
        &[
            "--flush-interval",
            "100ms",
            "--compaction-interval",
            "200ms",
        ],
    );
    let data = dir.path().join("data");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut lines = String::new();
    for age in [40, 10, 0] {
        lines.push_str(&format!("env,room=a v={age} {}\n", now - age * DAY));
        lines.push_str(&format!("log,room=a v={age} {}\n", now - age * DAY));
    }
    let (status, body) = post(&talo.url("/api/v1/write?db=house"), lines.as_bytes()).unwrap();
    assert_eq!(status, 204, "{body}");
    // env keeps 30 days, log the database's 365: at once, buffered or not
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM env"),
        Some(2)
    );
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM log"),
        Some(3)
    );
    let (_, dbs) = get(&talo.url("/api/v1/databases")).unwrap();
    assert!(dbs.contains("\"retention\":\"365d\""), "{dbs}");
    assert!(dbs.contains("\"env\":\"30d\""), "{dbs}");

    // the 40-day-old env partition is flushed and then deleted from disk
    let env_dir = data.join("db/house/env");
    let deadline = Instant::now() + Duration::from_secs(60);
    while parquet_files_under(&env_dir) != 2 {
        assert!(
            Instant::now() < deadline,
            "{} env files, want 2",
            parquet_files_under(&env_dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // a runtime change: queries stop returning the rows at once
    let url = talo.url("/api/v1/databases/house");
    let (code, body) = put(&url, r#"{"tables": {"env": "5d"}, "retention": "20d"}"#);
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM env"),
        Some(1)
    );
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM log"),
        Some(2)
    );
    // bad input: clear 400s, nothing changed
    for bad in [
        r#"{"retention": "soon"}"#,
        r#"{"keep": "1d"}"#,
        "[1]",
        "not json",
        r#"{"retention": 5}"#,
    ] {
        let (code, body) = put(&url, bad);
        assert_eq!(code, "400", "{bad}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    let (code, _) = put(
        &talo.url("/api/v1/databases/..bad"),
        r#"{"retention": "1d"}"#,
    );
    assert_ne!(code, "200");
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM env"),
        Some(1)
    );

    // the runtime rule survives a restart without the config file's table override
    assert!(talo.terminate(Duration::from_secs(60)).success());
    let talo = Talo::start_ready(&data, &["--flush-interval", "100ms"]);
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM env"),
        Some(1)
    );
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM log"),
        Some(2)
    );
}
