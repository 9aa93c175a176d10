use std::sync::Arc;

use super::*;
use crate::batch::BatchBuilder;
use crate::catalog::Catalog;
use crate::model::FieldValue;

fn sample_batch(n: usize, base: i64) -> RecordBatch {
    let mut b = BatchBuilder::new("db", Arc::new(Catalog::new())).unwrap();
    for i in 0..n {
        let room = format!("r{}", i % 3);
        b.push_row(
            "env",
            &[("room", room.as_str())],
            &[
                ("t", FieldValue::F64(20.0 + i as f64 / 10.0)),
                ("n", FieldValue::I64(i as i64)),
            ],
            base + i as i64,
            i as u32,
        )
        .unwrap();
    }
    b.finish().unwrap().tables.remove(0).batch
}

/// Writes `records` records to a fresh WAL file and returns (path, file bytes, the
/// end offset of each record).
fn build_file(dir: &Path, records: usize) -> (PathBuf, Vec<u8>, Vec<usize>) {
    let mut w = WalWriter::create(dir, 1, WalSync::Fsync).unwrap();
    let mut ends = Vec::new();
    for r in 0..records {
        let ipc = encode_ipc(&sample_batch(3 + r, r as i64 * 100)).unwrap();
        let mut buf = Vec::new();
        encode_record(&mut buf, r as u64 + 1, "db", &[("env", &ipc)]);
        w.append(&buf).unwrap();
        ends.push(w.len() as usize);
    }
    let path = wal_path(dir, 1);
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes, ends)
}

#[test]
fn roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, ends) = build_file(dir.path(), 4);
    let c = read_wal_file(&path).unwrap();
    assert_eq!(c.records.len(), 4);
    assert_eq!(c.good_len as usize, *ends.last().unwrap());
    assert!(c.cut_reason.is_none());
    for (i, r) in c.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.db, "db");
        assert_eq!(r.tables[0].1, sample_batch(3 + i, i as i64 * 100));
    }
}

#[test]
fn truncation_at_every_offset_yields_the_good_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, ends) = build_file(dir.path(), 3);
    for cut in 0..bytes.len() {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let c = read_wal_file(&path).unwrap();
        let expect = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(c.records.len(), expect, "cut at {cut}");
        let good = if cut < HEADER_LEN {
            0
        } else {
            ends.iter()
                .copied()
                .filter(|&e| e <= cut)
                .max()
                .unwrap_or(HEADER_LEN)
        };
        assert_eq!(c.good_len as usize, good, "cut at {cut}");
        for (i, r) in c.records.iter().enumerate() {
            assert_eq!(r.tables[0].1, sample_batch(3 + i, i as i64 * 100));
        }
    }
}

#[test]
fn bit_flips_never_panic_and_keep_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, ends) = build_file(dir.path(), 3);
    // deterministic pseudo-random positions, plus every byte of the first record header
    let mut positions: Vec<usize> = (HEADER_LEN..HEADER_LEN + 8).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..400 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        positions.push((x % bytes.len() as u64) as usize);
    }
    for pos in positions {
        for bit in [0u8, 3, 7] {
            let mut b = bytes.clone();
            b[pos] ^= 1 << bit;
            std::fs::write(&path, &b).unwrap();
            let c = read_wal_file(&path).unwrap();
            // records wholly before the flipped byte survive; the damaged one and all
            // after it are cut
            if (12..HEADER_LEN).contains(&pos) {
                // reserved header bytes are not interpreted
                assert_eq!(c.records.len(), ends.len());
                continue;
            }
            let intact = if pos < HEADER_LEN {
                0
            } else {
                ends.iter().filter(|&&e| e <= pos).count()
            };
            assert_eq!(c.records.len(), intact, "flip at {pos} bit {bit}");
            assert!(c.cut_reason.is_some());
            for (i, r) in c.records.iter().enumerate() {
                assert_eq!(r.tables[0].1, sample_batch(3 + i, i as i64 * 100));
            }
        }
    }
}

#[test]
fn failed_append_leaves_no_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = WalWriter::create(dir.path(), 7, WalSync::Fsync).unwrap();
    let ipc = encode_ipc(&sample_batch(2, 0)).unwrap();
    let mut rec = Vec::new();
    encode_record(&mut rec, 1, "db", &[("env", &ipc)]);
    w.append(&rec).unwrap();
    let len = w.len();
    // simulate a short write by appending garbage behind the writer's back, then a
    // poisoned writer must cut it before the next append
    w.poisoned = true;
    std::fs::OpenOptions::new()
        .append(true)
        .open(wal_path(dir.path(), 7))
        .unwrap()
        .write_all(&rec[..10])
        .unwrap();
    w.append(&rec).unwrap();
    assert_eq!(w.len(), len + rec.len() as u64);
    let c = read_wal_file(&wal_path(dir.path(), 7)).unwrap();
    assert_eq!(c.records.len(), 2);
    assert!(c.cut_reason.is_none());
}
