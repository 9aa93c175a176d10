//! Subscribing to an external MQTT broker (`--mqtt-url`) with rumqttc.
//!
//! Persistent session (clean session off, fixed client id), QoS 1 subscriptions, manual
//! acks: the event loop is polled continuously and hands each publish to a batcher
//! through a bounded channel; the batcher decodes a batch of messages, writes their rows
//! to the engine, waits until they are durable, and only then acknowledges every message
//! of the batch, in arrival order. A message that cannot be decoded is acknowledged too
//! (so it never blocks the session) and stored with its reason in table `_rejected` of
//! its database. While the engine cannot write, nothing is acknowledged and the broker
//! keeps the backlog.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Publish, QoS};
use talo_engine::Engine;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::MqttMetrics;
use crate::pipeline::{Ingestor, Pending, arrival_ns};
use crate::routes::Route;

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt://[user:pass@]host[:port]`.
    pub url: String,
    /// Fixed client id of the persistent session. Default `talo`.
    pub client_id: String,
    pub routes: Arc<Vec<Route>>,
    /// Messages decoded and committed together. Default 2000.
    pub max_batch: usize,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    pub protocol: u8,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`); without it
    /// the system's trusted roots are used.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The TLS client configuration for `mqtts://` (rustls with the ring provider).
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rumqttc::Transport, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("reading the MQTT CA file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("MQTT CA file {}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("MQTT CA file {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificate for mqtts:// (give --mqtt-ca-file)".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
    ))
}

/// A client of either protocol version.
#[derive(Clone)]
enum Client {
    V4(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// An event loop of either protocol version.
enum Conn {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// A received publish of either protocol version (kept whole for its ack).
#[derive(Debug)]
enum Delivery {
    V4(Publish),
    V5(rumqttc::v5::mqttbytes::v5::Publish),
}

/// What one poll of the event loop gave.
enum Polled {
    ConnAck { session_present: bool },
    Publish(Delivery),
    Other,
    Lost(String),
}

impl Conn {
    async fn poll(&mut self) -> Polled {
        match self {
            Conn::V4(el) => match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(a))) => Polled::ConnAck {
                    session_present: a.session_present,
                },
                Ok(Event::Incoming(Incoming::Publish(p))) => Polled::Publish(Delivery::V4(p)),
                Ok(_) => Polled::Other,
                Err(e) => Polled::Lost(e.to_string()),
            },
            Conn::V5(el) => {
                use rumqttc::v5::mqttbytes::v5::Packet;
                match el.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(a))) => Polled::ConnAck {
                        session_present: a.session_present,
                    },
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        Polled::Publish(Delivery::V5(p))
                    }
                    Ok(_) => Polled::Other,
                    Err(e) => Polled::Lost(e.to_string()),
                }
            }
        }
    }
}

impl Client {
    fn try_subscribe(&self, filter: &str, at_least_once: bool) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let qos = if at_least_once {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                c.try_subscribe(filter, qos).map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::QoS as Q5;
                let qos = if at_least_once {
                    Q5::AtLeastOnce
                } else {
                    Q5::AtMostOnce
                };
                c.try_subscribe(filter, qos).map_err(|e| e.to_string())
            }
        }
    }

    async fn ack(&self, d: &Delivery) -> Result<(), String> {
        match (self, d) {
            (Client::V4(c), Delivery::V4(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            (Client::V5(c), Delivery::V5(p)) => c.ack(p).await.map_err(|e| e.to_string()),
            _ => Err("protocol mismatch".into()),
        }
    }
}

impl Delivery {
    fn topic(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Delivery::V4(p) => std::borrow::Cow::Borrowed(p.topic.as_str()),
            Delivery::V5(p) => String::from_utf8_lossy(&p.topic),
        }
    }

    fn payload(&self) -> bytes::Bytes {
        match self {
            Delivery::V4(p) => p.payload.clone(),
            Delivery::V5(p) => p.payload.clone(),
        }
    }

    fn at_most_once(&self) -> bool {
        match self {
            Delivery::V4(p) => p.qos == QoS::AtMostOnce,
            Delivery::V5(p) => p.qos == rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        }
    }
}

struct Broker {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Broker, String> {
    let (tls, rest) = if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (true, r)
    } else {
        let r = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("MQTT URL {url:?} must start with mqtt:// or mqtts://"))?;
        (false, r)
    };
    let rest = rest.trim_end_matches('/');
    let (creds, hostport) = match rest.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, rest),
    };
    let credentials = creds.map(|c| match c.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => (c.to_string(), String::new()),
    });
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse().map_err(|_| format!("bad port in {url:?}"))?,
        ),
        None => (hostport.to_string(), if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(format!("MQTT URL {url:?} has no host"));
    }
    Ok(Broker {
        host,
        port,
        credentials,
        tls,
    })
}

/// Check the configuration before starting.
pub fn validate(cfg: &MqttConfig) -> Result<(), String> {
    parse_url(&cfg.url)?;
    if cfg.client_id.is_empty() || cfg.client_id.len() > 23 * 4 {
        return Err("MQTT client id must be 1..=92 characters".into());
    }
    let broker = parse_url(&cfg.url)?;
    if broker.tls {
        tls_config(cfg.ca_file.as_deref())?;
    } else if cfg.ca_file.is_some() {
        return Err("--mqtt-ca-file needs an mqtts:// URL".into());
    }
    if cfg.protocol != 4 && cfg.protocol != 5 {
        return Err(format!(
            "MQTT protocol must be 4 (3.1.1) or 5, not {}",
            cfg.protocol
        ));
    }
    Ok(())
}

/// Run until `cancel`: poll the broker, hand publishes to the batcher.
pub async fn run(
    cfg: MqttConfig,
    engine: Arc<Engine>,
    metrics: Arc<MqttMetrics>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let broker = parse_url(&cfg.url)?;
    let transport = if broker.tls {
        Some(tls_config(cfg.ca_file.as_deref())?)
    } else {
        None
    };
    let (client, mut eventloop) = if cfg.protocol == 5 {
        let mut opts =
            rumqttc::v5::MqttOptions::new(cfg.client_id.clone(), broker.host.clone(), broker.port);
        // clean start off and a session that outlives a restart: the broker keeps the
        // backlog while talo is down
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(u32::MAX))
            .set_manual_acks(true)
            .set_max_packet_size(Some(2 << 20));
        if let Some((u, p)) = &broker.credentials {
            opts.set_credentials(u.clone(), p.clone());
        }
        if let Some(t) = transport {
            opts.set_transport(t);
        }
        let (c, el) = rumqttc::v5::AsyncClient::new(opts, 1024);
        (Client::V5(c), Conn::V5(Box::new(el)))
    } else {
        let mut opts = MqttOptions::new(cfg.client_id.clone(), broker.host.clone(), broker.port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(2 << 20, 2 << 20);
        if let Some((u, p)) = &broker.credentials {
            opts.set_credentials(u.clone(), p.clone());
        }
        if let Some(t) = transport {
            opts.set_transport(t);
        }
        let (c, el) = AsyncClient::new(opts, 1024);
        (Client::V4(c), Conn::V4(Box::new(el)))
    };
    let (tx, rx) = mpsc::channel::<(Delivery, i64)>(cfg.max_batch * 2);
    let routes = Arc::clone(&cfg.routes);
    let ing = Ingestor {
        engine,
        routes: Arc::clone(&routes),
        metrics: Arc::clone(&metrics),
    };
    let batcher = tokio::spawn(batcher(
        rx,
        client.clone(),
        ing,
        cfg.max_batch,
        cancel.clone(),
    ));
    let mut backoff = Duration::from_millis(100);
    // The event loop must be polled all the time: it sends our acks (the batcher's
    // `client.ack` waits for room in its request queue) and keepalive pings. So received
    // messages wait here, not in a blocked send: QoS 1/2 messages are bounded by the
    // broker's in-flight window (it sends no more until we ack), QoS 0 ones beyond
    // `max_backlog` are dropped (at most once) and counted.
    let mut backlog: std::collections::VecDeque<(Delivery, i64)> = Default::default();
    let max_backlog = cfg.max_batch * 8;
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = tx.reserve(), if !backlog.is_empty() => {
                match permit {
                    Ok(permit) => {
                        if let Some(m) = backlog.pop_front() {
                            permit.send(m);
                        }
                        continue;
                    }
                    Err(_) => break,
                }
            }
            ev = eventloop.poll() => ev,
        };
        match ev {
            Polled::ConnAck { session_present } => {
                backoff = Duration::from_millis(100);
                metrics.connects.fetch_add(1, Ordering::Relaxed);
                metrics.connections.store(1, Ordering::Relaxed);
                tracing::info!(session_present, host = %broker.host, protocol = cfg.protocol, "connected to the MQTT broker");
                if !session_present {
                    for r in routes.iter() {
                        if let Err(e) = client.try_subscribe(&r.filter, r.qos != 0) {
                            tracing::error!(error = %e, filter = %r.filter, "subscribe failed");
                        }
                    }
                }
            }
            Polled::Publish(p) => {
                if p.at_most_once() && backlog.len() >= max_backlog {
                    metrics.dropped_qos0.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                backlog.push_back((p, arrival_ns()));
            }
            Polled::Other => {}
            Polled::Lost(e) => {
                metrics.connections.store(0, Ordering::Relaxed);
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting in {backoff:?}");
                let jitter = Duration::from_millis(
                    u64::from(
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| d.subsec_millis())
                            .unwrap_or(0),
                    ) % 100,
                );
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    drop(tx);
    let _ = batcher.await;
    Ok(())
}

async fn batcher(
    mut rx: mpsc::Receiver<(Delivery, i64)>,
    client: Client,
    ing: Ingestor,
    max_batch: usize,
    cancel: CancellationToken,
) {
    while let Some(first) = rx.recv().await {
        let mut msgs = vec![first];
        while msgs.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => msgs.push(m),
                Err(_) => break,
            }
        }
        // write until durable; nothing is acknowledged before
        let mut backoff = Duration::from_millis(100);
        loop {
            match commit(&msgs, &ing).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, "MQTT batch not stored; will retry, not acknowledged")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        for (p, received) in &msgs {
            if !p.at_most_once() {
                match client.ack(p).await {
                    Ok(()) => {
                        ing.metrics.acks.fetch_add(1, Ordering::Relaxed);
                        ing.metrics
                            .ack_latency
                            .observe(Duration::from_nanos((arrival_ns() - received).max(0) as u64));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "MQTT ack not sent; the broker will redeliver")
                    }
                }
            }
        }
    }
}

/// Decode a batch of messages and wait until their rows are durable.
async fn commit(msgs: &[(Delivery, i64)], ing: &Ingestor) -> Result<(), talo_engine::Error> {
    let mut pending = Pending::default();
    for (p, arrival) in msgs {
        pending.add(ing, &p.topic(), p.payload(), *arrival, &|_| true)?;
    }
    pending.submit(ing)?.wait(ing).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let b = parse_url("mqtt://user:pa:ss@broker.local:1884").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("broker.local", 1884));
        assert_eq!(b.credentials, Some(("user".into(), "pa:ss".into())));
        let b = parse_url("mqtt://127.0.0.1").unwrap();
        assert_eq!(b.port, 1883);
        assert!(!b.tls);
        let b = parse_url("mqtts://broker").unwrap();
        assert_eq!((b.port, b.tls), (8883, true));
        assert!(b.credentials.is_none());
        for bad in ["http://x", "mqtt://", "mqtt://h:port"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
