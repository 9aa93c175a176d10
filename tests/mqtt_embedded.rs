//! The embedded MQTT endpoint of the real binary (`--mqtt-listen`), driven by real
//! clients (paho-mqtt, mosquitto_pub) and by hand-built packets for what no polite client
//! sends: garbage, MQTT 5, oversized publishes, wildcards in topics, silence.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubRel, Publish, Subscribe,
    SubscribeReasonCode,
};
use rumqttc::mqttbytes::{Error as CodecError, QoS};
use support::*;

/// A raw MQTT 3.1.1 connection.
struct Raw {
    s: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn open(addr: &str) -> Raw {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Raw {
            s,
            buf: BytesMut::new(),
        }
    }

    fn send(&mut self, p: Packet) {
        let mut out = BytesMut::new();
        p.write(&mut out, usize::MAX).unwrap();
        self.s.write_all(&out).unwrap();
    }

    fn send_bytes(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// The next packet, or `None` once the server closed the connection.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, 1 << 20) {
                Ok(p) => return Some(p),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(e) => panic!("bad packet from talo: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionReset
                        || e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    return None;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn connect(addr: &str, c: Connect) -> (Raw, ConnAck) {
        let mut r = Raw::open(addr);
        r.send(Packet::Connect(c));
        match r.recv() {
            Some(Packet::ConnAck(a)) => (r, a),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packets are PUBACKs for `ids`, in that order.
    fn expect_pubacks(&mut self, ids: &[u16]) {
        for &want in ids {
            match self.recv() {
                Some(Packet::PubAck(a)) => assert_eq!(a.pkid, want),
                other => panic!("expected PUBACK {want}, got {other:?}"),
            }
        }
    }

    fn publish(&mut self, topic: &str, qos: QoS, pkid: u16, payload: &[u8]) {
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid;
        self.send(Packet::Publish(p));
    }
}

fn connect_packet(id: &str) -> Connect {
    let mut c = Connect::new(id);
    c.keep_alive = 30;
    c
}

fn accepted(addr: &str, id: &str) -> Raw {
    let (r, ack) = Raw::connect(addr, connect_packet(id));
    assert_eq!(ack.code, ConnectReturnCode::Success);
    r
}

const ROUTES: &str = "[[mqtt.routes]]\nfilter = \"building/+/+/+\"\ntopic = \"building/{building}/{room}/{table}\"\nformat = \"json\"\ndb = \"house\"\n\n[[mqtt.routes]]\nfilter = \"other/#\"\nformat = \"auto\"\ndb = \"other\"\ntable = \"mqtt\"\ntopic_tag = true\n";

/// Protocol edges and hostile input on one server: every case gets its documented
/// answer, and the server keeps serving the others.
#[test]
fn protocol_edges_and_hostile_input() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("talo.toml");
    std::fs::write(&cfg, ROUTES).unwrap();
    let talo = Talo::start_ready(
        &dir.path().join("data"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--mqtt-max-packet-kb",
            "64",
        ],
    );
    let addr = talo.mqtt_addr.clone().unwrap();

    // garbage instead of CONNECT: closed, nothing else affected
    let mut g = Raw::open(&addr);
    g.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(g.recv().is_none());
    // a packet with a malformed remaining length
    let mut g = Raw::open(&addr);
    g.send_bytes(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(g.recv().is_none());

    // MQTT 5 CONNECT (protocol level 5): refused with "unacceptable protocol version"
    let mut v5 = Raw::open(&addr);
    v5.send_bytes(&[
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00, 0x03,
        b'v', b'5', b'c',
    ]);
    match v5.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReturnCode::RefusedProtocolVersion),
        other => panic!("{other:?}"),
    }

    // a persistent session needs a client id
    let mut c = connect_packet("");
    c.clean_session = false;
    let (_, ack) = Raw::connect(&addr, c);
    assert_eq!(ack.code, ConnectReturnCode::BadClientId);

    // SUBSCRIBE is refused per filter (an ingest endpoint, not a broker); PINGREQ answered
    let mut r = accepted(&addr, "edge-1");
    r.send(Packet::Subscribe(Subscribe::new(
        "building/#",
        QoS::AtLeastOnce,
    )));
    match r.recv() {
        Some(Packet::SubAck(a)) => assert_eq!(a.return_codes, vec![SubscribeReasonCode::Failure]),
        other => panic!("{other:?}"),
    }
    r.send(Packet::PingReq);
    assert_eq!(r.recv(), Some(Packet::PingResp));

    // an oversized publish (200 KiB > 64 KiB) is read past, acknowledged, recorded;
    // the next publish on the same connection is stored normally, acks in order
    let big = vec![b'x'; 200 * 1024];
    r.publish("building/b1/kitchen/env", QoS::AtLeastOnce, 10, &big);
    r.publish(
        "building/b1/kitchen/env",
        QoS::AtLeastOnce,
        11,
        br#"{"temperature": 21.5, "ts": 1764028800000}"#,
    );
    r.expect_pubacks(&[10, 11]);
    assert_eq!(
        count(
            &talo,
            "house",
            "SELECT count(*) AS n FROM env WHERE room = 'kitchen' AND temperature = 21.5"
        ),
        Some(1),
        "acknowledged means queryable"
    );
    assert_eq!(
        count(
            &talo,
            "house",
            "SELECT count(*) AS n FROM _rejected WHERE reason_kind = 'oversized' AND topic = 'building/b1/kitchen/env' AND payload LIKE 'xxxx%'"
        ),
        Some(1)
    );

    // QoS 2: a duplicate before PUBREL is not stored twice; PUBREL gets PUBCOMP
    r.publish(
        "building/b2/hall/env",
        QoS::ExactlyOnce,
        20,
        br#"{"co2": 400}"#,
    );
    let mut dup = Publish::new(
        "building/b2/hall/env",
        QoS::ExactlyOnce,
        br#"{"co2": 400}"#.to_vec(),
    );
    dup.pkid = 20;
    dup.dup = true;
    r.send(Packet::Publish(dup));
    for _ in 0..2 {
        match r.recv() {
            Some(Packet::PubRec(a)) => assert_eq!(a.pkid, 20),
            other => panic!("{other:?}"),
        }
    }
    r.send(Packet::PubRel(PubRel::new(20)));
    match r.recv() {
        Some(Packet::PubComp(a)) => assert_eq!(a.pkid, 20),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        count(
            &talo,
            "house",
            "SELECT count(*) AS n FROM env WHERE room = 'hall'"
        ),
        Some(1)
    );

    // poison on a live connection: acknowledged, in _rejected, connection stays usable
    r.publish("building/b1/bath/env", QoS::AtLeastOnce, 30, b"\xff\xfe");
    r.publish(
        "building/b1/bath/env",
        QoS::AtLeastOnce,
        31,
        br#"{"temperature": "warm"}"#,
    );
    r.publish(
        "building/b1/bath/env",
        QoS::AtLeastOnce,
        32,
        br#"{"temperature": 19.0}"#,
    );
    r.expect_pubacks(&[30, 31, 32]);
    assert_eq!(
        count(
            &talo,
            "house",
            "SELECT count(*) AS n FROM _rejected WHERE reason_kind IN ('invalid_utf8', 'type_conflict')"
        ),
        Some(2)
    );
    wait_metric(
        &talo,
        "talo_mqtt_rejected_total{source=\"listener\",route=\"building/+/+/+\",reason=\"type_conflict\"}",
        |v| v == 1.0,
    );

    // a wildcard in a PUBLISH topic is a protocol violation: the connection is closed
    r.publish("building/+/x/env", QoS::AtLeastOnce, 40, b"{}");
    assert!(r.recv().is_none());

    // takeover: a second connection with the same client id closes the first
    let mut first = accepted(&addr, "same-id");
    let mut second = accepted(&addr, "same-id");
    assert!(first.recv().is_none(), "the old connection is closed");
    second.send(Packet::PingReq);
    assert_eq!(second.recv(), Some(Packet::PingResp));

    // will: stored when the client goes silent past 1.5 x keepalive, not after DISCONNECT
    let mut c = connect_packet("will-silent");
    c.keep_alive = 1;
    c.last_will = Some(LastWill::new(
        "other/status/will-silent",
        "0",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut silent, ack) = Raw::connect(&addr, c);
    assert_eq!(ack.code, ConnectReturnCode::Success);
    let mut c = connect_packet("will-polite");
    c.last_will = Some(LastWill::new(
        "other/status/will-polite",
        "0",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut polite, _) = Raw::connect(&addr, c);
    polite.send(Packet::Disconnect);
    assert!(polite.recv().is_none());
    assert!(
        silent.recv().is_none(),
        "closed after the keepalive ran out"
    );
    wait_count(
        &talo,
        "other",
        "SELECT count(*) AS n FROM mqtt WHERE topic = 'other/status/will-silent' AND value = 0",
        1,
    );
    // every connection task has ended (gauge 1: `second`), so the polite will is not
    // merely late
    drop(first);
    wait_metric(&talo, "talo_mqtt_connections{source=\"listener\"}", |v| {
        v == 1.0
    });
    assert_eq!(
        metric(&talo, "talo_mqtt_wills_total{source=\"listener\"}"),
        Some(1.0)
    );
    assert_eq!(
        count(
            &talo,
            "other",
            "SELECT count(*) AS n FROM mqtt WHERE topic = 'other/status/will-polite'"
        ),
        Some(0)
    );

    // mosquitto_pub, a real client, still gets through after all that
    let port = addr.rsplit(':').next().unwrap();
    let st = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-q",
            "1",
            "-t",
            "other/plain",
            "-m",
            "42",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        count(
            &talo,
            "other",
            "SELECT count(*) AS n FROM mqtt WHERE topic = 'other/plain' AND value = 42"
        ),
        Some(1)
    );
    assert!(get(&talo.url("/health")).unwrap().0 == 200);
}

const TOKENS: &str = "[[tokens]]\nname = \"house-devices\"\ntoken = \"house-device-token-0123\"\ndatabases = [\"house\"]\npermissions = [\"write\"]\n\n[[tokens]]\nname = \"reader\"\ntoken = \"house-reader-token-0123\"\ndatabases = [\"*\"]\npermissions = [\"read\"]\n";

/// With tokens configured, a device logs in with a token as its password and may publish
/// only into the databases the token may write.
#[test]
fn tokens_scope_devices_to_databases() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("talo.toml");
    std::fs::write(&cfg, format!("{TOKENS}\n{ROUTES}")).unwrap();
    let talo = Talo::start_ready(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let addr = talo.mqtt_addr.clone().unwrap();

    let (_, ack) = Raw::connect(&addr, connect_packet("anon"));
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    for bad in ["wrong-token-0123456789", "house-reader-token-0123"] {
        let mut c = connect_packet("bad");
        c.set_login("dev", bad);
        let (_, ack) = Raw::connect(&addr, c);
        assert_eq!(ack.code, ConnectReturnCode::BadUserNamePassword, "{bad}");
    }
    let mut c = connect_packet("dev");
    c.set_login("dev", "house-device-token-0123");
    let (mut r, ack) = Raw::connect(&addr, c);
    assert_eq!(ack.code, ConnectReturnCode::Success);
    r.publish("other/x", QoS::AtLeastOnce, 1, b"1");
    r.publish(
        "building/b1/r1/env",
        QoS::AtLeastOnce,
        2,
        br#"{"temperature": 20}"#,
    );
    r.expect_pubacks(&[1, 2]);
    let auth = "Bearer house-reader-token-0123";
    let q = |db: &str, sql: &str| {
        let url = format!(
            "{}?db={db}&sql={}",
            talo.url("/api/v1/query"),
            url_encode(sql)
        );
        let out = Command::new("curl")
            .args(["-s", "-H", &format!("Authorization: {auth}"), &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(q("house", "SELECT count(*) AS n FROM env").contains("\"n\":1"));
    assert!(
        q("other", "SELECT count(*) AS n FROM mqtt").contains("error"),
        "nothing went to other"
    );
    let (status, body) = {
        let out = Command::new("curl")
            .args([
                "-s",
                "-H",
                &format!("Authorization: {auth}"),
                &talo.url("/metrics"),
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert!(status);
    assert!(
        body.contains("talo_mqtt_rejected_total{source=\"listener\",route=\"other/#\",reason=\"unauthorized\"} 1"),
        "{body}"
    );
}

/// Two thousand devices connected at once, each publishing one QoS 1 message: every
/// one is acknowledged and stored, and the connection gauge shows them.
#[test]
fn two_thousand_concurrent_connections() {
    let dir = tempfile::tempdir().unwrap();
    let talo = Talo::start_ready(&dir.path().join("data"), &[]);
    let addr = talo.mqtt_addr.clone().unwrap();
    const N: usize = 2000;
    let mut conns: Vec<Raw> = (0..N)
        .map(|i| accepted(&addr, &format!("dev-{i}")))
        .collect();
    wait_metric(&talo, "talo_mqtt_connections{source=\"listener\"}", |v| {
        v == N as f64
    });
    for (i, c) in conns.iter_mut().enumerate() {
        c.publish(
            &format!("flat/dev-{i}"),
            QoS::AtLeastOnce,
            1,
            format!("{i}").as_bytes(),
        );
    }
    for c in conns.iter_mut() {
        match c.recv() {
            Some(Packet::PubAck(a)) => assert_eq!(a.pkid, 1),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        count(
            &talo,
            "default",
            "SELECT count(DISTINCT topic) AS n FROM mqtt"
        ),
        Some(N as i64)
    );
    drop(conns);
    wait_metric(&talo, "talo_mqtt_connections{source=\"listener\"}", |v| {
        v == 0.0
    });
}

/// A device (paho-mqtt, persistent session, automatic reconnect) publishes 30k QoS 1
/// messages while talo is killed with SIGKILL twice and restarted on the same port: the
/// device resends what was not acknowledged, and afterwards every message is stored
/// exactly once (poison ones in `_rejected`).
#[test]
fn device_retries_through_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("talo.toml");
    std::fs::write(&cfg, ROUTES).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let flags = [
        "--config",
        cfg.to_str().unwrap(),
        "--mqtt-listen",
        listen.as_str(),
    ];
    let data = dir.path().join("data");
    let mut talo = Talo::start_ready(&data, &flags);
    let port_s = port.to_string();
    let mut publisher = Publisher::start(
        dir.path(),
        &[
            "--port",
            &port_s,
            "--count",
            "30000",
            "--topics",
            "40",
            "--poison-every",
            "100",
            "--client-id",
            "device-kill9",
        ],
    );
    for at in [5_000, 15_000] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while publisher.acked() < at {
            assert!(Instant::now() < deadline, "stuck before {at} acks");
            publisher.check();
            std::thread::sleep(Duration::from_millis(10));
        }
        talo.kill9();
        talo = Talo::start_ready(&data, &flags);
    }
    let summary = publisher.finish();
    assert_eq!(summary["acked"], 30_000, "{summary}");
    // at least one reconnect with resends; the second kill can come after the device
    // already holds every acknowledgement when the machine is busy
    assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");
    // acknowledged before the query started: no waiting needed
    assert_eq!(
        count(&talo, "house", "SELECT count(*) AS n FROM env"),
        Some(29_700)
    );
    assert_eq!(
        count(&talo, "house", "SELECT count(DISTINCT seq) AS n FROM env"),
        Some(29_700)
    );
    assert_eq!(
        count(
            &talo,
            "house",
            "SELECT count(DISTINCT payload) AS n FROM _rejected WHERE reason_kind = 'invalid_utf8'"
        ),
        Some(300)
    );
}
