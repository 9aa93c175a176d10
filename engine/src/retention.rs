//! Retention: how long each database (and, overriding it, each table) keeps its rows.
//!
//! The rules are part of every [`crate::Snapshot`], so a query filters with the rules of
//! the moment it started: rows older than `now - retention` are never returned, even
//! while their files still exist. The compaction thread deletes segments whose newest
//! row has expired (whole partitions, once the partition has passed the cutoff).
//! Persisted in `retention.json` (atomic replace) whenever they change.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// File name of the retention rules inside the data directory.
pub const RETENTION_FILE: &str = "retention.json";

/// Retention of one database and its table overrides, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbRetention {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, u64>,
}

/// All retention rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRules {
    #[serde(default)]
    pub databases: BTreeMap<String, DbRetention>,
}

impl RetentionRules {
    /// How long rows of `db.table` are kept; `None` = forever.
    pub fn for_table(&self, db: &str, table: &str) -> Option<Duration> {
        let d = self.databases.get(db)?;
        d.tables
            .get(table)
            .copied()
            .or(d.seconds)
            .map(Duration::from_secs)
    }

    /// The oldest time (ns) still visible in `db.table` at `now_ns`, if any is set.
    pub fn cutoff(&self, db: &str, table: &str, now_ns: i64) -> Option<i64> {
        self.for_table(db, table)
            .map(|d| now_ns.saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))
    }

    /// These rules with `db` (or `db.table`) kept for `keep` (`None` removes the rule).
    pub fn with(&self, db: &str, table: Option<&str>, keep: Option<Duration>) -> Self {
        let mut next = self.clone();
        let d = next.databases.entry(db.to_string()).or_default();
        match (table, keep) {
            (None, k) => d.seconds = k.map(|k| k.as_secs()),
            (Some(t), Some(k)) => {
                d.tables.insert(t.to_string(), k.as_secs());
            }
            (Some(t), None) => {
                d.tables.remove(t);
            }
        }
        if d.seconds.is_none() && d.tables.is_empty() {
            next.databases.remove(db);
        }
        next
    }

    /// Load `retention.json`; no rules when it does not exist.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(RETENTION_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| Error::Json { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Persist atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| Error::Json {
            path: dir.join(RETENTION_FILE),
            source,
        })?;
        fsutil::publish_file(&dir.join(RETENTION_FILE), &bytes)
    }
}

/// Nanoseconds since the epoch now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_overrides_database_and_rules_round_trip() {
        let day = Duration::from_secs(86_400);
        let r = RetentionRules::default()
            .with("house", None, Some(day * 365))
            .with("house", Some("env"), Some(day * 30));
        assert_eq!(r.for_table("house", "env"), Some(day * 30));
        assert_eq!(r.for_table("house", "other"), Some(day * 365));
        assert_eq!(r.for_table("toe", "env"), None);
        assert_eq!(
            r.cutoff("house", "env", 100 * 86_400_000_000_000),
            Some(70 * 86_400_000_000_000)
        );
        let r2 = r.with("house", Some("env"), None).with("house", None, None);
        assert!(r2.databases.is_empty());
        let dir = tempfile::tempdir().unwrap();
        r.save(dir.path()).unwrap();
        assert_eq!(RetentionRules::load(dir.path()).unwrap(), r);
    }
}
