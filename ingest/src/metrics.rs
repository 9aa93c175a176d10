//! MQTT counters for `/metrics`: messages, rows and rejections per route and reason, for
//! the embedded endpoint and the external-broker subscriber, plus connection gauges.
//! Routes are fixed at startup, so every counter is a plain atomic found by index.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use talo_engine::metrics::{Histogram, LATENCY_BUCKETS};

use crate::routes::Route;

/// Why a message (or one of its rows) was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The payload is not valid in the route's format.
    Decode,
    /// The payload is not UTF-8 text.
    Utf8,
    /// The payload (or the whole packet) is larger than allowed.
    Oversized,
    /// A time that is not representable (before 1677 or after 2262, or not a time).
    TimeRange,
    /// A field written with another type than its column has.
    TypeConflict,
    /// A row the engine refuses for another reason (bad names, no fields, NaN, ...).
    InvalidRow,
    /// The client's token may not write the route's database (embedded endpoint).
    Unauthorized,
    /// No route matches the topic.
    NoRoute,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Decode,
        Reason::Utf8,
        Reason::Oversized,
        Reason::TimeRange,
        Reason::TypeConflict,
        Reason::InvalidRow,
        Reason::Unauthorized,
        Reason::NoRoute,
    ];

    /// The label value in `/metrics` and the `reason_kind` in `_rejected`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Decode => "decode",
            Reason::Utf8 => "invalid_utf8",
            Reason::Oversized => "oversized",
            Reason::TimeRange => "time_out_of_range",
            Reason::TypeConflict => "type_conflict",
            Reason::InvalidRow => "invalid_row",
            Reason::Unauthorized => "unauthorized",
            Reason::NoRoute => "no_route",
        }
    }

    /// Classify a row refusal of the engine by its message.
    pub fn of_row_error(msg: &str) -> Reason {
        if msg.contains(talo_engine::batch::TYPE_CONFLICT) {
            Reason::TypeConflict
        } else {
            Reason::InvalidRow
        }
    }
}

/// Where messages come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The embedded endpoint (`--mqtt-listen`).
    Listener,
    /// The external broker (`--mqtt-url`).
    Broker,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Listener => "listener",
            Source::Broker => "broker",
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    rows: AtomicU64,
    rejected: [AtomicU64; Reason::ALL.len()],
}

/// Counters for one source; index `routes.len()` holds messages matching no route.
#[derive(Debug)]
pub struct MqttMetrics {
    source: Source,
    filters: Vec<String>,
    per_route: Vec<Counters>,
    /// Open connections (embedded endpoint) or 1 while connected (broker).
    pub connections: AtomicI64,
    /// Connections accepted (or broker connects).
    pub connects: AtomicU64,
    /// Connections refused: bad credentials, protocol, limits.
    pub connects_refused: AtomicU64,
    /// Connections closed for a protocol violation, a keepalive timeout or a takeover.
    pub disconnects_abnormal: AtomicU64,
    /// Will messages stored.
    pub wills: AtomicU64,
    /// QoS 0 messages dropped because the backlog was full (broker subscriber).
    pub dropped_qos0: AtomicU64,
    /// PUBACKs (and PUBRECs) sent, each after the commit of its message.
    pub acks: AtomicU64,
    /// From reading a publish to sending its acknowledgement.
    pub ack_latency: Histogram,
}

impl MqttMetrics {
    pub fn new(source: Source, routes: &[Route]) -> Self {
        MqttMetrics {
            source,
            filters: routes.iter().map(|r| r.filter.clone()).collect(),
            per_route: (0..=routes.len()).map(|_| Counters::default()).collect(),
            connections: AtomicI64::new(0),
            connects: AtomicU64::new(0),
            connects_refused: AtomicU64::new(0),
            disconnects_abnormal: AtomicU64::new(0),
            wills: AtomicU64::new(0),
            dropped_qos0: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            ack_latency: Histogram::default(),
        }
    }

    fn route(&self, route: Option<usize>) -> &Counters {
        let i = route.unwrap_or(self.filters.len()).min(self.filters.len());
        &self.per_route[i]
    }

    pub fn message(&self, route: Option<usize>) {
        self.route(route).messages.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rows(&self, route: Option<usize>, n: usize) {
        self.route(route)
            .rows
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn rejected(&self, route: Option<usize>, reason: Reason) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.route(route).rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Total rejections of `reason` over all routes (for tests and logs).
    pub fn rejected_total(&self, reason: Reason) -> u64 {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.per_route
            .iter()
            .map(|c| c.rejected[i].load(Ordering::Relaxed))
            .sum()
    }

    /// Append the Prometheus text of these counters.
    pub fn render(&self, out: &mut String) {
        let src = self.source.label();
        let label = |i: usize| {
            self.filters
                .get(i)
                .map(|f| escape_label(f))
                .unwrap_or_else(|| "(none)".to_string())
        };
        let mut family = |name: &str, help: &str, kind: &str, lines: Vec<String>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(out, "{name}{l}");
            }
        };
        let per = |f: &dyn Fn(&Counters) -> u64| -> Vec<String> {
            self.per_route
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{{source=\"{src}\",route=\"{}\"}} {}", label(i), f(c)))
                .collect()
        };
        family(
            "talo_mqtt_messages_total",
            "MQTT messages received, per source and route.",
            "counter",
            per(&|c| c.messages.load(Ordering::Relaxed)),
        );
        family(
            "talo_mqtt_rows_total",
            "Rows stored from MQTT messages, per source and route.",
            "counter",
            per(&|c| c.rows.load(Ordering::Relaxed)),
        );
        let mut lines = Vec::new();
        for (i, c) in self.per_route.iter().enumerate() {
            for (j, reason) in Reason::ALL.iter().enumerate() {
                let n = c.rejected[j].load(Ordering::Relaxed);
                if n > 0 || i < self.filters.len() {
                    lines.push(format!(
                        "{{source=\"{src}\",route=\"{}\",reason=\"{}\"}} {n}",
                        label(i),
                        reason.label()
                    ));
                }
            }
        }
        family(
            "talo_mqtt_rejected_total",
            "MQTT messages or rows not stored (acknowledged, kept in _rejected), per source, route and reason.",
            "counter",
            lines,
        );
        let one = |v: String| vec![format!("{{source=\"{src}\"}} {v}")];
        family(
            "talo_mqtt_connections",
            "Open MQTT connections.",
            "gauge",
            one(self.connections.load(Ordering::Relaxed).to_string()),
        );
        for (name, help, v) in [
            (
                "talo_mqtt_connects_total",
                "MQTT connections established.",
                &self.connects,
            ),
            (
                "talo_mqtt_connects_refused_total",
                "MQTT connections refused (credentials, protocol, limits).",
                &self.connects_refused,
            ),
            (
                "talo_mqtt_disconnects_abnormal_total",
                "MQTT connections closed for a protocol error, keepalive timeout or takeover.",
                &self.disconnects_abnormal,
            ),
            (
                "talo_mqtt_wills_total",
                "MQTT will messages stored.",
                &self.wills,
            ),
            (
                "talo_mqtt_dropped_qos0_total",
                "QoS 0 messages dropped under overload (at most once).",
                &self.dropped_qos0,
            ),
            (
                "talo_mqtt_acks_total",
                "MQTT acknowledgements sent after the commit.",
                &self.acks,
            ),
        ] {
            family(
                name,
                help,
                "counter",
                one(v.load(Ordering::Relaxed).to_string()),
            );
        }
        let (buckets, count, sum) = self.ack_latency.read();
        let name = "talo_mqtt_ack_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} From receiving a QoS 1 message to acknowledging it (durable).\n# TYPE {name} histogram"
        );
        for (b, c) in LATENCY_BUCKETS.iter().zip(buckets) {
            let _ = writeln!(out, "{name}_bucket{{source=\"{src}\",le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{source=\"{src}\",le=\"+Inf\"}} {count}\n{name}_sum{{source=\"{src}\"}} {sum}\n{name}_count{{source=\"{src}\"}} {count}"
        );
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_routes_reasons_and_escapes() {
        let routes = crate::routes::build_routes(&[]).unwrap();
        let m = MqttMetrics::new(Source::Listener, &routes);
        m.message(Some(0));
        m.rows(Some(0), 3);
        m.rejected(Some(0), Reason::TypeConflict);
        m.rejected(None, Reason::NoRoute);
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains("talo_mqtt_messages_total{source=\"listener\",route=\"#\"} 1"));
        assert!(out.contains("talo_mqtt_rows_total{source=\"listener\",route=\"#\"} 3"));
        assert!(out.contains(
            "talo_mqtt_rejected_total{source=\"listener\",route=\"#\",reason=\"type_conflict\"} 1"
        ));
        assert!(out.contains(
            "talo_mqtt_rejected_total{source=\"listener\",route=\"(none)\",reason=\"no_route\"} 1"
        ));
        assert_eq!(m.rejected_total(Reason::TypeConflict), 1);
        assert_eq!(escape_label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
