"""Segment lifecycle benchmark (issue 5): many small flushes over 30 simulated days,
compaction, dashboard queries before/after compaction and raw vs rollup.

Driven by benches/lifecycle.sh. Phases, each against the release binary:
  A. ingest with compaction running (every 1 s): the segment count is sampled from
     /metrics the whole time; its peak and final value show that files stay bounded.
  B. the same ingest with compaction off and a 4 MiB flush threshold (many small
     flushes), SIGTERM (final flush); restart with compaction still off → file count and
     dashboard queries (median of --runs) "before"; restart with compaction on → time it
     takes, rows/s and MB/s from talo's compaction counters, file count, bytes per field
     value, and the same queries "after" — their answers must be identical.
  C. raw vs rollup: the month-long dashboard queries on the raw table and on the
     hourly rollup (`env_1h`), answers compared.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse

from compare import Http, free_port, iso, same_answer, wait_until, status_is, START_S

CONFIG = """
[[databases.bench.rollups]]
source = "env"
table = "env_1h"
interval = "1h"
aggregates = ["avg", "min", "max", "count"]
"""


class Talo:
    def __init__(self, binary, data, config, extra):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", data, "--http-addr", f"127.0.0.1:{self.port}",
             "--mqtt-listen", "off", "--config", config, *extra],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(os.path.dirname(data), "talo.log"), "ab"))
        self.h = Http(self.port)
        wait_until(lambda: status_is(self.port, "/ready", 200), 300, "talo ready")

    def metrics(self):
        _, b = self.h.request("GET", "/metrics")
        out = {}
        for line in b.decode().splitlines():
            m = re.match(r"^(talo_[a-z_]+) ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def sql(self, q):
        s, b = self.h.request("GET", "/api/v1/query?" + urllib.parse.urlencode({"db": "bench", "sql": q}))
        if s != 200:
            raise RuntimeError(f"HTTP {s}: {b[:300]!r}")
        return json.loads(b)

    def stop(self, sig=signal.SIGTERM):
        self.h.close()
        self.proc.send_signal(sig)
        self.proc.wait(600)


def env_segments(data):
    with open(os.path.join(data, "manifest.json")) as f:
        m = json.load(f)
    segs = [s for s in m["segments"] if s["db"] == "bench" and s["table"] == "env"]
    return len(segs), sum(s["bytes"] for s in segs), sum(s["rows"] for s in segs)


def queries(days, sensors):
    t0, t1 = iso(START_S), iso(START_S + days * 86400)
    last_day = iso(START_S + (days - 1) * 86400)
    one = f"s{min(7, sensors - 1):06}"
    return {
        "raw": {
            "last value per sensor": f"SELECT sensor, last_value(temperature ORDER BY time) AS v FROM env WHERE time >= '{iso(START_S + days * 86400 - 3600)}' GROUP BY sensor ORDER BY sensor",
            "one sensor hourly avg, 30 days": f"SELECT date_bin(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env WHERE sensor = '{one}' AND time >= '{t0}' AND time < '{t1}' GROUP BY h ORDER BY h",
            "all buildings daily avg, 30 days": f"SELECT building, date_bin(INTERVAL '1 day', time) AS d, avg(temperature) AS v FROM env WHERE time >= '{t0}' AND time < '{t1}' GROUP BY building, d ORDER BY building, d",
            "5-minute max per building, last day": f"SELECT building, date_bin(INTERVAL '5 minutes', time) AS b, max(co2) AS v FROM env WHERE time >= '{last_day}' AND time < '{t1}' GROUP BY building, b ORDER BY building, b",
            "count": "SELECT count(*) AS n, count(DISTINCT sensor) AS s FROM env",
        },
        # the same month-long answers from the hourly rollup
        "rollup": {
            "one sensor hourly avg, 30 days": f"SELECT time AS h, temperature_avg AS v FROM env_1h WHERE sensor = '{one}' AND time >= '{t0}' AND time < '{t1}' ORDER BY h",
            "all buildings daily avg, 30 days": f"SELECT building, date_bin(INTERVAL '1 day', time) AS d, sum(temperature_avg * temperature_count) / sum(temperature_count) AS v FROM env_1h WHERE time >= '{t0}' AND time < '{t1}' GROUP BY building, d ORDER BY building, d",
        },
    }


def rounded(rows):
    return [[round(v, 6) if isinstance(v, float) else v for v in r.values()] for r in rows]


def timed(talo, sql, runs):
    talo.sql(sql)  # warm-up
    times, ans = [], None
    for _ in range(runs):
        t = time.perf_counter()
        ans = talo.sql(sql)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000, rounded(ans)


def load(args, talo):
    out = subprocess.run(
        [args.loadgen, "http", "--url", f"http://127.0.0.1:{talo.port}/write?db=bench",
         "--sensors", str(args.sensors), "--steps", str(args.days * 8640), "--batch", "5000",
         "--connections", "2"], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def settle_rollups(talo, timeout=900):
    """Until the rollup counters have not moved for 3 s."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = talo.metrics()
        cur = (m.get("talo_rollup_passes_total"), m.get("talo_rollup_rows_written_total"))
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= 3:
            return
        time.sleep(0.5)
    raise RuntimeError("rollups did not settle")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--talo", required=True)
    p.add_argument("--loadgen", required=True)
    p.add_argument("--sensors", type=int, default=40)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--skip-a", action="store_true")
    args = p.parse_args()
    rows = args.sensors * args.days * 8640
    work = tempfile.mkdtemp(prefix="talo-lifecycle-")
    config = os.path.join(work, "talo.toml")
    with open(config, "w") as f:
        f.write(CONFIG)
    print(f"data: {args.sensors} sensors x {args.days} days every 10 s = {rows:,} rows; work dir {work}", flush=True)
    res = {"rows": rows}

    if not args.skip_a:
        data = os.path.join(work, "a")
        talo = Talo(args.talo, data, config, ["--compaction-interval", "1s", "--compaction-min-files", "4",
                                               "--flush-size-mb", "4"])
        peak, stop = [0], threading.Event()

        def sample():
            h = Talo.__new__(Talo)
            h.h, h.port = Http(talo.port), talo.port
            while not stop.is_set():
                peak[0] = max(peak[0], int(h.metrics().get("talo_segments", 0)))
                time.sleep(0.2)
            h.h.close()
        t = threading.Thread(target=sample)
        t.start()
        r = load(args, talo)
        stop.set()
        t.join()
        m = talo.metrics()
        res["a"] = {"rows_per_s": r["rows_per_s"], "peak_segments": peak[0], "segments_after_ingest": int(m["talo_segments"]),
                    "flushes": int(m["talo_flushes_total"]), "compactions": int(m["talo_compactions_total"])}
        talo.stop()
        print(f"A. ingest with compaction on: {r['rows_per_s']:,.0f} rows/s; {res['a']['flushes']} flushes, "
              f"{res['a']['compactions']} merges; segments peak {peak[0]}, after ingest {res['a']['segments_after_ingest']}", flush=True)
        subprocess.run(["rm", "-rf", data])

    data = os.path.join(work, "b")
    off = ["--compaction-interval", "off", "--flush-size-mb", "4"]
    talo = Talo(args.talo, data, config, off)
    r = load(args, talo)
    settle_rollups(talo)
    flushes = int(talo.metrics()["talo_flushes_total"])
    talo.stop()
    talo = Talo(args.talo, data, config, off)
    files_before, bytes_before, _ = env_segments(data)
    qs = queries(args.days, args.sensors)
    before = {name: timed(talo, q, args.runs) for name, q in qs["raw"].items()}
    talo.stop()
    print(f"B. ingest, compaction off: {r['rows_per_s']:,.0f} rows/s, {flushes} flushes -> {files_before} env segments, "
          f"{bytes_before / (rows * 8):.3f} bytes/field value", flush=True)

    t0 = time.monotonic()
    talo = Talo(args.talo, data, config, ["--compaction-interval", "1s", "--compaction-min-files", "2"])
    prev, since = None, time.monotonic()
    while True:  # until no merge happened for 3 s
        m = talo.metrics()
        if m["talo_compactions_total"] != prev:
            prev, since = m["talo_compactions_total"], time.monotonic()
        elif time.monotonic() - since >= 3:
            break
        time.sleep(0.2)
    wall = since - t0
    files_after, bytes_after, rows_after = env_segments(data)
    secs = m["talo_compaction_seconds_total"]
    res["b"] = {"rows_per_s": r["rows_per_s"], "flushes": flushes, "files_before": files_before,
                "files_after": files_after, "bytes_before": bytes_before, "bytes_after": bytes_after,
                "compaction_wall_s": wall, "compaction_s": secs, "merges": int(m["talo_compactions_total"]),
                "compaction_rows_per_s": m["talo_compaction_rows_total"] / secs if secs else 0,
                "compaction_read_mb_per_s": m["talo_compaction_read_bytes_total"] / secs / 1e6 if secs else 0,
                "bytes_per_fv_before": bytes_before / (rows * 8), "bytes_per_fv_after": bytes_after / (rows * 8),
                "segment_rows_after": rows_after}
    after = {name: timed(talo, q, args.runs) for name, q in qs["raw"].items()}
    rollup = {name: timed(talo, q, args.runs) for name, q in qs["rollup"].items()}
    talo.stop()
    res["queries"] = {name: {"before_ms": before[name][0], "after_ms": after[name][0],
                             "identical": before[name][1] == after[name][1]} for name in before}
    res["rollup"] = {name: {"raw_ms": after[name][0], "rollup_ms": rollup[name][0],
                            "same_answer": same_answer(after[name][1], rollup[name][1])} for name in rollup}
    res["count"] = after["count"][1]
    print(json.dumps(res, indent=1))
    print(render(args, res))
    subprocess.run(["rm", "-rf", work])


def render(args, r):
    b = r["b"]
    out = [f"Data: {args.sensors} sensors x {args.days} days, one reading every 10 s = {r['rows']:,} rows "
           f"(8 fields), HTTP line protocol; flush threshold 4 MiB (many small flushes). Stored: {r['count']}.", ""]
    if "a" in r:
        a = r["a"]
        out += [f"A. Compaction running during ingest ({a['rows_per_s']:,.0f} rows/s): {a['flushes']} flushes, "
                f"{a['compactions']} merges; env+rollup segments peaked at **{a['peak_segments']}**, "
                f"{a['segments_after_ingest']} after ingest ({args.days} daily partitions).", ""]
    out += ["| B. compaction off, then on | before | after |", "|---|---|---|",
            f"| env segments | {b['files_before']} | {b['files_after']} |",
            f"| bytes per field value | {b['bytes_per_fv_before']:.3f} | **{b['bytes_per_fv_after']:.3f}** |",
            "", f"Compaction: {b['merges']} merges in {b['compaction_s']:.1f} s of merge time ({b['compaction_wall_s']:.1f} s wall) → "
            f"**{b['compaction_rows_per_s']:,.0f} rows/s**, **{b['compaction_read_mb_per_s']:.1f} MB/s** of segments read.", "",
            "| query (median ms) | before compaction | after | identical answers |", "|---|---|---|---|"]
    for name, q in r["queries"].items():
        out.append(f"| {name} | {q['before_ms']:.1f} | {q['after_ms']:.1f} | {'yes' if q['identical'] else 'NO'} |")
    out += ["", "| month-long query (median ms) | raw (compacted) | hourly rollup | raw / rollup | same answer |", "|---|---|---|---|---|"]
    for name, q in r["rollup"].items():
        out.append(f"| {name} | {q['raw_ms']:.1f} | {q['rollup_ms']:.1f} | {q['raw_ms'] / q['rollup_ms']:.1f}× | {'yes' if q['same_answer'] else 'NO'} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
