//! Crash at each step of a flush (failpoints), restart: every row exactly once, no
//! orphan files. Runs in its own test binary because failpoints are process-global.

mod common;

use common::*;
use talo_engine::manifest::Manifest;

const POINTS: &[&str] = &[
    "segment::before_fsync",
    "segment::before_rename",
    "flush::before_catalog",
    "flush::before_manifest",
    "flush::before_wal_delete",
];

fn manifest_paths(dir: &std::path::Path) -> Vec<String> {
    let mut p: Vec<String> = Manifest::load(dir)
        .unwrap()
        .segments
        .into_iter()
        .map(|s| s.path)
        .collect();
    p.sort();
    p
}

#[test]
fn crash_at_every_flush_step_keeps_every_row_once() {
    let scenario = fail::FailScenario::setup();
    for point in POINTS {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = open(dir.path());
            e.write_blocking(rows(&e, 0, 40)).unwrap();
            e.flush_blocking().unwrap();
            e.write_blocking(rows(&e, 40, 40)).unwrap();
            fail::cfg(*point, "return").unwrap();
            let res = e.flush_blocking();
            if *point == "flush::before_wal_delete" {
                assert!(res.is_ok(), "{point}: {res:?}");
            } else {
                assert!(res.is_err(), "{point}: flush should fail");
            }
            e.halt(); // crash
            fail::remove(*point);
        }
        let e = open(dir.path());
        assert_exactly_once(&e, 80);
        assert_eq!(
            parquet_files(dir.path()),
            manifest_paths(dir.path()),
            "{point}: orphan or missing files"
        );
        // and the next flush + restart is clean too
        e.write_blocking(rows(&e, 80, 10)).unwrap();
        e.flush_blocking().unwrap();
        e.halt();
        let e = open(dir.path());
        assert_exactly_once(&e, 90);
        assert_eq!(e.snapshot().buffered_rows(), 0, "{point}");
        assert_eq!(parquet_files(dir.path()), manifest_paths(dir.path()));
        e.halt();
    }
    scenario.teardown();
}

#[test]
fn torn_wal_tail_is_cut_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path());
        e.write_blocking(rows(&e, 0, 10)).unwrap();
        e.write_blocking(rows(&e, 10, 10)).unwrap();
        e.halt();
    }
    // tear the last record: cut 5 bytes off the only non-empty WAL file
    let wal = dir.path().join("wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let last = files
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 16)
        .unwrap()
        .clone();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let e = open(dir.path());
    assert_eq!(e.recovery_report().cut_tails.len(), 1);
    assert_eq!(
        e.metrics()
            .wal_tail_cuts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_exactly_once(&e, 10);
    // writing continues after the cut, and a second restart keeps both
    e.write_blocking(rows(&e, 10, 10)).unwrap();
    e.halt();
    let e = open(dir.path());
    assert!(e.recovery_report().cut_tails.is_empty());
    assert_exactly_once(&e, 20);
}
