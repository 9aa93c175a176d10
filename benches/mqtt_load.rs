//! MQTT load generator: many simulated sensors publishing 8-field JSON readings (the
//! smart-building workload of `workload.rs`) over several MQTT 3.1.1 connections, QoS 0
//! or 1, at a target rate or as fast as acknowledgements allow. Reports sent and
//! acknowledged messages/s, PUBACK latency, and (with `--http`) publish → visible in SQL
//! latency measured by probe messages polled for with queries.
//!
//! ```text
//! cargo bench --bench mqtt_load -- --addr 127.0.0.1:1883 [--connections 16]
//!     [--sensors 4000] [--duration 20 | --count N] [--rate 0] [--qos 1]
//!     [--inflight 2000] [--http 127.0.0.1:8080] [--sink]
//! ```
//! `--sink` starts a built-in endpoint that acknowledges at once and stores nothing, and
//! loads it: the loader's own ceiling, to check that it is not the bottleneck.
//! Packets are built with the MQTT codec of rumqttc and written in large batches, so the
//! loader spends little CPU per message (it shares the machine with the server).

#[path = "workload.rs"]
mod workload;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
struct Args {
    addr: String,
    connections: usize,
    sensors: usize,
    duration: Duration,
    count: Option<u64>,
    rate: u64,
    qos: u8,
    inflight: usize,
    http: Option<String>,
    sink: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:1883".into(),
        connections: 16,
        sensors: 4000,
        duration: Duration::from_secs(20),
        count: None,
        rate: 0,
        qos: 1,
        inflight: 2000,
        http: None,
        sink: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = v(),
            "--connections" => a.connections = v().parse().expect("number"),
            "--sensors" => a.sensors = v().parse().expect("number"),
            "--duration" => a.duration = Duration::from_secs_f64(v().parse().expect("seconds")),
            "--count" => a.count = Some(v().parse().expect("number")),
            "--rate" => a.rate = v().parse().expect("number"),
            "--qos" => a.qos = v().parse().expect("0 or 1"),
            "--inflight" => a.inflight = v().parse().expect("number"),
            "--http" => a.http = Some(v()),
            "--sink" => a.sink = true,
            "--bench" => {} // passed by `cargo bench`
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.connections > 0 && a.sensors >= a.connections);
    a
}

#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    acked: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn mqtt_connect(addr: &str, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).ok();
    let mut c = Connect::new(id);
    c.keep_alive = 60;
    let mut out = BytesMut::new();
    Packet::Connect(c).write(&mut out, usize::MAX).unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if let Ok(Packet::ConnAck(a)) = Packet::read(&mut buf, 1 << 20) {
            assert_eq!(a.code, ConnectReturnCode::Success, "CONNACK refused");
            return s;
        }
        assert!(
            s.read_buf(&mut buf).await.unwrap() > 0,
            "closed before CONNACK"
        );
    }
}

/// One connection publishing the readings of its sensors.
async fn publisher(conn: usize, a: Arc<Args>, totals: Arc<Totals>, stop: Arc<AtomicBool>) {
    let per_conn = a.sensors / a.connections;
    let mut w = workload::Workload::new(per_conn, 42 + conn as u64);
    for (i, s) in w.sensors.iter_mut().enumerate() {
        let g = conn * per_conn + i;
        s.building = format!("b{:04}", g / 40);
        s.room = format!("r{:02}", (g / 2) % 20);
        s.sensor = format!("s{g:06}");
    }
    let stream = mqtt_connect(&a.addr, &format!("load-{conn}-{}", std::process::id())).await;
    let (mut rd, mut wr) = stream.into_split();
    let qos = if a.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let window = Arc::new(Semaphore::new(a.inflight));
    let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let reader = {
        let window = Arc::clone(&window);
        let sent_at = Arc::clone(&sent_at);
        let totals = Arc::clone(&totals);
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut lat = Vec::new();
            loop {
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let mut n = 0;
                while let Ok(p) = Packet::read(&mut buf, 1 << 20) {
                    if let Packet::PubAck(_) = p {
                        n += 1;
                        if let Some(t) = sent_at.lock().unwrap().pop_front() {
                            lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        }
                    }
                }
                if n > 0 {
                    totals.acked.fetch_add(n, Ordering::Relaxed);
                    window.add_permits(n as usize);
                }
            }
            totals.latencies_us.lock().unwrap().extend(lat);
        })
    };
    let per_conn_rate = a.rate as f64 / a.connections as f64;
    let quota = a.count.map(|c| c / a.connections as u64);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut pkid: u16 = 0;
    let mut out = BytesMut::with_capacity(128 * 1024);
    'outer: while !stop.load(Ordering::Relaxed) {
        let msgs = w.json_messages();
        for (topic, payload) in msgs {
            if quota.is_some_and(|q| sent >= q) || stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            if qos == QoS::AtLeastOnce {
                // flush what is built before waiting for acknowledgements
                if window.available_permits() == 0 && !out.is_empty() {
                    wr.write_all(&out).await.expect("write");
                    out.clear();
                }
                window.acquire().await.expect("window").forget();
                pkid = pkid.checked_add(1).unwrap_or(1);
                sent_at.lock().unwrap().push_back(Instant::now());
            }
            let mut p = Publish::new(topic, qos, payload.into_bytes());
            p.pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
            Packet::Publish(p).write(&mut out, usize::MAX).unwrap();
            sent += 1;
            if out.len() >= 64 * 1024 {
                wr.write_all(&out).await.expect("write");
                out.clear();
            }
            if per_conn_rate > 0.0 {
                let due = start + Duration::from_secs_f64(sent as f64 / per_conn_rate);
                let now = Instant::now();
                if due > now + Duration::from_millis(2) {
                    if !out.is_empty() {
                        wr.write_all(&out).await.expect("write");
                        out.clear();
                    }
                    tokio::time::sleep(due - now).await;
                }
            }
        }
    }
    if !out.is_empty() {
        wr.write_all(&out).await.expect("write");
    }
    totals.sent.fetch_add(sent, Ordering::Relaxed);
    if qos == QoS::AtLeastOnce {
        // wait for the outstanding acknowledgements (bounded)
        let deadline = Instant::now() + Duration::from_secs(60);
        while window.available_permits() < a.inflight && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let mut d = BytesMut::new();
    Packet::Disconnect.write(&mut d, usize::MAX).unwrap();
    let _ = wr.write_all(&d).await;
    let _ = wr.shutdown().await;
    let _ = reader.await;
}

/// Publish one probe reading at a time and poll SQL until it is visible.
async fn probes(a: Arc<Args>, http: String, stop: Arc<AtomicBool>) -> (Vec<u32>, Vec<u32>) {
    let stream = mqtt_connect(&a.addr, &format!("load-probe-{}", std::process::id())).await;
    let (mut rd, mut wr) = stream.into_split();
    let mut lat = Vec::new();
    let mut ack_lat = Vec::new();
    let mut n: u64 = 0;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut buf = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sensor = format!("probe{n}_{}", std::process::id());
        let payload = format!(r#"{{"temperature": 1.0, "probe": {n}}}"#);
        let mut p = Publish::new(
            format!("bench/probe/probe/{sensor}"),
            QoS::AtLeastOnce,
            payload.into_bytes(),
        );
        p.pkid = (n % 60_000 + 1) as u16;
        let mut out = BytesMut::new();
        Packet::Publish(p).write(&mut out, usize::MAX).unwrap();
        let t0 = Instant::now();
        wr.write_all(&out).await.unwrap();
        let url = format!(
            "http://{http}/api/v1/query?db=bench&sql=SELECT%20count(*)%20AS%20n%20FROM%20env%20WHERE%20sensor%20%3D%20'{sensor}'"
        );
        let agent2 = agent.clone();
        let poll = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(mut r) = agent2.get(&url).call()
                    && r.body_mut()
                        .read_to_string()
                        .is_ok_and(|b| b.contains("\"n\":1"))
                {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        });
        // the PUBACK, meanwhile
        while Packet::read(&mut buf, 1 << 20).is_err() {
            if rd.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
        ack_lat.push(t0.elapsed().as_micros() as u32);
        if let Some(d) = poll.await.unwrap() {
            lat.push(d.as_micros() as u32);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (lat, ack_lat)
}

/// An endpoint that acknowledges every publish at once and keeps nothing.
async fn sink() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.set_nodelay(true).ok();
                let (mut rd, mut wr) = s.into_split();
                let mut buf = BytesMut::with_capacity(64 * 1024);
                let mut out = BytesMut::new();
                loop {
                    match rd.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    out.clear();
                    while let Ok(p) = Packet::read(&mut buf, 1 << 20) {
                        match p {
                            Packet::Connect(_) => {
                                Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))
                                    .write(&mut out, usize::MAX)
                                    .map(drop)
                                    .unwrap()
                            }
                            Packet::Publish(p) if p.qos != QoS::AtMostOnce => {
                                Packet::PubAck(PubAck::new(p.pkid))
                                    .write(&mut out, usize::MAX)
                                    .map(drop)
                                    .unwrap()
                            }
                            Packet::Disconnect => return,
                            _ => {}
                        }
                    }
                    if !out.is_empty() && wr.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn main() {
    let mut a = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if a.sink {
            a.addr = sink().await;
        }
        let a = Arc::new(a);
        let totals = Arc::new(Totals::default());
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks: Vec<_> = (0..a.connections)
            .map(|c| {
                tokio::spawn(publisher(
                    c,
                    Arc::clone(&a),
                    Arc::clone(&totals),
                    Arc::clone(&stop),
                ))
            })
            .collect();
        let probe = a
            .http
            .clone()
            .map(|h| tokio::spawn(probes(Arc::clone(&a), h, Arc::clone(&stop))));
        if a.count.is_none() {
            tokio::time::sleep(a.duration).await;
            stop.store(true, Ordering::Relaxed);
        }
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let (probe_lat, mut probe_ack) = match probe {
            Some(p) => p.await.unwrap(),
            None => (Vec::new(), Vec::new()),
        };
        probe_ack.sort_unstable();
        let sent = totals.sent.load(Ordering::Relaxed);
        let acked = totals.acked.load(Ordering::Relaxed);
        let mut lat = std::mem::take(&mut *totals.latencies_us.lock().unwrap());
        lat.sort_unstable();
        let mut plat = probe_lat;
        plat.sort_unstable();
        println!(
            "{{\"target\":\"{}\",\"connections\":{},\"sensors\":{},\"qos\":{},\"seconds\":{elapsed:.2},\"sent\":{sent},\"acked\":{acked},\"sent_per_s\":{:.0},\"acked_per_s\":{:.0},\"field_values_per_s\":{:.0},\"ack_ms_p50\":{:.2},\"ack_ms_p99\":{:.2},\"visible_ms_p50\":{:.2},\"visible_ms_p99\":{:.2},\"probe_ack_ms_p50\":{:.2},\"probes\":{}}}",
            if a.sink { "sink" } else { a.addr.as_str() },
            a.connections,
            a.sensors,
            a.qos,
            sent as f64 / elapsed,
            acked as f64 / elapsed,
            (if a.qos == 0 { sent } else { acked }) as f64 * 8.0 / elapsed,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&plat, 0.5),
            percentile(&plat, 0.99),
            percentile(&probe_ack, 0.5),
            plat.len()
        );
    });
}
