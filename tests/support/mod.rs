//! Start the real `talo` binary and talk to it with real clients.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_talo");

/// A running `talo serve`.
pub struct Talo {
    pub child: Child,
    pub addr: String,
    /// The embedded MQTT endpoint, unless started with `--mqtt-listen off`.
    pub mqtt_addr: Option<String>,
    pub data_dir: PathBuf,
}

impl Talo {
    /// Start on free ports with `extra` flags; waits until the addresses are known.
    /// The embedded MQTT endpoint listens on a free port unless `extra` says otherwise.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Talo {
        Talo::start_in(None, data_dir, extra)
    }

    /// [`Talo::start`] in working directory `cwd` (for relative paths).
    pub fn start_in(cwd: Option<&Path>, data_dir: &Path, extra: &[&str]) -> Talo {
        let mut cmd = Command::new(BIN);
        if let Some(c) = cwd {
            cmd.current_dir(c);
        }
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http-addr", "127.0.0.1:0"]);
        let listen_given = extra.iter().position(|a| *a == "--mqtt-listen");
        if listen_given.is_none() {
            cmd.args(["--mqtt-listen", "127.0.0.1:0"]);
        }
        let mqtt_on = listen_given.is_none_or(|i| extra.get(i + 1) != Some(&"off"));
        let mut child = cmd
            .args(extra)
            .env(
                "TALO_LOG",
                std::env::var("TALO_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start talo");
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).expect("read address line");
        let addr = line
            .trim()
            .strip_prefix("talo listening http=")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let mqtt_addr = mqtt_on.then(|| {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read MQTT address line");
            line.trim()
                .strip_prefix("talo listening mqtt=")
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                .to_string()
        });
        Talo {
            child,
            addr,
            mqtt_addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Start and wait for `/ready`.
    pub fn start_ready(data_dir: &Path, extra: &[&str]) -> Talo {
        let t = Talo::start(data_dir, extra);
        t.wait_ready(Duration::from_secs(60));
        t
    }

    /// Write `toml` to `dir/talo.toml` and start on `dir/data` with `--config` it (plus
    /// `extra`), waiting for `/ready`.
    pub fn start_with_config(dir: &Path, toml: &str, extra: &[&str]) -> Talo {
        let cfg = dir.join("talo.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut args = vec!["--config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        Talo::start_ready(&dir.join("data"), &args)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn wait_ready(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((200, _)) = get(&self.url("/ready")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "talo did not become ready within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status (must exit by itself within `limit`).
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("talo did not exit within {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Talo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET → (status, body).
pub fn get(url: &str) -> Result<(u16, String), ureq::Error> {
    let mut r = agent().get(url).call()?;
    let status = r.status().as_u16();
    Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
}

/// POST bytes → (status, body).
pub fn post(url: &str, body: &[u8]) -> Result<(u16, String), ureq::Error> {
    let mut r = agent().post(url).send(body)?;
    let status = r.status().as_u16();
    Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
}

/// The Python with pyarrow and duckdb (set up by `scripts/test.sh`).
pub fn python() -> String {
    std::env::var("TALO_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Run `tests/py/<script>` with args and parse its JSON output.
pub fn py_json(script: &str, args: &[&str]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .expect("run python (set TALO_TEST_PYTHON, see scripts/test.sh)");
    assert!(
        out.status.success(),
        "{script} failed (does {} have pyarrow and duckdb? run scripts/test.sh):\n{}",
        python(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("script output is JSON")
}

/// The HTTP status `curl` gets with `args` (its options, then the URL).
pub fn curl_status(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Percent-encode a query-string value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (for a listener that must keep its port over restarts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real Mosquitto broker on `port` with persistence in `dir`; killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // started as root, Mosquitto drops to user `mosquitto`, which cannot write its
        // persistence file into our private temp dir: stay root then
        // SAFETY: geteuid(2) has no preconditions.
        let as_root = if unsafe { libc::geteuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 1000\n{as_root}",
                dir.display()
            ),
        )
        .unwrap();
        Mosquitto::run(conf, port)
    }

    fn run(conf: PathBuf, port: u16) -> Mosquitto {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto not installed: run scripts/test.sh (installs the Debian package)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port, conf }
    }

    /// SIGTERM (Mosquitto saves its persistence file), wait, start again on the same port.
    pub fn restart(mut self) -> Mosquitto {
        unsafe_sigterm(self.child.id());
        let _ = self.child.wait();
        let conf = std::mem::take(&mut self.conf);
        let port = self.port;
        Mosquitto::run(conf, port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_sigterm(pid: u32) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

/// Poll a `SELECT ... AS n` query on `db` until it returns `want` (90 s deadline).
pub fn wait_count(talo: &Talo, db: &str, sql: &str, want: i64) {
    wait_count_at(&talo.url(""), db, sql, want, Duration::from_secs(90));
}

/// [`wait_count`] against the server at `base` (`http://host:port`) with deadline `limit`.
pub fn wait_count_at(base: &str, db: &str, sql: &str, want: i64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let n = count_at(base, db, sql);
        if n == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n:?}, want {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `n` of a `SELECT ... AS n` query, `None` while the table does not exist.
pub fn count(talo: &Talo, db: &str, sql: &str) -> Option<i64> {
    count_at(&talo.url(""), db, sql)
}

/// [`count`] against the server at `base` (`http://host:port`).
pub fn count_at(base: &str, db: &str, sql: &str) -> Option<i64> {
    let url = format!("{base}/api/v1/query?db={db}&sql={}", url_encode(sql));
    let (status, body) = get(&url).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v[0]["n"].as_i64()
}

/// `tests/py/publish.py` (paho-mqtt) running in the background.
pub struct Publisher {
    child: Child,
    pub progress: PathBuf,
}

impl Publisher {
    /// Start publishing; `args` as for `publish.py` (`--port` and `--count` at least).
    pub fn start(progress_dir: &Path, args: &[&str]) -> Publisher {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/publish.py");
        let progress = progress_dir.join(format!("progress-{}", free_port()));
        let child = Command::new(python())
            .arg(&path)
            .args(args)
            .arg("--progress-file")
            .arg(&progress)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run python (set TALO_TEST_PYTHON, see scripts/test.sh)");
        Publisher { child, progress }
    }

    /// Messages acknowledged so far (to the publisher, by whoever it talks to).
    pub fn acked(&self) -> u64 {
        std::fs::read_to_string(&self.progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Panic if the publisher died early (instead of waiting for a deadline).
    pub fn check(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            assert!(status.success(), "publisher exited early: {status}");
        }
    }

    /// Wait until at least `n` messages are acknowledged.
    pub fn wait_acked(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.acked() < n {
            assert!(
                Instant::now() < deadline,
                "publisher stuck at {} acks, want {n}",
                self.acked()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the publisher to finish and return its JSON summary.
    pub fn finish(self) -> serde_json::Value {
        let out = self.child.wait_with_output().expect("publisher");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "publisher output is not JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert!(out.status.success(), "publisher failed: {v}");
        v
    }
}

/// The value of one series in `/metrics` (name with its labels, e.g.
/// `talo_mqtt_connections{source="listener"}`), `None` if absent or unreachable.
pub fn metric(talo: &Talo, series: &str) -> Option<f64> {
    let (_, body) = get(&talo.url("/metrics")).ok()?;
    body.lines()
        .find(|l| l.strip_prefix(series).is_some_and(|r| r.starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Poll [`metric`] until `ok` holds (deadline 120 s); returns the value.
pub fn wait_metric(talo: &Talo, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = metric(talo, series)
            && ok(v)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series}: {:?}",
            metric(talo, series)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Parquet files anywhere below `dir`.
pub fn parquet_files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        parquet_files_under(&p)
                    } else {
                        usize::from(p.extension().is_some_and(|x| x == "parquet"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
