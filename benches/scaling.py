"""Scaling curves of talo (issue 7 item 5): how the cost grows as the work grows.

  1. ingest rate vs number of series: a fresh talo per point, the same number of rows
     spread over --series (1k, 10k, 100k, 1M) sensors, HTTP line protocol with
     pre-built bodies; rows/s and peak RSS.
  2. query latency vs stored rows: one talo, 1000 sensors, filled up to each of
     --rows (1M, 10M, 100M; streamed bodies, then SIGTERM so every row is in Parquet and
     a restart); at each size the dashboard queries over the last day (latency should
     stay flat: time pruning) and a full scan (should grow linearly), median of --runs.

Writes a markdown table, the raw JSON and two PNG plots (matplotlib) under --out-dir.
Driven by benches/scaling.sh.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.parse

from compare import Http, Talo, iso, vm_hwm_kb, START_S, STEP_S


def loader(args, url, sensors, steps, stream=False, skip=0):
    cmd = [args.loadgen, "http", "--url", url, "--sensors", str(sensors), "--steps", str(steps),
           "--skip-steps", str(skip), "--batch", "5000", "--connections", "4"]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def dashboard(end, sensors):
    day0, last_h = end - 86400, end - 3600
    return {
        "last value per sensor (last hour)": f"SELECT sensor, last_value(temperature ORDER BY time) AS v FROM env WHERE time >= '{iso(last_h)}' GROUP BY sensor",
        "one sensor hourly, last day": f"SELECT date_bin(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env WHERE sensor = 's000007' AND time >= '{iso(day0)}' GROUP BY h ORDER BY h",
        "5-min max per building, last day": f"SELECT building, date_bin(INTERVAL '5 minutes', time) AS b, max(co2) AS v FROM env WHERE time >= '{iso(day0)}' GROUP BY building, b",
        "all buildings hourly, last day": f"SELECT building, date_bin(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env WHERE time >= '{iso(day0)}' GROUP BY building, h",
        "full scan: avg per building, all time": "SELECT building, avg(temperature) AS v, count(*) AS n FROM env GROUP BY building",
    }


def median_ms(h, sql, runs):
    path = "/api/v1/query?" + urllib.parse.urlencode({"db": "bench", "sql": sql})
    s, b = h.request("GET", path)
    if s != 200:
        raise RuntimeError(f"HTTP {s}: {b[:300]!r}")
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        h.request("GET", path)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--talo", required=True)
    p.add_argument("--loadgen", required=True)
    p.add_argument("--series", default="1000,10000,100000,1000000")
    p.add_argument("--ingest-rows", type=int, default=2_000_000)
    p.add_argument("--rows", default="1000000,10000000,100000000")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out-dir", default="results")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="talo-scaling-")
    res = {"ingest": [], "query": []}
    try:
        for n in [int(x) for x in args.series.split(",")]:
            t = Talo(args, work)
            t.start()
            steps = max(1, args.ingest_rows // n)
            r = loader(args, t.write_url(), n, steps)
            rss = vm_hwm_kb(t.proc.pid) / 1024
            t.stop(signal.SIGKILL)
            shutil.rmtree(t.dir, ignore_errors=True)
            res["ingest"].append({"series": n, "rows": r["rows"], "rows_per_s": r["rows_per_s"], "peak_rss_mib": rss})
            print(f"ingest {n} series x {steps} steps: {r['rows_per_s']:,.0f} rows/s, peak RSS {rss:.0f} MiB", flush=True)

        t = Talo(args, work)
        t.start()
        sensors, have = 1000, 0
        for target in [int(x) for x in args.rows.split(",")]:
            # continue the same series where the previous fill stopped
            r = loader(args, t.write_url(), sensors, target // sensors, stream=True, skip=have // sensors)
            have = target
            # SIGTERM flushes every row to Parquet; after the restart, wait for
            # compaction's pass so the queries meet the settled files, not a merge
            t.settle()
            end = START_S + (target // sensors) * STEP_S
            h = Http(t.port)
            _, b = h.request("GET", "/api/v1/query?" + urllib.parse.urlencode({"db": "bench", "sql": "SELECT count(*) AS n FROM env"}))
            stored = json.loads(b)[0]["n"]
            lat = {name: median_ms(h, q, args.runs) for name, q in dashboard(end, sensors).items()}
            h.close()
            res["query"].append({"rows": stored, "load_rows_per_s": r["rows_per_s"], "latency_ms": lat,
                                 "data_bytes": sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(t.dir) for f in fs)})
            print(f"{stored:,} rows stored: " + ", ".join(f"{k} {v:.1f} ms" for k, v in lat.items()), flush=True)
        t.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "scaling.json"), "w") as f:
        json.dump(res, f, indent=1)
    report = render(res)
    with open(os.path.join(args.out_dir, "scaling.md"), "w") as f:
        f.write(report)
    plot(res, args.out_dir)
    print(report)


def render(res):
    out = ["| series | rows | ingest rows/s | peak RSS MiB |", "|---|---|---|---|"]
    for r in res["ingest"]:
        out.append(f"| {r['series']:,} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['peak_rss_mib']:.0f} |")
    names = list(res["query"][0]["latency_ms"]) if res["query"] else []
    out += ["", "| stored rows | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in res["query"]:
        out.append(f"| {r['rows']:,} | " + " | ".join(f"{r['latency_ms'][n]:.1f}" for n in names) + " |")
    out.append("")
    out.append("Latencies are medians in ms over HTTP (JSON results).")
    return "\n".join(out) + "\n"


def plot(res, out_dir):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["series"] for r in res["ingest"]]
    ax.plot(xs, [r["rows_per_s"] / 1e6 for r in res["ingest"]], marker="o")
    ax.set_xscale("log")
    ax.set_xlabel("series (sensors)")
    ax.set_ylabel("ingest, million rows/s")
    ax.set_title("talo: HTTP ingest rate vs number of series")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling-ingest.png"), dpi=100)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [r["rows"] for r in res["query"]]
    for name in (res["query"][0]["latency_ms"] if res["query"] else []):
        ax.plot(xs, [r["latency_ms"][name] for r in res["query"]], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stored rows")
    ax.set_ylabel("median latency, ms")
    ax.set_title("talo: query latency vs stored rows")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "scaling-query.png"), dpi=100)


if __name__ == "__main__":
    main()
