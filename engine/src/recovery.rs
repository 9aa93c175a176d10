//! Startup: lock the data directory, load catalog and manifest, remove leftovers of
//! interrupted flushes, replay the WAL into the buffer, start the threads.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use arc_swap::ArcSwap;
use crossbeam_channel::bounded;

use crate::Engine;
use crate::buffer::Snapshot;
use crate::catalog::Catalog;
use crate::config::EngineConfig;
use crate::error::{Error, IoContext, Result};
use crate::flush::{Flusher, delete_wal_through};
use crate::fsutil::{self, TMP_SUFFIX};
use crate::manifest::Manifest;
use crate::metrics::{EngineMetrics, inc};
use crate::wal::{WalWriter, list_wal_files, read_wal_file, truncate_file, wal_path};
use crate::writer::Writer;

/// What startup found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// WAL files replayed.
    pub wal_files: usize,
    /// Rows replayed from the WAL into the buffer.
    pub rows_replayed: usize,
    /// WAL files whose torn or corrupt tail was cut, with the reason.
    pub cut_tails: Vec<String>,
    /// Files of interrupted flushes that were removed.
    pub removed_leftovers: usize,
    /// Segments in the manifest.
    pub segments: usize,
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(e).at(&path),
    }
}

/// Remove temp files anywhere below `dir` and Parquet files the manifest does not name.
fn remove_leftovers(
    dir: &Path,
    rel: &str,
    manifest_paths: &std::collections::HashSet<&str>,
) -> Result<usize> {
    let mut removed = 0;
    let here = if rel.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(rel)
    };
    let entries = match fs::read_dir(&here) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).at(&here),
    };
    for entry in entries {
        let entry = entry.at(&here)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let child_rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type().at(entry.path())?;
        if ft.is_dir() {
            removed += remove_leftovers(dir, &child_rel, manifest_paths)?;
        } else if name.ends_with(TMP_SUFFIX)
            || (name.ends_with(".parquet") && !manifest_paths.contains(child_rel.as_str()))
        {
            tracing::info!(file = %child_rel, "removing leftover of an interrupted flush");
            fs::remove_file(entry.path()).at(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

pub(crate) fn open(config: EngineConfig, queue: usize) -> Result<Arc<Engine>> {
    let dir = config.data_dir.clone();
    fsutil::create_dir_all_durably(&dir)?;
    let lock = lock_dir(&dir)?;
    let wal_dir = dir.join("wal");
    fsutil::create_dir_all_durably(&wal_dir)?;

    let mut report = RecoveryReport::default();
    let catalog = Catalog::load(&dir)?;
    let manifest = Manifest::load(&dir)?;
    report.segments = manifest.segments.len();

    // leftovers: temp files at the top level and below db/, unpublished segments
    let paths: std::collections::HashSet<&str> =
        manifest.segments.iter().map(|s| s.path.as_str()).collect();
    for entry in fs::read_dir(&dir).at(&dir)? {
        let entry = entry.at(&dir)?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            fs::remove_file(entry.path()).at(entry.path())?;
            report.removed_leftovers += 1;
        }
    }
    report.removed_leftovers += remove_leftovers(&dir, "db", &paths)?;

    let metrics = Arc::new(EngineMetrics::default());
    // ranges saved before earlier WAL deletions; the replay below marks the WAL's own
    let dirty = Arc::new(crate::dirty::DirtyRanges::load(&dir)?);
    let state = Arc::new(ArcSwap::from_pointee(Snapshot {
        catalog: Arc::new(catalog.clone()),
        generations: Vec::new(),
        segments: Arc::new(manifest.segments.iter().cloned().map(Arc::new).collect()),
        retention: Arc::new(crate::retention::RetentionRules::load(&dir)?),
    }));

    // WAL: drop what the manifest covers, replay the rest in order
    delete_wal_through(&wal_dir, manifest.wal_flushed_through);
    let ids = list_wal_files(&wal_dir)?;
    let next_id = ids
        .last()
        .copied()
        .unwrap_or(0)
        .max(manifest.wal_flushed_through)
        + 1;
    let wal = WalWriter::create(&wal_dir, next_id, config.wal_sync)?;

    let (flush_tx, flush_rx) = bounded(64);
    let (done_tx, done_rx) = bounded(64);
    let frozen_bytes = Arc::new(AtomicUsize::new(0));
    let halt = Arc::new(AtomicBool::new(false));
    let mut writer = Writer {
        cfg: config.clone(),
        state: Arc::clone(&state),
        wal,
        catalog: Arc::new(catalog),
        active: Default::default(),
        active_bytes: Default::default(),
        active_id: 1,
        active_since: None,
        seq: 0,
        flush_tx,
        flush_done_rx: done_rx,
        frozen_bytes: Arc::clone(&frozen_bytes),
        halt: Arc::clone(&halt),
        metrics: Arc::clone(&metrics),
        dirty: Arc::clone(&dirty),
    };
    for id in ids
        .into_iter()
        .filter(|&id| id > manifest.wal_flushed_through)
    {
        let path = wal_path(&wal_dir, id);
        let contents = read_wal_file(&path)?;
        if let Some(reason) = &contents.cut_reason
            && contents.good_len < contents.file_len
        {
            tracing::warn!(
                file = %path.display(),
                reason = %reason,
                kept = contents.good_len,
                cut = contents.file_len - contents.good_len,
                "WAL tail is torn or corrupt; cutting it at the last good record"
            );
            inc(&metrics.wal_tail_cuts, 1);
            report
                .cut_tails
                .push(format!("{}: {reason}", path.display()));
            if contents.good_len < crate::wal::HEADER_LEN as u64 {
                fs::remove_file(&path).at(&path)?;
            } else {
                truncate_file(&path, contents.good_len)?;
            }
        }
        report.wal_files += 1;
        if contents.records.is_empty() {
            // nothing to replay (e.g. the fresh file of a clean shutdown)
            if path.exists() {
                fs::remove_file(&path).at(&path)?;
            }
            continue;
        }
        for rec in contents.records {
            report.rows_replayed += writer.replay(rec.db, rec.tables, rec.seq)?;
        }
    }
    writer.publish();
    tracing::info!(
        wal_files = report.wal_files,
        rows = report.rows_replayed,
        segments = report.segments,
        "recovery complete"
    );

    let manifest = Arc::new(std::sync::Mutex::new(manifest));
    let compact_halt = Arc::new(AtomicBool::new(false));
    let compactor = crate::compact::Compactor {
        cfg: config.clone(),
        manifest: Arc::clone(&manifest),
        state: Arc::clone(&state),
        halt: Arc::clone(&compact_halt),
        metrics: Arc::clone(&metrics),
        graveyard: Vec::new(),
        quiet: crate::compact::Quiet::default(),
    };
    let (compact_tx, compact_rx) = bounded(16);
    let flusher = Flusher {
        cfg: config.clone(),
        manifest,
        state: Arc::clone(&state),
        frozen_bytes,
        done_tx,
        halt: Arc::clone(&halt),
        metrics: Arc::clone(&metrics),
        dirty: Arc::clone(&dirty),
        compact_tx: compact_tx.clone(),
    };
    let (tx, rx) = bounded(queue);
    let threads = vec![
        std::thread::Builder::new()
            .name("talo-flush".into())
            .spawn(move || flusher.run(flush_rx))
            .at(&dir)?,
        std::thread::Builder::new()
            .name("talo-wal".into())
            .spawn(move || writer.run(rx))
            .at(&dir)?,
        std::thread::Builder::new()
            .name("talo-compact".into())
            .spawn(move || compactor.run(compact_rx))
            .at(&dir)?,
    ];
    Ok(Arc::new(Engine {
        config,
        state,
        sender: tx,
        compact_tx,
        compact_halt,
        retention_lock: Mutex::new(()),
        metrics,
        threads: Mutex::new(threads),
        halt,
        closed: AtomicBool::new(false),
        recovery: report,
        lock: Mutex::new(Some(lock)),
        dirty,
    }))
}
