//! Reading segments back (for the query layer, tests and tools).

use std::fs::File;
use std::path::Path;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::buffer::align_batch;
use crate::error::{IoContext, Result};
use crate::manifest::SegmentMeta;

/// Read a whole segment, aligned to `schema` (the table's current schema).
pub fn read_segment(
    data_dir: &Path,
    seg: &SegmentMeta,
    schema: &SchemaRef,
) -> Result<Vec<RecordBatch>> {
    let path = data_dir.join(&seg.path);
    let file = File::open(&path).at(&path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    reader.map(|b| align_batch(&b?, schema)).collect()
}

/// Every row of a table snapshot (buffer chunks, then segments), aligned to the table's
/// schema, without deduplication across chunks and segments.
pub fn read_table(data_dir: &Path, t: &crate::buffer::TableSnapshot) -> Result<Vec<RecordBatch>> {
    let schema = t.table.schema();
    let mut out = Vec::new();
    for c in &t.chunks {
        out.push(align_batch(&c.batch, &schema)?);
    }
    for s in &t.segments {
        out.extend(read_segment(data_dir, s, &schema)?);
    }
    Ok(out)
}
