//! Durable write throughput through WAL (group commit) + buffer, on the sensor workload.
//!
//! Run: `cargo bench --bench engine_write`
//! Compares, in one run: talo with fsync, talo without fsync, and the disk's own
//! ceiling for the same bytes (append the WAL records + fdatasync, no engine).

#[path = "workload.rs"]
mod workload;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use talo_engine::{Catalog, Engine, EngineConfig, WalSync, WriteBatch};
use workload::{FIELDS_PER_ROW, Workload};

const SENSORS: usize = 10_000;
const WRITERS: usize = 4;
const BATCHES_PER_ITER: usize = 8;

fn batches(n: usize) -> Vec<WriteBatch> {
    let mut w = Workload::new(SENSORS, 42);
    let catalog = Arc::new(Catalog::new());
    (0..n)
        .map(|_| w.batch("bench", Arc::clone(&catalog)))
        .collect()
}

fn run_engine(sync: WalSync, iters: u64, pool: &[WriteBatch]) -> Duration {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let engine = Engine::open(EngineConfig {
        data_dir: dir.path().to_path_buf(),
        wal_sync: sync,
        flush_bytes: 8 << 30,
        max_buffer_bytes: 16 << 30,
        ..EngineConfig::default()
    })
    .expect("open");
    let total = iters as usize * BATCHES_PER_ITER;
    let start = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let engine = Arc::clone(&engine);
            s.spawn(move || {
                let mut i = w;
                while i < total {
                    let out = engine
                        .write_blocking(pool[i % pool.len()].clone())
                        .expect("write");
                    assert_eq!(out.rows_written, SENSORS);
                    i += WRITERS;
                }
            });
        }
    });
    let elapsed = start.elapsed();
    engine.halt();
    elapsed
}

/// The disk's ceiling: the same WAL bytes appended in the same group sizes with
/// fdatasync, no validation, no buffer.
fn run_raw(iters: u64, records: &[Vec<u8>]) -> Duration {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("raw.wal")).expect("create");
    let total = iters as usize * BATCHES_PER_ITER;
    let start = Instant::now();
    let mut i = 0;
    while i < total {
        // one group = one record per writer
        let mut group = Vec::new();
        for _ in 0..WRITERS.min(total - i) {
            group.extend_from_slice(&records[i % records.len()]);
            i += 1;
        }
        f.write_all(&group).expect("write");
        f.sync_data().expect("fsync");
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let pool = batches(32);
    let records: Vec<Vec<u8>> = pool
        .iter()
        .map(|b| {
            let ipc = talo_engine::wal::encode_ipc(&b.tables[0].batch).expect("ipc");
            let mut rec = Vec::new();
            talo_engine::wal::encode_record(&mut rec, 1, "bench", &[("env", &ipc)]);
            rec
        })
        .collect();
    let mut g = c.benchmark_group("durable_write");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Elements(
        (BATCHES_PER_ITER * SENSORS * FIELDS_PER_ROW) as u64,
    ));
    g.bench_function("talo_fsync", |b| {
        b.iter_custom(|iters| run_engine(WalSync::Fsync, iters, &pool))
    });
    g.bench_function("talo_no_fsync", |b| {
        b.iter_custom(|iters| run_engine(WalSync::None, iters, &pool))
    });
    g.bench_function("disk_ceiling_append_fdatasync", |b| {
        b.iter_custom(|iters| run_raw(iters, &records))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
