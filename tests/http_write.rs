//! The real binary: line-protocol writes over HTTP (ureq and curl), graceful shutdown,
//! and the Parquet files checked by pyarrow and DuckDB.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn writes_are_stored_as_parquet_that_other_readers_understand() {
    let dir = tempfile::tempdir().unwrap();
    let talo = Talo::start_ready(dir.path(), &[]);
    let base: i64 = 1_764_028_800_000_000_000; // 2025-11-25T00:00:00Z
    let mut body = String::new();
    let mut temp_sum = 0.0;
    let mut temps = Vec::new();
    for i in 0..500i64 {
        let temp = 20.0 + (i % 7) as f64 * 0.25;
        temp_sum += temp;
        temps.push(temp);
        body.push_str(&format!(
            "env,building=b{},room=r{} id={}i,temp={temp},n={}u,occupied={},label=\"x {i}\" {}\n",
            i % 2,
            i % 5,
            i,
            i * 3,
            i % 2 == 0,
            base + i * 10_000_000_000
        ));
    }
    let (status, text) = post(&talo.url("/api/v1/write?db=house"), body.as_bytes()).unwrap();
    assert_eq!(status, 204, "{text}");

    // curl, gzip-compressed, InfluxDB v2 endpoint with second precision
    let gz = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut lines = String::new();
        for i in 500..600i64 {
            lines.push_str(&format!(
                "env,building=b9,room=r9 id={i}i,temp=1.5 {}\n",
                base / 1_000_000_000 + i
            ));
            temp_sum += 1.5;
            temps.push(1.5);
        }
        std::io::Write::write_all(&mut enc, lines.as_bytes()).unwrap();
        enc.finish().unwrap()
    };
    let gz_path = dir.path().join("body.gz");
    std::fs::write(&gz_path, gz).unwrap();
    let status = curl_status(&[
        "-XPOST",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        &format!("@{}", gz_path.display()),
        &talo.url("/api/v2/write?bucket=house&precision=s"),
    ]);
    assert_eq!(status, "204");

    // a partial write: the good line is stored, the bad ones are listed
    let (status, text) = post(
        &talo.url("/api/v1/write?db=house"),
        format!("env id=600i,temp=2.0 {base}\nenv id=\"oops\" {base}\nenv temp=NaN {base}\n")
            .as_bytes(),
    )
    .unwrap();
    temp_sum += 2.0;
    temps.push(2.0);
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["rows_written"], 1);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 2);
    assert_eq!(v["rejected"][0]["line"], 2);

    let status = talo.terminate(Duration::from_secs(30));
    assert!(status.success(), "talo exited with {status}");

    let data = dir.path().to_str().unwrap();
    let v = py_json("segments.py", &[data, "house", "env"]);
    assert_eq!(v["pyarrow_rows"], 601, "{v}");
    assert_eq!(v["duckdb_rows"], 601, "{v}");
    assert_eq!(v["manifest_rows"], 601);
    let mut ids: Vec<i64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..601).collect::<Vec<_>>());
    assert!(
        (v["duckdb_temp_sum"].as_f64().unwrap() - temp_sum).abs() < 1e-6,
        "{v}"
    );
    let schema = &v["schema"];
    assert_eq!(schema["time"], "timestamp[ns, tz=UTC]");
    assert_eq!(
        schema["building"],
        "dictionary<values=string, indices=int32, ordered=0>"
    );
    // short decimals are stored as a Parquet DECIMAL (scaled integers, 32 bits where
    // they fit), and pyarrow reads back exactly the doubles that were written
    assert_eq!(schema["temp"], "decimal32(9, 2)");
    temps.sort_by(f64::total_cmp);
    let read: Vec<f64> = v["pyarrow_temps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(read, temps);
    // integers that fit are stored in 32 bits (the table's types stay 64-bit)
    assert_eq!(schema["id"], "int32");
    assert_eq!(schema["n"], "uint32");
    assert_eq!(schema["occupied"], "bool");
    assert_eq!(schema["label"], "string");
    assert_eq!(v["compression"], "ZSTD");
    assert_eq!(v["has_page_index"], true);
    assert_eq!(v["duckdb_min_time"], "2025-11-25 00:00:00+00:00");

    // restart: the catalog and data are still there, nothing to replay
    let talo = Talo::start_ready(dir.path(), &[]);
    let (status, text) = get(&talo.url("/ready")).unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("\"wal_rows_replayed\":0"), "{text}");
    let (_, text) = get(&talo.url("/api/v1/tables?db=house")).unwrap();
    for col in ["building", "room", "id", "temp", "n", "occupied", "label"] {
        assert!(
            text.contains(&format!("\"name\":\"{col}\"")),
            "{col} missing in {text}"
        );
    }
}

#[test]
fn config_file_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    // the file names a data dir; the flag (given by Talo::start) wins over it
    let talo = Talo::start_with_config(
        dir.path(),
        "data-dir = \"/nonexistent/never\"\nflush_interval = \"1h\"\nmax-body-mb = 1\n",
        &[],
    );
    let data = dir.path().join("data");
    // max-body-mb = 1 from the file applies: a small gzip body that expands to 2 MiB is
    // read whole by the server and refused (an uncompressed 2 MiB body could be cut off
    // mid-upload when the server answers early, which makes the client's write fail)
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![b'#'; 2 << 20]).unwrap();
    let gz = enc.finish().unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-XPOST",
            "-H",
            "Content-Encoding: gzip",
            "--data-binary",
            "@-",
        ])
        .arg(talo.url("/api/v1/write?db=x"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(c.stdin.as_mut().unwrap(), &gz)?;
            drop(c.stdin.take());
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n413"), "{text}");
    assert!(text.contains("larger than 1048576 bytes"), "{text}");
    assert!(data.join("wal").is_dir());
    drop(talo);

    let cfg = dir.path().join("talo.toml");
    std::fs::write(&cfg, "no-such-key = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key"));
}

/// `segment-decimal-floats = false` and `segment-narrow-integers = false` (config file;
/// any `serve` flag is a key there): float fields are written as Parquet doubles,
/// integers in 64 bits.
#[test]
fn compact_stored_types_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let talo = Talo::start_with_config(
        dir.path(),
        "segment-decimal-floats = false\nsegment-narrow-integers = false\nsegment_zstd_level = 5\n",
        &[],
    );
    let data = dir.path().join("data");
    let body: String = (0..10)
        .map(|i| format!("env,room=r{i} id={i}i,temp=2{i}.5 1764028800000000000\n"))
        .collect();
    let (status, text) = post(&talo.url("/api/v1/write?db=house"), body.as_bytes()).unwrap();
    assert_eq!(status, 204, "{text}");
    let status = talo.terminate(Duration::from_secs(30));
    assert!(status.success(), "talo exited with {status}");
    let v = py_json("segments.py", &[data.to_str().unwrap(), "house", "env"]);
    assert_eq!(v["schema"]["temp"], "double", "{v}");
    assert_eq!(v["schema"]["id"], "int64", "{v}");
    assert_eq!(v["duckdb_temp_sum"], 250.0, "{v}");
}
