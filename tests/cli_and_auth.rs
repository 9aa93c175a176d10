//! The real binary with tokens from the config file, driven by its own CLI clients and
//! by curl: isolation between two projects' databases.

mod support;

use std::process::Command;

use support::*;

const HOUSE: &str = "house-token-0123456789";
const TOE: &str = "toe-token-abcdefghijkl";

fn cli(talo: &Talo, args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(args).args(["--url", &talo.url("")]);
    if let Some(t) = token {
        c.env("TALO_TOKEN", t);
    }
    c.output().unwrap()
}

/// `talo serve` on an ephemeral HTTP port with `args`, expected to stop by itself (a
/// startup error): its exit status and output.
fn serve_until_exit(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["serve", "--http-addr", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

#[test]
fn tokens_from_config_file_and_cli_clients() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("talo.toml");
    std::fs::write(dir.path().join("toe.secret"), format!("{TOE}\n")).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "flush-interval = \"1h\"\n\
             [[tokens]]\nname = \"house\"\ntoken = \"{HOUSE}\"\ndatabases = [\"house\"]\npermissions = [\"read\", \"write\"]\n\
             [[tokens]]\nname = \"toe\"\ntoken_file = \"{}\"\ndatabases = [\"toe\"]\npermissions = [\"read\", \"write\"]\n",
            dir.path().join("toe.secret").display()
        ),
    )
    .unwrap();
    let talo = Talo::start_ready(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );

    let lp = dir.path().join("in.lp");
    std::fs::write(&lp, "env,room=kitchen temp=21.5,co2=500i 1764028800\nenv,room=bath temp=23.0,co2=450i 1764028810\n").unwrap();
    let out = cli(
        &talo,
        &[
            "write",
            lp.to_str().unwrap(),
            "--db",
            "house",
            "--precision",
            "s",
        ],
        Some(HOUSE),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the other project's token may not write here, and no token is no access
    let out = cli(
        &talo,
        &["write", lp.to_str().unwrap(), "--db", "house"],
        Some(TOE),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&talo, &["query", "SELECT 1", "--db", "house"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    let out = cli(
        &talo,
        &[
            "query",
            "SELECT room, temp, co2 FROM env ORDER BY room",
            "--db",
            "house",
        ],
        Some(HOUSE),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| room")
            && table.contains("| kitchen | 21.5 | 500 |")
            && table.contains("| bath    | 23.0 | 450 |"),
        "{table}"
    );
    let out = cli(
        &talo,
        &[
            "query",
            "SELECT count(*) AS n FROM env",
            "--db",
            "house",
            "--format",
            "csv",
        ],
        Some(HOUSE),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n2\n");

    // curl with the InfluxDB v1 parameters and the Token scheme
    let url = talo.url(&format!("/write?db=toe&u=x&p={TOE}"));
    assert_eq!(
        curl_status(&["-XPOST", &url, "--data-binary", "env temp=1 1"]),
        "204"
    );
    let url = talo.url("/api/v1/query?db=toe&sql=SELECT%20*%20FROM%20house.env");
    assert_eq!(
        curl_status(&["-H", &format!("Authorization: Token {TOE}"), &url]),
        "403"
    );
    assert_eq!(curl_status(&[&talo.url("/metrics")]), "401");
    assert_eq!(curl_status(&[&talo.url("/health")]), "200");

    // a bad token section stops startup with a clear message
    std::fs::write(&cfg, "[[tokens]]\nname = \"x\"\ntoken = \"short\"\ndatabases = [\"a\"]\npermissions = [\"read\"]\n").unwrap();
    let out = serve_until_exit(&["--config", cfg.to_str().unwrap()], &dir.path().join("d2"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 16"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A setting the engine rejects stops startup with a clear message: what is wrong, its
/// prefix said once ("invalid configuration: compaction cold-after must be > 0 …").
#[test]
fn invalid_engine_setting() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve_until_exit(
        &["--mqtt-listen", "off", "--compaction-cold-after", "0s"],
        &dir.path().join("d"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("compaction cold-after must be > 0"), "{err}");
    // (said on the log line and on the final `talo: ...` line, each once)
    assert!(
        err.contains("talo: invalid configuration: compaction cold-after")
            && !err.contains("invalid configuration: invalid configuration"),
        "{err}"
    );
}

/// `--data-dir data` (relative, no `./`) works: the parent of the directory is the
/// working directory, which must be fsynced like any other, and queries find the flushed
/// segments (they were once looked up at `/data/...`, relative to the root).
#[test]
fn relative_data_dir() {
    let cwd = tempfile::tempdir().unwrap();
    let talo = Talo::start_in(
        Some(cwd.path()),
        std::path::Path::new("data"),
        &["--flush-interval", "50ms"],
    );
    talo.wait_ready(std::time::Duration::from_secs(60));
    let (status, body) = post(&talo.url("/api/v1/write?db=rel"), b"m v=1 1\n").unwrap();
    assert_eq!(status, 204, "{body}");
    assert!(cwd.path().join("data").is_dir());
    wait_metric(&talo, "talo_flushes_total", |v| v >= 1.0);
    let (status, body) = get(&format!(
        "{}?db=rel&sql={}",
        talo.url("/api/v1/query"),
        url_encode("SELECT v FROM m")
    ))
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"v\":1"), "{body}");
}

/// The default MQTT port taken (a broker already runs there): talo still starts, without
/// the embedded endpoint, and says why; an explicitly given address that is taken fails
/// the start with a clear message.
#[test]
fn taken_mqtt_port() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    // hold 127.0.0.1:1883 unless something else already does
    let _held = std::net::TcpListener::bind("127.0.0.1:1883");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--http-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("a"))
        .env_remove("TALO_MQTT_LISTEN")
        .env("TALO_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("talo listening http=")
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while get(&format!("http://{addr}/ready"))
        .map(|r| r.0)
        .unwrap_or(0)
        != 200
    {
        assert!(std::time::Instant::now() < deadline, "not ready");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut err = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    stderr.read_line(&mut err).unwrap();
    assert!(err.contains("embedded MQTT endpoint is OFF"), "{err}");
    let _ = child.kill();
    let _ = child.wait();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap().to_string();
    let out = serve_until_exit(&["--mqtt-listen", &a], &dir.path().join("b"));
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("binding the MQTT address"), "{msg}");
}
