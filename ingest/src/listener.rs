//! The embedded MQTT endpoint (`--mqtt-listen`): devices publish straight to talo.
//!
//! Built on the MQTT 3.1.1 codec of rumqttc (`rumqttc::mqttbytes::v4`), not on rumqttd:
//! rumqttd's router acknowledges a publish as soon as it has it in memory, and offers no
//! hook to hold the PUBACK back until our WAL commit. Here a PUBACK (PUBREC for QoS 2)
//! leaves only after the commit covering its message, so for a device "acknowledged"
//! means durable, as it does for HTTP writes.
//!
//! Per connection a reader task parses whatever bytes arrived, decodes every publish of
//! the read into one [`Pending`], submits it to the engine and hands it, with the
//! acknowledgements it owes, to an acker task over a bounded channel. The acker waits
//! for each commit in order and then writes the acknowledgements, so acks leave in
//! arrival order, reading overlaps with committing, and when commits lag the channel
//! fills, the reader stops reading and TCP pushes back on the device.
//!
//! This is an ingest endpoint, not a broker: SUBSCRIBE is answered with a failure return
//! code for every filter, and nothing is ever sent to devices but acknowledgements.
//! Supported: MQTT 3.1.1, QoS 0, 1 and 2 publishes, keepalive, will messages (stored
//! through the routes when a client goes away without DISCONNECT), username/password
//! checked against the HTTP tokens (password = token, write permission per database),
//! a maximum packet size (larger publishes are read and discarded without buffering,
//! acknowledged, and recorded in `_rejected`), a connection limit, and session takeover
//! (a second CONNECT with the same client id closes the first connection).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{MqttMetrics, Reason};
use crate::pipeline::{Committing, Ingestor, PAYLOAD_PREFIX, Pending, arrival_ns};

/// Limits of the embedded endpoint.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Largest packet read into memory; larger publishes are discarded (and recorded).
    pub max_packet_bytes: usize,
    /// Connections beyond this are refused with "server unavailable".
    pub max_connections: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Reads whose commits may be outstanding per connection before reading pauses.
    pub max_inflight_commits: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_packet_bytes: 1 << 20,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(10),
            max_inflight_commits: 8,
        }
    }
}

/// What a client may write, from its credentials.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub all_databases: bool,
    pub databases: Vec<String>,
}

impl Grant {
    pub fn everything() -> Self {
        Grant {
            all_databases: true,
            databases: Vec::new(),
        }
    }

    pub fn may_write(&self, db: &str) -> bool {
        self.all_databases || self.databases.iter().any(|d| d == db)
    }
}

/// Checks credentials. With no authenticator every client may write everything.
pub trait Authenticator: Send + Sync {
    /// The grant of a token given as the MQTT password (the user name is free), or
    /// `None` when the password is not a token with write permission.
    fn login(&self, username: &str, password: &str) -> Option<Grant>;
}

/// Connection ids by client id, to close the old connection on a takeover.
type Sessions = Arc<Mutex<HashMap<String, (u64, CancellationToken)>>>;

struct Shared {
    ing: Ingestor,
    cfg: ListenerConfig,
    auth: Option<Arc<dyn Authenticator>>,
    sessions: Sessions,
    open: AtomicUsize,
    next_id: AtomicU64,
}

/// Accept connections on `listener` until `cancel`; then stop reading, let every
/// connection send the acknowledgements of what was committed, and return.
pub async fn serve(
    listener: TcpListener,
    ing: Ingestor,
    cfg: ListenerConfig,
    auth: Option<Arc<dyn Authenticator>>,
    cancel: CancellationToken,
) {
    let shared = Arc::new(Shared {
        ing,
        cfg,
        auth,
        sessions: Arc::default(),
        open: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
    });
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let cancel = cancel.child_token();
                tracker.spawn(async move {
                    let open = shared.open.fetch_add(1, Ordering::AcqRel) + 1;
                    if let Err(e) = connection(stream, &shared, open, cancel).await {
                        tracing::debug!(%peer, error = %e, "MQTT connection closed");
                    }
                    shared.open.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(e) => {
                // out of file descriptors and the like: back off instead of spinning
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// DISCONNECT: the will is discarded.
    Clean,
    /// EOF, error, keepalive timeout, protocol violation: the will is stored.
    Abnormal(String),
    /// Server shutdown, or a new connection took the client id over: no will.
    Cancelled,
}

/// Answers a read owes, in packet order.
#[derive(Debug)]
enum Reply {
    PubAck(u16),
    PubRec(u16),
    PubComp(u16),
    PingResp,
    SubAck(u16, usize),
    UnsubAck(u16),
}

/// What the reader hands to the acker.
struct Out {
    commit: Option<Committing>,
    acks: Vec<Reply>,
    received: Instant,
}

async fn read_more(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(64 * 1024);
    }
    rd.read_buf(buf).await
}

async fn write_packet(wr: &mut OwnedWriteHalf, p: Packet) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    p.write(&mut out, usize::MAX)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    wr.write_all(&out).await
}

async fn refuse(wr: &mut OwnedWriteHalf, metrics: &MqttMetrics, code: ConnectReturnCode) {
    metrics.connects_refused.fetch_add(1, Ordering::Relaxed);
    let _ = write_packet(wr, Packet::ConnAck(ConnAck::new(code, false))).await;
}

async fn connection(
    stream: TcpStream,
    shared: &Arc<Shared>,
    open: usize,
    cancel: CancellationToken,
) -> Result<(), String> {
    let metrics = &shared.ing.metrics;
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // CONNECT, within the connect timeout
    let first = tokio::time::timeout(shared.cfg.connect_timeout, async {
        loop {
            match Packet::read(&mut buf, shared.cfg.max_packet_bytes) {
                Err(CodecError::InsufficientBytes(_)) => {}
                other => return Ok(other),
            }
            if read_more(&mut rd, &mut buf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
        }
    })
    .await
    .map_err(|_| "no CONNECT in time".to_string())?
    .map_err(|e| e.to_string())?;
    let connect: Connect = match first {
        Ok(Packet::Connect(c)) if c.protocol == Protocol::V4 => c,
        Ok(Packet::Connect(_))
        | Err(CodecError::InvalidProtocol | CodecError::InvalidProtocolLevel(_)) => {
            refuse(&mut wr, metrics, ConnectReturnCode::RefusedProtocolVersion).await;
            return Err("only MQTT 3.1.1 is spoken here".into());
        }
        Ok(other) => {
            metrics.connects_refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!("first packet is not CONNECT: {other:?}"));
        }
        Err(e) => {
            metrics.connects_refused.fetch_add(1, Ordering::Relaxed);
            return Err(format!("bad CONNECT: {e}"));
        }
    };
    if open > shared.cfg.max_connections {
        refuse(&mut wr, metrics, ConnectReturnCode::ServiceUnavailable).await;
        return Err("too many connections".into());
    }
    if connect.client_id.is_empty() && !connect.clean_session {
        refuse(&mut wr, metrics, ConnectReturnCode::BadClientId).await;
        return Err("empty client id needs a clean session".into());
    }
    let grant = match &shared.auth {
        None => Grant::everything(),
        Some(auth) => {
            let granted = connect
                .login
                .as_ref()
                .and_then(|l| auth.login(&l.username, &l.password));
            match granted {
                Some(g) => g,
                None => {
                    let code = if connect.login.is_some() {
                        ConnectReturnCode::BadUserNamePassword
                    } else {
                        ConnectReturnCode::NotAuthorized
                    };
                    refuse(&mut wr, metrics, code).await;
                    return Err("not authorized".into());
                }
            }
        }
    };
    if let Some(will) = &connect.last_will
        && !valid_topic(&will.topic)
    {
        metrics.connects_refused.fetch_add(1, Ordering::Relaxed);
        return Err("invalid will topic".into());
    }
    // takeover: a client id is connected at most once
    let conn_id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let client_id = if connect.client_id.is_empty() {
        format!("talo-anon-{conn_id}")
    } else {
        connect.client_id.clone()
    };
    if let Ok(mut s) = shared.sessions.lock()
        && let Some((_, old)) = s.insert(client_id.clone(), (conn_id, cancel.clone()))
    {
        old.cancel();
    }
    write_packet(
        &mut wr,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await
    .map_err(|e| e.to_string())?;
    metrics.connects.fetch_add(1, Ordering::Relaxed);
    metrics.connections.fetch_add(1, Ordering::Relaxed);

    let (tx, rx) = mpsc::channel::<Out>(shared.cfg.max_inflight_commits.max(1));
    let acker_cancel = CancellationToken::new();
    let acker = tokio::spawn(acker(rx, wr, shared.ing.clone(), acker_cancel.clone()));
    let end = read_loop(
        &mut rd,
        buf,
        shared,
        &connect,
        &grant,
        tx,
        &cancel,
        &acker_cancel,
    )
    .await;
    // the acker sends what is owed for everything committed, then ends
    let _ = acker.await;
    // the will is for a device that went away: not after DISCONNECT, not when the
    // device took its session over with a new connection, not at server shutdown
    if matches!(end, End::Abnormal(_))
        && let Some(will) = &connect.last_will
    {
        let mut p = Pending::default();
        let stored = async {
            p.add(
                &shared.ing,
                &will.topic,
                will.message.clone(),
                arrival_ns(),
                &|db| grant.may_write(db),
            )?;
            p.submit(&shared.ing)?.wait(&shared.ing).await
        }
        .await;
        match stored {
            Ok(()) => {
                metrics.wills.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, client = %client_id, "will message not stored"),
        }
    }
    if !matches!(end, End::Clean) {
        metrics.disconnects_abnormal.fetch_add(1, Ordering::Relaxed);
    }
    metrics.connections.fetch_sub(1, Ordering::Relaxed);
    if let Ok(mut s) = shared.sessions.lock()
        && s.get(&client_id).is_some_and(|(id, _)| *id == conn_id)
    {
        s.remove(&client_id);
    }
    match end {
        End::Abnormal(why) => Err(why),
        _ => Ok(()),
    }
}

/// A topic a client may publish to: non-empty, no wildcards, no NUL.
fn valid_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0'])
}

/// A publish larger than the packet limit, being discarded.
struct Skip {
    left: usize,
}

/// The start of a PUBLISH too large to buffer.
#[derive(Debug)]
struct OversizedHead {
    /// Length of the fixed header.
    hdr: usize,
    qos: QoS,
    pkid: u16,
    topic: String,
    /// The first bytes of the payload, for `_rejected`.
    prefix: Bytes,
}

/// Parse the start of an oversized PUBLISH once enough bytes are buffered, `None`
/// while more are needed.
fn oversized_head(buf: &[u8]) -> Result<Option<OversizedHead>, String> {
    let byte1 = buf[0];
    if byte1 >> 4 != 3 {
        return Err("oversized packet that is not a PUBLISH".into());
    }
    let qos = match (byte1 >> 1) & 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err("invalid QoS".into()),
    };
    let mut i = 1;
    while i < buf.len() && buf[i] & 0x80 != 0 {
        i += 1;
    }
    let hdr = i + 1;
    let need_topic = hdr + 2;
    if buf.len() < need_topic {
        return Ok(None);
    }
    let tlen = u16::from_be_bytes([buf[hdr], buf[hdr + 1]]) as usize;
    let pk = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let vh_end = need_topic + tlen + pk;
    if buf.len() < vh_end + PAYLOAD_PREFIX.min(64) {
        return Ok(None);
    }
    let topic = std::str::from_utf8(&buf[need_topic..need_topic + tlen])
        .map_err(|_| "topic is not UTF-8".to_string())?
        .to_string();
    let pkid = if pk == 2 {
        u16::from_be_bytes([buf[vh_end - 2], buf[vh_end - 1]])
    } else {
        0
    };
    let prefix_end = buf.len().min(vh_end + PAYLOAD_PREFIX);
    let prefix = Bytes::copy_from_slice(&buf[vh_end..prefix_end]);
    Ok(Some(OversizedHead {
        hdr,
        qos,
        pkid,
        topic,
        prefix,
    }))
}

/// The acknowledgement a publish is owed once committed (QoS 2 ids wait for PUBREL).
fn owe_ack(qos: QoS, pkid: u16, acks: &mut Vec<Reply>, awaiting_rel: &mut HashSet<u16>) {
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => acks.push(Reply::PubAck(pkid)),
        QoS::ExactlyOnce => {
            awaiting_rel.insert(pkid);
            acks.push(Reply::PubRec(pkid));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    rd: &mut OwnedReadHalf,
    mut buf: BytesMut,
    shared: &Arc<Shared>,
    connect: &Connect,
    grant: &Grant,
    tx: mpsc::Sender<Out>,
    cancel: &CancellationToken,
    acker_failed: &CancellationToken,
) -> End {
    let ing = &shared.ing;
    let max = shared.cfg.max_packet_bytes;
    let keepalive = match connect.keep_alive {
        0 => None,
        k => Some(Duration::from_millis(u64::from(k) * 1500)),
    };
    let may_write = |db: &str| grant.may_write(db);
    let mut skip: Option<Skip> = None;
    // QoS 2 packet ids stored and PUBREC'd but not yet released: a duplicate is not
    // stored twice
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    loop {
        let received = Instant::now();
        let mut pending = Pending::default();
        let mut acks = Vec::new();
        let mut end = None;
        // parse everything complete in the buffer
        loop {
            if let Some(s) = &mut skip {
                let n = s.left.min(buf.len());
                buf.advance(n);
                s.left -= n;
                if s.left > 0 {
                    break;
                }
                skip = None;
            }
            match Packet::read(&mut buf, max) {
                Ok(Packet::Publish(p)) => {
                    if !valid_topic(&p.topic) {
                        end = Some(End::Abnormal(format!("invalid topic {:?}", p.topic)));
                        break;
                    }
                    let duplicate = p.qos == QoS::ExactlyOnce && awaiting_rel.contains(&p.pkid);
                    if !duplicate
                        && let Err(e) =
                            pending.add(ing, &p.topic, p.payload, arrival_ns(), &may_write)
                    {
                        end = Some(End::Abnormal(format!("cannot store: {e}")));
                        break;
                    }
                    owe_ack(p.qos, p.pkid, &mut acks, &mut awaiting_rel);
                }
                Ok(Packet::PubRel(r)) => {
                    awaiting_rel.remove(&r.pkid);
                    acks.push(Reply::PubComp(r.pkid));
                }
                Ok(Packet::PingReq) => acks.push(Reply::PingResp),
                Ok(Packet::Subscribe(s)) => acks.push(Reply::SubAck(s.pkid, s.filters.len())),
                Ok(Packet::Unsubscribe(u)) => acks.push(Reply::UnsubAck(u.pkid)),
                Ok(Packet::Disconnect) => {
                    end = Some(End::Clean);
                    break;
                }
                Ok(other) => {
                    end = Some(End::Abnormal(format!("unexpected packet {other:?}")));
                    break;
                }
                Err(CodecError::InsufficientBytes(_)) => break,
                Err(CodecError::PayloadSizeLimitExceeded(len)) => {
                    match oversized_head(&buf) {
                        Ok(Some(OversizedHead {
                            hdr,
                            qos,
                            pkid,
                            topic,
                            prefix,
                        })) => {
                            if !valid_topic(&topic) {
                                end = Some(End::Abnormal("invalid topic".into()));
                                break;
                            }
                            let reason = format!(
                                "packet of {len} bytes is larger than the limit of {max} bytes"
                            );
                            if let Err(e) = pending.add_refused(
                                ing,
                                &topic,
                                prefix,
                                Reason::Oversized,
                                &reason,
                                &may_write,
                            ) {
                                end = Some(End::Abnormal(format!("cannot store: {e}")));
                                break;
                            }
                            owe_ack(qos, pkid, &mut acks, &mut awaiting_rel);
                            skip = Some(Skip { left: hdr + len });
                        }
                        Ok(None) => break, // need the topic first
                        Err(e) => {
                            end = Some(End::Abnormal(e));
                            break;
                        }
                    }
                }
                Err(e) => {
                    end = Some(End::Abnormal(format!("protocol error: {e}")));
                    break;
                }
            }
        }
        if !pending.is_empty() || !acks.is_empty() {
            let commit = if pending.is_empty() {
                None
            } else {
                match pending.submit(ing) {
                    Ok(c) => Some(c),
                    Err(e) => return End::Abnormal(format!("cannot store: {e}")),
                }
            };
            let out = Out {
                commit,
                acks,
                received,
            };
            tokio::select! {
                r = tx.send(out) => if r.is_err() { return End::Abnormal("acker ended".into()) },
                _ = acker_failed.cancelled() => return End::Abnormal("commit failed".into()),
            }
        }
        if let Some(e) = end {
            return e;
        }
        let read = async {
            match keepalive {
                Some(k) => tokio::time::timeout(k, read_more(rd, &mut buf))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                None => read_more(rd, &mut buf).await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return End::Cancelled,
            _ = acker_failed.cancelled() => return End::Abnormal("commit failed; acknowledgements withheld".into()),
            r = read => match r {
                Ok(0) => return End::Abnormal("connection closed without DISCONNECT".into()),
                Ok(_) => {}
                Err(e) => return End::Abnormal(format!("read: {e}")),
            }
        }
    }
}

/// Wait for each commit in order, then send its acknowledgements. A failed commit ends
/// the connection without acknowledging anything more: the device resends.
async fn acker(
    mut rx: mpsc::Receiver<Out>,
    mut wr: OwnedWriteHalf,
    ing: Ingestor,
    failed: CancellationToken,
) {
    let mut out = BytesMut::with_capacity(1024);
    while let Some(o) = rx.recv().await {
        if let Some(c) = o.commit
            && let Err(e) = c.wait(&ing).await
        {
            tracing::error!(error = %e, "MQTT messages not stored; not acknowledged");
            failed.cancel();
            return;
        }
        out.clear();
        let mut publishes = 0u64;
        for a in o.acks {
            let p = match a {
                Reply::PubAck(id) => {
                    publishes += 1;
                    Packet::PubAck(PubAck::new(id))
                }
                Reply::PubRec(id) => {
                    publishes += 1;
                    Packet::PubRec(PubRec::new(id))
                }
                Reply::PubComp(id) => Packet::PubComp(PubComp::new(id)),
                Reply::PingResp => Packet::PingResp,
                Reply::SubAck(id, n) => {
                    Packet::SubAck(SubAck::new(id, vec![SubscribeReasonCode::Failure; n]))
                }
                Reply::UnsubAck(id) => Packet::UnsubAck(UnsubAck::new(id)),
            };
            if p.write(&mut out, usize::MAX).is_err() {
                failed.cancel();
                return;
            }
        }
        if wr.write_all(&out).await.is_err() {
            failed.cancel();
            return;
        }
        if publishes > 0 {
            ing.metrics.acks.fetch_add(publishes, Ordering::Relaxed);
            ing.metrics.ack_latency.observe(o.received.elapsed());
        }
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_grants() {
        assert!(valid_topic("a/b"));
        for bad in ["", "a/+", "a/#", "a\0b"] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
        let g = Grant {
            all_databases: false,
            databases: vec!["house".into()],
        };
        assert!(g.may_write("house") && !g.may_write("other"));
        assert!(Grant::everything().may_write("x"));
    }

    #[test]
    fn oversized_publish_head() {
        // PUBLISH qos 1, remaining length 2_000_000 (3-byte varint), topic "t/x", pkid 7
        let mut b = vec![0x32u8];
        let mut n = 2_000_000usize;
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            b.push(byte);
            if n == 0 {
                break;
            }
        }
        b.extend_from_slice(&[0, 3, b't', b'/', b'x', 0, 7]);
        assert!(oversized_head(&b).unwrap().is_none(), "needs some payload");
        b.extend(std::iter::repeat_n(b'z', 300));
        let h = oversized_head(&b).unwrap().unwrap();
        assert_eq!(
            (h.hdr, h.qos, h.pkid, h.topic.as_str()),
            (4, QoS::AtLeastOnce, 7, "t/x")
        );
        assert_eq!(h.prefix.len(), PAYLOAD_PREFIX);
        assert!(oversized_head(&[0x82, 0x80, 0x01]).is_err());
    }
}
