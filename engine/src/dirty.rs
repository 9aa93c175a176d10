//! Time ranges written per table since a consumer last took them: what derived data
//! (rollups) must recompute.
//!
//! Every committed write marks `[min_time, max_time]` of each table it touches (after the
//! snapshot that shows the rows is published, so a consumer that takes a range then reads a
//! snapshot sees them). A consumer `take`s a table's ranges, recomputes, and `settle`s them
//! once its own result is durable — or `restore`s them to try again.
//!
//! Crash safety: ranges of rows still in the WAL are marked again by the replay. Before a
//! flush deletes WAL files, the ranges not yet settled (pending and taken) are saved to
//! `dirty.json` (atomically, fsynced) and loaded at startup, so rows that left the WAL before
//! their consumer finished are recomputed too. Recomputing a range twice is harmless.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::publish_file;

/// At most this many disjoint ranges per table; beyond, the closest two are joined (a
/// consumer then recomputes a little more than needed, never less).
const MAX_RANGES: usize = 64;

/// The file, in the data directory.
pub const DIRTY_FILE: &str = "dirty.json";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Ranges {
    /// Sorted, disjoint, inclusive `[min, max]` nanosecond ranges.
    pending: Vec<(i64, i64)>,
    /// Taken by a consumer and not settled yet.
    #[serde(default)]
    taken: Vec<(i64, i64)>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    version: u32,
    /// `[db, table, ranges]`
    tables: Vec<(String, String, Ranges)>,
}

/// The dirty ranges of every table.
#[derive(Debug, Default)]
pub struct DirtyRanges {
    /// db → table → ranges (nested so that marking allocates nothing once a table is known)
    tables: Mutex<HashMap<String, HashMap<String, Ranges>>>,
}

fn add(list: &mut Vec<(i64, i64)>, min: i64, max: i64) {
    let (mut lo, mut hi) = (min.min(max), min.max(max));
    // merge with every range it touches or overlaps
    list.retain(|&(a, b)| {
        let touches = a <= hi.saturating_add(1) && lo <= b.saturating_add(1);
        if touches {
            lo = lo.min(a);
            hi = hi.max(b);
        }
        !touches
    });
    let at = list.partition_point(|&(a, _)| a < lo);
    list.insert(at, (lo, hi));
    while list.len() > MAX_RANGES {
        // join the pair with the smallest gap
        let i = (0..list.len() - 1)
            .min_by_key(|&i| list[i + 1].0.saturating_sub(list[i].1))
            .unwrap_or(0);
        list[i].1 = list[i + 1].1.max(list[i].1);
        list.remove(i + 1);
    }
}

impl DirtyRanges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Ranges>>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<R>(&self, db: &str, table: &str, f: impl FnOnce(&mut Ranges) -> R) -> Option<R> {
        self.lock()
            .get_mut(db)
            .and_then(|d| d.get_mut(table))
            .map(f)
    }

    /// Mark `[min, max]` of `db.table` as changed.
    pub fn mark(&self, db: &str, table: &str, min: i64, max: i64) {
        let mut t = self.lock();
        let d = match t.get_mut(db) {
            Some(d) => d,
            None => t.entry(db.to_string()).or_default(),
        };
        let r = match d.get_mut(table) {
            Some(r) => r,
            None => d.entry(table.to_string()).or_default(),
        };
        add(&mut r.pending, min, max);
    }

    /// Take the pending ranges of `db.table` (sorted, disjoint, inclusive). They stay
    /// recorded as taken until [`settle`](Self::settle) or [`restore`](Self::restore).
    pub fn take(&self, db: &str, table: &str) -> Vec<(i64, i64)> {
        self.with(db, table, |r| {
            let got = std::mem::take(&mut r.pending);
            for &(a, b) in &got {
                add(&mut r.taken, a, b);
            }
            got
        })
        .unwrap_or_default()
    }

    /// The consumer's result for everything taken from `db.table` is durable.
    pub fn settle(&self, db: &str, table: &str) {
        self.with(db, table, |r| r.taken.clear());
    }

    /// The consumer failed: what it took is pending again.
    pub fn restore(&self, db: &str, table: &str) {
        self.with(db, table, |r| {
            for (a, b) in std::mem::take(&mut r.taken) {
                add(&mut r.pending, a, b);
            }
        });
    }

    /// Persist what is not settled (before WAL files are deleted).
    pub(crate) fn save(&self, dir: &Path) -> Result<()> {
        let saved = {
            let t = self.lock();
            let mut tables: Vec<(String, String, Ranges)> = t
                .iter()
                .flat_map(|(db, d)| d.iter().map(move |(table, r)| (db, table, r)))
                .filter(|(_, _, r)| !r.pending.is_empty() || !r.taken.is_empty())
                .map(|(db, table, r)| (db.clone(), table.clone(), r.clone()))
                .collect();
            tables.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            Saved { version: 1, tables }
        };
        let path = dir.join(DIRTY_FILE);
        let bytes = serde_json::to_vec(&saved).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        publish_file(&path, &bytes)
    }

    /// Load what a previous run saved; everything in it is pending again.
    pub(crate) fn load(dir: &Path) -> Result<DirtyRanges> {
        let path = dir.join(DIRTY_FILE);
        let out = DirtyRanges::default();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&path),
        };
        let saved: Saved =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })?;
        for (db, table, r) in saved.tables {
            for (a, b) in r.pending.into_iter().chain(r.taken) {
                out.mark(&db, &table, a, b);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_stay_sorted() {
        let mut l = Vec::new();
        add(&mut l, 10, 20);
        add(&mut l, 30, 40);
        add(&mut l, 0, 5);
        assert_eq!(l, vec![(0, 5), (10, 20), (30, 40)]);
        add(&mut l, 21, 29); // touches both neighbours
        assert_eq!(l, vec![(0, 5), (10, 40)]);
        add(&mut l, 3, 12);
        assert_eq!(l, vec![(0, 40)]);
    }

    #[test]
    fn too_many_ranges_are_joined_not_dropped() {
        let mut l = Vec::new();
        for i in 0..(MAX_RANGES as i64 + 10) {
            add(&mut l, i * 100, i * 100 + 1);
        }
        assert_eq!(l.len(), MAX_RANGES);
        assert_eq!(l[0].0, 0);
        assert_eq!(l[MAX_RANGES - 1].1, (MAX_RANGES as i64 + 9) * 100 + 1);
        for w in l.windows(2) {
            assert!(w[0].1 < w[1].0);
        }
    }

    #[test]
    fn take_settle_restore_and_save() {
        let dir = tempfile::tempdir().unwrap();
        let d = DirtyRanges::default();
        d.mark("h", "env", 5, 9);
        d.mark("h", "env", 1, 2);
        assert_eq!(d.take("h", "env"), vec![(1, 2), (5, 9)]);
        assert!(d.take("h", "env").is_empty());
        d.restore("h", "env");
        assert_eq!(d.take("h", "env"), vec![(1, 2), (5, 9)]);
        d.mark("h", "env", 100, 200);
        // taken and pending are both saved: a crash before settle recomputes them
        d.save(dir.path()).unwrap();
        let loaded = DirtyRanges::load(dir.path()).unwrap();
        assert_eq!(loaded.take("h", "env"), vec![(1, 2), (5, 9), (100, 200)]);
        d.settle("h", "env");
        assert_eq!(d.take("h", "env"), vec![(100, 200)]);
        assert!(
            DirtyRanges::load(&dir.path().join("none"))
                .unwrap()
                .take("h", "env")
                .is_empty()
        );
    }
}
