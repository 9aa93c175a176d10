"""Two talo settings (or two builds) on the same data, their queries timed alternately.

Loads compare.py's smart-building data into one talo per side (A and B: `TALO_*`
variables and, optionally, another binary), settles each (SIGTERM flushes, the restart
compacts), records its bytes per field value, then for --rounds-ab rounds restarts each
side in turn on its own data dir and times compare.py's dashboard queries through talo's
HTTP API (median of --runs after one warm-up), with DuckDB timed in the same round on
that side's files as the yardstick for the machine's state, and the server's CPU time
per query (utime + stime from /proc/PID/stat). Every answer is checked against DuckDB's.
Alternating sides and the same-round DuckDB time are what make a difference of a few
per cent readable on a shared, noisy machine.

Each side's settled layout (files and their rows) is printed, and a warning when the two
differ: compaction's timing can leave one side with 3 files and the other with 9, which
alone moves "last value" and "one sensor". With --shared-data only side A loads and
settles; B gets a copy of A's settled directory, so both query the very same files (for
settings and builds that only change the read path).

Usage (after `cargo build --release --bin talo --bench loadgen`):
  .venv/bin/python benches/ab_settings.py --talo target/release/talo \\
      --loadgen target/release/deps/loadgen-<hash> \\
      --a TALO_SEGMENT_DECIMAL_FLOATS=false --b TALO_SEGMENT_DECIMAL_FLOATS=true \\
      [--talo-b other/talo] [--shared-data] [--rounds-ab 3] [--runs 15]
      [--sensors 1000 --steps 8640]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import duckdb
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
import compare  # noqa: E402

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid):
    """User + system CPU time of a process so far, in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields after the command name start at field 3 (state): utime is 14, stime 15
    return (int(fields[11]) + int(fields[12])) * TICK_MS


def column_bytes(files):
    """Compressed bytes per row of each column over `files` (Parquet metadata)."""
    sizes, rows = {}, 0
    for f in files:
        md = pq.ParquetFile(f).metadata
        rows += md.num_rows
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                sizes[col.path_in_schema] = sizes.get(col.path_in_schema, 0) + col.total_compressed_size
    return ", ".join(f"{k} {v / max(rows, 1):.3f}" for k, v in sizes.items())


def layout(files):
    """Rows of each file, in file order: what compaction left."""
    return [pq.ParquetFile(f).metadata.num_rows for f in files]


def parse_env(spec):
    env = {}
    for kv in filter(None, (spec or "").split(",")):
        k, _, v = kv.partition("=")
        env[k.strip()] = v.strip()
    return env


class Side:
    def __init__(self, name, args, binary, env, work):
        self.name, self.env = name, env
        side_args = argparse.Namespace(**vars(args))
        side_args.talo = binary
        self.talo = compare.Talo(side_args, work)

    def start(self):
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            self.talo.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def time_queries(side, qs, runs):
    """{query: (talo median ms, DuckDB median ms, talo server CPU ms per query)}."""
    files = side.talo.parquet_files()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW env AS SELECT * FROM {compare.duckdb_source(files)}")
    h = compare.Http(side.talo.port)
    pid = side.talo.proc.pid
    out = {}
    for name, q in qs.items():
        answers, med = {}, {}
        cpu = 0.0
        for system in ("talo", "duckdb"):
            compare.run_query(system, h, q, con)
            c0 = cpu_ms(pid)
            times = []
            for _ in range(runs):
                dt_, answers[system] = compare.run_query(system, h, q, con)
                times.append(dt_ * 1000)
            if system == "talo":
                cpu = (cpu_ms(pid) - c0) / runs
            med[system] = statistics.median(times)
        if not compare.same_answer(answers["talo"], answers["duckdb"]):
            raise RuntimeError(f"{name}: talo ({side.name}) and DuckDB disagree")
        out[name] = (med["talo"], med["duckdb"], cpu)
    h.close()
    con.close()
    return out


def main():
    p = argparse.ArgumentParser()
    compare.load_args(p, rounds=1)
    p.add_argument("--a", default="", help="side A: TALO_X=v,TALO_Y=w")
    p.add_argument("--b", default="", help="side B: TALO_X=v,TALO_Y=w")
    p.add_argument("--talo-b", help="side B's binary (default: --talo)")
    p.add_argument("--rounds-ab", type=int, default=3)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--shared-data", action="store_true",
                   help="load and settle once (side A's settings); B queries a copy of A's files")
    args = p.parse_args()
    qs = compare.query_set(args.sensors, args.steps)
    fvs = args.sensors * args.steps * compare.FIELDS
    work = tempfile.mkdtemp(prefix="talo-ab-")
    sides = [Side("A", args, args.talo, parse_env(args.a), work),
             Side("B", args, args.talo_b or args.talo, parse_env(args.b), work)]
    print(f"data: {args.sensors} sensors x {args.steps} steps; A: {args.a or '(defaults)'} "
          f"{args.talo}; B: {args.b or '(defaults)'} {args.talo_b or args.talo}", flush=True)
    rows = []
    try:
        loading = sides[:1] if args.shared_data else sides
        for s in loading:
            s.start()
            s.talo.prepare()
            load = compare.loader(args, s.talo.write_url(), args.steps)
            # settle as compare.Talo.settle does, with the side's settings in force:
            # SIGTERM flushes, the restart compacts (its first pass comes 5 s in)
            s.talo.stop()
            s.start()
            started = time.monotonic()
            s.talo.wait_stable(120, extra=lambda: time.monotonic() - started > 7)
            s.talo.stop()
            print(f"{s.name}: {load['rows_per_s']:,.0f} rows/s", flush=True)
        if args.shared_data:
            a, b = sides
            shutil.rmtree(b.talo.dir)
            shutil.copytree(a.talo.dir, b.talo.dir)
            lock = os.path.join(b.talo.dir, "LOCK")
            if os.path.exists(lock):
                os.remove(lock)
        for s in sides:
            files = s.talo.parquet_files()
            size = sum(os.path.getsize(f) for f in files)
            s.bytes_per_fv = size / fvs
            s.layout = layout(files)
            print(f"{s.name}: {size / fvs:.4f} bytes per field value in {len(files)} files "
                  f"(rows {s.layout}); bytes per row by column: {column_bytes(files)}", flush=True)
        if sides[0].layout != sides[1].layout:
            print("warning: the sides settled into different layouts; queries over them differ "
                  "for that reason too (--shared-data compares one layout)", flush=True)
        for r in range(args.rounds_ab):
            for s in sides:
                s.start()
                res = time_queries(s, qs, args.runs)
                s.talo.stop()
                rows.append((r + 1, s.name, res))
                print(f"round {r + 1} {s.name}: " + ", ".join(
                    f"{n} {t:.1f}/{d:.1f} ms (cpu {c:.1f})" for n, (t, d, c) in res.items()), flush=True)
    finally:
        for s in sides:
            s.talo.stop()
        shutil.rmtree(work, ignore_errors=True)
    names = list(qs)
    print()
    print("bytes per field value: " + ", ".join(f"{s.name} {s.bytes_per_fv:.4f}" for s in sides))
    print()
    print("| round | side | " + " | ".join(f"{n}: talo / DuckDB ms (talo CPU ms)" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for r, name, res in rows:
        cells = " | ".join(f"{res[n][0]:.1f} / {res[n][1]:.1f} ({res[n][2]:.1f})" for n in names)
        print(f"| {r} | {name} | {cells} |")


if __name__ == "__main__":
    main()
