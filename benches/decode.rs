//! Parser and decoder throughput on the smart-building workload: line protocol (parse
//! only, and parse + columnar batch as the HTTP write path does), MQTT JSON and SenML
//! payloads (decode to rows).
//!
//! Run: `cargo bench --bench decode`

#[path = "workload.rs"]
mod workload;

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use talo_engine::{BatchBuilder, Catalog};
use talo_ingest::decode::{Format, decode};
use talo_ingest::{Precision, parse_lines, write_lines};
use workload::Workload;

const SENSORS: usize = 1_000;
const STEPS: usize = 10;

fn line_protocol(c: &mut Criterion) {
    let mut w = Workload::new(SENSORS, 3);
    let body: String = (0..STEPS).map(|_| w.line_protocol()).collect();
    let rows = (SENSORS * STEPS) as u64;
    let mut g = c.benchmark_group("line_protocol");
    g.throughput(Throughput::Elements(rows));
    g.bench_function("parse 10k lines", |b| {
        b.iter(|| {
            let n = parse_lines(body.as_bytes()).filter(|r| r.is_ok()).count();
            assert_eq!(n as u64, rows);
        })
    });
    let catalog = Arc::new(Catalog::new());
    g.bench_function("parse + batch 10k lines", |b| {
        b.iter(|| {
            let mut builder = BatchBuilder::new("bench", Arc::clone(&catalog)).unwrap();
            let errors = write_lines(body.as_bytes(), Precision::Nanoseconds, 0, &mut builder);
            assert!(errors.is_empty());
            builder.finish().unwrap()
        })
    });
    g.finish();
    println!("line protocol: {} bytes for {rows} rows", body.len());
}

fn payloads(c: &mut Criterion) {
    let mut w = Workload::new(SENSORS, 5);
    let json: Vec<String> = w.json_messages().into_iter().map(|(_, p)| p).collect();
    let senml: Vec<String> = w.senml_messages().into_iter().map(|(_, p)| p).collect();
    let mut g = c.benchmark_group("mqtt_payload");
    g.throughput(Throughput::Elements(SENSORS as u64));
    for (name, format, msgs) in [
        ("json", Format::Json, &json),
        ("senml", Format::Senml, &senml),
    ] {
        g.bench_function(format!("decode 1k {name} messages"), |b| {
            b.iter(|| {
                for m in msgs {
                    let rows = decode(format, m.as_bytes()).unwrap();
                    assert_eq!(rows.len(), 1);
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(30);
    targets = line_protocol, payloads
}
criterion_main!(benches);
