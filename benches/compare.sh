#!/usr/bin/env bash
# talo vs VictoriaMetrics vs InfluxDB 1.x (and DuckDB on talo's Parquet for queries), on
# the same generated smart-building data, in one run on this machine. Installs the peers
# from Debian's packages and DuckDB from PyPI (into .venv) when missing, builds the
# release binary and the loader, then runs benches/compare.py.
#
# Usage: benches/compare.sh [--quick] [extra compare.py options, e.g. --sensors 2000]
#   default: 1000 sensors x 1 day (8.64 M rows), 3 rounds      (~15 min here)
#   --quick: 200 sensors x 1 day (1.73 M rows), 1 round, fewer query runs (~5 min)
# The report is printed and written to benches/results/compare-<date>[-quick][-N].md
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="benches/compare.sh $*"
opts=(--sensors 1000 --steps 8640 --rounds 3)
suffix=""
if [ "${1:-}" = "--quick" ]; then
  shift; opts=(--sensors 200 --steps 8640 --rounds 1 --runs 7 --crash-rows 500000); suffix="-quick"
fi

missing=()
command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
command -v influxd >/dev/null || missing+=(influxdb)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
# Debian's packages start their services where an init system runs; ours run on their own ports
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import duckdb' 2>/dev/null; then
  python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
fi

cargo build --release --bin talo --bench loadgen >/dev/null 2>&1 || cargo build --release --bin talo --bench loadgen
loadgen=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
mkdir -p benches/results
out="benches/results/compare-$(date -u +%Y-%m-%d)$suffix.md"
# a second run on the same day gets -2, -3, ... instead of overwriting the first
n=2; base="${out%.md}"
while [ -e "$out" ]; do out="$base-$n.md"; n=$((n + 1)); done
{
  echo "# talo vs peers — $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; VictoriaMetrics $(dpkg-query -W -f '${Version}' victoria-metrics 2>/dev/null); InfluxDB $(dpkg-query -W -f '${Version}' influxdb 2>/dev/null); DuckDB $(.venv/bin/python -c 'import duckdb; print(duckdb.__version__)')."
  echo "Command: $cmdline"
  echo
} > "$out.head"
.venv/bin/python benches/compare.py --talo target/release/talo --loadgen "$loadgen" "${opts[@]}" "$@" --out "$out.body" --json "${out%.md}.json"
cat "$out.head" "$out.body" > "$out"; rm -f "$out.head" "$out.body"
echo "report: $out"
