//! Rollups on the real binary: rules in the config file, kept up to date as data arrives,
//! every rollup row equal to the same aggregate computed from the raw data with SQL — after
//! the first load, after late and out-of-order writes (overwrites, new points, a new series
//! in old intervals), and after a kill -9 that strikes when the late rows have already left
//! the WAL but were not rolled up yet.

mod support;

use std::time::Duration;

use support::*;

const T0: i64 = 1_764_028_800; // seconds, a midnight UTC

const CONFIG: &str = r#"
[[databases.house.rollups]]
source = "env"
table = "env_5m"
interval = "5m"
aggregates = ["avg", "min", "max", "count"]

[[databases.house.rollups]]
source = "env"
table = "env_1h"
interval = "1h"
aggregates = ["sum", "max", "count"]
"#;

/// Rows of the raw aggregate with no identical rollup row, plus rollup rows with no raw
/// counterpart (a full outer join): 0 when the rollup is exactly right.
fn mismatches_5m() -> String {
    let bucket = "date_bin(INTERVAL '5 minutes', time, TIMESTAMP '1970-01-01T00:00:00Z')";
    let mut checks = Vec::new();
    for f in ["temperature", "co2", "hits"] {
        checks.push(format!(
            "((raw.{f}_avg IS NULL) <> (r.{f}_avg IS NULL)) OR (abs(raw.{f}_avg - r.{f}_avg) > 1e-9 * greatest(1.0, abs(raw.{f}_avg)))"
        ));
        for a in ["min", "max", "count"] {
            // (parenthesized: the SQL parser binds IS DISTINCT FROM looser than OR)
            checks.push(format!("(raw.{f}_{a} IS DISTINCT FROM r.{f}_{a})"));
        }
    }
    let aggs: Vec<String> = ["temperature", "co2", "hits"]
        .iter()
        .flat_map(|f| {
            ["avg", "min", "max", "count"]
                .iter()
                .map(move |a| format!("{a}({f}) AS {f}_{a}"))
        })
        .collect();
    format!(
        "WITH raw AS (SELECT building, sensor, {bucket} AS t, {} FROM env GROUP BY building, sensor, {bucket}) \
         SELECT count(*) AS n FROM raw FULL OUTER JOIN env_5m r \
         ON raw.building = r.building AND raw.sensor = r.sensor AND raw.t = r.time \
         WHERE raw.t IS NULL OR r.time IS NULL OR {}",
        aggs.join(", "),
        checks.join(" OR ")
    )
}

fn mismatches_1h() -> String {
    let bucket = "date_bin(INTERVAL '1 hour', time, TIMESTAMP '1970-01-01T00:00:00Z')";
    format!(
        "WITH raw AS (SELECT building, sensor, {bucket} AS t, sum(temperature) AS ts, max(co2) AS cm, \
         count(hits) AS hc, sum(hits) AS hs FROM env GROUP BY building, sensor, {bucket}) \
         SELECT count(*) AS n FROM raw FULL OUTER JOIN env_1h r \
         ON raw.building = r.building AND raw.sensor = r.sensor AND raw.t = r.time \
         WHERE raw.t IS NULL OR r.time IS NULL \
         OR (abs(raw.ts - r.temperature_sum) > 1e-9 * greatest(1.0, abs(raw.ts))) \
         OR (raw.cm IS DISTINCT FROM r.co2_max) OR (raw.hc IS DISTINCT FROM r.hits_count) \
         OR (raw.hs IS DISTINCT FROM r.hits_sum)"
    )
}

fn assert_rollups_match(talo: &Talo) {
    wait_count(talo, "house", &mismatches_5m(), 0);
    wait_count(talo, "house", &mismatches_1h(), 0);
}

fn write(talo: &Talo, body: &str) {
    let (status, answer) = post(
        &talo.url("/api/v1/write?db=house&precision=s"),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 204, "{answer}");
}

/// 6 sensors every 10 s for 3 hours; floats, integers, unsigned, plus a bool and a string
/// that rollups skip (not numeric). One sensor leaves `co2` out now and then.
fn base_data() -> String {
    let mut out = String::new();
    for s in 0..6 {
        for k in 0..1080 {
            let t = T0 + k * 10;
            let temp = 20.0 + ((k + s * 17) % 37) as f64 / 8.0;
            let co2 = if s == 5 && k % 4 == 0 {
                String::new()
            } else {
                format!("co2={}i,", 400 + (k * 7 + s) % 300)
            };
            out.push_str(&format!(
                "env,building=b{},sensor=s{s} temperature={temp},{co2}hits={}u,occupied={},note=\"x\" {t}\n",
                s % 2,
                (k + s) % 5,
                k % 3 == 0
            ));
        }
    }
    out
}

#[test]
fn rollups_equal_sql_over_raw_data_through_late_writes_and_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("talo.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let data = dir.path().join("data");
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let talo = Talo::start_ready(&data, &["--config", &cfg_arg, "--rollup-interval", "100ms"]);
    write(&talo, &base_data());
    assert_rollups_match(&talo);
    // 6 sensors × 36 five-minute intervals; 6 × 3 hours
    wait_count(&talo, "house", "SELECT count(*) AS n FROM env_5m", 216);
    wait_count(&talo, "house", "SELECT count(*) AS n FROM env_1h", 18);
    // the rollup is an ordinary table with typed columns
    wait_count(
        &talo,
        "house",
        "SELECT count(*) AS n FROM env_5m WHERE temperature_count = 30 AND co2_count = 30 AND hits_max <= 4",
        216 - 36, // sensor 5 leaves co2 out of a quarter of its points
    );

    // late and out-of-order: overwrite points of the first hour, add points between them,
    // and a new series that only has old data
    let mut late = String::new();
    for k in (0..360).step_by(7) {
        late.push_str(&format!(
            "env,building=b0,sensor=s0 temperature={},co2={}i {}\n",
            -5.0 - k as f64,
            10_000 + k,
            T0 + k * 10
        ));
        late.push_str(&format!(
            "env,building=b1,sensor=s1 temperature=99.5,hits=7u {}\n",
            T0 + k * 10 + 5
        ));
        late.push_str(&format!(
            "env,building=b9,sensor=new temperature=1.5,co2=1i,hits=1u {}\n",
            T0 + k * 10
        ));
    }
    write(&talo, &late);
    assert_rollups_match(&talo);

    // crash where only dirty.json remembers: rollups paused (a long interval), a late
    // write flushed out of the WAL at once, then kill -9
    talo.terminate(Duration::from_secs(60));
    let talo = Talo::start_ready(
        &data,
        &[
            "--config",
            &cfg_arg,
            "--rollup-interval",
            "1h",
            "--flush-interval",
            "50ms",
        ],
    );
    assert_rollups_match(&talo); // the first pass at start has nothing left to do
    let mut later = String::new();
    for k in (0..1080).step_by(13) {
        later.push_str(&format!(
            "env,building=b0,sensor=s2 temperature=-40,co2=5000i,hits=9u {}\n",
            T0 + k * 10 + 3
        ));
    }
    write(&talo, &later);
    // flushed: the buffer is empty again and the WAL holds no record (files of just a
    // 16-byte header, or none)
    wait_metric(&talo, "talo_buffer_rows", |v| v == 0.0);
    let wal = data.join("wal");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .any(|e| e.metadata().is_ok_and(|m| m.len() > 16))
    {
        assert!(std::time::Instant::now() < deadline, "WAL not emptied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(
        count(&talo, "house", &mismatches_5m()),
        Some(0),
        "the rollup must be stale here (paused), or this part tests nothing"
    );
    talo.kill9();
    let talo = Talo::start_ready(&data, &["--config", &cfg_arg, "--rollup-interval", "100ms"]);
    let (_, ready) = get(&talo.url("/ready")).unwrap();
    assert!(
        ready.contains("\"wal_rows_replayed\":0"),
        "the late rows left the WAL: {ready}"
    );
    assert_rollups_match(&talo);
}

/// A rule added to a source that already has data — here next to a rule that has rolled it
/// up already, so the source's changed ranges were taken and settled: the new rollup is
/// backfilled from everything the source holds at the next start.
#[test]
fn a_new_rule_backfills_existing_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("talo.toml");
    let first_rule = &CONFIG[..CONFIG.rfind("\n[[databases.house.rollups]]\n").unwrap()];
    std::fs::write(&cfg, first_rule).unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    let talo = Talo::start_ready(&data, &["--config", &cfg_arg, "--rollup-interval", "100ms"]);
    write(&talo, &base_data());
    wait_count(&talo, "house", &mismatches_5m(), 0);
    talo.terminate(Duration::from_secs(60));
    std::fs::write(&cfg, CONFIG).unwrap();
    let talo = Talo::start_ready(&data, &["--config", &cfg_arg, "--rollup-interval", "100ms"]);
    assert_rollups_match(&talo);
    wait_count(&talo, "house", "SELECT count(*) AS n FROM env_1h", 18);
}
