"""End-to-end comparison of talo with its peers on the same generated data, in one run.

Driven by benches/compare.sh (which builds talo and the loader and installs the peers).
Systems, each on loopback with its data in a fresh temporary directory:
  talo              the release binary
  victoriametrics   Debian's victoria-metrics (InfluxDB line protocol on /write)
  influxdb          Debian's influxdb 1.x
  duckdb            (queries only) DuckDB reading the very Parquet files talo wrote

Per round and system (the order alternates between rounds): start, ingest the data with
the HTTP line-protocol loader (bodies pre-built), read peak RSS (VmHWM) of the server.
After the last round's ingest: let each system settle (talo: SIGTERM flush + restart;
VictoriaMetrics: force_flush + force_merge; InfluxDB: cache snapshot + compaction) until
its directory stops changing, then disk bytes, then the dashboard queries (median of
--runs after warm-up). Then kill -9 with --crash-rows rows freshly written and time the
restart to ready. Prints a markdown report (and writes it to --out).
"""
import argparse
import datetime as dt
import decimal
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

import duckdb

START_S = 1764028800  # 2025-11-25T00:00:00Z, the generator's first timestamp
STEP_S = 10
FIELDS = 8


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def iso(t):
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class Http:
    """One keep-alive connection; request() returns (status, body bytes)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None


def status_is(port, path, want):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", path)
        return c.getresponse().status == want
    finally:
        c.close()


class System:
    name = ""

    def __init__(self, args, work):
        self.args = args
        self.dir = tempfile.mkdtemp(prefix=f"{self.name}-", dir=work)
        self.port = free_port()
        self.proc = None
        self.log = open(os.path.join(work, f"{self.name}.log"), "ab")

    def start(self):
        self.proc = subprocess.Popen(self.cmd(), stdout=self.log, stderr=self.log)
        t0 = time.monotonic()
        wait_until(self.ready, 300, f"{self.name} to be ready")
        return time.monotonic() - t0

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def write_url(self):
        return f"http://127.0.0.1:{self.port}/write?db=bench"

    def prepare(self):
        pass

    def settle(self):
        pass

    def data_bytes(self):
        return du(self.dir)

    def wait_stable(self, timeout, extra=lambda: True):
        """Until the directory size has not changed for 3 s (and `extra()` holds)."""
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = du(self.dir)
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= 3 and extra():
                return True
            time.sleep(0.5)
        return False


class Talo(System):
    name = "talo"

    def cmd(self):
        # a partition quiet for 5 s merges its last small segments, as InfluxDB below
        # fully compacts a shard cold for 5 s and VictoriaMetrics is force-merged: the
        # settled size is then what each system's own compaction makes of the day
        # (TALO_COMPACTION_COLD_AFTER in the environment overrides it, for A/B runs)
        cold = [] if "TALO_COMPACTION_COLD_AFTER" in os.environ else ["--compaction-cold-after", "5s"]
        return [self.args.talo, "serve", "--data-dir", self.dir,
                "--http-addr", f"127.0.0.1:{self.port}", "--mqtt-listen", "off"] + cold

    def ready(self):
        return status_is(self.port, "/ready", 200)

    def settle(self):
        # SIGTERM flushes the buffer to Parquet; after the restart the WAL is empty and
        # every row is in segments (what DuckDB reads), then compaction gets its pass.
        self.stop()
        self.start()
        # compaction's first pass comes 5 s after startup: settled means after it
        started = time.monotonic()
        self.wait_stable(120, extra=lambda: time.monotonic() - started > 7)

    def parquet_files(self):
        """The live segments of bench.env, from the manifest (not files awaiting deletion)."""
        with open(os.path.join(self.dir, "manifest.json")) as f:
            m = json.load(f)
        return sorted(os.path.join(self.dir, s["path"]) for s in m["segments"]
                      if s["db"] == "bench" and s["table"] == "env")


class Victoria(System):
    name = "victoriametrics"

    def cmd(self):
        return ["victoria-metrics", "-storageDataPath", self.dir,
                "-httpListenAddr", f"127.0.0.1:{self.port}",
                "-retentionPeriod", "100y", "-loggerLevel", "ERROR"]

    def ready(self):
        return status_is(self.port, "/health", 200)

    def settle(self):
        h = Http(self.port)
        h.request("GET", "/internal/force_flush")
        month = dt.datetime.fromtimestamp(START_S, dt.timezone.utc).strftime("%Y_%m")
        h.request("GET", f"/internal/force_merge?partition_prefix={month}")
        h.close()
        self.wait_stable(120)


class Influx(System):
    name = "influxdb"

    def cmd(self):
        conf = os.path.join(self.dir, "influxdb.conf")
        rpc = free_port()
        with open(conf, "w") as f:
            f.write(f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{self.dir}/meta"
[data]
  dir = "{self.dir}/data"
  wal-dir = "{self.dir}/wal"
  query-log-enabled = false
  cache-snapshot-write-cold-duration = "2s"
  compact-full-write-cold-duration = "5s"
[http]
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[logging]
  level = "error"
""")
        return ["influxd", "-config", conf]

    def ready(self):
        return status_is(self.port, "/ping", 204)

    def prepare(self):
        s, b = Http(self.port).request(
            "POST", "/query?" + urllib.parse.urlencode({"q": "CREATE DATABASE bench"}))
        assert s == 200, b

    def data_bytes(self):
        return du(self.dir) - os.path.getsize(os.path.join(self.dir, "influxdb.conf"))

    def settle(self):
        # the cache is snapshotted to TSM after 2 s without writes, full compaction after
        # 5 s; settled once the WAL is (nearly) empty and the size stops moving
        self.wait_stable(180, lambda: du(os.path.join(self.dir, "wal")) < 1 << 20)


# ---- queries ---------------------------------------------------------------------------

def query_set(sensors, steps):
    end = START_S + steps * STEP_S
    day0 = max(START_S, end - 86400)
    last_h = end - 3600
    one = f"s{min(7, sensors - 1):06}"
    return {
        "last value per sensor (last hour)": {
            "sql": f"SELECT sensor, last_value(temperature ORDER BY time) AS v FROM env WHERE time >= '{iso(last_h)}' GROUP BY sensor",
            "duck": f"SELECT sensor, arg_max(temperature, time) AS v FROM env WHERE time >= TIMESTAMP '{iso(last_h)[:-1]}' GROUP BY sensor",
            "influxql": f"SELECT last(temperature) FROM env WHERE time >= '{iso(last_h)}' GROUP BY sensor",
            "promql": ("query", {"query": "last_over_time(env_temperature[1h])", "time": end - 1}),
        },
        "one sensor hourly avg over a day": {
            "sql": f"SELECT date_bin(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env WHERE sensor = '{one}' AND time >= '{iso(day0)}' AND time < '{iso(day0 + 86400)}' GROUP BY h ORDER BY h",
            "duck": f"SELECT time_bucket(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env WHERE sensor = '{one}' AND time >= TIMESTAMP '{iso(day0)[:-1]}' AND time < TIMESTAMP '{iso(day0 + 86400)[:-1]}' GROUP BY h ORDER BY h",
            "influxql": f"SELECT mean(temperature) FROM env WHERE sensor = '{one}' AND time >= '{iso(day0)}' AND time < '{iso(day0 + 86400)}' GROUP BY time(1h)",
            "promql": ("query_range", {"query": f'avg_over_time(env_temperature{{sensor="{one}"}}[1h])', "start": day0 + 3600, "end": day0 + 86400, "step": "1h"}),
        },
        "5-minute max per building over a day": {
            "sql": f"SELECT building, date_bin(INTERVAL '5 minutes', time) AS b, max(co2) AS v FROM env WHERE time >= '{iso(day0)}' AND time < '{iso(day0 + 86400)}' GROUP BY building, b ORDER BY building, b",
            "duck": f"SELECT building, time_bucket(INTERVAL '5 minutes', time) AS b, max(co2) AS v FROM env WHERE time >= TIMESTAMP '{iso(day0)[:-1]}' AND time < TIMESTAMP '{iso(day0 + 86400)[:-1]}' GROUP BY building, b ORDER BY building, b",
            "influxql": f"SELECT max(co2) FROM env WHERE time >= '{iso(day0)}' AND time < '{iso(day0 + 86400)}' GROUP BY time(5m), building",
            "promql": ("query_range", {"query": "max by (building) (max_over_time(env_co2[5m]))", "start": day0 + 300, "end": day0 + 86400, "step": "5m"}),
        },
        "all buildings hourly avg over a day": {
            "sql": f"SELECT building, date_bin(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env WHERE time >= '{iso(day0)}' AND time < '{iso(day0 + 86400)}' GROUP BY building, h ORDER BY building, h",
            "duck": f"SELECT building, time_bucket(INTERVAL '1 hour', time) AS h, avg(temperature) AS v FROM env WHERE time >= TIMESTAMP '{iso(day0)[:-1]}' AND time < TIMESTAMP '{iso(day0 + 86400)[:-1]}' GROUP BY building, h ORDER BY building, h",
            "influxql": f"SELECT mean(temperature) FROM env WHERE time >= '{iso(day0)}' AND time < '{iso(day0 + 86400)}' GROUP BY time(1h), building",
            "promql": ("query_range", {"query": "avg by (building) (avg_over_time(env_temperature[1h]))", "start": day0 + 3600, "end": day0 + 86400, "step": "1h"}),
        },
    }


def run_query(system, h, q, duck_con):
    """One execution; returns (seconds, result rows or points)."""
    t0 = time.perf_counter()
    if system == "duckdb":
        rows = duck_con.execute(q["duck"]).fetchall()
        return time.perf_counter() - t0, rows
    if system == "talo":
        path = "/api/v1/query?" + urllib.parse.urlencode({"db": "bench", "sql": q["sql"]})
    elif system == "influxdb":
        path = "/query?" + urllib.parse.urlencode({"db": "bench", "q": q["influxql"], "epoch": "s"})
    else:
        kind, params = q["promql"]
        path = f"/api/v1/{kind}?" + urllib.parse.urlencode({**params, "nocache": 1})
    status, body = h.request("GET", path)
    dt_ = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"{system}: HTTP {status}: {body[:300]!r}")
    v = json.loads(body)
    if system == "talo":
        return dt_, [tuple(r.values()) for r in v]
    if system == "influxdb":
        res = v["results"][0]
        if "error" in res:
            raise RuntimeError(f"influxdb: {res['error']}")
        return dt_, [tuple(p) for s in res.get("series", []) for p in s["values"]]
    data = v["data"]["result"]
    return dt_, [p for s in data for p in (s.get("values") or [s.get("value")])]


def norm(rows):
    out = []
    for r in rows:
        # DuckDB answers max/min of a column talo stored as a Parquet DECIMAL (short
        # decimal floats) with a Decimal: the same number, compared as the double it is
        out.append(tuple(
            x.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(x, dt.datetime)
            else float(x) if isinstance(x, decimal.Decimal) else x for x in r))
    return sorted(out, key=lambda r: tuple(repr(x) for x in r if not isinstance(x, float)))


def same_answer(a, b):
    """Same rows; floats equal to 1e-9 relative (sums in another order round differently)."""
    a, b = norm(a), norm(b)
    if len(a) != len(b):
        return False
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            return False
        for x, y in zip(ra, rb):
            if isinstance(x, float) or isinstance(y, float):
                if x is None or y is None or abs(x - y) > 1e-9 * max(1.0, abs(x)):
                    return False
            elif x != y:
                return False
    return True


def talo_plan(h, sql):
    """How talo read the table: `clean` (segments that do not overlap, scanned in
    parallel; `, latest rows of N segments` where their kept latest rows per series stood
    in for them) or `merged (N overlapping segments, M buffered rows)` (DedupExec)."""
    path = "/api/v1/query?" + urllib.parse.urlencode({"db": "bench", "sql": f"EXPLAIN {sql}"})
    status, body = h.request("GET", path)
    if status != 200:
        return f"EXPLAIN failed: HTTP {status}"
    plan = " ".join(str(v) for r in json.loads(body) for v in r.values())
    m = re.search(r"DedupExec: overlapping_segments=\[([^\]]*)\], buffer_rows=(\d+)", plan)
    kept = re.search(r"partition_sizes=\[(\d+)\]", plan)
    latest = f", latest rows of {kept.group(1)} segments" if kept else ""
    if not m:
        return "clean" + latest
    n = len([x for x in m.group(1).split(",") if x.strip()])
    return f"merged ({n} overlapping segments, {m.group(2)} buffered rows)" + latest


def duckdb_source(files):
    """DuckDB's `read_parquet` over talo's segment files. Each file stores a column in
    the most compact type its values allow (decimal scale, 32/64 bits, decimal/double),
    and DuckDB otherwise reads every file as the first one's types: unify the schemas
    (`union_by_name`) when they differ, and only then, so the yardstick is unchanged."""
    import pyarrow.parquet as pq
    schemas = {str(pq.read_schema(f)) for f in files}
    union = ", union_by_name = true" if len(schemas) > 1 else ""
    return f"read_parquet({files!r}{union})"


def bench_queries(args, talo, vm, influx, results):
    files = talo.parquet_files()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW env AS SELECT * FROM {duckdb_source(files)}")
    qs = query_set(args.sensors, args.steps)
    conns = {"talo": Http(talo.port), "victoriametrics": Http(vm.port), "influxdb": Http(influx.port),
             "duckdb": None}
    for name, q in qs.items():
        row = {}
        answers = {}
        for system in ("talo", "duckdb", "victoriametrics", "influxdb"):
            # the first run of each query (talo's first after its restart: footers read, latest rows computed)
            first = None
            for _ in range(args.warmup):
                t, _ = run_query(system, conns[system], q, con)
                first = t if first is None else first
            times = []
            for _ in range(args.runs):
                t, rows = run_query(system, conns[system], q, con)
                times.append(t)
            answers[system] = rows
            row[system] = {"median_ms": statistics.median(times) * 1000, "rows": len(rows),
                           "first_ms": first * 1000 if first is not None else float("nan")}
        row["talo_equals_duckdb"] = same_answer(answers["talo"], answers["duckdb"])
        row["talo_plan"] = talo_plan(conns["talo"], q["sql"])
        results["queries"][name] = row
        print(f"  {name}: " + ", ".join(
            f"{s} {r['median_ms']:.1f} ms ({r['rows']} rows)" for s, r in row.items() if isinstance(r, dict)),
            f"talo==duckdb: {row['talo_equals_duckdb']}, talo plan: {row['talo_plan']}", flush=True)
    for c in conns.values():
        if c:
            c.close()


def loader(args, url, steps, sink=False):
    cmd = [args.loadgen, "http", "--url", url, "--sensors", str(args.sensors), "--steps", str(steps),
           "--batch", str(args.batch), "--connections", str(args.connections), "--seed", "1"]
    if sink:
        cmd.append("--sink")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def count_rows(system, s):
    h = Http(s.port)
    if system == "talo":
        _, b = h.request("GET", "/api/v1/query?" + urllib.parse.urlencode({"db": "bench", "sql": "SELECT count(*) AS n FROM env"}))
        return json.loads(b)[0]["n"]
    if system == "influxdb":
        _, b = h.request("GET", "/query?" + urllib.parse.urlencode({"db": "bench", "q": "SELECT count(temperature) FROM env"}))
        return json.loads(b)["results"][0]["series"][0]["values"][0][1]
    _, b = h.request("GET", "/api/v1/query?" + urllib.parse.urlencode(
        {"query": "sum(count_over_time(env_temperature[100y]))", "time": START_S + 100 * 86400 * 365, "nocache": 1}))
    r = json.loads(b)["data"]["result"]
    return int(float(r[0]["value"][1])) if r else 0


def crash_restart(args, cls, work):
    """Write --crash-rows rows, kill -9, time start -> ready; returns seconds."""
    s = cls(args, work)
    s.start()
    s.prepare()
    loader(args, s.write_url(), max(1, args.crash_rows // args.sensors))
    s.stop(signal.SIGKILL)
    secs = s.start()
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)
    return secs


def load_args(p, rounds):
    """The binaries, the data and the loader's options (shared with buffer_sweep.py)."""
    p.add_argument("--talo", required=True)
    p.add_argument("--loadgen", required=True)
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--steps", type=int, default=8640)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--connections", type=int, default=4)


def main():
    p = argparse.ArgumentParser()
    load_args(p, rounds=3)
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--crash-rows", type=int, default=1_000_000)
    p.add_argument("--out", default="", help="write the markdown report here")
    p.add_argument("--json", default="", help="write the raw results here")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="talo-compare-")
    classes = [Talo, Victoria, Influx]
    rows = args.sensors * args.steps
    results = {"ingest": {c.name: [] for c in classes}, "rss_kb": {c.name: [] for c in classes},
               "sink": [], "queries": {}, "bytes": {}, "restart_s": {}, "count": {}}
    print(f"data: {args.sensors} sensors x {args.steps} steps = {rows} rows, {rows * FIELDS} field values; work dir {work}", flush=True)
    kept = {}
    try:
        for rnd in range(args.rounds):
            results["sink"].append(loader(args, "", args.steps, sink=True)["rows_per_s"])
            order = classes if rnd % 2 == 0 else list(reversed(classes))
            for cls in order:
                s = cls(args, work)
                s.start()
                s.prepare()
                r = loader(args, s.write_url(), args.steps)
                results["ingest"][cls.name].append(r["rows_per_s"])
                results["rss_kb"][cls.name].append(vm_hwm_kb(s.proc.pid))
                print(f"round {rnd + 1} {cls.name}: {r['rows_per_s']:.0f} rows/s, peak RSS {results['rss_kb'][cls.name][-1] / 1024:.0f} MiB", flush=True)
                if rnd == args.rounds - 1:
                    kept[cls.name] = s
                else:
                    s.stop()
                    shutil.rmtree(s.dir, ignore_errors=True)
        for name, s in kept.items():
            t0 = time.monotonic()
            s.settle()
            results["bytes"][name] = s.data_bytes()
            results["count"][name] = count_rows(name, s)
            print(f"{name}: settled in {time.monotonic() - t0:.1f} s, {results['bytes'][name]} bytes, "
                  f"{results['bytes'][name] / (rows * FIELDS):.3f} bytes/field value, count {results['count'][name]}", flush=True)
        bench_queries(args, kept["talo"], kept["victoriametrics"], kept["influxdb"], results)
        for s in kept.values():
            s.stop()
            shutil.rmtree(s.dir, ignore_errors=True)
        kept.clear()
        for cls in classes:
            results["restart_s"][cls.name] = crash_restart(args, cls, work)
            print(f"{cls.name}: start -> ready after kill -9 with {args.crash_rows} fresh rows: {results['restart_s'][cls.name]:.2f} s", flush=True)
    finally:
        for s in kept.values():
            s.stop(signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)
    report = render(args, results, rows)
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def render(args, r, rows):
    med = {k: statistics.median(v) for k, v in r["ingest"].items()}
    rss = {k: max(v) / 1024 for k, v in r["rss_kb"].items()}
    t = med["talo"]
    out = [f"Data: {args.sensors} sensors x {args.steps} steps (10 s apart) = {rows:,} rows, {rows * FIELDS:,} field values; "
           f"HTTP line protocol, {args.connections} connections, {args.batch} lines per request; {args.rounds} rounds, order alternating.",
           "",
           "| ingest | rows/s (median) | field values/s | talo / system | peak RSS MiB | bytes / field value after settling | start -> ready after kill -9 |",
           "|---|---|---|---|---|---|---|"]
    out.append(f"| loader into a discarding sink (ceiling) | {statistics.median(r['sink']):,.0f} | {statistics.median(r['sink']) * FIELDS:,.0f} | | | | |")
    for k in ("talo", "victoriametrics", "influxdb"):
        b = r["bytes"].get(k)
        out.append(f"| {k} | {med[k]:,.0f} | {med[k] * FIELDS:,.0f} | {t / med[k]:.2f} | {rss[k]:.0f} | "
                   f"{(b / (rows * FIELDS)) if b else float('nan'):.3f} | {r['restart_s'].get(k, float('nan')):.2f} s |")
    out += ["", f"Restart: {args.crash_rows:,} rows written just before the kill -9.", "",
            "| dashboard query (median ms) | talo | DuckDB on talo's Parquet | VictoriaMetrics | InfluxDB 1.x | talo / DuckDB | talo / VM | talo / InfluxDB | talo = DuckDB answer |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, q in r["queries"].items():
        m = {k: q[k]["median_ms"] for k in ("talo", "duckdb", "victoriametrics", "influxdb")}
        out.append(f"| {name} | {m['talo']:.1f} | {m['duckdb']:.1f} | {m['victoriametrics']:.1f} | {m['influxdb']:.1f} | "
                   f"{m['talo'] / m['duckdb']:.2f} | {m['talo'] / m['victoriametrics']:.2f} | {m['talo'] / m['influxdb']:.2f} | "
                   f"{'yes' if q['talo_equals_duckdb'] else 'NO'} |")
    out += ["", "How talo read the table (EXPLAIN): " + "; ".join(
        f"{name}: {q.get('talo_plan', '?')}" for name, q in r["queries"].items())]
    out += ["", "First run of each query, ms (talo was restarted by the settle just before the first query; the first run of \"last value\" computes the segments' latest rows): " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {q[k].get('first_ms', float('nan')):.1f}" for k in ("talo", "duckdb", "victoriametrics", "influxdb"))
        for name, q in r["queries"].items())]
    out += ["", "Rows returned: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {q[k]['rows']}" for k in ("talo", "duckdb", "victoriametrics", "influxdb"))
        for name, q in r["queries"].items()), ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
