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
    pub data_dir: PathBuf,
}

impl Talo {
    /// Start on a free port with `extra` flags; waits until the address is known.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Talo {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http-addr", "127.0.0.1:0"])
            .args(extra)
            .env("TALO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start talo");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read address line");
        let addr = line
            .trim()
            .strip_prefix("talo listening http=")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Talo {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Start and wait for `/ready`.
    pub fn start_ready(data_dir: &Path, extra: &[&str]) -> Talo {
        let t = Talo::start(data_dir, extra);
        t.wait_ready(Duration::from_secs(60));
        t
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
