#!/usr/bin/env bash
# Scaling curves of talo: ingest rate vs number of series, query latency vs stored rows.
# Tables, JSON and PNG plots go to benches/results/. Builds the release binary and the
# loader; installs matplotlib into .venv for the plots.
# Usage: benches/scaling.sh [--quick] [scaling.py options]
#   default: 1k/10k/100k/1M series x 2M rows; 1M/10M/100M stored rows (~25 min here)
#   --quick: 1k/10k/100k series x 1M rows; 1M/10M stored rows
set -euo pipefail
cd "$(dirname "$0")/.."
opts=()
[ "${1:-}" = "--quick" ] && { shift; opts=(--series 1000,10000,100000 --ingest-rows 1000000 --rows 1000000,10000000 --runs 5); }
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv && .venv/bin/pip install -q --disable-pip-version-check -r tests/py/requirements.txt
fi
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check -r benches/requirements.txt
cargo build --release --bin talo --bench loadgen >/dev/null 2>&1 || cargo build --release --bin talo --bench loadgen
loadgen=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
cd benches && ../.venv/bin/python scaling.py --talo ../target/release/talo --loadgen "../$loadgen" --out-dir results "${opts[@]}" "$@"
