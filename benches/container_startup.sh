#!/usr/bin/env bash
# Time from container start to /ready with N rows (default 1M) in the WAL: write N sensor rows
# (8 fields each) over HTTP into a talo container whose flush thresholds keep them all in the
# WAL, kill -9 it (a crash: nothing flushed on the way out), then `docker start` it and poll
# /ready every 10 ms.
#
# Usage: benches/container_startup.sh [IMAGE (talo:local)] [ROWS (1000000)]
set -euo pipefail
image=${1:-talo:local}
rows=${2:-1000000}
name=talo-startup-$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
work=$(mktemp -d)
cleanup() { docker rm -f -v "$name" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

wait_ready() {
    for _ in $(seq 1 12000); do
        curl -sf -o /dev/null "$base/ready" && return 0
        sleep 0.01
    done
    echo "not ready" >&2
    return 1
}

docker run -d --name "$name" -p "127.0.0.1:$port:8080" \
    -e TALO_FLUSH_SIZE_MB=16384 -e TALO_MAX_BUFFER_MB=16384 -e TALO_FLUSH_INTERVAL=24h \
    "$image" >/dev/null
wait_ready

# 1000 sensors every 10 s; bodies of 50k lines
python3 - "$rows" "$work" <<'PY'
import math, sys
rows, out = int(sys.argv[1]), sys.argv[2]
base = 1_764_028_800
per_body, body, n, lines = 50_000, 0, 0, []
for i in range(rows):
    s, t = i % 1000, i // 1000
    x = math.sin((t + s) / 60)
    lines.append(
        f"env,building=b{s % 10},room=r{s % 100},sensor=s{s} temperature={21 + x:.2f},"
        f"humidity={45 + 5 * x:.1f},co2={420 + (t * 7 + s) % 400}i,voc={0.3 + x / 10:.3f},"
        f"pm25={8 + x:.2f},lux={(t * 13 + s) % 800}i,noise={35 + 3 * x:.1f},"
        f"occupied={'true' if (t + s) % 3 else 'false'} {base + 10 * t}"
    )
    if len(lines) == per_body or i == rows - 1:
        with open(f"{out}/body-{body:05}.lp", "w") as f:
            f.write("\n".join(lines) + "\n")
        body, lines = body + 1, []
PY
t=$(date +%s.%N)
for f in "$work"/body-*.lp; do
    curl -sf -XPOST "$base/api/v1/write?db=bench&precision=s" --data-binary @"$f"
done
write_s=$(python3 -c "import time; print(f'{time.time() - $t:.1f}')")
got=$(curl -sf "$base/api/v1/query?db=bench&sql=SELECT+count(*)+AS+n+FROM+env" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["n"])')
[ "$got" = "$rows" ] || { echo "stored $got rows, want $rows" >&2; exit 1; }
wal=$(docker exec "$name" sh -c 'du -sb /var/lib/talo/wal | cut -f1')

# crash, then start and time it
kill -9 "$(docker inspect -f '{{.State.Pid}}' "$name")"
while [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ]; do sleep 0.01; done
t0=$(date +%s.%N)
docker start "$name" >/dev/null
wait_ready
t1=$(date +%s.%N)
ready=$(curl -sf "$base/ready")
got=$(curl -sf "$base/api/v1/query?db=bench&sql=SELECT+count(*)+AS+n+FROM+env" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["n"])')
[ "$got" = "$rows" ] || { echo "after restart $got rows, want $rows" >&2; exit 1; }
python3 - "$t0" "$t1" "$rows" "$wal" "$write_s" "$ready" <<'PY'
import json, sys
t0, t1, rows, wal, write_s, ready = sys.argv[1:]
r = json.loads(ready)
print(f"start → /ready: {float(t1) - float(t0):.2f} s with {int(rows):,} rows "
      f"({int(wal) / 1e6:.0f} MB) in the WAL; replayed {r.get('wal_rows_replayed')} rows; "
      f"writing them took {write_s} s")
PY
