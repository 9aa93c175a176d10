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
//! A *quiet* partition, one that got no flush for `cold_after` (yesterday's, once
//! the late data has stopped), merges its small adjacent segments whatever their number
//! (at least two): otherwise the last few flushes of a day, fewer than `min_files`, would
//! stay small, compressed at the flush's level and opened by every query of that day,
//! for ever. The quiet clock of a partition starts at startup (or when its newest flush
//! is seen, whichever is later) and restarts with every flush into it (its highest
//! precedence grows; a merge keeps its inputs' highest), so a partition still being
//! written (a backfill) is not rewritten after every flush, and one quiet partition's
//! merges follow each other in one pass.
//!
//! Segments whose time ranges overlap (writers sending interleaved or late times) are
//! merged whatever their number ([`overlapping_window`]): until then every query over
//! them merges copies at read time, on one thread. Such a run may exceed `max_rows`; its
//! output is then cut by time into up to `MAX_OVERLAP_PARTS` segments that do not overlap
//! each other (all with the run's precedence), so the next pass leaves them alone.
//!
//! Publishing (each step durable before the next):
//! 1. the merged segments: temp file → fsync → rename → fsync dir;
//! 2. the manifest without the inputs and with the outputs (atomic replace);
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
use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use tokio::sync::oneshot;

use crate::buffer::Snapshot;
use crate::config::EngineConfig;
use crate::decimal;
use crate::error::{Error, Result};
use crate::flush::segment_rel_path;
use crate::manifest::{Manifest, SegmentMeta};
use crate::merge::{MergeStats, merge_segments};
use crate::metrics::{EngineMetrics, inc};
use crate::segment::{SegmentOptions, SegmentWriter, stored_schema_of_file};
use crate::writer::time_column;

/// Rows read from each input at a time by the streaming merge.
const MERGE_BATCH_ROWS: usize = 16 * 1024;
/// Rows a merge reads ahead over all its inputs together (each input gets its share, at
/// least 1024), so the rows in flight do not grow with the fan-in. Measured on a 42-file
/// merge of 16 MiB flush segments: ~90 MiB above idle with 128 Ki rows, ~80 with 16 Ki
/// (and 30 % slower): most of a merge's memory is the inputs' decoded pages, not rows.
const MERGE_ROWS_IN_FLIGHT: usize = 128 * 1024;
/// Most segments merged at once (bounds the merge's memory and open files). 16 did not
/// lower the peak of that merge and rewrote 2.3× as many rows.
const MAX_RUN_FILES: usize = 64;
/// Most outputs of one merge of overlapping segments (each is a Parquet writer holding
/// up to a row group in memory), so such a merge takes at most this × `max_rows` rows.
const MAX_OVERLAP_PARTS: u64 = 4;

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
    /// zstd level of merged segments. Default 7: merged data is what stays on disk, and
    /// the merge runs in the background, so it may spend more CPU than a flush
    /// (settled bytes per field value −7 % against level 3, benches/segment_sweep.py).
    pub zstd_level: i32,
    /// A partition with no flush into it for this long merges any run of two or more
    /// small segments; `None` = only runs of `min_files`. Default 1 hour.
    pub cold_after: Option<Duration>,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            interval: Some(Duration::from_secs(60)),
            min_files: 8,
            target_bytes: 256 << 20,
            max_rows: 8 << 20,
            zstd_level: 7,
            cold_after: Some(Duration::from_secs(3600)),
        }
    }
}

/// Requests to the compaction thread.
#[derive(Debug)]
pub(crate) enum CompactRequest {
    /// Compact until nothing qualifies; answer with the number of merges.
    Now(oneshot::Sender<Result<usize>>),
    /// A flush published segments: a partition may have gathered enough small ones.
    Flushed,
    Stop,
}

pub(crate) struct Compactor {
    pub cfg: EngineConfig,
    pub manifest: Arc<Mutex<Manifest>>,
    pub state: Arc<ArcSwap<Snapshot>>,
    /// Set by a crash-like halt and at the start of a shutdown: a merge in progress is
    /// dropped (nothing published), so that stopping never waits for one.
    pub halt: Arc<AtomicBool>,
    pub metrics: Arc<EngineMetrics>,
    /// Replaced segments waiting until no snapshot holds them.
    pub graveyard: Vec<Arc<SegmentMeta>>,
    pub quiet: Quiet,
}

/// When each partition last got a flush (as far as this process has seen).
#[derive(Debug)]
pub(crate) struct Quiet {
    started: Instant,
    /// (db, table, partition) → (its highest precedence, when that was first seen).
    newest: std::collections::HashMap<(String, String, i64), (u64, Instant)>,
    /// The soonest moment a partition with a run of small segments turns quiet.
    next: Option<Instant>,
}

impl Default for Quiet {
    fn default() -> Self {
        Quiet {
            started: Instant::now(),
            newest: Default::default(),
            next: None,
        }
    }
}

impl Quiet {
    /// Since when the partition `key`, whose highest precedence is `newest`, has been
    /// quiet.
    fn since(&mut self, key: (&str, &str, i64), newest: u64, now: Instant) -> Instant {
        let started = self.started;
        let e = self
            .newest
            .entry((key.0.to_string(), key.1.to_string(), key.2))
            // first seen: it has been quiet at least since startup
            .or_insert((newest, started));
        if e.0 != newest {
            *e = (newest, now);
        }
        e.1
    }
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
        // the first pass comes soon after startup: the flush at the last shutdown often
        // left small or overlapping segments that every query would otherwise merge
        let mut next_wait = wait.min(Duration::from_secs(5));
        loop {
            // A pass runs on the timer and after every flush (with small flushes under
            // heavy ingest, partitions gather small segments much faster than the timer
            // comes round); a pass over nothing worth merging costs a scan of the list.
            let req = match rx.recv_timeout(std::mem::replace(&mut next_wait, wait)) {
                Ok(CompactRequest::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(CompactRequest::Now(resp)) => Some(resp),
                Ok(CompactRequest::Flushed) | Err(RecvTimeoutError::Timeout) => None,
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
            // come back when the next partition turns quiet, if before the timer
            if let Some(at) = self.quiet.next.take() {
                next_wait = wait.min(at.saturating_duration_since(Instant::now()));
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

    /// The first run worth merging: adjacent small segments of one partition, at least
    /// `min_files` of them, or two in a quiet partition.
    fn pick(&mut self) -> Option<Vec<Arc<SegmentMeta>>> {
        let c = &self.cfg.compaction;
        let snap = self.state.load();
        let mut parts: BTreeMap<(&str, &str, i64), Vec<&Arc<SegmentMeta>>> = BTreeMap::new();
        for s in snap.segments.iter() {
            parts
                .entry((s.db.as_str(), s.table.as_str(), s.partition))
                .or_default()
                .push(s);
        }
        let now = Instant::now();
        self.quiet
            .newest
            .retain(|k, _| parts.contains_key(&(k.0.as_str(), k.1.as_str(), k.2)));
        self.quiet.next = None;
        for (key, mut segs) in parts {
            let newest = segs.iter().map(|s| s.precedence()).max().unwrap_or(0);
            let since = self.quiet.since(key, newest, now);
            let min_files = match c.cold_after {
                Some(d) if now >= since + d => 2,
                Some(d) => {
                    let small = segs.iter().filter(|s| s.bytes < c.target_bytes).count();
                    if small >= 2 {
                        let at = since + d;
                        self.quiet.next = Some(self.quiet.next.map_or(at, |n| n.min(at)));
                    }
                    c.min_files.max(2)
                }
                None => c.min_files.max(2),
            };
            segs.sort_by_key(|s| s.precedence());
            // maximal runs of adjacent small segments
            for run in segs.split(|s| s.bytes >= c.target_bytes) {
                if let Some(w) = overlapping_window(run, c.max_rows) {
                    return Some(w);
                }
                let mut sub: Vec<Arc<SegmentMeta>> = Vec::new();
                let mut rows = 0;
                for s in run {
                    if !sub.is_empty() && (rows + s.rows > c.max_rows || sub.len() >= MAX_RUN_FILES)
                    {
                        if sub.len() >= min_files {
                            return Some(sub);
                        }
                        sub.clear();
                        rows = 0;
                    }
                    rows += s.rows;
                    sub.push(Arc::clone(s));
                }
                if sub.len() >= min_files {
                    return Some(sub);
                }
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
        // an overlapping run may hold more than `max_rows`: its output is cut by time
        // into parts that do not overlap each other
        let rows_in: u64 = run.iter().map(|s| s.rows).sum();
        let parts = rows_in
            .div_ceil(self.cfg.compaction.max_rows.max(1))
            .clamp(1, MAX_OVERLAP_PARTS) as usize;
        let lo = run.iter().map(|s| s.min_time).min().unwrap_or(0);
        let hi = run.iter().map(|s| s.max_time).max().unwrap_or(0);
        let ids = {
            let mut m = self.manifest.lock().map_err(|_| poisoned())?;
            let first = m.next_segment_id;
            m.next_segment_id += parts as u64;
            first..first + parts as u64
        };
        let started = Instant::now();
        let mut outs: Vec<Output> = ids
            .map(|id| {
                let rel = segment_rel_path(&db, &table, partition, id);
                let path = self.cfg.data_dir.join(&rel);
                Output {
                    id,
                    rel,
                    path,
                    writer: None,
                    rows: 0,
                    min_time: i64::MAX,
                    max_time: i64::MIN,
                }
            })
            .collect();
        let cut = TimeCut::new(lo, hi, parts);
        let opts = SegmentOptions {
            zstd_level: self.cfg.compaction.zstd_level,
            ..self.cfg.segment
        };
        let result = (|| -> Result<Option<MergeStats>> {
            // float columns stay decimals, integers narrow, where every input stores them so
            let storage = if opts.packing().any() {
                let inputs = run
                    .iter()
                    .map(|s| stored_schema_of_file(&self.cfg.data_dir.join(&s.path)))
                    .collect::<Result<Vec<_>>>()?;
                decimal::merged_storage_schema(&schema, &inputs, opts.packing())
            } else {
                Arc::clone(&schema)
            };
            for o in &mut outs {
                o.writer = Some(SegmentWriter::create(&o.path, &storage, &opts)?);
            }
            // rows in flight stay about the same whatever the fan-in
            let batch_rows = (MERGE_ROWS_IN_FLIGHT / run.len()).clamp(1024, MERGE_BATCH_ROWS);
            merge_segments(
                &self.cfg.data_dir,
                &run,
                &schema,
                &mut |b| cut.route(b, &mut outs),
                batch_rows,
                &self.halt,
            )
        })();
        let remove_all = |outs: &[Output]| {
            for o in outs {
                let _ = std::fs::remove_file(&o.path);
                let _ = std::fs::remove_file(crate::fsutil::tmp_path(&o.path));
            }
        };
        let stats = match result {
            Ok(Some(stats)) => stats,
            Ok(None) => {
                // halted mid-merge: nothing was published
                outs.iter_mut().for_each(|o| o.writer = None);
                remove_all(&outs);
                return Ok(());
            }
            Err(e) => {
                outs.iter_mut().for_each(|o| o.writer = None);
                remove_all(&outs);
                return Err(e);
            }
        };
        let mut published: Vec<SegmentMeta> = Vec::with_capacity(outs.len());
        for o in &mut outs {
            let Some(w) = o.writer.take() else { continue };
            if o.rows == 0 {
                drop(w); // nothing fell in this part of the range
                let _ = std::fs::remove_file(crate::fsutil::tmp_path(&o.path));
                continue;
            }
            let bytes = match w.finish() {
                Ok(b) => b,
                Err(e) => {
                    remove_all(&outs);
                    return Err(e);
                }
            };
            published.push(SegmentMeta {
                id: o.id,
                db: db.clone(),
                table: table.clone(),
                partition,
                path: o.rel.clone(),
                min_time: o.min_time,
                max_time: o.max_time,
                rows: o.rows,
                bytes,
                seq: Some(run.iter().map(|s| s.precedence()).max().unwrap_or(o.id)),
            });
        }
        if self.halt.load(Ordering::Acquire) {
            return Ok(()); // a crash here leaves the outputs as orphans
        }
        let out_bytes: u64 = published.iter().map(|s| s.bytes).sum();
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
                // an input vanished meanwhile (retention): drop the outputs, try later
                drop(m);
                remove_all(&outs);
                return Ok(());
            }
            next.segments.retain(|s| !input_ids.contains(&s.id));
            next.segments.extend(published.iter().cloned());
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
            let published: Vec<Arc<SegmentMeta>> = published.into_iter().map(Arc::new).collect();
            self.state.rcu(|old| {
                let mut segments: Vec<Arc<SegmentMeta>> = old
                    .segments
                    .iter()
                    .filter(|s| !input_ids.contains(&s.id))
                    .cloned()
                    .collect();
                segments.extend(published.iter().cloned());
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
            outputs = parts,
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

/// Segments of one partition whose time ranges overlap cost every query over them a
/// merge at read time (one thread, `query/src/dedup.rs`), so they are merged whatever
/// their number: the window of adjacent segments (in precedence order) from the first
/// one that a later one overlaps, through the last one that overlaps the window's time
/// range so far, within `MAX_RUN_FILES` files and `MAX_OVERLAP_PARTS × max_rows` rows.
/// `None` if no overlap fits.
fn overlapping_window(run: &[&Arc<SegmentMeta>], max_rows: u64) -> Option<Vec<Arc<SegmentMeta>>> {
    let budget = max_rows.max(1).saturating_mul(MAX_OVERLAP_PARTS);
    for (i, a) in run.iter().enumerate() {
        let (mut lo, mut hi, mut rows) = (a.min_time, a.max_time, a.rows);
        let mut end = i;
        for (j, b) in run.iter().enumerate().take(i + MAX_RUN_FILES).skip(i + 1) {
            rows = rows.saturating_add(b.rows);
            if rows > budget {
                break;
            }
            if b.min_time <= hi && lo <= b.max_time {
                end = j;
            }
            lo = lo.min(b.min_time);
            hi = hi.max(b.max_time);
        }
        if end > i {
            return Some(run[i..=end].iter().map(|s| Arc::clone(s)).collect());
        }
    }
    None
}

/// One output of a merge: a part of the run's time range.
struct Output {
    id: u64,
    rel: String,
    path: PathBuf,
    writer: Option<SegmentWriter>,
    rows: u64,
    min_time: i64,
    max_time: i64,
}

/// Equal cuts of `[lo, hi]` into `parts`; rows go to the part their time falls in.
struct TimeCut {
    lo: i64,
    width: i128,
    parts: usize,
}

impl TimeCut {
    fn new(lo: i64, hi: i64, parts: usize) -> Self {
        let span = i128::from(hi) - i128::from(lo) + 1;
        TimeCut {
            lo,
            width: (span / parts.max(1) as i128).max(1) + 1,
            parts: parts.max(1),
        }
    }

    fn part_of(&self, t: i64) -> usize {
        let p = (i128::from(t) - i128::from(self.lo)).max(0) / self.width;
        (p as usize).min(self.parts - 1)
    }

    /// Write the rows of `b` (sorted by series then time) to their parts, keeping order.
    fn route(&self, b: &RecordBatch, outs: &mut [Output]) -> Result<()> {
        let time = time_column(b)?;
        let mut idx: Vec<Vec<u32>> = vec![Vec::new(); self.parts];
        // (min, max) time of each part's rows, found while routing them
        let mut ranges = vec![(i64::MAX, i64::MIN); self.parts];
        for (i, &t) in time.values().iter().enumerate() {
            let p = self.part_of(t);
            if self.parts > 1 {
                idx[p].push(i as u32);
            }
            ranges[p] = (ranges[p].0.min(t), ranges[p].1.max(t));
        }
        if self.parts == 1 {
            idx[0] = (0..b.num_rows() as u32).collect();
        }
        for ((o, rows), (lo, hi)) in outs.iter_mut().zip(idx).zip(ranges) {
            if rows.is_empty() {
                continue;
            }
            let part = if rows.len() == b.num_rows() {
                b.clone()
            } else {
                let rows = UInt32Array::from(rows);
                let cols = b
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &rows, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                RecordBatch::try_new(b.schema(), cols)?
            };
            o.min_time = o.min_time.min(lo);
            o.max_time = o.max_time.max(hi);
            o.rows += part.num_rows() as u64;
            o.writer
                .as_mut()
                .ok_or_else(|| Error::Internal("merge output already closed".into()))?
                .write(&part)?;
        }
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
