//! zstd contexts do not ask the CPU for its features again (`build/zstd/cpuid_once.h`).
//!
//! Every Parquet column chunk written or read creates zstd contexts; each context ran
//! `cpuid` three times, a VM exit under a hypervisor (3.7 us each on the benchmark
//! machine). With the header the answer is asked once and kept. The check: Linux can
//! make `cpuid` fault for one thread (`arch_prctl(ARCH_SET_CPUID, 0)`, where the CPU
//! supports it); a child process round-trips Parquet files through zstd once, turns
//! `cpuid` off, and round-trips again. A `cpuid` then kills it with SIGSEGV.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::process::Command;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// `arch_prctl` code that turns `cpuid` on (1) or off (0) for the calling thread.
const ARCH_SET_CPUID: libc::c_int = 0x1012;
/// Set in the child's environment.
const CHILD: &str = "TALO_ZSTD_CPUID_CHILD";
const DONE: &str = "round trips under cpuid faulting: ok";
const UNSUPPORTED: &str = "cpuid faulting not supported here";
const NAME: &str = "zstd_contexts_are_created_without_cpuid";

/// Write `columns` zstd-compressed columns of `rows` rows to Parquet and read them back:
/// the sum of the values read.
fn round_trip(columns: usize, rows: i64) -> f64 {
    let fields: Vec<Field> = (0..columns)
        .map(|i| Field::new(format!("c{i}"), DataType::Float64, false))
        .chain([Field::new("t", DataType::Int64, false)])
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let mut arrays: Vec<Arc<dyn Array>> = (0..columns)
        .map(|i| {
            let v = (0..rows).map(|r| (r * (i as i64 + 1)) as f64 / 10.0);
            Arc::new(Float64Array::from_iter_values(v)) as Arc<dyn Array>
        })
        .collect();
    arrays.push(Arc::new(Int64Array::from_iter_values(0..rows)));
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
        .set_max_row_group_row_count(Some(1_000))
        .build();
    let mut file = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut file, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(file))
        .unwrap()
        .build()
        .unwrap();
    let mut sum = 0.0;
    for b in reader {
        let b = b.unwrap();
        for c in 0..columns {
            let a = b.column(c).as_any().downcast_ref::<Float64Array>().unwrap();
            sum += a.values().iter().sum::<f64>();
        }
    }
    sum
}

fn set_cpuid(on: bool) -> std::io::Result<()> {
    // SAFETY: arch_prctl with ARCH_SET_CPUID takes an integer and touches no memory
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, on as libc::c_ulong) };
    match r {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// In the child: round trips with `cpuid` faulting.
fn child() {
    // the first context of each of zstd's callers asks the CPU
    let expected = round_trip(3, 5_000);
    if let Err(e) = set_cpuid(false) {
        println!("{UNSUPPORTED}: {e}");
        return;
    }
    // 3 value columns + time, 5 row groups: 20 column chunks written and 20 read, each
    // with a compression and a decompression context
    let got = round_trip(3, 5_000);
    set_cpuid(true).unwrap();
    assert_eq!(got, expected);
    println!("{DONE}");
}

#[test]
fn zstd_contexts_are_created_without_cpuid() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains(UNSUPPORTED) {
        // a CPU or kernel without cpuid faulting cannot tell; the machines this project
        // is tested on can (`cpuid_fault` in /proc/cpuinfo)
        eprintln!("not checked: {UNSUPPORTED}");
        return;
    }
    assert!(
        out.status.success() && stdout.contains(DONE),
        "a zstd context ran cpuid (the child died: {:?}); was zstd built with \
         build/zstd/cpuid_once.h (.cargo/config.toml)?\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
}
