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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Publish, QoS};
use talo_engine::{BatchBuilder, Engine, FieldValue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decode::{MessageContext, decode, push_rows};
use crate::routes::{Route, route_for};

/// Table that holds undecodable messages.
pub const REJECTED_TABLE: &str = "_rejected";
/// Bytes of a rejected payload kept in `_rejected`.
const PAYLOAD_PREFIX: usize = 256;

/// Where and how to subscribe.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `mqtt://[user:pass@]host[:port]`.
    pub url: String,
    /// Fixed client id of the persistent session. Default `talo`.
    pub client_id: String,
    pub routes: Vec<Route>,
    /// Messages decoded and committed together. Default 2000.
    pub max_batch: usize,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct MqttMetrics {
    pub messages: AtomicU64,
    pub rows: AtomicU64,
    pub rejected: AtomicU64,
    pub connections: AtomicU64,
}

struct Broker {
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

fn parse_url(url: &str) -> Result<Broker, String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| format!("MQTT URL {url:?} must start with mqtt://"))?;
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
        None => (hostport.to_string(), 1883),
    };
    if host.is_empty() {
        return Err(format!("MQTT URL {url:?} has no host"));
    }
    Ok(Broker {
        host,
        port,
        credentials,
    })
}

/// Check the configuration before starting.
pub fn validate(cfg: &MqttConfig) -> Result<(), String> {
    parse_url(&cfg.url)?;
    if cfg.client_id.is_empty() || cfg.client_id.len() > 23 * 4 {
        return Err("MQTT client id must be 1..=92 characters".into());
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
    let mut opts = MqttOptions::new(cfg.client_id.clone(), broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(2 << 20, 2 << 20);
    if let Some((u, p)) = &broker.credentials {
        opts.set_credentials(u.clone(), p.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1024);
    let (tx, rx) = mpsc::channel::<(Publish, i64)>(cfg.max_batch * 2);
    let routes = Arc::new(cfg.routes.clone());
    let batcher = tokio::spawn(batcher(
        rx,
        client.clone(),
        Arc::clone(&engine),
        Arc::clone(&routes),
        cfg.max_batch,
        Arc::clone(&metrics),
        cancel.clone(),
    ));
    let mut backoff = Duration::from_millis(100);
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                backoff = Duration::from_millis(100);
                metrics.connections.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session_present = ack.session_present, host = %broker.host, "connected to the MQTT broker");
                if !ack.session_present {
                    for r in routes.iter() {
                        let qos = if r.qos == 0 {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        };
                        if let Err(e) = client.try_subscribe(r.filter.clone(), qos) {
                            tracing::error!(error = %e, filter = %r.filter, "subscribe failed");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
                if tx.send((p, now)).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
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
    mut rx: mpsc::Receiver<(Publish, i64)>,
    client: AsyncClient,
    engine: Arc<Engine>,
    routes: Arc<Vec<Route>>,
    max_batch: usize,
    metrics: Arc<MqttMetrics>,
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
        metrics
            .messages
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        // write until durable; nothing is acknowledged before
        let mut backoff = Duration::from_millis(100);
        loop {
            match commit(&msgs, &engine, &routes, &metrics) {
                Ok(builders) => {
                    let mut ok = true;
                    for b in builders {
                        match b.finish() {
                            Ok(batch) => {
                                if let Err(e) = engine.write(batch).await {
                                    tracing::error!(error = %e, "MQTT batch not stored; will retry, not acknowledged");
                                    ok = false;
                                    break;
                                }
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "MQTT batch could not be built");
                                ok = false;
                                break;
                            }
                        }
                    }
                    if ok {
                        break;
                    }
                }
                Err(e) => tracing::error!(error = %e, "MQTT batch could not be decoded"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        for (p, _) in &msgs {
            if p.qos != QoS::AtMostOnce
                && let Err(e) = client.ack(p).await
            {
                tracing::warn!(error = %e, "MQTT ack not sent; the broker will redeliver");
            }
        }
    }
}

/// Decode a batch of messages into one builder per database.
fn commit(
    msgs: &[(Publish, i64)],
    engine: &Engine,
    routes: &[Route],
    metrics: &MqttMetrics,
) -> Result<Vec<BatchBuilder>, talo_engine::Error> {
    let mut builders: HashMap<String, BatchBuilder> = HashMap::new();
    for (i, (p, arrival)) in msgs.iter().enumerate() {
        let Some((route, res)) = route_for(routes, &p.topic) else {
            continue; // not ours: subscribed by an overlapping filter of another route
        };
        if !builders.contains_key(&res.db) {
            builders.insert(res.db.clone(), engine.batch_builder(&res.db)?);
        }
        let Some(b) = builders.get_mut(&res.db) else {
            continue;
        };
        let ctx = MessageContext {
            table: &res.table,
            tags: &res.tags,
            arrival_ns: *arrival,
        };
        let (stored, reasons) = match decode(route.format, &p.payload) {
            Ok(rows) => push_rows(&rows, &ctx, b, i as u32),
            Err(reason) => (0, vec![reason]),
        };
        metrics.rows.fetch_add(stored as u64, Ordering::Relaxed);
        for reason in reasons {
            metrics.rejected.fetch_add(1, Ordering::Relaxed);
            let prefix = String::from_utf8_lossy(&p.payload[..p.payload.len().min(PAYLOAD_PREFIX)])
                .into_owned();
            let _ = b.push_row(
                REJECTED_TABLE,
                &[("topic", p.topic.as_str())],
                &[
                    ("reason", FieldValue::String(&reason)),
                    ("payload", FieldValue::String(&prefix)),
                ],
                *arrival,
                i as u32,
            );
        }
    }
    Ok(builders.into_values().collect())
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
        assert!(b.credentials.is_none());
        for bad in ["http://x", "mqtt://", "mqtt://h:port"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
