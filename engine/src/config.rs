//! Engine configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::segment::SegmentOptions;
use crate::wal::WalSync;

/// How the engine stores and flushes data.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Directory holding WAL, segments, manifest and catalog. Default `./talo-data`.
    pub data_dir: PathBuf,
    /// fsync WAL groups before acknowledging. Default [`WalSync::Fsync`].
    pub wal_sync: WalSync,
    /// How long the writer waits for more writes to join a group after the first one
    /// arrives (writes that arrive during an fsync always join the next group).
    /// Default 1 ms.
    pub group_commit_window: Duration,
    /// Upper bound of one WAL group in bytes. Default 16 MiB.
    pub max_group_bytes: usize,
    /// Flush the buffer when its oldest row is this old. Default 10 min.
    pub flush_interval: Duration,
    /// Flush the buffer when it holds this many bytes. Default 16 MiB: peak memory
    /// grows about 3× this (active + frozen generation + the flush's concatenation),
    /// and larger flushes did not ingest faster (benches/buffer_sweep.py).
    pub flush_bytes: usize,
    /// Writers wait (acks are delayed) while buffered data exceeds this. Default 128 MiB.
    pub max_buffer_bytes: usize,
    /// Width of a time partition in segments. Default one day.
    pub partition: Duration,
    /// Parquet encoding options. Default zstd level 3, 256 Ki rows per row group.
    pub segment: SegmentOptions,
    /// Background merging of small segments.
    pub compaction: crate::compact::CompactionConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./talo-data"),
            wal_sync: WalSync::Fsync,
            group_commit_window: Duration::from_millis(1),
            max_group_bytes: 16 << 20,
            flush_interval: Duration::from_secs(600),
            flush_bytes: 16 << 20,
            max_buffer_bytes: 128 << 20,
            partition: Duration::from_secs(86_400),
            segment: SegmentOptions::default(),
            compaction: Default::default(),
        }
    }
}

impl EngineConfig {
    /// Check the values make sense together.
    pub fn validate(&self) -> Result<()> {
        if self.partition.as_secs() == 0 || self.partition.as_nanos() > i64::MAX as u128 {
            return Err(Error::Config(
                "partition must be at least one second".into(),
            ));
        }
        if self.flush_bytes == 0 || self.max_buffer_bytes < self.flush_bytes {
            return Err(Error::Config(format!(
                "max buffer ({} bytes) must be at least the flush size ({} bytes), which must be > 0",
                self.max_buffer_bytes, self.flush_bytes
            )));
        }
        if self.flush_interval.is_zero() {
            return Err(Error::Config("flush interval must be > 0".into()));
        }
        if !(1..=22).contains(&self.segment.zstd_level)
            || !(1..=22).contains(&self.compaction.zstd_level)
        {
            return Err(Error::Config("zstd level must be within 1..=22".into()));
        }
        if self.segment.row_group_rows == 0 || self.segment.page_rows == 0 {
            return Err(Error::Config(
                "row group and page sizes must be > 0 rows".into(),
            ));
        }
        if self.compaction.min_files < 2 || self.compaction.max_rows == 0 {
            return Err(Error::Config(
                "compaction needs min files >= 2 and max rows > 0".into(),
            ));
        }
        if self.compaction.interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config("compaction interval must be > 0".into()));
        }
        if self.compaction.cold_after.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config(
                "compaction cold-after must be > 0 (or off)".into(),
            ));
        }
        if self.max_group_bytes == 0 {
            return Err(Error::Config("max group bytes must be > 0".into()));
        }
        Ok(())
    }

    /// Partition width in nanoseconds.
    pub fn partition_nanos(&self) -> i64 {
        self.partition.as_nanos() as i64
    }
}
