//! Counters the engine keeps for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A Prometheus-style cumulative histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (same order as [`LATENCY_BUCKETS`]), count, sum (s).
    pub fn read(&self) -> (Vec<u64>, u64, f64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.count.load(Ordering::Relaxed),
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

/// Engine counters; all monotonic unless noted.
#[derive(Debug, Default)]
pub struct EngineMetrics {
    pub rows_written: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub write_errors: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub wal_fsync: Histogram,
    /// WAL tails cut at startup because they were torn or corrupt.
    pub wal_tail_cuts: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_errors: AtomicU64,
    pub flushed_rows: AtomicU64,
    /// Times a writer had to wait because the buffer was full.
    pub backpressure_waits: AtomicU64,
    /// Compaction merges done, segments they replaced, and failed attempts.
    pub compactions: AtomicU64,
    pub compacted_segments: AtomicU64,
    pub compaction_errors: AtomicU64,
    /// Rows read, bytes read and written, and time spent by compaction merges.
    pub compaction_rows_in: AtomicU64,
    pub compaction_bytes_in: AtomicU64,
    pub compaction_bytes_out: AtomicU64,
    pub compaction_nanos: AtomicU64,
    /// Segments deleted because their rows passed the retention.
    pub segments_expired: AtomicU64,
}

/// Add one to a counter.
pub fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
