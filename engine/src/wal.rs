//! The write-ahead log.
//!
//! Files `wal/<id:020>.wal`, ids increasing. Each file starts with a 16-byte header:
//! `b"TALOWAL\0"`, a little-endian `u32` format version, 4 reserved zero bytes. Then
//! records, each `len: u32 LE | crc: u32 LE | payload[len]`, where `crc` is CRC-32
//! (IEEE, `crc32fast`) over the four
//! `len` bytes followed by the payload.
//!
//! Payload (version 1): `kind: u8 = 1 (write) | seq: u64 | db_len: u16 | db |
//! n_tables: u16 | { name_len: u16 | name | ipc_len: u32 | Arrow IPC stream }*`.
//!
//! Reading stops at the first record that is incomplete, too long or fails its CRC:
//! everything before it is the good prefix; the rest is cut.

use std::fs::{File, OpenOptions};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;

use crate::error::{Error, IoContext, Result};
use crate::fsutil;

/// Magic bytes at the start of every WAL file.
pub const WAL_MAGIC: &[u8; 8] = b"TALOWAL\0";
/// Current WAL format version.
pub const WAL_VERSION: u32 = 1;
/// Size of the file header.
pub const HEADER_LEN: usize = 16;
/// Largest record accepted when reading (a longer length is treated as corruption).
pub const MAX_RECORD: usize = 1 << 30;
const KIND_WRITE: u8 = 1;

/// Path of WAL file `id` inside `dir`.
pub fn wal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// The ids of the WAL files in `dir`, ascending.
pub fn list_wal_files(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(id) = stem.parse::<u64>()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Encode a table batch as an Arrow IPC stream.
pub fn encode_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 512);
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(out)
}

/// Append one framed write record to `out`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, db: &str, tables: &[(&str, &[u8])]) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]); // len + crc, filled below
    out.push(KIND_WRITE);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(db.len() as u16).to_le_bytes());
    out.extend_from_slice(db.as_bytes());
    out.extend_from_slice(&(tables.len() as u16).to_le_bytes());
    for (name, ipc) in tables {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(ipc.len() as u32).to_le_bytes());
        out.extend_from_slice(ipc);
    }
    let len = (out.len() - start - 8) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&h.finalize().to_le_bytes());
}

/// One decoded write record.
#[derive(Debug)]
pub struct WalRecord {
    pub seq: u64,
    pub db: String,
    pub tables: Vec<(String, RecordBatch)>,
}

/// What reading a WAL file found.
#[derive(Debug)]
pub struct WalContents {
    pub records: Vec<WalRecord>,
    /// Length of the good prefix (header + complete, valid records).
    pub good_len: u64,
    /// Total length of the file.
    pub file_len: u64,
    /// Why reading stopped before the end, if it did.
    pub cut_reason: Option<String>,
}

/// Split `data` (a whole WAL file) into record payloads, stopping at the first bad one.
/// Returns the payloads and the good prefix length.
pub fn split_records(data: &[u8]) -> (Vec<&[u8]>, usize, Option<String>) {
    if data.len() < HEADER_LEN {
        return (Vec::new(), 0, Some("file header is incomplete".into()));
    }
    if &data[..8] != WAL_MAGIC {
        return (Vec::new(), 0, Some("bad magic".into()));
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != WAL_VERSION {
        return (
            Vec::new(),
            0,
            Some(format!("unsupported WAL version {version}")),
        );
    }
    let mut pos = HEADER_LEN;
    let mut out = Vec::new();
    let reason = loop {
        if pos == data.len() {
            break None;
        }
        if data.len() - pos < 8 {
            break Some(format!("incomplete record header at offset {pos}"));
        }
        let len_bytes = [data[pos], data[pos + 1], data[pos + 2], data[pos + 3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        if len > MAX_RECORD || data.len() - pos - 8 < len {
            break Some(format!("incomplete record at offset {pos}"));
        }
        let payload = &data[pos + 8..pos + 8 + len];
        let mut h = crc32fast::Hasher::new();
        h.update(&len_bytes);
        h.update(payload);
        if h.finalize() != crc {
            break Some(format!("checksum mismatch at offset {pos}"));
        }
        out.push(payload);
        pos += 8 + len;
    };
    (out, pos, reason)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    }
    fn str(&mut self, n: usize) -> Option<String> {
        self.take(n)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
    }
}

/// Decode one record payload (its CRC already checked).
pub fn decode_record(payload: &[u8]) -> std::result::Result<WalRecord, String> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let bad = || "malformed record".to_string();
    let kind = r.take(1).ok_or_else(bad)?[0];
    if kind != KIND_WRITE {
        return Err(format!("unknown record kind {kind}"));
    }
    let seq = r.u64().ok_or_else(bad)?;
    let n = r.u16().ok_or_else(bad)? as usize;
    let db = r.str(n).ok_or_else(bad)?;
    let ntables = r.u16().ok_or_else(bad)? as usize;
    let mut tables = Vec::with_capacity(ntables);
    for _ in 0..ntables {
        let n = r.u16().ok_or_else(bad)? as usize;
        let name = r.str(n).ok_or_else(bad)?;
        let n = r.u32().ok_or_else(bad)? as usize;
        let ipc = r.take(n).ok_or_else(bad)?;
        let reader = StreamReader::try_new(Cursor::new(ipc), None).map_err(|e| e.to_string())?;
        for batch in reader {
            tables.push((name.clone(), batch.map_err(|e| e.to_string())?));
        }
    }
    Ok(WalRecord { seq, db, tables })
}

/// Read a WAL file: map it, split the good prefix, decode it. A record that passes its
/// CRC but cannot be decoded also ends the good prefix.
pub fn read_wal_file(path: &Path) -> Result<WalContents> {
    let file = File::open(path).at(path)?;
    let file_len = file.metadata().at(path)?.len();
    if file_len == 0 {
        return Ok(WalContents {
            records: Vec::new(),
            good_len: 0,
            file_len,
            cut_reason: Some("empty file".into()),
        });
    }
    // SAFETY: the data directory is locked by this process (see `Engine::open`) and
    // WAL files being replayed are never written while mapped, so the mapping is not
    // changed underneath us.
    let map = unsafe { memmap2::Mmap::map(&file) }.at(path)?;
    let (payloads, mut good_len, mut cut_reason) = split_records(&map);
    let mut records = Vec::with_capacity(payloads.len());
    let mut offset = HEADER_LEN;
    for p in payloads {
        match decode_record(p) {
            Ok(rec) => records.push(rec),
            Err(e) => {
                good_len = offset;
                cut_reason = Some(format!("undecodable record at offset {offset}: {e}"));
                break;
            }
        }
        offset += 8 + p.len();
    }
    Ok(WalContents {
        records,
        good_len: good_len as u64,
        file_len,
        cut_reason,
    })
}

/// Cut a WAL file to `len` bytes and fsync it.
pub fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).at(path)?;
    f.set_len(len).at(path)?;
    f.sync_all().at(path)
}

/// Whether appends are fsynced before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSync {
    /// fdatasync after every group (the default): acknowledged means on disk.
    Fsync,
    /// No fsync: survives a process crash, but an OS crash or power loss may lose
    /// what the kernel had not written back (typically up to ~30 s).
    None,
}

/// The open WAL file the writer thread appends to.
#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    file: File,
    id: u64,
    len: u64,
    sync: WalSync,
    /// Set after a failed append whose partial bytes could not be cut off.
    poisoned: bool,
}

impl WalWriter {
    /// Create WAL file `id` (header written and fsynced, directory fsynced).
    pub fn create(dir: &Path, id: u64, sync: WalSync) -> Result<Self> {
        let path = wal_path(dir, id);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(WAL_MAGIC);
        header[8..12].copy_from_slice(&WAL_VERSION.to_le_bytes());
        let res = file
            .write_all(&header)
            .and_then(|_| file.sync_all())
            .at(&path)
            .and_then(|_| fsutil::sync_dir(dir));
        if let Err(e) = res {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(WalWriter {
            dir: dir.to_path_buf(),
            file,
            id,
            len: HEADER_LEN as u64,
            sync,
            poisoned: false,
        })
    }

    /// Id of the file being appended to.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the current file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current file holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == HEADER_LEN as u64
    }

    /// Append a group of framed records and (by default) fsync. On error the file is
    /// cut back to its previous length so that no partial record precedes later ones.
    pub fn append(&mut self, bytes: &[u8]) -> Result<()> {
        let path = wal_path(&self.dir, self.id);
        if self.poisoned {
            self.file.set_len(self.len).at(&path)?;
            self.file.sync_all().at(&path)?;
            self.poisoned = false;
        }
        fail::fail_point!("wal::append", |_| Err(Error::Io {
            path: path.clone(),
            source: std::io::Error::other("failpoint wal::append"),
        }));
        let res = self.write_at_end(bytes);
        match res {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                if self
                    .file
                    .set_len(self.len)
                    .and_then(|_| self.file.sync_all())
                    .is_err()
                {
                    self.poisoned = true;
                }
                Err(e).at(&path)
            }
        }
    }

    fn write_at_end(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(bytes)?;
        if self.sync == WalSync::Fsync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
