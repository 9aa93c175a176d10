//! From MQTT messages to durable rows, shared by the embedded endpoint and the
//! external-broker subscriber.
//!
//! A [`Pending`] collects the messages of one commit: each is routed, decoded and pushed
//! into a builder of its database, row ids being message indexes. What cannot be used
//! becomes a row of `_rejected` in the same commit (time, tag `topic`, fields `reason`,
//! `reason_kind`, `payload` prefix), so a poison message is stored exactly when the good
//! ones beside it are. [`Pending::submit`] hands the builders to the writer;
//! [`Committing::wait`] completes once everything is durable, including `_rejected`
//! rows for what the writer itself refused (a type conflict with a concurrent write).
//! Only then may the caller acknowledge the messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use talo_engine::{BatchBuilder, Engine, FieldValue, PendingWrite, Rejection};

use crate::decode::{MessageContext, decode_message, push_rows};
use crate::metrics::{MqttMetrics, Reason};
use crate::routes::Route;

/// Table that holds messages (and rows) that could not be stored.
pub const REJECTED_TABLE: &str = "_rejected";
/// Bytes of a rejected payload kept in `_rejected`.
pub const PAYLOAD_PREFIX: usize = 256;

/// The routes, the engine and the counters of one MQTT source.
#[derive(Debug, Clone)]
pub struct Ingestor {
    pub engine: Arc<Engine>,
    pub routes: Arc<Vec<Route>>,
    pub metrics: Arc<MqttMetrics>,
}

/// A message of a [`Pending`], kept to report what the writer refuses.
#[derive(Debug)]
struct Kept {
    db: Option<usize>,
    route: Option<usize>,
    topic: String,
    payload: Bytes,
}

/// The messages of one commit.
#[derive(Debug, Default)]
pub struct Pending {
    builders: Vec<BatchBuilder>,
    kept: Vec<Kept>,
}

/// A submitted [`Pending`].
#[derive(Debug)]
pub struct Committing {
    writes: Vec<PendingWrite>,
    kept: Vec<Kept>,
    /// Database of each write (index into `kept[].db`).
    dbs: Vec<String>,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn builder(&mut self, ing: &Ingestor, db: &str) -> Result<usize, talo_engine::Error> {
        if let Some(i) = self.builders.iter().position(|b| b.db() == db) {
            return Ok(i);
        }
        self.builders.push(ing.engine.batch_builder(db)?);
        Ok(self.builders.len() - 1)
    }

    /// Route and decode one message. `may_write` says whether the sender may write a
    /// database (tokens on the embedded endpoint); a message for another database is
    /// counted and dropped (it is not stored in that database's `_rejected` either).
    /// Errors only when the database name of a route is invalid, which startup checks.
    pub fn add(
        &mut self,
        ing: &Ingestor,
        topic: &str,
        payload: Bytes,
        arrival_ns: i64,
        may_write: &dyn Fn(&str) -> bool,
    ) -> Result<(), talo_engine::Error> {
        let Some((ri, res)) = crate::routes::route_index(&ing.routes, topic) else {
            ing.metrics.message(None);
            ing.metrics.rejected(None, Reason::NoRoute);
            tracing::debug!(topic, "no route for the topic; message dropped");
            return Ok(());
        };
        ing.metrics.message(Some(ri));
        if !may_write(&res.db) {
            ing.metrics.rejected(Some(ri), Reason::Unauthorized);
            tracing::debug!(topic, db = %res.db, "the client may not write this database; message dropped");
            return Ok(());
        }
        let bi = self.builder(ing, &res.db)?;
        let id = self.kept.len() as u32;
        let route = &ing.routes[ri];
        let ctx = MessageContext {
            table: &res.table,
            tags: &res.tags,
            arrival_ns,
        };
        let b = &mut self.builders[bi];
        match decode_message(route.format, &payload) {
            Ok(rows) => {
                let (stored, reasons) = push_rows(&rows, &ctx, b, id);
                ing.metrics.rows(Some(ri), stored);
                for r in reasons {
                    let kind = Reason::of_row_error(&r);
                    reject(b, topic, &payload, kind, &r, id);
                    ing.metrics.rejected(Some(ri), kind);
                }
            }
            Err((kind, reason)) => {
                reject(b, topic, &payload, kind, &reason, id);
                ing.metrics.rejected(Some(ri), kind);
            }
        }
        self.kept.push(Kept {
            db: Some(bi),
            route: Some(ri),
            topic: topic.to_string(),
            payload,
        });
        Ok(())
    }

    /// Record a message refused before decoding (an oversized packet) in `_rejected` of
    /// its route's database.
    pub fn add_refused(
        &mut self,
        ing: &Ingestor,
        topic: &str,
        prefix: Bytes,
        kind: Reason,
        reason: &str,
        may_write: &dyn Fn(&str) -> bool,
    ) -> Result<(), talo_engine::Error> {
        let Some((ri, res)) = crate::routes::route_index(&ing.routes, topic) else {
            ing.metrics.message(None);
            ing.metrics.rejected(None, Reason::NoRoute);
            return Ok(());
        };
        ing.metrics.message(Some(ri));
        ing.metrics.rejected(Some(ri), kind);
        if !may_write(&res.db) {
            return Ok(());
        }
        let bi = self.builder(ing, &res.db)?;
        let id = self.kept.len() as u32;
        reject(&mut self.builders[bi], topic, &prefix, kind, reason, id);
        self.kept.push(Kept {
            db: Some(bi),
            route: Some(ri),
            topic: topic.to_string(),
            payload: prefix,
        });
        Ok(())
    }

    /// Hand everything to the writer, in order; nothing is durable yet.
    pub fn submit(self, ing: &Ingestor) -> Result<Committing, talo_engine::Error> {
        let mut writes = Vec::with_capacity(self.builders.len());
        let mut dbs = Vec::with_capacity(self.builders.len());
        for b in self.builders {
            dbs.push(b.db().to_string());
            writes.push(ing.engine.submit(b.finish()?)?);
        }
        Ok(Committing {
            writes,
            kept: self.kept,
            dbs,
        })
    }
}

impl Committing {
    /// Wait until every row is durable. Rows the writer refused are stored in
    /// `_rejected` (and waited for) before this returns.
    pub async fn wait(self, ing: &Ingestor) -> Result<(), talo_engine::Error> {
        let mut refused: Vec<(usize, Rejection)> = Vec::new();
        let mut first_err = None;
        for (wi, w) in self.writes.into_iter().enumerate() {
            match w.wait().await {
                Ok(outcome) => refused.extend(outcome.rejected.into_iter().map(|r| (wi, r))),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if refused.is_empty() {
            return Ok(());
        }
        let mut follow = Pending::default();
        for (wi, r) in refused {
            let db = &self.dbs[wi];
            let Some(k) = self
                .kept
                .get(r.row_id as usize)
                .filter(|k| k.db == Some(wi))
            else {
                continue;
            };
            let kind = Reason::of_row_error(&r.reason);
            ing.metrics.rejected(k.route, kind);
            let bi = follow.builder(ing, db)?;
            reject(
                &mut follow.builders[bi],
                &k.topic,
                &k.payload,
                kind,
                &r.reason,
                r.row_id,
            );
        }
        for b in follow.builders {
            let outcome = ing.engine.write(b.finish()?).await?;
            for r in outcome.rejected {
                // `_rejected` has fixed string columns; only a user writing its own
                // `_rejected` table with other types gets here
                tracing::error!(reason = %r.reason, "a _rejected row could not be stored");
            }
        }
        Ok(())
    }
}

/// Append a `_rejected` row for a message, at a time of its own.
fn reject(b: &mut BatchBuilder, topic: &str, payload: &[u8], kind: Reason, reason: &str, id: u32) {
    let end = payload.len().min(PAYLOAD_PREFIX);
    let prefix = String::from_utf8_lossy(&payload[..end]);
    if let Err(e) = b.push_row(
        REJECTED_TABLE,
        &[("topic", topic)],
        &[
            ("reason", FieldValue::String(reason)),
            ("reason_kind", FieldValue::String(kind.label())),
            ("payload", FieldValue::String(&prefix)),
        ],
        arrival_ns(),
        id,
    ) {
        tracing::error!(error = %e, topic, "a _rejected row could not be built");
    }
}

/// Nanoseconds since the epoch, strictly increasing over the whole process: two
/// messages without a time of their own never share a point (series + time), so the
/// second does not overwrite the first, and two rejections never collapse into one.
pub fn arrival_ns() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}
