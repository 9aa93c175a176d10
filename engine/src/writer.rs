//! The writer thread: validates writes against the catalog, appends them to the WAL in
//! groups (one write + one fsync per group), applies them to the buffer, publishes a
//! new snapshot and only then completes each writer's future.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use arrow::array::{Array, BooleanArray, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use crate::batch::{Rejection, WriteBatch, conflict_reason};
use crate::buffer::{Chunk, Generation, Snapshot, TableKey, push_chunk};
use crate::catalog::{Catalog, ColumnDef};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::flush::FlushJob;
use crate::metrics::{EngineMetrics, inc};
use crate::model::{ColumnType, TIME_COLUMN};
use crate::wal::{WalWriter, encode_ipc, encode_record};

/// What a completed write reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Rows now durable.
    pub rows_written: usize,
    /// Rows the writer refused (type conflicts with concurrent writes).
    pub rejected: Vec<Rejection>,
}

/// A write on its way to the writer thread, with its tables already IPC-encoded.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    pub batch: WriteBatch,
    pub encoded: Vec<Vec<u8>>,
    pub done: oneshot::Sender<Result<WriteOutcome>>,
}

/// Messages to the writer thread.
#[derive(Debug)]
pub(crate) enum Command {
    Write(WriteRequest),
    /// Freeze the buffer and flush it; reply when everything before is in segments.
    Flush(oneshot::Sender<Result<()>>),
    /// Flush everything and stop.
    Shutdown(oneshot::Sender<Result<()>>),
}

/// A validated write ready to be applied.
struct Prepared {
    db: String,
    tables: Vec<(String, RecordBatch, i64, i64)>,
    rejected: Vec<Rejection>,
    rows: usize,
}

pub(crate) struct Writer {
    pub cfg: EngineConfig,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub wal: WalWriter,
    pub catalog: Arc<Catalog>,
    pub active: HashMap<TableKey, Arc<Vec<Chunk>>>,
    pub active_bytes: HashMap<TableKey, usize>,
    pub active_id: u64,
    pub active_since: Option<Instant>,
    pub seq: u64,
    pub flush_tx: Sender<FlushJob>,
    pub flush_done_rx: Receiver<()>,
    pub frozen_bytes: Arc<AtomicUsize>,
    pub halt: Arc<AtomicBool>,
    pub metrics: Arc<EngineMetrics>,
    pub dirty: Arc<crate::dirty::DirtyRanges>,
}

impl Writer {
    fn active_total(&self) -> usize {
        self.active_bytes.values().sum()
    }

    /// Main loop; returns when shut down, halted, or every sender is gone.
    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        loop {
            if self.halt.load(Ordering::Acquire) {
                return;
            }
            // wake up at least every 200 ms to notice `halt`
            let timeout = match self.active_since {
                Some(t) => self.cfg.flush_interval.saturating_sub(t.elapsed()),
                None => Duration::from_millis(200),
            }
            .min(Duration::from_millis(200));
            let first = match rx.recv_timeout(timeout) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    self.check_age();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut group = vec![first];
            let mut bytes = group_bytes(&group[0]);
            if !self.cfg.group_commit_window.is_zero() {
                let deadline = Instant::now() + self.cfg.group_commit_window;
                while bytes < self.cfg.max_group_bytes {
                    match rx.recv_deadline(deadline) {
                        Ok(c) => {
                            bytes += group_bytes(&c);
                            group.push(c);
                        }
                        Err(_) => break,
                    }
                }
            }
            while bytes < self.cfg.max_group_bytes {
                match rx.try_recv() {
                    Ok(c) => {
                        bytes += group_bytes(&c);
                        group.push(c);
                    }
                    Err(_) => break,
                }
            }
            if self.process_group(group) {
                return;
            }
            self.check_age();
        }
    }

    fn check_age(&mut self) {
        if self
            .active_since
            .is_some_and(|t| t.elapsed() >= self.cfg.flush_interval)
        {
            self.freeze(None);
        }
    }

    /// Returns true when the writer must stop.
    fn process_group(&mut self, group: Vec<Command>) -> bool {
        let catalog_before = Arc::clone(&self.catalog);
        let mut record_bytes = Vec::new();
        let mut pending: Vec<(oneshot::Sender<Result<WriteOutcome>>, Prepared)> = Vec::new();
        let mut flushes = Vec::new();
        let mut shutdown = None;
        for cmd in group {
            match cmd {
                Command::Write(req) => match self.prepare(req.batch, req.encoded) {
                    Ok((prepared, ipc)) => {
                        if prepared.rows > 0 {
                            self.seq += 1;
                            let refs: Vec<(&str, &[u8])> = prepared
                                .tables
                                .iter()
                                .zip(&ipc)
                                .map(|((name, ..), bytes)| (name.as_str(), bytes.as_slice()))
                                .collect();
                            encode_record(&mut record_bytes, self.seq, &prepared.db, &refs);
                        }
                        pending.push((req.done, prepared));
                    }
                    Err(e) => {
                        let _ = req.done.send(Err(e));
                    }
                },
                Command::Flush(resp) => flushes.push(resp),
                Command::Shutdown(resp) => shutdown = Some(resp),
            }
        }

        if !record_bytes.is_empty() {
            self.wait_for_memory();
            let started = Instant::now();
            match self.wal.append(&record_bytes) {
                Ok(()) => {
                    self.metrics.wal_fsync.observe(started.elapsed());
                    inc(&self.metrics.wal_bytes, record_bytes.len() as u64);
                    let mut replies = Vec::with_capacity(pending.len());
                    let mut touched = Vec::new();
                    for (done, prepared) in pending {
                        for (table, _, min, max) in &prepared.tables {
                            touched.push((prepared.db.clone(), table.clone(), *min, *max));
                        }
                        let outcome = WriteOutcome {
                            rows_written: prepared.rows,
                            rejected: prepared.rejected.clone(),
                        };
                        inc(&self.metrics.rows_written, prepared.rows as u64);
                        inc(&self.metrics.rows_rejected, prepared.rejected.len() as u64);
                        if let Err(e) = self.apply(prepared) {
                            tracing::error!(error = %e, "applying a durable write to the buffer failed");
                        }
                        replies.push((done, outcome));
                    }
                    self.publish();
                    // after the publish: whoever takes a range then sees its rows
                    for (db, table, min, max) in touched {
                        self.dirty.mark(&db, &table, min, max);
                    }
                    for (done, outcome) in replies {
                        let _ = done.send(Ok(outcome));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "WAL append failed; the group is not acknowledged");
                    inc(&self.metrics.write_errors, pending.len() as u64);
                    self.catalog = catalog_before;
                    let msg = e.to_string();
                    for (done, _) in pending {
                        let _ = done.send(Err(Error::WalUnavailable(msg.clone())));
                    }
                }
            }
        } else {
            for (done, prepared) in pending {
                inc(&self.metrics.rows_rejected, prepared.rejected.len() as u64);
                let _ = done.send(Ok(WriteOutcome {
                    rows_written: 0,
                    rejected: prepared.rejected,
                }));
            }
        }

        if self.active_total() >= self.cfg.flush_bytes {
            self.freeze(None);
        }
        for resp in flushes {
            self.freeze(Some(resp));
        }
        if let Some(resp) = shutdown {
            self.freeze(None);
            let (tx, rx) = oneshot::channel();
            let _ = self.flush_tx.send(FlushJob::Barrier(tx));
            let res = rx.blocking_recv().unwrap_or(Err(Error::ShuttingDown));
            let _ = resp.send(res);
            return true;
        }
        false
    }

    /// Delay the group while the buffer is over its memory limit.
    fn wait_for_memory(&mut self) {
        let mut waited = false;
        while self.active_total() + self.frozen_bytes.load(Ordering::Acquire)
            >= self.cfg.max_buffer_bytes
        {
            if !waited {
                inc(&self.metrics.backpressure_waits, 1);
                waited = true;
            }
            if self.active_total() > 0 {
                self.freeze(None);
            }
            if self.halt.load(Ordering::Acquire) {
                return;
            }
            let _ = self.flush_done_rx.recv_timeout(Duration::from_millis(100));
        }
    }

    /// Check a write against the catalog (adding new columns to it) and drop the rows
    /// that conflict. Returns the write and each table's IPC encoding.
    fn prepare(
        &mut self,
        batch: WriteBatch,
        mut encoded: Vec<Vec<u8>>,
    ) -> Result<(Prepared, Vec<Vec<u8>>)> {
        let WriteBatch { db, tables } = batch;
        let mut out = Prepared {
            db: db.clone(),
            tables: Vec::with_capacity(tables.len()),
            rejected: Vec::new(),
            rows: 0,
        };
        let mut ipc_out = Vec::with_capacity(tables.len());
        for (ti, tw) in tables.into_iter().enumerate() {
            let mut batch = tw.batch;
            let schema = batch.schema();
            let def = self.catalog.table(&db, &tw.table).cloned();
            let mut new_cols = Vec::new();
            let mut bad_cols = Vec::new();
            let mut reject = vec![false; batch.num_rows()];
            for (ci, f) in schema.fields().iter().enumerate() {
                let Some(got) = ColumnType::from_data_type(f.name(), f.data_type()) else {
                    return Err(Error::Internal(format!(
                        "unsupported column type {}",
                        f.data_type()
                    )));
                };
                if got == ColumnType::Time {
                    continue;
                }
                match def.as_ref().and_then(|d| d.column_type(f.name())) {
                    Some(have) if have == got => {}
                    Some(have) => {
                        let col = batch.column(ci);
                        let reason = conflict_reason(&tw.table, f.name(), have, got);
                        for (r, flag) in reject.iter_mut().enumerate() {
                            if col.is_valid(r) && !*flag {
                                *flag = true;
                                out.rejected.push(Rejection {
                                    row_id: tw.row_ids.get(r).copied().unwrap_or(r as u32),
                                    reason: reason.clone(),
                                });
                            }
                        }
                        bad_cols.push(ci);
                    }
                    None => new_cols.push(ColumnDef {
                        name: f.name().clone(),
                        ty: got,
                    }),
                }
            }
            let mut ipc = encoded.get_mut(ti).map(std::mem::take).unwrap_or_default();
            if !bad_cols.is_empty() {
                let keep: Vec<usize> = (0..batch.num_columns())
                    .filter(|c| !bad_cols.contains(c))
                    .collect();
                let mask = BooleanArray::from(reject.iter().map(|r| !r).collect::<Vec<_>>());
                batch = filter_record_batch(&batch.project(&keep)?, &mask)?;
                ipc.clear();
            }
            if batch.num_rows() == 0 {
                continue;
            }
            if ipc.is_empty() {
                ipc = encode_ipc(&batch)?;
            }
            if !new_cols.is_empty() || def.is_none() {
                Arc::make_mut(&mut self.catalog).add_columns(&db, &tw.table, &new_cols);
            }
            let (min, max) = time_range(&batch)?;
            out.rows += batch.num_rows();
            out.tables.push((tw.table, batch, min, max));
            ipc_out.push(ipc);
        }
        Ok((out, ipc_out))
    }

    /// Add durable rows to the active buffer.
    fn apply(&mut self, p: Prepared) -> Result<()> {
        for (table, batch, min_time, max_time) in p.tables {
            let key = (p.db.clone(), table);
            let schema = self
                .catalog
                .table(&key.0, &key.1)
                .map(|t| t.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty()));
            let chunks = Arc::make_mut(self.active.entry(key.clone()).or_default());
            push_chunk(
                chunks,
                Chunk {
                    batch,
                    min_time,
                    max_time,
                },
                &schema,
            )?;
            let bytes = chunks.iter().map(Chunk::bytes).sum();
            self.active_bytes.insert(key, bytes);
        }
        if self.active_since.is_none() {
            self.active_since = Some(Instant::now());
        }
        Ok(())
    }

    /// Replay a WAL record (already durable) into the buffer.
    pub(crate) fn replay(
        &mut self,
        db: String,
        tables: Vec<(String, RecordBatch)>,
        seq: u64,
    ) -> Result<usize> {
        let tables = tables
            .into_iter()
            .map(|(table, batch)| {
                let row_ids = (0..batch.num_rows() as u32).collect();
                crate::batch::TableWrite {
                    table,
                    batch,
                    row_ids,
                }
            })
            .collect();
        let (prepared, _) = self.prepare(WriteBatch { db, tables }, Vec::new())?;
        let rows = prepared.rows;
        // replay happens before the engine is shared: nobody takes ranges before the publish
        for (table, _, min, max) in &prepared.tables {
            self.dirty.mark(&prepared.db, table, *min, *max);
        }
        self.apply(prepared)?;
        self.seq = self.seq.max(seq);
        Ok(rows)
    }

    /// Publish the active generation in a new snapshot.
    pub(crate) fn publish(&self) {
        let generation = Arc::new(Generation {
            id: self.active_id,
            tables: self.active.clone(),
            bytes: self.active_total(),
        });
        let catalog = Arc::clone(&self.catalog);
        let id = self.active_id;
        self.state.rcu(|old| {
            let mut generations: Vec<Arc<Generation>> = old
                .generations
                .iter()
                .filter(|g| g.id != id)
                .cloned()
                .collect();
            if !generation.tables.is_empty() {
                generations.push(Arc::clone(&generation));
            }
            Snapshot {
                catalog: Arc::clone(&catalog),
                generations,
                segments: Arc::clone(&old.segments),
                retention: Arc::clone(&old.retention),
            }
        });
    }

    /// Freeze the active generation and hand it to the flush thread, rolling the WAL.
    /// `resp` is answered once everything up to now is in published segments.
    fn freeze(&mut self, resp: Option<oneshot::Sender<Result<()>>>) {
        if self.active.is_empty() {
            if let Some(resp) = resp {
                let _ = self.flush_tx.send(FlushJob::Barrier(resp));
            }
            return;
        }
        let dir = self.wal.dir().to_path_buf();
        let next = match WalWriter::create(&dir, self.wal.id() + 1, self.cfg.wal_sync) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot roll the WAL; flush postponed");
                inc(&self.metrics.flush_errors, 1);
                if let Some(resp) = resp {
                    let _ = resp.send(Err(e));
                }
                return;
            }
        };
        let closed = std::mem::replace(&mut self.wal, next);
        let bytes = self.active_total();
        let generation = Arc::new(Generation {
            id: self.active_id,
            tables: std::mem::take(&mut self.active),
            bytes,
        });
        self.active_bytes.clear();
        self.active_id += 1;
        self.active_since = None;
        self.frozen_bytes.fetch_add(bytes, Ordering::AcqRel);
        // the snapshot already holds `generation`'s content under its id; nothing to publish
        let job = FlushJob::Flush {
            generation,
            wal_through: closed.id(),
            catalog: Arc::clone(&self.catalog),
            resp,
        };
        if self.flush_tx.send(job).is_err() {
            tracing::error!("flush thread is gone");
        }
    }
}

fn group_bytes(c: &Command) -> usize {
    match c {
        Command::Write(w) => w.encoded.iter().map(Vec::len).sum(),
        _ => 0,
    }
}

/// A batch's time column.
pub(crate) fn time_column(batch: &RecordBatch) -> Result<&TimestampNanosecondArray> {
    batch
        .column_by_name(TIME_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .ok_or_else(|| Error::Internal("batch without a time column".into()))
}

/// Min and max of a batch's time column.
pub(crate) fn time_range(batch: &RecordBatch) -> Result<(i64, i64)> {
    let col = time_column(batch)?;
    let mut min = i64::MAX;
    let mut max = i64::MIN;
    for &t in col.values().iter() {
        min = min.min(t);
        max = max.max(t);
    }
    Ok((min, max))
}
