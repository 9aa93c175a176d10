//! talo subscribed to a real Mosquitto broker: QoS 1 messages from mosquitto_pub become
//! rows with the route's table and tags; a poison message lands in `_rejected`; messages
//! published while talo is down are delivered from the persistent session afterwards.

mod support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Mosquitto(Child);
impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_mosquitto(dir: &std::path::Path) -> (Mosquitto, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 100000\n",
            dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto not installed: run scripts/test.sh (installs the Debian package)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Mosquitto(child), port)
}

fn publish_lines(port: u16, topic: &str, lines: &[String]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn count(talo: &Talo, sql: &str) -> Option<i64> {
    let url = format!(
        "{}?db=house&sql={}",
        talo.url("/api/v1/query"),
        url_encode(sql)
    );
    let (status, body) = get(&url).ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v[0]["n"].as_i64()
}

fn wait_count(talo: &Talo, sql: &str, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = count(talo, sql);
        if n == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n:?}, want {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn messages(topic_no: usize, from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            format!(
                r#"{{"temperature": {}, "seq": {i}, "ts": {}}}"#,
                20 + i % 5,
                1_764_028_800_000i64 + (topic_no * 100_000 + i) as i64
            )
        })
        .collect()
}

#[test]
fn mosquitto_to_sql() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = start_mosquitto(dir.path());
    let cfg = dir.path().join("talo.toml");
    std::fs::write(
        &cfg,
        "[[mqtt.routes]]\nfilter = \"building/+/+/+\"\ntopic = \"building/{building}/{room}/{table}\"\nformat = \"json\"\ndb = \"house\"\n",
    )
    .unwrap();
    let url = format!("mqtt://127.0.0.1:{port}");
    let flags = [
        "--config",
        cfg.to_str().unwrap(),
        "--mqtt-url",
        url.as_str(),
        "--mqtt-client-id",
        "talo-test",
    ];
    let data = dir.path().join("data");
    let talo = Talo::start_ready(&data, &flags);
    // the subscription exists once the first message is through
    let topics = [
        "building/b1/kitchen/env",
        "building/b1/bath/env",
        "building/b2/hall/env",
        "building/b2/office/env",
        "building/b3/attic/env",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&talo, "SELECT count(*) AS n FROM env").is_none() {
        publish_lines(port, topics[0], &messages(0, 0, 1));
        assert!(Instant::now() < deadline, "talo never received a message");
        std::thread::sleep(Duration::from_millis(100));
    }
    let already = count(&talo, "SELECT count(*) AS n FROM env").unwrap();
    for (t, topic) in topics.iter().enumerate() {
        publish_lines(port, topic, &messages(t, 1000, 100));
    }
    publish_lines(
        port,
        "building/b1/kitchen/env",
        &["this is not json {".to_string()],
    );
    wait_count(&talo, "SELECT count(*) AS n FROM env", already + 500);
    wait_count(&talo, "SELECT count(*) AS n FROM _rejected", 1);
    wait_count(
        &talo,
        "SELECT count(*) AS n FROM env WHERE building = 'b2' AND room = 'office' AND seq >= 1000",
        100,
    );

    // talo down: the broker keeps the backlog of the persistent session
    assert!(talo.terminate(Duration::from_secs(30)).success());
    for (t, topic) in topics.iter().enumerate() {
        publish_lines(port, topic, &messages(t, 2000, 40));
    }
    let talo = Talo::start_ready(&data, &flags);
    wait_count(&talo, "SELECT count(*) AS n FROM env", already + 700);
    // exactly once: every (topic, seq) at most one row
    wait_count(
        &talo,
        "SELECT count(*) AS n FROM (SELECT DISTINCT building, room, seq FROM env)",
        already + 700,
    );
}
