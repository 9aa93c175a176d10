"""Differential test: talo's SQL answers vs DuckDB's on the same sensor data.

usage:
  differential.py generate DIR        writes DIR/part1.lp, DIR/part2.lp (part 2 rewrites some
                                      points of part 1 with new values, and adds new ones)
  differential.py compare DIR URL DB  runs each query on talo (HTTP) and on DuckDB (fed the
                                      same points, last write wins), prints JSON per query
"""
import datetime as dt
import json
import random
import sys
import urllib.parse
import urllib.request

import duckdb

START = 1764028800  # 2025-11-25T00:00:00Z
SENSORS = [(f"b{b}", f"r{r}", f"s{b}{r}{s}") for b in range(2) for r in range(3) for s in range(2)]


def points():
    """(table, tags, fields, t) in write order; later points override earlier ones."""
    rnd = random.Random(42)
    part1, part2 = [], []
    for step in range(1440):  # one day, every minute
        t = START + step * 60
        for b, r, s in SENSORS:
            f = {
                "temperature": round(20 + rnd.random() * 5, 2),
                "humidity": round(40 + rnd.random() * 20, 1),
                "co2": rnd.randint(400, 1400),
            }
            row = ("env", {"building": b, "room": r, "sensor": s}, f, t)
            (part1 if step < 1000 else part2).append(row)
        if step % 5 == 0:
            for b in ("b0", "b1"):
                row = ("meter", {"building": b}, {"kwh": round(rnd.random() * 3, 3)}, t)
                (part1 if step < 1000 else part2).append(row)
    # rewrites: part 2 overwrites some part-1 points (like an MQTT redelivery with a fix)
    for i in range(0, len(part1), 37):
        table, tags, f, t = part1[i]
        if table == "env":
            part2.append((table, tags, {"temperature": round(f["temperature"] + 1, 2)}, t))
    return part1, part2


def lp(rows):
    out = []
    for table, tags, f, t in rows:
        tag = ",".join(f"{k}={v}" for k, v in tags.items())
        fields = ",".join(f"{k}={v}i" if isinstance(v, int) else f"{k}={v}" for k, v in f.items())
        out.append(f"{table},{tag} {fields} {t}")
    return "\n".join(out) + "\n"


def final_tables(part1, part2):
    tables = {"env": {}, "meter": {}}
    for table, tags, f, t in part1 + part2:
        key = (tuple(sorted(tags.items())), t)
        cur = tables[table].setdefault(key, {**tags, "time": t})
        cur.update(f)
    return tables


QUERIES = {
    "count_env": ("SELECT count(*) AS n FROM env", None),
    "count_meter": ("SELECT count(*) AS n FROM meter", None),
    "last_per_sensor": (
        "SELECT sensor, last_value(temperature ORDER BY time) AS t FROM env GROUP BY sensor ORDER BY sensor",
        "SELECT sensor, arg_max(temperature, time) AS t FROM env GROUP BY sensor ORDER BY sensor",
    ),
    # the last two hours: a lower time bound and a tag filter, latest time included
    "latest_recent_per_room": (
        "SELECT building, room, last_value(humidity ORDER BY time) AS h, max(time) AS t FROM env WHERE time >= '2025-11-25T22:00:00Z' AND room <> 'r2' GROUP BY building, room ORDER BY building, room",
        "SELECT building, room, arg_max(humidity, time) AS h, max(time) AS t FROM env WHERE time >= TIMESTAMP '2025-11-25 22:00:00' AND room <> 'r2' GROUP BY building, room ORDER BY building, room",
    ),
    # an upper bound that cuts the day: the latest rows before it
    "latest_before_noon": (
        "SELECT sensor, first_value(co2 ORDER BY time DESC) AS c FROM env WHERE time < '2025-11-25T12:00:00Z' GROUP BY sensor ORDER BY sensor",
        "SELECT sensor, arg_max(co2, time) AS c FROM env WHERE time < TIMESTAMP '2025-11-25 12:00:00' GROUP BY sensor ORDER BY sensor",
    ),
    "hourly_avg_one_sensor": (
        "SELECT time_bucket(INTERVAL '1 hour', time) AS h, avg(temperature) AS a FROM env WHERE sensor = 's010' GROUP BY h ORDER BY h",
        None,
    ),
    "five_min_max_per_building": (
        "SELECT building, time_bucket(INTERVAL '5 minutes', time) AS b, max(co2) AS m FROM env GROUP BY building, b ORDER BY building, b",
        None,
    ),
    "tag_filter_time_range": (
        "SELECT count(*) AS n, sum(humidity) AS s, min(temperature) AS lo FROM env WHERE room = 'r1' AND time >= '2025-11-25T06:00:00Z' AND time < '2025-11-25T18:30:00Z'",
        "SELECT count(*) AS n, sum(humidity) AS s, min(temperature) AS lo FROM env WHERE room = 'r1' AND time >= TIMESTAMP '2025-11-25 06:00:00' AND time < TIMESTAMP '2025-11-25 18:30:00'",
    ),
    "join_two_tables": (
        "SELECT m.building, count(*) AS n, avg(e.temperature) AS t, sum(m.kwh) AS k FROM meter m JOIN env e ON e.building = m.building AND e.time = m.time GROUP BY m.building ORDER BY m.building",
        None,
    ),
}


def norm(v):
    if isinstance(v, float):
        return round(v, 6)
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(v, str) and len(v) == 20 and v.endswith("Z") and v[10] == "T":
        return v
    return v


def talo_query(url, db, sql):
    q = urllib.parse.urlencode({"db": db, "sql": sql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}") as r:
        rows = json.load(r)
    return [[norm(v) for v in row.values()] for row in rows]


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    part1, part2 = points()
    if cmd == "generate":
        with open(f"{d}/part1.lp", "w") as f:
            f.write(lp(part1))
        with open(f"{d}/part2.lp", "w") as f:
            f.write(lp(part2))
        return
    url, db = sys.argv[3], sys.argv[4]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    tables = final_tables(part1, part2)
    con.execute("CREATE TABLE env (building VARCHAR, room VARCHAR, sensor VARCHAR, time TIMESTAMP, temperature DOUBLE, humidity DOUBLE, co2 BIGINT)")
    con.executemany(
        "INSERT INTO env VALUES (?, ?, ?, make_timestamp(CAST(? AS BIGINT) * 1000000), ?, ?, ?)",
        [(r["building"], r["room"], r["sensor"], r["time"], r["temperature"], r["humidity"], r["co2"]) for r in tables["env"].values()],
    )
    con.execute("CREATE TABLE meter (building VARCHAR, time TIMESTAMP, kwh DOUBLE)")
    con.executemany(
        "INSERT INTO meter VALUES (?, make_timestamp(CAST(? AS BIGINT) * 1000000), ?)",
        [(r["building"], r["time"], r["kwh"]) for r in tables["meter"].values()],
    )
    out = {}
    for name, (talo_sql, duck_sql) in QUERIES.items():
        duck = [[norm(v) for v in row] for row in con.execute(duck_sql or talo_sql).fetchall()]
        talo = talo_query(url, db, talo_sql)
        # asked again: where nothing it reads changed, this runs the plans kept from the first
        again = talo_query(url, db, talo_sql)
        out[name] = {"ok": duck == talo == again, "rows": len(duck), "duckdb": duck[:3], "talo": talo[:3],
                     "again": again[:3]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
