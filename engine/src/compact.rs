//! Compaction: merge the small segments of one (database, table, partition) into one.
//!
//! A background thread looks every `interval` (or when asked) for partitions holding a
//! run of at least `min_files` segments smaller than `target_bytes` that are adjacent in
//! precedence order (no other segment of the partition between them). Such a run is
//! merged: read in precedence order, aligned to the table's current schema, sorted by
//! series then time with last-write-wins per field (`sort_dedup`, the flush's own merge),
//! and written as one segment whose *precedence* is the run's highest. Because the run is
//! adjacent, every segment of the partition outside it was either overwritten by all of
//! the run or overwrites all of it, before and after: results do not change.
//!
//! Publishing (each step durable before the next):
//! 1. the merged segment: temp file → fsync → rename → fsync dir;
//! 2. the manifest without the inputs and with the output (atomic replace);
//! 3. the snapshot (one atomic swap): new queries see the output, running queries keep
//!    the inputs they hold;
//! 4. inputs are deleted once no snapshot refers to them any more (checked every pass).
//!
//! A crash before 2 leaves the output as an orphan; after 2, the inputs: startup deletes
//! Parquet files the manifest does not name, so nothing is lost, duplicated or left.
//!
//! The merge streams (`merge.rs`): memory holds about one batch of `MERGE_BATCH_ROWS`
//! per input, and a run has at most `MAX_RUN_FILES` inputs, whatever the sizes.
//! `max_rows` caps the rows of one merged segment. The thread runs at a lower CPU
//! priority (nice +10) than ingestion and queries: on a busy machine it waits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::buffer::Snapshot;
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::flush::segment_rel_path;
use crate::manifest::{Manifest, SegmentMeta};
use crate::merge::{MergeStats, merge_segments};
use crate::metrics::{EngineMetrics, inc};
use crate::segment::SegmentWriter;

/// Rows read from each input at a time by the streaming merge.
const MERGE_BATCH_ROWS: usize = 16 * 1024;
/// Most segments merged at once (bounds the merge's memory and open files).
const MAX_RUN_FILES: usize = 64;

/// When and how much to compact.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    /// Look for work this often; `None` = only when asked ([`crate::Engine::compact`]).
    pub interval: Option<Duration>,
    /// Merge a run once it has this many small segments. Default 8.
    pub min_files: usize,
    /// Segments at least this large are left alone. Default 256 MiB.
    pub target_bytes: u64,
    /// Most rows in one merged segment. Default 8 Mi rows.
    pub max_rows: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            interval: Some(Duration::from_secs(60)),
            min_files: 8,
            target_bytes: 256 << 20,
            max_rows: 8 << 20,
        }
    }
}

/// Requests to the compaction thread.
#[derive(Debug)]
pub(crate) enum CompactRequest {
    /// Compact until nothing qualifies; answer with the number of merges.
    Now(oneshot::Sender<Result<usize>>),
    Stop,
}

pub(crate) struct Compactor {
    pub cfg: EngineConfig,
    pub manifest: Arc<Mutex<Manifest>>,
    pub state: Arc<ArcSwap<Snapshot>>,
    pub halt: Arc<AtomicBool>,
    pub metrics: Arc<EngineMetrics>,
    /// Replaced segments waiting until no snapshot holds them.
    pub graveyard: Vec<Arc<SegmentMeta>>,
}

impl Compactor {
    pub(crate) fn run(mut self, rx: Receiver<CompactRequest>) {
        lower_priority();
        // retention is checked at least every minute, compaction or not
        let wait = self
            .cfg
            .compaction
            .interval
            .unwrap_or(Duration::from_secs(60))
            .min(Duration::from_secs(60));
        loop {
            let req = match rx.recv_timeout(wait) {
                Ok(CompactRequest::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(CompactRequest::Now(resp)) => Some(resp),
                Err(RecvTimeoutError::Timeout) => None,
            };
            if self.halt.load(Ordering::Acquire) {
                break;
            }
            if let Err(e) = self.drop_expired() {
                tracing::error!(error = %e, "dropping expired segments failed; will retry");
            }
            if req.is_none() && self.cfg.compaction.interval.is_none() {
                self.bury();
                continue;
            }
            let res = self.compact_all();
            if let Err(e) = &res {
                inc(&self.metrics.compaction_errors, 1);
                tracing::error!(error = %e, "compaction failed; will retry");
            }
            self.bury();
            if let Some(resp) = req {
                let _ = resp.send(res);
            }
        }
        self.bury();
    }

    /// Delete replaced segments no snapshot refers to any more.
    fn bury(&mut self) {
        let dir = self.cfg.data_dir.clone();
        self.graveyard.retain(|s| {
            if Arc::strong_count(s) > 1 {
                return true; // a running query still reads it
            }
            let path = dir.join(&s.path);
            match std::fs::remove_file(&path) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "could not delete a compacted segment");
                    true
                }
            }
        });
    }

    /// Remove segments whose newest row is past its table's retention (manifest, then
    /// snapshot; the files follow once no query holds them). Returns how many.
    fn drop_expired(&mut self) -> Result<usize> {
        let snap = self.state.load_full();
        let now = crate::retention::now_ns();
        let expired: std::collections::HashSet<u64> = snap
            .segments
            .iter()
            .filter(|s| {
                snap.retention
                    .cutoff(&s.db, &s.table, now)
                    .is_some_and(|cut| s.max_time < cut)
            })
            .map(|s| s.id)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let mut m = self.manifest.lock().map_err(|_| poisoned())?;
        let mut next = m.clone();
        next.segments.retain(|s| !expired.contains(&s.id));
        next.save(&self.cfg.data_dir)?;
        *m = next;
        self.state.rcu(|old| Snapshot {
            catalog: Arc::clone(&old.catalog),
            generations: old.generations.clone(),
            segments: Arc::new(
                old.segments
                    .iter()
                    .filter(|s| !expired.contains(&s.id))
                    .cloned()
                    .collect(),
            ),
            retention: Arc::clone(&old.retention),
        });
        drop(m);
        self.graveyard.extend(
            snap.segments
                .iter()
                .filter(|s| expired.contains(&s.id))
                .cloned(),
        );
        inc(&self.metrics.segments_expired, expired.len() as u64);
        tracing::info!(
            segments = expired.len(),
            "dropped segments past their retention"
        );
        Ok(expired.len())
    }

    /// Merge runs until none qualifies.
    fn compact_all(&mut self) -> Result<usize> {
        let mut merges = 0;
        loop {
            if self.halt.load(Ordering::Acquire) {
                return Ok(merges);
            }
            let Some(run) = self.pick() else {
                return Ok(merges);
            };
            self.merge(run)?;
            merges += 1;
        }
    }

    /// The first run worth merging: adjacent small segments of one partition.
    fn pick(&self) -> Option<Vec<Arc<SegmentMeta>>> {
        let c = &self.cfg.compaction;
        let snap = self.state.load();
        let mut parts: BTreeMap<(&str, &str, i64), Vec<&Arc<SegmentMeta>>> = BTreeMap::new();
        for s in snap.segments.iter() {
            parts
                .entry((s.db.as_str(), s.table.as_str(), s.partition))
                .or_default()
                .push(s);
        }
        for (_, mut segs) in parts {
            segs.sort_by_key(|s| s.precedence());
            let mut run: Vec<Arc<SegmentMeta>> = Vec::new();
            let mut rows = 0;
            for s in segs {
                let small = s.bytes < c.target_bytes;
                if small
                    && (run.is_empty()
                        || (rows + s.rows <= c.max_rows && run.len() < MAX_RUN_FILES))
                {
                    rows += s.rows;
                    run.push(Arc::clone(s));
                    continue;
                }
                if run.len() >= c.min_files.max(2) {
                    return Some(run);
                }
                run.clear();
                rows = 0;
                if small {
                    rows = s.rows;
                    run.push(Arc::clone(s));
                }
            }
            if run.len() >= c.min_files.max(2) {
                return Some(run);
            }
        }
        None
    }

    fn merge(&mut self, run: Vec<Arc<SegmentMeta>>) -> Result<()> {
        let first = &run[0];
        let (db, table, partition) = (first.db.clone(), first.table.clone(), first.partition);
        let snap = self.state.load_full();
        let def = snap
            .catalog
            .table(&db, &table)
            .ok_or_else(|| Error::Internal(format!("table {db}.{table} not in catalog")))?;
        let schema = def.schema();
        let id = {
            let mut m = self.manifest.lock().map_err(|_| poisoned())?;
            let id = m.next_segment_id;
            m.next_segment_id += 1;
            id
        };
        let rel = segment_rel_path(&db, &table, partition, id);
        let path: PathBuf = self.cfg.data_dir.join(&rel);
        let started = Instant::now();
        let result = (|| -> Result<Option<(SegmentMeta, MergeStats)>> {
            let mut w = SegmentWriter::create(&path, &schema, &self.cfg.segment)?;
            let Some(stats) = merge_segments(
                &self.cfg.data_dir,
                &run,
                &schema,
                &mut w,
                MERGE_BATCH_ROWS,
                &self.halt,
            )?
            else {
                return Ok(None);
            };
            let bytes = w.finish()?;
            let meta = SegmentMeta {
                id,
                db: db.clone(),
                table: table.clone(),
                partition,
                path: rel.clone(),
                min_time: stats.min_time,
                max_time: stats.max_time,
                rows: stats.rows_out,
                bytes,
                seq: Some(run.iter().map(|s| s.precedence()).max().unwrap_or(id)),
            };
            Ok(Some((meta, stats)))
        })();
        let (out, stats) = match result {
            Ok(Some(o)) => o,
            Ok(None) => {
                // halted mid-merge: nothing was published
                let _ = std::fs::remove_file(crate::fsutil::tmp_path(&path));
                return Ok(());
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(crate::fsutil::tmp_path(&path));
                return Err(e);
            }
        };
        if self.halt.load(Ordering::Acquire) {
            return Ok(()); // a crash here leaves the output as an orphan
        }
        let out_bytes = out.bytes;
        let input_ids: std::collections::HashSet<u64> = run.iter().map(|s| s.id).collect();
        {
            let mut m = self.manifest.lock().map_err(|_| poisoned())?;
            let mut next = m.clone();
            if next
                .segments
                .iter()
                .filter(|s| input_ids.contains(&s.id))
                .count()
                != run.len()
            {
                // an input vanished meanwhile (retention): drop the output, try later
                drop(m);
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
            next.segments.retain(|s| !input_ids.contains(&s.id));
            next.segments.push(out.clone());
            fail::fail_point!("compact::before_manifest", |_| {
                Err(Error::Io {
                    path: PathBuf::from("compact::before_manifest"),
                    source: std::io::Error::other("failpoint compact::before_manifest"),
                })
            });
            next.save(&self.cfg.data_dir)?;
            *m = next;
            // the snapshot swap happens under the manifest lock so a flush publishing at
            // the same time cannot be lost between the two
            let out = Arc::new(out);
            self.state.rcu(|old| {
                let mut segments: Vec<Arc<SegmentMeta>> = old
                    .segments
                    .iter()
                    .filter(|s| !input_ids.contains(&s.id))
                    .cloned()
                    .collect();
                segments.push(Arc::clone(&out));
                Snapshot {
                    catalog: Arc::clone(&old.catalog),
                    generations: old.generations.clone(),
                    segments: Arc::new(segments),
                    retention: Arc::clone(&old.retention),
                }
            });
        }
        inc(&self.metrics.compactions, 1);
        inc(&self.metrics.compacted_segments, run.len() as u64);
        inc(&self.metrics.compaction_rows_in, stats.rows_in);
        inc(
            &self.metrics.compaction_bytes_in,
            run.iter().map(|s| s.bytes).sum(),
        );
        inc(&self.metrics.compaction_bytes_out, out_bytes);
        inc(
            &self.metrics.compaction_nanos,
            started.elapsed().as_nanos() as u64,
        );
        tracing::debug!(
            db,
            table,
            inputs = run.len(),
            rows_in = stats.rows_in,
            rows_out = stats.rows_out,
            "compacted"
        );
        if fail::eval("compact::before_delete", |_| ()).is_some() {
            return Ok(());
        }
        drop(snap);
        self.graveyard.extend(run);
        Ok(())
    }
}

/// Nice this thread (only this one: Linux keeps a nice value per thread) by 10, so a
/// busy CPU goes to ingestion and queries first. Raising the nice value needs no
/// privilege; failure only costs the preference.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority take plain integers and touch no memory of ours.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 10) != 0 {
            tracing::debug!("could not lower the compaction thread's priority");
        }
    }
}

fn poisoned() -> Error {
    Error::Internal("manifest lock poisoned".into())
}
