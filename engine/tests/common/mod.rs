//! Helpers shared by the engine's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, Int64Array};
use talo_engine::reader::read_table;
use talo_engine::{Engine, EngineConfig, FieldValue, WriteBatch};

pub fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        ..EngineConfig::default()
    }
}

/// A batch of `n` rows with ids `first..first+n` in table `env`, spread over 3 rooms
/// and two days so that flushes write several partitions.
pub fn rows(engine: &Engine, first: i64, n: i64) -> WriteBatch {
    let mut b = engine.batch_builder("house").unwrap();
    for id in first..first + n {
        let room = format!("r{}", id % 3);
        let time = 1_700_000_000_000_000_000 + id * 10_000_000_000 + (id % 2) * 86_400_000_000_000;
        b.push_row(
            "env",
            &[("room", room.as_str())],
            &[
                ("id", FieldValue::I64(id)),
                ("temp", FieldValue::F64(20.0 + (id % 50) as f64 / 10.0)),
            ],
            time,
            id as u32,
        )
        .unwrap();
    }
    b.finish().unwrap()
}

/// How many times each id is stored (buffer and segments).
pub fn id_counts(engine: &Engine) -> HashMap<i64, usize> {
    let snap = engine.snapshot();
    let mut counts = HashMap::new();
    let Some(t) = snap.table("house", "env") else {
        return counts;
    };
    for b in read_table(&engine.config().data_dir, &t).unwrap() {
        let ids = b
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        for i in 0..ids.len() {
            *counts.entry(ids.value(i)).or_default() += 1;
        }
    }
    counts
}

/// Assert that exactly ids `0..n` are stored, each once.
pub fn assert_exactly_once(engine: &Engine, n: i64) {
    let counts = id_counts(engine);
    let dupes: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(dupes.is_empty(), "duplicated ids: {dupes:?}");
    let missing: Vec<i64> = (0..n).filter(|i| !counts.contains_key(i)).take(5).collect();
    assert!(missing.is_empty(), "missing ids: {missing:?}");
    assert_eq!(counts.len() as i64, n, "unexpected ids stored");
}

/// Parquet files under the data dir, relative paths.
pub fn parquet_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, p: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let path = e.path();
                if path.is_dir() {
                    walk(base, &path, out);
                } else {
                    out.push(
                        path.strip_prefix(base)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &dir.join("db"), &mut out);
    out.sort();
    out
}

pub fn open(dir: &Path) -> Arc<Engine> {
    Engine::open(config(dir)).unwrap()
}
