//! Compaction: small segments of a partition merged into one, with the same content
//! (last write wins per field, across segments), bounded file counts, and crash safety
//! at every step of publishing.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampNanosecondArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use talo_engine::reader::read_segment;
use talo_engine::{CompactionConfig, Engine, EngineConfig, FieldValue};

const DAY: i64 = 86_400_000_000_000;
const T0: i64 = 1_700_006_400_000_000_000; // a partition start (midnight UTC)

type Point = (String, i64);
type Fields = (Option<f64>, Option<i64>);

/// Failpoints are global to the test process: `crash_at_each_compaction_step` arms
/// `compact::before_delete`, which would make a compaction running at the same time in
/// another test skip burying its inputs. Every test here holds the scenario lock.
fn serial() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

fn config(dir: &Path, min_files: usize, target_bytes: u64) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        compaction: CompactionConfig {
            interval: None,
            min_files,
            target_bytes,
            max_rows: 1 << 20,
            ..CompactionConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// Write one flush worth of rows: `n` points of round `round` over 3 days and 5 rooms,
/// each round overwriting part of the previous ones (same room + time) and sometimes
/// only one of the two fields. Applies the same writes to `model`.
fn write_round(engine: &Engine, round: i64, n: i64, model: &mut BTreeMap<Point, Fields>) {
    let mut b = engine.batch_builder("house").unwrap();
    for i in 0..n {
        let k = (i * 7 + round * 13) % n.max(60); // points repeat across rounds
        let room = format!("r{}", k % 5);
        let time = T0 + (k % 3) * DAY + (k / 15) * 1_000_000_000;
        let temp = 20.0 + round as f64 + i as f64 / 100.0;
        let fields: Vec<(&str, FieldValue<'_>)> = match (round + i) % 3 {
            0 => vec![("temp", FieldValue::F64(temp))],
            1 => vec![("co2", FieldValue::I64(400 + round * 10 + i))],
            _ => vec![
                ("temp", FieldValue::F64(temp)),
                ("co2", FieldValue::I64(500 + round)),
            ],
        };
        b.push_row("env", &[("room", room.as_str())], &fields, time, i as u32)
            .unwrap();
        let e = model.entry((room, time)).or_default();
        for (name, v) in &fields {
            match (name, v) {
                (&"temp", FieldValue::F64(x)) => e.0 = Some(*x),
                (&"co2", FieldValue::I64(x)) => e.1 = Some(*x),
                _ => unreachable!(),
            }
        }
    }
    engine.write_blocking(b.finish().unwrap()).unwrap();
    engine.flush_blocking().unwrap();
}

/// The table's content as last-write-wins over the segments in precedence order.
fn materialize(engine: &Engine) -> BTreeMap<Point, Fields> {
    let snap = engine.snapshot();
    let t = snap.table("house", "env").unwrap();
    assert!(t.chunks.is_empty(), "everything is flushed");
    let schema = t.table.schema();
    let mut segs = t.segments.clone();
    segs.sort_by_key(|s| s.precedence());
    let mut out: BTreeMap<Point, Fields> = BTreeMap::new();
    for s in segs {
        for b in read_segment(&engine.config().data_dir, &s, &schema).unwrap() {
            let room = cast(b.column_by_name("room").unwrap(), &DataType::Utf8).unwrap();
            let room = room.as_any().downcast_ref::<StringArray>().unwrap();
            let time = b
                .column_by_name("time")
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .unwrap();
            let temp = b
                .column_by_name("temp")
                .map(|c| c.as_any().downcast_ref::<Float64Array>().unwrap().clone());
            let co2 = b
                .column_by_name("co2")
                .map(|c| c.as_any().downcast_ref::<Int64Array>().unwrap().clone());
            for i in 0..b.num_rows() {
                let e = out
                    .entry((room.value(i).to_string(), time.value(i)))
                    .or_default();
                if let Some(t) = &temp
                    && t.is_valid(i)
                {
                    e.0 = Some(t.value(i));
                }
                if let Some(c) = &co2
                    && c.is_valid(i)
                {
                    e.1 = Some(c.value(i));
                }
            }
        }
    }
    out
}

fn parquet_files(dir: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            walk(&p)
                        } else {
                            usize::from(p.extension().is_some_and(|x| x == "parquet"))
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&dir.join("db"))
}

#[test]
fn compaction_keeps_every_point_and_bounds_the_file_count() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 4, 1 << 30)).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..12 {
        write_round(&engine, round, 40, &mut model);
    }
    let before = engine.snapshot().segments.len();
    assert_eq!(before, 36, "12 flushes × 3 day partitions");
    assert_eq!(materialize(&engine), model);
    let merges = engine.compact_blocking().unwrap();
    assert_eq!(merges, 3, "one merge per partition");
    assert_eq!(engine.snapshot().segments.len(), 3);
    assert_eq!(materialize(&engine), model);
    // the replaced files are gone once no snapshot holds them
    assert_eq!(engine.compact_blocking().unwrap(), 0);
    assert_eq!(parquet_files(dir.path()), 3);
    // and it all survives a restart
    engine.shutdown().unwrap();
    drop(engine);
    let engine = Engine::open(config(dir.path(), 4, 1 << 30)).unwrap();
    assert_eq!(materialize(&engine), model);
}

/// A large segment in the middle of a partition is not merged, and the runs on either
/// side keep their order relative to it: a point rewritten in the large segment and
/// again later keeps the later value.
#[test]
fn only_adjacent_runs_are_merged() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // segments of 40 rows are ~1.6 KiB; those of the 4000-row flush ~6 KiB
    let engine = Engine::open(config(dir.path(), 3, 4 * 1024)).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..4 {
        write_round(&engine, round, 40, &mut model);
    }
    write_round(&engine, 4, 4000, &mut model);
    for round in 5..9 {
        write_round(&engine, round, 40, &mut model);
    }
    let big: Vec<u64> = engine
        .snapshot()
        .segments
        .iter()
        .filter(|s| s.bytes >= 4 * 1024)
        .map(|s| s.id)
        .collect();
    let sizes: Vec<u64> = engine.snapshot().segments.iter().map(|s| s.bytes).collect();
    assert!(
        !big.is_empty(),
        "the 4000-row flush makes large segments: {sizes:?}"
    );
    engine.compact_blocking().unwrap();
    let after = engine.snapshot();
    for id in &big {
        assert!(
            after.segments.iter().any(|s| s.id == *id),
            "large segment {id} untouched"
        );
    }
    assert!(after.segments.len() < 27);
    drop(after);
    assert_eq!(materialize(&engine), model);
}

/// One flush of `n` writes into the day starting at `day`: 80 distinct points per day, so
/// later rounds overwrite earlier ones (a field at a time, sometimes both). Mirrors `model`.
fn write_day(engine: &Engine, day: i64, round: i64, n: i64, model: &mut BTreeMap<Point, Fields>) {
    let mut b = engine.batch_builder("house").unwrap();
    for i in 0..n {
        let k = (i * 11 + round * 7) % 80;
        let room = format!("r{}", k % 5);
        let time = day + (k / 5) * 60_000_000_000;
        let temp = round as f64 * 100.0 + i as f64;
        let fields: Vec<(&str, FieldValue<'_>)> = if (round + i) % 2 == 0 {
            vec![("temp", FieldValue::F64(temp))]
        } else {
            vec![
                ("temp", FieldValue::F64(temp)),
                ("co2", FieldValue::I64(round * 1000 + i)),
            ]
        };
        b.push_row("env", &[("room", room.as_str())], &fields, time, i as u32)
            .unwrap();
        let e = model.entry((room, time)).or_default();
        e.0 = Some(temp);
        if fields.len() == 2 {
            e.1 = Some(round * 1000 + i);
        }
    }
    engine.write_blocking(b.finish().unwrap()).unwrap();
    engine.flush_blocking().unwrap();
}

fn segments_in(engine: &Engine, partition: i64) -> usize {
    engine
        .snapshot()
        .segments
        .iter()
        .filter(|s| s.partition == partition)
        .count()
}

/// Late and out-of-order data: after an old partition was compacted, writes for it keep
/// arriving (overwrites and new points) in small flushes interleaved with current data.
/// They are stored, win over the older values, and the next compaction merges them with
/// the compacted segment into one file again.
#[test]
fn late_writes_into_a_compacted_partition_are_merged() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 3, 1 << 30)).unwrap();
    let mut model = BTreeMap::new();
    let (old, current) = (T0, T0 + 30 * DAY);
    for round in 0..4 {
        write_day(&engine, old, round, 50, &mut model);
    }
    engine.compact_blocking().unwrap();
    assert_eq!(segments_in(&engine, old), 1);
    for round in 4..10 {
        write_day(&engine, current, round, 50, &mut model);
        write_day(&engine, old, round, 20, &mut model);
    }
    assert_eq!(
        segments_in(&engine, old),
        7,
        "the compacted one + 6 late flushes"
    );
    assert_eq!(
        materialize(&engine),
        model,
        "late values win before compaction"
    );
    engine.compact_blocking().unwrap();
    assert_eq!(
        segments_in(&engine, old),
        1,
        "late segments merged into the old one"
    );
    assert_eq!(segments_in(&engine, current), 1);
    assert_eq!(materialize(&engine), model, "and after");
    assert_eq!(engine.compact_blocking().unwrap(), 0);
    // the replaced files go once nothing holds them (a pass buries what is unreferenced at
    // that moment; a snapshot still being released waits for the next pass). This lagged
    // "for ever" once: another test's armed failpoint, not a leak (see `serial`)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while parquet_files(dir.path()) != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} files left, want 2",
            parquet_files(dir.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        engine.compact_blocking().unwrap();
    }
}

/// Segments whose time ranges overlap (writers sending interleaved times) are merged
/// even when there are fewer than `min_files` of them; more rows than `max_rows` are cut
/// by time into parts that overlap neither each other nor anything else, so the next
/// pass finds nothing to do and queries read them without merging copies.
#[test]
fn overlapping_segments_are_merged_into_disjoint_parts() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 8, 1 << 30);
    cfg.compaction.max_rows = 100;
    let engine = Engine::open(cfg.clone()).unwrap();
    let mut model = BTreeMap::new();
    // three flushes of the same 80 points (16 times x 5 rooms) of one day
    for round in 0..3 {
        write_day(&engine, T0, round, 80, &mut model);
    }
    // and a day of its own, which overlaps nothing and stays as it is
    write_day(&engine, T0 + DAY, 9, 80, &mut model);
    let lone = engine
        .snapshot()
        .segments
        .iter()
        .find(|s| s.partition == T0 + DAY)
        .map(|s| s.id)
        .unwrap();
    assert_eq!(segments_in(&engine, T0), 3);
    assert_eq!(engine.compact_blocking().unwrap(), 1);
    let snap = engine.snapshot();
    let mut parts: Vec<(i64, i64, u64)> = snap
        .segments
        .iter()
        .filter(|s| s.partition == T0)
        .map(|s| (s.min_time, s.max_time, s.rows))
        .collect();
    parts.sort();
    assert_eq!(
        parts.len(),
        3,
        "240 rows in, at most 100 per part: {parts:?}"
    );
    assert!(
        parts.windows(2).all(|w| w[0].1 < w[1].0),
        "parts do not overlap: {parts:?}"
    );
    assert_eq!(
        parts.iter().map(|p| p.2).sum::<u64>(),
        80,
        "one row per point"
    );
    assert!(snap.segments.iter().any(|s| s.id == lone));
    drop(snap);
    assert_eq!(materialize(&engine), model);
    assert_eq!(
        engine.compact_blocking().unwrap(),
        0,
        "nothing left to merge"
    );
    engine.shutdown().unwrap();
    drop(engine);
    let engine = Engine::open(cfg).unwrap();
    assert_eq!(materialize(&engine), model);
    assert_eq!(parquet_files(dir.path()), 4);
}

/// A query (a snapshot) that started before the compaction keeps reading the old files.
#[test]
fn running_readers_keep_their_files() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, 1 << 30)).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..3 {
        write_round(&engine, round, 40, &mut model);
    }
    let old = engine.snapshot();
    engine.compact_blocking().unwrap();
    let t = old.table("house", "env").unwrap();
    let schema = t.table.schema();
    for s in &t.segments {
        assert!(
            read_segment(dir.path(), s, &schema).is_ok(),
            "{} deleted under a reader",
            s.path
        );
    }
    drop(t);
    drop(old);
    engine.compact_blocking().unwrap(); // buries what nobody holds
    assert_eq!(parquet_files(dir.path()), 3);
}

/// Crash before the manifest names the output, and crash after it but before the inputs
/// are deleted: after reopening, the content is the same and no file is left over.
#[test]
fn crash_at_each_compaction_step() {
    let scenario = fail::FailScenario::setup();
    for point in ["compact::before_manifest", "compact::before_delete"] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(config(dir.path(), 2, 1 << 30)).unwrap();
        let mut model = BTreeMap::new();
        for round in 0..4 {
            write_round(&engine, round, 40, &mut model);
        }
        fail::cfg(point, "return").unwrap();
        let _ = engine.compact_blocking();
        fail::remove(point);
        engine.halt(); // as kill -9 would
        drop(engine);
        let engine = Engine::open(config(dir.path(), 2, 1 << 30)).unwrap();
        assert_eq!(materialize(&engine), model, "{point}");
        let named = engine.snapshot().segments.len();
        assert_eq!(parquet_files(dir.path()), named, "{point}: no orphan left");
        // and compaction then completes
        engine.compact_blocking().unwrap();
        assert_eq!(materialize(&engine), model, "{point}");
    }
    scenario.teardown();
}

/// A retention rule hides expired rows from every new snapshot's reader at once (the
/// query layer filters by it) and the next compaction pass deletes segments whose
/// newest row has expired; a rule set at runtime survives a restart.
#[test]
fn retention_drops_expired_segments() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 4, 1 << 30)).unwrap();
    let now = talo_engine::retention::now_ns();
    let mut b = engine.batch_builder("house").unwrap();
    for (i, age_days) in [40i64, 10, 0].iter().enumerate() {
        b.push_row(
            "env",
            &[("room", "a")],
            &[("temp", FieldValue::F64(i as f64))],
            now - age_days * DAY,
            i as u32,
        )
        .unwrap();
    }
    engine.write_blocking(b.finish().unwrap()).unwrap();
    engine.flush_blocking().unwrap();
    assert_eq!(engine.snapshot().segments.len(), 3);
    engine
        .set_retention(
            "house",
            Some("env"),
            Some(std::time::Duration::from_secs(30 * 86_400)),
        )
        .unwrap();
    let cut = engine
        .snapshot()
        .retention
        .cutoff("house", "env", talo_engine::retention::now_ns())
        .unwrap();
    assert!(cut > now - 40 * DAY && cut < now - 10 * DAY);
    engine.compact_blocking().unwrap();
    let left: Vec<i64> = engine
        .snapshot()
        .segments
        .iter()
        .map(|s| s.max_time)
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|t| *t >= now - 10 * DAY));
    engine.compact_blocking().unwrap(); // buries the file nobody holds
    assert_eq!(parquet_files(dir.path()), 2);
    engine.shutdown().unwrap();
    drop(engine);
    let engine = Engine::open(config(dir.path(), 4, 1 << 30)).unwrap();
    assert_eq!(
        engine.snapshot().retention.for_table("house", "env"),
        Some(std::time::Duration::from_secs(30 * 86_400))
    );
}

/// Poll (30 s deadline from `opened`) until `merged()` holds, then check it held before
/// the compactor's first timer pass (5 s after startup): `cause` did the merging.
fn merged_before_first_timer_pass(
    opened: std::time::Instant,
    merged: impl Fn() -> bool,
    state: impl Fn() -> String,
    cause: &str,
) {
    let deadline = opened + std::time::Duration::from_secs(30);
    while !merged() {
        assert!(std::time::Instant::now() < deadline, "{}", state());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        opened.elapsed() < std::time::Duration::from_secs(5),
        "merged only after {:?}: the first timer pass, not {cause}, did it",
        opened.elapsed()
    );
}

/// A flush wakes the compactor: a partition that gathers `min_files` small segments is
/// merged at once, not when the timer (an hour here; the first pass 5 s after startup)
/// comes round. With 16 MiB flushes under heavy ingest, partitions gather small
/// segments every few seconds.
#[test]
fn a_flush_wakes_compaction() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 4, 1 << 30);
    cfg.compaction.interval = Some(std::time::Duration::from_secs(3600));
    let opened = std::time::Instant::now();
    let engine = Engine::open(cfg).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..4 {
        write_round(&engine, round, 40, &mut model);
    }
    // 4 flushes × 3 day partitions, merged into one segment per partition
    merged_before_first_timer_pass(
        opened,
        || engine.snapshot().segments.len() == 3,
        || format!("still {} segments", engine.snapshot().segments.len()),
        "the flush",
    );
    assert_eq!(materialize(&engine), model);
    engine.shutdown().unwrap();
}

/// Merged segments are written at the compaction's zstd level, not the flush's: the same
/// writes merged at level 19 take fewer bytes than merged at level 1, with the same rows.
#[test]
fn merges_use_the_compaction_zstd_level() {
    let _s = serial();
    let mut sizes = Vec::new();
    let mut contents = Vec::new();
    for level in [1, 19] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 2, 1 << 30);
        cfg.compaction.zstd_level = level;
        let engine = Engine::open(cfg).unwrap();
        let mut model = BTreeMap::new();
        for round in 0..4 {
            write_round(&engine, round, 3000, &mut model);
        }
        assert!(engine.compact_blocking().unwrap() > 0, "a merge ran");
        let snap = engine.snapshot();
        assert!(
            snap.segments.iter().all(|s| s.seq.is_some()),
            "every segment is a merge output"
        );
        sizes.push(snap.segments.iter().map(|s| s.bytes).sum::<u64>());
        let got = materialize(&engine);
        assert_eq!(got, model);
        contents.push(got);
        engine.shutdown().unwrap();
    }
    assert_eq!(contents[0], contents[1]);
    assert!(
        sizes[1] < sizes[0],
        "level 19 ({} bytes) is smaller than level 1 ({} bytes)",
        sizes[1],
        sizes[0]
    );
}

/// A flush over several days writes one segment per day, each recording the min and max
/// time of exactly its rows (queries prune segments by them), inside its partition.
#[test]
fn flushed_segments_record_their_time_range() {
    let _s = serial();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 100, 1 << 30)).unwrap();
    let mut model = BTreeMap::new();
    write_round(&engine, 0, 3000, &mut model);
    let snap = engine.snapshot();
    let schema = snap.table("house", "env").unwrap().table.schema();
    assert_eq!(snap.segments.len(), 3, "one segment per day");
    for s in snap.segments.iter() {
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for b in read_segment(dir.path(), s, &schema).unwrap() {
            let t = b
                .column_by_name("time")
                .unwrap()
                .as_any()
                .downcast_ref::<TimestampNanosecondArray>()
                .unwrap();
            for &v in t.values().iter() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        assert_eq!((s.min_time, s.max_time), (lo, hi), "segment {}", s.path);
        assert!(s.partition <= lo && hi < s.partition + DAY);
    }
    engine.shutdown().unwrap();
}

/// Float fields stored as decimals (short decimals, `talo_engine::decimal`) stay
/// decimals through a merge, at the finest scale among the inputs, and every value comes
/// back bit for bit; one input holding a value no decimal can (π) keeps the merged
/// column a double. Integers that fit are stored in 32 bits and stay so through a merge
/// of such inputs; one input holding a 64-bit value makes the merged column 64-bit. So do
/// 32-bit decimals of different scales (rescaled, they could outgrow 9 digits).
#[test]
fn merges_keep_short_decimal_floats_exact() {
    let _s = serial();
    let stored = |engine: &Engine, column: &str| -> Vec<DataType> {
        let snap = engine.snapshot();
        let mut types: Vec<DataType> = snap
            .segments
            .iter()
            .map(|s| {
                let path = engine.config().data_dir.join(&s.path);
                let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(path).unwrap(),
                )
                .unwrap();
                r.schema()
                    .field_with_name(column)
                    .unwrap()
                    .data_type()
                    .clone()
            })
            .collect();
        types.sort_by_key(|t| t.to_string());
        types
    };
    // one day, 3 flushes: 1 place, 3 places, then (second run) π and a 64-bit integer
    let write = |engine: &Engine, round: i64, model: &mut BTreeMap<Point, Fields>| {
        let mut b = engine.batch_builder("house").unwrap();
        for i in 0..500i64 {
            let room = format!("r{}", i % 5);
            let time = T0 + (i / 5 + round * 50) * 1_000_000_000;
            let temp: f64 = match round {
                0 => format!("{}.{}", 20 + i % 7, i % 10).parse().unwrap(),
                1 => format!("-{}.{:03}", 1 + i % 3, i).parse().unwrap(),
                _ if i == 250 => std::f64::consts::PI,
                _ => 21.5,
            };
            let co2 = if round == 2 && i == 250 {
                1 << 40
            } else {
                400 + i
            };
            b.push_row(
                "env",
                &[("room", room.as_str())],
                &[
                    ("temp", FieldValue::F64(temp)),
                    ("co2", FieldValue::I64(co2)),
                ],
                time,
                i as u32,
            )
            .unwrap();
            *model.entry((room, time)).or_default() = (Some(temp), Some(co2));
        }
        engine.write_blocking(b.finish().unwrap()).unwrap();
        engine.flush_blocking().unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(config(dir.path(), 2, 1 << 30)).unwrap();
    let mut model = BTreeMap::new();
    write(&engine, 0, &mut model);
    write(&engine, 1, &mut model);
    assert_eq!(
        stored(&engine, "temp"),
        [DataType::Decimal32(9, 1), DataType::Decimal32(9, 3)]
    );
    assert_eq!(stored(&engine, "co2"), [DataType::Int32, DataType::Int32]);
    assert_eq!(engine.compact_blocking().unwrap(), 1);
    assert_eq!(stored(&engine, "temp"), [DataType::Decimal64(18, 3)]);
    assert_eq!(stored(&engine, "co2"), [DataType::Int32]);
    assert_eq!(materialize(&engine), model);

    write(&engine, 2, &mut model);
    assert!(stored(&engine, "temp").contains(&DataType::Float64));
    assert!(stored(&engine, "co2").contains(&DataType::Int64));
    assert_eq!(engine.compact_blocking().unwrap(), 1);
    assert_eq!(stored(&engine, "temp"), [DataType::Float64]);
    assert_eq!(stored(&engine, "co2"), [DataType::Int64]);
    assert_eq!(materialize(&engine), model);
    engine.shutdown().unwrap();
}

/// A quiet partition (no new segment for `cold_after`) merges its run of small segments
/// even when it is shorter than `min_files`; a partition that is not quiet yet keeps
/// them. The compactor wakes by itself when a partition turns quiet (the timer here is an
/// hour, the first pass 5 s after startup).
#[test]
fn quiet_partitions_merge_their_last_small_segments() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    // not quiet for an hour: three flushes stay three segments per partition
    let mut cfg = config(dir.path(), 8, 1 << 30);
    cfg.compaction.cold_after = Some(std::time::Duration::from_secs(3600));
    let engine = Engine::open(cfg.clone()).unwrap();
    // an hour apart: segments that do not overlap (overlapping ones merge anyway)
    let hour = 3_600_000_000_000;
    for round in 0..3 {
        write_day(&engine, T0 + round * hour, round, 50, &mut model);
    }
    assert_eq!(engine.compact_blocking().unwrap(), 0);
    assert_eq!(segments_in(&engine, T0), 3);
    engine.shutdown().unwrap();
    drop(engine);

    // quiet after 300 ms, compaction timer an hour away: the compactor wakes for it
    cfg.compaction.cold_after = Some(std::time::Duration::from_millis(300));
    cfg.compaction.interval = Some(std::time::Duration::from_secs(3600));
    let opened = std::time::Instant::now();
    let engine = Engine::open(cfg).unwrap();
    write_day(&engine, T0 + DAY, 0, 50, &mut model);
    write_day(&engine, T0 + DAY + hour, 1, 50, &mut model);
    merged_before_first_timer_pass(
        opened,
        || segments_in(&engine, T0) + segments_in(&engine, T0 + DAY) == 2,
        || {
            format!(
                "still {} + {} segments",
                segments_in(&engine, T0),
                segments_in(&engine, T0 + DAY)
            )
        },
        "the quiet wake-up",
    );
    assert_eq!(materialize(&engine), model);
    engine.shutdown().unwrap();
    drop(engine);

    // a quiet partition's merges follow each other in one pass: a merge's output keeps
    // its inputs' precedence, so it does not restart the partition's quiet clock
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 8, 1 << 30);
    cfg.compaction.max_rows = 100; // two 50-row flushes per merge
    cfg.compaction.cold_after = Some(std::time::Duration::from_millis(1));
    let engine = Engine::open(cfg).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..4 {
        write_day(&engine, T0 + round * hour, round, 50, &mut model);
    }
    assert_eq!(segments_in(&engine, T0), 4);
    assert_eq!(
        engine.compact_blocking().unwrap(),
        2,
        "both merges in one pass"
    );
    assert_eq!(segments_in(&engine, T0), 2);
    assert_eq!(materialize(&engine), model);
}
