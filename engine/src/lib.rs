//! talo's storage engine.
//!
//! In: [`WriteBatch`]es (columnar rows per table, built by decoders with a
//! [`BatchBuilder`]). Out: [`Snapshot`]s — a consistent view of the catalog, the rows in
//! the in-memory buffer and the published Parquet segments — for the query layer.
//!
//! A write is acknowledged (its future completes) only after its rows are in the WAL
//! and the WAL is fsynced; the buffer is flushed to zstd Parquet segments by size or
//! age; startup replays the WAL so a crash loses nothing acknowledged. The engine knows
//! nothing of MQTT, HTTP or SQL.

pub mod batch;
pub mod buffer;
pub mod catalog;
pub mod compact;
pub mod config;
pub mod decimal;
pub mod dirty;
pub mod error;
mod flush;
pub mod fsutil;
pub mod manifest;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod reader;
mod recovery;
pub mod retention;
pub mod segment;
pub mod wal;
mod writer;

use std::fs::File;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use tokio::sync::oneshot;

pub use batch::{BatchBuilder, Rejection, TableWrite, WriteBatch};
pub use buffer::{Snapshot, TableSnapshot};
pub use catalog::Catalog;
pub use compact::CompactionConfig;
pub use config::EngineConfig;
pub use error::{Error, Result};
pub use manifest::SegmentMeta;
pub use metrics::EngineMetrics;
pub use model::{ColumnType, FieldType, FieldValue};
pub use recovery::RecoveryReport;
pub use wal::WalSync;
pub use writer::WriteOutcome;

use writer::{Command, WriteRequest};

/// Depth of the queue in front of the writer thread; senders wait when it is full.
const WRITE_QUEUE: usize = 4096;

/// The storage engine. Cheap to share behind an `Arc`.
pub struct Engine {
    config: EngineConfig,
    state: Arc<ArcSwap<Snapshot>>,
    sender: Sender<Command>,
    compact_tx: Sender<compact::CompactRequest>,
    /// Serializes retention changes (read, modify, persist, publish).
    retention_lock: Mutex<()>,
    metrics: Arc<EngineMetrics>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    halt: Arc<AtomicBool>,
    /// The compaction thread's halt: set by `halt` and at the start of `shutdown`.
    compact_halt: Arc<AtomicBool>,
    closed: AtomicBool,
    recovery: RecoveryReport,
    /// Held while open; released by shutdown/halt so the directory can be reopened.
    lock: Mutex<Option<File>>,
    dirty: Arc<dirty::DirtyRanges>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.config.data_dir)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Open (or create) the data directory, recover, and start the writer and flush
    /// threads. Blocking: call it from a blocking context.
    pub fn open(mut config: EngineConfig) -> Result<Arc<Self>> {
        config.validate()?;
        // an absolute directory: segment paths handed to the query layer's object store are
        // joined to it and must not depend on the working directory
        config.data_dir = std::path::absolute(&config.data_dir).map_err(|source| Error::Io {
            path: config.data_dir.clone(),
            source,
        })?;
        recovery::open(config, WRITE_QUEUE)
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// What startup found and did.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// A consistent view of everything acknowledged so far. Never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    /// The current catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.state.load().catalog)
    }

    /// A row builder for database `db`, checking types against the current catalog.
    pub fn batch_builder(&self, db: &str) -> Result<BatchBuilder> {
        BatchBuilder::new(db, self.catalog())
    }

    /// Time ranges written per table that derived data (rollups) has not recomputed yet.
    pub fn dirty(&self) -> &dirty::DirtyRanges {
        &self.dirty
    }

    /// Engine counters.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    fn request(&self, batch: WriteBatch) -> Result<oneshot::Receiver<Result<WriteOutcome>>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let encoded = batch
            .tables
            .iter()
            .map(|t| wal::encode_ipc(&t.batch))
            .collect::<Result<Vec<_>>>()?;
        let (done, rx) = oneshot::channel();
        self.sender
            .send(Command::Write(WriteRequest {
                batch,
                encoded,
                done,
            }))
            .map_err(|_| Error::ShuttingDown)?;
        Ok(rx)
    }

    /// Write a batch; completes once its rows are durable (or rejected). The IPC encoding
    /// for the WAL is done on the calling thread, so many callers encode in parallel.
    /// Note: when the writer queue is full this call waits for room (back-pressure).
    pub async fn write(&self, batch: WriteBatch) -> Result<WriteOutcome> {
        if batch.tables.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let rx = self.request(batch)?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Hand a batch to the writer now and wait for durability later: callers that
    /// pipeline (the MQTT endpoint keeps reading while earlier messages commit) submit
    /// in order and await the [`PendingWrite`]s in the same order.
    pub fn submit(&self, batch: WriteBatch) -> Result<PendingWrite> {
        if batch.tables.is_empty() {
            return Ok(PendingWrite(None));
        }
        Ok(PendingWrite(Some(self.request(batch)?)))
    }

    /// [`Engine::write`] for threads outside an async runtime.
    pub fn write_blocking(&self, batch: WriteBatch) -> Result<WriteOutcome> {
        if batch.tables.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let rx = self.request(batch)?;
        rx.blocking_recv().unwrap_or(Err(Error::ShuttingDown))
    }

    /// Flush the whole buffer to segments; completes when everything acknowledged
    /// before the call is in published segments.
    pub async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(Command::Flush(tx))
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// [`Engine::flush`] for threads outside an async runtime.
    pub fn flush_blocking(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.sender
            .send(Command::Flush(tx))
            .map_err(|_| Error::ShuttingDown)?;
        rx.blocking_recv().unwrap_or(Err(Error::ShuttingDown))
    }

    /// Keep the rows of `db` (or of `db.table`, overriding the database) for `keep`;
    /// `None` removes the rule. Persisted, and visible to queries at once: rows past the
    /// retention disappear from results now, their files at the next compaction pass.
    pub fn set_retention(
        &self,
        db: &str,
        table: Option<&str>,
        keep: Option<std::time::Duration>,
    ) -> Result<()> {
        model::validate_db_name(db)?;
        if let Some(t) = table {
            model::validate_table_name(t)?;
        }
        if keep.is_some_and(|k| k.as_secs() == 0) {
            return Err(Error::Config(
                "retention must be at least one second".into(),
            ));
        }
        let _guard = self
            .retention_lock
            .lock()
            .map_err(|_| Error::Internal("retention lock poisoned".into()))?;
        let next = Arc::new(self.state.load().retention.with(db, table, keep));
        next.save(&self.config.data_dir)?;
        self.state.rcu(|old| Snapshot {
            catalog: Arc::clone(&old.catalog),
            generations: old.generations.clone(),
            segments: Arc::clone(&old.segments),
            retention: Arc::clone(&next),
        });
        Ok(())
    }

    /// Run compaction now until no partition qualifies; returns the number of merges.
    /// Blocking.
    pub fn compact_blocking(&self) -> Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.compact_tx
            .send(compact::CompactRequest::Now(tx))
            .map_err(|_| Error::ShuttingDown)?;
        rx.blocking_recv().unwrap_or(Err(Error::ShuttingDown))
    }

    /// Stop accepting writes, flush everything, stop the threads. Blocking.
    pub fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // a merge in progress is dropped, not waited for (it is redone after restart)
        self.compact_halt.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let res = match self.sender.send(Command::Shutdown(tx)) {
            Ok(()) => rx.blocking_recv().unwrap_or(Err(Error::ShuttingDown)),
            Err(_) => Err(Error::ShuttingDown),
        };
        let _ = self.compact_tx.send(compact::CompactRequest::Stop);
        self.join();
        res
    }

    /// Stop the threads at once without flushing, as a crash would (the WAL has
    /// everything acknowledged). For tests and for giving up after a fatal error.
    pub fn halt(&self) {
        self.closed.store(true, Ordering::Release);
        self.stop_threads();
        let _ = self.compact_tx.try_send(compact::CompactRequest::Stop);
        self.join();
    }

    /// Tell the writer/flush threads and any merge in progress to stop now.
    fn stop_threads(&self) {
        self.halt.store(true, Ordering::Release);
        self.compact_halt.store(true, Ordering::Release);
    }

    fn join(&self) {
        let me = std::thread::current().id();
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        if let Ok(mut lock) = self.lock.lock() {
            lock.take();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// A write handed to the writer thread; [`PendingWrite::wait`] completes once its rows
/// are durable (or rejected).
#[derive(Debug)]
pub struct PendingWrite(Option<oneshot::Receiver<Result<WriteOutcome>>>);

impl PendingWrite {
    /// Wait until the rows are durable.
    pub async fn wait(self) -> Result<WriteOutcome> {
        match self.0 {
            None => Ok(WriteOutcome::default()),
            Some(rx) => rx.await.unwrap_or(Err(Error::ShuttingDown)),
        }
    }
}
