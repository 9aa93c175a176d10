//! Flush throughput (sort + dedup + Parquet encode + fsync) and bytes per field value,
//! on the sensor workload, against pyarrow's default zstd writer on the same rows.
//!
//! Run: `cargo bench --bench flush` (set `TALO_BENCH_PYTHON` to a Python with pyarrow
//! for the comparison; `scripts/test.sh` creates `.venv/bin/python`).

#[path = "workload.rs"]
mod workload;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use talo_engine::Catalog;
use talo_engine::buffer::{Chunk, concat_chunks};
use talo_engine::segment::{SegmentOptions, sort_dedup, write_parquet};
use workload::{FIELDS_PER_ROW, Workload};

const SENSORS: usize = 1_000;
const STEPS: usize = 1_000;

/// `sensors × steps` rows in arrival order (time-major), as the buffer holds them.
fn arrival_batch(sensors: usize, steps: usize) -> RecordBatch {
    let mut w = Workload::new(sensors, 7);
    let catalog = Arc::new(Catalog::new());
    let mut chunks = Vec::new();
    for _ in 0..steps {
        let b = w
            .batch("bench", Arc::clone(&catalog))
            .tables
            .remove(0)
            .batch;
        chunks.push(Chunk {
            batch: b,
            min_time: 0,
            max_time: 0,
        });
    }
    let schema = chunks[0].batch.schema();
    concat_chunks(&chunks, &schema).expect("concat")
}

fn pyarrow_bytes(sorted: &RecordBatch, dir: &Path) -> Option<u64> {
    let python = std::env::var("TALO_BENCH_PYTHON").ok().or_else(|| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
        p.exists().then(|| p.to_string_lossy().into_owned())
    })?;
    let ipc = dir.join("rows.arrow");
    {
        let f = std::fs::File::create(&ipc).ok()?;
        let mut w = arrow::ipc::writer::FileWriter::try_new(f, &sorted.schema()).ok()?;
        w.write(sorted).ok()?;
        w.finish().ok()?;
    }
    let out = dir.join("pyarrow.parquet");
    let script = format!(
        "import pyarrow as pa, pyarrow.parquet as pq\n\
         t = pa.ipc.open_file({:?}).read_all()\n\
         pq.write_table(t, {:?}, compression='zstd')\n",
        ipc.display().to_string(),
        out.display().to_string()
    );
    let ok = std::process::Command::new(python)
        .args(["-c", &script])
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    std::fs::metadata(&out).ok().map(|m| m.len())
}

fn compare_size(sensors: usize, steps: usize, dir: &Path, opts: &SegmentOptions) {
    let batch = arrival_batch(sensors, steps);
    let rows = batch.num_rows();
    let sorted = sort_dedup(&batch).expect("sort");
    let path = dir.join(format!("size-{sensors}.parquet"));
    let talo_bytes = write_parquet(&path, &sorted, opts).expect("write");
    let doubles = SegmentOptions {
        decimal_floats: false,
        ..*opts
    };
    let double_bytes = write_parquet(&path, &sorted, &doubles).expect("write");
    let wide = SegmentOptions {
        narrow_integers: false,
        ..*opts
    };
    let wide_bytes = write_parquet(&path, &sorted, &wide).expect("write");
    let values = (rows * FIELDS_PER_ROW) as f64;
    let py = pyarrow_bytes(&sorted, dir);
    eprintln!(
        "bytes per field value, {sensors} series x {steps} readings: talo {:.3} (floats as doubles: {:.3}, integers in 64 bits: {:.3}), pyarrow zstd {}",
        talo_bytes as f64 / values,
        double_bytes as f64 / values,
        wide_bytes as f64 / values,
        py.map(|p| format!(
            "{:.3} (talo/pyarrow = {:.2})",
            p as f64 / values,
            talo_bytes as f64 / p as f64
        ))
        .unwrap_or_else(|| "skipped (no Python with pyarrow: TALO_BENCH_PYTHON)".into())
    );
}

fn bench(c: &mut Criterion) {
    let batch = arrival_batch(SENSORS, STEPS);
    let rows = batch.num_rows();
    let input_bytes = batch.get_array_memory_size() as u64;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let opts = SegmentOptions::default();

    let t0 = std::time::Instant::now();
    let sorted = sort_dedup(&batch).expect("sort");
    let sort_time = t0.elapsed();
    let t0 = std::time::Instant::now();
    write_parquet(&dir.path().join("talo.parquet"), &sorted, &opts).expect("write");
    eprintln!(
        "one flush of {rows} rows: sort+dedup {sort_time:?}, encode+fsync {:?}",
        t0.elapsed()
    );
    for (sensors, steps) in [(1_000, 1_000), (10_000, 100), (100_000, 10)] {
        compare_size(sensors, steps, dir.path(), &opts);
    }

    let mut g = c.benchmark_group("flush");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(input_bytes));
    let mut n = 0u64;
    // the default (short-decimal floats stored as scaled integers) and every float as a
    // double, in one run
    let doubles = SegmentOptions {
        decimal_floats: false,
        ..opts
    };
    for (name, o) in [
        ("sort_dedup_encode_fsync_1M_rows", &opts),
        (
            "sort_dedup_encode_fsync_1M_rows_floats_as_doubles",
            &doubles,
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let sorted = sort_dedup(&batch).expect("sort");
                let path = dir.path().join(format!("s{n}.parquet"));
                write_parquet(&path, &sorted, o).expect("write");
                let _ = std::fs::remove_file(path);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
