"""Segment encoding settings against size on disk and dashboard query latency.

For each (page rows, zstd level) setting: start a fresh talo with TALO_SEGMENT_PAGE_ROWS
and TALO_SEGMENT_ZSTD_LEVEL, load compare.py's smart-building data over HTTP line
protocol, settle it (SIGTERM flushes, the restart compacts), then record the bytes per
field value of the live segments and the median latency of compare.py's dashboard
queries, through talo's HTTP API and through DuckDB reading the same files (the
reference, in-process). Answers are checked equal to DuckDB's. Prints a markdown table.

Usage (after `cargo build --release --bin talo --bench loadgen`):
  .venv/bin/python benches/segment_sweep.py --talo target/release/talo \\
      --loadgen target/release/deps/loadgen-<hash> [--settings 20000/3,4096/3] [--runs 15]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

import duckdb

sys.path.insert(0, os.path.dirname(__file__))
import compare  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    compare.load_args(p, rounds=1)
    p.add_argument("--settings", default="20000/3,8192/3,4096/3,2048/3,4096/9",
                   help="page rows/zstd level, comma-separated")
    p.add_argument("--runs", type=int, default=15)
    args = p.parse_args()
    settings = [tuple(s.split("/")) for s in args.settings.split(",")]
    qs = compare.query_set(args.sensors, args.steps)
    fvs = args.sensors * args.steps * 8
    work = tempfile.mkdtemp(prefix="talo-segsweep-")
    out = []
    print(f"data: {args.sensors} sensors x {args.steps} steps = {args.sensors * args.steps} rows", flush=True)
    try:
        for page_rows, level in settings:
            os.environ["TALO_SEGMENT_PAGE_ROWS"] = page_rows
            os.environ["TALO_SEGMENT_ZSTD_LEVEL"] = level
            talo = compare.Talo(args, work)
            talo.start()
            talo.prepare()
            load = compare.loader(args, talo.write_url(), args.steps)
            talo.settle()
            files = talo.parquet_files()
            size = sum(os.path.getsize(f) for f in files)
            con = duckdb.connect()
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"CREATE VIEW env AS SELECT * FROM {compare.duckdb_source(files)}")
            h = compare.Http(talo.port)
            lat = {}
            for name, q in qs.items():
                med = {}
                answers = {}
                for system in ("talo", "duckdb"):
                    compare.run_query(system, h, q, con)
                    times = []
                    for _ in range(args.runs):
                        dt_, answers[system] = compare.run_query(system, h, q, con)
                        times.append(dt_ * 1000)
                    med[system] = statistics.median(times)
                if not compare.same_answer(answers["talo"], answers["duckdb"]):
                    raise RuntimeError(f"{name}: talo and DuckDB disagree at {page_rows}/{level}")
                lat[name] = med
            h.close()
            con.close()
            talo.stop()
            shutil.rmtree(talo.dir, ignore_errors=True)
            out.append((page_rows, level, load["rows_per_s"], size / fvs, len(files), lat))
            print(f"{page_rows} rows/page, zstd {level}: {load['rows_per_s']:.0f} rows/s, "
                  f"{size / fvs:.4f} bytes/fv, " + ", ".join(
                      f"{n} {m['talo']:.1f}/{m['duckdb']:.1f} ms" for n, m in lat.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.environ.pop("TALO_SEGMENT_PAGE_ROWS", None)
        os.environ.pop("TALO_SEGMENT_ZSTD_LEVEL", None)
    names = list(qs)
    print()
    print("| page rows | zstd | ingest rows/s | bytes/fv | files | "
          + " | ".join(f"{n} talo / DuckDB ms" for n in names) + " |")
    print("|---|---|---|---|---|" + "---|" * len(names))
    for page_rows, level, rate, bpf, nfiles, lat in out:
        cells = " | ".join(f"{lat[n]['talo']:.1f} / {lat[n]['duckdb']:.1f}" for n in names)
        print(f"| {page_rows} | {level} | {rate:,.0f} | {bpf:.4f} | {nfiles} | {cells} |")


if __name__ == "__main__":
    main()
