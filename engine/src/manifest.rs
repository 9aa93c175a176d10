//! The manifest: the list of published segments and how much of the WAL they cover.
//!
//! `manifest.json` is replaced atomically (temp → fsync → rename → fsync dir). A segment
//! file exists before the manifest names it; a file the manifest does not name is an
//! orphan of a crashed flush and is deleted at startup. WAL files with an id up to
//! `wal_flushed_through` hold only rows that are in segments and may be deleted.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

const MANIFEST_FORMAT: &str = "talo-manifest";
const MANIFEST_VERSION: u32 = 1;
/// File name of the manifest inside the data directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One published Parquet segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    pub db: String,
    pub table: String,
    /// Start of the time partition (ns since the epoch, UTC).
    pub partition: i64,
    /// Path relative to the data directory.
    pub path: String,
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u64,
    pub bytes: u64,
    /// Precedence among copies of the same point (higher wins) when it is not `id`: a
    /// compacted segment takes the highest precedence of the segments it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl SegmentMeta {
    /// Which copy of a point wins: the one from the segment with the higher precedence.
    pub fn precedence(&self) -> u64 {
        self.seq.unwrap_or(self.id)
    }
}

/// The persisted manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub next_segment_id: u64,
    /// Every WAL file with an id ≤ this is fully contained in segments.
    pub wal_flushed_through: u64,
    pub segments: Vec<SegmentMeta>,
}

#[derive(Serialize, Deserialize)]
struct ManifestFile {
    format: String,
    version: u32,
    #[serde(flatten)]
    manifest: Manifest,
}

impl Manifest {
    /// Load `manifest.json`; an empty manifest when it does not exist.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).at(&path),
        };
        let file: ManifestFile = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        if file.format != MANIFEST_FORMAT || file.version > MANIFEST_VERSION {
            return Err(Error::Corrupt {
                path,
                reason: format!(
                    "unsupported manifest format {:?} version {}",
                    file.format, file.version
                ),
            });
        }
        Ok(file.manifest)
    }

    /// Persist atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let file = ManifestFile {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            manifest: self.clone(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        fsutil::publish_file(&path, &bytes)
    }
}
