//! Compaction on the real binary: many small flushes over 30 simulated days, with points
//! rewritten across flushes; SQL results are identical before and after compaction, also
//! when talo is killed with SIGKILL again and again while it compacts; afterwards the
//! file count is bounded and no orphan file is left.

mod support;

use std::time::{Duration, Instant};

use support::*;

const DAY_NS: i64 = 86_400_000_000_000;
const T0: i64 = 1_764_028_800_000_000_000;

/// The query results compared before and after.
fn answers(talo: &Talo) -> Vec<String> {
    [
        "SELECT * FROM env ORDER BY sensor, time",
        // avg rounded: the summation order differs between many files and one
        "SELECT sensor, count(*), round(avg(temperature), 9), max(co2), sum(CASE WHEN occupied THEN 1 ELSE 0 END) FROM env GROUP BY sensor ORDER BY sensor",
        "SELECT date_bin(INTERVAL '1 day', time) AS day, count(*), min(temperature) FROM env GROUP BY 1 ORDER BY 1",
    ]
    .iter()
    .map(|sql| {
        let url = format!(
            "{}?db=house&format=csv&sql={}",
            talo.url("/api/v1/query"),
            url_encode(sql)
        );
        let (status, body) = get(&url).unwrap();
        assert_eq!(status, 200, "{sql}: {body}");
        body
    })
    .collect()
}

/// One write: every sensor once per simulated day over 30 days; round `r` rewrites the
/// readings of round r-1 for half the sensors (same time) with other values, and adds
/// new times for the rest.
fn body(round: i64) -> String {
    let mut out = String::new();
    for day in 0..30 {
        for s in 0..40 {
            let time = if s % 2 == 0 && round > 0 {
                T0 + day * DAY_NS + (round - 1) * 1_000_000_000
            } else {
                T0 + day * DAY_NS + round * 1_000_000_000
            };
            let temp = 20.0 + f64::from((round * 7 + s + day) as i32 % 50) / 10.0;
            if s % 5 == 0 {
                // a partial point: only one field, the other keeps its earlier value
                out.push_str(&format!("env,sensor=s{s:02} temperature={temp} {time}\n"));
            } else {
                out.push_str(&format!(
                    "env,sensor=s{s:02} temperature={temp},co2={}i,occupied={} {time}\n",
                    400 + round * 3 + s,
                    (round + s) % 3 == 0
                ));
            }
        }
    }
    out
}

#[test]
fn compaction_under_kill9_keeps_answers_and_leaves_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let common = ["--flush-interval", "50ms", "--mqtt-listen", "off"];
    let mut flags: Vec<&str> = common.to_vec();
    flags.extend(["--compaction-interval", "off"]);
    let talo = Talo::start_ready(&data, &flags);
    for round in 0..16 {
        let (status, b) =
            post(&talo.url("/api/v1/write?db=house"), body(round).as_bytes()).unwrap();
        assert_eq!(status, 204, "{b}");
        // each write becomes its own flush: 30 segments, one per day
        wait_metric(&talo, "talo_buffer_rows", |v| v == 0.0);
        wait_metric(&talo, "talo_segments", |v| v >= (30 * (round + 1)) as f64);
    }
    let segments_before = metric(&talo, "talo_segments").unwrap();
    assert_eq!(segments_before, 480.0);
    let before = answers(&talo);
    assert!(
        before[0].lines().count() > 30 * 40 * 8,
        "{}",
        before[0].lines().count()
    );
    assert!(talo.terminate(Duration::from_secs(60)).success());

    // compaction on; kill -9 at different moments of it, five times
    let mut flags: Vec<&str> = common.to_vec();
    flags.extend([
        "--compaction-interval",
        "100ms",
        "--compaction-min-files",
        "4",
    ]);
    for i in 0..5u64 {
        let talo = Talo::start_ready(&data, &flags);
        let start = metric(&talo, "talo_segments").unwrap();
        if start <= 30.0 {
            talo.kill9();
            break; // all merged already
        }
        // wait until compaction is visibly under way (or a little longer each time)
        let deadline = Instant::now() + Duration::from_millis(50 * i);
        while metric(&talo, "talo_compactions_total").unwrap_or(0.0) < 1.0
            || Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
            if metric(&talo, "talo_segments").unwrap_or(0.0) <= 30.0 {
                break;
            }
        }
        talo.kill9();
    }
    let talo = Talo::start_ready(&data, &flags);
    wait_metric(&talo, "talo_segments", |v| v == 30.0);
    // old files are deleted once no query holds them: at most a pass later
    let deadline = Instant::now() + Duration::from_secs(30);
    while parquet_files_under(&data.join("db")) != 30 {
        assert!(
            Instant::now() < deadline,
            "{} parquet files, 30 segments",
            parquet_files_under(&data.join("db"))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = answers(&talo);
    for (b, a) in before.iter().zip(&after) {
        assert!(b == a, "results differ after compaction:\n{b}\n---\n{a}");
    }
}
