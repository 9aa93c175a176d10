#!/usr/bin/env bash
# Segment lifecycle benchmark (issue 5): 10 M rows over 30 simulated days in many small
# flushes; file count with compaction running; compaction rows/s and MB/s; dashboard
# queries before vs after compaction (identical answers) and raw vs hourly rollup;
# bytes per field value after compaction. Builds the release binary and the loader.
# Usage: benches/lifecycle.sh [--quick] [lifecycle.py options]   (--quick: 3 days)
set -euo pipefail
cd "$(dirname "$0")/.."
opts=()
[ "${1:-}" = "--quick" ] && { shift; opts=(--days 3 --runs 5); }
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
fi
cargo build --release --bin talo --bench loadgen >/dev/null 2>&1 || cargo build --release --bin talo --bench loadgen
loadgen=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
cd benches && ../.venv/bin/python lifecycle.py --talo ../target/release/talo --loadgen "../$loadgen" "${opts[@]}" "$@"
