//! talo subscribed to a real Mosquitto broker: QoS 1 messages from mosquitto_pub become
//! rows with the route's table and tags; a poison message lands in `_rejected`; messages
//! published while talo is down are delivered from the persistent session afterwards.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

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
    let broker = Mosquitto::start(dir.path());
    let port = broker.port;
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
    while count(&talo, "house", "SELECT count(*) AS n FROM env").is_none() {
        publish_lines(port, topics[0], &messages(0, 0, 1));
        assert!(Instant::now() < deadline, "talo never received a message");
        std::thread::sleep(Duration::from_millis(100));
    }
    let already = count(&talo, "house", "SELECT count(*) AS n FROM env").unwrap();
    for (t, topic) in topics.iter().enumerate() {
        publish_lines(port, topic, &messages(t, 1000, 100));
    }
    publish_lines(
        port,
        "building/b1/kitchen/env",
        &["this is not json {".to_string()],
    );
    wait_count(
        &talo,
        "house",
        "SELECT count(*) AS n FROM env",
        already + 500,
    );
    wait_count(&talo, "house", "SELECT count(*) AS n FROM _rejected", 1);
    wait_count(
        &talo,
        "house",
        "SELECT count(*) AS n FROM env WHERE building = 'b2' AND room = 'office' AND seq >= 1000",
        100,
    );

    // talo down: the broker keeps the backlog of the persistent session
    assert!(talo.terminate(Duration::from_secs(30)).success());
    for (t, topic) in topics.iter().enumerate() {
        publish_lines(port, topic, &messages(t, 2000, 40));
    }
    let talo = Talo::start_ready(&data, &flags);
    wait_count(
        &talo,
        "house",
        "SELECT count(*) AS n FROM env",
        already + 700,
    );
    // exactly once: every (topic, seq) at most one row
    wait_count(
        &talo,
        "house",
        "SELECT count(*) AS n FROM (SELECT DISTINCT building, room, seq FROM env)",
        already + 700,
    );
}

const ROUTE: &str = "[[mqtt.routes]]\nfilter = \"building/+/+/+\"\ntopic = \"building/{building}/{room}/{table}\"\nformat = \"json\"\ndb = \"house\"\n";

fn talo_flags(dir: &std::path::Path, port: u16, client_id: &str, protocol: &str) -> Vec<String> {
    let cfg = dir.join("talo.toml");
    std::fs::write(&cfg, ROUTE).unwrap();
    vec![
        "--config".into(),
        cfg.to_str().unwrap().into(),
        "--mqtt-url".into(),
        format!("mqtt://127.0.0.1:{port}"),
        "--mqtt-client-id".into(),
        client_id.into(),
        "--mqtt-listen".into(),
        "off".into(),
        "--mqtt-protocol".into(),
        protocol.into(),
    ]
}

/// Subscribe talo's persistent session before anything is published (a QoS 1
/// subscription only queues messages published after it exists): start talo, wait until
/// the broker shows the session by delivering a probe message into `_rejected`.
fn subscribed(talo: &Talo, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(talo, "house", "SELECT count(*) AS n FROM _rejected").is_none() {
        assert!(Instant::now() < deadline, "talo never subscribed");
        publish_lines(port, "building/probe/probe/env", &["probe".to_string()]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 100k QoS 1 messages over 50 topics from paho-mqtt through Mosquitto, 1% poison, and
/// talo (speaking MQTT 5: clean start off, session expiry) killed with SIGKILL twice
/// while they stream in: afterwards every good message is
/// exactly one row with the right tags, fields and time, and every poison message is in
/// `_rejected`; the session drains (no redelivery loop).
#[test]
fn hundred_thousand_through_mosquitto_with_poison_and_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let flags = talo_flags(dir.path(), broker.port, "talo-100k", "5");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let data = dir.path().join("data");
    let talo = Talo::start_ready(&data, &flags);
    subscribed(&talo, broker.port);
    let port = broker.port.to_string();
    let mut publisher = Publisher::start(
        dir.path(),
        &[
            "--port",
            &port,
            "--count",
            "100000",
            "--topics",
            "50",
            "--poison-every",
            "100",
            "--client-id",
            "device-100k",
        ],
    );
    let mut talo = talo;
    for at in [20_000, 60_000] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while count(&talo, "house", "SELECT count(*) AS n FROM env").unwrap_or(0) < at {
            assert!(Instant::now() < deadline, "talo stalled before {at} rows");
            publisher.check();
            std::thread::sleep(Duration::from_millis(20));
        }
        talo.kill9();
        talo = Talo::start_ready(&data, &flags);
    }
    let summary = publisher.finish();
    assert_eq!(summary["acked"], 100_000, "{summary}");
    assert_eq!(summary["poison"], 1000, "{summary}");
    wait_count(&talo, "house", "SELECT count(*) AS n FROM env", 99_000);
    wait_count(
        &talo,
        "house",
        "SELECT count(DISTINCT seq) AS n FROM env",
        99_000,
    );
    wait_count(
        &talo,
        "house",
        "SELECT count(DISTINCT payload) AS n FROM _rejected WHERE reason_kind = 'invalid_utf8'",
        1000,
    );
    // the right table, tags, fields and times: topic k = seq % 50 is building/b{k%7}/r{k}
    // and ts = base + seq ms (JSON numbers are stored as floats)
    wait_count(
        &talo,
        "house",
        "SELECT count(*) AS n FROM (SELECT *, CAST(seq AS BIGINT) AS s FROM env) \
         WHERE room = concat('r', CAST(s % 50 AS VARCHAR)) \
         AND building = concat('b', CAST((s % 50) % 7 AS VARCHAR)) \
         AND time = to_timestamp_millis(1764028800000 + s) \
         AND abs(temperature - (20 + (s % 50) / 10.0)) < 1e-9",
        99_000,
    );
}

/// Mosquitto restarted (SIGTERM, it saves its persistence) while messages stream in:
/// talo reconnects with backoff and catches up; nothing lost, nothing twice.
#[test]
fn mosquitto_restart_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let flags = talo_flags(dir.path(), broker.port, "talo-restart", "3.1.1");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let talo = Talo::start_ready(&dir.path().join("data"), &flags);
    subscribed(&talo, broker.port);
    let port = broker.port.to_string();
    let mut publisher = Publisher::start(
        dir.path(),
        &[
            "--port",
            &port,
            "--count",
            "20000",
            "--client-id",
            "device-restart",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&talo, "house", "SELECT count(*) AS n FROM env").unwrap_or(0) < 5000 {
        assert!(Instant::now() < deadline, "talo stalled");
        publisher.check();
        std::thread::sleep(Duration::from_millis(20));
    }
    let broker = broker.restart();
    let summary = publisher.finish();
    assert_eq!(summary["acked"], 20_000, "{summary}");
    wait_count(&talo, "house", "SELECT count(*) AS n FROM env", 20_000);
    wait_count(
        &talo,
        "house",
        "SELECT count(DISTINCT seq) AS n FROM env",
        20_000,
    );
    // talo really reconnected (it did not just drain a buffer)
    let connects = metric(&talo, "talo_mqtt_connects_total{source=\"broker\"}");
    assert!(connects.is_some_and(|c| c >= 2.0), "{connects:?}");
    drop(broker);
}

fn seqs(talo: &Talo) -> Vec<i64> {
    let url = format!(
        "{}?db=house&sql={}",
        talo.url("/api/v1/query"),
        url_encode("SELECT CAST(seq AS BIGINT) AS s FROM env")
    );
    let (status, body) = get(&url).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["s"].as_i64().unwrap())
        .collect()
}

/// Two talo instances (own client ids, own data directories; one speaking MQTT 3.1.1,
/// the other MQTT 5) in one shared subscription group split one stream: every message
/// is stored by exactly one of them.
#[test]
fn shared_subscription_splits_the_stream_between_two_instances() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let cfg = dir.path().join("shared.toml");
    std::fs::write(
        &cfg,
        ROUTE.replace(
            "filter = \"building/+/+/+\"",
            "filter = \"$share/ingest/building/+/+/+\"",
        ),
    )
    .unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let start = |id: &str, protocol: &str| {
        let flags = [
            "--mqtt-protocol",
            protocol,
            "--config",
            cfg.to_str().unwrap(),
            "--mqtt-url",
            url.as_str(),
            "--mqtt-client-id",
            id,
            "--mqtt-listen",
            "off",
        ];
        Talo::start_ready(&dir.path().join(id), &flags)
    };
    let a = start("talo-a", "3.1.1");
    let b = start("talo-b", "5");
    // both members subscribed: probes until each has received one
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&a, "house", "SELECT count(*) AS n FROM _rejected").is_none()
        || count(&b, "house", "SELECT count(*) AS n FROM _rejected").is_none()
    {
        assert!(Instant::now() < deadline, "not both subscribed");
        publish_lines(
            broker.port,
            "building/probe/probe/env",
            &["probe".to_string()],
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = broker.port.to_string();
    let publisher = Publisher::start(
        dir.path(),
        &[
            "--port",
            &port,
            "--count",
            "20000",
            "--client-id",
            "device-shared",
        ],
    );
    assert_eq!(publisher.finish()["acked"], 20_000);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let na = count(&a, "house", "SELECT count(*) AS n FROM env").unwrap_or(0);
        let nb = count(&b, "house", "SELECT count(*) AS n FROM env").unwrap_or(0);
        if na + nb == 20_000 {
            assert!(na > 0 && nb > 0, "one member got everything: {na} / {nb}");
            break;
        }
        assert!(Instant::now() < deadline, "{na} + {nb} rows, want 20000");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut all = seqs(&a);
    all.extend(seqs(&b));
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 20_000, "no message stored by both");
}

fn sh(dir: &std::path::Path, cmd: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd}");
}

/// `mqtts://user:pass@host` to a Mosquitto that only accepts TLS with a password: talo
/// trusts the CA given with `--mqtt-ca-file`, logs in, and stores what is published.
#[test]
fn tls_and_password_to_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // a CA and a server certificate for 127.0.0.1, made with the openssl CLI
    sh(
        d,
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=talo-test-ca",
    );
    sh(
        d,
        "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
    );
    sh(
        d,
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext.cnf",
    );
    sh(
        d,
        "mosquitto_passwd -b -c passwd talo 's3cret:pass' && chmod 0600 passwd",
    );
    let port = free_port();
    // SAFETY: geteuid(2) has no preconditions.
    let as_root = if unsafe { libc::geteuid() } == 0 {
        "user root\n"
    } else {
        ""
    };
    std::fs::write(
        d.join("m.conf"),
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {0}/passwd\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n{as_root}",
            d.display()
        ),
    )
    .unwrap();
    let mut broker = Command::new("mosquitto")
        .arg("-c")
        .arg(d.join("m.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = d.join("talo.toml");
    std::fs::write(&cfg, ROUTE).unwrap();
    let url = format!("mqtts://talo:s3cret:pass@127.0.0.1:{port}");
    let ca = d.join("ca.pem");
    let talo = Talo::start_ready(
        &d.join("data"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--mqtt-url",
            &url,
            "--mqtt-ca-file",
            ca.to_str().unwrap(),
            "--mqtt-client-id",
            "talo-tls",
            "--mqtt-listen",
            "off",
        ],
    );
    let pub_tls = |msg: &str| {
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args([
                "--cafile",
                ca.to_str().unwrap(),
                "-u",
                "talo",
                "-P",
                "s3cret:pass",
            ])
            .args(["-t", "building/b9/lab/env", "-m", msg])
            .status()
            .unwrap();
        assert!(st.success());
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&talo, "house", "SELECT count(*) AS n FROM env").is_none() {
        assert!(Instant::now() < deadline, "nothing arrived over TLS");
        pub_tls(r#"{"temperature": 1.5}"#);
        std::thread::sleep(Duration::from_millis(100));
    }
    pub_tls(r#"{"temperature": 99.5, "ts": 1764028800000}"#);
    wait_count(
        &talo,
        "house",
        "SELECT count(*) AS n FROM env WHERE room = 'lab' AND temperature = 99.5",
        1,
    );
    let _ = broker.kill();
    let _ = broker.wait();
}
