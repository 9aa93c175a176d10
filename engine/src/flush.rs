//! The flush thread: turns frozen buffer generations into published Parquet segments.
//!
//! Order of a flush (each step durable before the next):
//! 1. write each (table, partition) as a segment: temp file → fsync → rename → fsync dir;
//! 2. persist the catalog (it names every column the segments have);
//! 3. publish the manifest naming the new segments and `wal_flushed_through`;
//! 4. swap the generation for its segments in the snapshot (one atomic publish);
//! 5. delete the WAL files the manifest says are covered.
//!
//! A crash before 3 leaves orphan files (deleted at startup) and a WAL that replays the
//! rows; a crash after 3 leaves WAL files that startup deletes without replaying.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::buffer::{Generation, Snapshot, concat_chunks};
use crate::catalog::Catalog;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, SegmentMeta};
use crate::metrics::{EngineMetrics, inc};
use crate::model::{partition_name, partition_start, path_component};
use crate::segment::write_sorted;
use crate::wal::{list_wal_files, wal_path};

/// Work for the flush thread.
#[derive(Debug)]
pub(crate) enum FlushJob {
    Flush {
        generation: Arc<Generation>,
        /// WAL files up to this id hold only rows of this and earlier generations.
        wal_through: u64,
        catalog: Arc<Catalog>,
        resp: Option<oneshot::Sender<Result<()>>>,
    },
    /// Answer once every job before it is done.
    Barrier(oneshot::Sender<Result<()>>),
}

pub(crate) struct Flusher {
    pub cfg: EngineConfig,
    pub manifest: Arc<Mutex<Manifest>>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub frozen_bytes: Arc<AtomicUsize>,
    pub done_tx: Sender<()>,
    pub halt: Arc<AtomicBool>,
    pub metrics: Arc<EngineMetrics>,
    pub dirty: Arc<crate::dirty::DirtyRanges>,
    /// Told after each flush (never waited on: a full queue already holds a request).
    pub compact_tx: Sender<crate::compact::CompactRequest>,
}

/// Directory of a segment relative to the data directory.
pub(crate) fn segment_rel_path(db: &str, table: &str, partition: i64, id: u64) -> String {
    format!(
        "db/{}/{}/{}/{id:020}.parquet",
        path_component(db),
        path_component(table),
        partition_name(partition)
    )
}

impl Flusher {
    pub(crate) fn run(mut self, rx: Receiver<FlushJob>) {
        while let Ok(job) = rx.recv() {
            match job {
                FlushJob::Barrier(resp) => {
                    let _ = resp.send(Ok(()));
                }
                FlushJob::Flush {
                    generation,
                    wal_through,
                    catalog,
                    mut resp,
                } => {
                    let mut backoff = Duration::from_millis(100);
                    loop {
                        if self.halt.load(Ordering::Acquire) {
                            return;
                        }
                        match self.flush(&generation, wal_through, &catalog) {
                            Ok(()) => {
                                if let Some(r) = resp.take() {
                                    let _ = r.send(Ok(()));
                                }
                                break;
                            }
                            Err(e) => {
                                inc(&self.metrics.flush_errors, 1);
                                tracing::error!(error = %e, "flush failed; retrying in {backoff:?}");
                                if let Some(r) = resp.take() {
                                    let _ = r.send(Err(e));
                                }
                                std::thread::sleep(backoff);
                                backoff = (backoff * 2).min(Duration::from_secs(10));
                            }
                        }
                    }
                }
            }
        }
    }

    fn flush(
        &mut self,
        generation: &Generation,
        wal_through: u64,
        catalog: &Catalog,
    ) -> Result<()> {
        let dir = self.cfg.data_dir.clone();
        let width = self.cfg.partition_nanos();
        let mut written: Vec<PathBuf> = Vec::new();
        let result = (|| -> Result<Vec<SegmentMeta>> {
            let mut new_segments = Vec::new();
            let tables: BTreeMap<_, _> = generation.tables.iter().collect();
            for ((db, table), chunks) in tables {
                let Some(def) = catalog.table(db, table) else {
                    return Err(Error::Internal(format!(
                        "table {db}.{table} not in catalog"
                    )));
                };
                let batch = concat_chunks(chunks, &def.schema())?;
                let mut parts = Partitions::new(&batch, width)?;
                while let Some(Part {
                    start: partition,
                    min_time,
                    max_time,
                    rows: part,
                }) = parts.next()?
                {
                    let id = {
                        let mut m = self.manifest.lock().map_err(|_| poisoned())?;
                        m.next_segment_id += 1;
                        m.next_segment_id - 1
                    };
                    let rel = segment_rel_path(db, table, partition, id);
                    let path = dir.join(&rel);
                    written.push(path.clone());
                    // deduplication keeps every point's time: the range is the input's
                    let (bytes, rows) = write_sorted(&path, &part, &self.cfg.segment)?;
                    drop(part);
                    new_segments.push(SegmentMeta {
                        id,
                        db: db.clone(),
                        table: table.clone(),
                        partition,
                        path: rel,
                        min_time,
                        max_time,
                        rows,
                        bytes,
                        seq: None,
                    });
                }
            }
            fail::fail_point!("flush::before_catalog", |_| Err(failpoint_err(
                "flush::before_catalog"
            )));
            catalog.save(&dir)?;
            fail::fail_point!("flush::before_manifest", |_| Err(failpoint_err(
                "flush::before_manifest"
            )));
            Ok(new_segments)
        })();
        // publish: manifest and snapshot under the manifest lock, so that a compaction
        // publishing at the same time sees (and keeps) these segments
        let mut guard = match self.manifest.lock() {
            Ok(g) => g,
            Err(_) => return Err(poisoned()),
        };
        let result = result.and_then(|new_segments| {
            let mut manifest = guard.clone();
            manifest.segments.extend(new_segments.iter().cloned());
            manifest.wal_flushed_through = manifest.wal_flushed_through.max(wal_through);
            manifest.save(&dir)?;
            *guard = manifest;
            Ok(new_segments)
        });
        let new_segments = match result {
            Ok(s) => s,
            Err(e) => {
                // Not published: the files are orphans; remove what we can now, startup
                // removes the rest.
                for p in written {
                    let _ = std::fs::remove_file(&p);
                    let _ = std::fs::remove_file(crate::fsutil::tmp_path(&p));
                }
                return Err(e);
            }
        };
        let rows: u64 = new_segments.iter().map(|s| s.rows).sum();
        let new: Vec<Arc<SegmentMeta>> = new_segments.into_iter().map(Arc::new).collect();
        let gen_id = generation.id;
        self.state.rcu(|old| {
            let mut segments = Vec::clone(&old.segments);
            segments.extend(new.iter().cloned());
            Snapshot {
                catalog: Arc::clone(&old.catalog),
                generations: old
                    .generations
                    .iter()
                    .filter(|g| g.id != gen_id)
                    .cloned()
                    .collect(),
                segments: Arc::new(segments),
                retention: Arc::clone(&old.retention),
            }
        });
        drop(guard);
        self.frozen_bytes
            .fetch_sub(generation.bytes, Ordering::AcqRel);
        let _ = self.done_tx.try_send(());
        let _ = self
            .compact_tx
            .try_send(crate::compact::CompactRequest::Flushed);
        inc(&self.metrics.flushes, 1);
        inc(&self.metrics.flushed_rows, rows);
        if fail_here("flush::before_wal_delete") {
            return Ok(());
        }
        // the replay will no longer mark these rows' ranges: keep the unsettled ones
        self.dirty.save(&dir)?;
        delete_wal_through(&dir.join("wal"), wal_through);
        Ok(())
    }
}

fn poisoned() -> Error {
    Error::Internal("manifest lock poisoned".into())
}

fn fail_here(name: &str) -> bool {
    fail::eval(name, |_| ()).is_some()
}

fn failpoint_err(name: &str) -> Error {
    Error::Io {
        path: PathBuf::from(name),
        source: std::io::Error::other(format!("failpoint {name}")),
    }
}

/// Delete WAL files with id ≤ `through` (best effort: leftovers are removed at startup).
pub(crate) fn delete_wal_through(wal_dir: &Path, through: u64) {
    match list_wal_files(wal_dir) {
        Ok(ids) => {
            for id in ids.into_iter().filter(|&id| id <= through) {
                if let Err(e) = std::fs::remove_file(wal_path(wal_dir, id)) {
                    tracing::warn!(error = %e, id, "could not delete flushed WAL file");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not list WAL files"),
    }
}

/// The rows of a batch by time partition, one partition at a time (in time order), so
/// that a flush holds at most one partition's copy beside the batch.
struct Partitions<'a> {
    batch: &'a RecordBatch,
    /// Partition width (ns).
    width: i64,
    /// Distinct partitions with their rows' min and max time, last first.
    left: Vec<(i64, i64, i64)>,
    /// All rows are in one partition (the batch is the partition, no copy).
    single: bool,
}

impl<'a> Partitions<'a> {
    fn new(batch: &'a RecordBatch, width: i64) -> Result<Self> {
        let time = crate::writer::time_column(batch)?;
        let mut ranges: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for &t in time.values().iter() {
            let r = ranges.entry(partition_start(t, width)).or_insert((t, t));
            r.0 = r.0.min(t);
            r.1 = r.1.max(t);
        }
        Ok(Partitions {
            batch,
            width,
            single: ranges.len() <= 1,
            left: ranges
                .into_iter()
                .rev()
                .map(|(p, (lo, hi))| (p, lo, hi))
                .collect(),
        })
    }

    /// The next partition's rows.
    fn next(&mut self) -> Result<Option<Part>> {
        let Some((start, min_time, max_time)) = self.left.pop() else {
            return Ok(None);
        };
        let rows = if self.single {
            self.batch.clone()
        } else {
            // each row's partition is recomputed from its time rather than kept (8 bytes
            // a row held through the whole flush)
            let time = crate::writer::time_column(self.batch)?;
            let mask: BooleanArray = time
                .values()
                .iter()
                .map(|&t| Some(partition_start(t, self.width) == start))
                .collect();
            filter_record_batch(self.batch, &mask)?
        };
        Ok(Some(Part {
            start,
            min_time,
            max_time,
            rows,
        }))
    }
}

/// The rows of one time partition, from [`Partitions::next`].
struct Part {
    start: i64,
    min_time: i64,
    max_time: i64,
    rows: RecordBatch,
}
