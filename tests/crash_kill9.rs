//! kill -9 at random moments while clients write; after every restart each
//! acknowledged row is there exactly once. Flushes run often so that kills also land
//! in the middle of flushes. Finally the Parquet files are counted with pyarrow.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const ROUNDS: usize = 8;
const WRITERS: i64 = 4;
const BATCH: i64 = 50;

fn body(first: i64) -> Vec<u8> {
    let mut s = String::new();
    for id in first..first + BATCH {
        s.push_str(&format!(
            "env,room=r{} id={id}i,temp={} {}\n",
            id % 7,
            20.0 + (id % 13) as f64,
            1_764_028_800_000_000_000 + id * 1_000_000_000
        ));
    }
    s.into_bytes()
}

#[test]
fn kill_minus_nine_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let next = Arc::new(AtomicI64::new(0));
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D ^ std::process::id() as u64;
    let flags = ["--flush-interval", "150ms", "--wal-group-window", "0ms"];
    for round in 0..ROUNDS {
        let talo = Talo::start_ready(dir.path(), &flags);
        // every acknowledged row so far must be visible after the restart
        let url = talo.url("/api/v1/write?db=house");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..WRITERS {
            let (url, acked, next, stop) = (
                url.clone(),
                Arc::clone(&acked),
                Arc::clone(&next),
                Arc::clone(&stop),
            );
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let first = next.fetch_add(BATCH, Ordering::SeqCst);
                    match post(&url, &body(first)) {
                        Ok((204, _)) => acked.lock().unwrap().extend(first..first + BATCH),
                        Ok((status, text)) => panic!("unexpected answer {status}: {text}"),
                        Err(_) => return, // the server died mid-request: not acknowledged
                    }
                }
            }));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = Duration::from_millis(100 + rng % 500);
        let t0 = Instant::now();
        while t0.elapsed() < wait {
            std::thread::sleep(Duration::from_millis(5));
        }
        talo.kill9();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("writer thread");
        }
        eprintln!(
            "round {round}: {} rows acknowledged so far",
            acked.lock().unwrap().len()
        );
    }
    assert!(
        acked.lock().unwrap().len() > 1000,
        "too few writes got through to test anything"
    );

    // a last clean run: ready, then SIGTERM flushes everything to Parquet
    let talo = Talo::start_ready(dir.path(), &flags);
    assert!(talo.terminate(Duration::from_secs(60)).success());
    let v = py_json(
        "segments.py",
        &[dir.path().to_str().unwrap(), "house", "env"],
    );
    let ids: Vec<i64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let stored: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(stored.len(), ids.len(), "some rows are stored twice");
    let acked = acked.lock().unwrap();
    let lost: Vec<_> = acked.difference(&stored).take(10).collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    let sent = next.load(Ordering::SeqCst);
    assert!(
        stored.iter().all(|&id| id < sent),
        "rows stored that were never sent"
    );
    assert_eq!(v["duckdb_rows"].as_u64().unwrap() as usize, ids.len());
    eprintln!(
        "{} acknowledged, {} stored ({} files)",
        acked.len(),
        stored.len(),
        v["files"]
    );
}
